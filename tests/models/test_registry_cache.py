"""Models from MLflow (``models:/NAME/VERSION``, ``--run-id``) in the local cache: one entry per store and model
version source, checked against the SHA-256 recorded when it was downloaded."""

import hashlib
import logging
from pathlib import Path

import pytest
import torch

from nucleiseg.inference.checkpoint import write_model_checkpoint
from nucleiseg.models.factory import create_model


def _checkpoint(folder: Path, seed: int) -> Path:
    """A tiny modified U-Net's checkpoint, ``folder/model.ckpt`` (the name the artifact has in MLflow)."""
    torch.manual_seed(seed)
    model = create_model("unet_bn", unet_widths=(2, 4))
    folder.mkdir(parents=True)
    return write_model_checkpoint(folder / "model.ckpt", model, {"encoder": "unet_bn", "unet_widths": [2, 4]})


def _store_with_a_model(root: Path, seed: int) -> tuple[str, str, bytes]:
    """A SQLite MLflow store under ``root`` whose registry holds ``nuclei`` version 1, and ``no-weights`` version 1
    (a run without its checkpoint artifact): ``(uri, nuclei's run id, its checkpoint's bytes)``."""
    from mlflow.tracking import MlflowClient

    from nucleiseg.tracking.registry import register_model

    uri = f"sqlite:///{root / 'mlflow.db'}"
    client = MlflowClient(uri)
    experiment = client.create_experiment("models", artifact_location=(root / "artifacts").as_uri())
    run, empty = (client.create_run(experiment).info.run_id for _ in range(2))
    checkpoint = _checkpoint(root / "checkpoint", seed)
    client.log_artifact(run, str(checkpoint), "checkpoint")
    for each in (run, empty):
        client.set_terminated(each)
    assert register_model(uri, run, "nuclei", "# card") == "1"
    assert register_model(uri, empty, "no-weights", "# card") == "1"
    return uri, run, checkpoint.read_bytes()


@pytest.fixture(scope="module")
def two_stores(tmp_path_factory):
    """Two stores, each with a different model registered as ``nuclei`` version 1."""
    root = tmp_path_factory.mktemp("stores")
    return _store_with_a_model(root / "a", 1), _store_with_a_model(root / "b", 2)


def _files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file()) if folder.exists() else []


def test_the_same_name_and_version_in_two_stores_are_two_models(two_stores, tmp_path):
    from nucleiseg.tracking.registry import registered_checkpoint

    (uri_a, _, bytes_a), (uri_b, _, bytes_b) = two_stores
    assert bytes_a != bytes_b
    first = registered_checkpoint(uri_a, "models:/nuclei/1", tmp_path / "cache")
    second = registered_checkpoint(uri_b, "models:/nuclei/latest", tmp_path / "cache")
    assert first.read_bytes() == bytes_a and second.read_bytes() == bytes_b
    assert registered_checkpoint(uri_a, "models:/nuclei/latest", tmp_path / "cache") == first  # cached, per store


def test_a_cached_registry_model_that_changed_is_downloaded_again(two_stores, tmp_path, caplog):
    from nucleiseg.tracking.registry import registered_checkpoint

    (uri, _, expected), _ = two_stores
    path = registered_checkpoint(uri, "models:/nuclei/1", tmp_path / "cache")
    path.write_bytes(path.read_bytes()[:100])  # truncated, or damaged, in the cache
    with caplog.at_level(logging.WARNING, logger="nucleiseg"):
        again = registered_checkpoint(uri, "models:/nuclei/1", tmp_path / "cache")
    assert again.read_bytes() == expected
    assert any("downloading it again" in r.getMessage() and str(path) in r.getMessage() for r in caplog.records)


def test_a_version_without_its_checkpoint_is_one_line_and_leaves_nothing(two_stores, tmp_path):
    from nucleiseg.tracking.registry import registered_checkpoint

    (uri, _, _), _ = two_stores
    with pytest.raises(ValueError, match=r"models:/no-weights/1: version 1 has no checkpoint/model.ckpt") as error:
        registered_checkpoint(uri, "models:/no-weights/1", tmp_path / "cache")
    assert "\n" not in str(error.value) and _files(tmp_path / "cache") == []


def test_a_run_checkpoint_in_the_cache_is_keyed_by_store_and_checked(two_stores, tmp_path, monkeypatch, caplog):
    from nucleiseg.tracking.artifacts import run_checkpoint

    monkeypatch.setenv("NUCLEISEG_CACHE", str(tmp_path / "cache"))
    (uri_a, run_a, bytes_a), (uri_b, run_b, bytes_b) = two_stores
    path = run_checkpoint(run_a, uri_a)
    assert path.read_bytes() == bytes_a and run_checkpoint(run_b, uri_b).read_bytes() == bytes_b
    record = hashlib.sha256(bytes_a).hexdigest()
    assert record in " ".join(p.read_text() for p in _files(tmp_path / "cache") if p.suffix == ".sha256")
    path.write_bytes(b"x" + bytes_a[1:])
    with caplog.at_level(logging.WARNING, logger="nucleiseg"):
        assert run_checkpoint(run_a, uri_a).read_bytes() == bytes_a
    assert any("downloading it again" in r.getMessage() for r in caplog.records)
