"""Download the public datasets with resume and checksum verification.

Each entry names the archive, where it is published, its checksum, its licence and the folder layout it unpacks to;
a dataset published as several files (PanNuke's three folds) has a tuple of entries. Downloads go to ``NAME.part``
(resumed with an HTTP Range request after an interruption), are verified, then renamed; each archive is unpacked
into ``DIR/<dataset>/`` only after its verification. Where no checksum is published the file cannot be verified:
it is unpacked with a warning that says so and gives its sha256. Where no direct link works (a login page, a Drive
folder), the message says where to get the files by hand.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from nucleiseg.data.archive import extract_safely
from nucleiseg.util.errors import NucleisegError
from nucleiseg.util.network import host_reachable

log = logging.getLogger(__name__)


class DownloadError(NucleisegError):
    """A download failed (network, checksum); the message says where to get the files by hand."""


@dataclass(frozen=True)
class Archive:
    dataset: str
    url: str | None  # None: no direct link works (login page, Drive folder): fetched by hand, then verified here
    filename: str
    algorithm: str | None  # "sha256" or "md5"; None where no checksum is published
    checksum: str | None
    homepage: str
    layout: str
    licence: str = ""
    note: str = ""  # where the checksum comes from, what could not be verified


NON_COMMERCIAL = "CC BY-NC-SA 4.0 (non-commercial, share alike)"
PANNUKE_LAYOUT = "DIR/pannuke/Fold N/images/foldN/images.npy + types.npy and DIR/pannuke/Fold N/masks/foldN/masks.npy"
LIZARD_LAYOUT = "DIR/lizard/Lizard_Images1/*.png, Lizard_Images2/*.png and Lizard_Labels/Labels/*.mat + info.csv"
MONUSAC_LAYOUT = "DIR/monusac/<release folder>/TCGA-*/NAME.tif (or .svs) + NAME.xml, one folder per patient"


def _pannuke(fold: int, sha256: str) -> Archive:
    return Archive(
        "pannuke",
        f"https://warwick.ac.uk/fac/cross_fac/tia/data/pannuke/fold_{fold}.zip",
        f"fold_{fold}.zip",
        "sha256",
        sha256,
        "https://warwick.ac.uk/fac/cross_fac/tia/data/pannuke",
        PANNUKE_LAYOUT,
        NON_COMMERCIAL,  # the README inside each fold zip
        "sha256 as published by torch_em's PanNuke loader (commit 157ca830)",
    )


def _lizard(name: str, sha256: str) -> Archive:
    return Archive(
        "lizard",
        f"https://warwick.ac.uk/fac/cross_fac/tia/data/lizard/{name}",
        name,
        "sha256",
        sha256,
        "https://warwick.ac.uk/fac/cross_fac/tia/data/lizard",
        LIZARD_LAYOUT,
        NON_COMMERCIAL,  # the README.txt of lizard_labels.zip
        "sha256 as published by torch_em's Lizard loader (commit 3b830a5d); torch_em found these links dead in "
        "2023 and moved to the Kaggle mirror aadimator/lizard-dataset (same files and layout, one level deeper)",
    )


def _monusac(name: str, drive_id: str, sha256: str) -> Archive:
    return Archive(
        "monusac",
        f"https://drive.google.com/uc?export=download&confirm=t&id={drive_id}",
        name,
        "sha256",
        sha256,
        "https://monusac-2020.grand-challenge.org/Data/",
        MONUSAC_LAYOUT,
        NON_COMMERCIAL,  # the challenge's data page
        "sha256 as published by torch_em's MoNuSAC loader (commit 157ca830)",
    )


ARCHIVES: dict[str, Archive | tuple[Archive, ...]] = {
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
    "pannuke": (
        _pannuke(1, "6e19ad380300e8ce9480f9ab6a14cc91fa4b6a511609b40e3d70bdf9c881ed0b"),
        _pannuke(2, "5bc540cc509f64b5f5a274d6e5a245527dbd3e6d3155d43555115c5d54709b07"),
        _pannuke(3, "c14d372981c42f611ebc80afad01702b89cad8c1b3089daa31931cf5a4b1a39d"),
    ),
    "lizard": (
        _lizard("lizard_images1.zip", "d2c4e7c83dff634624c9c14d4a1a0b821d4e9ac41e05e3b36303d8f0c510113d"),
        _lizard("lizard_images2.zip", "9f529f30d9de66587167991a8bf75aaad07ce1d518b72e825c868ac7c33015ed"),
        _lizard("lizard_labels.zip", "79f22ca83ca535682fba340cbc8bb66b74abd1ead4151ffc8593f204fcb97dec"),
    ),
    "monusac": (
        _monusac(
            "monusac_train.zip",
            "1lxMZaAPSpEHLSxGA9KKMt_r-4S8dwLhq",
            "5b7cbeb34817a8f880d3fddc28391e48d3329a91bf3adcbd131ea149a725cd92",
        ),
        _monusac(
            "monusac_test.zip",
            "1G54vsOdxWY1hG7dzmkeK3r0xz9s-heyQ",
            "bcbc38f6bf8b149230c90c29f3428cc7b2b76f8acd7766ce9fc908fc896c2674",
        ),
    ),
    "consep": Archive(
        dataset="consep",
        url=None,  # the HoVer-Net data page has asked for a login since 2023 (vqdang/hover_net issues #267, #285)
        filename="consep_dataset.zip",
        algorithm=None,
        checksum=None,
        homepage="https://warwick.ac.uk/fac/cross_fac/tia/data/hovernet/",
        layout="DIR/consep/CoNSeP/Train|Test/Images/*.png and Train|Test/Labels/*.mat",
        licence="not stated in the release (its README asks for a citation of HoVer-Net); kaiko-ai/eva's docs say "
        "Apache 2.0: unverified",
        note="no checksum is published (torch_em reads a re-tiled Kaggle copy instead)",
    ),
    "conic": Archive(
        dataset="conic",
        url=None,  # published as a Google Drive folder (drive/folders/1il9jG7uA4-ebQ_lNmXbbF2eOK9uNwheb), no archive
        filename="conic.zip",
        algorithm=None,
        checksum=None,
        homepage="https://conic-challenge.grand-challenge.org/",
        layout="DIR/conic/images.npy, labels.npy, counts.csv, patch_info.csv",
        licence=NON_COMMERCIAL + ", as Lizard, which CoNIC is cut from (not stated on the pages we could read)",
        note="no checksum is published",
    ),
}


def archives_of(dataset: str, archives: dict[str, Archive | tuple[Archive, ...]] = ARCHIVES) -> tuple[Archive, ...]:
    """The archive(s) of ``dataset``, as a tuple."""
    if dataset not in archives:
        raise DownloadError(f"unknown dataset {dataset!r}; expected one of {sorted(archives)}")
    entry = archives[dataset]
    return entry if isinstance(entry, tuple) else (entry,)


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
    import urllib.request  # here, not at the top: the CLI reads ARCHIVES to build its choices

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
    if total is not None and done < total:  # urllib returns a short body without an error when the server hangs up
        raise ConnectionError(f"the connection closed after {done:,} of {total:,} bytes")


def download(
    dataset: str,
    to: str | Path,
    timeout: float = 10.0,
    archives: dict[str, Archive | tuple[Archive, ...]] = ARCHIVES,
    progress: Callable[[int, int | None], None] = lambda done, total: None,
) -> Path:
    """Download, verify and unpack every archive of ``dataset`` into ``to/<dataset>``; return that folder."""
    entries = archives_of(dataset, archives)
    target_dir = Path(to).expanduser() / entries[0].dataset
    target_dir.mkdir(parents=True, exist_ok=True)
    for archive in entries:
        final = _fetch_archive(archive, target_dir, timeout, progress)
        digest = _verify(archive, final, target_dir)
        # one archive: the marker keeps its historical name; several: one marker each
        marker = target_dir / (".unpacked" if len(entries) == 1 else f".{archive.filename}.unpacked")
        if not marker.exists():
            extract_safely(final, target_dir)
            marker.write_text(digest)
    return target_dir


def _fetch_archive(
    archive: Archive, target_dir: Path, timeout: float, progress: Callable[[int, int | None], None]
) -> Path:
    """``target_dir/filename``, fetched (or resumed) unless it is there already."""
    final = target_dir / archive.filename
    if final.exists():
        return final
    if archive.url is None:
        raise DownloadError(
            f"{archive.dataset}: {archive.filename} cannot be downloaded automatically; "
            + _manual_instructions(archive, target_dir)
        )
    if not _reachable(archive.url, timeout):
        raise DownloadError(
            f"cannot reach {urlparse(archive.url).hostname} (offline?); " + _manual_instructions(archive, target_dir)
        )
    import http.client
    import urllib.error

    part = final.with_name(final.name + ".part")
    try:
        _fetch(archive.url, part, timeout, progress)
    except (urllib.error.URLError, http.client.HTTPException, OSError, TimeoutError) as error:
        raise DownloadError(
            f"download of {archive.url} stopped ({error}); run the command again to resume "
            f"from {part}, or " + _manual_instructions(archive, target_dir)
        ) from None
    os.replace(part, final)
    return final


def _verify(archive: Archive, final: Path, target_dir: Path) -> str:
    """Check ``final`` against the published checksum (a mismatch is moved aside and refused); without one, say
    that it cannot be verified. Returns the digest."""
    if archive.checksum is None or archive.algorithm is None:
        digest = file_checksum(final, "sha256")
        log.warning(
            "%s: no checksum is published for %s, so it cannot be verified (its sha256 is %s: compare it with "
            "another copy); unpacking it as it is",
            final,
            archive.dataset,
            digest,
        )
        return digest
    found = file_checksum(final, archive.algorithm)
    if found != archive.checksum:
        bad = final.with_name(final.name + ".corrupt")
        os.replace(final, bad)
        raise DownloadError(
            f"{final}: {archive.algorithm} is {found}, expected {archive.checksum}; the file was "
            f"moved to {bad}. Run again to download it afresh, or " + _manual_instructions(archive, target_dir)
        )
    return found
