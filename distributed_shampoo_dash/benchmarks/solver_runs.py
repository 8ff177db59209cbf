"""Running the solver benchmark's rows on a stack shape: matmul peaks, times, FLOP rates, errors.

:func:`run_shape` times a plain batched matmul per precision (the peaks), then every row once as
warm-up and ``repeats`` device-synchronised times on the Wishart stack, and measures each row's
errors on every spectrum of :data:`~distributed_shampoo_dash.benchmarks.spectra.SPECTRA`. The
FLOP floor of a row is ``sum over precisions of products(prec) x 2 d^3 x N / peak(prec)``.
Torch only.
"""

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, replace

import torch
from torch import Tensor

from distributed_shampoo_dash.benchmarks.presets import Shape
from distributed_shampoo_dash.benchmarks.solver_rows import BF16, FP16, FP32, TF32, Row
from distributed_shampoo_dash.benchmarks.spectra import (
    SPECTRA,
    ErrorSummary,
    SpectrumCase,
    error_summary,
    make_case,
)
from distributed_shampoo_dash.benchmarks.timing import timed_seconds
from distributed_shampoo_dash.solvers import (
    MatmulPrecision,
    ProductCounts,
)
from distributed_shampoo_dash.solvers.precision import batched_matmul

#: Precisions whose plain batched matmul is timed as the peak.
PEAK_PRECISIONS = (FP32, TF32, BF16, FP16)


PEAK_CALLS_PER_SAMPLE = 10


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
