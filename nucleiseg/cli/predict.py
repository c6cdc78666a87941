"""``nucleiseg predict``: images, slides and folders; a CSV list of slides (or --launcher/--shards) is a cohort."""

from __future__ import annotations

import argparse
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

PREDICT_FLAGS = {  # predict's options, as the overrides they stand for (so they count as given by the user)
    "tta": "predict.tta",
    "tile_size": "predict.tile_size",
    "mpp": "predict.microns_per_pixel",
    "scale": "predict.scale",
    "device": "predict.device",
}


def _predict_cohort(args: argparse.Namespace, inputs: list[str], overrides: list[str]) -> int:
    """Many slides: sharded over processes or a SLURM array, a cohort table, one MLflow run
    (:mod:`nucleiseg.predict.cohort`). Exit 0 when every listed slide is finished (or was before), 1 when one is
    not, 143 / 130 when stopped by SIGTERM / Ctrl-C (its jobs stopped too)."""
    if args.roi:
        raise UsageError("--roi is for one slide; give a cohort's regions in the CSV list's 'roi' column")
    from nucleiseg.config.settings import build
    from nucleiseg.predict.cohort import CohortJob, run_cohort
    from nucleiseg.predict.cohort_jobs import CohortStopped
    from nucleiseg.tracking.mlflow_store import logged_to, tracking_uri

    cfg = compose(overrides)
    given = {"launcher": args.launcher, "shards": args.shards}  # the options replace the config's values
    settings = build(cfg.cohort, **{key: value for key, value in given.items() if value})
    job = CohortJob(
        Path(args.out).expanduser(), args.model, args.run_id, overrides, args.overwrite, args.labels, cfg.logger
    )
    uri = None if args.no_mlflow else tracking_uri(cfg.logger)
    try:
        table = run_cohort(job, inputs, settings, uri)
    except CohortStopped as stop:
        print(
            f"cohort {job.out}: {stop}, its jobs stopped; table: {job.out / 'cohort.csv'}; re-run the same command "
            "to go on (finished slides are skipped, unfinished ones resume)",
            file=sys.stderr,
        )
        return stop.code
    if uri:
        print(logged_to(uri, "cohorts"), file=sys.stderr)
    counts = table.status.value_counts().to_dict()
    print(
        f"cohort {job.out}: {len(table)} slides, "
        + ", ".join(f"{n} {status}" for status, n in sorted(counts.items()))
        + f"; table: {job.out / 'cohort.csv'}"
    )
    for row in table[~table.status.isin(["finished", "skipped"])].itertuples():
        print(f"{row.status} {row.path}: {row.reason}")
    return 0 if set(counts) <= {"finished", "skipped"} else 1


def _predict(args: argparse.Namespace) -> int:
    overrides, inputs = split_overrides(args.words)
    if not inputs:
        raise UsageError("predict needs at least one image, slide or folder")
    from nucleiseg.predict.run import predict, print_summary

    flags = []
    for option, key in PREDICT_FLAGS.items():
        value = getattr(args, option)
        if value is not None and value is not False:  # 0 is a value (refused below), not "not given"
            flags.append(f"{key}={str(value).lower() if isinstance(value, bool) else value}")
    if args.launcher or args.shards or any(word.lower().endswith(".csv") for word in inputs):
        return _predict_cohort(args, inputs, [*overrides, *flags])
    from nucleiseg.predict.run import expand_inputs

    files, missing = expand_inputs(inputs)
    if missing and not files:  # nothing that exists: said before a model is loaded or a folder is made
        for path, why in missing:
            print(f"failed {path}: {why}", file=sys.stderr)
        return 1
    session, cfg = open_session(*resolve_model(args.model, args.run_id, overrides), overrides, flags)
    from nucleiseg.config.settings import build

    slide_settings = build(cfg.slide, **({"labels": True} if args.labels else {}))
    progress = "none" if args.quiet else "auto"
    summary = predict(
        inputs,
        args.out,
        session,
        overwrite=args.overwrite,
        progress=progress,
        slide_settings=slide_settings,
        roi=args.roi,
    )
    print_summary(summary, Path(args.out))
    return 0 if summary.ok else 1


def register(commands: argparse._SubParsersAction) -> None:
    """``predict``."""
    predict = add_command(
        commands,
        "predict",
        "segment your own images and slides: masks, nuclei, measurements, GeoJSON for QuPath",
        "  nucleiseg predict slide.svs --out nuclei\n"
        "  nucleiseg predict tiles/ --out nuclei --mpp 0.25 --model CKPT\n"
        "  nucleiseg predict slides/ --out nuclei --labels slide.min_tissue=0.05\n"
        "  nucleiseg predict cohort.csv --out cohort --launcher slurm cohort.slurm.partition=gpu\n"
        "    (cohort.csv: a 'path' column and optionally 'roi'; relative paths are relative to the CSV's folder)",
    )
    predict.add_argument(
        "words", nargs="+", metavar="INPUT [KEY=VALUE]", help="images, slides or folders, and " + WORDS_HELP
    )
    predict.add_argument("--out", required=True, help="output folder (one sub-folder per input)")
    add_model_option(predict)
    predict.add_argument("--overwrite", action="store_true", help="replace outputs of another input, model or settings")
    predict.add_argument("--tta", action="store_true", help="flip test-time augmentation (4x slower)")
    predict.add_argument("--tile-size", type=int, default=None, help="sliding-window tile (multiple of 32)")
    predict.add_argument(
        "--mpp", type=float, default=None, help="micrometres per pixel of the inputs (slides: replaces the file's)"
    )
    predict.add_argument("--scale", type=float, default=None, help="resample inputs by this factor for the model")
    predict.add_argument("--device", choices=["cpu", "gpu", "auto"], default=None, help="where the model runs")
    predict.add_argument("--labels", action="store_true", help="slides: also write labels.tif (tiled, pyramidal)")
    predict.add_argument(
        "--launcher",
        choices=["local", "local_parallel", "slurm", "slurm_local"],
        default=None,
        help="a cohort: run its slides in jobs (cohort.launcher; a CSV list of slides is a cohort too)",
    )
    predict.add_argument("--shards", type=int, default=None, help="a cohort: number of jobs (cohort.shards)")
    predict.add_argument("--no-mlflow", action="store_true", help="a cohort: no MLflow run for it")
    predict.add_argument(
        "--roi",
        default=None,
        metavar="FILE",
        help="one slide: predict only in these regions (QuPath GeoJSON annotations in slide pixels, or a mask image "
        "of the slide at any scale); slide.roi_mode=intersect|replace with the tissue found",
    )
    predict.add_argument("--quiet", action="store_true", help="no progress output")
    predict.set_defaults(handler=_predict)
