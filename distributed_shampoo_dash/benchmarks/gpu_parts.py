"""The parts of a GPU report: ``pytest -m cuda``, the step benchmark and the solver benchmark, each
run by :func:`run_part`, which records an exception instead of raising it."""

import dataclasses
import os
import shlex
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any
from xml.etree import ElementTree

import torch

from distributed_shampoo_dash.benchmarks import solver_rows, solver_runs, solver_tables
from distributed_shampoo_dash.benchmarks.gpu_plan import Plan
from distributed_shampoo_dash.benchmarks.presets import PRESETS, STACK_PRESETS


def run_part(name: str, part: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """Runs a part; returns its record with ``status`` ("ok" or "error", with the traceback) and
    ``elapsed_s``. An exception is recorded, never raised."""
    start = time.perf_counter()
    print(f"\n=== {name} ===", flush=True)
    try:
        record = {"status": "ok", **part()}
    except Exception:  # noqa: BLE001 - a failed part is a result of the report
        record = {"status": "error", "error": traceback.format_exc(limit=8)}
        print(record["error"], flush=True)
    record["elapsed_s"] = time.perf_counter() - start
    print(f"=== {name}: {record['status']} in {record['elapsed_s']:.1f} s ===", flush=True)
    return record


def parse_junit(path: Path) -> dict[str, Any]:
    """Counts and failures of a pytest JUnit XML file."""
    root = ElementTree.parse(path).getroot()
    suite = root if root.tag == "testsuite" else root.find("testsuite")
    assert suite is not None
    failures = []
    for case in suite.iter("testcase"):
        for kind in ("failure", "error"):
            problem = case.find(kind)
            if problem is not None:
                message = (problem.get("message") or problem.text or "").strip().splitlines()
                failures.append(
                    {
                        "test": f"{case.get('classname')}::{case.get('name')}",
                        "kind": kind,
                        "message": message[0][:300] if message else "",
                    }
                )
    counts = {key: int(suite.get(key, 0)) for key in ("tests", "failures", "errors", "skipped")}
    counts["passed"] = counts["tests"] - counts["failures"] - counts["errors"] - counts["skipped"]
    return {**counts, "failed_tests": failures, "pytest_time_s": float(suite.get("time", 0.0))}


def tests_part(
    device: torch.device, plan: Plan, out: Path, budget_s: float, repository: Path
) -> dict[str, Any]:
    """``pytest -m cuda`` on ``device`` (in a subprocess, from the checkout's root
    ``repository``)."""
    xml = out / "tests.xml"
    xml.unlink(missing_ok=True)
    command = [
        sys.executable,
        "-m",
        "pytest",
        "-m",
        "cuda",
        "-v",
        "--tb=short",
        "-p",
        "no:cacheprovider",
        f"--junitxml={xml}",
        "tests",
    ]
    if plan.test_selection:
        command += ["-k", plan.test_selection]
    environment = {
        **os.environ,
        "DASH_TEST_DEVICES": device.type,
        "PYTHONPATH": os.pathsep.join([str(repository), os.environ.get("PYTHONPATH", "")]).rstrip(
            os.pathsep
        ),
    }
    print(shlex.join(command), flush=True)
    try:
        completed = subprocess.run(
            command,
            cwd=repository,
            env=environment,
            capture_output=True,
            text=True,
            timeout=budget_s,
            check=False,  # failed tests are results
        )
    except subprocess.TimeoutExpired as expired:
        output = expired.stdout or ""
        if isinstance(output, bytes):
            output = output.decode(errors="replace")
        raise RuntimeError(
            f"pytest ran past its budget of {budget_s:.0f} s:\n{output[-3000:]}"
        ) from None
    print(completed.stdout[-2000:], flush=True)
    if not xml.exists():
        raise RuntimeError(
            f"pytest wrote no JUnit XML (exit {completed.returncode}):\n{completed.stderr[-3000:]}"
        )
    return {
        "command": shlex.join(command),
        "devices": device.type,
        "returncode": completed.returncode,
        **parse_junit(xml),
        "output_tail": completed.stdout[-3000:],
    }


def step_part(device: torch.device, plan: Plan, out: Path, deadline: float) -> dict[str, Any]:
    """The step benchmark's rows at each frequency of the plan, then the plots."""
    # The step benchmark imports upstream: only when this part runs.
    from distributed_shampoo_dash.benchmarks import step_rows, step_runs, step_tables

    preset = PRESETS[plan.step_preset]
    peers, peer_reason = step_rows.peer_rows()
    print(f"DashGpu: {peer_reason or 'imported'}", flush=True)
    rows: list[step_rows.AnyRow] = [*step_rows.rows(), *peers]
    candidates = {row.label: row for row in rows}
    selected = [candidates[label] for label in plan.step_rows] + list(peers)
    runs = []
    for run in plan.step_runs:
        settings = step_runs.StepSettings(
            precondition_frequency=run.precondition_frequency,
            warmup=run.warmup,
            steps=run.steps,
            costs=run.costs,
            root_error_sample=plan.root_error_sample,
        )
        print(f"-- roots every {run.precondition_frequency} step(s)", flush=True)
        results, failures = step_runs.run_rows(selected, preset, settings, device, deadline)
        plot = out / f"step_every{run.precondition_frequency}.png"
        plot.unlink(missing_ok=True)  # a plot of an earlier run is not this run's
        plotted = bool(results) and step_tables.plot(results, plot)
        runs.append(
            {
                "settings": dataclasses.asdict(settings),
                "results": results,
                "failures": failures,
                "table": step_tables.results_table(results, failures),
                "costs_table": step_tables.costs_table(results) if results and run.costs else "",
                "plot": plot.name if plotted else None,
            }
        )
    return {
        "preset": plan.step_preset,
        "num_parameters": sum(int(torch.Size(shape).numel()) for shape in preset.shapes),
        "dashgpu": peer_reason or "imported",
        "runs": runs,
    }


def solvers_part(device: torch.device, plan: Plan, out: Path, deadline: float) -> dict[str, Any]:
    """The solver benchmark on the plan's preset (root 4), with the matmul peaks of the same run."""
    preset = STACK_PRESETS[plan.solver_preset]
    selected = [
        row
        for row in solver_rows.rows(4)
        if plan.solver_rows is None or any(name in row.name for name in plan.solver_rows)
    ]
    results = [
        solver_runs.run_shape(shape, selected, 4, device, plan.solver_repeats, deadline)
        for shape in preset.shapes
    ]
    plot = out / "solvers.png"
    plot.unlink(missing_ok=True)  # a plot of an earlier run is not this run's
    plotted = solver_tables.plot(results, plot)
    return {
        "preset": plan.solver_preset,
        "repeats": plan.solver_repeats,
        "root": 4,
        "shapes": [dataclasses.asdict(result) for result in results],
        "tables": {
            str(result.shape): solver_tables.rows_table(result)
            + "\n\n"
            + solver_tables.chebyshev_footnote(result)
            for result in results
        },
        "peak_table": solver_tables.peak_table(results),
        "plot": plot.name if plotted else None,
    }
