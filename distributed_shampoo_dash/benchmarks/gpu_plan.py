"""What a GPU report run does: its rows, sizes and time budgets (:data:`FULL` on a GPU,
:data:`SMOKE` on tiny shapes, which ``tests/test_gpu_report.py`` runs on a CPU)."""

from dataclasses import dataclass

PARTS = ("tests", "step", "solvers")


#: Step-benchmark rows of the report (labels of ``scripts/benchmark.py``; upstream first).
STEP_ROWS = (
    "upstream EigenConfig",
    "DASH EigenConfig",
    "DASH minimax fp32",
    "DASH minimax tf32 (GPU default)",
    "DASH minimax tf32, fp32 step products",
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
