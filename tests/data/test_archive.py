"""A dataset given as a zip: members that are too big, zip bombs and archives larger than the free space are refused
in one line before anything is written; others are streamed out, never read whole."""

import struct
import zipfile
from pathlib import Path

import numpy as np
import pytest

import nucleiseg.data.archive as archive
from nucleiseg.data.archive import dataset_folder, extract_safely
from nucleiseg.util.errors import DatasetLayoutError


def _zip(path: Path, members: dict[str, bytes], compression: int = zipfile.ZIP_DEFLATED) -> Path:
    with zipfile.ZipFile(path, "w", compression=compression) as bundle:
        for name, data in members.items():
            bundle.writestr(name, data)
    return path


def _declare_size(path: Path, member: str, size: int) -> None:
    """Make ``member`` of a stored (uncompressed) zip declare ``size`` bytes in its local and central headers, as a
    hostile archive does: 3 GB said, a few bytes stored."""
    data = bytearray(path.read_bytes())
    name = member.encode()
    local = data.index(b"PK\x03\x04")  # the first local header
    while data[local + 30 : local + 30 + len(name)] != name:
        local = data.index(b"PK\x03\x04", local + 4)
    struct.pack_into("<I", data, local + 22, size)  # uncompressed size
    central = data.index(b"PK\x01\x02")
    while data[central + 46 : central + 46 + len(name)] != name:
        central = data.index(b"PK\x01\x02", central + 4)
    struct.pack_into("<I", data, central + 24, size)
    path.write_bytes(bytes(data))


def _files(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.is_file()] if folder.exists() else []


def test_a_member_that_declares_3_gb_in_100_bytes_is_refused_before_anything_is_written(tmp_path):
    path = _zip(tmp_path / "tnbc.zip", {"Slide_01/01_1.png": b"x" * 100, "big.bin": b"y" * 100}, zipfile.ZIP_STORED)
    _declare_size(path, "big.bin", 3_000_000_000)
    with pytest.raises(DatasetLayoutError) as error:
        extract_safely(path, tmp_path / "out")
    message = str(error.value)
    assert "\n" not in message and str(path) in message and "'big.bin' declares 3.0 GB" in message
    assert "zip bomb" in message and _files(tmp_path / "out") == []


def test_members_and_archives_above_the_size_limits_are_refused(tmp_path):
    path = _zip(tmp_path / "tnbc.zip", {"a.png": bytes(range(256)) * 40, "b.png": bytes(range(256)) * 40})
    with pytest.raises(DatasetLayoutError, match=r"'a.png' declares 10.2 kB, above the 10.0 kB limit for one file"):
        extract_safely(path, tmp_path / "out", max_member_bytes=10_000)
    with pytest.raises(DatasetLayoutError, match=r"declare 20.5 kB in all, above the 20.0 kB limit"):
        extract_safely(path, tmp_path / "out", max_total_bytes=20_000)
    assert _files(tmp_path / "out") == []
    assert archive.MAX_MEMBER_BYTES >= 8_400_000_000  # PanNuke's masks.npy (float64) is one member of 8.4 GB


def test_a_zip_bomb_is_refused_by_its_compression_ratio(tmp_path):
    path = _zip(tmp_path / "bomb.zip", {"masks/zeros.tif": bytes(32 << 20)})  # 32 MB of zeros: ~32 kB stored
    with pytest.raises(DatasetLayoutError, match=r"masks/zeros.tif.* compressed \d+x") as error:
        extract_safely(path, tmp_path / "out")
    assert "zip bomb" in str(error.value) and _files(tmp_path / "out") == []


def test_a_sparse_label_array_is_not_taken_for_a_bomb(tmp_path):
    """A PanNuke-like masks array (float64, mostly background, some nuclei) compresses a few hundred times."""
    rng = np.random.default_rng(0)
    masks = np.zeros((8, 256, 256, 6))
    masks[..., 5] = 1
    rows, cols = np.mgrid[:256, :256]
    for patch in range(8):
        for nucleus in range(1, 30):
            y, x, r = rng.integers(0, 256), rng.integers(0, 256), rng.integers(5, 11)
            inside = (rows - y) ** 2 + (cols - x) ** 2 < r * r
            masks[patch, inside, rng.integers(0, 5)] = nucleus
            masks[patch, inside, 5] = 0
    path = _zip(tmp_path / "fold_1.zip", {"Fold 1/masks/fold1/masks.npy": masks.tobytes()})
    with zipfile.ZipFile(path) as bundle:
        [member] = bundle.infolist()
    assert member.file_size > archive.RATIO_FLOOR_BYTES and member.file_size / member.compress_size > 100
    target = extract_safely(path, tmp_path / "out")
    assert (target / "Fold 1" / "masks" / "fold1" / "masks.npy").read_bytes() == masks.tobytes()


def test_small_members_may_compress_well(tmp_path):
    path = _zip(tmp_path / "ok.zip", {"Annotations/a.xml": b"<Region/>" * 100_000, "Slide_01/01_1.png": b"x" * 5000})
    target = extract_safely(path, tmp_path / "out")
    assert (target / "Annotations" / "a.xml").read_bytes() == b"<Region/>" * 100_000
    assert (target / "Slide_01" / "01_1.png").read_bytes() == b"x" * 5000


def test_an_archive_larger_than_the_free_space_is_refused(tmp_path, monkeypatch):
    path = _zip(tmp_path / "tnbc.zip", {"Slide_01/01_1.png": b"x" * 50_000})
    real = archive.shutil.disk_usage

    def full(where):
        usage = real(where)
        return usage._replace(free=10_000)

    monkeypatch.setattr(archive.shutil, "disk_usage", full)
    with pytest.raises(DatasetLayoutError, match=r"needs 50.0 kB .* has 10.0 kB free") as error:
        with dataset_folder(path):
            pass
    assert "\n" not in str(error.value)


def test_members_are_streamed_not_read_whole(tmp_path, monkeypatch):
    path = _zip(tmp_path / "tnbc.zip", {"Slide_01/01_1.png": bytes(range(256)) * 4096})

    def refuse(*args, **kwargs):
        raise AssertionError("a member was read whole")

    monkeypatch.setattr(zipfile.ZipFile, "read", refuse)
    monkeypatch.setattr(zipfile.ZipFile, "extractall", refuse)
    target = extract_safely(path, tmp_path / "out")
    assert (target / "Slide_01" / "01_1.png").read_bytes() == bytes(range(256)) * 4096


def test_a_member_pointing_outside_is_still_refused(tmp_path):
    path = _zip(tmp_path / "slip.zip", {"../evil.png": b"x"})
    with pytest.raises(DatasetLayoutError, match="points outside the archive"):
        extract_safely(path, tmp_path / "out")
    assert not (tmp_path / "evil.png").exists()
