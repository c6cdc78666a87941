"""The README is a front page whose commands run as written, and the documentation site builds.

The site's own checks live in its MkDocs hook (docs/hooks/cli_reference.py): the CLI reference is written from the
parser, and a ``nucleiseg`` command on a page that the parser does not know fails the strict build. The README is
not part of the site, so its commands are checked here with the same functions; the configuration keys of the
commands on the README and on every page are checked here too (too slow for each build).
"""

import importlib.util
import os
import re
import subprocess
import tomllib

import pytest

from tests.conftest import REPO, tool

README = REPO / "README.md"


def _hook():
    spec = importlib.util.spec_from_file_location("cli_reference", REPO / "docs" / "hooks" / "cli_reference.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


hook = _hook()


@pytest.fixture(scope="module")
def parser():
    return hook.build_parser()


def _readme_commands(kind: str) -> list[list[str]]:
    return [
        words
        for line in hook.code_lines(README.read_text())
        for words in hook.shell_commands(line)
        if hook.program(words) == kind
    ]


@pytest.mark.skipif(tool("mkdocs") is None, reason="mkdocs is not installed (it comes with the docs and dev extras)")
def test_the_site_builds_strictly(tmp_path):
    """Broken links and anchors, a stale API reference, a missing included file or a command the CLI does not have
    are warnings, which --strict turns into a failed build."""
    result = subprocess.run(
        [tool("mkdocs"), "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    cli = (tmp_path / "site" / "reference" / "cli" / "index.html").read_text()
    for path, _, _ in hook.commands(hook.build_parser()):
        assert 'id="' + "-".join(("nucleiseg", *path)) + '"' in cli, path  # one section per command and step
    assert "segment_slide" in (tmp_path / "site" / "reference" / "python" / "index.html").read_text()
    assert not (REPO / "site").exists()  # the site never goes into the repository


def test_the_readme_is_a_front_page():
    assert len(README.read_text().splitlines()) < 200


def test_the_readme_test_command_is_the_one_ci_runs():
    lines = README.read_text().splitlines()
    command = lines[lines.index("# 2. set up and run the tests") + 1]
    assert command == 'python3 -m venv .venv && .venv/bin/pip install -q -e ".[dev]" && .venv/bin/python -m pytest'
    assert command in (REPO / ".ci" / "run").read_text().splitlines()


def test_every_nucleiseg_command_of_the_readme_exists(parser):
    commands = _readme_commands("nucleiseg")
    assert len(commands) >= 10  # the parsing found the README's commands
    assert {words[1] for words in commands} >= {"predict", "data", "report", "evaluate", "models"}
    assert [problem for words in commands if (problem := hook.nucleiseg_problem(words, parser))] == []


def test_every_configuration_word_of_the_readme_and_the_site_exists():
    """``experiment=NAME`` and other group choices name a file of conf/; every other ``KEY=VALUE`` names a key
    of the configuration with a valid value (the check train.py and the CLI run before anything heavy). The site's
    build checks its commands and group choices, not the keys (composing the configuration per command is slow)."""
    from nucleiseg.config.checks import check_overrides
    from nucleiseg.config.compose import misspelt_keys

    pages = [README, *sorted((REPO / "docs").rglob("*.md"))]
    problems, checked = [], []
    for page in pages:
        for line in hook.code_lines(page.read_text()):
            for words in hook.shell_commands(line):
                if hook.program(words) not in {"nucleiseg", "train.py"}:
                    continue
                overrides = [w for w in words[2:] if re.match(r"^[+~]?[A-Za-z_][\w.\-/@]*=", w)]
                if not overrides:
                    continue
                checked.append(overrides)
                problem = hook.group_problem(overrides) or misspelt_keys(overrides) or check_overrides(overrides)
                if problem:
                    problems.append(f"{page.relative_to(REPO)}: {problem}: {line}")
    assert ["experiment=paper"] in checked and len(checked) >= 20
    assert problems == []


def test_every_extra_and_link_of_the_readme_exists():
    text = README.read_text()
    extras = set(tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"])
    named = set(re.findall(r"\.\[([a-z]+)\]", text)) | set(re.findall(r"`\[([a-z]+)\]`", text))
    assert "docs" in named and "dev" in named
    assert named <= extras
    links = [link.split("#")[0] for link in re.findall(r"\]\(([^)]+)\)", text) if "://" not in link]
    assert links and [link for link in links if link and not (REPO / link).exists()] == []


def test_the_command_check_finds_what_the_parser_does_not_know(parser):
    markdown = """
```bash
nucleiseg predict x --out y --colour red      # an option predict does not have
nucleiseg segment x                           # no such command
MLFLOW_TRACKING_URI=http://h:5000 nucleiseg data fetch tnbc --to data \\
    --timeout 5
python train.py -m experiment=papers
nucleiseg predict x --out y --model https://h/m.ckpt#sha256=00   # a URL's #fragment is not a comment
```

```python
nucleiseg.segment("x")  # Python, not a command line
```
"""
    problems = hook.problems(markdown, parser)
    assert len(problems) == 4, problems
    assert "no option --colour" in problems[0]
    assert "nucleiseg segment" in problems[1]
    assert "nucleiseg data fetch" in problems[2]
    assert "experiment=papers" in problems[3]
