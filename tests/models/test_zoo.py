"""Ready models by name: the registry, downloads through a local HTTP server, checksums, MLflow's registry."""

import hashlib
import http.server
import json
import shutil
import socket
import threading
from pathlib import Path

import pytest

import nucleiseg.models.zoo as zoo
from nucleiseg.cli import main as cli
from nucleiseg.config.settings import defaults
from nucleiseg.inference.session import InferenceSession


@pytest.fixture(scope="module")
def weights(trained_run, tmp_path_factory) -> Path:
    """The session's tiny trained model as safetensors, what a published model is."""
    from nucleiseg.inference.export_model import export_model

    path = tmp_path_factory.mktemp("weights") / "tiny.safetensors"
    export_model(trained_run[3], "safetensors", path)
    return path


class _Files(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):  # quiet
        pass


@pytest.fixture(scope="module")
def server(tmp_path_factory, weights):
    """127.0.0.1:PORT serving good.safetensors, corrupt.safetensors (same name, other bytes) and page.safetensors
    (an HTML page, as a login wall answers)."""
    root = tmp_path_factory.mktemp("served")
    shutil.copy(weights, root / "good.safetensors")
    data = bytearray(weights.read_bytes())
    data[-10:] = b"0123456789"
    (root / "corrupt.safetensors").write_bytes(bytes(data))
    (root / "page.safetensors").write_text("<!DOCTYPE html><html><body>Please sign in</body></html>")
    handler = lambda *a, **k: _Files(*a, directory=str(root), **k)  # noqa: E731
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def registry(tmp_path, monkeypatch, weights, server):
    """A registry with a shipped model, and published ones: good, corrupt, missing, HTML, server down."""
    shipped = tmp_path / "pretrained"
    shipped.mkdir()
    shutil.copy(weights, shipped / "tiny.safetensors")
    digest = hashlib.sha256(weights.read_bytes()).hexdigest()
    size = weights.stat().st_size
    entry = {"sha256": digest, "size_bytes": size, "head": "binary", "microns_per_pixel": 0.5}
    models = {
        "tiny": {**entry, "file": "tiny.safetensors", "card": None},
        "published": {**entry, "url": f"{server}/good.safetensors"},
        "corrupt": {**entry, "url": f"{server}/corrupt.safetensors"},
        "missing": {**entry, "url": f"{server}/nothing.safetensors"},
        "page": {**entry, "url": f"{server}/page.safetensors"},
        "down": {**entry, "url": f"http://127.0.0.1:{_free_port()}/x.safetensors"},
    }
    (shipped / "registry.json").write_text(json.dumps({"default": "tiny", "models": models}))
    monkeypatch.setattr(zoo, "PRETRAINED", shipped)
    monkeypatch.setenv("NUCLEISEG_CACHE", str(tmp_path / "cache"))
    return shipped


def test_names_resolve_to_checked_files_and_unknown_names_list_the_known(registry, tmp_path):
    path, label = zoo.resolve(None)
    assert path == registry / "tiny.safetensors" and label == "tiny (default model)"
    assert zoo.resolve("default")[0] == path
    with pytest.raises(zoo.ModelError, match=r"--model tinny: .* known models: corrupt, down, missing, page, "):
        zoo.resolve("tinny")
    (registry / "tiny.safetensors").write_bytes(b"x" + path.read_bytes()[1:])
    with pytest.raises(zoo.ModelError, match=r"has SHA-256 [0-9a-f]{64}, expected [0-9a-f]{64}"):
        zoo.resolve("tiny")  # a damaged shipped file is refused, never loaded


def test_a_published_model_is_downloaded_once_into_the_cache(registry, tmp_path):
    path, label = zoo.resolve("published")
    assert path.parent == tmp_path / "cache" / "models" and label == "published"
    stamp = path.stat().st_mtime_ns
    assert zoo.resolve("published")[0].stat().st_mtime_ns == stamp  # not downloaded again
    session = InferenceSession.from_checkpoint(path, defaults("predict"))
    assert session.head == "binary"


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("corrupt", "not the published file"),
        ("missing", "could not be downloaded .*404"),
        ("page", "not the published file"),  # its hash cannot match either
        ("down", "could not be downloaded .*ConnectionError"),
    ],
)
def test_a_bad_download_is_one_line_and_leaves_nothing_in_the_cache(registry, tmp_path, name, message):
    with pytest.raises(zoo.ModelError, match=message) as error:
        zoo.resolve(name)
    assert "\n" not in str(error.value)
    cache = tmp_path / "cache"
    assert not cache.exists() or not [p for p in cache.rglob("*") if p.is_file()]


def test_a_url_without_checksum_that_answers_html_is_refused(registry, server, tmp_path):
    with pytest.raises(zoo.ModelError, match="web page, not model weights"):
        zoo.resolve(f"{server}/page.safetensors")
    assert not [p for p in (tmp_path / "cache").rglob("*") if p.is_file()]
    digest = hashlib.sha256((registry / "tiny.safetensors").read_bytes()).hexdigest()
    path, _ = zoo.resolve(f"{server}/good.safetensors#sha256={digest}")
    assert path.is_file()


def test_models_command_lists_them(registry, capsys):
    assert cli(["models", "--json"]) == 0
    rows = {row["name"]: row for row in json.loads(capsys.readouterr().out)}
    assert (
        rows["tiny (default)"]["where"] == "in the package" and rows["published"]["where"] == "downloads on first use"
    )
    assert rows["tiny (default)"]["um_per_pixel"] == 0.5


def test_the_mlflow_model_registry_gives_models_by_name_and_version(trained_run, tracking_uri, tmp_path, monkeypatch):
    from mlflow.tracking import MlflowClient

    from nucleiseg.predict.model_sources import resolve_model
    from nucleiseg.tracking.registry import register_model

    monkeypatch.setenv("NUCLEISEG_CACHE", str(tmp_path / "cache"))
    from nucleiseg.inference.checkpoint import load_checkpoint

    client = MlflowClient(tracking_uri)
    run = client.get_run(load_checkpoint(trained_run[3])[1]["mlflow_run_id"])  # (evaluations share its experiment)
    version = register_model(tracking_uri, run.info.run_id, "tiny-nuclei", "# card\nthe test model")
    assert register_model(tracking_uri, run.info.run_id, "tiny-nuclei", "again") == version  # once per run
    assert client.get_model_version("tiny-nuclei", version).description.startswith("# card")
    uri = [f"logger.tracking_uri={tracking_uri}"]
    path, label = resolve_model(f"models:/tiny-nuclei/{version}", None, uri)
    assert path.read_bytes() == trained_run[3].read_bytes() and label == f"models:/tiny-nuclei/{version}"
    assert resolve_model("models:/tiny-nuclei/latest", None, uri)[0] == path
    with pytest.raises(ValueError, match="registered models: tiny-nuclei"):
        resolve_model("models:/other/1", None, uri)


def test_a_server_that_never_answers_times_out_in_one_line(tmp_path):
    with socket.socket() as silent:  # accepts connections (the backlog) and never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(4)
        url = f"http://127.0.0.1:{silent.getsockname()[1]}/model.safetensors"
        with pytest.raises(zoo.ModelError, match=r"could not be downloaded \(.*Timeout"):
            zoo.download(url, "0" * 64, tmp_path / "cache", "model.safetensors", timeout=0.5)
    assert not [p for p in (tmp_path / "cache").rglob("*") if p.is_file()]
