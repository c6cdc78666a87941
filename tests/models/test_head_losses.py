import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from nucleiseg.models.hover_loss import hover_loss_terms, hv_sobel_gradients, hv_sobel_kernels
from nucleiseg.models.star_loss import star_loss_terms
from nucleiseg.postprocess.hover import hv_maps
from nucleiseg.postprocess.star import star_targets


def disc_batch(shape: tuple[int, int] = (32, 40)) -> np.ndarray:
    """Two touching discs of radius 7, 6 px from every image edge or more."""
    rows, cols = np.indices(shape)
    labels = np.zeros(shape, np.int32)
    labels[np.hypot(rows - 16, cols - 13) <= 7] = 1
    labels[(np.hypot(rows - 16, cols - 26) <= 7) & (cols > 19)] = 2
    return labels


def hover_net_msge_loss(true, pred, focus, indexing):
    """Transcribed from vqdang/hover_net (MIT licence), models/hovernet/utils.py, ``msge_loss`` (on the CPU; NHWC
    maps, NHW focus). ``indexing="ij"`` is their PyTorch code (torch.meshgrid's default); ``"xy"`` builds the
    kernels as their TensorFlow original did with np.meshgrid."""

    def get_sobel_kernel(size):
        h_range = torch.arange(-size // 2 + 1, size // 2 + 1, dtype=torch.float32)
        v_range = torch.arange(-size // 2 + 1, size // 2 + 1, dtype=torch.float32)
        h, v = torch.meshgrid(h_range, v_range, indexing=indexing)
        kernel_h = h / (h * h + v * v + 1.0e-15)
        kernel_v = v / (h * h + v * v + 1.0e-15)
        return kernel_h, kernel_v

    def get_gradient_hv(hv):
        kernel_h, kernel_v = get_sobel_kernel(5)
        kernel_h = kernel_h.view(1, 1, 5, 5)
        kernel_v = kernel_v.view(1, 1, 5, 5)
        h_ch = hv[..., 0].unsqueeze(1)
        v_ch = hv[..., 1].unsqueeze(1)
        h_dh_ch = F.conv2d(h_ch, kernel_h, padding=2)
        v_dv_ch = F.conv2d(v_ch, kernel_v, padding=2)
        dhv = torch.cat([h_dh_ch, v_dv_ch], dim=1)
        return dhv.permute(0, 2, 3, 1).contiguous()

    focus = (focus[..., None]).float()
    focus = torch.cat([focus, focus], axis=-1)
    true_grad = get_gradient_hv(true)
    pred_grad = get_gradient_hv(pred)
    loss = pred_grad - true_grad
    loss = focus * (loss * loss)
    return loss.sum() / (focus.sum() + 1.0e-8)


@pytest.fixture
def hover_batch() -> tuple[torch.Tensor, torch.Tensor]:
    labels = disc_batch()
    maps = torch.from_numpy(np.stack([hv_maps(labels), hv_maps(np.fliplr(labels).copy())]))
    foreground = torch.from_numpy(np.stack([labels > 0, np.fliplr(labels) > 0]))[:, None]
    return maps, foreground


def test_the_gradient_kernels_differentiate_along_x_and_y():
    columns = torch.arange(20.0).expand(16, 20)
    rows = torch.arange(16.0)[:, None].expand(16, 20)
    maps = torch.stack([columns, rows])[None]  # h = column, v = row
    gradients = hv_sobel_gradients(maps)
    assert gradients.shape == (1, 2, 16, 20)
    # interior: sum over the 5x5 offsets (i, j) != 0 of j^2 / (i^2 + j^2) = half of the 24 offsets = 12
    assert torch.allclose(gradients[0, :, 2:-2, 2:-2], torch.tensor(12.0), atol=1e-5)
    across = hv_sobel_gradients(torch.stack([maps[0, 1], maps[0, 0]])[None])  # h = row, v = column
    assert torch.allclose(across[0, :, 2:-2, 2:-2], torch.tensor(0.0), atol=1e-4)  # float32 sums of 24 terms
    along_x, along_y = hv_sobel_kernels(5)
    assert along_x[2].tolist() == pytest.approx([-0.5, -1, 0, 1, 0.5]) and torch.equal(along_y, along_x.T)


def test_perfect_predictions_cost_nothing(hover_batch):
    maps, foreground = hover_batch
    mse, msge = hover_loss_terms(maps.clone(), maps, foreground)
    assert mse.shape == msge.shape == () and mse.item() == 0 and msge.item() == 0


def test_a_constant_offset_costs_its_square_in_mse_and_nothing_in_msge(hover_batch):
    maps, foreground = hover_batch
    mse, msge = hover_loss_terms(maps + 0.5, maps, foreground)
    assert mse.item() == pytest.approx(0.25)
    # the nuclei are 2 px or more inside the image, where the zero padding cannot reach: gradients ignore offsets
    assert msge.item() == pytest.approx(0, abs=1e-10)
    noisy = maps + 0.1 * torch.randn(maps.shape, generator=torch.Generator().manual_seed(0))
    mse, msge = hover_loss_terms(noisy, maps, foreground)
    assert mse.item() == pytest.approx(((noisy - maps) ** 2).mean().item()) and msge.item() > 0


def test_msge_counts_nucleus_pixels_only(hover_batch):
    maps, foreground = hover_batch
    noisy = maps + 0.1 * torch.randn(maps.shape, generator=torch.Generator().manual_seed(1))
    _, msge = hover_loss_terms(noisy, maps, foreground)
    # background more than 2 px from every nucleus pixel lies outside the 5x5 kernels of the nucleus pixels
    near = F.max_pool2d(foreground.float(), 5, stride=1, padding=2).bool().expand_as(maps)
    far_changed = torch.where(near, noisy, noisy + 3.0)
    mse_far, msge_far = hover_loss_terms(far_changed, maps, foreground)
    assert msge_far.item() == pytest.approx(msge.item(), rel=1e-6) and mse_far.item() > 1
    # background next to a nucleus enters the gradient at the nucleus's edge pixels (HoVer-Net's behaviour too)
    ring = near & ~foreground.expand_as(maps)
    _, msge_ring = hover_loss_terms(torch.where(ring, noisy + 3.0, noisy), maps, foreground)
    assert msge_ring.item() > msge.item()


def test_msge_equals_hover_nets_in_the_orientation_of_its_tensorflow_original(hover_batch):
    maps, foreground = hover_batch
    noisy = maps + 0.2 * torch.randn(maps.shape, generator=torch.Generator().manual_seed(2))
    _, msge = hover_loss_terms(noisy, maps, foreground)
    nhwc_true, nhwc_pred = maps.permute(0, 2, 3, 1), noisy.permute(0, 2, 3, 1)
    tensorflow_oriented = hover_net_msge_loss(nhwc_true, nhwc_pred, foreground[:, 0], indexing="xy")
    pytorch_port = hover_net_msge_loss(nhwc_true, nhwc_pred, foreground[:, 0], indexing="ij")
    assert msge.item() == pytest.approx(tensorflow_oriented.item(), rel=1e-6)
    assert abs(pytorch_port.item() - msge.item()) > 0.01 * msge.item()  # the port differentiates across the ramps


def test_hover_shapes_are_checked(hover_batch):
    maps, foreground = hover_batch
    with pytest.raises(ValueError, match="differ in shape"):
        hover_loss_terms(maps[:, :1], maps, foreground)
    with pytest.raises(ValueError, match="foreground"):
        hover_loss_terms(maps, maps, foreground[:1])
    mse, msge = hover_loss_terms(maps, maps, foreground[:, 0])  # BxHxW foreground is accepted
    assert mse.item() == msge.item() == 0


def star_batch(n_rays: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    probability, distances = star_targets(disc_batch(), n_rays)
    return torch.from_numpy(probability)[None, None], torch.from_numpy(distances)[None]


def test_star_loss_of_perfect_predictions():
    true_prob, true_dist = star_batch()
    logits = torch.logit(true_prob.clamp(1e-6, 1 - 1e-6)).requires_grad_()
    prob_loss, dist_loss = star_loss_terms(logits, true_dist.clone(), true_prob, true_dist, background_reg=0.0)
    assert prob_loss.shape == dist_loss.shape == () and dist_loss.item() == 0
    # StarDist's regulariser weighs |prediction| by 1 - prob, which is > 0 inside nuclei too: even the truth pays it
    _, regularised = star_loss_terms(logits, true_dist.clone(), true_prob, true_dist, background_reg=1e-4)
    expected = 1e-4 * ((1 - true_prob.double()) * true_dist.double()).mean().item()
    assert expected > 0 and regularised.item() == pytest.approx(expected, rel=1e-5)
    # soft targets: the cross-entropy's minimum is the targets' mean binary entropy, and its gradient is 0 there
    y = true_prob.double().clamp(1e-6, 1 - 1e-6)
    entropy = -(y * y.log() + (1 - y) * (1 - y).log()).mean()
    assert prob_loss.item() == pytest.approx(entropy.item(), rel=1e-4)
    prob_loss.backward()
    assert logits.grad.abs().max().item() < 1e-8


def test_star_distance_loss_by_hand():
    """2x2 pixels, 4 rays: probability targets 1, 0.5, 0, 0; errors 2 px on every ray at the first pixel and 4 px at
    the second; a prediction of 10 px at the two background pixels and at the second (weight 1 - 0.5)."""
    true_prob = torch.tensor([[[[1.0, 0.5], [0.0, 0.0]]]])
    true_dist = torch.zeros(1, 4, 2, 2)
    true_dist[0, :, 0, 0], true_dist[0, :, 0, 1] = 5.0, 6.0
    pred_dist = torch.zeros(1, 4, 2, 2)
    pred_dist[0, :, 0, 0], pred_dist[0, :, 0, 1], pred_dist[0, :, 1, :] = 7.0, 10.0, 10.0
    logits = torch.zeros(1, 1, 2, 2)
    prob_loss, dist_loss = star_loss_terms(logits, pred_dist, true_prob, true_dist, background_reg=0.0)
    assert prob_loss.item() == pytest.approx(math.log(2))  # p = 0.5 everywhere: log 2 whatever the target
    # mean over pixels of prob x mean |error| = (1 x 2 + 0.5 x 4 + 0 + 0) / 4 = 1; mean prob = 1.5 / 4
    assert dist_loss.item() == pytest.approx(1 / (0.375 + 1e-7))
    _, regularised = star_loss_terms(logits, pred_dist, true_prob, true_dist, background_reg=1e-4)
    # background term: mean over pixels of (1 - prob) x |prediction| = (0 + 0.5 x 10 + 10 + 10) / 4 = 6.25
    assert regularised.item() == pytest.approx(1 / (0.375 + 1e-7) + 1e-4 * 6.25)


def test_star_distance_loss_ignores_the_background_without_regularisation():
    true_prob, true_dist = star_batch()
    logits = torch.zeros_like(true_prob)
    wrong = true_dist + 1.0
    _, dist_loss = star_loss_terms(logits, wrong, true_prob, true_dist, background_reg=0.0)
    assert dist_loss.item() == pytest.approx(1.0, rel=1e-5)  # every weighted error is 1 px: the weighted mean is 1
    background_changed = torch.where(true_prob > 0, wrong, wrong + 50.0)
    _, same = star_loss_terms(logits, background_changed, true_prob, true_dist, background_reg=0.0)
    _, regularised = star_loss_terms(logits, background_changed, true_prob, true_dist, background_reg=1e-4)
    assert same.item() == pytest.approx(dist_loss.item()) and regularised.item() > same.item()


def test_star_shapes_are_checked():
    true_prob, true_dist = star_batch()
    with pytest.raises(ValueError, match="object probability"):
        star_loss_terms(true_prob[:, 0], true_dist, true_prob, true_dist, background_reg=1e-4)
    with pytest.raises(ValueError, match="distances"):
        star_loss_terms(true_prob, true_dist[:, :8], true_prob, true_dist, background_reg=1e-4)
    with pytest.raises(ValueError, match="background_reg"):
        star_loss_terms(true_prob, true_dist, true_prob, true_dist, background_reg=-1.0)
