"""The targets of the docs as a table, and where a GPU report's measurements stand against them.

Each target is one :class:`TargetSpec` of :data:`TARGETS`: its name, the measured quantity (a
function of the report's step and solver parts), a threshold (a goal to meet, or an anchor
measured elsewhere to compare with) and the source that states it. :func:`evaluate_targets`
turns each into a :class:`Target`: measured value, ratio to the threshold and status. A target is
"not measured" unless every row its quantity is computed from ran in the report's run (an anchor
is a goal, never a measurement).

Sources: ``docs/benchmarks.md`` ("On a GPU: ``scripts/gpu_report.py``", the targets and anchors
measured on 1 x H100 with the ``gpu`` preset, roots every step) and ``docs/solvers.md``.
"""

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from distributed_shampoo_dash.benchmarks.gpu_plan import DEFAULT_ROW

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

#: Where the targets and anchors are stated.
GPU_TARGETS_SOURCE = "docs/benchmarks.md, On a GPU"


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


@dataclass(frozen=True)
class Measured:
    """A measured quantity: its value (in the unit of the threshold) and how it is shown."""

    value: float
    text: str


def _result(run: dict[str, Any] | None, label: str) -> dict[str, Any] | None:
    if run is None:
        return None
    return next((result for result in run["results"] if result["label"] == label), None)


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


@dataclass(frozen=True)
class Runs:
    """What the targets are computed from: the step part's first run (roots every step), its
    last (roots less often, if it ran more than one) and the solver part."""

    every_step: dict[str, Any] | None
    sparse: dict[str, Any] | None
    solvers: dict[str, Any] | None

    @classmethod
    def of(cls, parts: dict[str, Any]) -> "Runs":
        step = parts.get("step")
        runs = [] if step is None or step.get("status") != "ok" else step["runs"]
        return cls(
            every_step=runs[0] if runs else None,
            sparse=runs[-1] if len(runs) > 1 else None,
            solvers=parts.get("solvers"),
        )

    @property
    def frequency(self) -> int | None:
        return None if self.sparse is None else self.sparse["settings"]["precondition_frequency"]

    def field(self, sparse: bool, label: str, key: str) -> Any:
        """``key`` of the row ``label`` in the sparse or every-step run (None if it did not run)."""
        result = _result(self.sparse if sparse else self.every_step, label)
        return None if result is None else result[key]


#: A measured quantity of a report, None where a row it needs did not run.
Quantity = Callable[[Runs], Measured | None]


@dataclass(frozen=True)
class TargetSpec:
    """One target of the docs.

    Attributes:
        name (str): What is measured; ``{frequency}`` and ``{peak_source}`` are filled in from
            the run.
        quantity (Quantity): The measured value, in the unit of ``threshold``.
        threshold (float): The goal (met when the value is at most this) or the anchor.
        goal (str): The goal as the docs state it; ``{note}`` is filled in by ``note``.
        source (str): Where the target or anchor is stated.
        is_anchor (bool): A reference value measured elsewhere, compared with, never "met".
        note (Callable[[Runs], str]): Extra words for the goal (e.g. whether a row ran here).
    """

    name: str
    quantity: Quantity
    threshold: float
    goal: str
    source: str
    is_anchor: bool = False
    note: Callable[[Runs], str] = lambda runs: ""

    def evaluate(self, runs: Runs) -> Target:
        measured = self.quantity(runs)
        peak_source = matmul_peaks(runs.solvers)[1]
        name = self.name.format(frequency=runs.frequency or "-", peak_source=peak_source)
        goal = self.goal.format(note=self.note(runs))
        if measured is None:
            return Target(name, goal, "-", None, "not measured")
        ratio = measured.value / self.threshold
        if self.is_anchor:
            status = "anchor"
        else:
            status = "met" if measured.value <= self.threshold else "not met"
        return Target(name, goal, measured.text, ratio, status)


# ---------------------------------------------------------------------------------------------
# The measured quantities.


def _step_seconds(label: str) -> Quantity:
    """Median step of a row, roots every step."""

    def quantity(runs: Runs) -> Measured | None:
        seconds = runs.field(False, label, "median_step_s")
        return None if seconds is None else Measured(seconds, _seconds(seconds))

    return quantity


def _upstream_peak_gb(runs: Runs) -> Measured | None:
    peak = runs.field(False, "upstream EigenConfig", "peak_memory_bytes")
    return None if peak is None else Measured(peak / 1e9, _gigabytes(peak))


def _default_floor_seconds(runs: Runs) -> Measured | None:
    default = _result(runs.every_step, DEFAULT_ROW)
    floor = None if default is None else floor_seconds(default, matmul_peaks(runs.solvers)[0])
    return None if floor is None else Measured(floor, _seconds(floor))


def _default_root_error(runs: Runs) -> Measured | None:
    error = runs.field(False, DEFAULT_ROW, "root_error_max")
    return None if error is None else Measured(error, f"{error:.2e}")


def _default_peak_over_upstream(runs: Runs) -> Measured | None:
    peak = runs.field(False, DEFAULT_ROW, "peak_memory_bytes")
    upstream = runs.field(False, "upstream EigenConfig", "peak_memory_bytes")
    if peak is None or not upstream:
        return None
    ratio = peak / upstream
    return Measured(ratio, f"{_gigabytes(peak)} ({ratio:.2f}x)")


def _fastest_accurate_seconds(runs: Runs) -> Measured | None:
    accurate = [
        result
        for result in (runs.every_step or {"results": []})["results"]
        if result["label"].startswith("DASH")
        and result["root_error_max"] is not None
        and result["root_error_max"] <= ROOT_ERROR_TARGET
    ]
    fastest = min(accurate, key=lambda result: result["median_step_s"], default=None)
    if fastest is None:
        return None
    seconds = fastest["median_step_s"]
    return Measured(seconds, f"{seconds:.4f} s ({fastest['label']})")


def _default_over_peer(label: str, sparse: bool) -> Quantity:
    """The default row's median step (``sparse``: without roots) over the ``DashGpu`` row's."""
    key = "median_step_without_roots_s" if sparse else "median_step_s"

    def quantity(runs: Runs) -> Measured | None:
        mine, theirs = runs.field(sparse, DEFAULT_ROW, key), runs.field(sparse, label, key)
        if mine is None or theirs is None:
            return None
        return Measured(mine / theirs, f"{mine / theirs:.2f}x")

    return quantity


def _peer_note(label: str, sparse: bool) -> Callable[[Runs], str]:
    """Whether the ``DashGpu`` row ran here, and its time."""
    key = "median_step_without_roots_s" if sparse else "median_step_s"

    def note(runs: Runs) -> str:
        seconds = runs.field(sparse, label, key)
        return "not run here" if seconds is None else f"{_seconds(seconds)} in this run"

    return note


def _peer_peak_gb(runs: Runs) -> Measured | None:
    peak = next(
        (
            result["peak_memory_bytes"]
            for result in (runs.every_step or {"results": []})["results"]
            if result["label"].startswith("DashGpu") and result["peak_memory_bytes"] is not None
        ),
        None,
    )
    return None if peak is None else Measured(peak / 1e9, _gigabytes(peak))


def _without_roots_over_upstream(runs: Runs) -> Measured | None:
    mine = runs.field(True, DEFAULT_ROW, "median_step_without_roots_s")
    upstream = runs.field(True, "upstream EigenConfig", "median_step_without_roots_s")
    if mine is None or upstream is None:
        return None
    ratio = mine / upstream
    return Measured(ratio, f"{_seconds(mine)} / {_seconds(upstream)} = {ratio:.3f}")


# ---------------------------------------------------------------------------------------------
# The table.

#: Every target of the docs, in the report's order.
TARGETS: tuple[TargetSpec, ...] = (
    TargetSpec(
        "upstream EigenConfig, roots every step: median step",
        _step_seconds("upstream EigenConfig"),
        sum(UPSTREAM_STEP_S) / 2,
        f"anchor {UPSTREAM_STEP_S[0]}-{UPSTREAM_STEP_S[1]} s (1 x H100)",
        GPU_TARGETS_SOURCE,
        is_anchor=True,
    ),
    TargetSpec(
        "upstream EigenConfig: peak memory",
        _upstream_peak_gb,
        UPSTREAM_PEAK_GB,
        f"anchor {UPSTREAM_PEAK_GB} GB",
        GPU_TARGETS_SOURCE,
        is_anchor=True,
    ),
    TargetSpec(
        f"{DEFAULT_ROW}, roots every step: median step",
        _step_seconds(DEFAULT_ROW),
        STEP_TARGET_S,
        f"<= {STEP_TARGET_S} s",
        GPU_TARGETS_SOURCE,
    ),
    TargetSpec(
        f"{DEFAULT_ROW}: time of its solver's products per root computation at {{peak_source}}",
        _default_floor_seconds,
        STEP_TARGET_S,
        f"a floor of the step; fits <= {STEP_TARGET_S} s",
        "docs/benchmarks.md, What a step costs on a GPU (the solver floor)",
    ),
    TargetSpec(
        f"{DEFAULT_ROW}: max root error against its target (sampled factors)",
        _default_root_error,
        ROOT_ERROR_TARGET,
        f"<= {ROOT_ERROR_TARGET:g}",
        GPU_TARGETS_SOURCE,
    ),
    TargetSpec(
        f"{DEFAULT_ROW}: peak memory over upstream's",
        _default_peak_over_upstream,
        PEAK_OVER_UPSTREAM_TARGET,
        f"<= {PEAK_OVER_UPSTREAM_TARGET}x",
        GPU_TARGETS_SOURCE,
    ),
    TargetSpec(
        f"fastest DASH row with roots within {ROOT_ERROR_TARGET:g}, roots every step",
        _fastest_accurate_seconds,
        STEP_TARGET_S,
        f"<= {STEP_TARGET_S} s",
        GPU_TARGETS_SOURCE,
    ),
    *(
        TargetSpec(
            f"{DEFAULT_ROW} over {label}, roots every step",
            _default_over_peer(label, sparse=False),
            1.0,
            f"< 1 ({label}: {{note}}; anchor {anchor_s} s on 1 x H100)",
            GPU_TARGETS_SOURCE,
            note=_peer_note(label, sparse=False),
        )
        for label, anchor_s in DASHGPU_STEP_S.items()
    ),
    TargetSpec(
        "DashGpu: peak memory",
        _peer_peak_gb,
        DASHGPU_PEAK_GB,
        f"anchor {DASHGPU_PEAK_GB} GB",
        GPU_TARGETS_SOURCE,
        is_anchor=True,
    ),
    TargetSpec(
        f"{DEFAULT_ROW}, roots every {{frequency}} steps: step without roots over upstream's",
        _without_roots_over_upstream,
        WITHOUT_ROOTS_OVER_UPSTREAM_TARGET,
        (
            f"<= 1/3 (upstream ~{UPSTREAM_WITHOUT_ROOTS_S * 1e3:.0f} ms, "
            f"DashGpu ~{DASHGPU_WITHOUT_ROOTS_S * 1e3:.0f} ms on 1 x H100)"
        ),
        GPU_TARGETS_SOURCE,
    ),
    *(
        TargetSpec(
            f"{DEFAULT_ROW} over {label}, step without roots (every {{frequency}} steps)",
            _default_over_peer(label, sparse=True),
            1.0,
            f"< 1 ({label}: {{note}})",
            GPU_TARGETS_SOURCE,
            note=_peer_note(label, sparse=True),
        )
        for label in DASHGPU_STEP_S
    ),
)


def evaluate_targets(parts: dict[str, Any]) -> list[Target]:
    """Every target of :data:`TARGETS` against the step part's results (runs at the plan's
    frequencies: the first computes roots every step, the last less often), with the solver
    part's peaks."""
    runs = Runs.of(parts)
    return [spec.evaluate(runs) for spec in TARGETS]
