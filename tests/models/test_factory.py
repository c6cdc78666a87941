import pytest
import torch

from nucleiseg.errors import ConfigError
from nucleiseg.models.factory import ENCODERS, check_configuration, create_model
from nucleiseg.models.unet import UNet

TABLE_I = [(name, False) for name in ENCODERS] + [
    (name, True) for name, s in ENCODERS.items() if s.has_imagenet_weights
]


def test_table_one_has_fourteen_configurations():
    assert len(TABLE_I) == 14


@pytest.fixture(scope="module")
def weights_dir(tmp_path_factory):
    """ImageNet-format weight files made here (seeded random values): the pretrained path runs offline."""
    from safetensors.torch import save_file

    folder = tmp_path_factory.mktemp("weights")
    for name, spec in ENCODERS.items():
        if spec.has_imagenet_weights:
            torch.manual_seed(7)
            state = create_model(name).network.encoder.state_dict()
            save_file({k: v.contiguous() for k, v in state.items()}, str(folder / f"{name}.imagenet.safetensors"))
    return folder


@pytest.mark.parametrize(
    ("encoder", "pretrained"), TABLE_I, ids=[f"{e}-{'imagenet' if p else 'scratch'}" for e, p in TABLE_I]
)
def test_every_configuration_does_forward_and_backward(encoder, pretrained, weights_dir):
    torch.manual_seed(0)
    model = create_model(encoder, pretrained=pretrained, weights_dir=weights_dir if pretrained else None)
    if pretrained:  # the weights came from the file, not from the random initialisation
        from safetensors.torch import load_file

        saved = load_file(str(weights_dir / f"{encoder}.imagenet.safetensors"))
        first = next(iter(saved))
        assert torch.equal(model.network.encoder.state_dict()[first], saved[first])
    image = torch.rand(2, 3, 32, 32)
    logits = model(image)
    assert logits.shape == (2, 1, 32, 32)
    logits.mean().backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None for g in grads) and any(g.abs().sum() > 0 for g in grads)


def test_modified_unet_has_batchnorm_after_every_conv():
    plain, modified = UNet(batch_norm=False), UNet(batch_norm=True)
    convs = [m for m in modified.modules() if isinstance(m, torch.nn.Conv2d) and m.kernel_size == (3, 3)]
    norms = [m for m in modified.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert len(convs) == 18 and len(norms) == 18
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in plain.modules())
    assert plain.down[-1][0].out_channels == 1024 and plain.head.out_channels == 1


def test_unet_state_dict_round_trip_gives_identical_output():
    torch.manual_seed(0)
    model, copy = create_model("unet_bn").eval(), create_model("unet_bn").eval()
    copy.load_state_dict(model.state_dict())
    image = torch.rand(1, 3, 32, 32)
    assert torch.equal(model(image), copy(image))


def test_unknown_encoder_lists_the_valid_names():
    with pytest.raises(ConfigError, match=r"encoder='resnet5' .*densenet121.*unet_bn"):
        create_model("resnet5")


@pytest.mark.parametrize("encoder", ["unet", "unet_bn"])
def test_pretrained_plain_unet_is_a_configuration_error(encoder):
    with pytest.raises(ConfigError, match="no ImageNet weights"):
        check_configuration(encoder, True)


def test_unet_tells_which_padded_size_to_use():
    with pytest.raises(ConfigError, match="pad to 48x48"):
        UNet()(torch.rand(1, 3, 40, 40))
