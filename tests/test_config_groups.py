"""The config groups of conf/: every object from its ``_target_``, every default value written in YAML only, and
null at inference meaning "the checkpoint's"."""

import dataclasses
import importlib
import inspect

import pytest
from omegaconf import OmegaConf

from nucleiseg.config.compose import compose
from nucleiseg.config.settings import build, carried_settings, defaults, fallbacks, inference_settings
from nucleiseg.util.errors import ConfigError


def _target_nodes(node, path=""):
    """(dotted path, node) of every config node with a ``_target_`` of ours, nested ones included."""
    if OmegaConf.is_dict(node):
        target = node.get("_target_")
        if isinstance(target, str) and target.startswith("nucleiseg."):
            yield path, node
        for key in node:
            if key != "hydra":
                yield from _target_nodes(node._get_node(key), f"{path}.{key}" if path else str(key))


def _callable(target):
    module, _, name = target.rpartition(".")
    return getattr(importlib.import_module(module), name)


def _defaults_in_code(target, keys):
    """The keys of a config node that the code of its ``_target_`` gives a default too."""
    built = _callable(target)
    if dataclasses.is_dataclass(built):
        return [
            f.name
            for f in dataclasses.fields(built)
            if f.name in keys and (f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING)
        ]
    parameters = inspect.signature(built).parameters
    return [k for k in keys if k in parameters and parameters[k].default is not inspect.Parameter.empty]


def test_every_group_of_ours_has_a_target_and_no_default_written_twice():
    cfg = compose([])
    found = dict(_target_nodes(cfg))
    expected = {"model", "loss", "postprocess", "predict", "slide", "cohort", "speed", "tune", "data.loader"}
    expected |= {"data.online_augment", "logger"}
    assert expected <= set(found), sorted(found)
    for path, node in found.items():
        keys = [k for k in node if not str(k).startswith("_")]
        assert not _defaults_in_code(node._target_, keys), f"{path}: defaults also written in {node._target_}"


def test_the_checker_finds_a_default_written_twice():
    """The test above can fail: a dataclass with a default for one of its node's keys is reported."""

    @dataclasses.dataclass
    class Twice:
        window: int = 1024

    import sys

    sys.modules[__name__].Twice = Twice
    assert _defaults_in_code(f"{__name__}.Twice", ["window"]) == ["window"]


@pytest.mark.parametrize("group", ["postprocess", "predict", "slide", "cohort", "speed", "tune"])
def test_each_settings_group_builds_with_the_yaml_values(group):
    built = defaults(group)
    values = OmegaConf.to_container(compose([])[group], resolve=True)
    for key, value in values.items():
        if not key.startswith("_"):
            assert getattr(built, key) == value, f"{group}.{key}"


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("slide.workers=0", r"slide\.workers=0"),
        ("predict.tile_size=100", r"predict\.tile_size=100"),
        ("speed.iterations=0", r"speed\.iterations=0"),
        ("tune.objective=dice", r"tune\.objective='dice'"),
        ("+tune.grid.watershed.min_dist=[1]", r"'min_dist' cannot be tuned"),
        ("cohort.launcher=pbs", r"cohort\.launcher='pbs'"),
        ("postprocess.min_area=-1", r"postprocess\.min_area=-1"),
    ],
)
def test_a_bad_value_is_one_line_naming_the_key(override, message):
    group = override.lstrip("+").split(".")[0]
    with pytest.raises(ConfigError, match=message):
        build(compose([override])[group], **fallbacks(group))


def test_at_inference_null_means_the_checkpoints_and_a_given_value_replaces_it():
    untouched = inference_settings(compose([], "inference"))
    assert untouched.threshold is None and untouched.postprocess == {}
    given = inference_settings(compose(["threshold=0.6", "postprocess.min_area=30"], "inference"))
    assert given.threshold == 0.6 and given.postprocess == {"min_area": 30}
    # training's own test pass runs the model it trained: never the config's values again (they may be tuned)
    training = compose(["threshold=0.6"])
    assert inference_settings(training).threshold == 0.6
    carried = carried_settings(training)
    assert carried.threshold is None and carried.postprocess == {}


def test_training_refuses_a_null_threshold_before_any_work():
    from nucleiseg.training.assemble import validate

    with pytest.raises(ConfigError, match="threshold=null"):
        validate(compose(["encoder=unet_bn", "pretrained=false", "threshold=null"]))


def test_callbacks_come_from_the_group_and_a_user_can_add_or_remove_one(tmp_path):
    from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint

    from nucleiseg.training.assemble import training_callbacks

    cfg = compose(["progress_bar=none", "+callbacks.rate={_target_:lightning.pytorch.callbacks.LearningRateMonitor}"])
    made = training_callbacks(cfg, tmp_path, has_val=True)
    checkpoints = [c for c in made if isinstance(c, ModelCheckpoint)]
    assert [c.filename for c in checkpoints] == ["last"] and any(isinstance(c, LearningRateMonitor) for c in made)
    assert checkpoints[0].dirpath == str(tmp_path / "checkpoints") and checkpoints[0]._every_n_epochs == 1
    best = training_callbacks(compose(["progress_bar=none", "test_checkpoint=best"]), tmp_path, has_val=False)
    assert [(c.filename, c.monitor) for c in best] == [("last", None), ("best", "loss/train")]
    assert training_callbacks(compose(["progress_bar=none", "callbacks.last_checkpoint=null"]), tmp_path, True) == []


# identity and configuration hashes (first 16 hex digits) computed by commit d8fe718, before the config groups:
# a run trained then is the same run now (a sweep launched again skips or resumes it; the report pools it)
BEFORE_THE_GROUPS = {
    (): ("944fcbbe628582c5", "e9f89eadd174d425"),
    ("experiment=quickstart",): ("7341b3255f7fa232", "fbcc11d7ca8fbfb4"),
    ("experiment=release_cpu",): ("7261f57e46341145", "04fc6b1448698fcc"),
    ("paper_config=resnet50_imagenet", "seed=3"): ("99246d955b974abe", "3e90d40006853e83"),
    ("encoder=unet_bn", "pretrained=false", "optimizer.lr=0.001", "postprocess.min_area=30"): (
        "9f71371748a5b413",
        "d20a0da1c4a52151",
    ),
    ("encoder=unet", "pretrained=false", "checkpoint_every_n_epochs=2", "test_checkpoint=best"): (
        "28ee21f486170818",
        "603f62fe7f5f7f07",
    ),
    ("experiment=release", "data.online_augment.hed_jitter=0.2", "model.channels_last=true"): (
        "e7949673fb4ed61b",
        "4bdce137dfcb313b",
    ),
}


@pytest.mark.parametrize("overrides", list(BEFORE_THE_GROUPS))
def test_runs_trained_before_the_config_groups_keep_their_identity(overrides):
    from nucleiseg.training.identity import configuration_hash, identity_hash

    cfg = compose(list(overrides))
    assert (identity_hash(cfg)[:16], configuration_hash(cfg)[:16]) == BEFORE_THE_GROUPS[overrides]


def test_a_wiring_the_user_changes_is_part_of_the_identity():
    from nucleiseg.training.identity import configuration_hash, identity_hash

    shipped = compose([])
    for override in (
        "+callbacks.lr={_target_:lightning.pytorch.callbacks.LearningRateMonitor}",
        "model._target_=my_lab.models.OtherModule",
        "loss._target_=my_lab.losses.FocalLoss",
        "predict.channels_last=true",
    ):
        changed = compose([override])
        assert identity_hash(changed) != identity_hash(shipped), override
    assert configuration_hash(compose(["loss._target_=my_lab.losses.FocalLoss"])) != configuration_hash(shipped)


def test_training_refuses_a_best_checkpoint_it_would_not_write_and_a_bad_interval():
    from nucleiseg.training.assemble import validate

    base = ["encoder=unet_bn", "pretrained=false"]
    with pytest.raises(ConfigError, match="test_checkpoint=best needs callbacks.best_checkpoint"):
        validate(compose([*base, "test_checkpoint=best", "callbacks.best_checkpoint=null"]))
    with pytest.raises(ConfigError, match=r"every_n_epochs=0"):
        validate(compose([*base, "callbacks.last_checkpoint.every_n_epochs=0"]))
    with pytest.raises(ConfigError, match="model: the group is missing"):
        validate(compose([*base, "~model"]))


def test_the_last_checkpoint_interval_of_the_group_is_used(tmp_path):
    from nucleiseg.training.assemble import training_callbacks

    made = training_callbacks(
        compose(["progress_bar=none", "callbacks.last_checkpoint.every_n_epochs=3"]), tmp_path, True
    )
    assert made[0]._every_n_epochs == 3


def test_a_swapped_module_or_loss_or_an_added_callback_is_not_the_papers_protocol():
    from nucleiseg.training.protocol import differences_from_paper

    paper = compose([])
    assert differences_from_paper(compose(["checkpoint_every_n_epochs=2"]), paper) == []
    for override in (
        "loss._target_=my_lab.losses.FocalLoss",
        "model._target_=my_lab.models.OtherModule",
        "+callbacks.stop={_target_:lightning.pytorch.callbacks.EarlyStopping,monitor:loss/val}",
    ):
        assert differences_from_paper(compose([override]), paper), override


def test_run_time_values_are_passed_as_they_are_not_interpolated():
    """A run name or tag holding ${...} (from an override of a scheduler, say) reaches the object unchanged."""
    made = build({"_target_": "builtins.dict", "a": 1}, tag="T_max=${trainer.max_epochs}")
    assert made == {"a": 1, "tag": "T_max=${trainer.max_epochs}"}


def test_a_custom_loss_class_trains_without_the_papers_record(tmp_path):
    import torch

    from nucleiseg.training.assemble import module_from_config

    cfg = compose(["encoder=unet_bn", "pretrained=false", "model.unet_widths=[4,8,16,32,64]"])
    cfg.loss = {"_target_": "torch.nn.MSELoss"}
    module = module_from_config(cfg, "cpu")
    assert isinstance(module.criterion, torch.nn.MSELoss) and "smooth" not in module.hparams


def test_how_slides_are_predicted_later_is_not_part_of_a_training_runs_identity():
    from nucleiseg.training.identity import configuration_hash, identity_hash

    shipped = compose([])
    for override in ("slide.min_tissue=0.5", "slide.workers=1", "cohort.launcher=slurm"):
        changed = compose([override])
        assert identity_hash(changed) == identity_hash(shipped), override
        assert configuration_hash(changed) == configuration_hash(shipped), override
