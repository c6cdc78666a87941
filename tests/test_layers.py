"""The package's folders are its layers: the import contracts hold (import-linter, as CI runs it), no private name
crosses a module boundary, the root holds only ``__init__.py`` and folders, and old module names keep working."""

import ast
import subprocess
import warnings

import pytest

from tests.conftest import REPO, tool

PACKAGE = REPO / "nucleiseg"


@pytest.mark.skipif(tool("lint-imports") is None, reason="import-linter is not installed (it comes with the dev extra)")
def test_the_import_contracts_hold():
    result = subprocess.run([tool("lint-imports")], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert result.stdout.count("KEPT") >= 2 and "BROKEN" not in result.stdout


def _private_imports() -> list[str]:
    found = []
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("nucleiseg"):
                for alias in node.names:
                    if alias.name.startswith("_") and not alias.name.startswith("__"):
                        found.append(f"{path.relative_to(REPO)}: from {node.module} import {alias.name}")
    return found


def test_no_private_name_is_imported_from_another_module():
    assert _private_imports() == []


def test_the_check_for_private_names_finds_one(tmp_path, monkeypatch):
    package = tmp_path / "nucleiseg"
    package.mkdir()
    (package / "a.py").write_text("from nucleiseg.b import _helper\n")
    monkeypatch.setattr("tests.test_layers.PACKAGE", package)
    monkeypatch.setattr("tests.test_layers.REPO", tmp_path)
    assert _private_imports() == ["nucleiseg/a.py: from nucleiseg.b import _helper"]


def test_the_package_root_holds_only_its_init_and_folders():
    loose = sorted(p.name for p in PACKAGE.iterdir() if p.is_file() and p.name != "__init__.py")
    assert loose == []


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ("nucleiseg.losses.SegmentationLoss", "nucleiseg.models.losses.SegmentationLoss"),
        ("nucleiseg.cohort.CohortSettings", "nucleiseg.predict.cohort.CohortSettings"),
        ("nucleiseg.slides.plan.SlideSettings", "nucleiseg.predict.slides.plan.SlideSettings"),
        ("nucleiseg.postprocess.tuning.TuneSettings", "nucleiseg.evaluation.tuning.TuneSettings"),
        ("nucleiseg.hydra_callbacks.SweepSummary", "nucleiseg.training.sweep_callbacks.SweepSummary"),
    ],
)
def test_an_old_target_still_builds_the_same_class_with_a_warning(old, new):
    import importlib
    import sys

    from hydra.utils import get_class

    import nucleiseg.util.moved_modules as moved

    # the outermost old name on the way (nucleiseg.slides for nucleiseg.slides.plan): an earlier test may have
    # imported it already (it warns once per process), so it is forgotten, with the alias its parent holds
    parts = old.rpartition(".")[0].split(".")
    top = next(".".join(parts[:k]) for k in range(2, len(parts) + 1) if ".".join(parts[:k]) in moved.MOVED)
    for name in [m for m in list(sys.modules) if m == top or m.startswith(top + ".")]:
        sys.modules.pop(name)
    parent, _, attribute = top.rpartition(".")
    if getattr(importlib.import_module(parent), attribute, None) is not None:
        delattr(importlib.import_module(parent), attribute)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert get_class(old) is get_class(new)
    assert any(issubclass(w.category, FutureWarning) and moved.new_name(top) in str(w.message) for w in caught)
    assert moved.new_target(old) == new and moved.new_target(new) == new


def test_a_run_that_names_an_old_target_keeps_its_identity():
    from nucleiseg.config.compose import compose
    from nucleiseg.training.identity import configuration_hash, identity_hash

    shipped = compose([])
    old = compose(["loss._target_=nucleiseg.losses.SegmentationLoss"])
    assert identity_hash(old) == identity_hash(shipped)
    assert configuration_hash(old) == configuration_hash(shipped)


def test_files_found_next_to_the_code_are_there_after_the_move(monkeypatch):
    """Paths built from a module's own location (the package's conf/, the clone's train.py, the shipped model):
    the suite sets NUCLEISEG_CONF, so without this test a wrong parent would only fail for users."""
    from nucleiseg.benchmarks.suite import TRAIN_SCRIPT
    from nucleiseg.config.compose import config_dir
    from nucleiseg.models.zoo import PRETRAINED
    from nucleiseg.tracking.paper import PUBLISHED

    monkeypatch.delenv("NUCLEISEG_CONF", raising=False)
    assert (config_dir() / "config.yaml").is_file() and config_dir() == PACKAGE / "conf"
    assert TRAIN_SCRIPT == REPO / "train.py" and TRAIN_SCRIPT.is_file()
    assert (PRETRAINED / "registry.json").is_file() and PUBLISHED.is_file()
