"""One way to build every model of the study: ``create_model(encoder, pretrained)``.

The registry below is the paper's Table I: two plain U-Nets and six smp encoders. Pretrained weights are
ImageNet only (section III-B); plain U-Nets have none, so ``pretrained=True`` with them is a config error.

Every configuration takes one of the heads of :mod:`nucleiseg.models.heads` (``model.head``): ``binary`` (the
paper), ``distance`` (Naylor et al.), ``hv`` (HoVer-Net) or ``stardist`` (StarDist); channel 0 is always the nucleus
logit.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from nucleiseg.models.heads import output_channels
from nucleiseg.models.unet import WIDTHS, UNet
from nucleiseg.models.weights import imagenet_state_dict
from nucleiseg.util.errors import ConfigError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class EncoderSpec:
    """How to build one configuration: a plain U-Net (``smp_name`` None) or an smp ``Unet`` encoder."""

    smp_name: str | None = None
    batch_norm: bool = False
    label: str = ""

    @property
    def has_imagenet_weights(self) -> bool:
        return self.smp_name is not None


ENCODERS: dict[str, EncoderSpec] = {
    "unet": EncoderSpec(label="U-Net"),
    "unet_bn": EncoderSpec(batch_norm=True, label="Modified U-Net (BatchNorm)"),
    "resnet50": EncoderSpec("resnet50", label="ResNet-50"),
    "resnet101": EncoderSpec("resnet101", label="ResNet-101"),
    "resnext50_32x4d": EncoderSpec("resnext50_32x4d", label="ResNeXt-50 32x4d"),
    "resnext101_32x8d": EncoderSpec("resnext101_32x8d", label="ResNeXt-101 32x8d"),
    "densenet121": EncoderSpec("densenet121", label="DenseNet-121"),
    "densenet201": EncoderSpec("densenet201", label="DenseNet-201"),
}


# how a configuration with a head the paper did not have is named (never compared with the paper's rows)
HEAD_LABELS = {"distance": "distance head", "hv": "HV head (HoVer-Net)", "stardist": "StarDist head"}


def configuration_label(encoder: str, pretrained: bool, head: str = "binary") -> str:
    """Human name of a configuration as in the paper's tables, e.g. ``DenseNet-121 (ImageNet)``, and with another
    head than the paper's ``+ distance head``, ``+ HV head (HoVer-Net)``, ``+ StarDist head``."""
    spec = ENCODERS[encoder]
    label = f"{spec.label} (ImageNet)" if pretrained else spec.label
    return f"{label} + {HEAD_LABELS[head]}" if head in HEAD_LABELS else label


def check_configuration(encoder: str, pretrained: bool) -> EncoderSpec:
    """Validate an (encoder, pretrained) pair; raise ConfigError naming the option otherwise."""
    if encoder not in ENCODERS:
        raise ConfigError(f"encoder={encoder!r} is not a known encoder; expected one of {sorted(ENCODERS)}")
    if not isinstance(pretrained, bool):
        raise ConfigError(f"pretrained={pretrained!r}: expected true or false")
    spec = ENCODERS[encoder]
    if pretrained and not spec.has_imagenet_weights:
        raise ConfigError(
            f"encoder={encoder} with pretrained=true: the plain U-Nets have no ImageNet weights "
            "(paper Table I); use pretrained=false or an smp encoder"
        )
    return spec


class Normalise(nn.Module):
    """Per-channel ``(x - mean) / std`` on ``float32 Bx3xHxW`` in [0, 1], the input ImageNet encoders expect."""

    def __init__(self, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


def check_head(head: str, n_rays: int | None = None, n_types: int = 0) -> int:
    """Number of output channels of ``head`` (``n_rays``: the StarDist head's rays; ``n_types``: nucleus classes of
    a typed model); raise ConfigError naming the option otherwise."""
    if head == "stardist" and n_rays is None:
        raise ConfigError("model.head=stardist needs model.n_rays (the rays each pixel predicts)")
    return output_channels(head, n_rays or 0, n_types)


class SegmentationNet(nn.Module):
    """``float32 Bx3xHxW`` in [0, 1] -> logits ``BxCxHxW`` (channel 0: nucleus; then the head's own maps, see
    :mod:`nucleiseg.models.heads`); input normalisation is part of the model, so training, evaluation and
    prediction cannot disagree about it."""

    def __init__(self, network: nn.Module, normalise: nn.Module | None, head: str = "binary", n_types: int = 0) -> None:
        super().__init__()
        self.normalise = normalise if normalise is not None else nn.Identity()
        self.network = network
        self.head = head
        self.n_types = n_types  # nucleus classes of a typed model (its last n_types + 1 channels), 0: untyped

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.network(self.normalise(x))


def create_model(
    encoder: str,
    pretrained: bool = False,
    weights_dir: str | Path | None = None,
    allow_download: bool = True,
    head: str = "binary",
    unet_widths: tuple[int, ...] | None = None,
    n_rays: int | None = None,
    n_types: int = 0,
) -> SegmentationNet:
    """Build one of the 14 configurations of the paper (see ``ENCODERS``) with ``head`` (see ``HEADS``).

    ``unet_widths`` narrows the plain U-Nets (default: the paper's 64-128-256-512-1024), e.g. for CPU smoke runs.
    """
    spec = check_configuration(encoder, pretrained)
    classes = check_head(head, n_rays, n_types)
    if spec.smp_name is None:
        widths = tuple(unet_widths) if unet_widths else WIDTHS
        if len(widths) < 2 or any(int(w) < 1 for w in widths):
            raise ConfigError(f"model.unet_widths={list(widths)}: expected at least two positive channel counts")
        network = UNet(classes=classes, batch_norm=spec.batch_norm, widths=tuple(int(w) for w in widths))
        return SegmentationNet(network, normalise=None, head=head, n_types=n_types)
    if unet_widths:
        raise ConfigError(f"model.unet_widths applies to the plain U-Nets only, not to encoder={encoder}")
    import segmentation_models_pytorch as smp  # (with timm and torchvision: not imported for the plain U-Nets)

    network = smp.Unet(encoder_name=spec.smp_name, encoder_weights=None, in_channels=3, classes=classes)
    if pretrained:
        state_dict, _ = imagenet_state_dict(spec.smp_name, weights_dir, allow_download)
        try:
            network.encoder.load_state_dict(state_dict)
        except RuntimeError as error:
            raise ConfigError(f"ImageNet weights for {encoder} do not match the encoder: {str(error)[:300]}") from None
    # smp encoders get ImageNet normalisation with or without pretrained weights, so the two arms of the
    # comparison differ only in initialisation
    return SegmentationNet(network, Normalise(IMAGENET_MEAN, IMAGENET_STD), head=head, n_types=n_types)
