"""Test-suite wiring: the ``upstream`` marker, the summary of tests run and skipped by reason, the
``device`` fixture of the ``cuda`` test subset, and the ``real_factor_set`` fixture.

A test that takes a ``device`` argument runs once per device of ``DASH_TEST_DEVICES`` (a comma
list, default ``cpu,cuda``); the ``cuda`` variant is skipped where torch sees no CUDA device. Such
tests are marked ``cuda``: ``pytest -m cuda`` is the subset ``scripts/gpu_report.py`` runs on a GPU
(with ``DASH_TEST_DEVICES=cuda``), and the default suite runs their ``cpu`` variants, so the GPU
runs the code the CPU tests cover, on another device.

A test that takes ``real_factor_set`` runs once per set of real Shampoo factors
(:mod:`tests.real_factors`): the repository's, always, and the one in ``../shared/data`` when it
is beside the checkout.
"""

import ast
import importlib.util
import os
from collections import Counter
from pathlib import Path

import pytest
import torch

from tests.real_factors import FACTOR_FILES, RealFactors, load_real_factors

UPSTREAM_AVAILABLE = importlib.util.find_spec("distributed_shampoo") is not None
UPSTREAM_SKIP_REASON = "needs upstream distributed_shampoo (install it as README.md says)"


#: Environment variable naming the devices of the ``device`` fixture.
DEVICES_VARIABLE = "DASH_TEST_DEVICES"
NO_CUDA_REASON = "needs a CUDA device (torch.cuda.is_available() is False)"


def devices_under_test() -> list[str]:
    """The devices of :data:`DEVICES_VARIABLE` (default ``cpu`` and ``cuda``)."""
    return [
        name.strip()
        for name in os.environ.get(DEVICES_VARIABLE, "cpu,cuda").split(",")
        if name.strip()
    ]


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "device" not in metafunc.fixturenames:
        return
    params = []
    for name in devices_under_test():
        marks = []
        if torch.device(name).type == "cuda":
            marks.append(pytest.mark.skipif(not torch.cuda.is_available(), reason=NO_CUDA_REASON))
        params.append(pytest.param(torch.device(name), marks=marks, id=name))
    metafunc.parametrize("device", params)


@pytest.fixture(scope="session", params=sorted(FACTOR_FILES, key=list(FACTOR_FILES).index))
def real_factor_set(request: pytest.FixtureRequest) -> RealFactors:
    """Each set of real factors that is present (see the module docstring)."""
    path = FACTOR_FILES[request.param]
    if not path.exists():
        pytest.skip(f"the {request.param} set of real factors is not at {path}")
    return load_real_factors(request.param, path)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if UPSTREAM_AVAILABLE:
        return
    skip = pytest.mark.skip(reason=UPSTREAM_SKIP_REASON)
    for item in items:
        if "upstream" in item.keywords:
            item.add_marker(skip)


def skip_reason(report: pytest.TestReport | pytest.CollectReport) -> str:
    """The reason a skipped test or module gives, upstream's absence under one name."""
    longrepr = report.longrepr
    reason = longrepr[2] if isinstance(longrepr, tuple) else str(longrepr)
    reason = reason.removeprefix("Skipped: ")
    if "distributed_shampoo" in reason and (
        UPSTREAM_SKIP_REASON in reason or "could not import" in reason
    ):
        return UPSTREAM_SKIP_REASON
    return reason


def tests_defined_in(path: Path) -> int:
    """The test functions a module defines (each parametrization counts once)."""
    tree = ast.parse(path.read_text())
    scopes = [tree.body] + [
        node.body
        for node in tree.body
        if isinstance(node, ast.ClassDef) and node.name.startswith("Test")
    ]
    return sum(
        isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.name.startswith("test")
        for scope in scopes
        for node in scope
    )


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """How many tests ran, and how many were skipped for each reason.

    A module that skips at import is one report to pytest; here it counts as the test functions
    it defines, so a missing requirement shows its full weight.
    """
    stats = terminalreporter.stats
    ran = {outcome: len(stats.get(outcome, [])) for outcome in ("passed", "failed", "error")}
    skipped: Counter[str] = Counter()
    for report in stats.get("skipped", []):
        if isinstance(report, pytest.CollectReport):
            skipped[skip_reason(report)] += tests_defined_in(Path(str(report.fspath)))
        else:
            skipped[skip_reason(report)] += 1
    terminalreporter.write_sep("-", "tests run and skipped")
    terminalreporter.write_line(
        f"upstream distributed_shampoo installed: {UPSTREAM_AVAILABLE}; ran "
        + ", ".join(f"{count} {outcome}" for outcome, count in ran.items())
        + f"; skipped {sum(skipped.values())}"
    )
    for reason, count in skipped.most_common():
        terminalreporter.write_line(f"  skipped {count}: {reason}")
