"""One LightningModule for every configuration: the paper's loss, Adam, and pixel metrics per stage."""

from __future__ import annotations

from collections.abc import Callable

import lightning as L
import torch

from nucleiseg.errors import NucleisegError
from nucleiseg.losses import BCEDiceLoss
from nucleiseg.metrics.pixel import PerImageOverlap, pixel_metrics
from nucleiseg.models.factory import create_model


class NonFiniteLossError(NucleisegError):
    """The training loss became NaN or infinite."""


def foreground(mask: torch.Tensor) -> torch.Tensor:
    """Instance labels ``int BxHxW`` -> binary target ``float32 Bx1xHxW`` (where the loss binarises masks)."""
    return (mask > 0).float().unsqueeze(1)


class SegmentationModule(L.LightningModule):
    """Wraps :func:`create_model` for training, validation and the held-out test pass.

    Metric keys: ``train/loss``, ``val/loss``, ``val/jaccard`` ..., ``test/jaccard``, ``test/f1`` ...
    """

    def __init__(
        self,
        encoder: str,
        pretrained: bool,
        smooth: float,
        threshold: float,
        optimizer: Callable[..., torch.optim.Optimizer] | None = None,
        weights_dir: str | None = None,
        channels_last: bool = False,
        load_pretrained_weights: bool = True,
        stain: dict | None = None,
    ) -> None:
        """``optimizer`` is a partial taking the parameters (Hydra ``_partial_: true``); it is only needed to
        train, so a module restored for inference is built without one. ``stain`` is the fitted stain normaliser
        of the training data (:meth:`nucleiseg.data.stain.StainNormaliser.state`), kept so inference matches."""
        super().__init__()
        self.save_hyperparameters(ignore=["optimizer", "load_pretrained_weights", "weights_dir"])
        # from a checkpoint the weights come from the checkpoint itself, never from ImageNet again
        self.model = create_model(encoder, pretrained and load_pretrained_weights, weights_dir)
        if channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.optimizer_factory = optimizer
        self.criterion = BCEDiceLoss(smooth)
        self.val_metrics = pixel_metrics(threshold, prefix="val/")
        self.test_metrics = pixel_metrics(threshold, prefix="test/")
        self.test_per_image = PerImageOverlap(threshold)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """``float32 Bx3xHxW`` in [0, 1] -> logits ``Bx1xHxW``."""
        if self.hparams.channels_last:
            image = image.contiguous(memory_format=torch.channels_last)
        return self.model(image)

    def _shared_step(self, batch: dict) -> tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor]:
        logits = self(batch["image"])
        target = foreground(batch["mask"])
        return self.criterion(logits, target), logits, target

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        losses, _, _ = self._shared_step(batch)
        if not torch.isfinite(losses["loss"]):
            raise NonFiniteLossError(
                f"non-finite training loss ({losses['loss'].item()}) at epoch {self.current_epoch}, "
                f"step {self.global_step}; the last good checkpoint is kept. Try a lower lr or precision=32-true"
            )
        batch_size = batch["image"].shape[0]
        self.log(
            "train/loss",
            losses["loss"],
            on_step=False,
            on_epoch=True,
            prog_bar=True,
            batch_size=batch_size,
            sync_dist=True,
        )
        self.log("train/bce", losses["bce"], on_step=False, on_epoch=True, batch_size=batch_size, sync_dist=True)
        self.log(
            "train/dice_loss", losses["dice_loss"], on_step=False, on_epoch=True, batch_size=batch_size, sync_dist=True
        )
        return losses["loss"]

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        losses, logits, target = self._shared_step(batch)
        self.val_metrics.update(torch.sigmoid(logits.float()), target.int())
        self.log(
            "val/loss",
            losses["loss"],
            on_step=False,
            on_epoch=True,
            prog_bar=True,
            batch_size=batch["image"].shape[0],
            sync_dist=True,
        )
        self.log_dict(self.val_metrics, on_step=False, on_epoch=True)

    def test_step(self, batch: dict, batch_idx: int) -> None:
        losses, logits, target = self._shared_step(batch)
        probabilities = torch.sigmoid(logits.float())
        self.test_metrics.update(probabilities, target.int())
        self.test_per_image.update(probabilities, target.int())
        self.log(
            "test/loss",
            losses["loss"],
            on_step=False,
            on_epoch=True,
            batch_size=batch["image"].shape[0],
            sync_dist=True,
        )
        self.log_dict(self.test_metrics, on_step=False, on_epoch=True)

    def on_test_epoch_end(self) -> None:
        # compute() already gathers every rank's images; sync_dist only silences Lightning's DDP warning
        self.log_dict({f"test/{k}": v for k, v in self.test_per_image.compute().items()}, sync_dist=True)
        self.test_per_image.reset()

    def on_train_epoch_end(self) -> None:
        # MLflow's x axis for epoch-level metrics is the epoch, so loss curves line up across runs
        self.log("step", float(self.current_epoch), on_step=False, on_epoch=True, sync_dist=True)

    def on_validation_epoch_end(self) -> None:
        if not self.trainer.sanity_checking:
            self.log("step", float(self.current_epoch), on_step=False, on_epoch=True, sync_dist=True)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        if self.optimizer_factory is None:
            raise NucleisegError("SegmentationModule was built without an optimizer; pass optimizer= to train")
        return self.optimizer_factory(self.parameters())
