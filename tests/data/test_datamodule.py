import numpy as np
import pytest
import torch

from nucleiseg.config.compose import compose
from nucleiseg.data.datamodule import NucleiDataModule, distance_map
from nucleiseg.data.online_augment import OnlineAugment, RandomHEDJitter
from nucleiseg.data.prepare import prepare_dataset

# data.loader's keys as the assembly gives them on a CPU
SERVED = {"num_workers": 0, "pin_memory": False, "persistent_workers": False, "on_device": False}


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    root = tmp_path_factory.mktemp("dm")
    cfg = compose(
        [
            "data=synthetic",
            f"paths.root_dir={root}",
            "data.protocol.image_size=32",
            "data.sources.synthetic.tile_size=48",
        ]
    )
    return prepare_dataset(cfg.data, log=lambda line: None)


def test_datamodule_serves_cached_batches(prepared):
    module = NucleiDataModule(prepared, **{**SERVED, "batch_size": 3})
    module.setup("fit")
    batch = next(iter(module.train_dataloader()))
    assert batch["image"].dtype == torch.uint8 and batch["image"].shape == (3, 3, 32, 32)
    assert batch["mask"].dtype == torch.int32 and batch["mask"].shape == (3, 32, 32)
    moved = module.on_after_batch_transfer(batch, 0)
    assert moved["image"].dtype == torch.float32 and 0.0 <= moved["image"].min() and moved["image"].max() <= 1.0
    assert len(module.splits["train"]) == 30 and len(module.splits["val"]) == 6
    module.setup("test")
    assert len(module.test_dataloader().dataset) == 6


def _augment(**probabilities):
    """OnlineAugment with every transform off except ``probabilities`` (rotation 180 degrees, HED sigma 0.05)."""
    off = {"hflip": 0, "vflip": 0, "rotate": 0, "elastic": 0, "colour_jitter": 0, "hed_jitter": 0}
    return OnlineAugment(**{**off, "rotate_degrees": 180.0, "hed_sigma": 0.05, **probabilities})


def test_the_config_builds_the_augmentation_only_when_enabled(prepared):
    from nucleiseg.training.assemble import build_datamodule

    folder = prepared
    on = build_datamodule(compose(["experiment=release"]), folder, "cpu")
    assert isinstance(on.online_augment, OnlineAugment) and on.online_augment.hed is not None
    assert build_datamodule(compose([]), folder, "cpu").online_augment is None


def test_online_augmentation_moves_mask_with_image():
    image = torch.zeros(2, 3, 16, 16)
    image[:, :, 2:6, 1:4] = 1.0
    mask = (image[:, 0] > 0).to(torch.int32) * 3
    augment = _augment(hflip=1.0, vflip=0.0)
    out = augment(image, mask)
    out_image, out_mask = out["image"], out["mask"]
    assert torch.equal(out_image, image.flip(-1))
    assert torch.equal(out_mask, mask.flip(-1)) and out_mask.dtype == torch.int32
    torch.manual_seed(0)
    image = torch.zeros(4, 3, 32, 32)
    image[:, :, 4:14, 6:12] = 1.0
    mask = (image[:, 0] > 0).to(torch.int32)
    rotated = _augment(rotate=1.0, rotate_degrees=90.0)(image, mask)
    rotated_image, rotated_mask = rotated["image"], rotated["mask"]
    assert not torch.equal(rotated_mask, mask)
    for k in range(4):  # bilinear image vs nearest mask: equal up to the outline
        on_image, on_mask = rotated_image[k, 0] > 0.5, rotated_mask[k] > 0
        assert (on_image & on_mask).sum() / (on_image | on_mask).sum() > 0.8


def test_hed_jitter_changes_stain_but_not_range():
    torch.manual_seed(0)
    image = torch.rand(4, 3, 8, 8) * 0.8 + 0.1
    jittered = RandomHEDJitter(sigma=0.1, p=1.0)(image)
    assert jittered.shape == image.shape and 0 <= jittered.min() and jittered.max() <= 1
    assert not torch.allclose(jittered, image)
    assert torch.allclose(RandomHEDJitter(sigma=0.0, p=1.0)(image), image, atol=1e-4)  # HED round trip


def test_distance_targets_travel_with_the_batch_and_its_augmentation(prepared):
    module = NucleiDataModule(prepared, **{**SERVED, "batch_size": 2}, distance_targets=True)
    module.setup("fit")
    batch = next(iter(module.train_dataloader()))
    assert batch["distance"].shape == batch["mask"].shape and batch["distance"].dtype == torch.float32
    for mask, distance in zip(batch["mask"].numpy(), batch["distance"].numpy(), strict=True):
        assert np.array_equal(distance, distance_map(mask))
    image = batch["image"].float() / 255
    out = _augment(hflip=1.0, vflip=1.0)(image, batch["mask"], batch["distance"])
    # flips move the distance map exactly as they move the nuclei
    for mask, distance in zip(out["mask"].numpy(), out["distance"].numpy(), strict=True):
        assert np.abs(distance - distance_map(mask)).max() < 1e-6
    torch.manual_seed(0)
    rotated = _augment(rotate=1.0, rotate_degrees=40.0)(image, batch["mask"], batch["distance"])
    # a rotation resamples the map bilinearly: close to the map of the rotated nuclei, never another nucleus's
    for mask, distance in zip(rotated["mask"].numpy(), rotated["distance"].numpy(), strict=True):
        inside = mask > 0
        assert np.abs(distance - distance_map(mask))[inside].mean() < 0.15
    assert not torch.equal(rotated["mask"], batch["mask"])
