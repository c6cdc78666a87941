"""The field's heads beside ours: channels, activation, flips (an HV map changes sign, StarDist's rays mirror), the
targets made after augmentation, and the path from each head's maps to nuclei in the GeoJSON."""

import json

import numpy as np
import pytest
import torch

from nucleiseg.config.settings import defaults
from nucleiseg.inference.session import InferenceSession
from nucleiseg.metrics.instance import InstanceMetrics
from nucleiseg.models.heads import activate, output_channels, unflip
from nucleiseg.models.lit_module import head_targets
from nucleiseg.postprocess.hover import hv_maps
from nucleiseg.postprocess.star import star_targets

RAYS = 16


def ellipses(shape=(64, 64)) -> np.ndarray:
    """Two touching ellipses and a third apart, centred on whole pixels (a centre of mass on a half pixel rounds
    differently once mirrored, as HoVer-Net's own targets do)."""
    rows, cols = np.mgrid[: shape[0], : shape[1]]
    labels = np.zeros(shape, np.int32)
    labels[((rows - 30) / 9) ** 2 + ((cols - 22) / 14) ** 2 <= 1] = 1
    labels[(((rows - 30) / 7) ** 2 + ((cols - 44) / 9) ** 2 <= 1) & (labels == 0)] = 2
    labels[((rows - 52) / 5) ** 2 + ((cols - 12) / 5) ** 2 <= 1] = 3
    return labels


def test_channels_and_activation_per_head():
    assert [output_channels(h, RAYS) for h in ("binary", "distance", "hv", "stardist")] == [1, 2, 3, 2 + RAYS]
    logits = torch.linspace(-3, 3, 5 * 4).view(1, 5, 2, 2)
    hv = activate("hv", logits[:, :3])
    assert torch.allclose(hv[:, 0], torch.sigmoid(logits[:, 0])) and torch.equal(hv[:, 1:], logits[:, 1:3])
    star = activate("stardist", logits)
    assert torch.allclose(star[:, :2], torch.sigmoid(logits[:, :2])) and torch.equal(star[:, 2:], logits[:, 2:])
    assert torch.allclose(activate("distance", logits[:, :2]), torch.sigmoid(logits[:, :2]))


@pytest.mark.parametrize("dims", [(-1,), (-2,), (-2, -1)])
def test_unflipping_the_maps_of_a_flipped_input_gives_the_inputs_own_maps(dims):
    """What test-time flips rely on, checked against HoVer-Net's and StarDist's own targets: the maps computed on
    the flipped labels, brought back, equal the maps of the labels."""
    labels = ellipses()
    flipped = np.flip(labels, axis=tuple(d + 2 for d in dims)).copy()
    probability, distances = star_targets(labels, RAYS)
    flipped_probability, flipped_distances = star_targets(flipped, RAYS)
    star = np.concatenate([flipped_probability[None], flipped_probability[None], flipped_distances])
    back = unflip("stardist", torch.from_numpy(star)[None], dims)[0].numpy()
    assert np.abs(back[1] - probability).max() == 0 and np.abs(back[2:] - distances).max() < 1e-4
    hv = np.concatenate([flipped_probability[None], hv_maps(flipped)])
    back = unflip("hv", torch.from_numpy(hv)[None], dims)[0].numpy()
    assert np.array_equal(back[1:], hv_maps(labels))
    # the sign change is real: mirroring alone would be wrong
    assert not np.array_equal(np.flip(hv_maps(flipped), axis=tuple(d + 3 for d in dims)), hv_maps(labels))


def test_targets_are_made_from_the_labels_as_augmented():
    labels = ellipses()
    batch = torch.from_numpy(np.stack([labels, np.fliplr(labels).copy()]))
    made = head_targets("hv", batch, RAYS)["hv"].numpy()
    assert np.array_equal(made[0], hv_maps(labels))
    assert np.array_equal(made[1, 0], -np.fliplr(made[0, 0])) and np.array_equal(made[1, 1], np.fliplr(made[0, 1]))
    star = head_targets("stardist", batch, RAYS)
    assert star["star_probability"].shape == (2, 1, 64, 64) and star["star_distances"].shape == (2, RAYS, 64, 64)
    assert head_targets("binary", batch, RAYS) == {} and head_targets("distance", batch, RAYS) == {}


def picture(labels: np.ndarray) -> np.ndarray:
    """``uint8 HxWx3``: white, nucleus k in the grey 20 k (touching nuclei stay apart for the oracle)."""
    return np.where(labels > 0, 20 * labels, 255).astype(np.uint8)[..., None].repeat(3, axis=-1)


class Oracle(torch.nn.Module):
    """A "network" that knows the answer: it reads the nuclei off a :func:`picture` and returns the logits of
    their exact maps for ``head``, so what is tested is the path from maps to nuclei, not a network's skill."""

    def __init__(self, head: str) -> None:
        super().__init__()
        self.head = head
        self.weight = torch.nn.Parameter(torch.zeros(1))  # a module with a parameter, as networks are

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = []
        for image in x.detach().numpy():
            grey = image.mean(0) * 255
            labels = np.where(grey < 128, np.round(grey / 20), 0).astype(np.int32)
            maps = [np.where(labels > 0, 8.0, -8.0)]  # the nucleus logit
            if self.head == "hv":
                maps += list(hv_maps(labels))
            else:
                probability, distances = star_targets(labels, RAYS)
                maps += [np.log(np.clip(probability, 1e-4, 1 - 1e-4) / (1 - np.clip(probability, 1e-4, 1 - 1e-4)))]
                maps += list(distances)
            out.append(np.stack(maps))
        return torch.from_numpy(np.stack(out).astype(np.float32)) + 0 * self.weight


def _session(head, **options):
    hparams = {"encoder": "oracle", "head": head, "n_rays": RAYS, "threshold": 0.5, "data": {"model_mpp": 0.5}}
    settings = defaults("predict", device="cpu", precision="32-true", tile_size=64, microns_per_pixel=0.5, **options)
    return InferenceSession(Oracle(head), hparams, settings)


@pytest.mark.parametrize("head", ["hv", "stardist"])
def test_each_heads_perfect_maps_give_back_the_nuclei_with_and_without_test_time_flips(head):
    labels = ellipses()
    image = picture(labels)
    plain = _session(head).predict(image)
    flipped = _session(head, tta=True).predict(image)
    assert np.abs(plain.maps - flipped.maps).max() < 1e-4  # the flips are undone the head's way
    session = _session(head)
    assert session.postprocess.method == {"hv": "hover", "stardist": "stardist"}[head]
    nuclei = session.instances(plain)
    scores = InstanceMetrics()
    scores.update(labels, nuclei)
    assert nuclei.max() == 3 and scores.compute()["aji"] > 0.9


@pytest.mark.parametrize("head", ["hv", "stardist"])
def test_predict_writes_each_heads_nuclei_to_the_geojson(head, tmp_path):
    from PIL import Image

    from nucleiseg.predict.run import predict

    labels = ellipses((128, 128))
    Image.fromarray(picture(labels)).save(tmp_path / "t.png")
    assert predict([tmp_path / "t.png"], tmp_path / "out", _session(head), progress="none").ok
    features = json.loads((tmp_path / "out" / "t" / "nuclei.geojson").read_text())["features"]
    assert len(features) == 3 and all(f["properties"]["classification"]["name"] == "Nucleus" for f in features)


@pytest.mark.parametrize("head", ["hv", "stardist"])
def test_tuning_searches_each_heads_own_parameters(head):
    from nucleiseg.evaluation.tuning import tune

    labels = ellipses()
    items = [("tile", picture(labels), labels)]
    settings = defaults("tune")
    result = tune(_session(head), items, settings, iou_threshold=0.5, normalise=False)
    method = {"hv": "hover", "stardist": "stardist"}[head]
    grid = settings.grid_for(method)
    searched = [t for t in result.trials if not t["untuned"]]
    varied = {key for key in searched[0] if key != "aji" and len({str(t[key]) for t in searched}) > 1}
    assert varied == set(grid) and len(searched) == np.prod([len(values) for values in grid.values()])
    assert result.score >= result.untuned_score > 0.9
