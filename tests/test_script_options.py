"""Every option of every script in ``scripts/`` says what it does and, when it has one, its default.

A script has a command line when it builds an ``argparse.ArgumentParser``; it renders it with
``distributed_shampoo_dash.benchmarks.cli.HelpFormatter``. The tests read each script's
``add_argument`` calls from its source (``ast``, nothing is imported) and its ``--help`` output
(the script run as a subprocess).
"""

import argparse
import ast
import functools
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from distributed_shampoo_dash.benchmarks.cli import HelpFormatter

REPOSITORY = Path(__file__).resolve().parents[1]
SCRIPTS = REPOSITORY / "scripts"
#: Scripts that import upstream ``distributed_shampoo`` at module level, directly or through the
#: package modules they are built on.
UPSTREAM_IMPORT = re.compile(
    r"^(from|import) distributed_shampoo[ .]"
    r"|^from distributed_shampoo_dash\.benchmarks\.(step_|stack_balance)",
    re.MULTILINE,
)


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


def add_argument_calls(name: str) -> list[ast.Call]:
    """The ``add_argument`` calls of ``scripts/<name>.py``."""
    tree = ast.parse((SCRIPTS / f"{name}.py").read_text())
    return [
        node
        for node in ast.walk(tree)
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr == "add_argument"
    ]


def keyword(call: ast.Call, name: str) -> ast.expr | None:
    return next((k.value for k in call.keywords if k.arg == name), None)


def is_suppressed(call: ast.Call) -> bool:
    """``help=argparse.SUPPRESS``: a hidden option."""
    value = keyword(call, "help")
    return isinstance(value, ast.Attribute) and value.attr == "SUPPRESS"


def has_help(call: ast.Call) -> bool:
    """A ``help=`` that is not an empty or blank string."""
    value = keyword(call, "help")
    if value is None:
        return False
    return not (isinstance(value, ast.Constant) and not str(value.value).strip())


def option_name(call: ast.Call) -> str:
    """The first option string (``--out``) or the positional's name."""
    first = call.args[0]
    assert isinstance(first, ast.Constant) and isinstance(first.value, str)
    return first.value


def has_a_set_default(call: ast.Call) -> bool:
    """A ``default=`` that is neither ``None`` nor ``False`` (constants; any expression counts),
    or ``store_false``."""
    action = keyword(call, "action")
    if isinstance(action, ast.Constant) and action.value == "store_false":
        return True
    default = keyword(call, "default")
    if default is None:
        return False
    return not (isinstance(default, ast.Constant) and default.value in (None, False))


@functools.cache
def help_output(name: str) -> str:
    completed = subprocess.run(
        [sys.executable, str(SCRIPTS / f"{name}.py"), "--help"],
        cwd=REPOSITORY,
        env={**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "100"},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    return completed.stdout


def help_entries(help_text: str) -> dict[str, tuple[str, str]]:
    """Each option string (``--out``) or positional name of a ``--help`` output, with its entry:
    the invocation (``--out OUT``) and the help text under it, whitespace normalised."""
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
    parsed = {}
    for name, entry in entries.items():
        invocation, _, first_help = entry[0].strip().partition("  ")
        text = " ".join([first_help, *entry[1:]])
        parsed[name] = (invocation, " ".join(text.split()))
    return parsed


def test_the_scripts_with_a_command_line_are_found() -> None:
    names = {path.stem for path in scripts_with_a_parser()}
    assert {"benchmark", "benchmark_solvers", "gpu_report", "stack_balance"} <= names
    assert not (SCRIPTS / "cli.py").exists() and not (SCRIPTS / "step_costs.py").exists()


@pytest.mark.parametrize("name", SCRIPT_PARAMS)
def test_every_parser_renders_with_the_common_help_formatter(name: str) -> None:
    source = (SCRIPTS / f"{name}.py").read_text()
    assert "formatter_class=HelpFormatter" in source
    assert "from distributed_shampoo_dash.benchmarks.cli import" in source


@pytest.mark.parametrize("name", SCRIPT_PARAMS)
def test_every_option_has_help(name: str) -> None:
    calls = [call for call in add_argument_calls(name) if not is_suppressed(call)]
    assert calls
    missing = [option_name(call) for call in calls if not has_help(call)]
    assert not missing, f"scripts/{name}.py: options without help: {missing}"
    entries = help_entries(help_output(name))
    shown = [option_name(call) for call in calls]
    assert set(shown) <= set(entries) | {"-h"}, f"scripts/{name}.py: not in --help"
    empty = [option for option in shown if not entries[option][1]]
    assert not empty, f"scripts/{name}.py: --help shows no help for {empty}"


@pytest.mark.parametrize("name", SCRIPT_PARAMS)
def test_help_shows_every_set_default(name: str) -> None:
    entries = help_entries(help_output(name))
    for call in add_argument_calls(name):
        if is_suppressed(call) or not has_a_set_default(call):
            continue
        invocation, text = entries[option_name(call)]
        assert "(default: " in text, f"scripts/{name}.py: {invocation!r} does not show its default"


def test_help_entries_reads_wrapped_entries() -> None:
    parser = argparse.ArgumentParser(prog="x", formatter_class=HelpFormatter, description="A\n  B")
    parser.add_argument("--out", default="folder", help="where " + "long words " * 12)
    parser.add_argument("--flag", action="store_true", help="a switch")
    parser.add_argument("--count", type=int, default=0, help="zero is a default")
    parser.add_argument("--unset", help="taken from elsewhere")
    parser.add_argument("names", nargs="*", help="positional")
    entries = help_entries(parser.format_help())
    assert entries["--out"][0] == "--out OUT"
    assert entries["--out"][1].startswith("where long words")
    assert entries["--out"][1].endswith("(default: folder)")
    assert entries["--flag"] == ("--flag", "a switch")
    assert entries["--count"] == ("--count COUNT", "zero is a default (default: 0)")
    assert entries["--unset"] == ("--unset UNSET", "taken from elsewhere")
    assert entries["names"] == ("names", "positional")
    assert "A\n  B" in parser.format_help()  # the description as written


def test_the_formatter_shows_set_defaults_and_hides_unset_ones() -> None:
    parser = argparse.ArgumentParser(prog="x", formatter_class=HelpFormatter)
    parser.add_argument("--set", type=float, default=0.5, help="a number")
    parser.add_argument("--unset", type=float, help="from the preset")
    parser.add_argument("--switch", action="store_true", help="a switch")
    entries = help_entries(parser.format_help())
    assert entries["--set"][1] == "a number (default: 0.5)"
    assert entries["--unset"][1] == "from the preset"
    assert entries["--switch"][1] == "a switch"
