import hashlib
import http.server
import threading
import time
import zipfile
from dataclasses import replace
from pathlib import Path

import pytest

from nucleiseg.data.download import ARCHIVES, Archive, DownloadError, download


class RangeHandler(http.server.BaseHTTPRequestHandler):
    """Serves one payload, honouring ``Range: bytes=N-`` like Zenodo does."""

    payload = b""
    requests: list[str] = []

    def do_GET(self):  # http.server's naming
        start = 0
        header = self.headers.get("Range")
        type(self).requests.append(header or "")
        if header:
            start = int(header.split("=")[1].rstrip("-"))
            self.send_response(206)
        else:
            self.send_response(200)
        body = self.payload[start:]
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def server(tmp_path):
    archive = tmp_path / "src.zip"
    with zipfile.ZipFile(archive, "w") as bundle:
        bundle.writestr("TNBC_NucleiSegmentation/Slide_01/01_1.png", b"x" * 5000)
    RangeHandler.payload = archive.read_bytes()
    RangeHandler.requests = []
    httpd = http.server.HTTPServer(("127.0.0.1", 0), RangeHandler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield httpd
    httpd.shutdown()


def _archive(server, checksum=None) -> dict[str, Archive]:
    digest = checksum or hashlib.sha256(RangeHandler.payload).hexdigest()
    url = f"http://127.0.0.1:{server.server_address[1]}/file.zip"
    return {"tnbc": replace(ARCHIVES["tnbc"], url=url, checksum=digest)}


def test_downloads_verifies_and_unpacks(tmp_path, server):
    folder = download("tnbc", tmp_path / "data", archives=_archive(server))
    assert (folder / "TNBC_NucleiSegmentation" / "Slide_01" / "01_1.png").read_bytes() == b"x" * 5000
    assert (folder / "TNBC_NucleiSegmentation.zip").is_file()
    assert not list(folder.glob("*.part"))


def test_resumes_a_partial_download(tmp_path, server):
    target = tmp_path / "data" / "tnbc"
    target.mkdir(parents=True)
    half = len(RangeHandler.payload) // 2
    (target / "TNBC_NucleiSegmentation.zip.part").write_bytes(RangeHandler.payload[:half])
    download("tnbc", tmp_path / "data", archives=_archive(server))
    assert RangeHandler.requests == [f"bytes={half}-"]
    assert (target / "TNBC_NucleiSegmentation.zip").read_bytes() == RangeHandler.payload


def test_checksum_mismatch_is_refused_and_set_aside(tmp_path, server):
    with pytest.raises(DownloadError, match="sha256 is .* expected 0000"):
        download("tnbc", tmp_path / "data", archives=_archive(server, checksum="0" * 64))
    folder = tmp_path / "data" / "tnbc"
    assert (folder / "TNBC_NucleiSegmentation.zip.corrupt").is_file()
    assert not (folder / "TNBC_NucleiSegmentation.zip").exists()
    assert not (folder / "TNBC_NucleiSegmentation").exists()


def test_offline_fails_fast_and_says_where_to_get_the_files(tmp_path):
    closed = {"tnbc": replace(ARCHIVES["tnbc"], url="http://127.0.0.1:9/file.zip")}
    started = time.perf_counter()
    with pytest.raises(DownloadError) as error:
        download("tnbc", tmp_path, archives=closed, timeout=3)
    assert time.perf_counter() - started < 5
    message = str(error.value)
    assert "zenodo.org/records/1175282" in message and "Slide_01" in message and str(Path(tmp_path)) in message


def test_unknown_dataset_lists_the_known_ones(tmp_path):
    with pytest.raises(DownloadError, match="monuseg"):
        download("kumar", tmp_path)
