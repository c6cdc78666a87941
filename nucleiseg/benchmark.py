"""``nucleiseg benchmark``: training and inference throughput of every configuration, fast path vs naive.

For each architecture of the paper's Table I (the ImageNet and random-init rows of one encoder share an
architecture, so they share a measurement and the table says so):

- naive inference: eager fp32, batch 1, contiguous memory;
- fast inference: ``torch.inference_mode``, a batch, channels-last memory, bf16 autocast where the device
  computes bf16 natively, optionally ``torch.compile``;
- naive training: eager fp32, batch 1, every image decoded from PNG on disk at every step (no cache);
- fast training: the in-memory uint8 cache of the DataModule, the paper's batch (3) or ``--train-batch``,
  mixed precision and channels-last where they pay, real Adam steps on the paper's loss.

Both run in the same process on the same data, and the table reports the ratio. From the fast training rate it
projects the wall time of the full 140-run study (20 epochs over 165 images, 10 seeds, 14 configurations).
Numbers are measurements, never pass/fail checks.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from nucleiseg.data.datamodule import TensorPairs, to_model_input
from nucleiseg.data.image_io import read_mask, read_rgb
from nucleiseg.data.synthetic import SyntheticSpec, synthetic_tile
from nucleiseg.devices import autocast, cpu_has_native_bf16, device_name, synchronise
from nucleiseg.errors import ConfigError
from nucleiseg.losses import BCEDiceLoss
from nucleiseg.models.factory import ENCODERS, configuration_label, create_model
from nucleiseg.models.lit_module import foreground

PAPER_IMAGES_PER_EPOCH = 165
PAPER_EPOCHS, PAPER_SEEDS, PAPER_TEST_IMAGES = 20, 10, 25


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
    train_fast: float
    train_batch: int
    train_precision: str
    fast_vs_naive_max_prob_diff: float

    @property
    def infer_ratio(self) -> float:
        return self.infer_fast / self.infer_naive

    @property
    def train_ratio(self) -> float:
        return self.train_fast / self.train_naive


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


def _write_pngs(folder: Path, count: int, size: int) -> TensorPairs:
    images, masks = [], []
    for k in range(count):
        image, mask = synthetic_tile(SyntheticSpec(size, size, n_nuclei=max(4, size // 12)), 1000 + k)
        Image.fromarray(image).save(folder / f"image_{k:03d}.png")
        Image.fromarray((mask > 0).astype(np.uint8) * 255).save(folder / f"mask_{k:03d}.png")
        images.append(torch.from_numpy(image).permute(2, 0, 1))
        masks.append(torch.from_numpy(mask))
    return TensorPairs(torch.stack(images), torch.stack(masks))


@torch.inference_mode()
def _inference_rate(
    model, device, size, batch, precision, channels_last, iterations, warmup
) -> tuple[float, torch.Tensor]:
    images = torch.rand(batch, 3, size, size, generator=torch.Generator().manual_seed(0)).to(device)
    if channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    with autocast(device, precision):
        for _ in range(warmup):
            output = model(images)
        synchronise(device)
        started = time.perf_counter()
        for _ in range(iterations):
            output = model(images)
        synchronise(device)
    return batch * iterations / (time.perf_counter() - started), torch.sigmoid(output[:1].float()).cpu()


def _training_rate(model, device, loader, precision, channels_last, steps, warmup) -> float:
    criterion = BCEDiceLoss(1.0)
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-4)
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "16-mixed")
    model.train()
    done, images_seen, started = 0, 0, None
    while done < steps + warmup:
        for batch in loader:
            if done == warmup:
                synchronise(device)
                started, images_seen = time.perf_counter(), 0
            image = to_model_input(batch["image"].to(device, non_blocking=True))
            if channels_last:
                image = image.contiguous(memory_format=torch.channels_last)
            with autocast(device, precision):
                logits = model(image)
            loss = criterion(logits.float(), foreground(batch["mask"].to(device)))["loss"]
            optimiser.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimiser)
            scaler.update()
            done += 1
            images_seen += image.shape[0]
            if done == steps + warmup:
                break
    synchronise(device)
    return images_seen / (time.perf_counter() - started)


def fast_precision(device: torch.device) -> str:
    if device.type == "cuda":
        return "bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed"
    return "bf16-mixed" if cpu_has_native_bf16() else "32-true"


def benchmark(
    encoders: list[str] | None = None,
    image_size: int = 512,
    device: str = "auto",
    infer_batch: int | None = None,
    train_batch: int = 3,
    iterations: int = 10,
    train_steps: int = 10,
    warmup: int = 2,
    compile_model: bool = False,
    log=print,
) -> list[Measurement]:
    """Measure every architecture of ``encoders`` (default: all of Table I)."""
    if image_size < 64 or image_size % 32:
        raise ConfigError(
            f"--image-size {image_size}: expected a multiple of 32, at least 64 (the deepest "
            "encoder stage must keep more than one pixel for BatchNorm to train at batch 1)"
        )
    torch_device = torch.device("cuda" if device in ("auto", "gpu", "cuda") and torch.cuda.is_available() else "cpu")
    precision = fast_precision(torch_device)
    infer_batch = infer_batch or (16 if torch_device.type == "cuda" else 4)
    pin = torch_device.type == "cuda"
    measurements = []
    with tempfile.TemporaryDirectory(prefix="nucleiseg-bench-") as scratch:
        cached = _write_pngs(Path(scratch), max(8, train_batch * 2), image_size)
        naive_loader = DataLoader(PngPairs(Path(scratch)), batch_size=1, shuffle=True, num_workers=0)
        fast_loader = DataLoader(
            cached, batch_size=train_batch, shuffle=True, num_workers=0, pin_memory=pin, drop_last=True
        )
        for encoder in encoders or list(ENCODERS):
            torch.manual_seed(0)
            model = create_model(encoder).to(torch_device).eval()
            naive_rate, naive_out = _inference_rate(
                model, torch_device, image_size, 1, "32-true", False, iterations, warmup
            )
            fast_model = model.to(memory_format=torch.channels_last)
            if compile_model:
                fast_model.compile()
            fast_rate, fast_out = _inference_rate(
                fast_model, torch_device, image_size, infer_batch, precision, True, iterations, warmup
            )
            model = create_model(encoder).to(torch_device)
            train_naive = _training_rate(model, torch_device, naive_loader, "32-true", False, train_steps, warmup)
            model = create_model(encoder).to(torch_device).to(memory_format=torch.channels_last)
            if compile_model:
                model.compile()
            train_fast = _training_rate(model, torch_device, fast_loader, precision, True, train_steps, warmup)
            label = configuration_label(encoder, False)
            for pretrained in (False, True) if ENCODERS[encoder].has_imagenet_weights else (False,):
                measurements.append(
                    Measurement(
                        configuration=configuration_label(encoder, pretrained),
                        architecture=label,
                        device=device_name("gpu" if torch_device.type == "cuda" else "cpu"),
                        image_size=image_size,
                        infer_naive=naive_rate,
                        infer_fast=fast_rate,
                        infer_batch=infer_batch,
                        infer_precision=precision,
                        train_naive=train_naive,
                        train_fast=train_fast,
                        train_batch=train_batch,
                        train_precision=precision,
                        fast_vs_naive_max_prob_diff=float((fast_out - naive_out).abs().max()),
                    )
                )
            last = measurements[-1]
            log(
                f"{encoder}: inference {last.infer_naive:.1f} -> {last.infer_fast:.1f} img/s "
                f"(x{last.infer_ratio:.2f}), training {last.train_naive:.1f} -> {last.train_fast:.1f} img/s "
                f"(x{last.train_ratio:.2f})"
            )
    return measurements


def projected_study_hours(measurements: list[Measurement]) -> float:
    """Wall time of the paper's study from the fast rates: 20 epochs x 165 images + 25 test images, x 10 seeds."""
    seconds = 0.0
    for m in measurements:
        seconds += PAPER_SEEDS * (
            PAPER_EPOCHS * PAPER_IMAGES_PER_EPOCH / m.train_fast + PAPER_TEST_IMAGES / m.infer_fast
        )
    return seconds / 3600


def as_table(measurements: list[Measurement]) -> list[dict]:
    rows = []
    for m in measurements:
        row = asdict(m)
        row.update(infer_ratio=m.infer_ratio, train_ratio=m.train_ratio)
        rows.append(row)
    return rows


def markdown(measurements: list[Measurement], when: str) -> str:
    first = measurements[0]
    lines = [
        f"Benchmark on {first.device}, {when}; {first.image_size}x{first.image_size} images. Naive: eager fp32, "
        f"batch 1, training data decoded from PNG every step. Fast: batch {first.infer_batch} (inference) / "
        f"{first.train_batch} (training), channels-last, {first.infer_precision}, in-memory data.",
        "",
        "| configuration | inference naive img/s | inference fast img/s | x | training naive img/s | "
        "training fast img/s | x | max prob. diff fast vs naive |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for m in measurements:
        lines.append(
            f"| {m.configuration} | {m.infer_naive:.2f} | {m.infer_fast:.2f} | {m.infer_ratio:.2f} | "
            f"{m.train_naive:.2f} | {m.train_fast:.2f} | {m.train_ratio:.2f} | "
            f"{m.fast_vs_naive_max_prob_diff:.3g} |"
        )
    lines += [
        "",
        f"Projected wall time of the 140-run study at these fast rates: "
        f"{projected_study_hours(measurements):.1f} h (one device, runs in sequence).",
    ]
    return "\n".join(lines)
