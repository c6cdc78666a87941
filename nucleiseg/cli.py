"""The ``nucleiseg`` command. Subcommands import their modules only when run, so ``--help`` is instant."""

from __future__ import annotations

import argparse
import json
import sys


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


def _data_prepare(args: argparse.Namespace) -> int:
    from nucleiseg.config import compose
    from nucleiseg.data.prepare import load_manifest, prepare_dataset

    cfg = compose(args.overrides)
    folder = prepare_dataset(cfg.data, overwrite=args.overwrite, log=lambda line: print(line, file=sys.stderr))
    manifest = load_manifest(folder)
    print(
        json.dumps(
            {"folder": str(folder), "counts": manifest["counts"], "content_hash": manifest["content_hash"]}, indent=1
        )
    )
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from nucleiseg.config import compose
    from nucleiseg.evaluate import evaluate

    cfg = compose(args.overrides)
    results = evaluate(
        args.checkpoint,
        cfg,
        split=args.split,
        images=args.images,
        masks=args.masks,
        log_to_mlflow=not args.no_mlflow,
        study=args.study,
    )
    table = Table(title=f"evaluation of {args.checkpoint}")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key, value in results.items():
        table.add_row(key, f"{value:.4f}" if isinstance(value, float) else str(value))
    Console().print(table)
    return 0


def _report(args: argparse.Namespace) -> int:
    from nucleiseg.config import compose
    from nucleiseg.tracking.mlflow_store import tracking_uri
    from nucleiseg.tracking.report import write_report

    uri = args.tracking_uri or tracking_uri(compose([]).logger)
    figure = [c.strip() for c in args.figure_configs.split(";")] if args.figure_configs else None
    out = write_report(
        uri,
        args.study,
        args.out,
        overwrite=args.overwrite,
        figure_configurations=figure,
        figure_image=args.figure_image,
    )
    print(f"report written to {out} (report.md, table2_losses.csv, table3_metrics.csv, figures)")
    return 0


def _predict(args: argparse.Namespace) -> int:
    from pathlib import Path

    from nucleiseg.config import compose
    from nucleiseg.predict import predict, print_summary

    overrides = list(args.set or [])
    if args.tta:
        overrides.append("predict.tta=true")
    if args.tile_size:
        overrides.append(f"predict.tile_size={args.tile_size}")
    if args.mpp:
        overrides.append(f"predict.microns_per_pixel={args.mpp}")
    if args.scale:
        overrides.append(f"predict.scale={args.scale}")
    if args.device:
        overrides.append(f"trainer.accelerator={args.device}")
    cfg = compose(overrides)
    summary = predict(
        args.inputs,
        args.out,
        cfg,
        checkpoint=args.checkpoint,
        run_id=args.run_id,
        overwrite=args.overwrite,
        show_progress=not args.quiet,
    )
    print_summary(summary, Path(args.out))
    return 0 if summary.ok else 1


def _benchmark(args: argparse.Namespace) -> int:
    import datetime
    from pathlib import Path

    import pandas as pd
    from rich.console import Console
    from rich.table import Table

    from nucleiseg.benchmark import as_table, benchmark, markdown, projected_study_hours

    encoders = args.configs.split(",") if args.configs else None
    from nucleiseg.models.factory import check_configuration

    for encoder in encoders or []:
        check_configuration(encoder, False)
    out = Path(args.out) if args.out else None
    for name in ("benchmark.md", "benchmark.csv"):
        if out is not None and (out / name).exists() and not args.overwrite:
            raise FileExistsError(f"{out / name} exists; pass --overwrite to replace it")
    measurements = benchmark(
        encoders,
        args.image_size,
        args.device,
        args.infer_batch,
        args.train_batch,
        args.iterations,
        args.train_steps,
        args.warmup,
        args.compile,
        log=lambda line: print(line, file=sys.stderr),
    )
    table = Table(title=f"nucleiseg benchmark: {measurements[0].device}, {args.image_size}x{args.image_size}")
    for column in ("configuration", "infer naive", "infer fast", "x", "train naive", "train fast", "x"):
        table.add_column(column, justify="left" if column == "configuration" else "right")
    for m in measurements:
        table.add_row(
            m.configuration,
            f"{m.infer_naive:.2f}",
            f"{m.infer_fast:.2f}",
            f"{m.infer_ratio:.2f}",
            f"{m.train_naive:.2f}",
            f"{m.train_fast:.2f}",
            f"{m.train_ratio:.2f}",
        )
    console = Console()
    console.print(table)
    first = measurements[0]
    console.print(
        f"images/s; fast = batch {first.infer_batch}/{first.train_batch} (inference/training), channels-last, "
        f"{first.infer_precision}; naive = eager fp32, batch 1, PNG decoding every step. Projected "
        f"140-run study: {projected_study_hours(measurements):.1f} h"
    )
    when = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        from nucleiseg.writing import write_bytes_atomic

        write_bytes_atomic(out / "benchmark.md", markdown(measurements, when).encode())
        write_bytes_atomic(out / "benchmark.csv", pd.DataFrame(as_table(measurements)).to_csv(index=False).encode())
        console.print(f"written: {out / 'benchmark.md'}, {out / 'benchmark.csv'}")
    if not args.no_mlflow:
        _log_benchmark(measurements, markdown(measurements, when))
    return 0


def _log_benchmark(measurements, text: str) -> None:
    import mlflow

    from nucleiseg.config import compose
    from nucleiseg.tracking.mlflow_store import use_experiment

    use_experiment(compose([]).logger, "benchmark")
    first = measurements[0]
    with mlflow.start_run(run_name=f"benchmark-{first.image_size}px"):
        mlflow.set_tags(
            {
                "device": first.device,
                "precision": first.infer_precision,
                "infer_batch": str(first.infer_batch),
                "train_batch": str(first.train_batch),
            }
        )
        for m in measurements:
            key = m.configuration.replace(" ", "_").replace("(", "").replace(")", "")
            mlflow.log_metrics(
                {
                    f"{key}/infer_fast": m.infer_fast,
                    f"{key}/infer_naive": m.infer_naive,
                    f"{key}/train_fast": m.train_fast,
                    f"{key}/train_naive": m.train_naive,
                }
            )
        mlflow.log_text(text, "benchmark.md")


def _export_onnx(args: argparse.Namespace) -> int:
    from nucleiseg.inference.onnx_export import export_onnx

    result = export_onnx(args.checkpoint, args.out, image_size=args.image_size, check=not args.no_check)
    print(json.dumps(result, indent=1))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="nucleiseg", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    data = commands.add_parser("data", help="download, inspect and prepare the datasets")
    data_commands = data.add_subparsers(dest="data_command", required=True)
    inspect = data_commands.add_parser("inspect", help="summarise a raw dataset (counts, sizes, nuclei)")
    inspect.add_argument("dataset", choices=["tnbc", "monuseg"])
    inspect.add_argument("root", help="dataset folder or its downloaded .zip")
    inspect.add_argument("--mask-dir", default=None, help="MoNuSeg: mask PNGs for images without XML")
    inspect.add_argument("--json", action="store_true", help="print the full JSON summary")
    inspect.set_defaults(handler=_data_inspect)

    download = data_commands.add_parser("download", help="download with checksum verification and resume")
    download.add_argument("dataset", choices=["tnbc", "monuseg", "monuseg-test"])
    download.add_argument("--to", required=True, help="folder to download into (e.g. data)")
    download.add_argument("--timeout", type=float, default=10.0, help="network timeout in seconds")
    download.set_defaults(handler=_data_download)

    prepare = data_commands.add_parser("prepare", help="build the processed dataset of a data config")
    prepare.add_argument("overrides", nargs="*", help="Hydra overrides, as for train.py (data=paper ...)")
    prepare.add_argument("--overwrite", action="store_true", help="rebuild even if the prepared folder exists")
    prepare.set_defaults(handler=_data_prepare)

    evaluate = commands.add_parser("evaluate", help="metrics of a checkpoint on a split or a folder of pairs")
    evaluate.add_argument("checkpoint", help="a .ckpt written by training (outputs/<study>/<run>/checkpoints/)")
    evaluate.add_argument("overrides", nargs="*", help="Hydra overrides selecting the data (data=paper ...)")
    evaluate.add_argument("--split", default="test", help="prepared split: test (default), val or train")
    evaluate.add_argument("--images", default=None, help="folder of images (instead of a prepared split)")
    evaluate.add_argument("--masks", default=None, help="folder of masks named like the images")
    evaluate.add_argument("--study", default="evaluate", help="MLflow experiment to log to")
    evaluate.add_argument("--no-mlflow", action="store_true", help="print only, log nothing")
    evaluate.set_defaults(handler=_evaluate)

    report = commands.add_parser("report", help="Tables II-III and Figures 7-11 of a finished study")
    report.add_argument("--study", default="paper", help="MLflow experiment (the study name used in training)")
    report.add_argument("--out", required=True, help="folder to write (must be new or empty)")
    report.add_argument("--tracking-uri", default=None, help="MLflow store (default: the config's / env's)")
    report.add_argument(
        "--figure-configs",
        default=None,
        help="configurations for the prediction figure, ';'-separated, e.g. "
        "'DenseNet-121 (ImageNet);Modified U-Net (BatchNorm)'",
    )
    report.add_argument("--figure-image", type=int, default=0, help="index of the test image for that figure")
    report.add_argument("--overwrite", action="store_true", help="replace an existing report folder")
    report.set_defaults(handler=_report)

    predict = commands.add_parser("predict", help="segment your own images: masks, instances, GeoJSON, features")
    predict.add_argument("inputs", nargs="+", help="image files (.png/.jpg/.tif) or folders of them")
    predict.add_argument("--out", required=True, help="output folder (one sub-folder per image)")
    source = predict.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint", help="a .ckpt written by training")
    source.add_argument("--run-id", help="an MLflow run id of a finished training run")
    predict.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    predict.add_argument("--tta", action="store_true", help="flip test-time augmentation (4x slower)")
    predict.add_argument("--tile-size", type=int, default=None, help="sliding-window tile (multiple of 32)")
    predict.add_argument("--mpp", type=float, default=None, help="microns per pixel, for features in micrometres")
    predict.add_argument("--scale", type=float, default=None, help="resample inputs by this factor for the model")
    predict.add_argument("--device", choices=["cpu", "gpu", "auto"], default=None)
    predict.add_argument("--set", action="append", metavar="KEY=VALUE", help="any config override (repeatable)")
    predict.add_argument("--quiet", action="store_true", help="no progress bars")
    predict.set_defaults(handler=_predict)

    bench = commands.add_parser("benchmark", help="training/inference throughput, fast path vs naive baseline")
    bench.add_argument("--configs", default=None, help="comma-separated encoders (default: all of Table I)")
    bench.add_argument("--image-size", type=int, default=512)
    bench.add_argument("--device", choices=["auto", "cpu", "gpu"], default="auto")
    bench.add_argument("--infer-batch", type=int, default=None, help="fast-path inference batch (GPU 16, CPU 4)")
    bench.add_argument("--train-batch", type=int, default=3, help="fast-path training batch (paper: 3)")
    bench.add_argument("--iterations", type=int, default=10, help="timed inference passes")
    bench.add_argument("--train-steps", type=int, default=10, help="timed optimizer steps")
    bench.add_argument("--warmup", type=int, default=2)
    bench.add_argument("--compile", action="store_true", help="torch.compile the fast path")
    bench.add_argument("--out", default=None, help="folder for benchmark.md and benchmark.csv")
    bench.add_argument("--overwrite", action="store_true")
    bench.add_argument("--no-mlflow", action="store_true")
    bench.set_defaults(handler=_benchmark)

    onnx = commands.add_parser("export-onnx", help="export a checkpoint to ONNX, checked with onnxruntime")
    onnx.add_argument("checkpoint")
    onnx.add_argument("--out", required=True, help="the .onnx file to write (must not exist)")
    onnx.add_argument("--image-size", type=int, default=256, help="example size for tracing (any size works after)")
    onnx.add_argument("--no-check", action="store_true", help="skip the onnxruntime comparison")
    onnx.set_defaults(handler=_export_onnx)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from nucleiseg.errors import NucleisegError

    try:
        return args.handler(args)
    except (NucleisegError, FileNotFoundError, FileExistsError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
