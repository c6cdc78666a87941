"""``nucleiseg benchmark`` and ``nucleiseg benchmark-slide``: training and inference throughput, and predict's
speed and memory on whole slides."""

from __future__ import annotations

import argparse

from nucleiseg.cli.common import WORDS_HELP, UsageError, add_command, add_model_option, compose, overrides_only

# the smallest value of each whole-number option of `benchmark` (a 0 or a negative number is refused, never
# replaced by a default), and what it means
LEAST = {
    "image_size": (64, "a multiple of 32, at least 64"),
    "infer_batch": (1, "a whole number >= 1"),
    "iterations": (1, "a whole number >= 1"),
    "train_steps": (1, "a whole number >= 1"),
    "loop_epochs": (0, "a whole number >= 0 (0: no loop)"),
    "warmup": (0, "a whole number >= 0"),
    "sweep_epochs": (1, "a whole number >= 1"),
    "slide_size": (0, "a whole number of pixels >= 0 (0: no slide)"),
}


def _check_numbers(args: argparse.Namespace) -> None:
    """Refuse a number out of range before anything is measured (``--iterations 0`` would divide by zero at the
    end, ``--image-size 0`` silently meant the default)."""
    for name, (least, expected) in LEAST.items():
        value = getattr(args, name)
        wrong = value is not None and (value < least or (name == "image_size" and value % 32))
        if wrong:
            raise UsageError(f"--{name.replace('_', '-')} {value}: expected {expected}")


def _check_slide_numbers(args: argparse.Namespace) -> None:
    if not 0 < args.tissue <= 1:
        raise UsageError(f"--tissue {args.tissue}: expected the share of the slide that is tissue, in (0, 1]")
    if args.slide:
        return
    words = args.sizes.split(",")
    if not all(word.strip().isdigit() and int(word) > 0 for word in words):
        raise UsageError(f"--sizes {args.sizes}: expected sides in pixels >= 1, comma-separated (e.g. 10000,20000)")


def _benchmark(args: argparse.Namespace) -> int:
    _check_numbers(args)
    from nucleiseg.benchmarks.configurations import LOOP_DATA
    from nucleiseg.benchmarks.output import run_benchmark

    return run_benchmark(args, compose([*LOOP_DATA, *overrides_only(args, "benchmark")]))


def _benchmark_slide(args: argparse.Namespace) -> int:
    _check_slide_numbers(args)
    from nucleiseg.benchmarks.slide import run_slide_benchmark

    return run_slide_benchmark(args)


def register(commands: argparse._SubParsersAction) -> None:
    """``benchmark``."""
    bench = add_command(
        commands,
        "benchmark",
        "training loop, training step and inference throughput of the configurations",
        "  nucleiseg benchmark --configs unet_bn,densenet121 --image-size 256\n"
        "  nucleiseg benchmark --suite gpu --out reports/gpu          (one GPU, about 8 minutes)\n"
        "  nucleiseg benchmark --suite gpu --device cpu --image-size 64 --configs unet_bn --slide-size 3000",
    )
    bench.add_argument("words", nargs="*", metavar="KEY=VALUE", help=WORDS_HELP)
    bench.add_argument("--configs", default=None, help="comma-separated encoders (default: all of Table I)")
    bench.add_argument("--image-size", type=int, default=None, help="default: data.protocol.image_size")
    bench.add_argument("--device", choices=["auto", "cpu", "gpu"], default="auto", help="where to measure")
    bench.add_argument("--infer-batch", type=int, default=None, help="fast-path inference batch (GPU 16, CPU 4)")
    bench.add_argument("--iterations", type=int, default=10, help="timed inference passes")
    bench.add_argument("--train-steps", type=int, default=10, help="timed optimizer steps")
    bench.add_argument("--loop-epochs", type=int, default=2, help="epochs of the real training loop (0: skip it)")
    bench.add_argument("--warmup", type=int, default=2, help="untimed passes before measuring")
    bench.add_argument("--compile", action="store_true", help="torch.compile the fast paths")
    bench.add_argument("--out", default=None, help="folder for benchmark.md and benchmark.csv")
    bench.add_argument("--overwrite", action="store_true", help="replace benchmark files in --out")
    bench.add_argument("--no-mlflow", action="store_true", help="do not log the measurements to MLflow")
    bench.add_argument(
        "--suite",
        choices=["configs", "gpu"],
        default="configs",
        help="configs: the table per configuration; gpu: one table of inference (fast, compiled), loop vs step, a "
        "packed sweep of the architectures with the projected 140-run time, and a whole slide",
    )
    bench.add_argument("--sweep-epochs", type=int, default=2, help="--suite gpu: epochs of each packed-sweep run")
    bench.add_argument("--slide-size", type=int, default=40000, help="--suite gpu: side of the slide (0: no slide)")
    bench.add_argument("--model", default=None, help="--suite gpu: the slide's model (default: the default model)")
    bench.set_defaults(handler=_benchmark)


def register_slide(commands: argparse._SubParsersAction) -> None:
    """``benchmark-slide`` (registered apart from ``benchmark``: ``nucleiseg --help`` lists it after ``relog``)."""
    slide_bench = add_command(
        commands,
        "benchmark-slide",
        "whole-slide throughput and peak memory of predict",
        "  nucleiseg benchmark-slide --sizes 10000,20000\n  nucleiseg benchmark-slide --slide my.svs --model CKPT",
    )
    slide_bench.add_argument(
        "words", nargs="*", metavar="KEY=VALUE", help="overrides for predict (predict.scale=0.5 ...)"
    )
    add_model_option(slide_bench, run_id=False)
    slide_bench.add_argument("--sizes", default="10000,20000", help="synthetic slide sides in pixels (comma-separated)")
    slide_bench.add_argument("--tissue", type=float, default=0.05, help="share of a synthetic slide that is tissue")
    slide_bench.add_argument("--slide", action="append", help="benchmark this slide instead (repeatable)")
    slide_bench.add_argument("--out", default=None, help="folder for benchmark_slide.csv")
    slide_bench.add_argument(
        "--baseline",
        default=None,
        metavar="'KEY=VALUE ...'",
        help="also run each slide with these settings first and print speed ratios against them "
        "(e.g. 'slide.workers=1 predict.backend=torch')",
    )
    slide_bench.set_defaults(handler=_benchmark_slide)
