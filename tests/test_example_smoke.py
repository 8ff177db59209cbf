"""Smoke test of ``examples/train_distributed.py``: world size 1 (no torchrun), DASH Newton-DB.

Runs the script as a subprocess for 3 steps of the tiny preset with inverse roots at every step,
so DASH's batched list and the Newton-DB solver both run, and checks that it exits 0 and reports
finite losses. Takes about 10 s on two cores (most of it imports and reading the corpus).
"""

import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.upstream
pytest.importorskip("distributed_shampoo")

SCRIPT = Path(__file__).resolve().parents[1] / "examples" / "train_distributed.py"
#: torchrun's variables; without them the script starts its own one-process group.
TORCHRUN_VARIABLES = (
    "RANK",
    "WORLD_SIZE",
    "LOCAL_RANK",
    "LOCAL_WORLD_SIZE",
    "MASTER_ADDR",
    "MASTER_PORT",
)


def test_train_distributed_runs_one_process_with_dash_newton_db() -> None:
    env = {name: value for name, value in os.environ.items() if name not in TORCHRUN_VARIABLES}
    env["OMP_NUM_THREADS"] = "1"
    command = [
        sys.executable, str(SCRIPT),
        "--preset", "tiny", "--steps", "3", "--precondition-frequency", "1",
        "--solver", "minimax", "--distributed", "ddp", "--device", "cpu",
        "--eval-batches", "1", "--log-every", "1",
    ]  # fmt: skip
    result = subprocess.run(
        command, check=False, capture_output=True, text=True, env=env, timeout=240
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]

    assert "DASH on (preconditioner list: BatchedRootInvShampooPreconditionerList)" in result.stdout
    assert "world size 1" in result.stdout
    step_losses = [
        float(loss)
        for loss in re.findall(r"^step \d+/3 \| loss (\S+)", result.stdout, re.MULTILINE)
    ]
    assert len(step_losses) == 3, result.stdout
    summary = re.search(
        r"^summary: .*\| loss (\S+) -> (\S+) \| val loss (\S+) \|", result.stdout, re.MULTILINE
    )
    assert summary is not None, result.stdout
    losses = [float(value) for value in summary.groups()]
    assert all(math.isfinite(loss) for loss in step_losses + losses), result.stdout
    # A byte-level model starts near ln(256) = 5.55 nats and must not get worse in 3 steps.
    assert losses[0] < 6.0 and losses[1] < losses[0], result.stdout
