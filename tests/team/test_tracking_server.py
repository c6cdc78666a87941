"""The team setup, for real: PostgreSQL (the distribution's server) behind ``mlflow server`` with served
artifacts, a sweep logging to it through MLFLOW_TRACKING_URI, and everything read back from a fresh client;
an MLflow server that goes down mid-run loses nothing. Both servers are stopped at the end."""

import glob
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from tests.conftest import REPO, fast_run_overrides, run_train_here

PG_BIN = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def as_postgres(command: list[str]) -> list[str]:
    """PostgreSQL refuses to run as root: run its tools as the distribution's postgres user then."""
    return ["runuser", "-u", "postgres", "--", *command] if os.geteuid() == 0 else command


@pytest.fixture(scope="module")
def postgres(tmp_path_factory):
    if not PG_BIN:
        pytest.skip("PostgreSQL server binaries are not installed (apt-get install postgresql; .ci/run does)")
    bin_dir = Path(PG_BIN[-1]).parent
    # not under pytest's temporary folder: that one is private to its owner, and the server runs as postgres
    root = Path(tempfile.mkdtemp(prefix="nucleiseg-pg-"))
    data, sockets = root / "data", root / "sockets"
    sockets.mkdir()
    if os.geteuid() == 0:
        shutil.chown(root, "postgres")
        shutil.chown(sockets, "postgres")
    port = free_port()
    initdb = subprocess.run(
        as_postgres([str(bin_dir / "initdb"), "-D", str(data), "-A", "trust", "-U", "nucleiseg"]),
        capture_output=True,
        text=True,
    )
    if initdb.returncode:
        shutil.rmtree(root, ignore_errors=True)
        raise RuntimeError(f"initdb failed: {initdb.stderr.strip()[-2000:]}")
    options = f"-p {port} -k {sockets} -h 127.0.0.1"
    subprocess.run(
        as_postgres([str(bin_dir / "pg_ctl"), "-D", str(data), "-o", options, "-w", "start", "-l", str(root / "log")]),
        check=True,
        capture_output=True,
    )
    try:
        subprocess.run(
            [str(bin_dir / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "nucleiseg", "mlflow"],
            check=True,
            capture_output=True,
        )
        yield f"postgresql://nucleiseg@127.0.0.1:{port}/mlflow"
    finally:
        subprocess.run(
            as_postgres([str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "fast", "stop"]), capture_output=True
        )
        shutil.rmtree(root, ignore_errors=True)


class MlflowServer:
    """``mlflow server`` on a free local port, serving artifacts from a folder; started and stopped here."""

    def __init__(self, backend: str, artifacts: Path, port: int | None = None) -> None:
        self.backend, self.artifacts, self.port = backend, artifacts, port or free_port()
        self.process: subprocess.Popen | None = None

    @property
    def uri(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> "MlflowServer":
        command = [
            sys.executable,
            "-m",
            "mlflow",
            "server",
            "--backend-store-uri",
            self.backend,
            "--artifacts-destination",
            str(self.artifacts),
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--workers",
            "1",
        ]
        self.log = self.artifacts.parent / f"mlflow-server-{self.port}.log"
        with self.log.open("ab") as output:  # the server's own output, shown if it does not come up
            self.process = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"{self.uri}/health", timeout=2) as answer:
                    if answer.status == 200:
                        return self
            except OSError:
                time.sleep(0.5)
        self.stop()
        tail = self.log.read_text()[-3000:]
        raise RuntimeError(f"mlflow server did not start within 180 s: {tail}")

    def stop(self, crash: bool = False) -> None:
        """SIGTERM (a clean shutdown), or with ``crash`` SIGKILL: the server dies as in a crash or a lost node."""
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL if crash else signal.SIGTERM)  # the server and its workers
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()


@pytest.fixture(scope="module")
def team_server(postgres, tmp_path_factory):
    server = MlflowServer(postgres, tmp_path_factory.mktemp("artifacts")).start()
    yield server
    server.stop()


def _env(uri: str) -> dict:
    # fail fast instead of MLflow's minutes of retries when the server is gone (the outage test)
    return {
        **os.environ,
        "MLFLOW_TRACKING_URI": uri,
        "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0",
        "MLFLOW_HTTP_REQUEST_TIMEOUT": "10",
    }


@pytest.mark.server
def test_a_sweep_logs_to_a_postgresql_backed_server_and_everything_reads_back(
    team_server, tmp_path, capsys, monkeypatch
):
    overrides = [o for o in fast_run_overrides(tmp_path, "sqlite:///unused.db") if not o.startswith("logger.")]
    for key, value in _env(team_server.uri).items():
        monkeypatch.setenv(key, value)
    words = ["experiment=quickstart", "study=team", "seed=0,1", *overrides, "logger.overlays=1"]
    result = run_train_here(*words, multirun=True)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    client = MlflowClient(team_server.uri)  # a fresh client: what another machine sees
    experiment = client.get_experiment_by_name("team").experiment_id
    runs = [r for r in client.search_runs([experiment]) if "summary" not in r.data.tags]
    assert len(runs) == 2 and {r.info.status for r in runs} == {"FINISHED"}
    for record in runs:
        assert {"test/jaccard", "test/aji_watershed", "loss/train", "loss/val"} <= set(record.data.metrics)
        assert [m.step for m in client.get_metric_history(record.info.run_id, "loss/train")] == [0]
        assert record.info.artifact_uri.startswith("mlflow-artifacts:")  # served by the server, not a local path
        stored = {a.path for a in client.list_artifacts(record.info.run_id, "checkpoint")}
        assert {"checkpoint/model.ckpt", "checkpoint/MODEL_CARD.md"} <= stored
        assert len(client.list_artifacts(record.info.run_id, "overlays")) == 1
    assert client.search_runs([experiment], "tags.summary = 'true'")  # the medians, written at the sweep's end

    from nucleiseg.cli import main as cli

    assert cli(["report", "--study", "team", "--out", str(tmp_path / "report"), "--tracking-uri", team_server.uri]) == 0
    assert "| Modified U-Net (BatchNorm) | 2 |" in (tmp_path / "report" / "report.md").read_text()
    # predict --run-id from "another machine": the checkpoint the run names is not here, the server has it
    record = runs[0]
    local = Path(record.data.tags["checkpoint"])
    local.rename(local.with_suffix(".moved"))
    from PIL import Image

    from nucleiseg.data.synthetic import SyntheticSpec, synthetic_tile

    Image.fromarray(synthetic_tile(SyntheticSpec(48, 48, 6), 3)[0]).save(tmp_path / "tile.png")
    os.environ["NUCLEISEG_CACHE"] = str(tmp_path / "cache")
    try:
        code = cli(
            [
                "predict",
                str(tmp_path / "tile.png"),
                "--out",
                str(tmp_path / "pred"),
                "--run-id",
                record.info.run_id,
                "--quiet",
                f"logger.tracking_uri={team_server.uri}",
            ]
        )
    finally:
        del os.environ["NUCLEISEG_CACHE"]
    assert code == 0 and (tmp_path / "pred" / "tile" / "done.json").is_file()
    # downloaded once into the cache, under the store it came from and the run (cache/runs/<store>/<run>/)
    [cached] = list((tmp_path / "cache" / "runs").glob(f"*/{record.info.run_id}/model.ckpt"))
    assert cached.is_file()


@pytest.mark.server
def test_a_server_that_goes_down_mid_run_loses_nothing(tmp_path):
    """The server dies after the run has started: training goes on, the checkpoint and done.json are written,
    the writes MLflow missed wait in the run folder, and `nucleiseg relog` sends them once it is back."""
    store = f"sqlite:///{tmp_path / 'server.db'}"
    server = MlflowServer(store, tmp_path / "artifacts").start()
    overrides = [o for o in fast_run_overrides(tmp_path, "sqlite:///unused.db") if not o.startswith("logger.")]
    command = [
        sys.executable,
        "train.py",
        "experiment=quickstart",
        "study=outage",
        *overrides,
        "trainer.max_epochs=3",
        "logger.overlays=0",
    ]
    process = subprocess.Popen(
        command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(server.uri)
    )
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and not list((tmp_path / "outputs").glob("outage/*/run.json")):
            time.sleep(0.2)
        time.sleep(1.0)  # the run has created its MLflow run and logged its config
        server.stop(crash=True)
        stdout, stderr = process.communicate(timeout=900)
    finally:
        server.stop(crash=True)
        if process.poll() is None:
            process.kill()
    assert process.returncode == 0, stdout[-2000:] + stderr[-3000:]
    [folder] = [p.parent for p in (tmp_path / "outputs").glob("outage/*/run.json")]
    assert (folder / "done.json").is_file() and (folder / "checkpoints" / "model.ckpt").is_file()
    assert (folder / "mlflow_pending.jsonl").is_file() and "nucleiseg relog" in stderr
    server = MlflowServer(store, tmp_path / "artifacts", server.port).start()
    try:
        relog = subprocess.run(
            [sys.executable, "-m", "nucleiseg.cli", "relog", str(folder)],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=300,
            env=_env(server.uri),
        )
        assert relog.returncode == 0, relog.stderr[-2000:]
        run_id = json.loads((folder / "run.json").read_text())["run_id"]
        record = MlflowClient(server.uri).get_run(run_id)
        assert record.info.status == "FINISHED" and "test/jaccard" in record.data.metrics
        assert record.data.tags.get("nucleiseg.done") == "true"
        assert not (folder / "mlflow_pending.jsonl").exists()
    finally:
        server.stop(crash=True)
