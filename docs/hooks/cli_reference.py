"""MkDocs hook: the CLI reference is written at build time from ``nucleiseg.cli``'s own argparse parser, and every
``nucleiseg ...`` command shown in a page's code blocks is checked against that parser, so neither can go stale.

- A page holding the marker ``<!-- nucleiseg-cli-reference -->`` gets, in its place, the ``--help`` of ``nucleiseg``
  and of every command and step (``nucleiseg data download`` ...), one heading each (anchor ``nucleiseg-predict``).
- In every page, a ``nucleiseg COMMAND [STEP] --option`` line of a fenced code block whose command, step or
  ``--option`` the parser does not know is a warning naming the page and the line: ``mkdocs build --strict`` fails.
- ``python train.py ... experiment=NAME`` (and other config-group choices: ``trainer=``, ``hydra/launcher=`` ...)
  must name a file of ``conf/``; same rule.
- The package's docstrings use Sphinx roles (``:func:`name```); the API pages show them as plain code.

tests/test_docs.py imports this file: the same checks on README.md (not a page of the site), and the configuration
keys of every command on the README and the pages (composing the configuration per command is too slow for a build).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import re
import shlex
import sys
from collections.abc import Iterator
from pathlib import Path

MARKER = "<!-- nucleiseg-cli-reference -->"
SPHINX_ROLE = re.compile(r":(?:func|meth|class|mod|data|attr|exc):(<code>)~?")
HELP_WIDTH = "100"  # argparse wraps at $COLUMNS: a fixed width keeps the page the same on every machine
ROOT = Path(__file__).resolve().parents[2]
CONF = ROOT / "conf"
FENCE = re.compile(r"^(\s*)(`{3,}|~{3,})\s*([\w+-]*)")
SHELL_LANGUAGES = {"", "bash", "sh", "shell", "console"}

log = logging.getLogger("mkdocs.hooks.cli_reference")


# --- the parser -------------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    """``nucleiseg``'s parser, as the console script builds it (its handlers import nothing heavy until run)."""
    from nucleiseg.cli import build_parser as nucleiseg_parser

    return nucleiseg_parser()


def subcommands(parser: argparse.ArgumentParser) -> dict[str, tuple[str, argparse.ArgumentParser]]:
    """``{name: (one-line help, parser)}`` of ``parser``'s subcommands, in the order ``--help`` lists them."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {choice.dest: choice.help or "" for choice in action._choices_actions}
            return {name: (helps.get(name, ""), sub) for name, sub in action.choices.items()}
    return {}


def commands(
    parser: argparse.ArgumentParser, path: tuple[str, ...] = ()
) -> Iterator[tuple[tuple[str, ...], str, argparse.ArgumentParser]]:
    """Every command and step under ``parser``: ``(("data", "download"), help, parser)``, depth first."""
    for name, (text, sub) in subcommands(parser).items():
        yield (*path, name), text, sub
        yield from commands(sub, (*path, name))


def help_text(parser: argparse.ArgumentParser) -> str:
    """``parser.format_help()`` at a fixed width."""
    before = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = HELP_WIDTH
    try:
        return parser.format_help().rstrip()
    finally:
        if before is None:
            del os.environ["COLUMNS"]
        else:
            os.environ["COLUMNS"] = before


def reference(parser: argparse.ArgumentParser) -> str:
    """The Markdown of the CLI reference: a table of the commands, then each one's ``--help``."""
    rows = ["| command | what it does |", "|---|---|"]
    sections = ["## nucleiseg", "", "```text", help_text(parser), "```", ""]
    for path, text, sub in commands(parser):
        name = " ".join(("nucleiseg", *path))
        anchor = "-".join(("nucleiseg", *path))
        rows.append(f"| [`{name}`](#{anchor}) | {text} |")
        heading = "#" * (1 + len(path))  # ## nucleiseg data, ### nucleiseg data download
        sections += [f"{heading} {name}", "", "```text", help_text(sub), "```", ""]
    return "\n".join([*rows, "", *sections])


# --- checking commands shown in Markdown -----------------------------------------------------------------------


def code_lines(markdown: str) -> Iterator[str]:
    """The shell lines of ``markdown``'s fenced code blocks (bash, sh, shell, console or no language), with the
    continuation lines (``\\``) joined and a prompt (``$ ``) removed."""
    fence, pending = None, ""
    for raw in markdown.splitlines():
        opening = FENCE.match(raw)
        if fence is None:
            if opening:
                fence = (opening.group(2), opening.group(3).lower() in SHELL_LANGUAGES)
            continue
        if raw.strip().startswith(fence[0]) and raw.strip().strip(fence[0][0]) == "":
            fence, pending = None, ""
            continue
        if not fence[1]:
            continue
        line = raw.strip()
        line = line[2:] if line.startswith("$ ") else line
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        yield pending + line
        pending = ""


def without_comment(line: str) -> str:
    """``line`` up to a shell comment: a ``#`` outside quotes at the start or after a blank (``URL#sha256=`` stays)."""
    quote = None
    for index, char in enumerate(line):
        if quote:
            quote = None if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char == "#" and (index == 0 or line[index - 1].isspace()):
            return line[:index]
    return line


def shell_commands(line: str) -> Iterator[list[str]]:
    """The simple commands of a shell ``line`` (split at ``&&``, ``||``, ``;``, ``|``), each as its words with
    leading ``VAR=value`` assignments dropped."""
    try:
        words = shlex.split(without_comment(line))
    except ValueError:
        return
    current: list[str] = []
    for word in [*words, ";"]:
        if word in {"&&", "||", ";", "|"}:
            while current and re.match(r"^[A-Z_][A-Z0-9_]*=", current[0]):
                current.pop(0)
            if current:
                yield current
            current = []
        else:
            current.append(word)


def nucleiseg_problem(words: list[str], parser: argparse.ArgumentParser) -> str | None:
    """What is wrong with the ``nucleiseg`` command ``words`` (its first word is the program): an unknown command,
    step or ``--option``; None when the parser knows them all."""
    rest, current, name = words[1:], parser, "nucleiseg"
    while True:
        choices = subcommands(current)
        if not choices or not rest or rest[0].startswith("-"):
            break
        if rest[0] not in choices:
            return f"`{name} {rest[0]}`: no such command (known: {', '.join(choices)})"
        name, current, rest = f"{name} {rest[0]}", choices[rest[0]][1], rest[1:]
    known = current._option_string_actions
    for word in rest:
        if word.startswith("-") and not re.match(r"^-\d", word) and word.split("=", 1)[0] not in known:
            return f"`{name}` has no option {word.split('=', 1)[0]} (see `{name} --help`)"
    return None


def group_problem(words: list[str]) -> str | None:
    """A config-group choice among ``words`` (``experiment=paper``, ``hydra/launcher=slurm``, a sweep's
    ``a,b``) that names no file of ``conf/``; None when every one exists."""
    for word in words:
        match = re.match(r"^\+?([a-z_/]+)=(.+)$", word)
        if not match or not (CONF / match.group(1)).is_dir():
            continue
        for value in match.group(2).split(","):
            if not (CONF / match.group(1) / f"{value}.yaml").is_file():
                return f"{match.group(1)}={value}: no conf/{match.group(1)}/{value}.yaml"
    return None


def program(words: list[str]) -> str:
    """``nucleiseg`` for ``.venv/bin/nucleiseg``, ``train.py`` for ``python train.py``, else the first word."""
    first = words[0]
    if first == "nucleiseg" or first.endswith("/bin/nucleiseg"):
        return "nucleiseg"
    if Path(first).name.startswith("python") and len(words) > 1 and Path(words[1]).name == "train.py":
        return "train.py"
    return first


def problems(markdown: str, parser: argparse.ArgumentParser) -> list[str]:
    """Every problem of the ``nucleiseg`` and ``train.py`` commands in ``markdown``'s code blocks."""
    found = []
    for line in code_lines(markdown):
        for words in shell_commands(line):
            kind = program(words)
            problem = None
            if kind == "nucleiseg":
                problem = nucleiseg_problem(words, parser) or group_problem(words[2:])
            elif kind == "train.py":
                problem = group_problem(words[2:])
            if problem:
                found.append(f"{problem} in: {line}")
    return found


# --- MkDocs events ------------------------------------------------------------------------------------------------

_parser: argparse.ArgumentParser | None = None


def _reload_cli() -> None:
    """Re-import ``nucleiseg.cli`` where an earlier build of this process imported it (``mkdocs serve``), so an
    edited command shows: ``common`` first, the command modules, then the package that gathers them."""
    modules = [name for name in sys.modules if name.startswith("nucleiseg.cli.")]
    modules.sort(key=lambda name: name != "nucleiseg.cli.common")
    for name in [*modules, "nucleiseg.cli"]:
        if name in sys.modules:
            importlib.reload(sys.modules[name])


def on_pre_build(config: object) -> None:
    """Build the parser once per build, from the code as it is now."""
    global _parser
    _reload_cli()
    _parser = build_parser()


def on_page_markdown(markdown: str, page: object, config: object, files: object) -> str:
    """Check the page's commands; write the CLI reference where the marker is."""
    parser = _parser or build_parser()
    source = page.file.src_uri  # type: ignore[attr-defined]
    for problem in problems(markdown, parser):
        log.warning("%s: %s", source, problem)
    if MARKER in markdown:
        markdown = markdown.replace(MARKER, reference(parser))
    return markdown


def on_page_content(html: str, page: object, config: object, files: object) -> str:
    """``:func:`name``` of a docstring, rendered by mkdocstrings as ``:func:<code>name</code>``, as the code alone."""
    return SPHINX_ROLE.sub(r"\1", html)
