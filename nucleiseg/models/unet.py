"""The basic U-Net of Ronneberger et al. (2015) and the paper's modified U-Net (BatchNorm after every conv).

Differences from the 2015 paper, as in the reference study: convolutions are padded (``padding=1``), so the
output mask has the input's size and no cropping of skip connections is needed; the head is a 1x1 convolution
to one logit channel (binary nucleus/background). Input side lengths must be divisible by 16 (four pools).
"""

from __future__ import annotations

import torch
from torch import nn

from nucleiseg.util.errors import ConfigError

WIDTHS = (64, 128, 256, 512, 1024)


def double_conv(in_channels: int, out_channels: int, batch_norm: bool) -> nn.Sequential:
    """Two 3x3 convolutions, each followed by ReLU (and BatchNorm before the ReLU when ``batch_norm``)."""
    layers: list[nn.Module] = []
    for channels_in in (in_channels, out_channels):
        layers.append(nn.Conv2d(channels_in, out_channels, 3, padding=1, bias=not batch_norm))
        if batch_norm:
            layers.append(nn.BatchNorm2d(out_channels))
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


class UNet(nn.Module):
    """U-Net: ``float32 Bx3xHxW`` -> logits ``Bx1xHxW`` (H, W divisible by 16).

    Channels 64-128-256-512-1024, 2x2 max-pool down, 2x2 transposed convolution up, skip concatenation.
    """

    def __init__(
        self, in_channels: int = 3, classes: int = 1, batch_norm: bool = False, widths: tuple[int, ...] = WIDTHS
    ) -> None:
        super().__init__()
        self.down = nn.ModuleList()
        channels = in_channels
        for width in widths:
            self.down.append(double_conv(channels, width, batch_norm))
            channels = width
        self.pool = nn.MaxPool2d(2)
        self.up = nn.ModuleList()
        self.up_conv = nn.ModuleList()
        for width in reversed(widths[:-1]):
            self.up.append(nn.ConvTranspose2d(channels, width, kernel_size=2, stride=2))
            self.up_conv.append(double_conv(2 * width, width, batch_norm))
            channels = width
        self.head = nn.Conv2d(channels, classes, kernel_size=1)
        self.divisor = 2 ** (len(widths) - 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-2] % self.divisor or x.shape[-1] % self.divisor:
            padded_w, padded_h = (-(-side // self.divisor) * self.divisor for side in (x.shape[-1], x.shape[-2]))
            raise ConfigError(
                f"U-Net input is {x.shape[-1]}x{x.shape[-2]}; side lengths must be divisible by {self.divisor} "
                f"(pad to {padded_w}x{padded_h})"
            )
        skips = []
        for index, block in enumerate(self.down):
            x = block(x)
            if index < len(self.down) - 1:
                skips.append(x)
                x = self.pool(x)
        for up, conv, skip in zip(self.up, self.up_conv, reversed(skips), strict=True):
            x = conv(torch.cat([up(x), skip], dim=1))
        return self.head(x)
