import hashlib
import http.server
import io
import logging
import socket
import threading
import zipfile
from dataclasses import replace

import pytest

from nucleiseg.data.download import ARCHIVES, Archive, DownloadError, archives_of, download
from nucleiseg.data.typed.pannuke import find_pannuke
from tests.data.typed.formats import write_pannuke


class FilesHandler(http.server.BaseHTTPRequestHandler):
    """Serves several payloads by path, honouring ``Range: bytes=N-``; a path in ``interrupt`` gets half its body
    on the first request and then the connection closes, as a dropped transfer does."""

    payloads: dict[str, bytes] = {}
    interrupt: set[str] = set()
    requests: list[tuple[str, str]] = []

    def do_GET(self):  # http.server's naming
        body = self.payloads[self.path]
        header = self.headers.get("Range") or ""
        type(self).requests.append((self.path, header))
        start = int(header.split("=")[1].rstrip("-")) if header else 0
        self.send_response(206 if header else 200)
        self.send_header("Content-Length", str(len(body) - start))
        self.end_headers()
        if self.path in self.interrupt:
            type(self).interrupt = self.interrupt - {self.path}
            self.wfile.write(body[start : start + (len(body) - start) // 2])
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_RDWR)
            return
        self.wfile.write(body[start:])

    def log_message(self, *args):
        pass


def _zip_of(folder) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as bundle:
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                bundle.write(path, path.relative_to(folder).as_posix())
    return buffer.getvalue()


@pytest.fixture
def pannuke_server(tmp_path):
    """The three PanNuke fold zips, as released (``Fold N/...``), served on 127.0.0.1."""
    for fold in (1, 2, 3):
        release = tmp_path / f"release{fold}"
        write_pannuke(release, {fold: [[(0, 1, 4, 4, 5)], []]})
        FilesHandler.payloads[f"/fold_{fold}.zip"] = _zip_of(release)
    FilesHandler.interrupt, FilesHandler.requests = set(), []
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), FilesHandler)
    threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    base = f"http://127.0.0.1:{httpd.server_address[1]}"
    entries = tuple(
        replace(
            archive,
            url=f"{base}/{archive.filename}",
            checksum=hashlib.sha256(FilesHandler.payloads[f"/{archive.filename}"]).hexdigest(),
        )
        for archive in archives_of("pannuke")
    )
    yield {"pannuke": entries}, base
    httpd.shutdown()


def test_the_three_folds_download_verify_unpack_and_read(tmp_path, pannuke_server):
    archives, _ = pannuke_server
    folder = download("pannuke", tmp_path / "data", archives=archives)
    assert folder == tmp_path / "data" / "pannuke"
    assert sorted(p.name for p in folder.glob(".*.unpacked")) == [f".fold_{n}.zip.unpacked" for n in (1, 2, 3)]
    assert [s.name for s in find_pannuke(folder)] == [f"fold{n}_{k:04d}" for n in (1, 2, 3) for k in (0, 1)]
    assert len(FilesHandler.requests) == 3
    download("pannuke", tmp_path / "data", archives=archives)  # all there: nothing fetched again
    assert len(FilesHandler.requests) == 3


def test_an_interrupted_fold_resumes_where_it_stopped(tmp_path, pannuke_server):
    archives, _ = pannuke_server
    FilesHandler.interrupt = {"/fold_2.zip"}
    with pytest.raises(
        DownloadError, match=r"fold_2.zip stopped \(the connection closed after .*run the command again"
    ):
        download("pannuke", tmp_path / "data", archives=archives)
    part = tmp_path / "data" / "pannuke" / "fold_2.zip.part"
    half = len(FilesHandler.payloads["/fold_2.zip"]) // 2
    assert part.stat().st_size == half and (tmp_path / "data" / "pannuke" / "Fold 1").is_dir()
    download("pannuke", tmp_path / "data", archives=archives)
    assert [r for r in FilesHandler.requests if r[0] == "/fold_2.zip"] == [
        ("/fold_2.zip", ""),
        ("/fold_2.zip", f"bytes={half}-"),
    ]
    assert [r[0] for r in FilesHandler.requests].count("/fold_1.zip") == 1
    assert (tmp_path / "data" / "pannuke" / "fold_2.zip").read_bytes() == FilesHandler.payloads["/fold_2.zip"]
    assert len(find_pannuke(tmp_path / "data" / "pannuke")) == 6


def test_a_checksum_mismatch_is_set_aside_and_not_unpacked(tmp_path, pannuke_server):
    archives, _ = pannuke_server
    wrong = {"pannuke": (*archives["pannuke"][:2], replace(archives["pannuke"][2], checksum="0" * 64))}
    with pytest.raises(DownloadError, match=r"fold_3.zip: sha256 is [0-9a-f]{64}, expected 0{64}"):
        download("pannuke", tmp_path / "data", archives=wrong)
    folder = tmp_path / "data" / "pannuke"
    assert (folder / "fold_3.zip.corrupt").is_file() and not (folder / "fold_3.zip").exists()
    assert (folder / "Fold 2").is_dir() and not (folder / "Fold 3").exists()


def test_without_a_published_checksum_it_warns_and_never_pretends(tmp_path, pannuke_server, caplog):
    archives, base = pannuke_server
    unverified = replace(archives["pannuke"][0], dataset="consep", algorithm=None, checksum=None)
    with caplog.at_level(logging.WARNING, logger="nucleiseg.data.download"):
        folder = download("consep", tmp_path, archives={"consep": unverified})
    digest = hashlib.sha256(FilesHandler.payloads["/fold_1.zip"]).hexdigest()
    assert f"no checksum is published for consep, so it cannot be verified (its sha256 is {digest}" in caplog.text
    assert (folder / "Fold 1").is_dir() and (folder / ".unpacked").read_text() == digest


def test_a_dataset_without_a_direct_link_says_where_to_get_it_then_takes_the_file(tmp_path, pannuke_server, caplog):
    consep = ARCHIVES["consep"]
    assert isinstance(consep, Archive) and consep.url is None and consep.checksum is None
    with pytest.raises(DownloadError) as error:
        download("consep", tmp_path)
    message = str(error.value)
    assert "consep_dataset.zip cannot be downloaded automatically" in message
    assert "warwick.ac.uk/fac/cross_fac/tia/data/hovernet" in message and "Train|Test/Images" in message
    (tmp_path / "consep" / "consep_dataset.zip").write_bytes(FilesHandler.payloads["/fold_1.zip"])
    with caplog.at_level(logging.WARNING, logger="nucleiseg.data.download"):
        assert download("consep", tmp_path) == tmp_path / "consep"
    assert "cannot be verified" in caplog.text and (tmp_path / "consep" / "Fold 1").is_dir()


def test_registry_entries_name_licence_source_and_checksum():
    assert isinstance(ARCHIVES["tnbc"], Archive) and isinstance(ARCHIVES["monuseg-test"], Archive)
    for dataset in ("pannuke", "consep", "lizard", "conic", "monusac"):
        for archive in archives_of(dataset):
            assert archive.dataset == dataset and archive.licence and archive.note
            assert archive.url is None or archive.url.startswith("https://")
            if archive.checksum is not None:
                assert archive.algorithm == "sha256" and len(archive.checksum) == 64
                assert int(archive.checksum, 16) >= 0
    assert [a.filename for a in archives_of("pannuke")] == ["fold_1.zip", "fold_2.zip", "fold_3.zip"]
    assert len(archives_of("lizard")) == 3 and len(archives_of("monusac")) == 2
    assert all(
        a.licence.startswith("CC BY-NC-SA 4.0") for d in ("pannuke", "lizard", "monusac") for a in archives_of(d)
    )
