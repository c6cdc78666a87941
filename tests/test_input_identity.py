"""Inputs are identified by their whole content: two large files that differ only between the bytes an older
version sampled are two inputs; the hash is cached by the file's identity on disk, and any change is seen."""

import os

import pytest

import nucleiseg.predict.input_identity as identity_module
from nucleiseg.predict.input_identity import describe_input, input_identity, same_input

SIZE = 66 * 2**20  # over the 64 MiB above which the old identity sampled 4 MiB at each end and 16 blocks between


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("NUCLEISEG_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache" / "input-hashes.sqlite"


def _large(path, changed_at=None):
    with path.open("wb") as handle:
        handle.truncate(SIZE)
    if changed_at is not None:
        with path.open("r+b") as handle:
            handle.seek(changed_at)
            handle.write(b"\x01")
    return path


def test_two_large_files_that_differ_between_the_old_samples_are_two_inputs(tmp_path, cache):
    first = _large(tmp_path / "a.tif")
    second = _large(tmp_path / "b.tif", changed_at=4 * 2**20 + 1000)  # after the first 4 MiB, before block 1
    a, b = input_identity(first), input_identity(second)
    assert a["size"] == b["size"] and a["hashed"] == b["hashed"] == "whole"
    assert not same_input(a, b) and same_input(a, input_identity(first))


def test_the_hash_is_cached_and_a_change_in_place_is_seen(tmp_path, cache, monkeypatch):
    path = _large(tmp_path / "slide.tif")
    before = input_identity(path)
    assert cache.is_file()
    monkeypatch.setattr(identity_module, "file_sha256", lambda p: pytest.fail("hashed again, not cached"))
    assert input_identity(path) == before  # the cache answers
    monkeypatch.undo()
    stat = path.stat()
    with path.open("r+b") as handle:  # the same size, and its modification time set back afterwards
        handle.seek(SIZE // 2)
        handle.write(b"\x02")
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    after = input_identity(path)
    assert after["mtime_ns"] == before["mtime_ns"] and after["sha256"] != before["sha256"]


def test_a_read_only_cache_still_identifies(tmp_path, monkeypatch):
    cache = tmp_path / "ro"
    cache.mkdir()
    cache.chmod(0o500)
    monkeypatch.setenv("NUCLEISEG_CACHE", str(cache))
    path = tmp_path / "small.png"
    path.write_bytes(b"x" * 100)
    try:
        assert input_identity(path)["sha256"] == identity_module.file_sha256(path)
    finally:
        cache.chmod(0o700)


def test_outputs_of_an_older_sampled_identity_are_never_the_same_input(tmp_path, cache):
    path = _large(tmp_path / "slide.tif")
    now = input_identity(path)
    old = {**now, "hashed": "sampled"}
    assert not same_input(old, now)
    assert "older version" in describe_input(old)
