import pytest
import torch

from nucleiseg.data.synthetic import SyntheticSpec, synthetic_tile
from nucleiseg.models.lit_module import SegmentationModule


def _batch(n=3, size=32):
    tiles = [synthetic_tile(SyntheticSpec(size, size, n_nuclei=5), seed) for seed in range(n)]
    image = torch.stack([torch.from_numpy(t[0]).permute(2, 0, 1) for t in tiles]).float() / 255
    mask = torch.stack([torch.from_numpy(t[1]) for t in tiles])
    return {"image": image, "mask": mask}


def test_small_model_overfits_a_synthetic_batch():
    torch.manual_seed(0)
    module = SegmentationModule(
        "unet_bn",
        pretrained=False,
        smooth=1.0,
        threshold=0.5,
        optimizer=lambda params: torch.optim.Adam(params, lr=1e-3),
        unet_widths=[16, 32, 64, 128, 256],
    )
    optimizer = module.configure_optimizers()
    batch = _batch()
    losses = []
    for _ in range(100):
        loss = module._shared_step(batch)[0]["loss"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.35 * losses[0], losses[::20]


def test_module_without_optimizer_cannot_train_but_can_predict():
    module = SegmentationModule("unet", pretrained=False, smooth=1.0, threshold=0.5).eval()
    assert module(_batch(1)["image"]).shape == (1, 1, 32, 32)
    with pytest.raises(ValueError, match="without an optimizer"):
        module.configure_optimizers()


def test_the_distance_head_learns_the_distance_map_too():
    """Loss = the paper's BCE + Dice on the mask + weight x MSE on the distance map; both parts fall."""
    from nucleiseg.data.datamodule import distance_map

    torch.manual_seed(0)
    module = SegmentationModule(
        "unet_bn",
        pretrained=False,
        smooth=1.0,
        threshold=0.5,
        optimizer=lambda params: torch.optim.Adam(params, lr=1e-3),
        head="distance",
        distance_weight=2.0,
        unet_widths=[16, 32, 64, 128, 256],
    )
    batch = _batch()
    batch["distance"] = torch.stack([torch.from_numpy(distance_map(m.numpy())) for m in batch["mask"]])
    optimizer = module.configure_optimizers()
    history = []
    for _ in range(40):
        losses = module._shared_step(batch)[0]
        optimizer.zero_grad()
        losses["loss"].backward()
        optimizer.step()
        history.append({k: v.item() for k, v in losses.items()})
    first, last = history[0], history[-1]
    assert first["loss"] == pytest.approx(first["bce"] + first["dice_loss"] + 2.0 * first["distance_loss"], rel=1e-5)
    assert last["distance_loss"] < 0.5 * first["distance_loss"] and last["loss"] < 0.5 * first["loss"]
    with pytest.raises(ValueError, match="distance target"):
        module._shared_step({k: v for k, v in batch.items() if k != "distance"})


def test_a_configured_scheduler_anneals_the_learning_rate_each_epoch():
    from hydra.utils import instantiate

    from nucleiseg.config import compose
    from nucleiseg.models.lit_module import SegmentationModule

    cfg = compose(["experiment=release_cpu", "trainer.max_epochs=4"])
    module = SegmentationModule(
        "unet_bn",
        False,
        1.0,
        0.5,
        optimizer=instantiate(cfg.optimizer),
        unet_widths=[4, 8, 16, 32, 64],
        scheduler=instantiate(cfg.scheduler),
    )
    configured = module.configure_optimizers()
    optimizer, schedule = configured["optimizer"], configured["lr_scheduler"]
    assert schedule["interval"] == "epoch" and optimizer.param_groups[0]["lr"] == 1e-3
    rates = []
    for _ in range(4):
        optimizer.step()
        schedule["scheduler"].step()
        rates.append(optimizer.param_groups[0]["lr"])
    assert rates == sorted(rates, reverse=True) and rates[-1] == pytest.approx(1e-5)
    paper = compose([])
    assert paper.scheduler is None  # the paper's constant learning rate stays the default
