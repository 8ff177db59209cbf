"""The step benchmark (``distributed_shampoo_dash.benchmarks``, run by ``scripts/benchmark.py``):
what the solvers log while a row runs is counted per row instead of printed, and a row that raises
says why in one line."""

import logging

import pytest
import torch

pytestmark = pytest.mark.upstream
pytest.importorskip("distributed_shampoo")

from distributed_shampoo_dash.benchmarks import solver_messages, step_rows, step_runs, step_tables
from distributed_shampoo_dash.benchmarks.presets import PRESETS

SETTINGS = step_runs.StepSettings(precondition_frequency=1, warmup=1, steps=1, costs=False)


def run(*labels: str) -> tuple[list[dict], list[dict]]:
    rows = {row.label: row for row in step_rows.rows()}
    selected = [rows[label] for label in labels]
    return step_runs.run_rows(selected, PRESETS["smoke"], SETTINGS, torch.device("cpu"))


def test_messages_of_both_packages_are_collected_not_passed_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    package = logging.getLogger("distributed_shampoo_dash.integration.preconditioner_list")
    upstream = logging.getLogger("distributed_shampoo.preconditioner.matrix_functions")
    with solver_messages.collected_solver_messages() as messages:
        package.warning("MinimaxRootInvConfig rejected the roots of (block, factor) (0, 1).")
        upstream.warning("Newton did not converge and reached maximum number of iterations!")
    assert messages == [
        "MinimaxRootInvConfig rejected the roots of (block, factor) (0, 1).",
        "Newton did not converge and reached maximum number of iterations!",
    ]
    assert caplog.records == []  # the root logger's handlers (pytest's here) saw nothing
    upstream.warning("after the row")
    assert [record.getMessage() for record in caplog.records] == ["after the row"]
    assert len(messages) == 2


def test_the_note_counts_messages_by_kind() -> None:
    messages = [
        (
            "MinimaxRootInvConfig rejected the roots of (block, factor) (0, 0) (residual "
            "1.02e+00), (2, 1) (residual 1.16e+00) and 30 more; recomputing by eigh."
        ),
        (
            "MinimaxRootInvConfig rejected the roots of (block, factor) (51, 0) (residual "
            "1.07e+00); recomputing by eigh."
        ),
        "Newton did not converge and reached maximum number of iterations!",
    ]
    assert solver_messages.messages_note(messages) == (
        "3 solver messages: 2 x 'MinimaxRootInvConfig rejected the roots of ... recomputing by "
        "eigh', 1 x 'Newton did not converge and reached maximum number of iterations!'"
    )
    assert solver_messages.messages_note(messages[2:]).startswith("1 solver message: 1 x 'Newton")
    assert solver_messages.messages_note([]) == ""


def test_rows_report_their_solver_messages(caplog: pytest.LogCaptureFixture) -> None:
    results, failures = run("upstream EigenConfig", "DASH Newton-DB paper fp32 (k=10)")
    assert not failures
    upstream, paper = results
    assert (upstream["solver_messages"], upstream["solver_message_note"]) == (0, "")
    assert paper["fallbacks"]["eigh"] > 0  # roots rejected, recomputed by eigh and logged
    assert paper["solver_messages"] >= 1
    assert "x 'NewtonDBRootInvConfig rejected the roots of" in paper["solver_message_note"]
    assert not [
        record
        for record in caplog.records
        if record.name.startswith(solver_messages.SOLVER_LOGGERS)
    ]
    table = step_tables.markdown_table(results)
    assert paper["solver_message_note"] in table.splitlines()[3]


def test_a_failed_row_says_why_in_one_line() -> None:
    results, failures = run("upstream EigenConfig", "upstream CoupledNewtonConfig")
    assert [result["label"] for result in results] == ["upstream EigenConfig"]
    (failure,) = failures
    assert failure["outcome"] == "failed"
    assert failure["error"].startswith("PreconditionerValueError: Encountered nan or inf values")
    assert (
        "Reason: upstream's CoupledNewtonConfig produced a non-finite inverse root"
        in failure["error"]
    )
    assert (
        failure["solver_messages"] >= 1
        and "Newton did not converge" in (failure["solver_message_note"])
    )
    (line,) = step_tables.results_table([], failures).splitlines()
    assert line.startswith("| upstream CoupledNewtonConfig | failed: PreconditionerValueError")
    assert failure["solver_message_note"] in line


def test_rows_not_started_in_time_are_listed_as_not_run() -> None:
    row = step_rows.rows()[0]
    results, failures = step_runs.run_rows(
        [row], PRESETS["smoke"], SETTINGS, torch.device("cpu"), deadline=0.0
    )
    assert results == []
    assert step_tables.results_table(results, failures) == (
        "| upstream EigenConfig | not run: time budget spent |"
    )
