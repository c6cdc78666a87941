"""``nucleiseg benchmark``'s output: the table printed, ``benchmark.md`` + ``benchmark.csv`` (or ``suite.md`` +
``suite.csv`` for ``--suite gpu``) written, and the measurements logged to MLflow (experiment ``benchmark``)."""

from __future__ import annotations

import argparse
import datetime
import sys
from dataclasses import asdict
from pathlib import Path

from omegaconf import DictConfig

from nucleiseg.benchmarks.configurations import Measurement, Options, benchmark, projected_study_hours
from nucleiseg.models.factory import ENCODERS
from nucleiseg.util.devices import resolve_device


def as_table(measurements: list[Measurement]) -> list[dict]:
    rows = []
    for m in measurements:
        row = asdict(m)
        row.update(infer_ratio=m.infer_ratio, train_ratio=m.train_ratio, loop_ratio=m.loop_ratio)
        rows.append(row)
    return rows


COLUMNS = (
    ("configuration", "configuration"),
    ("infer naive", "infer_naive"),
    ("infer fast", "infer_fast"),
    ("x", "infer_ratio"),
    ("train naive", "train_naive"),
    ("train step", "train_step"),
    ("loop", "loop"),
    ("loop/step", "loop_ratio"),
)


def _cell(value: object) -> str:
    return f"{value:.2f}" if isinstance(value, float) else str(value)


def markdown(measurements: list[Measurement], when: str, hours: float) -> str:
    first = measurements[0]
    lines = [
        f"Benchmark on {first.device}, {when}; {first.image_size}x{first.image_size} images, images/s. "
        f"Inference: naive = eager fp32 batch 1, fast = batch {first.infer_batch}, {first.infer_precision}, "
        f"the session's memory format. Training (batch {first.train_batch}, {first.train_precision}): naive = "
        "fp32 batch 1 decoding PNGs every step; step = the module's loss + optimizer on cached device batches; "
        f"loop = train.py's loop ({first.loop_epoch_images} images/epoch, validation, checkpoints, MLflow) "
        "after its first epoch.",
        "",
        "| " + " | ".join(title for title, _ in COLUMNS) + " | max prob. diff fast vs naive |",
        "|" + "---|" * (len(COLUMNS) + 1),
    ]
    for m in measurements:
        row = as_table([m])[0]
        lines.append(
            "| " + " | ".join(_cell(row[key]) for _, key in COLUMNS) + f" | {m.fast_vs_naive_max_prob_diff:.3g} |"
        )
    lines += ["", f"Projected wall time of the 140-run study at these rates: {hours:.2f} h (one run at a time)."]
    return "\n".join(lines)


def run_benchmark(args: argparse.Namespace, cfg: DictConfig) -> int:
    """The ``nucleiseg benchmark`` command: measure, print a table, write Markdown + CSV, log to MLflow."""
    import pandas as pd
    from rich.table import Table

    from nucleiseg.models.factory import check_configuration
    from nucleiseg.util.console import make_console
    from nucleiseg.util.writing import write_bytes_atomic

    encoders = args.configs.split(",") if args.configs else list(ENCODERS)
    for encoder in encoders:
        check_configuration(encoder, False)
    out = Path(args.out) if args.out else None
    for name in ("suite.md", "suite.csv") if args.suite == "gpu" else ("benchmark.md", "benchmark.csv"):
        if out is not None and (out / name).exists() and not args.overwrite:
            raise FileExistsError(f"{out / name} exists; pass --overwrite to replace it")
    device = resolve_device("cpu" if args.device == "cpu" else "auto" if args.device == "auto" else "gpu")
    options = Options(
        encoders=encoders,
        image_size=int(cfg.data.protocol.image_size) if args.image_size is None else args.image_size,
        device=device,
        infer_batch=args.infer_batch
        if args.infer_batch is not None
        else (16 if device.type == "cuda" else int(cfg.predict.batch_size)),
        iterations=args.iterations,
        train_steps=args.train_steps,
        warmup=args.warmup,
        loop_epochs=args.loop_epochs,
        compile_model=args.compile,
    )
    if args.suite == "gpu":
        return _run_suite(args, cfg, options, out)
    measurements = benchmark(cfg, options, log=lambda line: print(line, file=sys.stderr))
    hours = projected_study_hours(measurements, cfg)
    title = f"nucleiseg benchmark: {measurements[0].device}, {options.image_size}x{options.image_size}"
    table = Table()
    for column, _ in COLUMNS:
        table.add_column(column, justify="left" if column == "configuration" else "right")
    for row in as_table(measurements):
        table.add_row(*(_cell(row[key]) for _, key in COLUMNS))
    console = make_console()
    console.print(title)
    console.print(table)
    console.print(f"images/s; projected 140-run study: {hours:.2f} h")
    when = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    text = markdown(measurements, when, hours)
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        write_bytes_atomic(out / "benchmark.md", text.encode())
        write_bytes_atomic(out / "benchmark.csv", pd.DataFrame(as_table(measurements)).to_csv(index=False).encode())
        console.print(f"written: {out / 'benchmark.md'}, {out / 'benchmark.csv'}")
    if not args.no_mlflow:
        _log_benchmark(cfg, measurements, text)
    return 0


def _run_suite(args: argparse.Namespace, cfg: DictConfig, options: Options, out: Path | None) -> int:
    """``--suite gpu``: :mod:`nucleiseg.benchmarks.suite`'s one table, printed and written as suite.md + suite.csv."""
    import pandas as pd
    from rich.table import Table

    from nucleiseg.benchmarks.suite import SuiteOptions, run_suite, suite_markdown
    from nucleiseg.util.console import make_console
    from nucleiseg.util.writing import write_bytes_atomic

    suite = SuiteOptions(
        measure=options,
        sweep=options.encoders,
        sweep_epochs=args.sweep_epochs,
        slide_size=args.slide_size,
        slide_tissue=0.05,
        model=args.model,
    )
    rows = run_suite(cfg, suite, log=lambda line: print(line, file=sys.stderr))
    text = suite_markdown(rows, options.device)
    table = Table(title=text.splitlines()[0])
    for column in ("part", "measure", "value", "unit", "note"):
        table.add_column(column, justify="right" if column == "value" else "left")
    for row in rows:
        table.add_row(row["part"], row["measure"], f"{row['value']:.3g}", row["unit"], row["note"])
    console = make_console()
    console.print(table)
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        write_bytes_atomic(out / "suite.md", text.encode())
        write_bytes_atomic(out / "suite.csv", pd.DataFrame(rows).to_csv(index=False).encode())
        console.print(f"written: {out / 'suite.md'}, {out / 'suite.csv'}")
    return 0


def _log_benchmark(cfg: DictConfig, measurements: list[Measurement], text: str) -> None:
    import mlflow

    from nucleiseg.tracking.mlflow_store import artifact_location, tracking_uri, use_experiment

    use_experiment(tracking_uri(cfg.logger), "benchmark", artifact_location(cfg.logger))
    first = measurements[0]
    with mlflow.start_run(run_name=f"benchmark-{first.image_size}px"):
        mlflow.set_tags(
            {
                "device": first.device,
                "infer_precision": first.infer_precision,
                "train_precision": first.train_precision,
                "infer_batch": str(first.infer_batch),
                "train_batch": str(first.train_batch),
            }
        )
        for m in measurements:
            key = m.configuration.replace(" ", "_").replace("(", "").replace(")", "")
            values = {"infer_fast": m.infer_fast, "infer_naive": m.infer_naive, "train_step": m.train_step}
            values.update({"train_naive": m.train_naive, **({"loop": m.loop} if m.loop == m.loop else {})})
            mlflow.log_metrics({f"{key}/{name}": value for name, value in values.items()})
        mlflow.log_text(text, "benchmark.md")
