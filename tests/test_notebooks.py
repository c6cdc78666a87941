"""The notebooks run headlessly against a small MLflow store made here, so they cannot rot."""

from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from tests.conftest import REPO
from tests.tracking.test_report import make_study

NOTEBOOKS = sorted((REPO / "notebooks").glob("*.ipynb"))
STUDY_NOTEBOOKS = [p for p in NOTEBOOKS if p.name in ("loss_curves.ipynb", "results.ipynb")]


def test_there_are_notebooks_and_none_has_committed_outputs():
    assert {p.name for p in NOTEBOOKS} == {"loss_curves.ipynb", "results.ipynb", "segment.ipynb"}
    for path in NOTEBOOKS:
        cells = nbformat.read(path, as_version=4).cells
        assert all(not c.get("outputs") and c.get("execution_count") is None for c in cells if c.cell_type == "code")


@pytest.fixture(scope="module")
def study_store(tmp_path_factory):
    uri = f"sqlite:///{tmp_path_factory.mktemp('nb') / 'mlflow.db'}"
    make_study(uri, "nbstudy")
    return uri


@pytest.mark.parametrize("path", STUDY_NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_executes(path: Path, study_store, monkeypatch):
    monkeypatch.setenv("NUCLEISEG_TRACKING_URI", study_store)
    monkeypatch.setenv("NUCLEISEG_STUDY", "nbstudy")
    notebook = nbformat.read(path, as_version=4)
    NotebookClient(
        notebook, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}}
    ).execute()
    text = "\n".join(
        output.get("text", "") + str(output.get("data", {}).get("text/plain", ""))
        for cell in notebook.cells
        if cell.cell_type == "code"
        for output in cell.outputs
    )
    assert "6 runs in study 'nbstudy'" in text and "study 'nbstudy' (set NUCLEISEG_STUDY" in text
    if path.name == "results.ipynb":
        assert "best configuration: Modified U-Net (BatchNorm) (median Jaccard 0.650" in text
    else:
        assert "DenseNet-121 (ImageNet)" in text


def test_without_a_study_named_the_latest_one_is_read(tmp_path):
    import time

    from nucleiseg.tracking.study import resolve_study
    from tests.tracking.test_report import add_run

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = make_study(uri, "older")
    time.sleep(0.01)
    add_run(client, client.create_experiment("newer"), "unet", False, 0, 0.5, [(1.0, 1.0)])
    assert resolve_study(uri) == "newer" and resolve_study(uri, "older") == "older"


def test_the_segment_notebook_finds_nuclei_with_the_default_model(tmp_path):
    """nucleiseg.segment in a notebook, with the model shipped in the package (no checkpoint, no training)."""
    path = REPO / "notebooks" / "segment.ipynb"
    notebook = nbformat.read(path, as_version=4)
    NotebookClient(
        notebook, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    ).execute()
    text = "\n".join(
        output.get("text", "") + str(output.get("data", {}).get("text/plain", ""))
        for cell in notebook.cells
        if cell.cell_type == "code"
        for output in cell.outputs
    )
    import re

    found = re.search(r"(\d+) nuclei found; mean area ([\d.]+) um\^2", text)
    assert found and int(found.group(1)) >= 10 and 5 < float(found.group(2)) < 200, text[-2000:]
