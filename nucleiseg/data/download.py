"""Download the public datasets with resume and checksum verification.

Each entry names the archive, where it is published, its checksum and the folder layout it unpacks to.
Downloads go to ``NAME.part`` (resumed with an HTTP Range request after an interruption), are verified, then
renamed; the archive is unpacked into ``DIR/<dataset>/`` only after verification.
"""

from __future__ import annotations

import hashlib
import os
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from nucleiseg.data.archive import extract_safely
from nucleiseg.util.errors import NucleisegError
from nucleiseg.util.network import host_reachable


class DownloadError(NucleisegError):
    """A download failed (network, checksum); the message says where to get the files by hand."""


@dataclass(frozen=True)
class Archive:
    dataset: str
    url: str
    filename: str
    algorithm: str  # "sha256" or "md5"
    checksum: str
    homepage: str
    layout: str


ARCHIVES: dict[str, Archive] = {
    "tnbc": Archive(
        dataset="tnbc",
        url="https://zenodo.org/records/1175282/files/TNBC_NucleiSegmentation.zip?download=1",
        filename="TNBC_NucleiSegmentation.zip",
        algorithm="sha256",
        # as published by the torch_em dataset loader for this Zenodo file
        checksum="da708c3a988f4ad4b9bbb9283b387faf703f0bc0e5e689927306bd27ea13a57f",
        homepage="https://zenodo.org/records/1175282",
        layout="DIR/tnbc/TNBC_NucleiSegmentation/Slide_01 .. Slide_11/*.png and GT_01 .. GT_11/*.png",
    ),
    "monuseg": Archive(
        dataset="monuseg",
        url="https://drive.google.com/uc?export=download&confirm=t&id=1ZgqFJomqQGNnsx7w7QBzQQMVA16lbVCA",
        filename="MoNuSeg 2018 Training Data.zip",
        algorithm="md5",
        checksum="dfe849bcb72daec2a78ae5ba0ad10ade",
        homepage="https://monuseg.grand-challenge.org/Data/",
        layout="DIR/monuseg/MoNuSeg 2018 Training Data/Tissue Images/*.tif and .../Annotations/*.xml",
    ),
    "monuseg-test": Archive(
        dataset="monuseg-test",
        url="https://drive.google.com/uc?export=download&confirm=t&id=1NKkSQ5T0ZNQ8aUhh0a8Dt2YKYCQXIViw",
        filename="MoNuSegTestData.zip",
        algorithm="md5",
        checksum="0721da0cdbd267299e0463419d70e1a5",
        homepage="https://monuseg.grand-challenge.org/Data/",
        layout="DIR/monuseg-test/MoNuSegTestData/*.tif + *.xml side by side",
    ),
}

CHUNK = 1 << 20


def _manual_instructions(archive: Archive, target_dir: Path) -> str:
    return (
        f"download {archive.filename!r} by hand from {archive.homepage} and either place the zip in "
        f"{target_dir} and re-run this command (it is verified and unpacked), or unpack it so that: "
        f"{archive.layout.replace('DIR', str(target_dir.parent))}"
    )


def _reachable(url: str, timeout: float) -> bool:
    parsed = urlparse(url)
    return host_reachable(parsed.hostname, parsed.port or (443 if parsed.scheme == "https" else 80), timeout)


def file_checksum(path: Path, algorithm: str) -> str:
    digest = hashlib.new(algorithm)
    with path.open("rb") as handle:
        while chunk := handle.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _fetch(url: str, part: Path, timeout: float, progress: Callable[[int, int | None], None]) -> None:
    """Append the rest of ``url`` to ``part`` (HTTP Range resume when ``part`` already holds bytes)."""
    have = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(url, headers={"User-Agent": "nucleiseg"})
    if have:
        request.add_header("Range", f"bytes={have}-")
    with urllib.request.urlopen(request, timeout=timeout) as response:
        if have and response.status != 206:  # server ignored the range: start again
            have = 0
        total = response.headers.get("Content-Length")
        total = int(total) + have if total is not None else None
        with part.open("ab" if have else "wb") as handle:
            done = have
            while chunk := response.read(CHUNK):
                handle.write(chunk)
                done += len(chunk)
                progress(done, total)


def download(
    dataset: str,
    to: str | Path,
    timeout: float = 10.0,
    archives: dict[str, Archive] = ARCHIVES,
    progress: Callable[[int, int | None], None] = lambda done, total: None,
) -> Path:
    """Download, verify and unpack ``dataset`` into ``to/<dataset>``; return that folder."""
    if dataset not in archives:
        raise DownloadError(f"unknown dataset {dataset!r}; expected one of {sorted(archives)}")
    archive = archives[dataset]
    target_dir = Path(to).expanduser() / archive.dataset
    target_dir.mkdir(parents=True, exist_ok=True)
    final = target_dir / archive.filename
    if not final.exists():
        if not _reachable(archive.url, timeout):
            raise DownloadError(
                f"cannot reach {urlparse(archive.url).hostname} (offline?); "
                + _manual_instructions(archive, target_dir)
            )
        part = final.with_name(final.name + ".part")
        try:
            _fetch(archive.url, part, timeout, progress)
        except (urllib.error.URLError, OSError, TimeoutError) as error:
            raise DownloadError(
                f"download of {archive.url} stopped ({error}); run the command again to resume "
                f"from {part}, or " + _manual_instructions(archive, target_dir)
            ) from None
        os.replace(part, final)
    found = file_checksum(final, archive.algorithm)
    if found != archive.checksum:
        bad = final.with_name(final.name + ".corrupt")
        os.replace(final, bad)
        raise DownloadError(
            f"{final}: {archive.algorithm} is {found}, expected {archive.checksum}; the file was "
            f"moved to {bad}. Run again to download it afresh, or " + _manual_instructions(archive, target_dir)
        )
    marker = target_dir / ".unpacked"
    if not marker.exists():
        extract_safely(final, target_dir)
        marker.write_text(archive.checksum)
    return target_dir
