"""``nucleiseg evaluate`` and ``nucleiseg tune-postprocess``: a model's metrics, and its post-processing tuned."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from nucleiseg.cli.common import (
    WORDS_HELP,
    UsageError,
    add_command,
    add_model_option,
    compose,
    open_session,
    split_overrides,
)
from nucleiseg.predict.model_sources import resolve_model  # light: its heavy imports are inside


def _names_data(overrides: list[str]) -> bool:
    return any(o.lstrip("+~").split("=", 1)[0].split(".")[0] in ("data", "paths") for o in overrides)


def _data_folder(overrides: list[str]) -> Path | None:
    """The prepared dataset named by data overrides (prepared now if needed), or None: the checkpoint's own."""
    if not _names_data(overrides):
        return None
    from nucleiseg.data.prepare import prepare_dataset

    return prepare_dataset(compose(overrides).data, log=lambda line: print(line, file=sys.stderr))


def _evaluate(args: argparse.Namespace) -> int:
    if (args.images is None) != (args.masks is None):
        raise UsageError("--images and --masks go together: a folder of images and one of masks named alike")
    if args.images is not None and args.monuseg is not None:
        raise UsageError("evaluate one set at a time: --images/--masks or --monuseg")
    overrides, extra = split_overrides(args.words)
    from nucleiseg.evaluation.evaluate import evaluate, summary_json
    from nucleiseg.tracking.evaluation import log_evaluation

    if len(extra) > 1 or (extra and args.model):
        raise UsageError(f"evaluate takes one model (--model) and KEY=VALUE overrides; got {extra + [args.model]}")
    given = {"predict.microns_per_pixel": args.mpp, "predict.scale": args.scale}
    flags = [f"{key}={value}" for key, value in given.items() if value is not None]
    session, cfg = open_session(
        *resolve_model(args.model or (extra[0] if extra else None), args.run_id, overrides), overrides, flags
    )
    speed = None
    if args.speed:
        from nucleiseg.config.settings import build, default_value

        trained_at = (session.hparams.get("data") or {}).get("image_size") or default_value("data.protocol.image_size")
        speed = build(cfg.speed, enabled=True).measurement(int(trained_at))
    results = evaluate(
        session,
        split=args.split,
        data_folder=_data_folder(overrides),
        images=args.images,
        masks=args.masks,
        monuseg=args.monuseg,
        iou_threshold=float(cfg.metrics.iou_threshold),
        speed=speed,
    )
    if not args.no_mlflow:
        from nucleiseg.tracking.mlflow_store import artifact_location, logged_to, tracking_uri

        log_evaluation(tracking_uri(cfg.logger), args.study, session, results, artifact_location(cfg.logger))
        print(logged_to(tracking_uri(cfg.logger), args.study), file=sys.stderr)
    if args.json:
        print(json.dumps(summary_json(session, results), indent=1))
        return 0
    from rich.table import Table

    from nucleiseg.util.console import make_console

    console = make_console()
    console.print(f"evaluation of {session.source} on {results['evaluated_on']}")
    table = Table()
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key, value in results.items():
        if isinstance(value, float | int):
            table.add_row(key, f"{value:.4f}" if isinstance(value, float) else str(value))
    console.print(table)
    described = session.describe()
    print(f"threshold {session.threshold}, post-processing {session.postprocess.as_dict()} ({described['tuned_on']})")
    return 0


def _tune_postprocess(args: argparse.Namespace) -> int:
    from nucleiseg.config.settings import build
    from nucleiseg.evaluation.retune import retune
    from nucleiseg.inference.prepared import split_source
    from nucleiseg.inference.session import iterate_split
    from nucleiseg.tracking.mlflow_store import tracking_uri

    overrides, extra = split_overrides(args.words)
    checkpoints = extra + ([args.model] if args.model else [])
    if len(checkpoints) != 1:
        raise UsageError(
            f"tune-postprocess takes one model (--model CKPT) and KEY=VALUE overrides; got {checkpoints or 'none'}"
        )
    if args.split == "test":
        raise UsageError("tuning on the test split would leak it into the model; use --split val (or train)")
    checkpoint = Path(checkpoints[0]).expanduser()
    session, cfg = open_session(checkpoint, str(checkpoint), overrides)
    folder, normalise = split_source(session, _data_folder(overrides))
    summary = retune(
        session,
        checkpoint,
        iterate_split(folder, args.split),
        build(cfg.tune, **({"objective": args.objective} if args.objective else {})),
        float(cfg.metrics.iou_threshold),
        normalise,
        args.split,
        out=Path(args.out).expanduser() if args.out else None,
        tracking_uri=None if args.no_mlflow else tracking_uri(cfg.logger),
    )
    print(json.dumps(summary, indent=1))
    return 0


def register(commands: argparse._SubParsersAction) -> None:
    """``evaluate`` and ``tune-postprocess``."""
    evaluate = add_command(
        commands,
        "evaluate",
        "metrics of a model on its held-out split, a folder of image/mask pairs or the MoNuSeg 2018 test release",
        "  nucleiseg evaluate --model outputs/paper/unet_bn-scratch-seed0/checkpoints/model.ckpt\n"
        "  nucleiseg evaluate --model default --monuseg data/MoNuSegTestData --json\n"
        "  nucleiseg evaluate --model CKPT --images my/images --masks my/masks threshold=0.6",
    )
    evaluate.add_argument(
        "words", nargs="*", metavar="[CKPT] [KEY=VALUE]", help="the model (or --model), " + WORDS_HELP
    )
    add_model_option(evaluate)
    evaluate.add_argument("--split", default="test", help="prepared split to score: test, val or train")
    evaluate.add_argument("--images", default=None, help="folder of images (instead of a prepared split)")
    evaluate.add_argument("--masks", default=None, help="folder of masks named like the images (with --images)")
    evaluate.add_argument("--monuseg", default=None, help="the MoNuSeg 2018 test release (TCGA-*.tif + .xml)")
    evaluate.add_argument(
        "--mpp", type=float, default=None, help="micrometres per pixel of the --images (else 40x is assumed, said)"
    )
    evaluate.add_argument("--scale", type=float, default=None, help="resample the --images by this factor instead")
    evaluate.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    evaluate.add_argument("--speed", action="store_true", help="also time inference (speed.* settings)")
    evaluate.add_argument("--study", default="evaluate", help="MLflow experiment to log the evaluation to")
    evaluate.add_argument("--no-mlflow", action="store_true", help="print only; log nothing to MLflow")
    evaluate.set_defaults(handler=_evaluate)

    tuning = add_command(
        commands,
        "tune-postprocess",
        "tune the separation into nuclei on the validation split; a finished run's test metrics follow",
        "  nucleiseg tune-postprocess --model outputs/paper/unet_bn-scratch-seed0/checkpoints/model.ckpt\n"
        "  nucleiseg tune-postprocess --model CKPT --out retuned.ckpt --objective pq",
    )
    tuning.add_argument("words", nargs="*", metavar="[CKPT] [KEY=VALUE]", help="the model (or --model), " + WORDS_HELP)
    tuning.add_argument("--model", "--checkpoint", dest="model", default=None, help="the checkpoint to tune")
    tuning.add_argument("--objective", choices=["aji", "aji_plus", "pq"], default=None, help="default: tune.objective")
    tuning.add_argument("--split", default="val", help="split to tune on (val; never test)")
    tuning.add_argument("--out", default=None, help="write the re-tuned model to this new file, the original unchanged")
    tuning.add_argument("--no-mlflow", action="store_true", help="do not record the new values in the training run")
    tuning.set_defaults(handler=_tune_postprocess)
