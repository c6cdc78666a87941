"""The model card states the resolution the checkpoint records, not a fixed one."""

from nucleiseg.models.card import model_card


def _card(data: dict) -> str:
    hparams = {"encoder": "unet_bn", "head": "distance", "threshold": 0.5, "data": data}
    return model_card(hparams, {"test/aji_distance": 0.6}, {}, "run")


def test_a_physical_scale_model_card_gives_its_one_resolution():
    card = _card({"model_mpp": 0.5, "dataset_mpp": {"tnbc": 0.5, "monuseg": 0.5}, "image_size": 256})
    assert "training resolution (0.50 um/px, every source resampled to it)" in card
    assert "40x" not in card and "| test/aji_distance | 0.6000 |" in card


def test_a_paper_protocol_model_card_gives_each_datasets_scale():
    card = _card({"dataset_mpp": {"tnbc": 0.25, "monuseg": 0.49}, "image_size": 512})
    assert "training resolution (monuseg at 0.49 um/px; tnbc at 0.25 um/px)" in card
    assert "unknown: the checkpoint records no pixel size" in _card({})
