"""One LightningModule for every configuration and head: the paper's loss (plus the terms of the head's own maps),
Adam, and pixel metrics on validation. The held-out test metrics come from the inference session
(:class:`nucleiseg.inference.held_out_pass.SessionTestPass`), the same path as ``nucleiseg evaluate``."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import lightning as L
import numpy as np
import torch

from nucleiseg.metrics.pixel import pixel_metrics
from nucleiseg.models.factory import create_model
from nucleiseg.models.losses import SegmentationLoss
from nucleiseg.util.errors import NucleisegError


class NonFiniteLossError(NucleisegError):
    """The training loss became NaN or infinite."""


def foreground(mask: torch.Tensor) -> torch.Tensor:
    """Instance labels ``int BxHxW`` -> binary target ``float32 Bx1xHxW`` (where the loss binarises masks)."""
    return (mask > 0).float().unsqueeze(1)


def head_targets(head: str, masks: torch.Tensor, n_rays: int) -> dict[str, torch.Tensor]:
    """The targets of the HV and StarDist heads, made from the batch's instance labels ``int BxHxW`` as they are
    now, after any augmentation (a flip negates an HV map and mirrors the rays, so these cannot be made once and
    moved along as the distance map is): ``hv`` ``Bx2xHxW``; ``star_probability`` ``Bx1xHxW`` and
    ``star_distances`` ``B x n_rays x H x W``. Computed with HoVer-Net's and StarDist's own target code (NumPy,
    on the CPU)."""
    if head not in ("hv", "stardist"):
        return {}
    labels = masks.detach().to("cpu").numpy()
    if head == "hv":
        from nucleiseg.postprocess.hover import hv_maps

        return {"hv": torch.from_numpy(np.stack([hv_maps(m) for m in labels])).to(masks.device)}
    from nucleiseg.postprocess.star import star_targets

    made = [star_targets(m, n_rays) for m in labels]
    probability = torch.from_numpy(np.stack([p for p, _ in made]))[:, None].to(masks.device)
    return {
        "star_probability": probability,
        "star_distances": torch.from_numpy(np.stack([d for _, d in made])).to(masks.device),
    }


class SegmentationModule(L.LightningModule):
    """Wraps :func:`create_model` for training and validation.

    Metric keys: ``loss/train``, ``loss/val``, ``loss/test`` (the paper's loss: one "loss" section at the top of
    MLflow's charts), ``train/bce``, ``train/dice_loss``, ``train/distance_loss``,
    ``val/jaccard`` ... Everything a checkpoint needs for inference is a hyper-parameter: encoder, head,
    threshold, stain normaliser, post-processing (tuned values replace the config's) and the training data.
    """

    def __init__(
        self,
        encoder: str,
        pretrained: bool,
        threshold: float,
        *,
        head: str,
        n_rays: int,
        types: list[str] | None,
        unet_widths: list[int] | None,
        weights_dir: str | None,
        channels_last: bool,
        compile: bool,
        register_as: str | None,
        loss: SegmentationLoss | None = None,
        optimizer: Callable[..., torch.optim.Optimizer] | None = None,
        scheduler: Callable[..., Any] | None = None,
        stain: dict | None = None,
        postprocess: Mapping[str, Any] | None = None,
        data: Mapping[str, Any] | None = None,
        load_pretrained_weights: bool = True,
    ) -> None:
        """Built from the ``model`` config group by :func:`nucleiseg.training.assemble.module_from_config`, which
        gives it the run-time values; the keyword arguments without a default are that group's keys (their defaults
        are in ``conf/model/unet.yaml`` only). ``loss`` (the ``loss`` group) and ``optimizer`` (a partial taking the
        parameters, Hydra ``_partial_: true``) are only needed to train, so a module restored for inference is built
        without them; ``scheduler``: a partial taking the optimizer, stepped every epoch. ``stain`` is the fitted
        stain normaliser of the training data (:meth:`nucleiseg.data.stain.StainNormaliser.state`), kept so
        inference matches; ``data`` describes the training data (name, folder, resolution) for evaluate and
        predict. ``compile``: the network compiled in place (state_dict keys and checkpoints as without it);
        ``register_as``: the MLflow registry name the finished model is published under."""
        super().__init__()
        self.save_hyperparameters(
            ignore=[
                "loss",
                "optimizer",
                "scheduler",
                "load_pretrained_weights",
                "weights_dir",
                "compile",
                "register_as",
            ]
        )
        if isinstance(loss, SegmentationLoss):  # what the loss was trained with, for the checkpoint's record
            self.hparams.update(loss.record())
        # from a checkpoint the weights come from the checkpoint itself, never from ImageNet again
        self.model = create_model(
            encoder,
            pretrained and load_pretrained_weights,
            weights_dir,
            head=head,
            unet_widths=unet_widths,
            n_rays=n_rays,
            n_types=len(types or []),
        )
        if channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        if compile:
            self.model.compile()
        self.register_as = register_as
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.criterion = loss
        self.val_metrics = pixel_metrics(threshold, prefix="val/")
        # set on the device without a host sync; checked once per epoch (a per-step check would stall the GPU)
        self.register_buffer("_nonfinite_steps", torch.zeros((), dtype=torch.int64), persistent=False)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """``float32 Bx3xHxW`` in [0, 1] -> logits ``BxCxHxW``."""
        if self.hparams.channels_last:
            image = image.contiguous(memory_format=torch.channels_last)
        return self.model(image)

    def _shared_step(self, batch: dict) -> tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor]:
        if self.criterion is None:
            raise NucleisegError("SegmentationModule was built without a loss; pass loss= to train or validate")
        logits = self(batch["image"])
        target = foreground(batch["mask"])
        distance = batch["distance"].unsqueeze(1) if "distance" in batch else None
        targets = head_targets(self.hparams.head, batch["mask"], self.hparams.n_rays)
        type_logits = None
        if self.hparams.types:  # the class logits come last (nucleiseg.models.heads)
            classes = len(self.hparams.types) + 1
            logits, type_logits = logits[:, :-classes], logits[:, -classes:]
            if "types" not in batch:
                raise NucleisegError("a typed model (model.types) needs typed data: the batch has no nucleus classes")
            targets["types"] = batch["types"]
        return self.criterion(logits, target, distance, targets, type_logits), logits, target

    def _log_losses(self, stage: str, losses: dict[str, torch.Tensor], batch_size: int) -> None:
        for name, value in losses.items():
            self.log(
                f"loss/{stage}" if name == "loss" else f"{stage}/{name}",
                value,
                on_step=False,
                on_epoch=True,
                prog_bar=name == "loss",
                batch_size=batch_size,
                sync_dist=True,
                # test values reach MLflow once, with the run's other results at its last epoch (train.py)
                logger=stage != "test",
            )

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        losses, _, _ = self._shared_step(batch)
        self._nonfinite_steps += (~torch.isfinite(losses["loss"].detach())).long()
        self._log_losses("train", losses, batch["image"].shape[0])
        return losses["loss"]

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        losses, logits, target = self._shared_step(batch)
        self.val_metrics.update(torch.sigmoid(logits[:, :1].float()), target.int())
        self._log_losses("val", {"loss": losses["loss"]}, batch["image"].shape[0])
        self.log_dict(self.val_metrics, on_step=False, on_epoch=True)

    def test_step(self, batch: dict, batch_idx: int) -> None:
        # the test metrics are the inference session's (SessionTestPass); here only the loss of the paper
        losses, _, _ = self._shared_step(batch)
        self._log_losses("test", {"loss": losses["loss"]}, batch["image"].shape[0])

    def _check_finite(self) -> None:
        if int(self._nonfinite_steps):
            raise NonFiniteLossError(
                f"non-finite training loss in {int(self._nonfinite_steps)} step(s) of epoch {self.current_epoch}; "
                "the last good checkpoint is kept. Try a lower lr or trainer.precision=32-true"
            )

    def on_validation_start(self) -> None:
        # checkpoints are written at the end of validation: the check comes first, so a bad epoch is never saved
        if self.trainer.training:
            self._check_finite()

    def on_train_epoch_end(self) -> None:
        self._check_finite()
        # MLflow's x axis for epoch-level metrics is the epoch, so loss curves line up across runs
        self.log("step", float(self.current_epoch), on_step=False, on_epoch=True, sync_dist=True)

    def on_validation_epoch_end(self) -> None:
        if not self.trainer.sanity_checking:
            self.log("step", float(self.current_epoch), on_step=False, on_epoch=True, sync_dist=True)

    def configure_optimizers(self) -> torch.optim.Optimizer | dict[str, Any]:
        if self.optimizer_factory is None:
            raise NucleisegError("SegmentationModule was built without an optimizer; pass optimizer= to train")
        optimizer = self.optimizer_factory(self.parameters())
        if self.scheduler_factory is None:  # the paper: a constant learning rate
            return optimizer
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": self.scheduler_factory(optimizer), "interval": "epoch"},
        }
