import pytest
import torch
import torchvision
from safetensors.torch import save_file

import nucleiseg.models.weights as weights
from nucleiseg.models.factory import create_model
from nucleiseg.models.weights import WeightsNotFoundError


@pytest.fixture(autouse=True)
def empty_caches(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "torchhub"))
    monkeypatch.setattr(weights, "_host_reachable", lambda host, timeout=3.0: False)


def test_torchvision_pth_in_weights_dir_is_loaded(tmp_path):
    torch.manual_seed(1)
    reference = torchvision.models.resnet50(weights=None).state_dict()
    weights_dir = tmp_path / "weights"
    weights_dir.mkdir()
    torch.save(reference, weights_dir / "resnet50-19c8e357.pth")  # torchvision's file name
    model = create_model("resnet50", pretrained=True, weights_dir=weights_dir)
    encoder = model.network.encoder.state_dict()
    assert torch.equal(encoder["conv1.weight"], reference["conv1.weight"])
    assert torch.equal(encoder["layer4.2.bn3.running_var"], reference["layer4.2.bn3.running_var"])


def test_smp_hub_safetensors_for_densenet_is_loaded(tmp_path):
    torch.manual_seed(2)
    source = create_model("densenet121").network.encoder.state_dict()
    weights_dir = tmp_path / "weights"
    (weights_dir / "densenet121.imagenet").mkdir(parents=True)
    save_file(
        {k: v.contiguous() for k, v in source.items()}, str(weights_dir / "densenet121.imagenet" / "model.safetensors")
    )
    model = create_model("densenet121", pretrained=True, weights_dir=weights_dir)
    loaded = model.network.encoder.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in source.items())


def test_missing_weights_offline_fail_fast_naming_the_file(tmp_path, monkeypatch):
    """Offline, one short TCP probe decides (no chain of HTTP retries): the error comes from the probe's answer."""
    import nucleiseg.models.weights as weights

    probes = []
    monkeypatch.setattr(weights, "_host_reachable", lambda host, timeout=3.0: probes.append((host, timeout)) or False)
    monkeypatch.setattr(weights, "_cached", lambda encoder: None)
    with pytest.raises(WeightsNotFoundError) as error:
        create_model("resnext50_32x4d", pretrained=True, weights_dir=None)
    assert probes and all(timeout <= 5 for _, timeout in probes)
    message = str(error.value)
    assert "smp-hub/resnext50_32x4d.imagenet" in message and "model.weights_dir" in message
    assert "resnext50_32x4d-7cdf4587.pth" in message and "pretrained=false" in message


def test_weights_for_another_architecture_are_rejected(tmp_path):
    weights_dir = tmp_path / "w"
    weights_dir.mkdir()
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), weights_dir / "resnet50.pth")
    with pytest.raises(Exception, match="do not match the encoder"):
        create_model("resnet50", pretrained=True, weights_dir=weights_dir)
