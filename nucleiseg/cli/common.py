"""What the subcommands share: the override convention, the parser classes, the model option and the helpers that
every handler starts with. Light on purpose: the heavy modules are imported inside the functions that need them."""

from __future__ import annotations

import argparse
import re
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from omegaconf import DictConfig

    from nucleiseg.inference.session import InferenceSession

OVERRIDE = re.compile(r"^[+~]?[A-Za-z_][\w.\-/@]*=")


class UsageError(Exception):
    """Words on the command line that the subcommand does not take (exit 2, like argparse)."""


class IntermixedParser(argparse.ArgumentParser):
    """A (sub)command parser that accepts its positional words anywhere among its options (argparse's
    intermixed parsing, which argparse cannot apply to a parser with subcommands: those parse as usual)."""

    _intermixing = False

    def parse_known_args(
        self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None
    ) -> tuple[argparse.Namespace, list[str]]:
        if self._subparsers is not None or self._intermixing:
            return super().parse_known_args(args, namespace)
        self._intermixing = True
        try:
            return self.parse_known_intermixed_args(args, namespace)
        finally:
            self._intermixing = False


def split_overrides(words: list[str]) -> tuple[list[str], list[str]]:
    """``(overrides, other words)``: ``KEY=VALUE`` words are overrides unless they name an existing file. Their
    values are checked now, before anything heavy is imported."""
    from nucleiseg.config.checks import check_overrides

    overrides, others = [], []
    for word in words:
        (overrides if OVERRIDE.match(word) and not Path(word).exists() else others).append(word)
    problem = check_overrides(overrides)
    if problem:
        raise UsageError(problem)
    return overrides, others


def overrides_only(args: argparse.Namespace, command: str, allowed: str = "KEY=VALUE overrides only") -> list[str]:
    """The prologue of a handler whose words are all overrides: those overrides, or a UsageError naming the words
    that are not (``"{command} takes {allowed}, not [...]"``)."""
    overrides, extra = split_overrides(args.words)
    if extra:
        raise UsageError(f"{command} takes {allowed}, not {extra}")
    return overrides


def compose(overrides: list[str], config_name: str = "config") -> DictConfig:
    """The configuration with the user's overrides (nucleiseg.config.compose.compose, imported only now); ``inference``:
    the one where the values a checkpoint carries are null unless given (``conf/inference.yaml``)."""
    from nucleiseg.config.compose import compose as compose_config

    return compose_config(overrides, config_name)


def open_session(
    model: Path, label: str, overrides: list[str], flags: Sequence[str] = ()
) -> tuple[InferenceSession, DictConfig]:
    """An inference session of the model file ``model`` (named ``label``) with the user's overrides (and option
    flags, as overrides)."""
    from nucleiseg.config.settings import inference_settings
    from nucleiseg.inference.session import InferenceSession

    cfg = compose([*overrides, *flags], "inference")
    return InferenceSession.from_checkpoint(model, inference_settings(cfg), label=label), cfg


MODEL_HELP = (
    "the model: a name (see `nucleiseg models`), a .ckpt or .safetensors file, a URL (add #sha256=HEX to check it) "
    "or models:/NAME/VERSION from MLflow's model registry; default: the default model"
)
WORDS_HELP = "KEY=VALUE configuration overrides (as for train.py), anywhere on the line"


def add_model_option(parser: argparse.ArgumentParser, run_id: bool = True) -> None:
    """``--model`` (also spelt ``--checkpoint``, its older name) and, where it makes sense, ``--run-id``."""
    parser.add_argument("--model", "--checkpoint", dest="model", default=None, metavar="NAME|PATH|URL", help=MODEL_HELP)
    if run_id:
        parser.add_argument("--run-id", default=None, help="use the checkpoint of this finished MLflow training run")


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Defaults shown beside each option, and examples kept as written."""


def add_command(
    commands: argparse._SubParsersAction, name: str, help: str, examples: str, **options: Any
) -> argparse.ArgumentParser:
    """A subcommand whose description is its one-line help and whose epilog is its examples."""
    return commands.add_parser(
        name, help=help, description=help, epilog="examples:\n" + examples, formatter_class=HelpFormatter, **options
    )
