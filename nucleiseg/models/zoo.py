"""Ready models by name: the one nucleiseg ships inside the package, and others published later.

``pretrained/registry.json`` maps a name to its file (shipped in the package) or its URL, its SHA-256, its size, its
card and what it is (head, resolution, licence, headline metrics); ``default`` names the model ``predict`` uses when
given none. A model that is not shipped is downloaded once into the user's cache (``NUCLEISEG_CACHE``, else
``~/.cache/nucleiseg``), so a new model can be published without a release of the package.

Every file is checked against its SHA-256 before it is loaded: a file that does not match is refused with both
hashes, never loaded; a URL given without ``#sha256=`` is trusted on first use (its hash is recorded then and checked
at every later use). Weights are safetensors (no pickle) or weights-only checkpoints.

Downloads and the cache's checks are :mod:`nucleiseg.models.fetch`.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import logging
import os
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

from nucleiseg.models.fetch import (  # noqa: F401 - fetching lives there; these names stay importable from here
    MAX_UNKNOWN_BYTES,
    MIN_DEADLINE_S,
    SLOWEST_RATE,
    UNKNOWN_SIZE_DEADLINE_S,
    ModelError,
    cached_copy,
    cleanup_on_termination,
    download,
    download_deadline,
    file_sha256,
    record_sha256,
    recorded_sha256,
    verify,
    writable_cache_folder,
)

log = logging.getLogger(__name__)
PRETRAINED = Path(__file__).resolve().parent / "pretrained"
DEFAULT = "default"


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
    types: tuple[str, ...] = ()  # the nucleus classes of a typed model; () for an untyped one

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
    entries = {
        name: ModelEntry(name=name, **{**values, "types": tuple(values.get("types") or ())})
        for name, values in raw.get("models", {}).items()
    }
    return raw.get("default", ""), entries


def closest_names(name: str, entries: dict[str, ModelEntry]) -> str:
    """``" (did you mean NAME?)"`` with the registered names (and ``default``) closest to ``name``, or ``""``."""
    close = difflib.get_close_matches(name, [DEFAULT, *sorted(entries)], n=2, cutoff=0.6)
    return f" (did you mean {' or '.join(close)}?)" if close else ""


def resolve(spec: str | None) -> tuple[Path, str]:
    """A model named, located or linked: ``(local file, how to call it)``.

    ``None``/``default``: the default model; a registered name; a path to a ``.ckpt``/``.safetensors``; an
    ``http(s)://`` URL (with ``#sha256=HEX`` to check it; without, trusted on first use). ``models:/NAME/VERSION`` is
    MLflow's registry, which the command-line layer resolves (it needs the tracking store)."""
    default, entries = registry()
    name = default if spec in (None, "", DEFAULT) else spec
    if name in entries:
        entry = entries[name]
        label = f"{name} (default model)" if name == default else name
        if entry.shipped:
            return verify(PRETRAINED / entry.file, entry.sha256, f"model {name}"), label
        suffix = Path(entry.url.split("?")[0]).suffix or ".safetensors"
        file_name = f"{name}-{entry.sha256[:12]}{suffix}"
        path = download(entry.url, entry.sha256, cache_dir() / "models", file_name, size_bytes=entry.size_bytes)
        return verify(path, entry.sha256, f"model {name}"), label
    if name.startswith(("http://", "https://")):
        url, _, fragment = name.partition("#")
        sha256 = fragment.removeprefix("sha256=") if fragment.startswith("sha256=") else None
        if sha256 is None:
            log.warning(
                "%s: no #sha256=HEX given, so the download cannot be checked against the published file (its SHA-256 "
                "is recorded at the first download and checked at every later use)",
                url,
            )
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
        f"--model {spec}: not a file, a URL or a known model{closest_names(spec, entries)}; known models: "
        f"{', '.join(sorted(entries))} (`nucleiseg models` describes them), or models:/NAME/VERSION from MLflow's "
        "registry"
    )


def model_card(spec: str) -> str:
    """The card of registered model ``spec`` (``default``: the default model's): its Markdown card when it has one,
    else one made from its registry entry."""
    default, entries = registry()
    name = default if spec == DEFAULT else spec
    if name not in entries:
        known = ", ".join([DEFAULT, *sorted(entries)])
        raise ModelError(f"--card {spec}: no such model{closest_names(spec, entries)}; known: {known}")
    entry = entries[name]
    if entry.card and (PRETRAINED / entry.card).is_file():
        return (PRETRAINED / entry.card).read_text()
    facts = {
        "Description": entry.description,
        "Architecture": entry.architecture,
        "Head": entry.head,
        "Resolution": f"{entry.microns_per_pixel} um/px" if entry.microns_per_pixel else "",
        "Licence": entry.licence,
        "File": (
            f"`{entry.file}`, in the package"
            if entry.shipped
            else f"{entry.url}, downloaded into the cache on first use ({entry.size_bytes:,} bytes)"
        ),
        "SHA-256": f"`{entry.sha256}` (checked at every load)",
        "Metrics": ", ".join(f"{key} {value}" for key, value in entry.metrics.items()),
    }
    title = f"# Model card: {name}" + (" (the default model)" if name == default else "")
    lines = [title, "", "No card file is registered for this model; what its registry entry says:", ""]
    return "\n".join([*lines, *(f"- {key}: {value}" for key, value in facts.items() if value)]) + "\n"


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
                "types": ", ".join(entry.types) or "none (untyped)",
                "um_per_pixel": entry.microns_per_pixel,
                "size_mb": round(entry.size_bytes / 1e6, 1),
                "licence": entry.licence,
                "where": where,
                **entry.metrics,
            }
        )
    return rows
