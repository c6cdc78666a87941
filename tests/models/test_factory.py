import pytest
import torch

from nucleiseg.models.factory import ENCODERS, check_configuration, create_model
from nucleiseg.models.unet import UNet
from nucleiseg.util.errors import ConfigError

TABLE_I = [(name, False) for name in ENCODERS] + [
    (name, True) for name, s in ENCODERS.items() if s.has_imagenet_weights
]


def test_table_one_has_fourteen_configurations():
    assert len(TABLE_I) == 14


class WeightFiles:
    """ImageNet-format weight files made here on demand (a recognisable 0.5 in every float tensor, so a test sees
    the file's values, not a fresh init): the pretrained path runs offline, one encoder built per file asked."""

    def __init__(self, folder) -> None:
        self.folder = folder

    def __call__(self, encoder: str):
        from safetensors.torch import save_file

        path = self.folder / f"{encoder}.imagenet.safetensors"
        if not path.is_file():
            state = create_model(encoder).network.encoder.state_dict()
            state = {k: torch.full_like(v, 0.5) if v.is_floating_point() else v for k, v in state.items()}
            save_file({k: v.contiguous() for k, v in state.items()}, str(path))
        return self.folder


@pytest.fixture(scope="module")
def weight_files(tmp_path_factory):
    return WeightFiles(tmp_path_factory.mktemp("weights"))


SMP_ENCODERS = [name for name, spec in ENCODERS.items() if spec.has_imagenet_weights]
# one encoder per family in the default suite (ResNet, DenseNet); the other four full-size ones under -m slow
QUICK = ("resnet50", "densenet121")


def _forward_backward(model, channels: int) -> None:
    logits = model(torch.rand(2, 3, 32, 32))
    assert logits.shape == (2, channels, 32, 32)
    logits.mean().backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None for g in grads) and any(g.abs().sum() > 0 for g in grads)


@pytest.mark.parametrize(
    "encoder", [e if e in QUICK else pytest.param(e, marks=pytest.mark.slow) for e in SMP_ENCODERS]
)
def test_imagenet_weights_load_into_every_encoder(encoder, weight_files):
    """Every encoder of Table I takes its weights file (key for key): the pretrained path runs offline."""
    from safetensors.torch import load_file

    weights_dir = weight_files(encoder)
    model = create_model(encoder, pretrained=True, weights_dir=weights_dir)
    saved = load_file(str(weights_dir / f"{encoder}.imagenet.safetensors"))
    loaded = model.network.encoder.state_dict()
    assert all(torch.equal(loaded[key], value) for key, value in saved.items())


CHANNELS = {"binary": 1, "distance": 2, "hv": 3, "stardist": 2 + 16}  # stardist with 16 rays here


@pytest.mark.parametrize("head", list(CHANNELS))
@pytest.mark.parametrize(
    ("encoder", "widths"), [("unet", (8, 16, 32, 64, 128)), ("unet_bn", (8, 16, 32, 64, 128)), ("resnet50", None)]
)
def test_each_family_and_head_does_forward_and_backward(encoder, widths, head):
    """One representative per family (narrow plain U-Nets, the lightest smp encoder), every head: the full set
    of 14 full-size configurations with every head runs under ``-m slow``."""
    torch.manual_seed(0)
    model = create_model(encoder, head=head, unet_widths=widths, n_rays=16)
    _forward_backward(model, CHANNELS[head])


@pytest.mark.slow
@pytest.mark.parametrize("head", ["hv", "stardist"])
@pytest.mark.parametrize("encoder", list(ENCODERS))
def test_every_encoder_of_table_one_takes_the_field_heads(encoder, head):
    torch.manual_seed(0)
    _forward_backward(create_model(encoder, head=head, n_rays=16), CHANNELS[head])


@pytest.mark.slow
@pytest.mark.parametrize(
    ("encoder", "pretrained"), TABLE_I, ids=[f"{e}-{'imagenet' if p else 'scratch'}" for e, p in TABLE_I]
)
def test_every_configuration_does_forward_and_backward(encoder, pretrained, weight_files):
    torch.manual_seed(0)
    model = create_model(encoder, pretrained=pretrained, weights_dir=weight_files(encoder) if pretrained else None)
    _forward_backward(model, 1)


def test_modified_unet_has_batchnorm_after_every_conv():
    plain, modified = UNet(batch_norm=False), UNet(batch_norm=True)
    convs = [m for m in modified.modules() if isinstance(m, torch.nn.Conv2d) and m.kernel_size == (3, 3)]
    norms = [m for m in modified.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert len(convs) == 18 and len(norms) == 18
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in plain.modules())
    assert plain.down[-1][0].out_channels == 1024 and plain.head.out_channels == 1


def test_unet_state_dict_round_trip_gives_identical_output():
    torch.manual_seed(0)
    model, copy = create_model("unet_bn", head="distance").eval(), create_model("unet_bn", head="distance").eval()
    copy.load_state_dict(model.state_dict())
    image = torch.rand(1, 3, 32, 32)
    assert torch.equal(model(image), copy(image))


def test_unknown_encoder_lists_the_valid_names():
    with pytest.raises(ConfigError, match=r"encoder='resnet5' .*densenet121.*unet_bn"):
        create_model("resnet5")
    with pytest.raises(ConfigError, match=r"model.head='hovernet'.*binary.*distance.*hv.*stardist"):
        create_model("unet", head="hovernet")
    with pytest.raises(ConfigError, match="model.head=stardist needs model.n_rays"):
        create_model("unet", head="stardist")
    with pytest.raises(ConfigError, match=r"model.n_rays=7: expected an even whole number"):
        create_model("unet", head="stardist", n_rays=7)
    with pytest.raises(ConfigError, match="plain U-Nets only"):
        create_model("resnet50", unet_widths=(8, 16))


@pytest.mark.parametrize("encoder", ["unet", "unet_bn"])
def test_pretrained_plain_unet_is_a_configuration_error(encoder):
    with pytest.raises(ConfigError, match="no ImageNet weights"):
        check_configuration(encoder, True)


def test_unet_tells_which_padded_size_to_use():
    with pytest.raises(ConfigError, match="pad to 48x48"):
        UNet()(torch.rand(1, 3, 40, 40))
