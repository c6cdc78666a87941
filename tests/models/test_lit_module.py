import pytest
import torch

from nucleiseg.data.synthetic import SyntheticSpec, synthetic_tile
from nucleiseg.models.lit_module import SegmentationModule
from nucleiseg.models.losses import SegmentationLoss

# the model group's keys, as conf/model/unet.yaml would give them (channels_last resolved for the CPU)
GROUP = {
    "types": None,
    "unet_widths": [16, 32, 64, 128, 256],
    "weights_dir": None,
    "channels_last": False,
    "compile": False,
    "n_rays": 32,
}
LOSS = {
    "hv_mse_weight": 1.0,
    "hv_msge_weight": 1.0,
    "star_prob_weight": 1.0,
    "star_dist_weight": 0.2,
    "star_background_reg": 1e-4,
    "type_weight": 1.0,
}
GROUP["register_as"] = None


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
        threshold=0.5,
        head="binary",
        loss=SegmentationLoss(smooth=1.0, distance_weight=1.0, **LOSS),
        optimizer=lambda params: torch.optim.Adam(params, lr=1e-3),
        **GROUP,
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


def test_module_without_optimizer_or_loss_cannot_train_but_can_predict():
    module = SegmentationModule("unet", pretrained=False, threshold=0.5, head="binary", **GROUP).eval()
    assert module(_batch(1)["image"]).shape == (1, 1, 32, 32)
    with pytest.raises(ValueError, match="without an optimizer"):
        module.configure_optimizers()
    with pytest.raises(ValueError, match="without a loss"):
        module._shared_step(_batch(1))


def test_the_distance_head_learns_the_distance_map_too():
    """Loss = the paper's BCE + Dice on the mask + weight x MSE on the distance map; both parts fall."""
    from nucleiseg.data.datamodule import distance_map

    torch.manual_seed(0)
    module = SegmentationModule(
        "unet_bn",
        pretrained=False,
        threshold=0.5,
        head="distance",
        loss=SegmentationLoss(smooth=1.0, distance_weight=2.0, **LOSS),
        optimizer=lambda params: torch.optim.Adam(params, lr=1e-3),
        **GROUP,
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

    from nucleiseg.config.compose import compose
    from nucleiseg.models.lit_module import SegmentationModule

    cfg = compose(["experiment=release_cpu", "trainer.max_epochs=4"])
    module = SegmentationModule(
        "unet_bn",
        pretrained=False,
        threshold=0.5,
        head="binary",
        optimizer=instantiate(cfg.optimizer),
        **{**GROUP, "unet_widths": [4, 8, 16, 32, 64]},
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


def test_the_model_group_builds_the_module_with_the_loss_group_and_run_time_values():
    """conf/model's _target_ is the LightningModule; the assembly completes it (loss group, partial optimizer,
    post-processing, channels_last resolved) and the checkpoint's hparams record what the loss trained with."""
    from nucleiseg.config.compose import compose
    from nucleiseg.training.assemble import module_from_config

    cfg = compose(
        ["encoder=unet_bn", "pretrained=false", "model.head=distance", "model.unet_widths=[4,8,16,32,64]"]
        + ["loss.distance_weight=3.0", "threshold=0.4", "postprocess.min_area=7"]
    )
    module = module_from_config(cfg, "cpu")
    assert isinstance(module, SegmentationModule) and isinstance(module.criterion, SegmentationLoss)
    assert module.criterion.distance_weight == 3.0 and module.hparams.distance_weight == 3.0
    assert module.hparams.threshold == 0.4 and module.hparams.head == "distance" and not module.hparams.channels_last
    assert module.hparams.postprocess["min_area"] == 7 and module.hparams.postprocess["method"] == "distance"
    assert isinstance(module.configure_optimizers(), torch.optim.Adam)
