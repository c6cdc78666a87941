"""The heads a network can carry (``model.head``): what its output channels are, how they are activated, and how
test-time flips are undone. Every head keeps channel 0 as the nucleus logit (the paper's BCE + Dice, the pixel
metrics, masks and thresholds are the same for all), and adds the maps its way of separating touching nuclei needs:

- ``binary``: nothing more; nuclei are separated after the fact (watershed of the mask's distance transform);
- ``distance`` (Naylor et al., IEEE TMI 2018): 1 channel, each nucleus's normalised distance to its border (sigmoid);
- ``hv`` (HoVer-Net, Graham et al., Medical Image Analysis 2019): 2 channels, each pixel's horizontal and vertical
  offset to its nucleus's centre of mass in [-1, 1] (linear, as HoVer-Net's HV branch);
- ``stardist`` (Schmidt et al., MICCAI 2018): 1 + ``n_rays`` channels, the object probability (sigmoid) and the
  distance in pixels to the nucleus border along ``n_rays`` rays at equal angles (linear, as StarDist's).

A typed model (``model.types``: nucleus classes) adds, after any head's channels, ``classes + 1`` channels of class
logits (0: background), activated with a softmax: HoVer-Net's type branch, on every head. A nucleus's class is the
majority of its pixels' (:mod:`nucleiseg.postprocess.types`).

The separation of each head's maps into nuclei is NumPy in :mod:`nucleiseg.postprocess` (exports carry the maps).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from nucleiseg.util.errors import ConfigError


@dataclass(frozen=True)
class Head:
    """One head: ``extra`` channels after the nucleus logit (StarDist's depend on the rays), how many of the first
    channels are probabilities (sigmoid; the rest are linear), and its separation method."""

    name: str
    extra: int  # channels after the nucleus logit (stardist: 1 + n_rays)
    sigmoid: int  # the first channels that are probabilities
    method: str  # postprocess.method=auto for this head


HEADS = {
    "binary": Head("binary", extra=0, sigmoid=1, method="watershed"),
    "distance": Head("distance", extra=1, sigmoid=2, method="distance"),
    "hv": Head("hv", extra=2, sigmoid=1, method="hover"),
    "stardist": Head("stardist", extra=1, sigmoid=2, method="stardist"),  # + n_rays, linear
}


def head_spec(head: str) -> Head:
    """The :class:`Head` named ``head``; a one-line error naming ``model.head`` otherwise."""
    if head not in HEADS:
        raise ConfigError(f"model.head={head!r}: expected one of {sorted(HEADS)}")
    return HEADS[head]


def check_rays(n_rays: int) -> int:
    """``n_rays`` if it is an even number of rays between 4 and 256 (even: a mirrored ray is a ray again, which
    flip augmentation and test-time flips need)."""
    if not isinstance(n_rays, int) or isinstance(n_rays, bool) or not 4 <= n_rays <= 256 or n_rays % 2:
        raise ConfigError(f"model.n_rays={n_rays!r}: expected an even whole number of rays between 4 and 256")
    return n_rays


def output_channels(head: str, n_rays: int, n_types: int = 0) -> int:
    """Channels a network with ``head`` predicts (``n_rays`` counts for ``stardist`` only), plus ``n_types + 1``
    class channels for a typed model."""
    spec = head_spec(head)
    return 1 + spec.extra + (check_rays(n_rays) if head == "stardist" else 0) + (n_types + 1 if n_types else 0)


def activate(head: str, logits: torch.Tensor, n_types: int = 0) -> torch.Tensor:
    """Logits ``BxCxHxW`` -> the maps of ``head``: its probability channels through a sigmoid, the rest as they
    are (HV offsets, ray distances); a typed model's last ``n_types + 1`` channels through a softmax."""
    if n_types:
        classes = n_types + 1
        base = activate(head, logits[:, :-classes])
        return torch.cat([base, torch.softmax(logits[:, -classes:], dim=1)], dim=1)
    count = head_spec(head).sigmoid
    if logits.shape[1] <= count:
        return torch.sigmoid(logits)
    return torch.cat([torch.sigmoid(logits[:, :count]), logits[:, count:]], dim=1)


def unflip(head: str, maps: torch.Tensor, dims: tuple[int, ...], n_types: int = 0) -> torch.Tensor:
    """The activated maps ``BxCxHxW`` of a flipped input (``dims``: -1 columns, -2 rows) in the input's frame. A
    flip mirrors the maps and, for the heads whose maps have a direction, changes them: a horizontal flip negates
    HoVer-Net's horizontal map and sends StarDist's ray at angle a to pi - a; a vertical flip negates the vertical
    map and sends ray a to -a. A typed model's class probabilities (the last ``n_types + 1``) are mirrored only."""
    if not dims:
        return maps
    if n_types:  # class probabilities have no direction: mirrored only
        classes = n_types + 1
        return torch.cat([unflip(head, maps[:, :-classes], dims), maps[:, -classes:].flip(dims)], dim=1)
    maps = maps.flip(dims)
    if head == "hv":
        signs = torch.ones(maps.shape[1], device=maps.device, dtype=maps.dtype)
        if -1 in dims:
            signs[1] = -1
        if -2 in dims:
            signs[2] = -1
        return maps * signs.view(1, -1, 1, 1)
    if head == "stardist":
        rays = maps.shape[1] - 2
        order = torch.arange(rays, device=maps.device)
        if -1 in dims:  # ray k at angle 2 pi k / n  ->  pi - that angle
            order = (rays // 2 - order) % rays
        if -2 in dims:  # -> minus that angle
            order = (-order) % rays
        return torch.cat([maps[:, :2], maps[:, 2:][:, order]], dim=1)
    return maps
