"""The ``nucleiseg`` command. Subcommands import their modules only when run, so ``--help`` is instant.

One convention for configuration overrides on every subcommand that takes them (``data prepare``, ``evaluate``,
``tune-postprocess``, ``predict``): Hydra-style ``KEY=VALUE`` words, as for ``train.py``, anywhere on the line,
before or after the options (``nucleiseg evaluate CKPT --images I --masks M predict.scale=0.5 threshold=0.6``).
A value given this way replaces what the checkpoint carries (threshold, post-processing), and the log says so.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nucleiseg.console import setup_logging
from nucleiseg.model_sources import resolve_model  # light: its heavy imports are inside

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
    from nucleiseg.config_checks import check_overrides

    overrides, others = [], []
    for word in words:
        (overrides if OVERRIDE.match(word) and not Path(word).exists() else others).append(word)
    problem = check_overrides(overrides)
    if problem:
        raise UsageError(problem)
    return overrides, others


def _compose(overrides: list[str]) -> DictConfig:
    from nucleiseg.config import compose

    return compose(overrides)


def _session(
    model: Path, label: str, overrides: list[str], flags: list[str] = ()
) -> tuple[InferenceSession, DictConfig]:
    """An inference session of the model file ``model`` (named ``label``) with the user's overrides (and option
    flags, as overrides)."""
    from nucleiseg.inference.session import InferenceSession, InferenceSettings

    typed = [*overrides, *flags]
    cfg = _compose(typed)
    settings = InferenceSettings.from_config(cfg, explicit=[o.split("=", 1)[0] for o in typed])
    return InferenceSession.from_checkpoint(model, settings, label=label), cfg


MODEL_HELP = (
    "the model: a name (see `nucleiseg models`), a .ckpt or .safetensors file, a URL (add #sha256=HEX to check it) "
    "or models:/NAME/VERSION from MLflow's model registry; default: the default model"
)


def add_model_option(parser: argparse.ArgumentParser, run_id: bool = True) -> None:
    """``--model`` (also spelt ``--checkpoint``, its older name) and, where it makes sense, ``--run-id``."""
    parser.add_argument("--model", "--checkpoint", dest="model", default=None, metavar="NAME|PATH|URL", help=MODEL_HELP)
    if run_id:
        parser.add_argument("--run-id", default=None, help="use the checkpoint of this finished MLflow training run")


def _names_data(overrides: list[str]) -> bool:
    return any(o.lstrip("+~").split("=", 1)[0].split(".")[0] in ("data", "paths") for o in overrides)


def _data_inspect(args: argparse.Namespace) -> int:
    from nucleiseg.data.inspect import inspect_dataset

    summary = inspect_dataset(args.dataset, args.root, args.mask_dir)
    if args.json:
        print(json.dumps(summary, indent=1))
    else:
        print(
            f"{summary['dataset']} at {summary['root']}: {summary['n_images']} images, {summary['n_masks']} masks, "
            f"{summary['n_patients']} patients, sizes {summary['sizes']}, {summary['n_nuclei']} nuclei"
        )
    return 0


def _data_download(args: argparse.Namespace) -> int:
    from nucleiseg.data.download import download

    def progress(done: int, total: int | None) -> None:
        if sys.stderr.isatty():
            print(f"\r{done / 1e6:.1f} MB" + (f" of {total / 1e6:.1f} MB" if total else ""), end="", file=sys.stderr)

    folder = download(args.dataset, args.to, timeout=args.timeout, progress=progress)
    print(f"\n{args.dataset}: verified and unpacked in {folder}")
    return 0


def _data_synthetic(args: argparse.Namespace) -> int:
    from nucleiseg.data.synthetic import write_synthetic_folder

    out = write_synthetic_folder(args.to, args.count, args.size, args.seed, args.overwrite)
    print(f"{args.count} synthetic tiles in {out / 'images'}, their instance labels in {out / 'masks'}")
    return 0


def _data_prepare(args: argparse.Namespace) -> int:
    from nucleiseg.data.prepare import load_manifest, prepare_dataset

    overrides, extra = split_overrides(args.words)
    if extra:
        raise UsageError(f"data prepare takes KEY=VALUE overrides only, not {extra}")
    cfg = _compose(overrides)
    folder = prepare_dataset(cfg.data, overwrite=args.overwrite, log=lambda line: print(line, file=sys.stderr))
    manifest = load_manifest(folder)
    summary = {"folder": str(folder), "counts": manifest["counts"], "content_hash": manifest["content_hash"]}
    print(json.dumps(summary, indent=1))
    return 0


def _data_folder(overrides: list[str]) -> Path | None:
    """The prepared dataset named by data overrides (prepared now if needed), or None: the checkpoint's own."""
    if not _names_data(overrides):
        return None
    from nucleiseg.data.prepare import prepare_dataset

    return prepare_dataset(_compose(overrides).data, log=lambda line: print(line, file=sys.stderr))


def _evaluate(args: argparse.Namespace) -> int:
    if (args.images is None) != (args.masks is None):
        raise UsageError("--images and --masks go together: a folder of images and one of masks named alike")
    if args.images is not None and args.monuseg is not None:
        raise UsageError("evaluate one set at a time: --images/--masks or --monuseg")
    overrides, extra = split_overrides(args.words)
    from nucleiseg.evaluate import evaluate, summary_json
    from nucleiseg.tracking.evaluation import log_evaluation

    if len(extra) > 1 or (extra and args.model):
        raise UsageError(f"evaluate takes one model (--model) and KEY=VALUE overrides; got {extra + [args.model]}")
    session, cfg = _session(
        *resolve_model(args.model or (extra[0] if extra else None), args.run_id, overrides), overrides
    )
    speed = None
    if args.speed:
        image_size = cfg.speed.image_size or (session.hparams.get("data") or {}).get("image_size", 512)
        speed = {
            "image_size": int(image_size),
            "batch_size": int(cfg.speed.batch_size),
            "warmup": int(cfg.speed.warmup),
            "iterations": int(cfg.speed.iterations),
        }
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
        from nucleiseg.tracking.mlflow_store import artifact_location, tracking_uri

        log_evaluation(tracking_uri(cfg.logger), args.study, session, results, artifact_location(cfg.logger))
    if args.json:
        print(json.dumps(summary_json(session, results), indent=1))
        return 0
    from rich.table import Table

    from nucleiseg.console import make_console

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
    from omegaconf import OmegaConf

    from nucleiseg.inference.prepared import split_source
    from nucleiseg.inference.session import iterate_split
    from nucleiseg.retune import retune
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
    session, cfg = _session(checkpoint, str(checkpoint), overrides)
    folder, normalise = split_source(session, _data_folder(overrides))
    summary = retune(
        session,
        checkpoint,
        iterate_split(folder, args.split),
        OmegaConf.to_container(cfg.tune.grid.get(session.postprocess.method) or {}),
        args.objective or cfg.tune.objective,
        float(cfg.metrics.iou_threshold),
        normalise,
        args.split,
        out=Path(args.out).expanduser() if args.out else None,
        tracking_uri=None if args.no_mlflow else tracking_uri(cfg.logger),
        balance=str(cfg.tune.balance),
    )
    print(json.dumps(summary, indent=1))
    return 0


def _report(args: argparse.Namespace) -> int:
    from nucleiseg.tracking.mlflow_store import tracking_uri
    from nucleiseg.tracking.report import write_report

    uri = args.tracking_uri or tracking_uri(_compose([]).logger)
    figure = [c.strip() for c in args.figure_configs.split(";")] if args.figure_configs else None
    out = write_report(
        uri,
        args.study,
        args.out,
        overwrite=args.overwrite,
        figure_configurations=figure,
        figure_image=args.figure_image,
    )
    print(f"report written to {out} (report.md, tables as CSV, figures as PNG and SVG)")
    return 0


PREDICT_FLAGS = {  # predict's options, as the overrides they stand for (so they count as given by the user)
    "tta": "predict.tta",
    "tile_size": "predict.tile_size",
    "mpp": "predict.microns_per_pixel",
    "scale": "predict.scale",
    "device": "predict.device",
}


def _predict_cohort(args: argparse.Namespace, inputs: list[str], overrides: list[str]) -> int:
    """Many slides: sharded over processes or a SLURM array, a cohort table, one MLflow run (nucleiseg.cohort)."""
    if args.roi:
        raise UsageError("--roi is for one slide; give a cohort's regions in the CSV list's 'roi' column")
    from nucleiseg.cohort import CohortJob, run_cohort
    from nucleiseg.tracking.mlflow_store import tracking_uri

    cfg = _compose(overrides)
    launcher = args.launcher or cfg.cohort.launcher
    shards = args.shards or cfg.cohort.shards
    job = CohortJob(
        Path(args.out).expanduser(), args.model, args.run_id, overrides, args.overwrite, args.labels, cfg.logger
    )
    from omegaconf import OmegaConf

    table = run_cohort(
        job,
        inputs,
        launcher,
        shards,
        OmegaConf.to_container(cfg.cohort.slurm),
        None if args.no_mlflow else tracking_uri(cfg.logger),
    )
    counts = table.status.value_counts().to_dict()
    print(
        f"cohort {job.out}: {len(table)} slides, "
        + ", ".join(f"{n} {status}" for status, n in sorted(counts.items()))
        + f"; table: {job.out / 'cohort.csv'}"
    )
    for row in table[table.status == "failed"].itertuples():
        print(f"failed {row.slide}: {row.reason}")
    return 1 if counts.get("failed") else 0


def _predict(args: argparse.Namespace) -> int:
    overrides, inputs = split_overrides(args.words)
    if not inputs:
        raise UsageError("predict needs at least one image, slide or folder")
    from nucleiseg.predict import predict, print_summary

    flags = []
    for option, key in PREDICT_FLAGS.items():
        value = getattr(args, option)
        if value is not None and value is not False:  # 0 is a value (refused below), not "not given"
            flags.append(f"{key}={str(value).lower() if isinstance(value, bool) else value}")
    if args.launcher or args.shards or any(word.lower().endswith(".csv") for word in inputs):
        return _predict_cohort(args, inputs, [*overrides, *flags])
    session, cfg = _session(*resolve_model(args.model, args.run_id, overrides), overrides, flags)
    from nucleiseg.slides.predict_slide import SlideSettings

    slide_settings = SlideSettings.from_config(cfg.slide)
    if args.labels:
        slide_settings = dataclasses.replace(slide_settings, labels=True)
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


def _benchmark(args: argparse.Namespace) -> int:
    from nucleiseg.benchmark import LOOP_DATA, run_benchmark

    overrides, extra = split_overrides(args.words)
    if extra:
        raise UsageError(f"benchmark takes KEY=VALUE overrides only, not {extra}")
    return run_benchmark(args, _compose([*LOOP_DATA, *overrides]))


def _relog(args: argparse.Namespace) -> int:
    from mlflow.tracking import MlflowClient

    from nucleiseg.tracking.mlflow_store import tracking_uri
    from nucleiseg.tracking.pending import Pending

    overrides, folders = split_overrides(args.words)
    if not folders:
        raise UsageError("relog needs the run folder(s) whose MLflow writes are pending")
    client = MlflowClient(tracking_uri(_compose(overrides).logger))
    for folder in map(Path, folders):
        pending = Pending(folder)
        if not pending.records():
            print(f"{folder}: nothing pending")
            continue
        run_file = folder / "run.json"
        if not run_file.is_file():
            raise FileNotFoundError(f"{run_file}: not a run folder (no run.json)")
        run_id = json.loads(run_file.read_text())["run_id"]
        print(f"{folder}: {pending.replay(client, run_id)} pending write(s) logged to MLflow run {run_id}")
    return 0


def _benchmark_slide(args: argparse.Namespace) -> int:
    from nucleiseg.slides.benchmark import run_slide_benchmark

    return run_slide_benchmark(args)


def _export(args: argparse.Namespace) -> int:
    from nucleiseg.inference.export_model import export_model

    overrides, extra = split_overrides(args.words)
    if extra:
        raise UsageError(f"export takes --model, --format, --out and KEY=VALUE overrides, not {extra}")
    model, _ = resolve_model(args.model, args.run_id, overrides)
    print(json.dumps(export_model(model, args.format, args.out, image_size=args.image_size), indent=1))
    return 0


def _export_onnx(args: argparse.Namespace) -> int:
    from nucleiseg.inference.onnx_export import export_onnx

    result = export_onnx(args.checkpoint, args.out, image_size=args.image_size, check=not args.no_check)
    print(json.dumps(result, indent=1))
    return 0


def _models(args: argparse.Namespace) -> int:
    from nucleiseg.models.zoo import PRETRAINED, describe_models, registry

    if args.card:
        _, entries = registry()
        if args.card not in entries:
            raise UsageError(f"--card {args.card}: no such model; known: {', '.join(sorted(entries))}")
        entry = entries[args.card]
        print((PRETRAINED / entry.card).read_text() if entry.card else entry.description)
        return 0
    rows = describe_models()
    if args.json:
        print(json.dumps(rows, indent=1))
        return 0
    from rich.table import Table

    from nucleiseg.console import make_console

    table = Table()
    columns = list(dict.fromkeys(key for row in rows for key in row))
    for column in columns:
        table.add_column(column)
    for row in rows:
        table.add_row(*(str(row.get(c, "")) for c in columns))
    console = make_console()
    console.print("nucleiseg models (nucleiseg models --card NAME for one model's card)")
    console.print(table)
    return 0


WORDS_HELP = "KEY=VALUE configuration overrides (as for train.py), anywhere on the line"
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


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Defaults shown beside each option, and examples kept as written."""


def _command(
    commands: argparse._SubParsersAction, name: str, help: str, examples: str, **options: Any
) -> argparse.ArgumentParser:
    return commands.add_parser(
        name, help=help, description=help, epilog="examples:\n" + examples, formatter_class=HelpFormatter, **options
    )


def build_parser() -> argparse.ArgumentParser:
    from importlib.metadata import PackageNotFoundError, version

    try:
        installed = version("nucleiseg")
    except PackageNotFoundError:  # pragma: no cover - running from a source tree without installing
        installed = "unknown"
    parser = IntermixedParser(prog="nucleiseg", description=DESCRIPTION, epilog=EPILOG, formatter_class=HelpFormatter)
    parser.add_argument("--version", action="version", version=f"nucleiseg {installed}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    data = _command(
        commands,
        "data",
        "download, inspect and prepare the datasets",
        "  nucleiseg data download tnbc --to data\n  nucleiseg data inspect tnbc data/tnbc --json",
    )
    data_commands = data.add_subparsers(dest="data_command", required=True, metavar="STEP")
    inspect = _command(
        data_commands,
        "inspect",
        "summarise a raw dataset (counts, sizes, nuclei per image and patient)",
        "  nucleiseg data inspect monuseg 'data/monuseg/MoNuSeg 2018 Training Data' --json",
    )
    inspect.add_argument("dataset", choices=["tnbc", "monuseg"], help="which dataset the folder holds")
    inspect.add_argument("root", help="dataset folder or its downloaded .zip")
    inspect.add_argument("--mask-dir", default=None, help="MoNuSeg: mask PNGs for images without XML")
    inspect.add_argument("--json", action="store_true", help="print the full JSON summary")
    inspect.set_defaults(handler=_data_inspect)

    download = _command(
        data_commands,
        "download",
        "download a dataset with checksum verification and resume",
        "  nucleiseg data download tnbc --to data\n  nucleiseg data download monuseg-test --to data",
    )
    download.add_argument("dataset", choices=["tnbc", "monuseg", "monuseg-test"], help="the dataset to fetch")
    download.add_argument("--to", required=True, help="folder to download into (e.g. data)")
    download.add_argument("--timeout", type=float, default=10.0, help="network timeout in seconds")
    download.set_defaults(handler=_data_download)

    synthetic = _command(
        data_commands,
        "synthetic",
        "write synthetic H&E tiles and their instance masks, to try predict and evaluate on",
        "  nucleiseg data synthetic --to tiles --count 8",
    )
    synthetic.add_argument("--to", required=True, help="folder for images/ and masks/")
    synthetic.add_argument("--count", type=int, default=4, help="number of tiles")
    synthetic.add_argument("--size", type=int, default=256, help="tile side in pixels")
    synthetic.add_argument("--seed", type=int, default=0, help="random seed of the tiles")
    synthetic.add_argument("--overwrite", action="store_true", help="replace the tiles of an earlier call")
    synthetic.set_defaults(handler=_data_synthetic)

    prepare = _command(
        data_commands,
        "prepare",
        "build the processed dataset of a data config (train.py does this itself)",
        "  nucleiseg data prepare data=paper\n  nucleiseg data prepare experiment=release",
    )
    prepare.add_argument("words", nargs="*", metavar="KEY=VALUE", help=WORDS_HELP + " (data=paper ...)")
    prepare.add_argument("--overwrite", action="store_true", help="rebuild even if the prepared folder exists")
    prepare.set_defaults(handler=_data_prepare)

    evaluate = _command(
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
    evaluate.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    evaluate.add_argument("--speed", action="store_true", help="also time inference (speed.* settings)")
    evaluate.add_argument("--study", default="evaluate", help="MLflow experiment to log the evaluation to")
    evaluate.add_argument("--no-mlflow", action="store_true", help="print only; log nothing to MLflow")
    evaluate.set_defaults(handler=_evaluate)

    tuning = _command(
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

    report = _command(
        commands,
        "report",
        "a study's Tables II-III beside the paper's, instance tables and figures",
        "  nucleiseg report --study paper --out reports/paper\n"
        "  nucleiseg report --study paper --out reports/paper --overwrite --figure-configs "
        "'DenseNet-121 (ImageNet);Modified U-Net (BatchNorm)'",
    )
    report.add_argument("--study", default="paper", help="MLflow experiment (the study name used in training)")
    report.add_argument("--out", required=True, help="folder to write (new or empty, or an earlier report's)")
    report.add_argument(
        "--tracking-uri", default=None, help="MLflow store (default: the config's or the environment's)"
    )
    report.add_argument(
        "--figure-configs", default=None, help="configurations for the prediction figure, ';'-separated"
    )
    report.add_argument("--figure-image", type=int, default=0, help="index of the test image for that figure")
    report.add_argument("--overwrite", action="store_true", help="replace the files of an earlier report in --out")
    report.set_defaults(handler=_report)

    predict = _command(
        commands,
        "predict",
        "segment your own images and slides: masks, nuclei, measurements, GeoJSON for QuPath",
        "  nucleiseg predict slide.svs --out nuclei\n"
        "  nucleiseg predict tiles/ --out nuclei --mpp 0.25 --model CKPT\n"
        "  nucleiseg predict slides/ --out nuclei --labels slide.min_tissue=0.05\n"
        "  nucleiseg predict cohort.csv --out cohort --launcher slurm cohort.slurm.partition=gpu",
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

    models = _command(
        commands,
        "models",
        "the ready models: resolution, head, size, licence and headline metrics",
        "  nucleiseg models\n  nucleiseg models --card default",
    )
    models.add_argument("--card", default=None, metavar="NAME", help="print this model's card")
    models.add_argument("--json", action="store_true", help="print JSON instead of a table")
    models.set_defaults(handler=_models)

    export = _command(
        commands,
        "export",
        "a model for other tools (QuPath, ONNX Runtime, DJL), checked against nucleiseg's probabilities",
        "  nucleiseg export --model default --format torchscript --out nuclei.pt\n"
        "  nucleiseg export --model CKPT --format onnx --out nuclei.onnx",
    )
    export.add_argument("words", nargs="*", metavar="KEY=VALUE", help=WORDS_HELP)
    add_model_option(export)
    export.add_argument("--format", required=True, choices=["torchscript", "onnx", "safetensors"], help="file format")
    export.add_argument("--out", required=True, help="the file to write (must not exist)")
    export.add_argument("--image-size", type=int, default=256, help="example size for tracing (any size works after)")
    export.set_defaults(handler=_export)

    bench = _command(
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

    relog = _command(
        commands,
        "relog",
        "send a run's MLflow writes that were kept while the tracking server was down",
        "  nucleiseg relog outputs/paper/unet_bn-scratch-seed0",
    )
    relog.add_argument("words", nargs="+", metavar="RUN_DIR [KEY=VALUE]", help="run folders, and " + WORDS_HELP)
    relog.set_defaults(handler=_relog)

    slide_bench = _command(
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

    onnx = _command(
        commands,
        "export-onnx",
        "export a checkpoint to ONNX (the older spelling of: export --format onnx)",
        "  nucleiseg export-onnx CKPT --out model.onnx",
    )
    onnx.add_argument("checkpoint", help="the .ckpt to export")
    onnx.add_argument("--out", required=True, help="the .onnx file to write (must not exist)")
    onnx.add_argument("--image-size", type=int, default=256, help="example size for tracing (any size works after)")
    onnx.add_argument("--no-check", action="store_true", help="skip the onnxruntime comparison")
    onnx.set_defaults(handler=_export_onnx)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    setup_logging()
    from nucleiseg.errors import NucleisegError

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


if __name__ == "__main__":
    sys.exit(main())
