"""Times every batched inverse-root solver x precision x iteration count on stacks of SPD matrices.

For every stack shape of the preset and every row (solver, precision, iteration count) the script
runs the row once as warm-up, then ``--repeats`` device-synchronised timed runs on the Wishart
stack, and reports:

* the median time and the achieved TFLOP/s, ``products x 2 d^3 x N / time``;
* the FLOP floor ``sum over precisions of products(prec) x 2 d^3 x N / peak(prec)``, where the
  peak of each precision is a plain batched matmul of the same ``(N, d, d)`` shape timed in the
  same run, the time over that floor and its inverse, the fraction of the peaks achieved;
* per input spectrum, the median and max relative Frobenius error per block,
  ``||X - X_ref||_F / ||X_ref||_F``, and the fraction of blocks the solver flags as failed
  (residual > 1 or not finite).

Spectra (bases: QR of a seeded Gaussian in fp64; the fp64 stack is rounded to fp32 once and every
solver gets that fp32 stack): Wishart ``X X^T / n`` with ``X`` of shape ``(d, 2d)`` (condition
~34), eigenvalues ``i^-1/2`` (condition ``sqrt(d)``) and ``i^-1`` (condition ``d``, ~1e3 at
d = 1024). Reference: fp64 ``eigh`` of the same fp32 stack,
``X_ref = Q diag((L + r)^{-1/p}) Q^T``, epsilon 0 for every solver, where ``r`` is the ridge the
solver reports for the block (``regularization``): 0 except for Chebyshev and the minimax
iteration (the default of ``MinimaxRootInvConfig``), whose targets are the roots of
``A + delta u I`` (Chebyshev ``delta = rel_epsilon = 1e-3``, minimax the ``rel`` of its row,
``u`` their multi-power-iteration bound): their table errors are against that target, their
errors against ``A^{-1/p}`` follow the table. Each
solver uses its default scaling: Frobenius for coupled Newton (upstream's), multi-power iteration
(16 vectors, 10 steps, safety factor 2) otherwise.

Product counts (``d x d`` batched products, ``2 d^3`` FLOPs per block each) are the solvers' own
``*_products`` functions, per precision (reduced-precision rows run their refinement and residual
products at fp32); eigh has no product count and no TFLOP/s.

Not counted: the scaling's power iteration (11 products of ``(d, d) @ (d, 16)``, about ``176 / d``
product equivalents, fp32), elementwise updates and norms. Every count is fixed (no row uses a
tolerance or an early-exit check), so the counts are exact.

A real-factor study follows (when ``shared/data/shampoo_factors_bytellama.pt`` is beside the
checkout): the 195 stored Shampoo factors of a small byte-level Llama, grouped by ``(d, root)``,
through the default minimax iteration and its variants, the paper's Newton-DB and eigh: products
per block, median time per stack, error against the fp64 root of ``A + r I`` (``r`` the ridge the
block got) and the blocks the optimizer would reject (not finite, or residual above the config's
``max_residual``).

A scaling study follows: for Newton-DB (root 4, fp32) on a flat spectrum (eigenvalues evenly
spaced in [0.5, 1]) and a decaying one (``i^-1/2``), the first ``num_iterations`` in 1..30 whose
max block error is <= 1e-3, with Frobenius scaling and with multi-power-iteration scaling.

On CPU, TF32 products are fp32 products and bf16/fp16 speed depends on the CPU (emulated or not);
those rows are run and noted, not skipped. A row that cannot run (a Newton-DB row for a root that
is not a power of two, bf16 on a GPU without it, a solver error) is listed with its reason.

Presets:
    gpu: stacks (64, 1024, 1024) and (256, 256, 256), 10 repeats
    cpu: stacks (8, 128, 128) and (32, 64, 64), 5 repeats (well under a minute on 2 idle cores)
    smoke: stack (4, 32, 32), 2 repeats (seconds; what scripts/gpu_report.py --smoke runs)

Usage:
    python3 scripts/benchmark_solvers.py --preset cpu
    python3 scripts/benchmark_solvers.py --preset gpu --out bench_out/solvers_h100
    python3 scripts/benchmark_solvers.py --preset gpu --only minimax chebyshev --repeats 20
    python3 scripts/benchmark_solvers.py --preset cpu --root 2 --no-scaling-study

Writes ``<out>/solvers.json`` and ``<out>/solvers.png`` (median error against time, log-log).
"""

import argparse
import json
import math
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import cli
import torch
from torch import Tensor

from distributed_shampoo_dash.examples.training import synchronize
from distributed_shampoo_dash.solvers import (
    FROBENIUS_SCALING,
    MULTI_POWER_ITERATION_SCALING,
    InverseRootResult,
    IterationControl,
    MatmulPrecision,
    ProductCounts,
    SpectralScaling,
    chebyshev_inverse_root,
    chebyshev_products,
    coupled_newton_inverse_root,
    coupled_newton_products,
    eigh_inverse_root,
    newton_db_inverse_root,
    newton_db_products,
)
from distributed_shampoo_dash.solvers.checks import is_power_of_two
from distributed_shampoo_dash.solvers.minimax import (
    MINIMAX_ROOTS,
    minimax_inverse_root,
    minimax_products,
)
from distributed_shampoo_dash.solvers.precision import batched_matmul

FP32, TF32, BF16, FP16 = (
    MatmulPrecision.FP32,
    MatmulPrecision.TF32,
    MatmulPrecision.BF16,
    MatmulPrecision.FP16,
)
#: Precisions whose plain batched matmul is timed as the peak.
PEAK_PRECISIONS = (FP32, TF32, BF16, FP16)
PEAK_CALLS_PER_SAMPLE = 10
CHEBYSHEV_REL_EPSILON = 1e-3
#: Rows whose target is the root of a regularised matrix (marked with a dagger in the tables).
RIDGE_ROWS = ("chebyshev", "minimax")
ERROR_TARGET = 1e-3
MAX_STUDY_ITERATIONS = 30
STUDY_ROOT = 4

Shape = tuple[int, int, int]


@dataclass(frozen=True)
class Preset:
    """Stack shapes ``(N, d, d)`` and the default number of timed repeats."""

    shapes: tuple[Shape, ...]
    repeats: int


PRESETS = {
    "gpu": Preset(shapes=((64, 1024, 1024), (256, 256, 256)), repeats=10),
    "cpu": Preset(shapes=((8, 128, 128), (32, 64, 64)), repeats=5),
    "smoke": Preset(shapes=((4, 32, 32),), repeats=2),
}


@dataclass(frozen=True)
class Row:
    """One benchmarked solver setting.

    Attributes:
        name (str): Label, also matched by ``--only``.
        solve (Callable[[Tensor], InverseRootResult]): Runs the solver on an fp32 stack.
        products (ProductCounts | None): Products per precision (the solver's ``*_products``);
            None for eigh.
        precisions (frozenset[MatmulPrecision]): Precisions of its iterations, for device checks
            and notes (the fp32 residual products are not listed).
        skip_reason (str | None): Why the row cannot run for this root, if it cannot.
    """

    name: str
    solve: Callable[[Tensor], InverseRootResult]
    products: ProductCounts | None
    precisions: frozenset[MatmulPrecision]
    skip_reason: str | None = None


def eigh_row(root: int) -> Row:
    return Row("eigh fp32 (batched)", lambda A: eigh_inverse_root(A, root), None, frozenset())


def coupled_newton_row(precision: MatmulPrecision, iterations: int, root: int) -> Row:
    iteration = IterationControl(num_iterations=iterations)
    return Row(
        f"coupled-newton {precision.value} k={iterations}",
        lambda A: coupled_newton_inverse_root(A, root, precision=precision, iteration=iteration),
        coupled_newton_products(root, precision, iteration),
        frozenset({precision}),
    )


def newton_db_row(
    precision: MatmulPrecision, iterations: int, root: int, refinement: int = 0
) -> Row:
    name = f"minimax {precision.value} k={iterations}" + (
        f" +{refinement} fp32" if refinement else ""
    )
    iteration = IterationControl(num_iterations=iterations, refinement_iterations=refinement)
    row = Row(
        name,
        lambda A: newton_db_inverse_root(A, root, precision=precision, iteration=iteration),
        None,
        frozenset({precision, FP32} if refinement else {precision}),
    )
    if not is_power_of_two(root):
        return replace(row, skip_reason=f"root {root} is not a power of two")
    return replace(row, products=newton_db_products(root, precision, iteration))


def minimax_row(precision: MatmulPrecision, root: int, rel_epsilon: float) -> Row:
    row = Row(
        f"minimax {precision.value} rel={rel_epsilon:g}",
        lambda A: minimax_inverse_root(A, root, rel_epsilon=rel_epsilon, precision=precision),
        None,
        frozenset({precision, FP32}),
    )
    if root not in MINIMAX_ROOTS:
        return replace(row, skip_reason=f"root {root} has no minimax schedule")
    return replace(row, products=minimax_products(root, rel_epsilon, precision))


def chebyshev_row(precision: MatmulPrecision, degree: int, root: int) -> Row:
    return Row(
        f"chebyshev {precision.value} deg={degree}",
        lambda A: chebyshev_inverse_root(
            A, root, degree=degree, rel_epsilon=CHEBYSHEV_REL_EPSILON, precision=precision
        ),
        chebyshev_products(root, precision, degree),
        frozenset({precision}),
    )


def rows(root: int) -> list[Row]:
    """eigh, the minimax iteration (the default of ``MinimaxRootInvConfig``), coupled Newton,
    the paper's Newton-DB (fp32, reduced, mixed with fp32 refinement), Chebyshev."""
    return [
        eigh_row(root),
        minimax_row(FP32, root, 1e-5),
        minimax_row(TF32, root, 1e-5),
        minimax_row(FP32, root, 1e-4),
        minimax_row(BF16, root, 1e-4),
        minimax_row(FP16, root, 1e-5),
        coupled_newton_row(FP32, 10, root),
        coupled_newton_row(FP16, 10, root),
        newton_db_row(FP32, 10, root),
        newton_db_row(FP32, 20, root),
        newton_db_row(TF32, 10, root),
        newton_db_row(BF16, 10, root),
        newton_db_row(FP16, 10, root),
        newton_db_row(TF32, 10, root, refinement=2),
        newton_db_row(BF16, 10, root, refinement=2),
        newton_db_row(BF16, 10, root, refinement=4),
        newton_db_row(FP16, 10, root, refinement=3),
        chebyshev_row(FP32, 60, root),
        chebyshev_row(BF16, 60, root),
    ]


# ---------------------------------------------------------------------------------------------
# Input spectra and the fp64 reference.

#: Builds an ``(N, d, d)`` float64 SPD stack from ``(N, d, generator)``.
StackBuilder = Callable[[int, int, torch.Generator], Tensor]


def random_bases(num_blocks: int, dim: int, generator: torch.Generator) -> Tensor:
    """``(N, d, d)`` float64 orthogonal bases: Q of the QR of a seeded Gaussian stack."""
    gaussian = torch.randn(
        num_blocks, dim, dim, generator=generator, device=generator.device, dtype=torch.float64
    )
    return torch.linalg.qr(gaussian).Q


def with_eigenvalues(eigenvalues: Callable[[int], Tensor]) -> StackBuilder:
    """A builder of stacks ``Q diag(L) Q^T`` with ``L = eigenvalues(d)`` in random bases ``Q``."""

    def build(num_blocks: int, dim: int, generator: torch.Generator) -> Tensor:
        basis = random_bases(num_blocks, dim, generator)
        stack = (basis * eigenvalues(dim).to(basis.device)) @ basis.mT
        return (stack + stack.mT) / 2

    return build


def wishart(num_blocks: int, dim: int, generator: torch.Generator) -> Tensor:
    """``X X^T / n`` with ``X`` a ``(d, n)`` Gaussian, ``n = 2d`` (condition ~34)."""
    samples = torch.randn(
        num_blocks, dim, 2 * dim, generator=generator, device=generator.device, dtype=torch.float64
    )
    stack = samples @ samples.mT / (2 * dim)
    return (stack + stack.mT) / 2


def power_decay(exponent: float) -> Callable[[int], Tensor]:
    """Eigenvalues ``i^-exponent``, ``i = 1 .. d`` (condition ``d^exponent``)."""
    return lambda dim: torch.arange(1, dim + 1, dtype=torch.float64).pow(-exponent)


def flat(dim: int) -> Tensor:
    """Eigenvalues evenly spaced in ``[0.5, 1]``."""
    return torch.linspace(0.5, 1.0, dim, dtype=torch.float64)


SPECTRA: dict[str, StackBuilder] = {
    "wishart": wishart,
    "i^-1/2": with_eigenvalues(power_decay(0.5)),
    "i^-1": with_eigenvalues(power_decay(1.0)),
}
STUDY_SPECTRA: dict[str, StackBuilder] = {
    "flat [0.5, 1]": with_eigenvalues(flat),
    "i^-1/2": with_eigenvalues(power_decay(0.5)),
}


@dataclass(frozen=True)
class SpectrumCase:
    """An fp32 input stack and the fp64 eigendecomposition of exactly that stack."""

    name: str
    stack: Tensor
    eigenvalues: Tensor
    eigenvectors: Tensor

    @property
    def condition(self) -> float:
        """Median ``lambda_max / lambda_min`` over the blocks."""
        return float((self.eigenvalues[:, -1] / self.eigenvalues[:, 0]).median())

    def reference(self, root: int, shift: Tensor | float) -> Tensor:
        """``(A + shift I)^{-1/p}`` per block in float64; ``shift`` is a scalar or ``(N,)``."""
        shift = torch.as_tensor(shift, dtype=torch.float64, device=self.eigenvalues.device).reshape(
            -1, 1
        )
        roots = (self.eigenvalues + shift).pow(-1.0 / root)
        return (self.eigenvectors * roots.unsqueeze(-2)) @ self.eigenvectors.mT


def make_case(name: str, build: StackBuilder, shape: Shape, device: torch.device) -> SpectrumCase:
    """Builds the stack in fp64 from a fixed seed, rounds it to fp32 and decomposes that in fp64."""
    num_blocks, dim, _ = shape
    stack = build(num_blocks, dim, torch.Generator(device=device).manual_seed(0)).float()
    eigenvalues, eigenvectors = torch.linalg.eigh(stack.double())
    return SpectrumCase(name, stack, eigenvalues, eigenvectors)


def relative_errors(X: Tensor, reference: Tensor) -> Tensor:
    """``(N,)`` float64 ``||X_i - R_i||_F / ||R_i||_F``; a non-finite block counts as ``inf``."""
    difference = (X.double() - reference).flatten(1)
    errors = torch.linalg.norm(difference, dim=1) / torch.linalg.norm(reference.flatten(1), dim=1)
    return torch.where(torch.isfinite(errors), errors, math.inf)


@dataclass(frozen=True)
class ErrorSummary:
    """Errors of one row on one spectrum: against the row's target and against ``A^{-1/p}``."""

    median: float
    max: float
    plain_median: float
    plain_max: float
    flagged_fraction: float


def error_summary(case: SpectrumCase, result: InverseRootResult, root: int) -> ErrorSummary:
    """Median/max errors per block and the fraction flagged (residual > 1 or not finite)."""
    plain = relative_errors(result.inverse_root, case.reference(root, 0.0))
    target = relative_errors(
        result.inverse_root, case.reference(root, result.regularization.double())
    )
    flagged = ~result.is_finite | (result.residual > 1.0)
    return ErrorSummary(
        median=float(target.median()),
        max=float(target.max()),
        plain_median=float(plain.median()),
        plain_max=float(plain.max()),
        flagged_fraction=float(flagged.float().mean()),
    )


# ---------------------------------------------------------------------------------------------
# Timing.


def timed_seconds(run: Callable[[], object], device: torch.device, repeats: int) -> list[float]:
    """Wall time of ``repeats`` device-synchronised calls of ``run`` (warm it up first)."""
    times = []
    for _ in range(repeats):
        synchronize(device)
        start = time.perf_counter()
        run()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return times


def product_flops(shape: Shape) -> float:
    """FLOPs of one batched ``(N, d, d) @ (N, d, d)`` product: ``2 d^3 N``."""
    num_blocks, dim, _ = shape
    return 2.0 * dim**3 * num_blocks


def repeated_products(a: Tensor, b: Tensor, precision: MatmulPrecision) -> Callable[[], None]:
    """A callable running ``PEAK_CALLS_PER_SAMPLE`` plain ``a @ b`` back to back."""

    def run() -> None:
        for _ in range(PEAK_CALLS_PER_SAMPLE):
            batched_matmul(a, b, precision)

    return run


def matmul_peaks(shape: Shape, device: torch.device, repeats: int) -> dict[str, float]:
    """TFLOP/s of a plain batched matmul per precision (by value) on ``shape``.

    Each of ``repeats`` timed samples runs ``PEAK_CALLS_PER_SAMPLE`` products back to back (so a
    small product is not dominated by the synchronisation); the peak is the median sample.
    """
    peaks = {}
    for precision in PEAK_PRECISIONS:
        if device_skip_reason(frozenset({precision}), device):
            continue
        a, b = (torch.randn(shape, device=device).to(precision.operand_dtype) for _ in range(2))
        run = repeated_products(a, b, precision)
        run()
        seconds = statistics.median(timed_seconds(run, device, repeats)) / PEAK_CALLS_PER_SAMPLE
        peaks[precision.value] = product_flops(shape) / seconds / 1e12
    return peaks


def device_skip_reason(precisions: frozenset[MatmulPrecision], device: torch.device) -> str | None:
    """Why products at ``precisions`` cannot run on ``device``, if they cannot."""
    if (
        device.type == "cuda"
        and BF16 in precisions
        and not torch.cuda.is_bf16_supported(including_emulation=False)
    ):
        return f"bf16 matmuls are not supported on {torch.cuda.get_device_name(device)}"
    return None


def device_notes(precisions: frozenset[MatmulPrecision], device: torch.device) -> list[str]:
    """What the timings of products at ``precisions`` mean on ``device``."""
    notes = []
    if TF32 in precisions and device.type == "cpu":
        notes.append("tf32 runs as fp32 on CPU")
    if (
        TF32 in precisions
        and device.type == "cuda"
        and torch.cuda.get_device_capability(device) < (8, 0)
    ):
        notes.append("no TF32 on this GPU: runs as fp32")
    reduced = sorted(precision.value for precision in precisions & {BF16, FP16})
    if reduced and device.type == "cpu":
        notes.append(f"{'/'.join(reduced)} matmuls on CPU (emulated or CPU-specific speed)")
    return notes


# ---------------------------------------------------------------------------------------------
# Rows and the scaling study.


@dataclass(frozen=True)
class RowRecord:
    """Measurements of one row on one shape; the product fields are None for eigh."""

    name: str
    median_s: float
    times_s: list[float]
    peak_memory_bytes: int | None
    notes: list[str]
    errors: dict[str, ErrorSummary]
    products: dict[str, int] | None = None
    tflops: float | None = None
    floor_s: float | None = None
    time_over_floor: float | None = None
    fraction_of_peak: float | None = None


@dataclass(frozen=True)
class ShapeResult:
    """Peaks, spectrum conditions, measured rows and skipped rows ``(name, reason)`` of a shape."""

    shape: Shape
    peaks_tflops: dict[str, float]
    conditions: dict[str, float]
    rows: list[RowRecord]
    skipped: list[tuple[str, str]]


def measure_row(
    row: Row, cases: list[SpectrumCase], root: int, device: torch.device, repeats: int
) -> RowRecord:
    """Warm-up and timed runs on the first case, one run on each other case."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    results = {cases[0].name: row.solve(cases[0].stack)}
    times = timed_seconds(lambda: row.solve(cases[0].stack), device, repeats)
    results |= {case.name: row.solve(case.stack) for case in cases[1:]}
    return RowRecord(
        name=row.name,
        median_s=statistics.median(times),
        times_s=times,
        peak_memory_bytes=(
            torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None
        ),
        notes=device_notes(row.precisions, device),
        errors={case.name: error_summary(case, results[case.name], root) for case in cases},
    )


def with_flop_rates(
    record: RowRecord, products: ProductCounts, shape: Shape, peaks: dict[str, float]
) -> RowRecord:
    """Adds the product counts, achieved TFLOP/s and the FLOP floor at the measured peaks."""
    flops = product_flops(shape)
    floor = sum(count * flops / (peaks[p.value] * 1e12) for p, count in products.items())
    return replace(
        record,
        products={precision.value: count for precision, count in products.items()},
        tflops=sum(products.values()) * flops / record.median_s / 1e12,
        floor_s=floor,
        time_over_floor=record.median_s / floor,
        fraction_of_peak=floor / record.median_s,
    )


def run_shape(
    shape: Shape,
    selected: list[Row],
    root: int,
    device: torch.device,
    repeats: int,
    deadline: float | None = None,
) -> ShapeResult:
    """Peaks, then every selected row on the spectra of ``shape``; skipped rows with reasons
    (rows not started before ``deadline``, a ``time.perf_counter()`` value, are skipped)."""
    cases = [make_case(name, build, shape, device) for name, build in SPECTRA.items()]
    result = ShapeResult(
        shape=shape,
        peaks_tflops=matmul_peaks(shape, device, repeats),
        conditions={case.name: case.condition for case in cases},
        rows=[],
        skipped=[],
    )
    for row in selected:
        reason = row.skip_reason or device_skip_reason(row.precisions, device)
        if reason is None and deadline is not None and time.perf_counter() > deadline:
            reason = "time budget spent"
        if reason is None:
            start = time.perf_counter()
            try:
                record = measure_row(row, cases, root, device, repeats)
            except (RuntimeError, ValueError) as error:  # Out of memory or a solver error.
                reason = f"{type(error).__name__}: {str(error).splitlines()[0][:160]}"
            else:
                if row.products is not None:
                    record = with_flop_rates(record, row.products, shape, result.peaks_tflops)
                result.rows.append(record)
                elapsed = time.perf_counter() - start
                print(
                    f"{shape} {row.name}: {record.median_s * 1e3:.1f} ms ({elapsed:.1f} s)",
                    flush=True,
                )
                continue
        print(f"{shape} {row.name}: skipped ({reason})", flush=True)
        result.skipped.append((row.name, reason))
    return result


@dataclass(frozen=True)
class StudyResult:
    """Iterations to reach the error target per scaling method (None: not within 30)."""

    spectrum: str
    condition: float
    iterations: dict[str, int | None]


def iterations_to_target(case: SpectrumCase, scaling: SpectralScaling) -> int | None:
    """First ``num_iterations`` in 1..30 at which Newton-DB's max block error is <= the target."""
    reference = case.reference(STUDY_ROOT, 0.0)
    for iterations in range(1, MAX_STUDY_ITERATIONS + 1):
        iteration = IterationControl(num_iterations=iterations)
        result = newton_db_inverse_root(
            case.stack, STUDY_ROOT, iteration=iteration, scaling=scaling
        )
        if float(relative_errors(result.inverse_root, reference).max()) <= ERROR_TARGET:
            return iterations
    return None


def scaling_study(shape: Shape, device: torch.device) -> list[StudyResult]:
    """Iterations to reach the error target per study spectrum and scaling method."""
    scalings = {
        "frobenius": FROBENIUS_SCALING,
        "multi_power_iteration": MULTI_POWER_ITERATION_SCALING,
    }
    results = []
    for name, build in STUDY_SPECTRA.items():
        case = make_case(name, build, shape, device)
        iterations = {
            label: iterations_to_target(case, scaling) for label, scaling in scalings.items()
        }
        results.append(StudyResult(name, case.condition, iterations))
        print(f"scaling study {shape} {name}: {iterations}", flush=True)
    return results


# ---------------------------------------------------------------------------------------------
# Real Shampoo factors.

REAL_FACTORS = (
    Path(__file__).resolve().parents[2] / "shared" / "data" / "shampoo_factors_bytellama.pt"
)


@dataclass(frozen=True)
class RealRow:
    """A solver setting run on the real factors.

    Attributes:
        name (str): Label.
        solve (Callable[[Tensor, int, float], InverseRootResult]): ``(stack, root, epsilon)``.
        products (Callable[[int], int]): ``d x d`` products per block for a root.
        max_residual (float): Residual above which the optimizer rejects a root (the config's).
    """

    name: str
    solve: Callable[[Tensor, int, float], InverseRootResult]
    products: Callable[[int], int]
    max_residual: float


def real_rows() -> list[RealRow]:
    """The default minimax iteration, its variants, the paper's Newton-DB and eigh."""

    def minimax(
        precision: MatmulPrecision,
        rel_epsilon: float,
        max_residual: float,
        first_step_precision: MatmulPrecision = FP32,
    ) -> RealRow:
        first_step = f" first step {first_step_precision.value}" * (first_step_precision != FP32)
        return RealRow(
            f"minimax {precision.value} rel={rel_epsilon:g}{first_step}",
            lambda A, root, epsilon: minimax_inverse_root(
                A,
                root,
                epsilon=epsilon,
                rel_epsilon=rel_epsilon,
                precision=precision,
                first_step_precision=first_step_precision,
            ),
            lambda root: minimax_products(
                root, rel_epsilon, precision, first_step_precision
            ).total(),
            max_residual,
        )

    def paper(iterations: int) -> RealRow:
        iteration = IterationControl(num_iterations=iterations)
        return RealRow(
            f"minimax paper fp32 k={iterations}",
            lambda A, root, epsilon: newton_db_inverse_root(
                A, root, epsilon=epsilon, iteration=iteration
            ),
            lambda root: newton_db_products(root, FP32, iteration).total(),
            1.0,
        )

    return [
        minimax(FP32, 1e-5, 1e-2),
        minimax(FP32, 1e-4, 1e-2),
        minimax(FP32, 1e-3, 1e-2),
        minimax(FP32, 1e-6, 5e-2),
        minimax(FP32, 1e-6, 1e-2, MatmulPrecision.FP64),
        minimax(BF16, 1e-4, 5e-2),
        minimax(FP16, 1e-4, 5e-2),
        minimax(FP16, 1e-5, 5e-2),
        paper(10),
        paper(20),
        RealRow(
            "eigh fp32",
            lambda A, root, epsilon: eigh_inverse_root(A, root, epsilon=epsilon),
            lambda root: 0,
            math.inf,
        ),
    ]


@dataclass(frozen=True)
class RealRecord:
    """One real row over every factor group.

    Attributes:
        name (str): The row.
        products (dict[str, int]): Products per block by root (``"4"``, ``"2"``).
        ms_per_stack (dict[str, float]): Median time of one call per ``(d, root)`` group.
        max_error (float), median_error (float): Against the fp64 root of ``A + r I``, ``r`` the
            ridge the block got (``regularization``).
        flagged (int): Blocks not finite or with residual above the row's ``max_residual``.
        blocks (int): Blocks in all.
        without_reference (int): Blocks whose fp64 ``A + r I`` is not positive definite (rounded
            fp32 factors with ``r = epsilon``): no reference root, left out of the errors.
    """

    name: str
    products: dict[str, int]
    ms_per_stack: dict[str, float]
    max_error: float
    median_error: float
    flagged: int
    blocks: int
    without_reference: int


def real_factor_groups(
    path: Path, device: torch.device
) -> tuple[float, dict[tuple[int, int], Tensor]]:
    """``(epsilon, {(d, root): (N, d, d) float32 stack})`` of the stored factors."""
    data = torch.load(path)
    groups: dict[tuple[int, int], list[Tensor]] = {}
    for factor in data["factors"]:
        groups.setdefault((factor["matrix"].shape[0], factor["root"]), []).append(factor["matrix"])
    return data["epsilon"], {key: torch.stack(value).to(device) for key, value in groups.items()}


def real_factor_study(path: Path, device: torch.device, repeats: int) -> list[RealRecord]:
    """Every real row on every ``(d, root)`` group of the stored factors."""
    epsilon, groups = real_factor_groups(path, device)
    records = []
    for row in real_rows():
        errors, flagged, undefined, times = [], 0, 0, {}
        for (dim, root), stack in groups.items():

            def solve(
                row: RealRow = row, stack: Tensor = stack, root: int = root
            ) -> InverseRootResult:
                return row.solve(stack, root, epsilon)

            result = solve()
            samples = timed_seconds(solve, device, repeats)
            times[f"d={dim} p={root} N={stack.shape[0]}"] = statistics.median(samples) * 1e3
            eigenvalues, eigenvectors = torch.linalg.eigh(stack.double())
            shifted = eigenvalues + result.regularization.double()[:, None]
            # fp32 factors whose A + epsilon I is not positive definite in fp64 have no reference.
            defined = shifted[:, 0] > 0
            powers = shifted[defined].pow(-1.0 / root).unsqueeze(-2)
            reference = (eigenvectors[defined] * powers) @ eigenvectors[defined].mT
            errors.append(relative_errors(result.inverse_root[defined], reference))
            undefined += int((~defined).sum())
            flagged += int((~result.is_finite | (result.residual > row.max_residual)).sum())
        all_errors = torch.cat(errors)
        records.append(
            RealRecord(
                name=row.name,
                products={str(root): row.products(root) for root in sorted({r for _, r in groups})},
                ms_per_stack=times,
                max_error=float(all_errors.max()),
                median_error=float(all_errors.median()),
                flagged=flagged,
                blocks=int(all_errors.numel()) + undefined,
                without_reference=undefined,
            )
        )
        print(f"real factors {row.name}: max error {records[-1].max_error:.2e}", flush=True)
    return records


def real_factor_table(records: list[RealRecord]) -> str:
    groups = list(records[0].ms_per_stack)
    lines = [
        "| row | products root 4 / root 2 | "
        + " | ".join(f"ms, {group}" for group in groups)
        + " | error median / max | flagged | no reference |",
        "|---|---|" + "---|" * len(groups) + "---|---|---|",
    ]
    for record in records:
        products = " / ".join(str(record.products.get(root, "-")) for root in ("4", "2"))
        times = " | ".join(f"{record.ms_per_stack[group]:.1f}" for group in groups)
        lines.append(
            f"| {record.name} | {products} | {times} | "
            f"{record.median_error:.1e} / {record.max_error:.1e} | "
            f"{record.flagged}/{record.blocks} | "
            f"{record.without_reference} |"
        )
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# Reporting.


def optional(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def peak_table(shape_results: list[ShapeResult]) -> str:
    lines = [
        "| matmul peak (TFLOP/s) | " + " | ".join(str(r.shape) for r in shape_results) + " |",
        "|---|" + "---|" * len(shape_results),
    ]
    for precision in PEAK_PRECISIONS:
        peaks = [optional(r.peaks_tflops.get(precision.value), ".3g") for r in shape_results]
        lines.append(f"| {precision.value} | " + " | ".join(peaks) + " |")
    return "\n".join(lines)


def error_cell(errors: ErrorSummary) -> str:
    return f"{errors.median:.1e} / {errors.max:.1e} ({errors.flagged_fraction:.0%})"


def rows_table(result: ShapeResult) -> str:
    spectra = " | ".join(f"{name} (cond {cond:.3g})" for name, cond in result.conditions.items())
    lines = [
        (
            f"| row | products | median ms | TFLOP/s | time / floor | fraction of peak | "
            f"{spectra} | notes |"
        ),
        "|---|---|---|---|---|---|" + "---|" * len(result.conditions) + "---|",
    ]
    for record in result.rows:
        products = None if record.products is None else sum(record.products.values())
        name = record.name + (" †" if record.name.startswith(RIDGE_ROWS) else "")
        errors = " | ".join(error_cell(record.errors[spectrum]) for spectrum in result.conditions)
        lines.append(
            f"| {name} | {optional(products, 'd')} | {record.median_s * 1e3:.1f} | "
            f"{optional(record.tflops, '.3g')} | {optional(record.time_over_floor, '.2f')} | "
            f"{optional(record.fraction_of_peak, '.0%')} | {errors} | {'; '.join(record.notes)} |"
        )
    lines += [f"| {name} | skipped: {reason} |" for name, reason in result.skipped]
    return "\n".join(lines)


def chebyshev_footnote(result: ShapeResult) -> str:
    lines = [
        (
            f"† error against the target (A + delta u I)^(-1/p), u the multi-power-iteration bound,"
            f" delta {CHEBYSHEV_REL_EPSILON:g} (Chebyshev) or the row's rel (minimax);"
            " against A^(-1/p) (median / max):"
        )
    ]
    for record in result.rows:
        if record.name.startswith(RIDGE_ROWS):
            cells = ", ".join(
                f"{spectrum} {errors.plain_median:.1e} / {errors.plain_max:.1e}"
                for spectrum, errors in record.errors.items()
            )
            lines.append(f"  {record.name}: {cells}")
    return "\n".join(lines)


def study_table(shape: Shape, results: list[StudyResult]) -> str:
    lines = [
        (
            f"| spectrum (Newton-DB root {STUDY_ROOT} fp32, {shape}) | condition | "
            f"k to max error <= {ERROR_TARGET:g}, Frobenius | multi-power iteration |"
        ),
        "|---|---|---|---|",
    ]
    for result in results:
        cells = [
            f">{MAX_STUDY_ITERATIONS}" if k is None else str(k) for k in result.iterations.values()
        ]
        lines.append(f"| {result.spectrum} | {result.condition:.3g} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(shape_results: list[ShapeResult], path: Path) -> bool:
    """Median error against time, log-log: a panel per shape, colour = row, marker = spectrum;
    False (and nothing written) without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed; no PNG written.")
        return False
    names = sorted({record.name for result in shape_results for record in result.rows})
    colours = {name: plt.get_cmap("tab20")(index % 20) for index, name in enumerate(names)}
    markers = dict(zip(SPECTRA, "os^", strict=True))
    figure, axes = plt.subplots(
        1, len(shape_results), figsize=(7 * len(shape_results) + 3, 6), squeeze=False
    )
    for axis, result in zip(axes[0], shape_results, strict=True):
        for record in result.rows:
            for spectrum, errors in record.errors.items():
                if math.isfinite(errors.median):
                    axis.scatter(
                        record.median_s * 1e3,
                        max(errors.median, 1e-12),
                        color=colours[record.name],
                        marker=markers[spectrum],
                    )
        axis.set(
            xscale="log",
            yscale="log",
            xlabel="median time (ms)",
            ylabel="median relative error",
            title=f"stack {result.shape}",
        )
        axis.grid(True, which="both", alpha=0.3)
    handles = [
        plt.Line2D([], [], color=colour, marker="o", linestyle="", label=name)
        for name, colour in colours.items()
    ] + [
        plt.Line2D([], [], color="grey", marker=marker, linestyle="", label=name)
        for name, marker in markers.items()
    ]
    figure.legend(handles=handles, loc="center right", fontsize="small")
    figure.tight_layout(rect=(0, 0, 1 - 3 / figure.get_figwidth(), 1))
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return True


def build_parser() -> argparse.ArgumentParser:
    """The command line (see the module docstring)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=cli.HelpFormatter)
    parser.add_argument(
        "--preset",
        choices=sorted(PRESETS),
        default="gpu" if torch.cuda.is_available() else "cpu",
        help="stack shapes and repeats, see Presets above; gpu when CUDA is available",
    )
    parser.add_argument(
        "--device",
        default="cuda" if torch.cuda.is_available() else "cpu",
        help="torch device of the stacks; cuda when available",
    )
    parser.add_argument("--root", type=int, default=4, help="inverse root p (4: 2-D Shampoo)")
    parser.add_argument(
        "--repeats", type=int, metavar="N", help="timed runs per row (default: the preset's)"
    )
    parser.add_argument(
        "--only",
        nargs="*",
        metavar="NAME",
        help="substrings of row names to run (default: all)",
    )
    parser.add_argument("--no-scaling-study", action="store_true", help="skip the scaling study")
    parser.add_argument(
        "--real-factors",
        type=Path,
        default=REAL_FACTORS,
        help="the stored real Shampoo factors (skipped when the file is absent)",
    )
    parser.add_argument("--no-real-factors", action="store_true", help="skip the real-factor study")
    parser.add_argument(
        "--out",
        type=Path,
        default=Path("bench_out/solvers"),
        help="output directory: writes solvers.json and solvers.png in it",
    )
    return parser


def main() -> None:
    args = build_parser().parse_args()

    preset, device = PRESETS[args.preset], torch.device(args.device)
    repeats = args.repeats or preset.repeats
    selected = [
        row
        for row in rows(args.root)
        if not args.only or any(name in row.name for name in args.only)
    ]
    shape_results = [
        run_shape(shape, selected, args.root, device, repeats) for shape in preset.shapes
    ]
    study_shape = preset.shapes[0]
    study = None if args.no_scaling_study else scaling_study(study_shape, device)
    run_real = not args.no_real_factors and args.real_factors.exists()
    real = real_factor_study(args.real_factors, device, repeats) if run_real else None

    device_name = (
        torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else f"CPU ({torch.get_num_threads()} threads)"
    )
    print(
        f"\npreset {args.preset} on {device_name}, torch {torch.__version__}, root {args.root}, "
        f"median of {repeats} timed runs after 1 warm-up\n"
    )
    print(peak_table(shape_results))
    for result in shape_results:
        print(f"\nstack {result.shape}: error median / max (fraction of blocks flagged)\n")
        print(rows_table(result))
        print("\n" + chebyshev_footnote(result))
    if study is not None:
        print("\n" + study_table(study_shape, study))
    if real is not None:
        print(f"\nreal factors ({args.real_factors.name}): error against the root of A + r I\n")
        print(real_factor_table(real))

    args.out.mkdir(parents=True, exist_ok=True)
    report = {
        "preset": args.preset,
        "device": device_name,
        "torch": torch.__version__,
        "root": args.root,
        "repeats": repeats,
        "chebyshev_rel_epsilon": CHEBYSHEV_REL_EPSILON,
        "shapes": [asdict(result) for result in shape_results],
        "scaling_study": None
        if study is None
        else {
            "shape": study_shape,
            "root": STUDY_ROOT,
            "target": ERROR_TARGET,
            "results": [asdict(result) for result in study],
        },
        "real_factors": None if real is None else [asdict(record) for record in real],
    }
    (args.out / "solvers.json").write_text(json.dumps(report, indent=2))
    written = [args.out / "solvers.json"]
    if plot(shape_results, args.out / "solvers.png"):
        written.append(args.out / "solvers.png")
    print(f"\nwrote {' and '.join(map(str, written))}")


if __name__ == "__main__":
    main()
