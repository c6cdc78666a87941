"""The ONNX copy of a model in the cache: validated when used, exported again (atomically) when damaged, and
exported without torch's TracerWarning on every predict."""

import logging
import warnings

import pytest
import torch

from nucleiseg.inference.onnx_backend import OnnxModel, onnx_model
from nucleiseg.models.factory import create_model

pytest.importorskip("onnxruntime")


@pytest.fixture
def model() -> torch.nn.Module:
    torch.manual_seed(0)
    return create_model("unet_bn", unet_widths=(2, 4, 8, 16, 32)).eval()


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("NUCLEISEG_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_a_truncated_cached_onnx_copy_is_exported_again_with_a_warning(model, cache, caplog):
    first = onnx_model(model, "model-file:1", 1)
    assert isinstance(first, OnnxModel)
    exported = first.path.read_bytes()
    first.path.write_bytes(exported[: len(exported) // 2])  # a cut write, a full disk, a copy gone wrong
    with caplog.at_level(logging.WARNING, logger="nucleiseg"):
        again = onnx_model(model, "model-file:1", 1)
    assert isinstance(again, OnnxModel) and again.path == first.path
    assert len(again.path.read_bytes()) == len(exported)
    warned = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warned) == 1 and str(first.path) in warned[0] and "exporting it again" in warned[0]
    assert sorted(p.name for p in (cache / "onnx").iterdir()) == [first.path.name]  # no temporary file left
    image = torch.rand(1, 3, 64, 96)
    with torch.no_grad():
        assert torch.allclose(again(image), model(image), atol=1e-4)


def test_the_export_silences_the_tracer_warning_and_nothing_else(model, cache):
    filters = list(warnings.filters)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        runner = onnx_model(model, "model-file:2", 1)
        warnings.warn("still shown", torch.jit.TracerWarning, stacklevel=1)
    assert isinstance(runner, OnnxModel)
    tracer = [str(w.message) for w in caught if issubclass(w.category, torch.jit.TracerWarning)]
    assert tracer == ["still shown"]
    assert warnings.filters == filters  # not silenced for the rest of the process
