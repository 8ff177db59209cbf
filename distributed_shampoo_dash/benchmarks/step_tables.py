"""Tables and the plot of the step benchmark's results (Markdown, PNG with matplotlib)."""

from collections.abc import Mapping
from pathlib import Path

from distributed_shampoo_dash.benchmarks.recorded_h100 import RecordedStep
from distributed_shampoo_dash.benchmarks.step_runs import PHASES
from distributed_shampoo_dash.gpu_time_model import GPUS, H100_SXM, GpuSpec
from distributed_shampoo_dash.solvers import MatmulPrecision


def failure_row(failure: dict[str, object]) -> str:
    """A failed or not-run row as one line of the results table."""
    note = failure.get("solver_message_note")
    return (
        f"| {failure['label']} | {failure['outcome']}: {failure['error']}"
        + (f"; {note}" if note else "")
        + " |"
    )


def _optional(value: object, spec: str, scale: float = 1.0) -> str:
    return "-" if value is None else format(float(value) / scale, spec)  # type: ignore[arg-type]


def markdown_table(results: list[dict[str, object]]) -> str:
    """One row per optimizer; speedups are against the first row (upstream ``EigenConfig``)."""
    reference = results[0]
    lines = [
        (
            "| optimizer | median step (s) | mean step (s) | "
            "median step without / with roots (s) | "
            "speedup: median / mean / without roots / with roots | peak memory (GB) | "
            "transient step memory (MiB) | root error median / p90 / max | fallbacks | finite | "
            "solver messages |"
        ),
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for result in results:
        memory = result["peak_memory_bytes"]
        transient = result.get("transient_memory_bytes")
        transient_cell = "-"
        if transient is not None:
            ratio = transient / reference["transient_memory_bytes"]  # type: ignore[operator]
            transient_cell = f"{transient / 2**20:.1f} ({ratio:.2f}x)"  # type: ignore[operator]
        without_roots, with_roots = (
            result["median_step_without_roots_s"],
            result.get("median_step_with_roots_s"),
        )
        speedups = " / ".join(
            "-"
            if result.get(key) is None or reference.get(key) is None
            else f"{reference[key] / result[key]:.2f}x"  # type: ignore[operator]
            for key in (
                "median_step_s",
                "mean_step_s",
                "median_step_without_roots_s",
                "median_step_with_roots_s",
            )
        )
        errors = (
            "-"
            if result["root_error_median"] is None
            else " / ".join(
                f"{result[key]:.1e}"
                for key in ("root_error_median", "root_error_p90", "root_error_max")
            )
        )
        lines.append(
            f"| {result['label']} | {result['median_step_s']:.4f} | {result['mean_step_s']:.4f} | "
            f"{_optional(without_roots, '.4f')} / {_optional(with_roots, '.4f')} | {speedups} | "
            f"{_optional(memory, '.2f', 1e9)} | {transient_cell} | {errors} | "
            f"{result['fallbacks'] or '-'} | {result['finite']} | "
            f"{result.get('solver_message_note') or '-'} |"
        )
    return "\n".join(lines)


def results_table(results: list[dict[str, object]], failures: list[dict[str, object]]) -> str:
    """:func:`markdown_table` of the rows that ran, then one line per failed or not-run row."""
    lines = [markdown_table(results)] if results else []
    return "\n".join(lines + [failure_row(failure) for failure in failures])


def _scaled(value: float | None, unit: float) -> float | None:
    return None if value is None else value / unit


def _pair(first: object, second: object, spec: str = ",") -> str:
    """``first / second`` (``-`` for a missing value)."""
    return " / ".join("-" if value is None else format(value, spec) for value in (first, second))


def costs_table(results: list[dict[str, object]]) -> str:
    """Step costs of every row that has them; ratios are against upstream ``EigenConfig``."""
    reference = next((r for r in results if r["label"] == "upstream EigenConfig"), {})

    def cost(result: dict[str, object], which: str, key: str) -> int | None:
        costs = result.get(f"costs_{which}")  # None also for a missing reference
        return None if costs is None else costs[key]  # type: ignore[index]

    def fewer(result: dict[str, object], which: str) -> str:
        mine, theirs = cost(result, which, "ops"), cost(reference, which, "ops")
        if mine is None or theirs is None:
            return "-"
        return f"{theirs / mine:.0f}x" if theirs >= 10 * mine else f"{theirs / mine:.2f}x"

    lines = [
        (
            "| optimizer | aten ops: without / with roots | fewer than upstream | "
            "launches: without / with | host syncs: without / with | d x d products (root step) | "
            "GFLOP: without / with roots | solver floor GFLOP | root step / floor | "
            "tracked peak MiB, root step: whole step / factor update and roots / preconditioning |"
        ),
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for result in results:
        if result.get("costs_with_roots") is None:
            continue
        flops_with = cost(result, "with_roots", "flops")
        floor = result.get("floor_flops")
        ratio = "-" if floor is None or flops_with is None else f"{flops_with / floor:.2f}"  # type: ignore[operator]
        with_roots = result["costs_with_roots"]
        phase_peaks = with_roots["phase_peak_bytes"]  # type: ignore[index]
        peaks = [with_roots["peak_bytes"], *(phase_peaks.get(phase) for phase in PHASES)]  # type: ignore[index]
        gflops = [
            _scaled(cost(result, which, "flops"), 1e9) for which in ("without_roots", "with_roots")
        ]
        ops, launches, syncs = (
            _pair(cost(result, "without_roots", key), cost(result, "with_roots", key))
            for key in ("ops", "launches", "syncs")
        )
        lines.append(
            f"| {result['label']} | {ops} | "
            f"{fewer(result, 'without_roots')} / {fewer(result, 'with_roots')} | "
            f"{launches} | {syncs} | "
            f"{cost(result, 'with_roots', 'products'):,} | "
            f"{_pair(gflops[0], gflops[1], '.3f')} | "
            f"{_optional(floor, '.3f', 1e9)} | {ratio} | "
            f"{' / '.join(_optional(peak, '.1f', 2**20) for peak in peaks)} |"
        )
    return "\n".join(lines)


def floor_table(results: list[dict[str, object]], gpu: GpuSpec = H100_SXM) -> str:
    """Each row's solver FLOPs per root computation by precision, and their time at ``gpu``'s
    peaks (``GpuSpec.product_seconds``)."""
    lines = [
        (
            "| optimizer | factor matrices | solver TFLOP per root computation (by precision) | "
            f"at {gpu.name} peaks (ms) |"
        ),
        "|---|---|---|---|",
    ]
    for result in results:
        if result.get("num_factors") is None:
            continue
        floor: dict[str, int] = result.get("floor_flops_by_precision") or {}  # type: ignore[assignment]
        split = (
            ", ".join(f"{precision} {flops / 1e12:.2f}" for precision, flops in floor.items())
            or "-"
        )
        seconds = sum(
            gpu.product_seconds(flops, MatmulPrecision(precision))
            for precision, flops in floor.items()
        )
        lines.append(
            f"| {result['label']} | {result['num_factors']} | {split} | "
            f"{'-' if not floor else f'{seconds * 1e3:.0f}'} |"
        )
    return "\n".join(lines)


def _modelled(result: dict[str, object], which: str, gpu: str) -> dict[str, object] | None:
    costs = result.get(f"costs_{which}")
    if costs is None:
        return None
    return costs["modelled"][gpu]  # type: ignore[index, no-any-return]


def _versus(modelled: dict[str, object] | None, measured: float | None) -> str:
    """``modelled s (measured s, +x%)``, or the modelled time alone."""
    if modelled is None:
        return "-"
    seconds = float(modelled["seconds"])  # type: ignore[arg-type]
    if measured is None:
        return f"{seconds:.4f}"
    return f"{seconds:.4f} ({measured:.4f}, {seconds / measured - 1:+.0%})"


def modelled_table(
    results: list[dict[str, object]], recorded: Mapping[str, RecordedStep] | None = None
) -> str:
    """Each row's modelled step time on every GPU of ``gpu_time_model.GPUS`` (without and with
    roots), the split of the H100's root step, and, for rows in ``recorded``, the time measured
    on an H100 beside the H100's modelled one (``(measured, model over measured - 1)``)."""
    recorded = recorded or {}
    names = [gpu.name for gpu in GPUS]
    lines = [
        "| optimizer | "
        + " | ".join(f"modelled {name} (s): without / with roots" for name in names)
        + f" | {H100_SXM.name} root step (ms): products / memory / eigh / launches | "
        "launches with roots | host reads with roots | note |",
        "|---|" + "---|" * len(names) + "---|---|---|---|",
    ]
    for result in results:
        if result.get("costs_with_roots") is None:
            continue
        record = recorded.get(str(result["label"]))
        cells = []
        for name in names:
            measured = (
                (record.without_roots_s, record.with_roots_s)
                if record is not None and name == H100_SXM.name
                else (None, None)
            )
            cells.append(
                f"{_versus(_modelled(result, 'without_roots', name), measured[0])} / "
                f"{_versus(_modelled(result, 'with_roots', name), measured[1])}"
            )
        root_step = _modelled(result, "with_roots", H100_SXM.name) or {}
        split = " / ".join(
            f"{float(root_step[key]) * 1e3:.0f}"  # type: ignore[arg-type]
            for key in ("product_s", "memory_s", "eigh_s", "launch_s")
        )
        unmodelled = root_step.get("unmodelled_ops") or ()
        note = "; ".join(
            part
            for part in (
                record.note if record is not None else "",
                f"unmodelled: {', '.join(unmodelled)}" if unmodelled else "",  # type: ignore[arg-type]
            )
            if part
        )
        lines.append(
            f"| {result['label']} | {' | '.join(cells)} | {split} | "
            f"{root_step['launches']:,} | {root_step['host_reads']:,} | {note or '-'} |"
        )
    return "\n".join(lines)


def plot(results: list[dict[str, object]], path: Path) -> bool:
    """Median step time per row as bars, to ``path``; False (and nothing written) without
    matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed; no PNG written.")
        return False
    labels = [str(result["label"]) for result in results]
    times = [float(result["median_step_s"]) for result in results]  # type: ignore[arg-type]
    figure, axis = plt.subplots(figsize=(8, 0.5 * len(labels) + 1.5))
    axis.barh(labels[::-1], times[::-1])
    axis.set_xlabel("median optimizer step (s)")
    axis.set_title(path.stem)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return True
