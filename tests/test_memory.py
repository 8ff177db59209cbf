"""Transient memory of a step: DASH adds at most a quarter of upstream's, plus 16 MiB.

Each measurement runs in a fresh process (``scripts/benchmark.py --memory-of``: one thread, freed
memory returned to the OS at once, peak resident set of ``optimizer.step()`` minus the resident
set before it, over a root step), on a model of many same-shape layers and on the Llama-shaped
model of mixed shapes. The solvers' work space, which sizes the chunks of root computations, is
checked the same way.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.upstream
pytest.importorskip("distributed_shampoo")

from tests.solver_cases import ENTRY_CASES, VARIANT_CASES, SolverCase, case_names

REPOSITORY = Path(__file__).resolve().parents[1]
BENCHMARK = REPOSITORY / "scripts" / "benchmark.py"
ENVIRONMENT = {**os.environ, "OMP_NUM_THREADS": "1", "MALLOC_MMAP_THRESHOLD_": "65536"}
MIB = 2**20

UPSTREAM = "upstream EigenConfig"
DASH_ROWS = ["DASH EigenConfig", "DASH minimax fp32", "DASH Chebyshev fp32 (degree 60)"]


def transient_memory(label: str, preset: str) -> int:
    completed = subprocess.run(
        [sys.executable, str(BENCHMARK), "--memory-of", label, "--preset", preset, "--warmup", "1"],
        env=ENVIRONMENT,
        capture_output=True,
        text=True,
        check=True,
    )
    return int(json.loads(completed.stdout.strip().splitlines()[-1])["transient_memory_bytes"])


@pytest.mark.parametrize("preset", ["layers", "cpu"])
def test_dash_step_memory_is_within_a_quarter_of_upstreams_plus_16_mib(preset: str) -> None:
    upstream = transient_memory(UPSTREAM, preset)
    measured = {label: transient_memory(label, preset) for label in DASH_ROWS}
    report = {label: round(value / MIB, 1) for label, value in measured.items()} | {
        "upstream": upstream / MIB
    }
    assert all(value <= 1.25 * upstream + 16 * MIB for value in measured.values()), report


SOLVER_CALL = """
import json, sys, torch
from pathlib import Path
from distributed_shampoo_dash.integration.dispatch import batched_solver
from tests.solver_cases import CASES, root_inv_config

def status(field):
    line = next(
        l for l in Path("/proc/self/status").read_text().splitlines() if l.startswith(field + ":")
    )
    return int(line.split()[1]) * 1024

solver = batched_solver(root_inv_config(CASES[sys.argv[1]]), 4.0, 1e-6)
samples = torch.randn(64, 256, 512, generator=torch.Generator().manual_seed(0))
stack = samples @ samples.mT / 512
del samples
solver.solve(stack[:2])
before = status("VmRSS")
Path("/proc/self/clear_refs").write_text("5")
result = solver.solve(stack)
print(json.dumps({"stacks": (status("VmHWM") - before) / stack.nbytes}))
"""


#: Every solver, and variants of a solver, which must stay within its work space.
WORKSPACE_CASES = (*ENTRY_CASES, *VARIANT_CASES)


@pytest.mark.parametrize("call", WORKSPACE_CASES, ids=case_names(WORKSPACE_CASES))
def test_solver_allocates_at_most_its_documented_work_space(call: SolverCase) -> None:
    completed = subprocess.run(
        [sys.executable, "-c", SOLVER_CALL, call.name],
        cwd=REPOSITORY,
        env=ENVIRONMENT,
        capture_output=True,
        text=True,
        check=True,
    )
    stacks = json.loads(completed.stdout.strip().splitlines()[-1])["stacks"]
    assert stacks <= call.solver.workspace + 0.1, stacks
