"""``scripts/gpu_report.py --device cpu --smoke``: the code path of the GPU report, on tiny shapes.

The run on a GPU differs from this one only in the device and the sizes (``FULL`` against
``SMOKE``): same parts, same functions of the benchmark scripts, same report files.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.upstream
pytest.importorskip("distributed_shampoo")

from tests.script_modules import load_script

REPOSITORY = Path(__file__).resolve().parents[1]
SCRIPT = REPOSITORY / "scripts" / "gpu_report.py"
ENVIRONMENT = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPOSITORY)}

gpu_report = load_script("gpu_report")


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
    assert [r["label"] for r in every_step["results"]] == list(gpu_report.SMOKE_STEP_ROWS)
    assert not every_step["failures"] and not sparse["failures"]
    upstream, *dash_rows = sparse["results"]
    for result in sparse["results"]:
        assert result["median_step_without_roots_s"] > 0 and result["finite"]
        assert result["costs_without_roots"]["ops"] > 0 and result["costs_with_roots"]["flops"] > 0
    default = next(r for r in dash_rows if r["label"] == gpu_report.DEFAULT_ROW)
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

    record = gpu_report.run_part("step", broken)
    assert record["status"] == "error" and "RuntimeError: no device" in record["error"]
    assert record["elapsed_s"] >= 0
    targets = gpu_report.evaluate_targets({"step": record})
    assert targets and all(t.status in ("not measured",) for t in targets)
