"""HoVer-Net's loss on the horizontal/vertical maps (Graham et al., Medical Image Analysis 2019, section 3.2):
the mean squared error of the maps plus the mean squared error of their gradients inside the nuclei (MSGE).

Transcribed from ``vqdang/hover_net`` (MIT licence) ``models/hovernet/utils.py`` (``mse_loss``, ``msge_loss``), with
one correction. Its 5x5 "Sobel" kernel is ``h / (h^2 + v^2)`` and ``v / (h^2 + v^2)`` over offsets -2..2, applied
with zero padding. The TensorFlow original (branch ``tensorflow-final``, ``src/model/graph.py``) builds it with
``np.meshgrid`` (``h`` varying along the columns), so the MSGE differentiates the horizontal map along x and the
vertical map along y, as the paper's equation says. The PyTorch port builds it with ``torch.meshgrid``, whose
default ``ij`` indexing transposes the kernels: there it differentiates the horizontal map along y. We follow the
paper and the TensorFlow original (MONAI's ``HoVerNetLoss`` does too). HoVer-Net weighs the terms 1 and 1
(``models/hovernet/opt.py``: ``"hv": {"mse": 1, "msge": 1}``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

# HoVer-Net's guards against division by zero (the kernel's centre, an image without nuclei): not settings
_KERNEL_EPSILON = 1.0e-15
_FOCUS_EPSILON = 1.0e-8


def hv_sobel_kernels(size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """HoVer-Net's ``get_sobel_kernel(size)`` oriented as its TensorFlow original: ``(d/dx, d/dy)`` kernels,
    ``float32 size x size`` (rows, columns); the d/dx kernel is ``column offset / squared distance``."""
    if size < 3 or size % 2 == 0:
        raise ValueError(f"Sobel kernel size {size}: expected an odd number >= 3")
    offsets = torch.arange(-(size // 2), size // 2 + 1, dtype=torch.float32)
    rows, cols = torch.meshgrid(offsets, offsets, indexing="ij")
    squared = rows * rows + cols * cols + _KERNEL_EPSILON
    return cols / squared, rows / squared


def hv_sobel_gradients(maps: torch.Tensor) -> torch.Tensor:
    """``float Bx2xHxW`` maps (channel 0 horizontal, 1 vertical) -> ``Bx2xHxW``: d/dx of the horizontal map and d/dy
    of the vertical map, HoVer-Net's 5x5 kernels, zero padding (the same size as the input)."""
    if maps.ndim != 4 or maps.shape[1] != 2:
        raise ValueError(f"HV maps: expected Bx2xHxW, got {tuple(maps.shape)}")
    along_x, along_y = hv_sobel_kernels(5)
    kernels = torch.stack([along_x, along_y])[:, None].to(device=maps.device, dtype=maps.dtype)
    return F.conv2d(maps, kernels, padding=2, groups=2)


def hover_loss_terms(
    pred_hv: torch.Tensor, true_hv: torch.Tensor, foreground: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(mse, msge)`` of HoVer-Net's HV branch: ``pred_hv`` and ``true_hv`` are ``float Bx2xHxW`` maps,
    ``foreground`` ``Bx1xHxW`` or ``BxHxW`` (0/1, the true nuclei). ``mse``: mean over every pixel and both maps.
    ``msge``: squared difference of :func:`hv_sobel_gradients`, summed over the foreground pixels of both maps and
    divided by their number (twice the foreground area); background predictions do not enter it."""
    if pred_hv.shape != true_hv.shape:
        raise ValueError(f"predicted {tuple(pred_hv.shape)} and true {tuple(true_hv.shape)} HV maps differ in shape")
    focus = foreground.float()
    if focus.ndim == 3:
        focus = focus[:, None]
    if focus.shape != (pred_hv.shape[0], 1, *pred_hv.shape[2:]):
        raise ValueError(f"foreground: expected Bx1xHxW matching {tuple(pred_hv.shape)}, got {tuple(foreground.shape)}")
    pred_hv, true_hv = pred_hv.float(), true_hv.float()
    mse = ((pred_hv - true_hv) ** 2).mean()
    focus = focus.expand_as(pred_hv)
    squared = (hv_sobel_gradients(pred_hv) - hv_sobel_gradients(true_hv)) ** 2
    msge = (focus * squared).sum() / (focus.sum() + _FOCUS_EPSILON)
    return mse, msge
