"""Generates, and checks, ``patches/``: DASH as a pull request against upstream Distributed Shampoo.

The series makes DASH native in ``facebookresearch/optimizers`` at the pinned commit
(:data:`PINNED_COMMIT`). It is purely additive, so no upstream line is reproduced here:

* ``0001``: the package's solver, stacking and integration modules as new files under
  ``distributed_shampoo/preconditioner/dash/`` (:data:`MODULES`), their imports rewritten to that
  layout (:data:`IMPORT_PATHS`);
* ``0002``: lines inserted at upstream's hook points (:data:`HOOKS`), located by parsing upstream's
  files, never by copying them: the per-block solver binding of ``shampoo_preconditioner_list``
  serves the new configs (what importing ``distributed_shampoo_dash`` binds at run time), a
  ``BatchedRootInvShampooPreconditionerConfig`` selects the batched list (the package's DASH form
  of ``RootInvShampooPreconditionerConfig``), and the package exports the new configs;
* ``0003``: upstream-style tests of the native modules (``patches/native_tests/``).

Hunks have no context lines and no removed lines; apply with ``git apply --unidiff-zero``.

Usage::

    python3 scripts/make_upstream_patches.py --upstream ../optimizers            # write patches/
    python3 scripts/make_upstream_patches.py --upstream ../optimizers --verify   # compare only
    python3 scripts/make_upstream_patches.py --upstream ../optimizers --check    # apply and test

``--check`` copies the checkout to a scratch directory, applies the series there, and runs
upstream's single-process suite plus the new tests against that copy, printing the counts.
"""

import argparse
import ast
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from distributed_shampoo_dash.benchmarks.cli import HelpFormatter

REPOSITORY = Path(__file__).resolve().parents[1]
PATCHES = REPOSITORY / "patches"
NATIVE_TESTS = PATCHES / "native_tests"
PINNED_COMMIT = "f60660661194de26d3ee78bae6d15820ff8e583d"
NATIVE_PACKAGE = "distributed_shampoo/preconditioner/dash"

#: Package module -> its path in upstream's layout.
MODULES: dict[str, str] = {
    **{
        f"distributed_shampoo_dash/solvers/{name}.py": f"{NATIVE_PACKAGE}/solvers/{name}.py"
        for name in (
            "__init__",
            "chebyshev",
            "checks",
            "coupled_newton",
            "eigh",
            "iteration",
            "linalg",
            "minimax",
            "minimax_schedules",
            "newton_db",
            "precision",
            "problem",
            "registry",
            "result",
            "scaling",
            "tf32",
        )
    },
    **{
        f"distributed_shampoo_dash/stacking/{name}.py": f"{NATIVE_PACKAGE}/stacking/{name}.py"
        for name in ("__init__", "groups", "kronecker", "packing")
    },
    **{
        f"distributed_shampoo_dash/integration/{name}.py": f"{NATIVE_PACKAGE}/{name}.py"
        for name in ("configs", "dispatch", "policy", "per_block", "preconditioner_list")
    },
}

#: Dotted package paths -> their native dotted paths (longest first when applied).
IMPORT_PATHS: dict[str, str] = {
    "distributed_shampoo_dash.integration.configs": (
        "distributed_shampoo.preconditioner.dash.configs"
    ),
    "distributed_shampoo_dash.integration.dispatch": (
        "distributed_shampoo.preconditioner.dash.dispatch"
    ),
    "distributed_shampoo_dash.integration.policy": "distributed_shampoo.preconditioner.dash.policy",
    "distributed_shampoo_dash.integration.per_block": (
        "distributed_shampoo.preconditioner.dash.per_block"
    ),
    "distributed_shampoo_dash.integration.preconditioner_list": (
        "distributed_shampoo.preconditioner.dash.preconditioner_list"
    ),
    "distributed_shampoo_dash.solvers": "distributed_shampoo.preconditioner.dash.solvers",
    "distributed_shampoo_dash.stacking": "distributed_shampoo.preconditioner.dash.stacking",
}

NATIVE_INIT = '''\
"""DASH: batched block preconditioning and matmul-only inverse-root solvers for Shampoo.

``solvers`` computes inverse roots of ``(N, d, d)`` stacks; ``stacking`` groups, packs and
multiplies same-shape blocks; ``BatchedRootInvShampooPreconditionerList`` runs every stage of a
step per group of same-shape blocks; ``MinimaxRootInvConfig``, ``NewtonDBRootInvConfig`` and
``ChebyshevRootInvConfig`` are the new solver configs (usable with any root-inverse Shampoo
config), and ``default_root_inv_config(device)`` is the one recommended for a device.
"""

from distributed_shampoo.preconditioner.dash.configs import (
    ChebyshevRootInvConfig,
    DashRootInvConfig,
    MinimaxRootInvConfig,
    NewtonDBRootInvConfig,
    default_root_inv_config,
)

__all__ = [
    "ChebyshevRootInvConfig",
    "DashRootInvConfig",
    "MinimaxRootInvConfig",
    "NewtonDBRootInvConfig",
    "default_root_inv_config",
]
'''


@dataclass(frozen=True)
class Hook:
    """Lines inserted into an upstream file after the line found by ``after``.

    ``after`` is either ``"imports"`` (the end of the module's leading import statements),
    ``"class:<Name>"`` (the last line of that top-level class) or a regular expression that
    matches exactly one line of the file.
    """

    path: str
    after: str
    lines: tuple[str, ...]


HOOKS: tuple[Hook, ...] = (
    Hook(
        "distributed_shampoo/preconditioner/shampoo_preconditioner_list.py",
        "imports",
        (
            (
                "# DASH configs are solved by DASH; every other config goes to "
                "matrix_inverse_root above."
            ),
            "from distributed_shampoo.preconditioner.dash.per_block import (",
            "    dash_matrix_inverse_root as matrix_inverse_root,  # type: ignore[no-redef]",
            ")",
        ),
    ),
    Hook(
        "distributed_shampoo/shampoo_types.py",
        "class:RootInvShampooPreconditionerConfig",
        (
            "",
            "",
            "@dataclass(kw_only=True)",
            "class BatchedRootInvShampooPreconditionerConfig(RootInvShampooPreconditionerConfig):",
            '    """Root-inverse Shampoo whose step runs on stacks of same-shape blocks (DASH).',
            "",
            "    Same fields, optimizer state, checkpoints and results as",
            (
                "    :class:`RootInvShampooPreconditionerConfig`; the factor updates, "
                "the inverse roots (one"
            ),
            (
                "    batched solver call per group of blocks with equal dimension, root and dtype) "
                "and the"
            ),
            "    preconditioning run as batched operations instead of one block at a time.",
            '    """',
        ),
    ),
    Hook(
        "distributed_shampoo/distributed_shampoo.py",
        "imports",
        (
            "from distributed_shampoo.preconditioner.dash.preconditioner_list import (",
            "    BatchedRootInvShampooPreconditionerList,",
            ")",
            "from distributed_shampoo.shampoo_types import (",
            "    BatchedRootInvShampooPreconditionerConfig,",
            ")",
        ),
    ),
    Hook(
        "distributed_shampoo/distributed_shampoo.py",
        r"^\s+RootInvShampooPreconditionerConfig: RootInvShampooPreconditionerList,$",
        (
            (
                "                    BatchedRootInvShampooPreconditionerConfig: "
                "BatchedRootInvShampooPreconditionerList,"
            ),
        ),
    ),
    Hook(
        "distributed_shampoo/__init__.py",
        "imports",
        (
            "from distributed_shampoo.preconditioner.dash import (",
            "    ChebyshevRootInvConfig,",
            "    MinimaxRootInvConfig,",
            "    NewtonDBRootInvConfig,",
            "    default_root_inv_config,",
            ")",
            "from distributed_shampoo.shampoo_types import (",
            "    BatchedRootInvShampooPreconditionerConfig,",
            ")",
        ),
    ),
    Hook(
        "distributed_shampoo/__init__.py",
        r"^__all__ = \[$",
        (
            "    # DASH.",
            '    "BatchedRootInvShampooPreconditionerConfig",',
            '    "MinimaxRootInvConfig",',
            '    "NewtonDBRootInvConfig",',
            '    "ChebyshevRootInvConfig",',
            '    "default_root_inv_config",',
        ),
    ),
)

SERIES: dict[str, str] = {
    "0001-dash-batched-solvers-and-stacking.patch": (
        "DASH: batched inverse-root solvers, block stacking and the batched preconditioner list\n\n"
        "New modules under distributed_shampoo/preconditioner/dash/; nothing imports them yet."
    ),
    "0002-dash-hook-into-distributed-shampoo.patch": (
        "DASH: serve the new solver configs and select the batched list from the config\n\n"
        "Inserted lines only: the per-block solver binding of shampoo_preconditioner_list handles\n"
        "MinimaxRootInvConfig, NewtonDBRootInvConfig and ChebyshevRootInvConfig (and hands every\n"
        "other config to\n"
        "matrix_inverse_root), BatchedRootInvShampooPreconditionerConfig maps to\n"
        "BatchedRootInvShampooPreconditionerList, and the package exports the new configs."
    ),
    "0003-dash-tests.patch": "DASH: tests of the native modules",
}


def rewrite_imports(source: str) -> str:
    """The module's text with every package path replaced by its native path."""
    for package_path in sorted(IMPORT_PATHS, key=len, reverse=True):
        source = re.sub(rf"\b{re.escape(package_path)}\b", IMPORT_PATHS[package_path], source)
    leftover = re.search(r"distributed_shampoo_dash[\w.]*", source)
    if leftover:
        raise ValueError(f"No native path for {leftover.group(0)!r}; add it to IMPORT_PATHS.")
    return source


#: The copyright header every new Python file of the series starts with: upstream's words, as
#: comments so that the module's own docstring stays its docstring.
COPYRIGHT_HEADER = """\
# Copyright (c) Meta Platforms, Inc. and affiliates.
# All rights reserved.
#
# This source code is licensed under the BSD-style license found in the
# LICENSE file in the root directory of this source tree.

"""


def new_file_diff(path: str, text: str) -> str:
    """A ``git diff`` creating ``path`` with ``text``, behind :data:`COPYRIGHT_HEADER` for a
    Python file."""
    if path.endswith(".py"):
        text = COPYRIGHT_HEADER + text
    lines = text.splitlines()
    body = "".join(f"+{line}\n" for line in lines)
    return (
        f"diff --git a/{path} b/{path}\nnew file mode 100644\n--- /dev/null\n+++ b/{path}\n"
        f"@@ -0,0 +1,{len(lines)} @@\n{body}"
    )


def anchor_line(source: str, after: str, path: str) -> int:
    """1-based line after which a hook inserts (see :class:`Hook`)."""
    tree = ast.parse(source)
    if after == "imports":
        end = 0
        for node in tree.body:
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                end = node.end_lineno or node.lineno
            elif not (isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant)):
                break
        return end
    if after.startswith("class:"):
        name = after.removeprefix("class:")
        for node in tree.body:
            if isinstance(node, ast.ClassDef) and node.name == name:
                return node.end_lineno or node.lineno
        raise ValueError(f"No top-level class {name} in {path}.")
    matches = [
        number for number, line in enumerate(source.splitlines(), 1) if re.match(after, line)
    ]
    if len(matches) != 1:
        raise ValueError(f"{after!r} matches {len(matches)} lines of {path}; expected exactly one.")
    return matches[0]


def hooks_diff(upstream: Path) -> str:
    """Zero-context insertion hunks for :data:`HOOKS`, file by file, in upstream line order."""
    diffs = []
    for path in dict.fromkeys(hook.path for hook in HOOKS):
        source = (upstream / path).read_text()
        hooks = sorted(
            (anchor_line(source, hook.after, path), hook.lines)
            for hook in HOOKS
            if hook.path == path
        )
        hunks, inserted = [], 0
        for line, lines in hooks:
            hunks.append(
                f"@@ -{line},0 +{line + inserted + 1},{len(lines)} @@\n"
                + "".join(f"+{text}\n" for text in lines)
            )
            inserted += len(lines)
        diffs.append(f"diff --git a/{path} b/{path}\n--- a/{path}\n+++ b/{path}\n" + "".join(hunks))
    return "".join(diffs)


def native_modules_diff() -> str:
    diffs = [new_file_diff(f"{NATIVE_PACKAGE}/__init__.py", NATIVE_INIT)]
    for module, native in MODULES.items():
        diffs.append(new_file_diff(native, rewrite_imports((REPOSITORY / module).read_text())))
    return "".join(diffs)


def native_tests_diff() -> str:
    return "".join(
        new_file_diff(f"{NATIVE_PACKAGE}/tests/{test.name}", test.read_text())
        for test in sorted(NATIVE_TESTS.glob("*_test.py"))
    )


def generate(upstream: Path) -> dict[str, str]:
    """``patch file name -> text`` of the whole series."""
    bodies = [native_modules_diff(), hooks_diff(upstream), native_tests_diff()]
    return {
        name: (
            f"Against {PINNED_COMMIT}; apply with `git apply --unidiff-zero`.\n\n"
            f"{message}\n\n{body}"
        )
        for (name, message), body in zip(SERIES.items(), bodies, strict=True)
    }


def check(upstream: Path, pytest_args: list[str]) -> int:
    """Applies the committed series to a scratch copy of ``upstream`` and runs the tests there."""
    with tempfile.TemporaryDirectory(prefix="dash-native-") as scratch:
        copy = Path(scratch) / "optimizers"
        shutil.copytree(upstream, copy, ignore=shutil.ignore_patterns(".git", "__pycache__"))
        for patch in sorted(PATCHES.glob("*.patch")):
            subprocess.run(["git", "apply", "--unidiff-zero", str(patch)], cwd=copy, check=True)
            print(f"applied {patch.name}")
        environment = {"PYTHONPATH": str(copy), "PATH": "/usr/bin:/bin", "HOME": scratch}
        probe = "import distributed_shampoo; print(distributed_shampoo.__file__)"
        location = subprocess.run(
            [sys.executable, "-c", probe],
            cwd=copy,
            env=environment,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        if not location.startswith(str(copy)):
            raise SystemExit(
                f"distributed_shampoo is imported from {location}, not from the patched copy."
            )
        command = [
            sys.executable, "-m", "pytest", "--import-mode=importlib", "-q",
            "-p", "no:cacheprovider",
            "distributed_shampoo",
            "--ignore=distributed_shampoo/distributor/gpu_tests",
            "--ignore=distributed_shampoo/examples",
            *pytest_args,
        ]  # fmt: skip
        print(" ".join(command[1:]), flush=True)
        completed = subprocess.run(
            command, cwd=copy, env=environment, capture_output=True, text=True, check=False
        )
        lines = completed.stdout.strip().splitlines()
        print(
            "\n".join([line for line in lines if line.startswith(("FAILED", "ERROR"))] + lines[-1:])
        )
        return completed.returncode


def build_parser() -> argparse.ArgumentParser:
    """The command line (see the module docstring)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument(
        "--upstream", type=Path, required=True, help=f"source checkout at {PINNED_COMMIT}"
    )
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument(
        "--verify", action="store_true", help="exit 1 if patches/ differs from the generator"
    )
    mode.add_argument(
        "--check", action="store_true", help="apply patches/ to a scratch copy and run the tests"
    )
    parser.add_argument(
        "pytest_args", nargs="*", help="extra pytest arguments for --check (after --)"
    )
    return parser


def main() -> None:
    args = build_parser().parse_args()

    if args.check:
        raise SystemExit(check(args.upstream, args.pytest_args))
    series = generate(args.upstream)
    if args.verify:
        stale = [
            name
            for name, text in series.items()
            if not (PATCHES / name).exists() or (PATCHES / name).read_text() != text
        ]
        extra = sorted({path.name for path in PATCHES.glob("*.patch")} - series.keys())
        if stale or extra:
            raise SystemExit(f"patches/ is not what the generator produces: {stale + extra}")
        print("patches/ is up to date")
        return
    for name, text in series.items():
        (PATCHES / name).write_text(text)
        print(f"wrote patches/{name}")


if __name__ == "__main__":
    main()
