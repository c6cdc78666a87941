"""The prepared split a checkpoint was trained on, found from the checkpoint: what evaluate, retune and the
report's figures score when no data is named."""

from __future__ import annotations

from pathlib import Path

from nucleiseg.data.prepare import load_manifest
from nucleiseg.inference.session import InferenceSession
from nucleiseg.util.errors import ConfigError


def split_source(session: InferenceSession, data_folder: str | Path | None) -> tuple[Path, bool]:
    """The prepared dataset to evaluate (given, else the checkpoint's own) and whether images need the model's
    stain normalisation (a split prepared without it) or not (prepared with the same one)."""
    folder = data_folder or (session.hparams.get("data") or {}).get("folder")
    if folder is None:
        raise ConfigError(
            f"{session.source}: the checkpoint does not record its training data; name the data "
            "(e.g. data=paper) or evaluate --images/--masks or --monuseg"
        )
    folder = Path(folder)
    if not (folder / "manifest.json").is_file():
        raise FileNotFoundError(
            f"{folder}: the prepared dataset this checkpoint was trained on is not there (moved or deleted); "
            "name the data to prepare it again (e.g. data=paper data.sources.tnbc.root=...)"
        )
    manifest = load_manifest(folder)
    model_stain = session.hparams.get("stain")
    if manifest.get("stain") and manifest["stain"] != model_stain:
        raise ConfigError(
            f"{folder}: the split was stain-normalised differently from this checkpoint's training data; prepare "
            "it with data.stain.method=none or the same reference"
        )
    return folder, not manifest.get("stain")
