"""Every GPU measurement of the project in one command: the CUDA tests, the solver benchmark, the
step benchmark against upstream (and the DASH authors' DashGpu when it imports), and where each
target of the docs stands.

    python3 scripts/gpu_report.py --out gpu_report                  # a CUDA machine, <= 8 minutes
    python3 scripts/gpu_report.py --out gpu_report --only step      # rerun parts, keep the others
    python3 scripts/gpu_report.py --device cpu --smoke --out /tmp/r # the same code, tiny shapes

Parts, in this order (``--only`` selects some; the others are kept from ``<out>/report.json``):

* ``tests``: ``pytest -m cuda`` with ``DASH_TEST_DEVICES=<device>`` (the device variants of the
  solver, stacking, step and equivalence tests, the host-sync test), results from its JUnit XML;
* ``step``: ``scripts/benchmark.py`` rows on the ``gpu`` preset (hidden 1024, 8 layers, FFN 2816,
  vocab 32000, block 1024) with roots every step and every 10 steps: upstream ``EigenConfig``,
  DASH with each solver, DashGpu (coupled Newton fp16, Newton-DB fp32) if importable; median
  step, step without roots, peak memory, root error, fallbacks, and at frequency 10 the step
  costs (ops, launches, host syncs, FLOPs against the solver's floor, tracked bytes);
* ``solvers``: ``scripts/benchmark_solvers.py`` rows on its ``gpu`` preset stacks with the
  fp32/tf32/bf16/fp16 matmul peaks measured in the same run: TFLOP/s, fraction of peak, errors.

Then the targets of the docs: each with its value, goal, ratio and status; a target is "not
measured" unless every row it is computed from ran (an anchor measured elsewhere is a goal, never
a measurement). Everything goes to ``<out>/report.md`` and ``<out>/report.json`` (rewritten after
every part, so an interrupted run keeps what it measured), the pytest results to
``<out>/tests.xml``, plots to ``<out>/step_every<f>.png`` and ``<out>/solvers.png`` (with
matplotlib; the report links only the plots that were written). A part that fails is recorded
with its error and the report is still written. Each part has a time budget (rows not started
in time are listed as such), so the whole run fits ``--budget-s`` (default 450 s) plus the last
started row.

``--smoke`` runs every part on tiny shapes (``smoke`` presets, frequencies 1 and 2, a few rows
and tests): under a minute on a CPU with ``--device cpu``; ``tests/test_gpu_report.py`` runs it
in the default suite, so the CUDA run differs from a tested one only in the device and sizes.
"""

import argparse
import dataclasses
import datetime
import json
import os
import platform
import shlex
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any
from xml.etree import ElementTree

import cli
import torch

REPOSITORY = Path(__file__).resolve().parents[1]
PARTS = ("tests", "step", "solvers")


# ---------------------------------------------------------------------------------------------
# What a run does.

#: Step-benchmark rows of the report (labels of ``scripts/benchmark.py``; upstream first).
STEP_ROWS = (
    "upstream EigenConfig",
    "DASH EigenConfig",
    "DASH minimax fp32",
    "DASH minimax bf16",
    "DASH minimax fp16",
    "DASH Newton-DB paper fp32 (k=10)",
    "DASH Chebyshev fp32 (degree 60)",
)
#: The row of DASH's default config (``MinimaxRootInvConfig()``), which the targets are about.
DEFAULT_ROW = "DASH minimax fp32"
SMOKE_STEP_ROWS = ("upstream EigenConfig", "DASH EigenConfig", DEFAULT_ROW)
#: Tests of the smoke run (a cheap part of ``-m cuda``).
SMOKE_TEST_SELECTION = "synchronises or root_computation_flops"
SMOKE_SOLVER_ROWS = ("eigh", "minimax fp32", "minimax fp32 k=10")


@dataclass(frozen=True)
class StepRun:
    """One step-benchmark run: roots every ``precondition_frequency`` steps.

    Attributes:
        precondition_frequency (int): Roots every this many steps.
        warmup (int): Untimed steps.
        steps (int): Timed steps.
        costs (bool): Count step costs (a step without and one with roots).
    """

    precondition_frequency: int
    warmup: int
    steps: int
    costs: bool


@dataclass(frozen=True)
class Plan:
    """Sizes and budgets of a report run (:data:`FULL` on a GPU, :data:`SMOKE` for the tests)."""

    step_preset: str
    step_runs: tuple[StepRun, ...]
    step_rows: tuple[str, ...]
    root_error_sample: int | None
    solver_preset: str
    solver_repeats: int
    solver_rows: tuple[str, ...] | None
    test_selection: str | None
    test_budget_s: float
    solver_budget_s: float


FULL = Plan(
    step_preset="gpu",
    step_runs=(
        StepRun(1, warmup=2, steps=5, costs=False),
        StepRun(10, warmup=10, steps=20, costs=True),
    ),
    step_rows=STEP_ROWS,
    root_error_sample=32,
    solver_preset="gpu",
    solver_repeats=5,
    solver_rows=None,
    test_selection=None,
    test_budget_s=150.0,
    solver_budget_s=100.0,
)
SMOKE = Plan(
    step_preset="smoke",
    step_runs=(
        StepRun(1, warmup=1, steps=2, costs=False),
        StepRun(2, warmup=2, steps=2, costs=True),
    ),
    step_rows=SMOKE_STEP_ROWS,
    root_error_sample=16,
    solver_preset="smoke",
    solver_repeats=2,
    solver_rows=SMOKE_SOLVER_ROWS,
    test_selection=SMOKE_TEST_SELECTION,
    test_budget_s=60.0,
    solver_budget_s=30.0,
)


# ---------------------------------------------------------------------------------------------
# Parts.


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


def tests_part(device: torch.device, plan: Plan, out: Path, budget_s: float) -> dict[str, Any]:
    """``pytest -m cuda`` on ``device`` (in a subprocess, from the repository root)."""
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
        "PYTHONPATH": os.pathsep.join([str(REPOSITORY), os.environ.get("PYTHONPATH", "")]).rstrip(
            os.pathsep
        ),
    }
    print(shlex.join(command), flush=True)
    try:
        completed = subprocess.run(
            command,
            cwd=REPOSITORY,
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
    import benchmark  # a sibling script; imports upstream, so only when this part runs

    preset = benchmark.PRESETS[plan.step_preset]
    peers, peer_reason = benchmark.peer_rows()
    print(f"DashGpu: {peer_reason or 'imported'}", flush=True)
    rows: list[benchmark.AnyRow] = [*benchmark.rows(), *peers]
    candidates = {row.label: row for row in rows}
    selected = [candidates[label] for label in plan.step_rows] + list(peers)
    runs = []
    for run in plan.step_runs:
        settings = benchmark.StepSettings(
            precondition_frequency=run.precondition_frequency,
            warmup=run.warmup,
            steps=run.steps,
            costs=run.costs,
            root_error_sample=plan.root_error_sample,
        )
        print(f"-- roots every {run.precondition_frequency} step(s)", flush=True)
        results, failures = benchmark.run_rows(selected, preset, settings, device, deadline)
        plot = out / f"step_every{run.precondition_frequency}.png"
        plot.unlink(missing_ok=True)  # a plot of an earlier run is not this run's
        plotted = bool(results) and benchmark.plot(results, plot)
        runs.append(
            {
                "settings": dataclasses.asdict(settings),
                "results": results,
                "failures": failures,
                "table": benchmark.results_table(results, failures),
                "costs_table": benchmark.costs_table(results) if results and run.costs else "",
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
    import benchmark_solvers as solvers

    preset = solvers.PRESETS[plan.solver_preset]
    selected = [
        row
        for row in solvers.rows(4)
        if plan.solver_rows is None or any(name in row.name for name in plan.solver_rows)
    ]
    results = [
        solvers.run_shape(shape, selected, 4, device, plan.solver_repeats, deadline)
        for shape in preset.shapes
    ]
    plot = out / "solvers.png"
    plot.unlink(missing_ok=True)  # a plot of an earlier run is not this run's
    plotted = solvers.plot(results, plot)
    return {
        "preset": plan.solver_preset,
        "repeats": plan.solver_repeats,
        "root": 4,
        "shapes": [dataclasses.asdict(result) for result in results],
        "tables": {
            str(result.shape): solvers.rows_table(result)
            + "\n\n"
            + solvers.chebyshev_footnote(result)
            for result in results
        },
        "peak_table": solvers.peak_table(results),
        "plot": plot.name if plotted else None,
    }


# ---------------------------------------------------------------------------------------------
# Targets.


@dataclass(frozen=True)
class Target:
    """Where one target of the docs stands.

    Attributes:
        name (str): What is measured.
        goal (str): The target or anchor as the docs state it.
        value (str): The measured value ("-" if not measured).
        ratio (float | None): Measured over goal (for times and memory: below 1 is better).
        status (str): "met", "not met", "anchor" (a reference value, no goal) or "not measured".
    """

    name: str
    goal: str
    value: str
    ratio: float | None
    status: str


#: Anchors measured earlier on 1 x H100 with the gpu preset, roots every step.
UPSTREAM_STEP_S = (3.5, 3.8)
UPSTREAM_PEAK_GB = 5.3
DASHGPU_STEP_S = {"DashGpu coupled Newton fp16": 0.23, "DashGpu Newton-DB fp32": 0.70}
DASHGPU_PEAK_GB = 12.0
ANCHOR_PEAKS_TFLOPS = {"fp32": 51.0, "tf32": 410.0, "bf16": 739.0, "fp16": 739.0}
UPSTREAM_WITHOUT_ROOTS_S = 0.100
DASHGPU_WITHOUT_ROOTS_S = 0.034
#: Our targets.
STEP_TARGET_S = 0.15
ROOT_ERROR_TARGET = 2e-3
PEAK_OVER_UPSTREAM_TARGET = 1.25
WITHOUT_ROOTS_OVER_UPSTREAM_TARGET = 1 / 3


def _result(run: dict[str, Any] | None, label: str) -> dict[str, Any] | None:
    if run is None:
        return None
    return next((result for result in run["results"] if result["label"] == label), None)


def _status(value: float | None, limit: float) -> str:
    return "not measured" if value is None else ("met" if value <= limit else "not met")


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f} s"


def _gigabytes(value: float | None) -> str:
    return "-" if value is None else f"{value / 1e9:.2f} GB"


def matmul_peaks(solvers: dict[str, Any] | None) -> tuple[dict[str, float], str]:
    """TFLOP/s per precision: this run's peaks on the solver part's first stack if it ran, else
    the anchors measured on 1 x H100 (fp16 taken as bf16's), and where they come from."""
    if solvers is not None and solvers.get("status") == "ok" and solvers["shapes"]:
        shape = solvers["shapes"][0]
        return dict(shape["peaks_tflops"]), f"this run's peaks on {tuple(shape['shape'])}"
    return dict(ANCHOR_PEAKS_TFLOPS), "the 1 x H100 anchor peaks"


def floor_seconds(result: dict[str, Any], peaks: dict[str, float]) -> float | None:
    """Time of a row's solver products at ``peaks`` (None for eigh, or a precision not measured)."""
    by_precision = result.get("floor_flops_by_precision") or {}
    if not by_precision or any(precision not in peaks for precision in by_precision):
        return None
    return sum(flops / (peaks[precision] * 1e12) for precision, flops in by_precision.items())


def evaluate_targets(parts: dict[str, Any]) -> list[Target]:
    """Every target of the docs against the step part's results (runs at the plan's frequencies:
    the first computes roots every step, the last less often), with the solver part's peaks."""
    step = parts.get("step")
    runs = [] if step is None or step.get("status") != "ok" else step["runs"]
    every_step = runs[0] if runs else None
    sparse = runs[-1] if len(runs) > 1 else None
    upstream, default = (
        _result(every_step, "upstream EigenConfig"),
        _result(every_step, DEFAULT_ROW),
    )
    targets: list[Target] = []

    upstream_s = None if upstream is None else upstream["median_step_s"]
    anchor = sum(UPSTREAM_STEP_S) / 2
    targets.append(
        Target(
            "upstream EigenConfig, roots every step: median step",
            f"anchor {UPSTREAM_STEP_S[0]}-{UPSTREAM_STEP_S[1]} s (1 x H100)",
            _seconds(upstream_s),
            None if upstream_s is None else upstream_s / anchor,
            "anchor" if upstream_s is not None else "not measured",
        )
    )
    upstream_peak = None if upstream is None else upstream["peak_memory_bytes"]
    targets.append(
        Target(
            "upstream EigenConfig: peak memory",
            f"anchor {UPSTREAM_PEAK_GB} GB",
            _gigabytes(upstream_peak),
            None if upstream_peak is None else upstream_peak / 1e9 / UPSTREAM_PEAK_GB,
            "anchor" if upstream_peak is not None else "not measured",
        )
    )

    default_s = None if default is None else default["median_step_s"]
    targets.append(
        Target(
            f"{DEFAULT_ROW}, roots every step: median step",
            f"<= {STEP_TARGET_S} s",
            _seconds(default_s),
            None if default_s is None else default_s / STEP_TARGET_S,
            _status(default_s, STEP_TARGET_S),
        )
    )
    peaks, peak_source = matmul_peaks(parts.get("solvers"))
    floor = None if default is None else floor_seconds(default, peaks)
    targets.append(
        Target(
            f"{DEFAULT_ROW}: time of its solver's products per root computation at {peak_source}",
            f"a floor of the step; fits <= {STEP_TARGET_S} s",
            _seconds(floor),
            None if floor is None else floor / STEP_TARGET_S,
            _status(floor, STEP_TARGET_S),
        )
    )
    error = None if default is None else default["root_error_max"]
    targets.append(
        Target(
            f"{DEFAULT_ROW}: max root error against its target (sampled factors)",
            f"<= {ROOT_ERROR_TARGET:g}",
            "-" if error is None else f"{error:.2e}",
            None if error is None else error / ROOT_ERROR_TARGET,
            _status(error, ROOT_ERROR_TARGET),
        )
    )
    default_peak = None if default is None else default["peak_memory_bytes"]
    peak_ratio = None if default_peak is None or not upstream_peak else default_peak / upstream_peak
    targets.append(
        Target(
            f"{DEFAULT_ROW}: peak memory over upstream's",
            f"<= {PEAK_OVER_UPSTREAM_TARGET}x",
            "-" if peak_ratio is None else f"{_gigabytes(default_peak)} ({peak_ratio:.2f}x)",
            None if peak_ratio is None else peak_ratio / PEAK_OVER_UPSTREAM_TARGET,
            _status(peak_ratio, PEAK_OVER_UPSTREAM_TARGET),
        )
    )
    accurate = [
        result
        for result in (every_step or {"results": []})["results"]
        if result["label"].startswith("DASH")
        and result["root_error_max"] is not None
        and result["root_error_max"] <= ROOT_ERROR_TARGET
    ]
    fastest = min(accurate, key=lambda result: result["median_step_s"], default=None)
    targets.append(
        Target(
            f"fastest DASH row with roots within {ROOT_ERROR_TARGET:g}, roots every step",
            f"<= {STEP_TARGET_S} s",
            "-" if fastest is None else f"{fastest['median_step_s']:.4f} s ({fastest['label']})",
            None if fastest is None else fastest["median_step_s"] / STEP_TARGET_S,
            _status(None if fastest is None else fastest["median_step_s"], STEP_TARGET_S),
        )
    )

    for label, anchor_s in DASHGPU_STEP_S.items():
        peer = _result(every_step, label)
        peer_s = None if peer is None else peer["median_step_s"]
        ratio = None if default_s is None or peer_s is None else default_s / peer_s
        measured = "not run here" if peer_s is None else f"{_seconds(peer_s)} in this run"
        targets.append(
            Target(
                f"{DEFAULT_ROW} over {label}, roots every step",
                f"< 1 ({label}: {measured}; anchor {anchor_s} s on 1 x H100)",
                "-" if ratio is None else f"{ratio:.2f}x",
                ratio,
                _status(ratio, 1.0),
            )
        )
    peer_peak = next(
        (
            result["peak_memory_bytes"]
            for result in (every_step or {"results": []})["results"]
            if result["label"].startswith("DashGpu") and result["peak_memory_bytes"] is not None
        ),
        None,
    )
    targets.append(
        Target(
            "DashGpu: peak memory",
            f"anchor {DASHGPU_PEAK_GB} GB",
            _gigabytes(peer_peak),
            None if peer_peak is None else peer_peak / 1e9 / DASHGPU_PEAK_GB,
            "anchor" if peer_peak is not None else "not measured",
        )
    )

    frequency = None if sparse is None else sparse["settings"]["precondition_frequency"]
    upstream_sparse = _result(sparse, "upstream EigenConfig")
    default_sparse = _result(sparse, DEFAULT_ROW)
    upstream_without = (
        None if upstream_sparse is None else upstream_sparse["median_step_without_roots_s"]
    )
    default_without = (
        None if default_sparse is None else default_sparse["median_step_without_roots_s"]
    )
    ratio = (
        None
        if upstream_without is None or default_without is None
        else default_without / upstream_without
    )
    targets.append(
        Target(
            (
                f"{DEFAULT_ROW}, roots every {frequency or '-'} steps: "
                f"step without roots over upstream's"
            ),
            (
                f"<= 1/3 (upstream ~{UPSTREAM_WITHOUT_ROOTS_S * 1e3:.0f} ms, "
                f"DashGpu ~{DASHGPU_WITHOUT_ROOTS_S * 1e3:.0f} ms on 1 x H100)"
            ),
            "-"
            if ratio is None
            else f"{_seconds(default_without)} / {_seconds(upstream_without)} = {ratio:.3f}",
            None if ratio is None else ratio / WITHOUT_ROOTS_OVER_UPSTREAM_TARGET,
            _status(ratio, WITHOUT_ROOTS_OVER_UPSTREAM_TARGET),
        )
    )
    for label in DASHGPU_STEP_S:
        peer_sparse = _result(sparse, label)
        peer_without = None if peer_sparse is None else peer_sparse["median_step_without_roots_s"]
        ratio = (
            None
            if peer_without is None or default_without is None
            else default_without / peer_without
        )
        measured = (
            "not run here" if peer_without is None else f"{_seconds(peer_without)} in this run"
        )
        targets.append(
            Target(
                f"{DEFAULT_ROW} over {label}, step without roots (every {frequency or '-'} steps)",
                f"< 1 ({label}: {measured})",
                "-" if ratio is None else f"{ratio:.2f}x",
                ratio,
                _status(ratio, 1.0),
            )
        )
    return targets


# ---------------------------------------------------------------------------------------------
# The report.


def environment(device: torch.device) -> dict[str, Any]:
    """The machine and software the report was measured on."""
    info: dict[str, Any] = {
        "device": device.type,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "host": platform.node(),
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "cpu_threads": torch.get_num_threads(),
    }
    if device.type == "cuda":
        properties = torch.cuda.get_device_properties(device)
        info |= {
            "gpu": torch.cuda.get_device_name(device),
            "gpu_memory_gb": round(properties.total_memory / 1e9, 1),
            "compute_capability": list(torch.cuda.get_device_capability(device)),
            "cuda": torch.version.cuda,
        }
    else:
        info["gpu"] = None
    return info


def targets_table(targets: list[Target]) -> str:
    lines = ["| target | goal | measured | measured / goal | status |", "|---|---|---|---|---|"]
    lines += [
        (
            f"| {t.name} | {t.goal} | {t.value} | "
            f"{'-' if t.ratio is None else f'{t.ratio:.2f}'} | {t.status} |"
        )
        for t in targets
    ]
    return "\n".join(lines)


#: The line of the report in place of a plot that was not written.
NO_PLOT = "No plot: plots need matplotlib (`pip install matplotlib`)."


def plot_link(out: Path, name: str | None, title: str) -> str:
    """The Markdown image ``out / name`` if a part wrote it and it exists, else :data:`NO_PLOT`."""
    return f"![{title}]({name})" if name is not None and (out / name).is_file() else NO_PLOT


def markdown_report(report: dict[str, Any], out: Path) -> str:
    """``report.md`` in ``out``: environment, elapsed per part, targets, then each part's tables
    and the plots that exist."""
    info = report["environment"]
    machine = info["gpu"] or f"CPU ({info['cpu_threads']} threads)"
    lines = [
        "# GPU report",
        "",
        f"{machine}, torch {info['torch']}"
        + (f", CUDA {info['cuda']}" if info.get("cuda") else "")
        + f", Python {info['python']}, {info['date']}.",
        f"Command: `{report['command']}`"
        + (" (smoke run: tiny shapes, the statuses mean nothing)" if report["smoke"] else ""),
        "",
        "| part | status | elapsed (s) |",
        "|---|---|---|",
    ]
    for name in PARTS:
        part = report["parts"].get(name)
        lines.append(
            f"| {name} | {'not run' if part is None else part['status']} | "
            f"{'-' if part is None else format(part['elapsed_s'], '.1f')} |"
        )
    lines += ["", "## Targets", "", targets_table([Target(**t) for t in report["targets"]]), ""]

    tests = report["parts"].get("tests")
    if tests is not None:
        lines += ["## Tests (`pytest -m cuda`)", ""]
        if tests["status"] == "ok":
            lines.append(
                f"{tests['passed']} passed, {tests['failures']} failed, {tests['errors']} errors, "
                f"{tests['skipped']} skipped ({tests['pytest_time_s']:.1f} s): `{tests['command']}`"
            )
            lines += [
                f"- {f['kind']}: `{f['test']}`: {f['message']}" for f in tests["failed_tests"]
            ]
        else:
            lines += ["```", tests["error"], "```"]
        lines.append("")

    step = report["parts"].get("step")
    if step is not None:
        lines += [f"## Step benchmark (`{step.get('preset', '-')}` preset)", ""]
        if step["status"] == "ok":
            lines.append(f"DashGpu: {step['dashgpu']}.")
            for run in step["runs"]:
                frequency = run["settings"]["precondition_frequency"]
                lines += ["", f"### Roots every {frequency} step(s)", "", run["table"]]
                if run["costs_table"]:
                    lines += [
                        "",
                        "Step costs (one step without and one with roots):",
                        "",
                        run["costs_table"],
                    ]
                if run["results"]:
                    lines += ["", plot_link(out, run.get("plot"), "step times")]
        else:
            lines += ["```", step["error"], "```"]
        lines.append("")

    solvers = report["parts"].get("solvers")
    if solvers is not None:
        lines += [f"## Solver benchmark (`{solvers.get('preset', '-')}` preset, root 4)", ""]
        if solvers["status"] == "ok":
            lines += [solvers["peak_table"], ""]
            for shape, table in solvers["tables"].items():
                lines += [
                    f"### Stack {shape}: error median / max (fraction flagged)",
                    "",
                    table,
                    "",
                ]
            lines.append(plot_link(out, solvers.get("plot"), "error against time"))
        else:
            lines += ["```", solvers["error"], "```"]
        lines.append("")
    return "\n".join(lines)


def write_report(report: dict[str, Any], out: Path) -> None:
    report["targets"] = [dataclasses.asdict(t) for t in evaluate_targets(report["parts"])]
    (out / "report.json").write_text(json.dumps(report, indent=2, default=str))
    (out / "report.md").write_text(markdown_report(report, out))


def build_parser() -> argparse.ArgumentParser:
    """The command line (see the module docstring)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=cli.HelpFormatter)
    parser.add_argument(
        "--out",
        type=Path,
        default=Path("gpu_report"),
        help="folder of report.md, report.json, tests.xml and the plots",
    )
    parser.add_argument(
        "--device",
        default="cuda" if torch.cuda.is_available() else "cpu",
        help="torch device of every part; cuda when available",
    )
    parser.add_argument("--smoke", action="store_true", help="tiny shapes, a few rows and tests")
    parser.add_argument(
        "--only",
        nargs="+",
        choices=PARTS,
        help="parts to run, the others kept from <out>/report.json (default: all)",
    )
    parser.add_argument(
        "--budget-s", type=float, default=450.0, help="seconds for all parts together"
    )
    return parser


def main() -> None:
    parser = build_parser()
    args = parser.parse_args()

    start = time.perf_counter()
    deadline = start + args.budget_s
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda but torch sees no CUDA device")
    plan = SMOKE if args.smoke else FULL
    args.out.mkdir(parents=True, exist_ok=True)
    previous = args.out / "report.json"
    kept = json.loads(previous.read_text())["parts"] if args.only and previous.exists() else {}
    report: dict[str, Any] = {
        "command": shlex.join([f"scripts/{Path(sys.argv[0]).name}", *sys.argv[1:]]),
        "smoke": args.smoke,
        "environment": environment(device),
        "plan": dataclasses.asdict(plan),
        "parts": {name: part for name, part in kept.items() if name not in (args.only or ())},
    }
    print(f"{report['environment']}", flush=True)
    for name in args.only or PARTS:
        now = time.perf_counter()
        match name:
            case "tests":
                budget = min(plan.test_budget_s, max(deadline - now, 1.0))
                part = partial(tests_part, device, plan, args.out, budget)
            case "step":
                solver_reserve = plan.solver_budget_s if "solvers" in (args.only or PARTS) else 0.0
                part = partial(
                    step_part, device, plan, args.out, max(deadline - solver_reserve, now + 1.0)
                )
            case _:
                part = partial(solvers_part, device, plan, args.out, max(deadline, now + 1.0))
        report["parts"][name] = run_part(name, part)
        write_report(report, args.out)
    report["elapsed_s"] = time.perf_counter() - start
    write_report(report, args.out)
    print("\n" + targets_table([Target(**t) for t in report["targets"]]))
    print(
        f"\nwrote {args.out / 'report.md'} and {args.out / 'report.json'} "
        f"({report['elapsed_s']:.1f} s)"
    )


if __name__ == "__main__":
    main()
