"""Modules that moved in the layout of 2026-12 (the package root became folders), importable under their old
names for one release with a warning: an experiment file or a script that names ``nucleiseg.losses.
SegmentationLoss`` (a ``_target_``) keeps working and is told the new name.

An import hook rather than stub files: the package root holds only ``__init__.py`` and folders, and a stub per
old module would bring the loose modules back. The old name is an alias of the new module (the same object), so
a class has one identity whichever name imported it.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys
import warnings
from types import ModuleType

# old module -> new module; a package's old name covers its submodules (nucleiseg.slides.plan)
MOVED = {
    "nucleiseg.errors": "nucleiseg.util.errors",
    "nucleiseg.locking": "nucleiseg.util.locking",
    "nucleiseg.writing": "nucleiseg.util.writing",
    "nucleiseg.console": "nucleiseg.util.console",
    "nucleiseg.progress": "nucleiseg.util.progress",
    "nucleiseg.network": "nucleiseg.util.network",
    "nucleiseg.devices": "nucleiseg.util.devices",
    "nucleiseg.parallel": "nucleiseg.util.parallel",
    "nucleiseg.config_checks": "nucleiseg.config.checks",
    "nucleiseg.settings": "nucleiseg.config.settings",
    "nucleiseg.plain": "nucleiseg.config.plain",
    "nucleiseg.losses": "nucleiseg.models.losses",
    "nucleiseg.model_card": "nucleiseg.models.card",
    "nucleiseg.train": "nucleiseg.training.run",
    "nucleiseg.assemble": "nucleiseg.training.assemble",
    "nucleiseg.run_finish": "nucleiseg.training.finish",
    "nucleiseg.run_identity": "nucleiseg.training.identity",
    "nucleiseg.hydra_callbacks": "nucleiseg.training.sweep_callbacks",
    "nucleiseg.epoch_lines": "nucleiseg.training.epoch_lines",
    "nucleiseg.study_cost": "nucleiseg.training.study_cost",
    "nucleiseg.protocol": "nucleiseg.training.protocol",
    "nucleiseg.evaluate": "nucleiseg.evaluation.evaluate",
    "nucleiseg.retune": "nucleiseg.evaluation.retune",
    "nucleiseg.postprocess.tuning": "nucleiseg.evaluation.tuning",
    "nucleiseg.benchmark": "nucleiseg.benchmarks.configurations",
    "nucleiseg.benchmark_output": "nucleiseg.benchmarks.output",
    "nucleiseg.benchmark_suite": "nucleiseg.benchmarks.suite",
    "nucleiseg.slides.benchmark": "nucleiseg.benchmarks.slide",
    "nucleiseg.slides.synthetic": "nucleiseg.data.synthetic_slide",
    "nucleiseg.segmentation": "nucleiseg.predict.api",
    "nucleiseg.cohort": "nucleiseg.predict.cohort",
    "nucleiseg.cohort_table": "nucleiseg.predict.cohort_table",
    "nucleiseg.output_folder": "nucleiseg.predict.output_folder",
    "nucleiseg.input_identity": "nucleiseg.predict.input_identity",
    "nucleiseg.model_sources": "nucleiseg.predict.model_sources",
    "nucleiseg.slides": "nucleiseg.predict.slides",
}
# nucleiseg.config and nucleiseg.predict were modules and are packages now: their old contents live in
# nucleiseg.config.compose and nucleiseg.predict.run (no class of theirs was a _target_)


def new_name(old: str) -> str | None:
    """The module ``old`` is now, or None if it did not move: ``new_name("nucleiseg.slides.plan")`` is
    ``nucleiseg.predict.slides.plan``."""
    if old in MOVED:
        return MOVED[old]
    package, _, rest = old.rpartition(".")
    while package:
        if package in MOVED:
            return f"{MOVED[package]}.{old[len(package) + 1 :]}"
        package, _, _ = package.rpartition(".")
    return None


def new_target(target: str) -> str:
    """A dotted ``_target_`` with its module's new name (``nucleiseg.losses.SegmentationLoss`` ->
    ``nucleiseg.models.losses.SegmentationLoss``); unchanged when it did not move."""
    module, _, name = target.rpartition(".")
    moved = new_name(module) if module else None
    return f"{moved}.{name}" if moved else target


class _Alias(importlib.abc.Loader):
    def __init__(self, old: str, new: str) -> None:
        self.old, self.new = old, new

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType:
        warnings.warn(
            f"{self.old} moved to {self.new}; the old name works until the next release (update your imports and "
            "any _target_ that names it)",
            FutureWarning,
            stacklevel=2,
        )
        module = importlib.import_module(self.new)
        self.spec = module.__spec__
        return module

    def exec_module(self, module: ModuleType) -> None:
        module.__spec__ = self.spec  # the import system set the alias's spec on the shared module: undo it


class MovedModuleFinder(importlib.abc.MetaPathFinder):
    """Finds ``nucleiseg.<old name>`` and answers with the module it became."""

    def find_spec(self, fullname: str, path: object = None, target: object = None) -> importlib.machinery.ModuleSpec:
        new = new_name(fullname) if fullname.startswith("nucleiseg.") else None
        if new is None:
            return None
        return importlib.machinery.ModuleSpec(fullname, _Alias(fullname, new))


def install() -> None:
    """Put the finder first on ``sys.meta_path`` (once)."""
    if not any(isinstance(finder, MovedModuleFinder) for finder in sys.meta_path):
        sys.meta_path.insert(0, MovedModuleFinder())
