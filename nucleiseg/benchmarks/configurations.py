"""``nucleiseg benchmark``: inference, the raw training step and the real training loop of every configuration.

For each architecture of the paper's Table I (the ImageNet and random-init rows of one encoder share an
architecture, so they share a measurement and the table says so):

- inference, naive: eager fp32, batch 1, contiguous memory;
- inference, fast: the inference session's settings (``predict.*``: batch, channels-last, bf16 where the device
  computes it natively, ``inference_mode``, optionally ``torch.compile``);
- training, naive: eager fp32, batch 1, every image decoded from PNG on disk at every step (no cache);
- training step: the LightningModule's own loss and the configured optimizer (``optimizer``, ``loss``,
  ``data.loader.batch_size``, ``trainer.precision``) on batches already on the device: what the hardware can do;
- training loop: ``train.py``'s own Trainer, DataModule, LightningModule, checkpointing, validation every epoch and
  MLflow logging, on a synthetic set of the paper's size (150 training + 15 validation images) at the benchmark's
  image size, timed after the first epoch. ``loop / step`` is the share of the hardware's rate the real loop keeps.

From the loop rate it projects the wall time of the full 140-run study (20 epochs of 165 images, 10 seeds, 14
configurations). Numbers are measurements, never pass/fail checks.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import lightning as L
import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from nucleiseg.data.image_io import read_mask, read_rgb
from nucleiseg.data.model_input import to_model_input
from nucleiseg.data.synthetic import SyntheticSpec, synthetic_tile
from nucleiseg.inference.speed import measure_inference
from nucleiseg.models.factory import ENCODERS, configuration_label, create_model
from nucleiseg.training.step_timing import random_init_config, random_init_module, training_step_rate, unet_widths
from nucleiseg.util.devices import (
    autocast,
    device_name,
    resolve_inference_precision,
    resolve_precision,
    synchronise,
)
from nucleiseg.util.errors import ConfigError

if TYPE_CHECKING:
    pass

# The loop's default data: synthetic, the paper's sizes (30 MoNuSeg + 50 TNBC-like images, 25 held out, 10% of
# the rest validating: 150 training + 15 validation pairs); KEY=VALUE words on the command line change it.
LOOP_DATA = [
    "data=synthetic",
    "data.sources.synthetic.monuseg_images=30",
    "data.sources.synthetic.tnbc_images_per_slide=[5,5,5,5,5,5,5,5,5,5]",
    "data.protocol.n_test=25",
    "data.protocol.val_fraction=0.1",
]


@dataclass
class Measurement:
    configuration: str
    architecture: str
    device: str
    image_size: int
    infer_naive: float
    infer_fast: float
    infer_batch: int
    infer_precision: str
    train_naive: float
    train_step: float
    loop: float  # images/s of train.py's loop (nan when not measured)
    train_batch: int
    train_precision: str
    loop_epoch_images: int
    fast_vs_naive_max_prob_diff: float

    @property
    def infer_ratio(self) -> float:
        return self.infer_fast / self.infer_naive

    @property
    def train_ratio(self) -> float:
        return self.train_step / self.train_naive

    @property
    def loop_ratio(self) -> float:
        return self.loop / self.train_step


class PngPairs(Dataset):
    """The naive data path: decode image and mask PNGs from disk at every access."""

    def __init__(self, folder: Path) -> None:
        self.images = sorted(folder.glob("image_*.png"))

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        path = self.images[index]
        image = torch.tensor(read_rgb(path)).permute(2, 0, 1)
        mask = torch.tensor(read_mask(path.with_name(path.name.replace("image_", "mask_"))))
        return {"image": image, "mask": mask}


def _write_pngs(folder: Path, count: int, size: int) -> None:
    for k in range(count):
        image, mask = synthetic_tile(SyntheticSpec(size, size, n_nuclei=max(4, size // 12)), 1000 + k)
        Image.fromarray(image).save(folder / f"image_{k:03d}.png")
        Image.fromarray((mask > 0).astype(np.uint8) * 255).save(folder / f"mask_{k:03d}.png")


class EpochClock(L.Callback):
    """Wall time of every training epoch after the first (validation, logging and checkpoints included), with
    device synchronisation at both ends."""

    def __init__(self) -> None:
        self.started = 0.0
        self.seconds = 0.0
        self.epochs = 0

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        synchronise(pl_module.device)
        self.started = time.perf_counter()

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        synchronise(pl_module.device)
        if trainer.current_epoch > 0:  # the first epoch pays warm-up (allocator, cudnn autotune, compile)
            self.seconds += time.perf_counter() - self.started
            self.epochs += 1


@contextlib.contextmanager
def _quiet_libraries() -> Iterator[None]:
    """Lightning's and MLflow's set-up lines and Lightning's pytree notice, which train.py's logging config also
    hides: the benchmark prints its own table, not theirs."""
    from nucleiseg.training.assemble import PYTREE_NOTICE

    loggers = [logging.getLogger(name) for name in ("lightning.pytorch", "lightning.fabric", "mlflow", "alembic")]
    levels = [logger.level for logger in loggers]
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=PYTREE_NOTICE)
        for logger in loggers:
            logger.setLevel(logging.WARNING)
        try:
            yield
        finally:
            for logger, level in zip(loggers, levels, strict=True):
                logger.setLevel(level)


@contextlib.contextmanager
def _scratch_store(uri: str) -> Iterator[str]:
    """MLflow pointed at the scratch store ``uri`` while the loop is measured, then at the user's store again: the
    loop's logger sets MLflow's tracking URI, and with it ``MLFLOW_TRACKING_URI``, to the scratch store, which is
    deleted afterwards; the benchmark's results go where the user said (the variable, ``logger.tracking_uri``)."""
    import mlflow

    environment, current = os.environ.get("MLFLOW_TRACKING_URI"), mlflow.get_tracking_uri()
    try:
        yield uri
    finally:
        mlflow.set_tracking_uri(current)  # (this sets the variable too: put back below as it was)
        if environment is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = environment


def _loop(cfg: DictConfig, scratch: Path) -> tuple[float, int]:
    """Images/s of train.py's real loop for ``cfg`` (after the first epoch), and training images per epoch."""
    from lightning.pytorch.loggers import MLFlowLogger

    from nucleiseg.data.prepare import load_manifest, prepare_dataset
    from nucleiseg.tracking.mlflow_store import use_experiment
    from nucleiseg.training.assemble import build_datamodule, build_module, build_trainer, training_callbacks

    folder = prepare_dataset(cfg.data, log=lambda line: None)
    manifest = load_manifest(folder)
    accelerator = cfg.trainer.accelerator
    L.seed_everything(0, verbose=False)
    datamodule = build_datamodule(cfg, folder, accelerator)
    module = build_module(cfg, manifest, folder, accelerator)
    with _quiet_libraries(), _scratch_store(f"sqlite:///{scratch / 'loop.db'}") as store:
        use_experiment(store, "benchmark-loop", None)
        logger = MLFlowLogger("benchmark-loop", run_name=cfg.encoder, tracking_uri=store)
        clock = EpochClock()
        callbacks = training_callbacks(cfg, scratch / cfg.encoder, manifest["counts"]["val"] > 0, clock)
        trainer = build_trainer(cfg, scratch / cfg.encoder, logger, callbacks)
        trainer.fit(module, datamodule=datamodule)
    per_epoch = manifest["counts"]["train"]
    return per_epoch * clock.epochs / clock.seconds, per_epoch


def _loop_config(
    cfg: DictConfig, encoder: str, image_size: int, epochs: int, scratch: Path, device: torch.device
) -> DictConfig:
    return random_init_config(
        cfg,
        encoder,
        {
            "trainer.max_epochs": epochs,
            "trainer.accelerator": "gpu" if device.type == "cuda" else "cpu",
            "progress_bar": "none",
            "data.sources.synthetic.tile_size": image_size,
            "data.protocol.image_size": image_size,
            "data.prepared_root": str(scratch / "data"),
            "tune.enabled": False,
        },
    )


@dataclass(frozen=True)
class Options:
    encoders: list[str]
    image_size: int
    device: torch.device
    infer_batch: int
    iterations: int
    train_steps: int
    warmup: int
    loop_epochs: int
    compile_model: bool


def _measure(
    cfg: DictConfig, encoder: str, options: Options, scratch: Path, log: Callable[[str], object]
) -> list[Measurement]:
    device, size = options.device, options.image_size
    infer_precision = resolve_inference_precision(cfg.predict.precision, device)
    train_precision = resolve_precision(cfg.trainer.precision, device)
    # inference is timed as the inference session runs it (predict.channels_last, which follows the model's)
    inference = cfg.predict.get("channels_last", cfg.model.channels_last)
    channels_last = device.type == "cuda" if inference == "auto" else bool(inference)
    torch.manual_seed(0)
    model = (
        create_model(encoder, head=cfg.model.head, unet_widths=unet_widths(cfg, encoder), n_rays=cfg.model.n_rays)
        .to(device)
        .eval()
    )
    naive = measure_inference(model, size, 1, "32-true", device, options.warmup, options.iterations)
    probe = torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(0)).to(device)
    with torch.inference_mode():
        naive_out = torch.sigmoid(model(probe).float())
    fast_model = model.to(memory_format=torch.channels_last) if channels_last else model
    if options.compile_model:
        fast_model.compile()
    fast = measure_inference(
        fast_model,
        size,
        options.infer_batch,
        infer_precision,
        device,
        options.warmup,
        options.iterations,
        channels_last,
    )
    with torch.inference_mode(), autocast(device, infer_precision):
        fast_out = torch.sigmoid(fast_model(probe).float())
    del model, fast_model
    pngs = PngPairs(scratch / "png")

    def decoded(index: int) -> dict[str, torch.Tensor]:
        item = pngs[index % len(pngs)]
        return {"image": to_model_input(item["image"][None].to(device)), "mask": item["mask"][None].to(device)}

    naive_module = random_init_module(cfg, encoder, device, False)
    train_naive = training_step_rate(naive_module, decoded, device, "32-true", options.train_steps, options.warmup)
    del naive_module
    loop_cfg = _loop_config(cfg, encoder, size, max(options.loop_epochs, 2), scratch, device)
    from nucleiseg.data.prepare import prepare_dataset
    from nucleiseg.training.assemble import build_datamodule

    datamodule = build_datamodule(loop_cfg, prepare_dataset(loop_cfg.data, log=lambda line: None), device.type)
    datamodule.setup("fit")
    loader = DataLoader(
        datamodule.splits["train"], batch_size=int(cfg.data.loader.batch_size), shuffle=False, drop_last=True
    )
    on_device = [
        {k: v.to(device) for k, v in b.items() if k != "index"} for b, _ in zip(loader, range(8), strict=False)
    ]
    for batch in on_device:
        batch["image"] = to_model_input(batch["image"])
    module = random_init_module(cfg, encoder, device, channels_last)
    if options.compile_model:
        module.model.compile()
    train_step = training_step_rate(
        module, lambda k: on_device[k % len(on_device)], device, train_precision, options.train_steps, options.warmup
    )
    del module, datamodule
    loop, per_epoch = float("nan"), 0
    if options.loop_epochs:
        if options.compile_model:
            OmegaConf.update(loop_cfg, "model.compile", True)
        loop, per_epoch = _loop(loop_cfg, scratch)
    rows = []
    for pretrained in (False, True) if ENCODERS[encoder].has_imagenet_weights else (False,):
        rows.append(
            Measurement(
                configuration=configuration_label(encoder, pretrained),
                architecture=configuration_label(encoder, False),
                device=device_name(device),
                image_size=size,
                infer_naive=naive["images_per_second"],
                infer_fast=fast["images_per_second"],
                infer_batch=options.infer_batch,
                infer_precision=infer_precision,
                train_naive=train_naive,
                train_step=train_step,
                loop=loop,
                train_batch=int(cfg.data.loader.batch_size),
                train_precision=train_precision,
                loop_epoch_images=per_epoch,
                fast_vs_naive_max_prob_diff=float((fast_out - naive_out).abs().max()),
            )
        )
    last = rows[-1]
    log(
        f"{encoder}: inference {last.infer_naive:.1f} -> {last.infer_fast:.1f} img/s; training naive "
        f"{last.train_naive:.1f}, step {last.train_step:.1f}, loop {last.loop:.1f} img/s "
        f"(loop/step {last.loop_ratio:.2f})"
    )
    return rows


def benchmark(cfg: DictConfig, options: Options, log: Callable[[str], object] = print) -> list[Measurement]:
    """Measure every architecture of ``options.encoders`` with the settings of ``cfg``."""
    if options.image_size < 64 or options.image_size % 32:
        raise ConfigError(
            f"--image-size {options.image_size}: expected a multiple of 32, at least 64 (the deepest "
            "encoder stage must keep more than one pixel for BatchNorm to train at batch 1)"
        )
    measurements = []
    with tempfile.TemporaryDirectory(prefix="nucleiseg-bench-") as scratch:
        scratch = Path(scratch)
        (scratch / "png").mkdir()
        _write_pngs(scratch / "png", 8, options.image_size)
        for encoder in options.encoders:
            measurements += _measure(cfg, encoder, options, scratch, log)
    return measurements


def projected_study_hours(measurements: list[Measurement], cfg: DictConfig) -> float:
    """Wall time of the paper's study at the measured loop rates (the raw step where the loop was not measured):
    epochs x images per epoch + the test split, x seeds, for every configuration, one run at a time."""
    epochs, seeds = int(cfg.trainer.max_epochs), 10
    images = 165  # the paper's 150 training + 15 validation pairs per epoch (validation costs a forward only)
    seconds = 0.0
    for m in measurements:
        rate = m.loop if m.loop == m.loop else m.train_step
        seconds += seeds * (epochs * images / rate + 25 / m.infer_fast)
    return seconds / 3600
