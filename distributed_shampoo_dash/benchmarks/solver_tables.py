"""Tables and the plot of the solver benchmark's results (Markdown, PNG with matplotlib)."""

import math
from pathlib import Path

from distributed_shampoo_dash.benchmarks.solver_rows import CHEBYSHEV_REL_EPSILON, RIDGE_ROWS
from distributed_shampoo_dash.benchmarks.solver_runs import PEAK_PRECISIONS, ShapeResult
from distributed_shampoo_dash.benchmarks.spectra import SPECTRA, ErrorSummary


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
