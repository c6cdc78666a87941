"""``nucleiseg report``: a study's tables and figures beside the paper's."""

from __future__ import annotations

import argparse

from nucleiseg.cli.common import add_command, compose


def _report(args: argparse.Namespace) -> int:
    from nucleiseg.config.settings import defaults
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
        settings=defaults("predict") if figure else None,
    )
    print(f"report written to {out} (report.md, tables as CSV, figures as PNG and SVG)")
    return 0


def register(commands: argparse._SubParsersAction) -> None:
    """``report``."""
    report = add_command(
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
