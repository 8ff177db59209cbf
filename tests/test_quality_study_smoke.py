"""Smoke test of ``scripts/quality_study.py``: three runs, one seed, a few steps, then the report.

Runs the script as a subprocess on the first 200 stdlib files for 8 steps of the cpu preset with
``upstream-eigen``, ``dash-eigen`` and ``minimax``, and checks the JSON logs, the report files,
finite losses and that dash-eigen's validation losses equal upstream-eigen's within 1e-3 at every
logged point.
Epsilon is 1e-6 here, not the study's 1e-10: at 1e-10 the inverse roots of this model's
near-singular early factors amplify fp32 rounding so much that upstream-eigen run against itself
with 1e-7 relative gradient noise already moves the validation loss by ~3e-3 (docs/quality.md),
so the check would measure rounding, not DASH. Takes about 15 s on two cores.
"""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.upstream
pytest.importorskip("distributed_shampoo")

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "quality_study.py"
RUNS = ("upstream-eigen", "dash-eigen", "minimax")
STEPS, EVAL_EVERY = 8, 2


def test_quality_study_smoke_logs_finite_losses_and_dash_eigen_matches_upstream(
    tmp_path: Path,
) -> None:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    command = [
        sys.executable, str(SCRIPT), "--preset", "cpu", "--device", "cpu",
        "--runs", *RUNS, "--seeds", "0", "--steps", str(STEPS), "--eval-every", str(EVAL_EVERY),
        "--eval-windows", "16", "--max-files", "200", "--epsilon", "1e-6", "--out", str(tmp_path),
    ]  # fmt: skip
    result = subprocess.run(
        command, check=False, capture_output=True, text=True, env=env, timeout=240
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]

    logs = {}
    for run in RUNS:
        path = tmp_path / run / "seed0.json"
        assert path.is_file(), output[-4000:]
        logs[run] = json.loads(path.read_text())
    for run, log in logs.items():
        assert log["finite"] and log["failure"] is None, (run, log["failure"])
        assert log["config"]["run"] == run and log["config"]["epsilon"] == 1e-6
        assert [point["step"] for point in log["points"]] == list(range(0, STEPS + 1, EVAL_EVERY))
        losses = [point["val_loss"] for point in log["points"]]
        losses += [point["train_loss"] for point in log["points"][1:]]
        assert all(math.isfinite(loss) for loss in losses), (run, losses)
        assert log["points"][-1]["val_loss"] < log["points"][0]["val_loss"], run
        assert log["optimizer_ms_mean"] > 0
    assert logs["dash-eigen"]["config"]["preconditioner_lists"] == [
        "BatchedRootInvShampooPreconditionerList"
    ]
    assert logs["upstream-eigen"]["config"]["preconditioner_lists"] == [
        "RootInvShampooPreconditionerList"
    ]
    assert set(logs["minimax"]["fallbacks"]) == {"eigh", "replayed"}

    upstream = [point["val_loss"] for point in logs["upstream-eigen"]["points"]]
    dash = [point["val_loss"] for point in logs["dash-eigen"]["points"]]
    assert max(abs(a - b) for a, b in zip(upstream, dash, strict=True)) <= 1e-3, (upstream, dash)

    report = (tmp_path / "report.md").read_text()
    assert "within 0.001 at every logged point: PASS" in report, report
    assert "| minimax | 0 |" in report
    assert (tmp_path / "quality.png").is_file() or "matplotlib is not installed" in output


def test_tensor_core_settings_round_the_products_they_name() -> None:
    """``SOLVER`` and ``STEP`` emulate every product requested at TF32 and no other; ``STEP``
    leaves the step's Gram and preconditioning products at the DASH form's default (on TF32 with
    a tensor-core solver), ``SOLVER`` keeps them in fp32; ``OFF`` emulates nothing."""
    import torch

    from distributed_shampoo_dash.benchmarks.quality_runs import RUNS, TensorCores
    from distributed_shampoo_dash.solvers.precision import fp32_matmul_precision, round_to_tf32

    generator = torch.Generator().manual_seed(0)
    a, b = torch.randn(64, 64, generator=generator), torch.randn(64, 64, generator=generator)
    plain, tf32 = a @ b, round_to_tf32(a) @ round_to_tf32(b)
    assert not torch.equal(tf32, plain)
    for setting, requested in (
        (TensorCores.OFF, plain),
        (TensorCores.SOLVER, tf32),
        (TensorCores.STEP, tf32),
    ):
        with setting.emulated():
            assert torch.equal(a @ b, plain), setting
            with fp32_matmul_precision("tf32"):
                assert torch.equal(a @ b, requested), setting
    assert TensorCores.SOLVER.tf32_step_products is False
    assert TensorCores.STEP.tf32_step_products is None
    assert RUNS["minimax-tf32"].tensor_cores is TensorCores.SOLVER
    assert RUNS["minimax-tf32-step"].tensor_cores is TensorCores.STEP
