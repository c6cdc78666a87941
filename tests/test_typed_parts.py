"""The pieces a typed model is built from, each against what it must agree with: HoVer-Net's rule for a nucleus's
class, its type-branch loss, PanNuke's fold protocol, the augmentations that must move classes with their nuclei,
and the class channels every head carries."""

from pathlib import Path

import numpy as np
import pytest
import torch

from nucleiseg.data.online_augment import OnlineAugment
from nucleiseg.data.source import SourceImage
from nucleiseg.data.split import split_folds
from nucleiseg.data.typed_sources import dataset_classes
from nucleiseg.models.heads import activate, output_channels, unflip
from nucleiseg.models.losses import type_loss_terms
from nucleiseg.postprocess.types import class_map, nucleus_classes
from nucleiseg.util.errors import ConfigError


def hover_net_type_loop(labels, type_map):
    """HoVer-Net's ``process`` (models/hovernet/post_proc.py, type part), transcribed: per nucleus, the most
    frequent class of its pixels; background wins only when it is the sole vote."""
    out = {}
    for nucleus in np.unique(labels[labels > 0]):
        inst_type = type_map[labels == nucleus]
        values, counts = np.unique(inst_type, return_counts=True)
        ranked = sorted(zip(values, counts, strict=True), key=lambda x: x[1], reverse=True)
        chosen = ranked[0][0]
        if chosen == 0 and len(ranked) > 1:
            chosen = ranked[1][0]
        out[int(nucleus)] = (int(chosen), ranked[[v for v, _ in ranked].index(chosen)][1] / (labels == nucleus).sum())
    return out


@pytest.mark.parametrize("seed", range(5))
def test_a_nucleus_takes_its_class_by_hover_nets_majority_rule(seed):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 9, (40, 40))
    # mostly one class per nucleus, some pixels voting otherwise (background among them)
    truth = rng.integers(1, 4, 9)
    votes = np.where(rng.random((40, 40)) < 0.7, truth[labels], rng.integers(0, 4, (40, 40)))
    probabilities = np.eye(4, dtype=np.float32)[votes].transpose(2, 0, 1) + rng.random((4, 40, 40)) * 0.1
    classes, shares = nucleus_classes(labels, probabilities)
    for nucleus, (expected, share) in hover_net_type_loop(labels, votes).items():
        assert classes[nucleus] == expected
        assert shares[nucleus] == pytest.approx(share, abs=1e-5)
    painted = class_map(labels, classes)
    assert not painted[labels == 0].any() and (painted[labels == 3] == classes[3]).all()


def test_background_wins_only_a_nucleus_without_any_class_vote():
    labels = np.array([[1, 1, 2, 2]])
    votes = np.array([[0, 0, 0, 2]])  # nucleus 1: all background; nucleus 2: background and class 2 tie-break
    probabilities = np.eye(3, dtype=np.float32)[votes].transpose(2, 0, 1)
    classes, _ = nucleus_classes(labels, probabilities)
    assert classes[1] == 0 and classes[2] == 2


def test_the_type_loss_is_small_when_right_and_large_when_wrong():
    types = torch.randint(0, 4, (2, 16, 16))
    right = torch.nn.functional.one_hot(types, 4).permute(0, 3, 1, 2).float() * 20
    wrong = torch.nn.functional.one_hot((types + 1) % 4, 4).permute(0, 3, 1, 2).float() * 20
    ce_right, dice_right = type_loss_terms(right, types)
    ce_wrong, dice_wrong = type_loss_terms(wrong, types)
    assert ce_right < 1e-6 and dice_right < 1e-3
    assert ce_wrong > 10 and dice_wrong == pytest.approx(4.0, abs=1e-3)  # 1 per class, summed as HoVer-Net's
    logits = torch.zeros(2, 4, 16, 16, requires_grad=True)
    sum(type_loss_terms(logits, types)).backward()
    assert logits.grad.abs().sum() > 0


def _source(fold, name, classes=("a", "b")):
    return SourceImage(
        "pannuke",
        name,
        name,
        Path(name),
        Path(name),
        lambda p: None,
        lambda p, s: None,
        classes=classes,
        _load_typed=(lambda p, s: None) if classes else None,
        metadata={"fold": fold},
    )


def test_pannukes_folds_are_the_splits_written_t_v_s():
    sources = [_source(fold, f"{fold}_{k}") for fold in "123" for k in range(2)]
    splits = split_folds(sources, "2/3/1")
    assert {split: sorted(s.name for s in chosen) for split, chosen in splits.items()} == {
        "train": ["2_0", "2_1"],
        "val": ["3_0", "3_1"],
        "test": ["1_0", "1_1"],
    }
    assert [s.name for s in split_folds(sources, {"train": ["1", "2"], "val": 3, "test": 3})["train"]] == [
        "1_0",
        "1_1",
        "2_0",
        "2_1",
    ]
    with pytest.raises(ConfigError, match=r"fold\(s\) \['4'\] not in the data"):
        split_folds(sources, "1/2/4")
    with pytest.raises(ConfigError, match="T/V/S"):
        split_folds(sources, "1/2")


def test_typed_and_untyped_data_are_not_mixed_nor_two_class_lists():
    assert dataset_classes({"p": [_source("1", "x")]}) == ["a", "b"]
    assert dataset_classes({"m": [_source("1", "x", classes=())]}) == []
    with pytest.raises(ConfigError, match="different nucleus classes"):
        dataset_classes({"p": [_source("1", "x")], "m": [_source("1", "y", classes=())]})
    with pytest.raises(ConfigError, match="different nucleus classes"):
        dataset_classes({"p": [_source("1", "x")], "q": [_source("1", "y", classes=("a", "c"))]})


def test_augmentation_moves_each_nucleus_with_its_class():
    torch.manual_seed(0)
    augment = OnlineAugment(
        hflip=0.5,
        vflip=0.5,
        rotate=1.0,
        rotate_degrees=45,
        elastic=0.0,
        colour_jitter=0.0,
        hed_jitter=0.0,
        hed_sigma=0.0,
    )
    mask = torch.zeros(4, 64, 64, dtype=torch.int32)
    types = torch.zeros_like(mask)
    for k, (y, x) in enumerate([(10, 10), (10, 40), (40, 12), (42, 44)], start=1):
        mask[:, y : y + 12, x : x + 12] = k
        types[:, y : y + 12, x : x + 12] = 1 + k % 3
    image = torch.rand(4, 3, 64, 64)
    out = augment(image, mask, None, types)
    assert not torch.equal(out["mask"], mask)  # it moved
    for labels, kinds in zip(out["mask"], out["types"], strict=True):
        assert not kinds[labels == 0].any()
        for k in range(1, 5):
            if (labels == k).any():
                assert set(kinds[labels == k].tolist()) == {1 + k % 3}


@pytest.mark.parametrize("head", ["binary", "distance", "hv", "stardist"])
def test_every_head_carries_class_channels_that_mirror_back(head):
    n_types = 3
    channels = output_channels(head, 8, n_types)
    assert channels == output_channels(head, 8) + n_types + 1
    logits = torch.randn(1, channels, 8, 8)
    maps = activate(head, logits, n_types)
    assert torch.allclose(maps[:, -4:].sum(1), torch.ones(1, 8, 8))
    assert torch.equal(maps[:, :-4], activate(head, logits[:, :-4]))
    for dims in [(-1,), (-2,), (-2, -1)]:
        flipped = activate(head, logits.flip(dims), n_types)
        back = unflip(head, flipped, dims, n_types)
        assert torch.allclose(back[:, -4:], maps[:, -4:], atol=1e-6), dims  # class probabilities: mirrored back
        assert torch.equal(back[:, :-4], unflip(head, flipped[:, :-4], dims))  # the head's own maps: its own rule
