"""Every option of every script in ``scripts/`` says what it does and, when it has one, its default.

A script has a command line when it builds an ``argparse.ArgumentParser``; it then builds it in
``build_parser()``, which these tests read, and renders it with ``cli.HelpFormatter``.
"""

import argparse
import re
from pathlib import Path
from typing import Any

import pytest

from tests.script_modules import SCRIPTS, load_script

#: Scripts that import upstream ``distributed_shampoo`` at module level.
UPSTREAM_IMPORT = re.compile(r"^(from|import) distributed_shampoo[ .]", re.MULTILINE)


def scripts_with_a_parser() -> list[Path]:
    """The scripts that build an ``argparse.ArgumentParser``."""
    return sorted(
        path for path in SCRIPTS.glob("*.py") if "argparse.ArgumentParser(" in path.read_text()
    )


def script_param(path: Path) -> Any:
    """The script's name as a test parameter, marked ``upstream`` if it imports upstream."""
    marks = [pytest.mark.upstream] if UPSTREAM_IMPORT.search(path.read_text()) else []
    return pytest.param(path.stem, marks=marks, id=path.stem)


SCRIPT_PARAMS = [script_param(path) for path in scripts_with_a_parser()]


def parser_of(name: str) -> argparse.ArgumentParser:
    return load_script(name).build_parser()


def shown_actions(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    return [action for action in parser._actions if action.help is not argparse.SUPPRESS]


def help_entries(help_text: str) -> dict[str, str]:
    """Each option string (``--out``) or positional name of a ``--help`` output, with its entry:
    the invocation line and the help lines under it."""
    lines = help_text.splitlines()
    first = next(
        index for index, line in enumerate(lines) if line in ("positional arguments:", "options:")
    )
    entries: dict[str, list[str]] = {}
    current: list[str] = []
    for line in lines[first:]:
        if re.match(r"^  \S", line):  # an entry starts at an indentation of two
            current = [line]
            invocation = line.strip().split("  ")[0]
            for name in invocation.split(", "):
                entries[name.split(" ")[0]] = current
        elif line.startswith("   ") and current:
            current.append(line)
        else:
            current = []
    return {name: " ".join(" ".join(entry).split()) for name, entry in entries.items()}


def test_the_scripts_with_a_command_line_are_found() -> None:
    names = {path.stem for path in scripts_with_a_parser()}
    assert {"benchmark", "benchmark_solvers", "gpu_report", "stack_balance"} <= names
    assert "step_costs" not in names and "cli" not in names


@pytest.mark.parametrize("name", SCRIPT_PARAMS)
def test_every_option_has_help(name: str) -> None:
    parser = parser_of(name)
    assert issubclass(parser.formatter_class, load_script("cli").HelpFormatter)
    missing = [action.dest for action in shown_actions(parser) if not (action.help or "").strip()]
    assert not missing, f"scripts/{name}.py: options without help: {missing}"


@pytest.mark.parametrize("name", SCRIPT_PARAMS)
def test_help_shows_every_set_default(name: str) -> None:
    parser = parser_of(name)
    entries = help_entries(parser.format_help())
    with_defaults = [
        action
        for action in shown_actions(parser)
        if action.default is not None
        and action.default is not False
        and action.default != argparse.SUPPRESS
    ]
    for action in with_defaults:
        entry = entries[action.option_strings[0] if action.option_strings else action.dest]
        assert "(default: " in entry, f"scripts/{name}.py: {entry!r} does not show its default"


def test_help_entries_reads_wrapped_entries() -> None:
    parser = argparse.ArgumentParser(
        prog="x", formatter_class=load_script("cli").HelpFormatter, description="A\n  B"
    )
    parser.add_argument("--out", default="folder", help="where " + "long words " * 12)
    parser.add_argument("--flag", action="store_true", help="a switch")
    parser.add_argument("--count", type=int, default=0, help="zero is a default")
    parser.add_argument("--unset", help="taken from elsewhere")
    parser.add_argument("names", nargs="*", help="positional")
    entries = help_entries(parser.format_help())
    assert entries["--out"].startswith("--out OUT where long words")
    assert entries["--out"].endswith("(default: folder)")
    assert entries["--flag"] == "--flag a switch"
    assert entries["--count"] == "--count COUNT zero is a default (default: 0)"
    assert entries["--unset"] == "--unset UNSET taken from elsewhere"
    assert entries["names"] == "names positional"
    assert "A\n  B" in parser.format_help()  # the description as written
