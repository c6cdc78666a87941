"""Shared fixtures: synthetic datasets written in the published TNBC/MoNuSeg layouts, composed configs."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from skimage.measure import find_contours

from nucleiseg.data.synthetic import SyntheticSpec, synthetic_tile

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
REPO = Path(__file__).resolve().parents[1]


def run_train(*words: str, multirun: bool = False, timeout: float = 600) -> subprocess.CompletedProcess:
    """``python train.py [-m] WORDS`` from the repository root, as a user types it; output captured."""
    command = [sys.executable, str(REPO / "train.py"), *(["-m"] if multirun else []), *words]
    return subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=timeout)


def run_train_here(*words: str, multirun: bool = False) -> subprocess.CompletedProcess:
    """:func:`run_train` inside this process: train.py's own key check and Hydra app with ``sys.argv`` set as the
    user types it, stdout, stderr and the exit code captured the same way. It saves the 5 s of imports a new
    process pays; what needs a process of its own (signals, DDP, SLURM, a server's environment) uses run_train.
    Hydra's global state, every logger's handlers and levels, warning filters, MLflow's tracking URI, torch's thread
    count, the working folder and the environment are restored after."""
    import contextlib
    import importlib.util
    import io
    import logging
    import warnings

    import mlflow
    import torch
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig

    argv = ["train.py", *(["-m"] if multirun else []), *words]
    out, err, code = io.StringIO(), io.StringIO(), 0
    saved = (sys.argv, os.getcwd(), dict(os.environ), torch.get_num_threads(), mlflow.get_tracking_uri())
    manager = logging.root.manager
    loggers = {"": logging.root, **{n: lg for n, lg in manager.loggerDict.items() if isinstance(lg, logging.Logger)}}
    states = {n: (lg.handlers[:], lg.level, lg.propagate, lg.disabled) for n, lg in loggers.items()}
    try:
        sys.argv = argv
        os.chdir(REPO)
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), warnings.catch_warnings():
            try:
                # run as `python train.py` runs it: the module named __main__ (Hydra finds conf/ next to the file
                # of a task function defined in __main__), its `if __name__ == "__main__"` block included
                spec = importlib.util.spec_from_file_location("__main__", REPO / "train.py")
                spec.loader.exec_module(importlib.util.module_from_spec(spec))
            except SystemExit as stop:
                code = stop.code if isinstance(stop.code, int) else (0 if stop.code is None else 1)
    finally:
        sys.argv = saved[0]
        os.chdir(saved[1])
        mlflow.set_tracking_uri(saved[4])  # before the environment: MLflow writes MLFLOW_TRACKING_URI too
        os.environ.clear()
        os.environ.update(saved[2])
        torch.set_num_threads(saved[3])
        for name, logger in [("", logging.root), *manager.loggerDict.items()]:
            if not isinstance(logger, logging.Logger):
                continue
            handlers, level, propagate, disabled = states.get(name, ([], logging.NOTSET, True, False))
            for handler in set(logger.handlers) - set(handlers):
                handler.close()  # Hydra's log files and streams of this run
            logger.handlers[:], logger.propagate, logger.disabled = handlers, propagate, disabled
            logger.setLevel(level)
        GlobalHydra.instance().clear()
        HydraConfig.instance().cfg = None
    return subprocess.CompletedProcess(argv, code, out.getvalue(), err.getvalue())


def write_tnbc(root: Path, images_per_slide=(3, 2, 2), size: int = 64, seed: int = 0) -> Path:
    """A TNBC-layout folder: ``Slide_XX/XX_K.png`` (RGBA like the release) and ``GT_XX/XX_K.png`` {0,255}."""
    for slide, count in enumerate(images_per_slide, start=1):
        (root / f"Slide_{slide:02d}").mkdir(parents=True)
        (root / f"GT_{slide:02d}").mkdir(parents=True)
        for k in range(1, count + 1):
            image, mask = synthetic_tile(SyntheticSpec(size, size, n_nuclei=6), seed + slide * 10 + k)
            rgba = np.concatenate([image, np.full((size, size, 1), 255, np.uint8)], axis=-1)
            Image.fromarray(rgba).save(root / f"Slide_{slide:02d}" / f"{slide:02d}_{k}.png")
            Image.fromarray(((mask > 0) * 255).astype(np.uint8)).save(root / f"GT_{slide:02d}" / f"{slide:02d}_{k}.png")
    return root


def region_xml(polygons: list[np.ndarray], ids: list[str] | None = None) -> str:
    """Aperio ImageScope XML with one Region per polygon (``Nx2`` arrays of x, y)."""
    regions = []
    for index, polygon in enumerate(polygons):
        region_id = ids[index] if ids else str(index + 1)
        vertices = "".join(f'<Vertex X="{x:.2f}" Y="{y:.2f}"/>' for x, y in polygon)
        regions.append(f'<Region Id="{region_id}" Type="0"><Attributes/><Vertices>{vertices}</Vertices></Region>')
    return (
        '<Annotations MicronsPerPixel="0.25"><Annotation Id="1"><Regions>'
        + "".join(regions)
        + "</Regions></Annotation></Annotations>"
    )


def mask_polygons(mask: np.ndarray) -> list[np.ndarray]:
    """Outline of each instance as an ``Nx2`` (x, y) polygon."""
    polygons = []
    for label in range(1, mask.max() + 1):
        contours = find_contours(np.pad(mask == label, 1).astype(float), 0.5)
        if contours:
            longest = max(contours, key=len) - 1  # undo the padding
            polygons.append(longest[:, ::-1])
    return polygons


def write_monuseg(
    root: Path,
    n_images: int = 4,
    size: int = 80,
    seed: int = 100,
    tissue: str = "Tissue Images",
    annotations: str = "Annotations",
) -> Path:
    """A MoNuSeg training-release folder: ``Tissue Images/TCGA-*.tif`` + ``Annotations/TCGA-*.xml``."""
    (root / tissue).mkdir(parents=True)
    (root / annotations).mkdir(parents=True)
    for index in range(n_images):
        image, mask = synthetic_tile(SyntheticSpec(size, size, n_nuclei=5, touching_fraction=0.0), seed + index)
        name = f"TCGA-{10 + index:02d}-{1000 + index}-01Z-00-DX1"
        Image.fromarray(image).save(root / tissue / f"{name}.tif", compression="tiff_lzw")
        (root / annotations / f"{name}.xml").write_text(region_xml(mask_polygons(mask)))
    return root


@pytest.fixture
def tnbc_root(tmp_path: Path) -> Path:
    return write_tnbc(tmp_path / "tnbc")


@pytest.fixture
def monuseg_root(tmp_path: Path) -> Path:
    return write_monuseg(tmp_path / "MoNuSeg 2018 Training Data")


@pytest.fixture(scope="session")
def tracking_uri(tmp_path_factory: pytest.TempPathFactory) -> str:
    """One MLflow SQLite store for the whole session (creating one costs seconds); tests use their own study."""
    return f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"


# The modified U-Net at 1/8 of the paper's width: the same code paths at a fraction of the CPU time (the
# full-width networks are exercised by the model tests and the slow tests)
NARROW = "model.unet_widths=[8,16,32,64,128]"


def fast_run_overrides(root: Path, tracking_uri: str) -> list[str]:
    """Overrides for a fast CPU run on synthetic data (32 px, 1 epoch), all outputs under ``root``."""
    return [
        f"paths.root_dir={root}",
        f"logger.tracking_uri={tracking_uri}",
        "trainer.accelerator=cpu",
        "trainer.max_epochs=1",
        "data.sources.synthetic.tile_size=48",
        "data.protocol.image_size=32",
        NARROW,
        "progress_bar=none",
    ]


@pytest.fixture
def train_overrides(tmp_path: Path, tracking_uri: str) -> list[str]:
    """:func:`fast_run_overrides` for an in-process run of the quick-start experiment, one overlay logged."""
    return ["experiment=quickstart", *fast_run_overrides(tmp_path, tracking_uri), "logger.overlays=1"]


@pytest.fixture(autouse=True)
def _no_tracking_env(monkeypatch: pytest.MonkeyPatch) -> None:
    # a developer's MLFLOW_TRACKING_URI must never receive test runs
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)


def tool(name: str) -> str | None:
    """A command installed with the dev extra: next to this interpreter (a venv not on PATH) or on PATH."""
    import shutil
    import sys

    beside = Path(sys.executable).parent / name
    return str(beside) if beside.is_file() else shutil.which(name)


def requires_shared_data(*parts: str):
    path = SHARED_DATA.joinpath(*parts)
    return pytest.mark.skipif(not path.exists(), reason=f"real dataset copy {path} is absent (dev machines only)")


os.environ.setdefault("NUCLEISEG_CONF", str(REPO / "conf"))
# models the tests download or export (ONNX copies of model files) go to a cache of their own, not the user's
os.environ.setdefault("NUCLEISEG_CACHE", tempfile.mkdtemp(prefix="nucleiseg-test-cache-"))


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory, tracking_uri):
    """A small modified U-Net trained on 64x64 synthetic tiles (native scale): ``(cfg, overrides, metrics, ckpt)``."""
    import json

    from nucleiseg.config.compose import compose
    from nucleiseg.training.identity import run_folder
    from nucleiseg.training.run import run

    root = tmp_path_factory.mktemp("trained")
    overrides = [
        "experiment=quickstart",
        f"paths.root_dir={root}",
        f"logger.tracking_uri={tracking_uri}",
        "trainer.accelerator=cpu",
        "trainer.max_epochs=5",
        "data.sources.synthetic.tile_size=64",
        "data.protocol.image_size=64",
        "model.unet_widths=[16,32,64,128,256]",
        "logger.overlays=0",
        "progress_bar=none",
        "study=evaluated",
        "optimizer.lr=0.001",
    ]
    cfg = compose(overrides)
    metrics = run(cfg)
    done = json.loads((run_folder(cfg) / "done.json").read_text())
    return cfg, overrides, metrics, Path(done["test_checkpoint"])
