"""Ready models by name: the registry, downloads through a local HTTP server, checksums, MLflow's registry."""

import hashlib
import http.server
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

import nucleiseg.models.zoo as zoo
from nucleiseg.cli import main as cli
from nucleiseg.config.settings import defaults
from nucleiseg.inference.session import InferenceSession
from tests.conftest import REPO


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
    """127.0.0.1:PORT serving good.safetensors, corrupt.safetensors (same name, other bytes), page.safetensors
    (an HTML page, as a login wall answers) and bom.safetensors (a page that starts with a UTF-8 byte order mark)."""
    root = tmp_path_factory.mktemp("served")
    shutil.copy(weights, root / "good.safetensors")
    data = bytearray(weights.read_bytes())
    data[-10:] = b"0123456789"
    (root / "corrupt.safetensors").write_bytes(bytes(data))
    (root / "page.safetensors").write_text("<!DOCTYPE html><html><body>Please sign in</body></html>")
    (root / "bom.safetensors").write_bytes("\ufeff<!DOCTYPE html><html><body>Not found</body></html>".encode())
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
        ("page", "web page, not model weights"),  # recognised from its first bytes, before any hash
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
    assert rows["tiny (default)"]["types"] == "none (untyped)"


def test_models_command_says_no_typed_model_ships(registry, capsys):
    assert cli(["models"]) == 0
    assert "No typed model ships yet" in capsys.readouterr().out


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


# -- hostile servers: slow, endless, pages; kills; a cache that changes under us ------------------------------------


class _Hostile(http.server.BaseHTTPRequestHandler):
    """``/trickle*``: one byte every 0.2 s, never ending; ``/endless*``: zero bytes as fast as the client reads, no
    Content-Length (a 3 GB junk answer); ``/endless-page*``: the same after an HTML page's first line. ``sent``
    counts the bytes each path got out before the client hung up."""

    sent: dict[str, int] = {}

    def do_GET(self):  # http.server's naming
        self.send_response(200)
        self.end_headers()
        name = self.path.strip("/").split(".")[0]
        first = b"<!DOCTYPE html><html><head><title>Sign in</title>" if name == "endless-page" else b""
        block, pause = (b"x", 0.2) if name == "trickle" else (b"\0" * (1 << 20), 0.0)
        type(self).sent[name] = 0
        try:
            self.wfile.write(first)
            while True:
                self.wfile.write(block)
                type(self).sent[name] += len(block)
                time.sleep(pause)
        except OSError:  # the client hung up
            return

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def hostile():
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Hostile)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


@pytest.fixture
def hostile_registry(registry, hostile, weights):
    """The registry of :func:`registry` with entries on the hostile server (size_bytes: the real model's)."""
    raw = json.loads((registry / "registry.json").read_text())
    entry = {**raw["models"]["published"]}
    for name in ("trickle", "endless", "endless-page"):
        raw["models"][name] = {**entry, "url": f"{hostile}/{name}.safetensors"}
    (registry / "registry.json").write_text(json.dumps(raw))
    zoo._read_registry.cache_clear()
    return registry


def _files(folder: Path) -> list[Path]:
    """Every file under ``folder`` (hidden ones included: temporary files are)."""
    return sorted(p for p in folder.rglob("*") if p.is_file()) if folder.exists() else []


def test_a_trickling_download_is_stopped_at_its_deadline_in_one_line(hostile, tmp_path):
    started = time.monotonic()
    with pytest.raises(zoo.ModelError, match=r"trickle.safetensors: the download did not finish within 1 s") as error:
        zoo.download(f"{hostile}/trickle.safetensors", None, tmp_path / "cache", "m.safetensors", deadline=1.0)
    assert time.monotonic() - started < 4 and "\n" not in str(error.value)
    assert _files(tmp_path / "cache") == []


def test_the_deadline_is_derived_from_the_expected_size_unless_set(hostile_registry, tmp_path, monkeypatch):
    monkeypatch.delenv("NUCLEISEG_DOWNLOAD_DEADLINE", raising=False)
    assert zoo.download_deadline(None) == zoo.UNKNOWN_SIZE_DEADLINE_S
    assert zoo.download_deadline(10_000_000) == pytest.approx(zoo.MIN_DEADLINE_S + 10_000_000 / zoo.SLOWEST_RATE)
    monkeypatch.setenv("NUCLEISEG_DOWNLOAD_DEADLINE", "soon")
    with pytest.raises(zoo.ModelError, match="NUCLEISEG_DOWNLOAD_DEADLINE='soon': expected seconds"):
        zoo.download_deadline(None)
    monkeypatch.setenv("NUCLEISEG_DOWNLOAD_DEADLINE", "1")
    assert zoo.download_deadline(10**9) == 1.0
    started = time.monotonic()
    with pytest.raises(zoo.ModelError, match="did not finish within 1 s .*NUCLEISEG_DOWNLOAD_DEADLINE"):
        zoo.resolve("trickle")
    assert time.monotonic() - started < 4 and _files(tmp_path / "cache") == []


def test_a_download_killed_by_sigterm_leaves_nothing_in_the_cache(hostile, tmp_path):
    cache = tmp_path / "cache"
    code = (
        "import sys; from pathlib import Path; from nucleiseg.models import zoo; "
        "zoo.download(sys.argv[1], None, Path(sys.argv[2]), 'm.safetensors')"
    )
    process = subprocess.Popen(
        [sys.executable, "-c", code, f"{hostile}/trickle.safetensors", str(cache)],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    waited = time.monotonic() + 30
    while not _files(cache):  # the download's temporary file: the download is under way
        assert process.poll() is None, process.stderr.read().decode()[-2000:]
        assert time.monotonic() < waited
        time.sleep(0.05)
    time.sleep(0.5)  # a few bytes in
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=20) == -signal.SIGTERM  # ends as SIGTERM ends a process, after cleaning up
    assert _files(cache) == []


def test_what_a_killed_download_left_is_removed_by_the_next_one(server, tmp_path):
    """SIGKILL cannot be caught: the next download into the folder removes what a dead process of this machine
    left (and leaves the temporary files of live processes alone)."""
    cache = tmp_path / "cache"
    cache.mkdir()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    host = socket.gethostname()
    stale = cache / f".m.safetensors.{host}-{dead.pid}.0123abcd.part"
    alive = cache / f".other.safetensors.{host}-{os.getpid()}.4567cdef.part"
    stale.write_bytes(b"half")
    alive.write_bytes(b"half")
    zoo.download(f"{server}/good.safetensors", None, cache, "m.safetensors")
    assert not stale.exists() and alive.exists()


def test_a_download_larger_than_its_registry_entry_is_stopped_early(hostile_registry, hostile, tmp_path, weights):
    with pytest.raises(zoo.ModelError, match=rf"endless.safetensors: larger than the {weights.stat().st_size} bytes"):
        zoo.resolve("endless")
    assert _Hostile.sent["endless"] < 64 << 20  # stopped early, not after the server's gigabytes
    assert _files(tmp_path / "cache") == []


def test_a_huge_web_page_is_refused_from_its_first_bytes(hostile_registry, hostile, tmp_path):
    with pytest.raises(zoo.ModelError, match="web page, not model weights"):
        zoo.resolve(f"{hostile}/endless-page.safetensors")
    assert _Hostile.sent["endless-page"] < 64 << 20
    with pytest.raises(zoo.ModelError, match="web page, not model weights"):
        zoo.resolve("endless-page")  # with a checksum too: refused as a page, early, not after the whole body
    assert _files(tmp_path / "cache") == []


def test_a_url_of_unknown_size_is_stopped_at_the_general_limit(registry, hostile, tmp_path, monkeypatch):
    import nucleiseg.models.fetch as fetch

    monkeypatch.setattr(fetch, "MAX_UNKNOWN_BYTES", 1 << 20)
    with pytest.raises(zoo.ModelError, match=r"larger than the 1048576 bytes"):
        zoo.resolve(f"{hostile}/endless.safetensors#sha256={'0' * 64}")
    assert _files(tmp_path / "cache") == []


def test_a_url_model_without_checksum_is_trusted_on_first_use_then_checked(registry, server, tmp_path, caplog):
    url = f"{server}/good.safetensors"
    digest = hashlib.sha256((registry / "tiny.safetensors").read_bytes()).hexdigest()
    with caplog.at_level(logging.INFO, logger="nucleiseg"):
        path, _ = zoo.resolve(url)
    said = [r.getMessage() for r in caplog.records if "trust on first use" in r.getMessage()]
    assert len(said) == 1 and digest in said[0]
    assert zoo.resolve(url)[0] == path  # unchanged: used as it is
    path.write_bytes(b"x" + path.read_bytes()[1:])  # damaged in the cache
    with pytest.raises(zoo.ModelError, match=rf"has SHA-256 [0-9a-f]{{64}}, but {digest} was recorded") as error:
        zoo.resolve(url)
    assert "\n" not in str(error.value)


def test_a_web_page_that_starts_with_a_byte_order_mark_is_recognised(registry, server, tmp_path):
    with pytest.raises(zoo.ModelError, match="web page, not model weights"):
        zoo.resolve(f"{server}/bom.safetensors")
    assert _files(tmp_path / "cache") == []


def test_a_misspelt_model_name_gets_the_closest_names(registry):
    with pytest.raises(zoo.ModelError, match=r"--model defualt: .*did you mean default\?"):
        zoo.resolve("defualt")
    with pytest.raises(zoo.ModelError, match=r"--model tinny: .*did you mean tiny\?"):
        zoo.resolve("tinny")
    with pytest.raises(zoo.ModelError) as error:
        zoo.resolve("zzzzzz")
    assert "did you mean" not in str(error.value)


def test_models_card_default_prints_the_shipped_models_card(capsys):
    default, entries = zoo.registry()
    assert cli(["models", "--card", "default"]) == 0
    assert capsys.readouterr().out.strip() == (zoo.PRETRAINED / entries[default].card).read_text().strip()


def test_models_card_names_the_default_and_any_registered_model(registry, capsys):
    assert cli(["models", "--card", "default"]) == 0
    tiny = capsys.readouterr().out
    assert cli(["models", "--card", "tiny"]) == 0 and capsys.readouterr().out == tiny
    assert "tiny" in tiny and "default" in tiny
    assert cli(["models", "--card", "published"]) == 0  # no card file: one made from its registry entry
    card = capsys.readouterr().out
    assert "/good.safetensors" in card and "size_bytes" not in card and "0.5 um/px" in card
    assert cli(["models", "--card", "defualt"]) == 2
    assert "did you mean default?" in capsys.readouterr().err
