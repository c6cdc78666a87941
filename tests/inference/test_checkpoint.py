"""Model files that nucleiseg refuses: each in one line naming the file (and the key), never a traceback."""

import pytest
import torch

from nucleiseg.inference.checkpoint import CheckpointError, load_checkpoint, write_model_checkpoint, write_safetensors
from nucleiseg.models.factory import create_model

HPARAMS = {"encoder": "unet_bn", "unet_widths": [2, 4], "head": "binary"}


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return create_model("unet_bn", unet_widths=(2, 4))


class Recipe:
    """A pickled object a weights-only load refuses (as an OmegaConf config or a Lightning object would be)."""


def test_a_checkpoint_holding_code_is_refused_and_says_what_to_do(tmp_path):
    path = tmp_path / "model.ckpt"
    state = {f"model.{k}": v for k, v in _model().state_dict().items()}
    torch.save({"state_dict": state, "hyper_parameters": HPARAMS, "recipe": Recipe()}, path)
    with pytest.raises(CheckpointError) as error:
        load_checkpoint(path)
    message = str(error.value)
    assert "\n" not in message and "\x1b" not in message and message.startswith(f"{path}: ")
    assert "holds code (pickled Python objects" in message and "Recipe" in message and "was not loaded" in message
    assert "re-save it with weights only" in message and "nucleiseg export --format safetensors" in message
    assert "weights_only" not in message and "trust" not in message  # never advice to load it anyway


def test_a_damaged_checkpoint_is_named_as_damaged(tmp_path):
    path = tmp_path / "model.ckpt"
    write_model_checkpoint(path, _model(), HPARAMS)
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(CheckpointError, match=rf"^{path}: not a readable checkpoint .*damaged or cut short"):
        load_checkpoint(path)


@pytest.mark.parametrize(
    ("hparams", "key"),
    [
        ({"threshold": "abc"}, "threshold"),
        ({"threshold": 1.5}, "threshold"),
        ({"threshold": True}, "threshold"),
        ({"postprocess": {"smoothing": "abc"}}, "postprocess.smoothing"),
        ({"postprocess": {"min_area": -3}}, "postprocess.min_area"),
        ({"postprocess": {"min_distance": 2.5}}, "postprocess.min_distance"),
        ({"postprocess": {"seed_height": 0}}, "postprocess.seed_height"),
        ({"postprocess": {"method": "magic"}}, "postprocess.method"),
        ({"postprocess": "watershed"}, "postprocess"),
        ({"data": {"model_mpp": "fast"}}, "data.model_mpp"),
        ({"unet_widths": "wide"}, "unet_widths"),
    ],
)
@pytest.mark.parametrize("suffix", [".ckpt", ".safetensors"])
def test_a_bad_hyper_parameter_is_one_line_naming_the_file_and_the_key(tmp_path, hparams, key, suffix):
    path = tmp_path / f"model{suffix}"
    (write_model_checkpoint if suffix == ".ckpt" else write_safetensors)(path, _model(), {**HPARAMS, **hparams})
    with pytest.raises(CheckpointError) as error:
        load_checkpoint(path)
    message = str(error.value)
    assert "\n" not in message and message.startswith(f"{path}: ") and f"{key}=" in message


def test_good_hyper_parameters_load(tmp_path):
    path = tmp_path / "model.ckpt"
    post = {"method": "watershed", "min_distance": 4, "smoothing": 1, "min_area": 10, "fill_holes": 0, "new": "x"}
    write_model_checkpoint(path, _model(), {**HPARAMS, "threshold": 0.4, "postprocess": post, "data": None})
    assert load_checkpoint(path)[1]["threshold"] == 0.4  # (a key a newer nucleiseg writes is left alone)


@pytest.mark.parametrize(
    ("metadata", "found"),
    [("{not json", "not JSON"), ("[1, 2]", "a JSON list"), ('"unet"', "a JSON str"), ("{}", "no encoder")],
)
def test_malformed_safetensors_metadata_is_one_line_naming_the_file(tmp_path, metadata, found):
    from safetensors.torch import save_file

    path = tmp_path / "model.safetensors"
    state = {k: v.contiguous() for k, v in _model().state_dict().items()}
    save_file(state, str(path), metadata={"nucleiseg": metadata})
    with pytest.raises(CheckpointError) as error:
        load_checkpoint(path)
    message = str(error.value)
    assert "\n" not in message and message.startswith(f"{path}: ") and found in message
