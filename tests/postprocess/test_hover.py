import numpy as np
import pytest
from scipy import ndimage
from skimage.segmentation import find_boundaries, relabel_sequential, watershed

from nucleiseg.data.synthetic import SyntheticSpec, synthetic_tile
from nucleiseg.metrics.instance import InstanceMetrics
from nucleiseg.postprocess.hover import ellipse, hover_instances, hv_maps, sobel, sobel_kernels
from nucleiseg.util.errors import ConfigError

try:
    import cv2
except ImportError:  # OpenCV is no dependency of nucleiseg; only the comparisons with it need it
    cv2 = None
needs_cv2 = pytest.mark.skipif(cv2 is None, reason="OpenCV (opencv-python-headless) is not installed")

# HoVer-Net's constants in __proc_np_hv (vqdang/hover_net, models/hovernet/post_proc.py); conf/ holds ours
HOVER_NET = {
    "threshold": 0.5,
    "min_object": 10,
    "sobel_kernel": 21,
    "edge_threshold": 0.4,
    "smoothing_kernel": 3,
    "marker_opening": 5,
    "min_marker": 10,
}


def discs(shape: tuple[int, int], centres: list[tuple[int, int]], radius: int) -> np.ndarray:
    """Discs of ``radius`` around pixel ``centres``; where two overlap, each pixel goes to the nearer centre."""
    rows, cols = np.indices(shape)
    labels, nearest = np.zeros(shape, np.int32), np.full(shape, np.inf)
    for index, (row, col) in enumerate(centres, start=1):
        distance = np.hypot(rows - row, cols - col)
        inside = (distance <= radius) & (distance < nearest)
        labels[inside], nearest[inside] = index, distance[inside]
    return labels


def hover_net_hv_map(ann: np.ndarray, first_coordinate: int) -> np.ndarray:
    """Transcribed from vqdang/hover_net (MIT licence), models/hovernet/targets.py, ``gen_instance_hv_map``, without
    its training-crop steps (fix_mirror_padding, cropping_center, remove_small_objects(min_size=30)). HoVer-Net's
    ``first_coordinate`` is 1 (``np.arange(1, width + 1)``); 0 is the centred variant nucleiseg uses. The image is
    padded by 2 px so that HoVer-Net's box, widened by 2 px, stays inside (their pipeline pads too). -> 2xHxW."""
    ann = np.pad(ann, 2)
    x_map = np.zeros(ann.shape[:2], dtype=np.float32)
    y_map = np.zeros(ann.shape[:2], dtype=np.float32)
    inst_list = list(np.unique(ann))
    inst_list.remove(0)
    for inst_id in inst_list:
        inst_map = np.array(ann == inst_id, np.uint8)
        rows, cols = np.any(inst_map, axis=1), np.any(inst_map, axis=0)
        rmin, rmax = np.where(rows)[0][[0, -1]]
        cmin, cmax = np.where(cols)[0][[0, -1]]
        inst_box = [rmin - 2, rmax + 1 + 2, cmin - 2, cmax + 1 + 2]
        inst_map = inst_map[inst_box[0] : inst_box[1], inst_box[2] : inst_box[3]]
        inst_com = list(ndimage.center_of_mass(inst_map))
        inst_com[0] = int(inst_com[0] + 0.5)
        inst_com[1] = int(inst_com[1] + 0.5)
        inst_x_range = np.arange(first_coordinate, inst_map.shape[1] + first_coordinate)
        inst_y_range = np.arange(first_coordinate, inst_map.shape[0] + first_coordinate)
        inst_x_range -= inst_com[1]
        inst_y_range -= inst_com[0]
        inst_x, inst_y = np.meshgrid(inst_x_range, inst_y_range)
        inst_x[inst_map == 0] = 0
        inst_y[inst_map == 0] = 0
        inst_x = inst_x.astype("float32")
        inst_y = inst_y.astype("float32")
        if np.min(inst_x) < 0:
            inst_x[inst_x < 0] /= -np.amin(inst_x[inst_x < 0])
        if np.min(inst_y) < 0:
            inst_y[inst_y < 0] /= -np.amin(inst_y[inst_y < 0])
        if np.max(inst_x) > 0:
            inst_x[inst_x > 0] /= np.amax(inst_x[inst_x > 0])
        if np.max(inst_y) > 0:
            inst_y[inst_y > 0] /= np.amax(inst_y[inst_y > 0])
        x_map_box = x_map[inst_box[0] : inst_box[1], inst_box[2] : inst_box[3]]
        x_map_box[inst_map > 0] = inst_x[inst_map > 0]
        y_map_box = y_map[inst_box[0] : inst_box[1], inst_box[2] : inst_box[3]]
        y_map_box[inst_map > 0] = inst_y[inst_map > 0]
    return np.stack([x_map, y_map])[:, 2:-2, 2:-2]


def hover_net_proc_np_hv(pred: np.ndarray) -> np.ndarray:
    """Transcribed from vqdang/hover_net (MIT licence), models/hovernet/post_proc.py, ``__proc_np_hv`` (with their
    misc/utils.py ``remove_small_objects`` for labelled input inlined): ``pred`` HxWx3 = probability, h, v."""

    def remove_small_objects(out, min_size):
        too_small = np.bincount(out.ravel()) < min_size
        out[too_small[out]] = 0
        return out

    pred = np.array(pred, dtype=np.float32)
    blb_raw, h_dir_raw, v_dir_raw = pred[..., 0], pred[..., 1], pred[..., 2]
    blb = np.array(blb_raw >= 0.5, dtype=np.int32)
    blb = ndimage.label(blb)[0]
    blb = remove_small_objects(blb, min_size=10)
    blb[blb > 0] = 1
    h_dir = cv2.normalize(h_dir_raw, None, alpha=0, beta=1, norm_type=cv2.NORM_MINMAX, dtype=cv2.CV_32F)
    v_dir = cv2.normalize(v_dir_raw, None, alpha=0, beta=1, norm_type=cv2.NORM_MINMAX, dtype=cv2.CV_32F)
    sobelh = cv2.Sobel(h_dir, cv2.CV_64F, 1, 0, ksize=21)
    sobelv = cv2.Sobel(v_dir, cv2.CV_64F, 0, 1, ksize=21)
    sobelh = 1 - (cv2.normalize(sobelh, None, alpha=0, beta=1, norm_type=cv2.NORM_MINMAX, dtype=cv2.CV_32F))
    sobelv = 1 - (cv2.normalize(sobelv, None, alpha=0, beta=1, norm_type=cv2.NORM_MINMAX, dtype=cv2.CV_32F))
    overall = np.maximum(sobelh, sobelv)
    overall = overall - (1 - blb)
    overall[overall < 0] = 0
    dist = (1.0 - overall) * blb
    dist = -cv2.GaussianBlur(dist, (3, 3), 0)
    overall = np.array(overall >= 0.4, dtype=np.int32)
    marker = blb - overall
    marker[marker < 0] = 0
    marker = ndimage.binary_fill_holes(marker).astype("uint8")
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (5, 5))
    marker = cv2.morphologyEx(marker, cv2.MORPH_OPEN, kernel)
    marker = ndimage.label(marker)[0]
    marker = remove_small_objects(marker, min_size=10)
    return watershed(dist, markers=marker, mask=blb)


def scores(truth: np.ndarray, prediction: np.ndarray) -> dict[str, float]:
    metrics = InstanceMetrics()
    metrics.update(truth, prediction)
    return metrics.compute()


def test_a_disc_has_ramps_of_slope_one_over_radius():
    truth = discs((41, 45), [(20, 22)], 10)
    maps = hv_maps(truth)
    rows, cols = np.indices(truth.shape)
    inside = truth > 0
    assert maps.dtype == np.float32 and maps.shape == (2, 41, 45)
    expected_x = np.where(inside, (cols - 22).astype(np.float32) / np.float32(10), 0)
    expected_y = np.where(inside, (rows - 20).astype(np.float32) / np.float32(10), 0)
    np.testing.assert_array_equal(maps[0], expected_x)
    np.testing.assert_array_equal(maps[1], expected_y)
    assert (
        maps[0, 20, 12] == -1 and maps[0, 20, 32] == 1 and maps[1, 30, 22] == 1 and maps[:, 20, 22].tolist() == [0, 0]
    )


def test_a_centre_on_a_half_pixel_rounds_up():
    truth = np.zeros((6, 30), np.int32)
    truth[1:4, 10:20] = 1  # centre of mass at column 14.5: HoVer-Net's int(14.5 + 0.5) = 15
    row = hv_maps(truth)[0, 2, 10:20]
    np.testing.assert_allclose(row, [-1, -0.8, -0.6, -0.4, -0.2, 0, 0.25, 0.5, 0.75, 1], rtol=1e-6)


def test_flipping_the_labels_flips_the_sign_of_its_own_map():
    _, truth = synthetic_tile(SyntheticSpec(96, 96, n_nuclei=12, touching_fraction=0.6), 2)
    # precondition: no centre of mass falls on a half pixel, where rounding half up (HoVer-Net's int(com + 0.5))
    # moves the ramp's zero by one pixel under a flip (seeds 0, 1 and 3 have such a nucleus)
    centres = np.array(ndimage.center_of_mass(truth > 0, truth, range(1, truth.max() + 1)))
    assert not np.any(np.isclose(centres % 1, 0.5))
    maps = hv_maps(truth)
    mirrored, upside_down = hv_maps(np.fliplr(truth)), hv_maps(np.flipud(truth))
    np.testing.assert_array_equal(mirrored[0], -np.fliplr(maps[0]))
    np.testing.assert_array_equal(mirrored[1], np.fliplr(maps[1]))
    np.testing.assert_array_equal(upside_down[1], -np.flipud(maps[1]))
    np.testing.assert_array_equal(upside_down[0], np.flipud(maps[0]))
    # every nucleus spans [-1, 1] on both maps, the background is 0
    for index in range(1, truth.max() + 1):
        for channel in (0, 1):
            values = maps[channel][truth == index]
            if np.ptp(np.nonzero(truth == index)[1 - channel]) > 1:
                assert values.min() == -1 and values.max() == 1
    assert not maps[:, truth == 0].any()


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_maps_equal_hover_nets_gen_instance_hv_map_centred(seed):
    _, truth = synthetic_tile(SyntheticSpec(96, 96, n_nuclei=12, touching_fraction=0.6), seed)
    np.testing.assert_array_equal(hv_maps(truth), hover_net_hv_map(truth, first_coordinate=0))
    # HoVer-Net's own arange(1, ...) differs exactly by putting the zero one pixel early: see the next test
    assert not np.array_equal(hv_maps(truth), hover_net_hv_map(truth, first_coordinate=1))


def test_hover_nets_own_targets_put_the_zero_one_pixel_before_the_centre():
    truth = discs((41, 41), [(20, 20)], 10)
    theirs = hover_net_hv_map(truth, first_coordinate=1)[0, 20]
    ours = hv_maps(truth)[0, 20]
    assert ours[20] == 0 and theirs[19] == 0 and theirs[20] > 0
    # their left ramp runs over 9 steps and the right one over 11: slopes 1/9 and 1/11 instead of 1/10
    assert theirs[11] == pytest.approx(-8 / 9) and theirs[29] == pytest.approx(10 / 11)


def test_labels_are_checked():
    with pytest.raises(ValueError, match="integer HxW"):
        hv_maps(np.zeros((4, 4), np.float32))
    with pytest.raises(ValueError, match="labels >= 0"):
        hv_maps(np.full((4, 4), -1, np.int32))
    assert not hv_maps(np.zeros((8, 8), np.int32)).any()


def test_perfect_maps_give_back_two_touching_discs():
    truth = discs((40, 60), [(20, 20), (20, 37)], 10)
    prediction = hover_instances((truth > 0).astype(np.float32), hv_maps(truth), **HOVER_NET)
    assert prediction.dtype == np.int32 and prediction.max() == 2
    assert scores(truth, prediction)["aji"] == 1.0


def test_perfect_maps_give_back_five_touching_discs():
    truth = discs((64, 64), [(20, 20), (20, 37), (36, 28), (44, 44), (30, 50)], 9)
    prediction = hover_instances((truth > 0).astype(np.float32), hv_maps(truth), **HOVER_NET)
    assert prediction.max() == 5
    assert np.array_equal(prediction > 0, truth > 0)
    # the watershed's cut between two nuclei may run a pixel beside the truth's nearest-centre cut: every
    # disagreement is a pixel on a boundary between two true nuclei, and AJI stays above 0.99 (0.9968)
    matched = np.zeros_like(truth)
    for index in range(1, 6):
        matched[prediction == index] = np.bincount(truth[prediction == index]).argmax()
    assert sorted(np.unique(matched[matched > 0])) == [1, 2, 3, 4, 5]
    assert not ((matched != truth) & ~find_boundaries(truth, mode="thick")).any()
    assert scores(truth, prediction)["aji"] > 0.99


def test_small_objects_and_empty_predictions_give_no_nuclei():
    truth = discs((40, 60), [(20, 20)], 10)
    truth[2:5, 50:53] = 2  # 9 px, below min_object
    prediction = hover_instances((truth > 0).astype(np.float32), hv_maps(truth), **HOVER_NET)
    assert prediction.max() == 1 and not prediction[2:5, 50:53].any()
    empty = hover_instances(np.zeros((32, 32), np.float32), np.zeros((2, 32, 32), np.float32), **HOVER_NET)
    assert empty.dtype == np.int32 and empty.shape == (32, 32) and not empty.any()
    below = hover_instances(np.full((32, 32), 0.49, np.float32), np.zeros((2, 32, 32), np.float32), **HOVER_NET)
    assert not below.any()


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("threshold", 0.0),
        ("threshold", 1.5),
        ("edge_threshold", 1.0),
        ("edge_threshold", -0.1),
        ("min_object", -1),
        ("min_marker", 2.5),
        ("sobel_kernel", 20),
        ("sobel_kernel", 1),
        ("smoothing_kernel", -3),
        ("marker_opening", 4),
    ],
)
def test_bad_settings_are_named(name, value):
    with pytest.raises(ConfigError, match=f"postprocess.{name}="):
        hover_instances(np.zeros((8, 8)), np.zeros((2, 8, 8)), **{**HOVER_NET, name: value})


def test_shapes_are_checked():
    with pytest.raises(ValueError, match="hv 2xHxW"):
        hover_instances(np.zeros((8, 8)), np.zeros((8, 8, 2)), **HOVER_NET)


def test_sobel_kernels_are_binomials_and_their_differences():
    assert sobel_kernels(0, 5).tolist() == [1, 4, 6, 4, 1]
    assert sobel_kernels(1, 5).tolist() == [-1, -2, 0, 2, 1]
    assert sobel_kernels(1, 3).tolist() == [-1, 0, 1]
    # a ramp of slope 1 along the columns: the derivative kernel sums k * offset, the smoothing one 2^(size-1)
    ramp = np.tile(np.arange(40.0), (30, 1))
    derivative = sobel(ramp, dx=1, dy=0, size=5)
    assert derivative[15, 20] == 8 * 16  # (-1 * -2 - 2 * -1 + 2 * 1 + 1 * 2) * (1 + 4 + 6 + 4 + 1)
    assert not sobel(ramp, dx=0, dy=1, size=5)[2:-2, 2:-2].any()


@needs_cv2
@pytest.mark.parametrize("size", [3, 5, 7, 21])
def test_sobel_equals_opencv(size):
    image = np.random.default_rng(size).random((40, 52)).astype(np.float32)
    for dx, dy in ((1, 0), (0, 1)):
        reference = cv2.Sobel(image, cv2.CV_64F, dx, dy, ksize=size)
        x_kernel, y_kernel = cv2.getDerivKernels(dx, dy, size, normalize=False)
        assert np.array_equal(x_kernel.ravel(), sobel_kernels(dx, size))
        assert np.array_equal(y_kernel.ravel(), sobel_kernels(dy, size))
        # ksize 21 sums 21 x 21 terms up to ~1e10: 1e-5 absolute is 1e-15 relative
        np.testing.assert_allclose(sobel(image, dx=dx, dy=dy, size=size), reference, rtol=0, atol=1e-5)


@needs_cv2
def test_ellipse_equals_opencv():
    for size in range(1, 16, 2):
        expected = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (size, size)).astype(bool)
        assert np.array_equal(ellipse(size), expected), size
    assert ellipse(5).sum() == 25 - 4 * 2


@needs_cv2
@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_post_processing_equals_hover_nets_proc_np_hv(seed):
    """Perfect and noisy predictions on synthetic tiles: the same nuclei, pixel for pixel. (On these small,
    overlapping nuclei HoVer-Net's own constants merge some of them even from perfect maps; both codes agree.)"""
    _, truth = synthetic_tile(SyntheticSpec(96, 96, n_nuclei=12, touching_fraction=0.6), seed)
    rng = np.random.default_rng(seed)
    for noise in (0.0, 0.2):
        probability = np.clip((truth > 0) + rng.normal(0, noise, truth.shape), 0, 1).astype(np.float32)
        hv = hv_maps(truth) + rng.normal(0, noise, (2, *truth.shape)).astype(np.float32)
        reference = relabel_sequential(hover_net_proc_np_hv(np.dstack([probability, hv[0], hv[1]])))[0]
        ours = hover_instances(probability, hv, **HOVER_NET)
        assert reference.max() > 3
        np.testing.assert_array_equal(ours, reference)
