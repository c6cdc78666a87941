"""A slide's journal: every finished window on disk at once, so a killed run continues where it stopped and
never mixes two inputs, models or settings."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from nucleiseg.util.errors import ConfigError
from nucleiseg.util.writing import write_bytes_atomic, write_json_atomic

if TYPE_CHECKING:
    from nucleiseg.predict.slides.plan import Plan

JOURNAL = ".windows"


class Journal:
    """``OUT/NAME/.windows/``: one JSON file per finished window (+ ``.npz`` labels), and the plan they share,
    which names the input (size and content hash), the model and settings (fingerprint) and the geometry."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder / JOURNAL

    def start(self, fingerprint: str, plan: Plan, tissue_windows: list[int], identity: dict | None = None) -> None:
        from nucleiseg.predict.input_identity import describe_input, same_input

        state = {"fingerprint": fingerprint, "plan": asdict(plan), "tissue_windows": tissue_windows, "input": identity}
        found = self.state()
        if found is not None:
            if identity is not None and not same_input(found.get("input"), identity):
                raise ConfigError(
                    f"{self.folder}: windows of another input ({describe_input(found.get('input'))}); pass --overwrite"
                )
            if found["fingerprint"] != fingerprint or found["plan"] != state["plan"]:
                raise ConfigError(f"{self.folder}: windows of another model or other settings; pass --overwrite")
        self.folder.mkdir(parents=True, exist_ok=True)
        write_json_atomic(self.folder / "plan.json", state)

    def state(self) -> dict | None:
        path = self.folder / "plan.json"
        return json.loads(path.read_text()) if path.is_file() else None

    def done(self, with_labels: bool = False) -> set[int]:
        """Windows finished (with their labels, when ``with_labels``: a run that adds ``labels.tif`` redoes the
        windows an earlier run finished without them)."""
        finished = set()
        for path in self.folder.glob("W*.json"):
            index = int(path.stem[1:])
            if (
                not with_labels
                or (self.folder / f"W{index:07d}.npz").is_file()
                or not json.loads(path.read_text())["n"]
            ):
                finished.add(index)
        return finished

    def write(self, entry: dict[str, Any]) -> None:
        import io

        labels = entry.pop("labels", None)
        if labels is not None:
            buffer = io.BytesIO()
            np.savez_compressed(buffer, labels=labels.astype(np.int32))
            write_bytes_atomic(self.folder / f"W{entry['index']:07d}.npz", buffer.getvalue())
        write_bytes_atomic(self.folder / f"W{entry['index']:07d}.json", json.dumps(entry).encode())

    def entries(self) -> Iterator[dict[str, Any]]:
        for path in sorted(self.folder.glob("W*.json")):
            yield json.loads(path.read_text())

    def labels(self, index: int) -> np.ndarray | None:
        """A window's nuclei over its read region (core + margin), or None when it has none."""
        path = self.folder / f"W{index:07d}.npz"
        if not path.is_file():
            return None
        with np.load(path) as stored:
            return stored["labels"]
