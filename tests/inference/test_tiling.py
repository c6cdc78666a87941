import numpy as np
import pytest
import torch

from nucleiseg.config.settings import defaults
from nucleiseg.data.synthetic import SyntheticSpec, synthetic_tile
from nucleiseg.inference.tiling import Segmenter, blend_window
from nucleiseg.models.factory import SegmentationNet
from nucleiseg.models.unet import UNet
from nucleiseg.util.errors import ConfigError


def _segmenter(model, **options):
    """A Segmenter with conf/predict's defaults, in fp32 on the CPU, and ``options``."""
    predict = defaults("predict")
    chosen = {"tile_size": predict.tile_size, "overlap": predict.overlap, "tta": predict.tta}
    return Segmenter(model, "cpu", "32-true", **{**chosen, "batch_size": predict.batch_size, **options})


@pytest.fixture(scope="module")
def narrow_model():
    # the modified U-Net's architecture at 1/8 of the width: the tiling is what is under test, and a
    # full-width U-Net needs ~20 s per 1500x1100 image on a 2-core CPU
    torch.manual_seed(0)
    model = SegmentationNet(UNet(batch_norm=True, widths=(8, 16, 32, 64, 128)), normalise=None).eval()
    with torch.no_grad():  # give BatchNorm non-trivial statistics so the map is not flat
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.2, 0.2)
                module.running_var.uniform_(0.5, 1.5)
    return model


def test_large_tile_matches_whole_image_inference(narrow_model):
    image, _ = synthetic_tile(SyntheticSpec(1100, 1500, n_nuclei=400), 3)  # 1500 wide x 1100 high
    whole = _segmenter(narrow_model, tile_size=1536).probability(image)
    tiled_segmenter = _segmenter(narrow_model, tile_size=512, overlap=0.25)
    tiled = tiled_segmenter.probability(image)
    assert tiled_segmenter.n_tiles(1100, 1500) > 1
    assert whole.shape == tiled.shape == (1100, 1500)
    assert np.abs(whole - tiled).mean() < 0.01
    threshold = np.median(whole)  # the narrow untrained net is not calibrated: compare at its median
    agreement = ((whole >= threshold) == (tiled >= threshold)).mean()
    assert agreement > 0.97, agreement


def test_no_overlap_shows_seams_that_blending_removes(narrow_model):
    image, _ = synthetic_tile(SyntheticSpec(640, 640, n_nuclei=100), 4)
    whole = _segmenter(narrow_model, tile_size=768).probability(image)
    blended = _segmenter(narrow_model, tile_size=256, overlap=0.5).probability(image)
    abutting = _segmenter(narrow_model, tile_size=256, overlap=0.0).probability(image)
    assert np.abs(whole - blended).mean() < np.abs(whole - abutting).mean()


def test_small_and_odd_sizes_are_padded_and_cropped(narrow_model):
    image, _ = synthetic_tile(SyntheticSpec(45, 70, n_nuclei=4), 5)
    probability = _segmenter(narrow_model).probability(image)
    assert probability.shape == (45, 70) and probability.dtype == np.float32
    assert 0 <= probability.min() and probability.max() <= 1


def test_flip_tta_is_flip_invariant(narrow_model):
    image, _ = synthetic_tile(SyntheticSpec(64, 64, n_nuclei=6), 6)
    segmenter = _segmenter(narrow_model, tta=True)
    assert np.allclose(segmenter.probability(image)[:, ::-1], segmenter.probability(image[:, ::-1].copy()), atol=1e-5)


def test_blend_window_and_bad_options():
    window = blend_window(64, 16)
    assert window[32, 32] == 1.0 and window[0, 0] < 0.01 and window.min() > 0
    with pytest.raises(ConfigError, match="tile_size=100"):
        _segmenter(torch.nn.Identity(), tile_size=100)


def test_padding_keeps_pixel_scale():
    class Probe(torch.nn.Module):  # logit = input mean: shows the scale the model receives
        def forward(self, x):
            return x.mean(dim=1, keepdim=True)

    image = np.full((40, 50, 3), 255, np.uint8)  # needs padding to 64 x 64
    probability = _segmenter(Probe()).probability(image)
    assert np.allclose(probability, 1 / (1 + np.exp(-1.0)), atol=1e-6)  # input 1.0, not 255


def test_scale_resamples_for_the_model_and_back(narrow_model):
    class Probe(torch.nn.Module):  # records the size the model sees; logit = input mean
        seen: list = []

        def forward(self, x):
            Probe.seen.append(tuple(x.shape[-2:]))
            return x.mean(dim=1, keepdim=True)

    image = np.full((100, 80, 3), 255, np.uint8)
    probability = _segmenter(Probe(), scale=0.5).probability(image)
    assert probability.shape == (100, 80) and Probe.seen[-1] == (64, 64)  # 50 x 40, padded to 32-multiples
    assert np.allclose(probability, 1 / (1 + np.exp(-1.0)), atol=1e-5)
    assert _segmenter(narrow_model, tile_size=256, scale=0.5).n_tiles(1024, 1024) == _segmenter(
        narrow_model, tile_size=256
    ).n_tiles(512, 512)
    # a twice-enlarged image predicted at scale 0.5 matches the original at scale 1, up to resampling
    original, _ = synthetic_tile(SyntheticSpec(96, 96, n_nuclei=10), 7)
    enlarged = np.repeat(np.repeat(original, 2, axis=0), 2, axis=1)
    direct = _segmenter(narrow_model).probability(original)
    through_scale = _segmenter(narrow_model, scale=0.5).probability(enlarged)[::2, ::2]
    assert np.abs(direct - through_scale).mean() < 0.02
    with pytest.raises(ConfigError, match="predict.scale=0"):
        _segmenter(narrow_model, scale=0)
