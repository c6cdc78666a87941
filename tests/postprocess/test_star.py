import math

import numpy as np
import pytest
from skimage.segmentation import find_boundaries, relabel_sequential

from nucleiseg.data.synthetic import SyntheticSpec, synthetic_tile
from nucleiseg.metrics.instance import InstanceMetrics
from nucleiseg.postprocess.star import star_instances, star_targets
from nucleiseg.util.errors import ConfigError

# StarDist's defaults: StarDistBase.thresholds (prob 0.5, nms 0.4) and b=2 of _predict_sparse_generator
STARDIST = {"prob_threshold": 0.5, "nms_threshold": 0.4, "border": 2}


def discs(shape: tuple[int, int], centres: list[tuple[int, int]], radius: int) -> np.ndarray:
    """Discs of ``radius`` around pixel ``centres``; where two overlap, each pixel goes to the nearer centre."""
    rows, cols = np.indices(shape)
    labels, nearest = np.zeros(shape, np.int32), np.full(shape, np.inf)
    for index, (row, col) in enumerate(centres, start=1):
        distance = np.hypot(rows - row, cols - col)
        inside = (distance <= radius) & (distance < nearest)
        labels[inside], nearest[inside] = index, distance[inside]
    return labels


def stardist_predict_instances(probability, rays_last, prob_thresh, nms_thresh, b):
    """Transcribed from stardist 0.9.2 (BSD-3-Clause licence): the steps of StarDistBase._predict_sparse_generator
    (models/base.py, no tiling, grid (1, 1)) and StarDist2D._instances_from_prediction (models/model2d.py, sparse
    points) around the package's functions. ``rays_last`` is HxWxn_rays, StarDist's layout."""
    from stardist import polygons_to_label
    from stardist.nms import _ind_prob_thresh, non_maximum_suppression_sparse

    dist = np.maximum(1e-3, rays_last)
    inds = _ind_prob_thresh(probability, prob_thresh, b=b)
    proba, dista = probability[inds].copy(), dist[inds].copy()
    pointsa = np.stack(np.where(inds), axis=1)
    points, probi, disti, _ = non_maximum_suppression_sparse(dista, proba, pointsa, nms_thresh=nms_thresh)
    return polygons_to_label(disti, points, prob=probi, shape=probability.shape)


def matched_to_truth(truth: np.ndarray, prediction: np.ndarray) -> np.ndarray:
    """Each predicted nucleus relabelled with the true nucleus it covers most."""
    matched = np.zeros_like(truth)
    for index in range(1, prediction.max() + 1):
        matched[prediction == index] = np.bincount(truth[prediction == index]).argmax()
    return matched


def aji(truth: np.ndarray, prediction: np.ndarray) -> float:
    metrics = InstanceMetrics()
    metrics.update(truth, prediction)
    return metrics.compute()["aji"]


def test_a_disc_has_its_radius_on_every_ray_and_probability_one_at_the_centre():
    truth = discs((41, 41), [(20, 20)], 10)
    probability, distances = star_targets(truth, 32)
    assert probability.dtype == distances.dtype == np.float32
    assert probability.shape == (41, 41) and distances.shape == (32, 41, 41)
    # StarDist measures to the outer edge of the last pixel (its half-pixel correction): 10.5 along the axes; the
    # polygon discretisation keeps every ray within 1 px of the radius (9.51 to 10.71 here)
    assert np.all(np.abs(distances[:, 20, 20] - 10) < 1)
    assert distances[0, 20, 20] == 10.5 and distances[8, 20, 20] == 10.5
    # 5 rows below the centre: ray 0 runs along the columns to the edge of column 28 (8 <= sqrt(100 - 25) < 9),
    # ray 8 down the rows to the edge of row 30, ray 24 up to the edge of row 10
    assert distances[0, 25, 20] == 8.5 and distances[8, 25, 20] == 5.5 and distances[24, 25, 20] == 15.5
    # edt_prob: distance to the background over its maximum, sqrt(101) at the centre (nearest: row 21, col 30)
    assert probability[20, 20] == 1 and probability[20, 10] == pytest.approx(1 / math.sqrt(101), rel=1e-6)
    assert not probability[truth == 0].any() and not distances[:, truth == 0].any()


def test_empty_labels_give_empty_targets_and_bad_inputs_are_refused():
    probability, distances = star_targets(np.zeros((16, 20), np.int32), 8)
    assert probability.shape == (16, 20) and distances.shape == (8, 16, 20)
    assert not probability.any() and not distances.any()
    with pytest.raises(ConfigError, match="n_rays=2"):
        star_targets(np.zeros((16, 20), np.int32), 2)
    with pytest.raises(ValueError, match="integer HxW"):
        star_targets(np.zeros((16, 20), np.float32), 8)


def test_perfect_targets_give_back_two_touching_discs():
    truth = discs((40, 60), [(20, 20), (20, 37)], 10)
    prediction = star_instances(*star_targets(truth, 32), **STARDIST)
    assert prediction.dtype == np.int32 and prediction.max() == 2
    matched = matched_to_truth(truth, prediction)
    assert sorted(np.unique(matched[matched > 0])) == [1, 2]
    # a 32-ray polygon through the pixels' outer edges is not the pixel disc: every disagreement is a pixel on a
    # true boundary (12 of 628 here), so AJI is 0.98, not 1 (a single disc alone scores 0.975)
    assert not ((matched != truth) & ~find_boundaries(truth, mode="thick")).any()
    assert aji(truth, prediction) > 0.97


def test_perfect_targets_give_back_five_touching_discs():
    truth = discs((64, 64), [(20, 20), (20, 37), (36, 28), (44, 44), (30, 50)], 9)
    prediction = star_instances(*star_targets(truth, 32), **STARDIST)
    assert prediction.max() == 5
    matched = matched_to_truth(truth, prediction)
    assert sorted(np.unique(matched[matched > 0])) == [1, 2, 3, 4, 5]
    assert not ((matched != truth) & ~find_boundaries(truth, mode="thick")).any()  # as with two discs: 55 px
    assert aji(truth, prediction) > 0.95


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_post_processing_equals_stardists_prediction_path(seed):
    _, truth = synthetic_tile(SyntheticSpec(96, 96, n_nuclei=12, touching_fraction=0.6), seed)
    probability, distances = star_targets(truth, 32)
    rng = np.random.default_rng(seed)
    for noise in (0.0, 0.1):
        noisy_probability = np.clip(probability + rng.normal(0, noise, probability.shape), 0, 1).astype(np.float32)
        noisy_distances = (distances * rng.uniform(1 - noise, 1 + noise, distances.shape)).astype(np.float32)
        ours = star_instances(noisy_probability, noisy_distances, **STARDIST)
        reference = stardist_predict_instances(noisy_probability, np.moveaxis(noisy_distances, 0, -1), 0.5, 0.4, 2)
        assert ours.max() > 5
        np.testing.assert_array_equal(ours, relabel_sequential(reference)[0])


def test_the_nms_threshold_decides_between_two_overlapping_circles():
    """Two circles of radius 10 whose centres are 10 px apart overlap by 2 r^2 acos(1/2) - 5 sqrt(300) = 122.8 px,
    0.39 of either circle's area: a threshold of 0.3 keeps only the more probable, 0.5 keeps both."""
    probability = np.zeros((40, 50), np.float32)
    probability[20, 20], probability[20, 30] = 0.9, 0.8
    distances = np.full((32, 40, 50), 10, np.float32)
    settings = {**STARDIST, "prob_threshold": 0.5}
    one = star_instances(probability, distances, **{**settings, "nms_threshold": 0.3})
    both = star_instances(probability, distances, **{**settings, "nms_threshold": 0.5})
    assert one.max() == 1 and one[20, 20] == 1 and one[20, 38] == 0
    assert both.max() == 2 and both[20, 12] != both[20, 38]
    # the more probable circle is drawn last and keeps the overlap
    assert both[20, 25] == both[20, 20]


def test_candidates_next_to_the_image_edge_are_skipped_within_the_border():
    probability = np.zeros((30, 30), np.float32)
    probability[1, 15] = 0.9
    distances = np.full((32, 30, 30), 5, np.float32)
    assert not star_instances(probability, distances, **STARDIST).any()
    assert star_instances(probability, distances, **{**STARDIST, "border": 0}).max() == 1


def test_no_candidate_gives_an_empty_image():
    labels = star_instances(np.full((24, 24), 0.5, np.float32), np.ones((32, 24, 24), np.float32), **STARDIST)
    assert labels.dtype == np.int32 and labels.shape == (24, 24) and not labels.any()


@pytest.mark.parametrize(
    ("name", "value"),
    [("prob_threshold", 0.0), ("prob_threshold", 1.0), ("nms_threshold", 1.2), ("nms_threshold", -0.4), ("border", -1)],
)
def test_bad_settings_are_named(name, value):
    with pytest.raises(ConfigError, match=f"postprocess.{name}="):
        star_instances(np.zeros((8, 8)), np.zeros((32, 8, 8)), **{**STARDIST, name: value})


def test_shapes_are_checked():
    with pytest.raises(ValueError, match="n_rays x H x W"):
        star_instances(np.zeros((8, 8)), np.zeros((8, 8, 32)), **STARDIST)
