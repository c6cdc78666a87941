"""House style is checked by the same command as everything else: ruff lint and format."""

import subprocess

import pytest

from tests.conftest import REPO, tool


@pytest.mark.skipif(tool("ruff") is None, reason="ruff is not installed (it comes with the dev extra)")
@pytest.mark.parametrize("arguments", [["check", "."], ["format", "--check", "."]])
def test_ruff(arguments):
    result = subprocess.run([tool("ruff"), *arguments], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
