"""``nucleiseg relog``: a run's MLflow writes, kept while the tracking server was down, sent now."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from nucleiseg.cli.common import WORDS_HELP, UsageError, add_command, compose, split_overrides


def _relog(args: argparse.Namespace) -> int:
    from mlflow.tracking import MlflowClient

    from nucleiseg.tracking.mlflow_store import tracking_uri
    from nucleiseg.tracking.pending import Pending

    overrides, folders = split_overrides(args.words)
    if not folders:
        raise UsageError("relog needs the run folder(s) whose MLflow writes are pending")
    for folder in map(Path, folders):  # every folder checked before any write is sent
        if not folder.is_dir():
            raise FileNotFoundError(f"{folder}: no such run folder")
    client = MlflowClient(tracking_uri(compose(overrides).logger))
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


def register(commands: argparse._SubParsersAction) -> None:
    """``relog``."""
    relog = add_command(
        commands,
        "relog",
        "send a run's MLflow writes that were kept while the tracking server was down",
        "  nucleiseg relog outputs/paper/unet_bn-scratch-seed0",
    )
    relog.add_argument("words", nargs="+", metavar="RUN_DIR [KEY=VALUE]", help="run folders, and " + WORDS_HELP)
    relog.set_defaults(handler=_relog)
