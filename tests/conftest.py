"""Test-suite wiring: the ``upstream`` marker and the count of tests skipped without upstream."""

import importlib.util

import pytest

UPSTREAM_AVAILABLE = importlib.util.find_spec("distributed_shampoo") is not None
UPSTREAM_SKIP_REASON = (
    "needs upstream distributed_shampoo (pip install 'distributed-shampoo-dash[upstream]')"
)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if UPSTREAM_AVAILABLE:
        return
    skip = pytest.mark.skip(reason=UPSTREAM_SKIP_REASON)
    for item in items:
        if "upstream" in item.keywords:
            item.add_marker(skip)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    skipped = terminalreporter.stats.get("skipped", [])
    upstream_skipped = sum(UPSTREAM_SKIP_REASON in str(report.longrepr) for report in skipped)
    terminalreporter.write_line(
        f"upstream distributed_shampoo installed: {UPSTREAM_AVAILABLE}; "
        f"tests skipped for lack of it: {upstream_skipped} (all skipped: {len(skipped)})"
    )
