"""Downloads of model files into the cache, and the checks that keep the cache honest (:mod:`nucleiseg.models.zoo`
names the models; this module fetches and verifies their files).

A download is streamed into a temporary file beside its place in the cache and renamed into place only when it is
complete and right. It is stopped, and nothing kept, when it answers a web page (seen in its first bytes), grows past
the size its registry entry gives (a URL: past :data:`MAX_UNKNOWN_BYTES`), takes longer than its deadline
(:func:`download_deadline`), fails, or the process is ended by SIGTERM/SIGHUP; what a SIGKILL left is removed by the
next download into the folder. Every cached file is checked against its SHA-256 (published, or recorded at its
first download) before it is used. Our own code rather than pooch: pooch has no overall deadline, no size limit and
leaves its temporary file behind on SIGTERM.
"""

from __future__ import annotations

import hashlib
import logging
import os
import secrets
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from nucleiseg.util.errors import NucleisegError, first_line

log = logging.getLogger(__name__)

# How long a whole download may take, unless NUCLEISEG_DOWNLOAD_DEADLINE (seconds) says: the size at the slowest
# line we wait for (100 kB/s, 0.8 Mbit/s), plus two minutes for the start (DNS, redirects, a slow first byte); an
# hour when the size is not known (a URL). The default model (7.8 MB) gets 198 s, a 100 MB model 17 min.
DEADLINE_ENV = "NUCLEISEG_DOWNLOAD_DEADLINE"
MIN_DEADLINE_S = 120.0
SLOWEST_RATE = 100_000  # bytes per second
UNKNOWN_SIZE_DEADLINE_S = 3600.0
# A URL without a registry entry has no size to hold it to: the largest of the paper's networks (DenseNet-201 U-Net)
# is under 100 MB, so 2 GiB stops a junk answer long before it fills a disk and never stops a model.
MAX_UNKNOWN_BYTES = 2 << 30
CHUNK = 1 << 16
TEMPORARY_SUFFIX = ".part"
WEB_PAGE_STARTS = (b"<!doctype html", b"<html", b"<?xml", b"<head", b"<body", b"<!--")


class ModelError(NucleisegError):
    """A model cannot be found, downloaded or verified; the message says which and why."""


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def verify(path: Path, expected: str, what: str) -> Path:
    """``path`` if its SHA-256 is ``expected``; else a :class:`ModelError` with both hashes."""
    found = file_sha256(path)
    if found != expected.lower():
        raise ModelError(
            f"{what}: {path} has SHA-256 {found}, expected {expected}: damaged or not the published file; it is "
            "refused (delete it to download it again)"
        )
    return path


def recorded_sha256(path: Path) -> str | None:
    """The SHA-256 recorded beside a cached file when it was downloaded (``NAME.sha256``), or None."""
    try:
        text = path.with_name(path.name + ".sha256").read_text().strip()
    except OSError:
        return None
    return text if len(text) == 64 else None


def record_sha256(path: Path, digest: str) -> None:
    """Record ``digest`` as the SHA-256 of the cached file ``path`` (written atomically, beside it)."""
    from nucleiseg.util.writing import write_bytes_atomic

    write_bytes_atomic(path.with_name(path.name + ".sha256"), f"{digest}\n".encode())


def cached_copy(path: Path, expected: str | None, what: str) -> Path | None:
    """``path`` when the cache holds it as it was downloaded (its SHA-256 is ``expected``, else the one recorded at
    download); None when it must be downloaded (absent, unrecorded, or changed: said in a warning)."""
    if not path.is_file():
        return None
    expected = (expected or recorded_sha256(path) or "").lower()
    if not expected:
        log.info("%s: %s has no SHA-256 recorded; downloading it again", what, path)
        return None
    found = file_sha256(path)
    if found == expected:
        return path
    log.warning("%s: the cached %s has SHA-256 %s, expected %s; downloading it again", what, path, found, expected)
    return None


def download_deadline(size_bytes: int | None) -> float:
    """Seconds a whole download may take: ``NUCLEISEG_DOWNLOAD_DEADLINE`` when set, else :data:`MIN_DEADLINE_S` plus
    the size at :data:`SLOWEST_RATE`, else (size unknown) :data:`UNKNOWN_SIZE_DEADLINE_S`."""
    given = os.environ.get(DEADLINE_ENV)
    if given:
        try:
            seconds = float(given)
        except ValueError:
            seconds = -1.0
        if not seconds > 0:
            raise ModelError(f"{DEADLINE_ENV}={given!r}: expected seconds above 0 for a whole download")
        return seconds
    if size_bytes:
        return MIN_DEADLINE_S + size_bytes / SLOWEST_RATE
    return UNKNOWN_SIZE_DEADLINE_S


class Terminated(BaseException):  # noqa: N818 - a signal, like KeyboardInterrupt, not an error
    """SIGTERM or SIGHUP arrived inside :func:`cleanup_on_termination`."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


@contextmanager
def cleanup_on_termination() -> Iterator[None]:
    """Within the block, SIGTERM and SIGHUP raise :class:`Terminated`, so the block's ``finally`` and ``except``
    clauses remove its temporary files; then the signal goes to the handler that was there before (by default the
    process ends as the signal ends it). Outside the main thread (where signals cannot be handled) a no-op."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous: dict[int, Any] = {}

    def interrupt(signum: int, frame: Any) -> None:
        raise Terminated(signum)

    for signum in (signal.SIGTERM, getattr(signal, "SIGHUP", None)):
        if signum is not None and signal.getsignal(signum) is not signal.SIG_IGN:
            previous[signum] = signal.signal(signum, interrupt)

    def restore() -> None:
        for signum, handler in previous.items():
            signal.signal(signum, signal.SIG_DFL if handler is None else handler)
        previous.clear()

    try:
        yield
    except Terminated as stop:
        restore()
        signal.raise_signal(stop.signum)  # the handler before ours: by default, the end of the process
        raise ModelError(f"interrupted by {signal.Signals(stop.signum).name}") from None
    finally:
        restore()


def _this_host() -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in socket.gethostname())[:64] or "host"


def temporary_name(target: Path) -> Path:
    """A temporary file beside ``target`` that names this machine and process, so that a later download can tell
    what a killed process left (:func:`remove_stale_temporaries`)."""
    return target.parent / f".{target.name}.{_this_host()}-{os.getpid()}.{secrets.token_hex(4)}{TEMPORARY_SUFFIX}"


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # another user's process: alive
        return True
    return True


def remove_stale_temporaries(folder: Path) -> None:
    """Remove the temporary files (or folders) of downloads into ``folder`` whose process on this machine is gone:
    SIGKILL, a power cut. Those of live processes, and of other machines sharing the folder, are left alone."""
    import shutil

    host = _this_host()
    for path in folder.glob(f".*{TEMPORARY_SUFFIX}"):
        owner = path.name.removesuffix(TEMPORARY_SUFFIX).rsplit(".", 2)
        pid = owner[1].removeprefix(f"{host}-") if len(owner) == 3 and owner[1].startswith(f"{host}-") else ""
        if not pid.isdigit() or _process_alive(int(pid)):
            continue
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)


def writable_cache_folder(folder: Path, needed_for: str) -> Path:
    """``folder`` created and writable, or a :class:`ModelError` naming it and ``NUCLEISEG_CACHE``."""
    probe = folder / f".write-test.{os.getpid()}.{secrets.token_hex(4)}"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as error:
        raise ModelError(
            f"{folder}: the model cache is not writable ({error.strerror or type(error).__name__}); {needed_for} "
            "needs it: set NUCLEISEG_CACHE to a folder you can write"
        ) from None
    return folder


def looks_like_web_page(head: bytes) -> bool:
    """Whether the first bytes of a download are an HTML/XML page (a login wall, an error page) rather than weights;
    byte order marks and leading white space are skipped."""
    for mark, codec in ((b"\xef\xbb\xbf", "utf-8"), (b"\xff\xfe", "utf-16-le"), (b"\xfe\xff", "utf-16-be")):
        if head.startswith(mark):
            head = head[len(mark) :].decode(codec, errors="ignore").encode("ascii", errors="ignore")
            break
    return head.lstrip().lower().startswith(WEB_PAGE_STARTS)


@contextmanager
def _progress_bar(total: int | None, label: str) -> Iterator[Callable[[int], None]]:
    """``advance(bytes)`` on a progress bar when stderr is a terminal; a no-op otherwise."""
    if not sys.stderr.isatty():
        yield lambda _: None
        return
    from rich.progress import DownloadColumn, Progress, TransferSpeedColumn

    with Progress(*Progress.get_default_columns(), DownloadColumn(), TransferSpeedColumn(), transient=True) as bar:
        task = bar.add_task(label, total=total)
        yield lambda size: bar.advance(task, size)


def _stream(url: str, temporary: Path, size_limit: int, limit_source: str, timeout: float, deadline: float) -> str:
    """Stream ``url`` into ``temporary``; the SHA-256 of what was written. Stopped with a :class:`ModelError` at a web
    page (from its first bytes), past ``size_limit`` bytes or past ``deadline`` seconds (checked at every read, each
    read waiting at most ``timeout``)."""
    import requests

    started = time.monotonic()
    digest, size, head = hashlib.sha256(), 0, b""
    with requests.get(url, stream=True, timeout=timeout, headers={"Accept-Encoding": "identity"}) as response:
        response.raise_for_status()
        declared = response.headers.get("Content-Length", "")
        if declared.isdigit() and int(declared) > size_limit:
            raise ModelError(f"{url}: larger than the {size_limit} bytes {limit_source} ({declared} bytes announced)")
        total = int(declared) if declared.isdigit() else None
        with temporary.open("wb") as handle, _progress_bar(total, url.rsplit("/", 1)[-1][:40]) as advance:
            while chunk := response.raw.read1(CHUNK, decode_content=True):  # what arrived, however little
                size += len(chunk)
                if len(head) < 512:
                    head += chunk[: 512 - len(head)]
                    if looks_like_web_page(head):
                        raise ModelError(
                            f"{url}: the server answered with a web page, not model weights (a login or error page?); "
                            "nothing kept"
                        )
                if size > size_limit:
                    raise ModelError(
                        f"{url}: larger than the {size_limit} bytes {limit_source}; stopped at {size} bytes, nothing "
                        "kept"
                    )
                if time.monotonic() - started > deadline:
                    raise ModelError(
                        f"{url}: the download did not finish within {deadline:.0f} s ({size} bytes received; "
                        f"{DEADLINE_ENV} sets the limit in seconds); nothing kept"
                    )
                digest.update(chunk)
                handle.write(chunk)
                advance(len(chunk))
    return digest.hexdigest()


def download(
    url: str,
    sha256: str | None,
    folder: Path,
    file_name: str,
    timeout: float = 30.0,
    size_bytes: int | None = None,
    deadline: float | None = None,
) -> Path:
    """``folder/file_name``, downloaded from ``url`` once and checked (against ``sha256``; without it, against the
    SHA-256 recorded at its first download: trust on first use). ``size_bytes``: the size the registry gives (a
    larger answer is stopped; default :data:`MAX_UNKNOWN_BYTES`); ``timeout``: seconds per connection or read;
    ``deadline``: seconds for the whole download (default :func:`download_deadline`). A failed, stopped, wrong or
    interrupted download leaves nothing in ``folder``; errors are one line naming the URL."""
    import requests
    import urllib3

    target = folder / file_name
    recorded = recorded_sha256(target) if sha256 is None and target.is_file() else None
    if recorded is not None:  # trusted on first use: checked at every later use
        found = file_sha256(target)
        if found != recorded:
            raise ModelError(
                f"{url}: the cached {target} has SHA-256 {found}, but {recorded} was recorded when it was downloaded "
                "(trust on first use): it changed since, and is refused (delete it to download it again)"
            )
        return target
    cached = cached_copy(target, sha256, url)
    if cached is not None:
        return cached
    writable_cache_folder(folder, f"the download of {url}")
    remove_stale_temporaries(folder)
    target.with_name(target.name + ".sha256").unlink(missing_ok=True)  # the record of a copy being replaced
    deadline = download_deadline(size_bytes) if deadline is None else deadline
    limit, limit_source = (size_bytes, "its registry entry gives") if size_bytes else (MAX_UNKNOWN_BYTES, "allowed")
    temporary = temporary_name(target)
    with cleanup_on_termination():
        try:
            try:
                found = _stream(url, temporary, limit, limit_source, timeout, deadline)
                if sha256 and found != sha256.lower():
                    raise ModelError(
                        f"{url}: the download is not the published file (SHA-256 {found}, expected {sha256}); "
                        "nothing kept"
                    )
                os.replace(temporary, target)
                record_sha256(target, found)  # (a copy left without its record is downloaded again)
            except (requests.exceptions.RequestException, urllib3.exceptions.HTTPError) as error:
                reason = f"{type(error).__name__}: {first_line(error, 160)}"
                raise ModelError(f"{url}: could not be downloaded ({reason})") from None
            except OSError as error:  # the disk: full, or gone read-only
                raise ModelError(f"{url}: could not be written into {folder} ({first_line(error, 160)})") from None
        finally:
            temporary.unlink(missing_ok=True)
    if sha256 is None:
        log.info(
            "%s: no #sha256=HEX given: recorded SHA-256 %s of this first download (trust on first use); every later "
            "use of the cached copy is checked against it",
            url,
            found,
        )
    return target
