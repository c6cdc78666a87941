import numpy as np
import pytest

from nucleiseg.config.settings import defaults
from nucleiseg.data.datamodule import distance_map
from nucleiseg.data.synthetic import SyntheticSpec, synthetic_tile
from nucleiseg.metrics.instance import InstanceMetrics
from nucleiseg.postprocess.instances import Postprocess, separate_instances
from nucleiseg.util.errors import ConfigError


def two_discs(offset: int = 17) -> tuple[np.ndarray, np.ndarray]:
    """Two discs of radius 10, centres ``offset`` apart, overlapping nuclei split along the line between them."""
    rows, cols = np.ogrid[:40, :60]
    first = (rows - 20) ** 2 + (cols - 20) ** 2 <= 100
    second = (rows - 20) ** 2 + (cols - 20 - offset) ** 2 <= 100
    truth = np.where(first | second, np.where(cols < 20 + offset / 2, 1, 2), 0).astype(np.int32)
    return truth > 0, truth


def test_two_touching_discs_are_cut_apart():
    mask, _ = two_discs()
    assert separate_instances(mask, 0.5, settings=defaults("postprocess", method="components")).max() == 1
    labels = separate_instances(mask, 0.5, settings=defaults("postprocess", method="watershed"))
    assert labels.max() == 2
    assert labels[20, 15] != labels[20, 42] and labels[20, 15] > 0 and labels[20, 42] > 0
    assert np.array_equal(labels > 0, mask)  # no pixel lost or added


def test_the_distance_method_cuts_where_the_predicted_distance_says():
    """Two discs overlapping so much that the mask's own geometry shows one blob; the predicted distance map
    (here: the true one) has two peaks, and the distance method recovers both nuclei."""
    mask, truth = two_discs(offset=8)
    geometric = separate_instances(
        mask, 0.5, settings=defaults("postprocess", method="watershed", min_distance=8, smoothing=2.0)
    )
    by_distance = separate_instances(
        mask.astype(np.float32),
        0.5,
        defaults("postprocess", method="distance", seed_height=0.1),
        {"distance": distance_map(truth)},
    )
    assert geometric.max() == 1 and by_distance.max() == 2
    assert np.array_equal(by_distance > 0, mask)
    metrics = InstanceMetrics()
    metrics.update(truth, by_distance)
    assert metrics.compute()["aji"] > 0.8
    with pytest.raises(ConfigError, match=r"needs the predicted distance maps \(model.head=distance\)"):
        separate_instances(mask, 0.5, settings=defaults("postprocess", method="distance"))


def test_distance_targets_peak_at_one_in_every_nucleus():
    _, truth = synthetic_tile(SyntheticSpec(96, 96, n_nuclei=12, touching_fraction=0.6), 3)
    target = distance_map(truth)
    assert target.dtype == np.float32 and target[truth == 0].max() == 0
    for label in range(1, truth.max() + 1):
        values = target[truth == label]
        assert values.max() == pytest.approx(1.0) and values.min() > 0
    # touching nuclei keep separate peaks: the border between them is low
    assert target[truth > 0].min() < 0.5


def test_watershed_recovers_more_touching_nuclei_than_components():
    truth_total, components_total, watershed_total = 0, 0, 0
    split = {"components": InstanceMetrics(), "watershed": InstanceMetrics()}
    for seed in range(4):
        _, truth = synthetic_tile(SyntheticSpec(192, 192, n_nuclei=30, touching_fraction=0.6), seed)
        components = separate_instances(truth > 0, 0.5, settings=defaults("postprocess", method="components"))
        watershed = separate_instances(truth > 0, 0.5, settings=defaults("postprocess", method="watershed"))
        truth_total += truth.max()
        components_total += components.max()
        watershed_total += watershed.max()
        split["components"].update(truth, components)
        split["watershed"].update(truth, watershed)
    assert components_total < watershed_total <= truth_total * 1.1
    assert split["watershed"].compute()["aji"] > split["components"].compute()["aji"]
    assert split["watershed"].compute()["object_f1"] > split["components"].compute()["object_f1"]


def test_small_objects_are_dropped_and_bad_settings_named():
    mask = np.zeros((20, 20), bool)
    mask[2:4, 2:4] = True  # 4 px
    mask[10:16, 10:16] = True
    assert separate_instances(mask, 0.5, settings=defaults("postprocess", method="watershed", min_area=10)).max() == 1
    with pytest.raises(ConfigError, match="postprocess.method='voronoi'"):
        defaults("postprocess", method="voronoi")
    with pytest.raises(ConfigError, match="needs the predicted star_probability and star_distances maps"):
        separate_instances(mask, 0.5, settings=defaults("postprocess", method="stardist"))
    with pytest.raises(ConfigError, match=r"postprocess.hover_sobel_kernel=4: expected an odd whole number"):
        defaults("postprocess", hover_sobel_kernel=4)
    with pytest.raises(ConfigError, match="min_area"):
        defaults("postprocess", min_area=-1)
    with pytest.raises(ConfigError, match="seed_height"):
        defaults("postprocess", seed_height=0)
    with pytest.raises(ConfigError, match=r"unknown key\(s\) \['min_dist'\]"):
        Postprocess.merged(defaults("postprocess").as_dict(), {"min_dist": 3})


def test_auto_method_follows_the_head():
    assert defaults("postprocess").resolved("binary").method == "watershed"
    assert defaults("postprocess").resolved("distance").method == "distance"
    with pytest.raises(ConfigError, match="needs a model trained with model.head=distance"):
        defaults("postprocess", method="distance").resolved("binary")


def test_an_empty_prediction_gives_no_nuclei_and_zero_scores():
    empty = np.zeros((32, 32), np.float32)
    labels = separate_instances(empty, 0.5, defaults("postprocess", method="watershed"))
    assert labels.max() == 0 and labels.dtype == np.int32
    metrics = InstanceMetrics()
    metrics.update(two_discs()[1][:32, :32], labels)
    scores = metrics.compute()
    assert scores["aji"] == scores["pq"] == scores["aji_plus"] == 0.0 and scores["n_predicted_nuclei"] == 0


def test_min_area_applies_to_the_nuclei_the_separation_makes():
    """A disc joined by a neck to a 3x3 knob: the watershed gives the knob its own small piece. The component is
    large, so filtering components (what earlier versions did) kept that 1-3 px "nucleus"; the rule is for the
    final nuclei."""
    rows, cols = np.ogrid[:40, :60]
    mask = (rows - 20) ** 2 + (cols - 20) ** 2 <= 100
    mask[20, 30:40] = True  # a one-pixel neck
    mask[19:22, 40:43] = True  # the knob
    loose = separate_instances(
        mask, 0.5, settings=defaults("postprocess", method="watershed", min_distance=1, smoothing=0, min_area=0)
    )
    assert np.bincount(loose.ravel())[1:].min() < 30  # the split does make a small piece here
    labels = separate_instances(
        mask,
        0.5,
        settings=defaults("postprocess", method="watershed", min_distance=1, smoothing=0, min_area=30, fill_holes=0),
    )
    areas = np.bincount(labels.ravel())[1:]
    assert labels.max() >= 1 and areas.min() >= 30
    assert labels[20, 20] > 0 and labels[20, 41] == 0  # the disc kept, the knob dropped


def test_holes_are_filled_per_nucleus_and_concavities_are_not():
    labels = np.zeros((30, 40), np.int32)
    rows, cols = np.ogrid[:30, :40]
    labels[(rows - 15) ** 2 + (cols - 12) ** 2 <= 64] = 1
    labels[14:16, 11:13] = 2  # a 4 px piece inside nucleus 1: dropped by min_area, its place filled
    labels[2:12, 26:36] = 3
    labels[4:12, 29:33] = 0  # a notch open at the bottom of nucleus 3's box: a concavity, not a hole
    from nucleiseg.postprocess.instances import final_nuclei

    out = final_nuclei(labels, defaults("postprocess", min_area=10, fill_holes=30))
    assert out.max() == 2
    assert out[15, 12] == out[10, 12] > 0  # the hole left by the dropped piece belongs to its nucleus
    assert out[8, 30] == 0  # the notch stays background
    big_hole = np.zeros((30, 30), np.int32)
    big_hole[(np.ogrid[:30, :30][0] - 15) ** 2 + (np.ogrid[:30, :30][1] - 15) ** 2 <= 144] = 1
    big_hole[10:20, 10:20] = 0  # 100 px: larger than fill_holes
    assert final_nuclei(big_hole, defaults("postprocess", min_area=0, fill_holes=30))[15, 15] == 0
    assert final_nuclei(big_hole, defaults("postprocess", min_area=0, fill_holes=100))[15, 15] == 1
