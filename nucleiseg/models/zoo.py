"""Ready models by name: the one nucleiseg ships inside the package, and others published later.

``pretrained/registry.json`` maps a name to its file (shipped in the package) or its URL, its SHA-256, its card and
what it is (head, resolution, licence, headline metrics); ``default`` names the model ``predict`` uses when given
none. A model that is not shipped is downloaded once into the user's cache (``NUCLEISEG_CACHE``, else
``~/.cache/nucleiseg``) with pooch, which shows progress, checks the SHA-256 and moves the file into place only when
it is complete and right, so a new model can be published without a release of the package.

Every file is checked against its SHA-256 before it is loaded: a file that does not match is refused with both
hashes, never loaded. Weights are safetensors (no pickle) or weights-only checkpoints.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sys
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

from nucleiseg.util.errors import NucleisegError

log = logging.getLogger(__name__)
PRETRAINED = Path(__file__).resolve().parent / "pretrained"
DEFAULT = "default"


class ModelError(NucleisegError):
    """A model cannot be found, downloaded or verified; the message says which and why."""


@dataclass(frozen=True)
class ModelEntry:
    """One registered model (an entry of ``registry.json``)."""

    name: str
    sha256: str
    size_bytes: int
    file: str | None = None  # shipped in nucleiseg/models/pretrained/
    url: str | None = None  # else downloaded from here
    description: str = ""
    licence: str = ""
    microns_per_pixel: float | None = None
    head: str = ""
    architecture: str = ""
    metrics: dict[str, float] = field(default_factory=dict)
    card: str | None = None  # Markdown file beside the weights

    @property
    def shipped(self) -> bool:
        return self.file is not None


def cache_dir() -> Path:
    """``NUCLEISEG_CACHE`` or ``~/.cache/nucleiseg``."""
    return Path(os.environ.get("NUCLEISEG_CACHE", Path.home() / ".cache" / "nucleiseg")).expanduser()


@lru_cache(maxsize=4)
def _read_registry(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text())


def registry(path: Path | None = None) -> tuple[str, dict[str, ModelEntry]]:
    """``(default model's name, {name: entry})`` from ``registry.json``."""
    raw = _read_registry(path or PRETRAINED / "registry.json")
    entries = {name: ModelEntry(name=name, **values) for name, values in raw.get("models", {}).items()}
    return raw.get("default", ""), entries


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def verify(path: Path, expected: str, what: str) -> Path:
    """``path`` if its SHA-256 is ``expected``; else a :class:`ModelError` with both hashes."""
    found = file_sha256(path)
    if found != expected.lower():
        raise ModelError(
            f"{what}: {path} has SHA-256 {found}, expected {expected}: damaged or not the published file; it is "
            "refused (delete it to download it again)"
        )
    return path


def _progress() -> bool:
    return sys.stderr.isatty()


def download(url: str, sha256: str | None, folder: Path, file_name: str, timeout: float = 30.0) -> Path:
    """Fetch ``url`` into ``folder/file_name`` once (pooch: temporary file, checksum, then rename). A failed,
    wrong or HTML answer leaves nothing in ``folder``; errors are one line naming the URL."""
    import pooch
    import requests

    folder.mkdir(parents=True, exist_ok=True)
    target = folder / file_name
    downloader = pooch.HTTPDownloader(progressbar=_progress(), timeout=timeout)
    try:
        path = Path(
            pooch.retrieve(
                url,
                known_hash=f"sha256:{sha256}" if sha256 else None,
                fname=file_name,
                path=folder,
                downloader=downloader,
            )
        )
    except ValueError as error:  # pooch: the hash does not match (the file is not kept)
        target.unlink(missing_ok=True)
        raise ModelError(
            f"{url}: the download is not the published file ({str(error).splitlines()[0][:200]})"
        ) from None
    except requests.exceptions.RequestException as error:
        target.unlink(missing_ok=True)
        raise ModelError(f"{url}: could not be downloaded ({type(error).__name__}: {str(error)[:160]})") from None
    with path.open("rb") as handle:
        head = handle.read(512).lstrip().lower()
    if head.startswith((b"<!doctype html", b"<html", b"<?xml", b"<head")):
        path.unlink(missing_ok=True)
        raise ModelError(f"{url}: the server answered with a web page, not model weights (a login or error page?)")
    return path


def resolve(spec: str | None) -> tuple[Path, str]:
    """A model named, located or linked: ``(local file, how to call it)``.

    ``None``/``default``: the default model; a registered name; a path to a ``.ckpt``/``.safetensors``; an
    ``http(s)://`` URL (with ``#sha256=HEX`` to check it). ``models:/NAME/VERSION`` is MLflow's registry, which the
    command-line layer resolves (it needs the tracking store)."""
    default, entries = registry()
    name = default if spec in (None, "", DEFAULT) else spec
    if name in entries:
        entry = entries[name]
        label = f"{name} (default model)" if name == default else name
        if entry.shipped:
            return verify(PRETRAINED / entry.file, entry.sha256, f"model {name}"), label
        suffix = Path(entry.url.split("?")[0]).suffix or ".safetensors"
        path = download(entry.url, entry.sha256, cache_dir() / "models", f"{name}-{entry.sha256[:12]}{suffix}")
        return verify(path, entry.sha256, f"model {name}"), label
    if name.startswith(("http://", "https://")):
        url, _, fragment = name.partition("#")
        sha256 = fragment.removeprefix("sha256=") if fragment.startswith("sha256=") else None
        if sha256 is None:
            log.warning("%s: no #sha256=HEX given, so the download cannot be checked against the published file", url)
        key = hashlib.sha256(url.encode()).hexdigest()[:16]
        suffix = Path(url.split("?")[0]).suffix or ".ckpt"
        return download(url, sha256, cache_dir() / "urls", f"{key}{suffix}"), url
    path = Path(name).expanduser()
    if path.is_file():
        return path, str(path)
    if spec in (None, "", DEFAULT):
        raise ModelError(f"no default model in {PRETRAINED / 'registry.json'}: name one with --model (a file or URL)")
    if path.suffix in (".ckpt", ".safetensors", ".pt", ".pth") or "/" in name:
        raise ModelError(f"--model {spec}: checkpoint not found (no such file)")
    raise ModelError(
        f"--model {spec}: not a file, a URL or a known model; known models: {', '.join(sorted(entries))} "
        "(`nucleiseg models` describes them), or models:/NAME/VERSION from MLflow's registry"
    )


def describe_models() -> list[dict[str, Any]]:
    """One row per registered model for ``nucleiseg models``: what it is, where it is, what it scored."""
    default, entries = registry()
    rows = []
    for name, entry in entries.items():
        if entry.shipped:
            where = "in the package"
        else:
            cached = list((cache_dir() / "models").glob(f"{name}-{entry.sha256[:12]}*"))
            where = "downloaded" if cached else "downloads on first use"
        rows.append(
            {
                "name": name + (" (default)" if name == default else ""),
                "architecture": entry.architecture,
                "head": entry.head,
                "um_per_pixel": entry.microns_per_pixel,
                "size_mb": round(entry.size_bytes / 1e6, 1),
                "licence": entry.licence,
                "where": where,
                **entry.metrics,
            }
        )
    return rows
