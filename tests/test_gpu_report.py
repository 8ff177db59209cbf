"""``scripts/gpu_report.py --device cpu --smoke``: the code path of the GPU report, on tiny shapes.

The run on a GPU differs from this one only in the device and the sizes (``FULL`` against
``SMOKE``): same parts, same functions of ``distributed_shampoo_dash.benchmarks``, same files.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.upstream
pytest.importorskip("distributed_shampoo")

from distributed_shampoo_dash.benchmarks import gpu_markdown, gpu_parts, gpu_plan, gpu_targets
from distributed_shampoo_dash.benchmarks.step_tables import plot as step_plot

REPOSITORY = Path(__file__).resolve().parents[1]
SCRIPT = REPOSITORY / "scripts" / "gpu_report.py"
ENVIRONMENT = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPOSITORY)}


def run_report(out: Path, *extra: str) -> dict:
    completed = subprocess.run(
        [sys.executable, str(SCRIPT), "--device", "cpu", "--smoke", "--out", str(out), *extra],
        cwd=REPOSITORY,
        env=ENVIRONMENT,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    return json.loads((out / "report.json").read_text())


@pytest.fixture(scope="module")
def smoke_report(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("gpu_report")
    return out, run_report(out)


def test_every_part_runs_and_writes_the_report_and_plots(smoke_report: tuple[Path, dict]) -> None:
    out, report = smoke_report
    assert {name: part["status"] for name, part in report["parts"].items()} == {
        "tests": "ok",
        "step": "ok",
        "solvers": "ok",
    }
    for name in ("report.md", "report.json", "step_every1.png", "step_every2.png", "solvers.png"):
        assert (out / name).stat().st_size > 0, name
    markdown = (out / "report.md").read_text()
    assert "## Targets" in markdown and "smoke run" in markdown


def test_the_cuda_test_subset_ran_on_the_requested_device(smoke_report: tuple[Path, dict]) -> None:
    tests = smoke_report[1]["parts"]["tests"]
    assert tests["devices"] == "cpu"
    assert tests["passed"] >= 7 and tests["failures"] == tests["errors"] == 0
    assert "-m cuda" in tests["command"]


def test_step_rows_have_times_root_errors_and_step_costs(smoke_report: tuple[Path, dict]) -> None:
    every_step, sparse = smoke_report[1]["parts"]["step"]["runs"]
    assert [r["label"] for r in every_step["results"]] == list(gpu_plan.SMOKE_STEP_ROWS)
    assert not every_step["failures"] and not sparse["failures"]
    upstream, *dash_rows = sparse["results"]
    for result in sparse["results"]:
        assert result["median_step_without_roots_s"] > 0 and result["finite"]
        assert result["costs_without_roots"]["ops"] > 0 and result["costs_with_roots"]["flops"] > 0
    default = next(r for r in dash_rows if r["label"] == gpu_plan.DEFAULT_ROW)
    assert default["root_error_max"] <= 2e-3
    assert default["floor_flops"] > 0
    assert default["costs_with_roots"]["syncs"] - default["costs_without_roots"]["syncs"] == 1
    for which in ("costs_without_roots", "costs_with_roots"):
        assert upstream[which]["ops"] > 2 * default[which]["ops"]


def test_solver_rows_have_fractions_of_the_measured_peaks(smoke_report: tuple[Path, dict]) -> None:
    (shape,) = smoke_report[1]["parts"]["solvers"]["shapes"]
    assert set(shape["peaks_tflops"]) == {"fp32", "tf32", "bf16", "fp16"}
    matmul_rows = [row for row in shape["rows"] if row["products"] is not None]
    assert matmul_rows and all(0 < row["fraction_of_peak"] for row in matmul_rows)


def test_every_target_is_reported(smoke_report: tuple[Path, dict]) -> None:
    targets = {target["name"]: target for target in smoke_report[1]["targets"]}
    assert len(targets) >= 10
    measured = [t for t in targets.values() if t["status"] in ("met", "not met")]
    assert any("step without roots over upstream's" in name for name in targets)
    assert all(t["ratio"] is not None for t in measured)


def test_only_reruns_the_named_parts_and_keeps_the_others(smoke_report: tuple[Path, dict]) -> None:
    out, first = smoke_report
    rerun = run_report(out, "--only", "solvers")
    assert rerun["parts"]["step"] == first["parts"]["step"]
    assert rerun["parts"]["tests"] == first["parts"]["tests"]
    assert rerun["parts"]["solvers"]["elapsed_s"] != first["parts"]["solvers"]["elapsed_s"]


def test_a_part_that_raises_is_recorded_not_raised() -> None:
    def broken() -> dict:
        raise RuntimeError("no device")

    record = gpu_parts.run_part("step", broken)
    assert record["status"] == "error" and "RuntimeError: no device" in record["error"]
    assert record["elapsed_s"] >= 0
    targets = gpu_targets.evaluate_targets({"step": record})
    assert targets and all(t.status in ("not measured",) for t in targets)


def step_result(label: str, step_s: float, without_roots_s: float | None = None) -> dict:
    """A step-benchmark result of a row that ran, with the fields the targets read."""
    return {
        "label": label,
        "median_step_s": step_s,
        "median_step_without_roots_s": without_roots_s,
        "peak_memory_bytes": None,
        "root_error_max": 1e-5 if label.startswith("DASH") else None,
        "floor_flops_by_precision": {},
    }


def step_part(every_step: list[dict], sparse: list[dict]) -> dict:
    """A step part that ran at frequencies 1 and 10 with the given results."""
    runs = [
        {"settings": {"precondition_frequency": frequency}, "results": results, "failures": []}
        for frequency, results in ((1, every_step), (10, sparse))
    ]
    return {"status": "ok", "runs": runs}


def dashgpu_targets(targets: list) -> list:
    return [t for t in targets if "over DashGpu" in t.name]


def test_dashgpu_targets_are_not_measured_without_a_dashgpu_row() -> None:
    every_step = [
        step_result("upstream EigenConfig", 3.0),
        step_result(gpu_plan.DEFAULT_ROW, 0.1),  # below every DashGpu anchor
    ]
    sparse = [
        step_result("upstream EigenConfig", 3.0, 0.1),
        step_result(gpu_plan.DEFAULT_ROW, 0.1, 0.01),
    ]
    targets = gpu_targets.evaluate_targets({"step": step_part(every_step, sparse)})
    peer = dashgpu_targets(targets)
    assert len(peer) == 2 * len(gpu_targets.DASHGPU_STEP_S)
    assert all(t.status == "not measured" and t.ratio is None and t.value == "-" for t in peer)
    assert all("not run here" in t.goal for t in peer)
    default = next(
        t for t in targets if t.name == f"{gpu_plan.DEFAULT_ROW}, roots every step: median step"
    )
    assert default.status == "met"


def test_dashgpu_targets_compare_with_the_dashgpu_rows_of_the_run() -> None:
    coupled, newton_db = gpu_targets.DASHGPU_STEP_S
    every_step = [
        step_result(gpu_plan.DEFAULT_ROW, 0.1),
        step_result(coupled, 0.05),
        step_result(newton_db, 0.5),
    ]
    sparse = [step_result(gpu_plan.DEFAULT_ROW, 0.1, 0.01), step_result(coupled, 0.05, 0.02)]
    targets = gpu_targets.evaluate_targets({"step": step_part(every_step, sparse)})
    outcomes = {t.name: (t.ratio, t.status) for t in dashgpu_targets(targets)}
    every = f"{gpu_plan.DEFAULT_ROW} over {{}}, roots every step"
    without = f"{gpu_plan.DEFAULT_ROW} over {{}}, step without roots (every 10 steps)"
    assert outcomes == {
        every.format(coupled): (2.0, "not met"),
        every.format(newton_db): (0.2, "met"),
        without.format(coupled): (0.5, "met"),
        without.format(newton_db): (None, "not measured"),  # no row without roots in the run
    }


def minimal_report(step_plot: str | None, solvers_plot: str | None) -> dict:
    """A report whose step part ran one row at frequency 1 and whose solver part ran."""
    run = {
        "settings": {"precondition_frequency": 1},
        "results": [step_result("upstream EigenConfig", 1.0)],
        "failures": [],
        "table": "| step table |",
        "costs_table": "",
        "plot": step_plot,
    }
    return {
        "environment": {"gpu": None, "cpu_threads": 1, "torch": "t", "python": "p", "date": "d"},
        "command": "scripts/gpu_report.py",
        "smoke": True,
        "parts": {
            "step": {
                "status": "ok",
                "elapsed_s": 1.0,
                "preset": "smoke",
                "dashgpu": "-",
                "runs": [run],
            },
            "solvers": {
                "status": "ok",
                "elapsed_s": 1.0,
                "preset": "smoke",
                "peak_table": "",
                "tables": {},
                "plot": solvers_plot,
            },
        },
        "targets": [],
    }


def test_the_report_links_only_plots_that_were_written(tmp_path: Path) -> None:
    report = minimal_report("step_every1.png", "solvers.png")
    markdown = gpu_markdown.markdown_report(report, tmp_path)  # neither file exists
    assert "![" not in markdown and markdown.count(gpu_markdown.NO_PLOT) == 2
    (tmp_path / "step_every1.png").write_bytes(b"png")
    markdown = gpu_markdown.markdown_report(report, tmp_path)
    assert (
        "![step times](step_every1.png)" in markdown and markdown.count(gpu_markdown.NO_PLOT) == 1
    )
    (tmp_path / "solvers.png").write_bytes(b"png")  # left from another run: not this part's plot
    markdown = gpu_markdown.markdown_report(minimal_report("step_every1.png", None), tmp_path)
    assert "solvers.png" not in markdown and markdown.count(gpu_markdown.NO_PLOT) == 1


def test_without_matplotlib_the_plots_are_not_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib raises ImportError
    path = tmp_path / "step.png"
    assert step_plot([step_result("upstream EigenConfig", 1.0)], path) is False
    assert not path.exists()


def test_every_row_of_the_full_report_is_a_row_of_the_step_benchmark() -> None:
    from distributed_shampoo_dash.benchmarks import step_rows

    labels = [row.label for row in step_rows.rows()]
    assert set(gpu_plan.STEP_ROWS) <= set(labels)
    assert gpu_plan.STEP_ROWS[0] == labels[0] == "upstream EigenConfig"
    assert {"DASH minimax tf32 (GPU default)", gpu_plan.DEFAULT_ROW} <= set(gpu_plan.STEP_ROWS)
