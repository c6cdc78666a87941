"""The ``nucleiseg`` command. Subcommands import their modules only when run, so ``--help`` is instant.

One module per command group (``data``, ``evaluate``, ``report``, ``predict``, ``models``, ``benchmark``,
``relog``), each with its handlers and a ``register`` that adds its subcommands; what they share is in
``nucleiseg.cli.common``.

One convention for configuration overrides on every subcommand that takes them (``data prepare``, ``evaluate``,
``tune-postprocess``, ``predict``): Hydra-style ``KEY=VALUE`` words, as for ``train.py``, anywhere on the line,
before or after the options (``nucleiseg evaluate CKPT --images I --masks M predict.scale=0.5 threshold=0.6``).
A value given this way replaces what the checkpoint carries (threshold, post-processing), and the log says so.
"""

from __future__ import annotations

import argparse
import sys

from nucleiseg.cli import benchmark, data, evaluate, models, predict, relog, report
from nucleiseg.cli.common import HelpFormatter, IntermixedParser, UsageError
from nucleiseg.util.console import setup_logging

__all__ = ["build_parser", "main"]

DESCRIPTION = """Segment cell nuclei in H&E histopathology: individual nuclei you can count, measure and open in
QuPath, from images or whole slides, with the model nucleiseg ships or one you trained; and reproduce the U-Net
encoder comparison of Kasturi, Tran & Shenfield (IEEE CIBCB 2022): data, training (python train.py), evaluation
and the paper's tables."""
EPILOG = """examples:
  nucleiseg predict slide.svs --out nuclei            nuclei of a slide with the default model (GeoJSON for QuPath)
  nucleiseg predict tiles/ --out nuclei --mpp 0.25    a folder of 40x tiles
  nucleiseg models                                    the models nucleiseg knows
  nucleiseg evaluate --model default --monuseg DIR    score a model on the MoNuSeg 2018 test release
  nucleiseg data download tnbc --to data              the paper's data (then python train.py)
  nucleiseg report --study paper --out reports/paper  the paper's Tables II-III from your runs
each command has its own --help."""

# The subcommands in the order `nucleiseg --help` lists them.
REGISTER = (
    data.register,  # data inspect/download/synthetic/prepare
    evaluate.register,  # evaluate, tune-postprocess
    report.register,
    predict.register,
    models.register,  # models, export
    benchmark.register,
    relog.register,
    benchmark.register_slide,
    models.register_onnx,
)


def build_parser() -> argparse.ArgumentParser:
    """The ``nucleiseg`` parser with every subcommand; each one's ``handler`` runs it."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        installed = version("nucleiseg")
    except PackageNotFoundError:  # pragma: no cover - running from a source tree without installing
        installed = "unknown"
    parser = IntermixedParser(prog="nucleiseg", description=DESCRIPTION, epilog=EPILOG, formatter_class=HelpFormatter)
    parser.add_argument("--version", action="version", version=f"nucleiseg {installed}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for register in REGISTER:
        register(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the command line ``argv`` (default: ``sys.argv[1:]``); the exit status: 2 for a usage error or a
    nucleiseg error, 130 when interrupted."""
    parser = build_parser()
    args = parser.parse_args(argv)
    setup_logging()
    from nucleiseg.util.errors import NucleisegError

    try:
        return args.handler(args)
    except UsageError as error:
        print(f"nucleiseg {args.command}: error: {error}", file=sys.stderr)
        return 2
    except (NucleisegError, FileNotFoundError, FileExistsError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
