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

The rows, spectra, runs and tables are ``distributed_shampoo_dash.benchmarks``' ``solver_rows``,
``spectra``, ``solver_runs`` and ``solver_tables``; the scaling and real-factor studies are here.

Presets (``distributed_shampoo_dash.benchmarks.presets.STACK_PRESETS``):
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
import math
import statistics
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import Tensor

from distributed_shampoo_dash.benchmarks.cli import HelpFormatter, device_name, write_json
from distributed_shampoo_dash.benchmarks.presets import STACK_PRESETS, Shape
from distributed_shampoo_dash.benchmarks.solver_rows import (
    BF16,
    CHEBYSHEV_REL_EPSILON,
    FP16,
    FP32,
    rows,
)
from distributed_shampoo_dash.benchmarks.solver_runs import run_shape
from distributed_shampoo_dash.benchmarks.solver_tables import (
    chebyshev_footnote,
    peak_table,
    plot,
    rows_table,
)
from distributed_shampoo_dash.benchmarks.spectra import (
    STUDY_SPECTRA,
    SpectrumCase,
    make_case,
    relative_errors,
)
from distributed_shampoo_dash.benchmarks.timing import timed_seconds
from distributed_shampoo_dash.solvers import (
    FROBENIUS_SCALING,
    MULTI_POWER_ITERATION_SCALING,
    InverseRootResult,
    IterationControl,
    MatmulPrecision,
    SpectralScaling,
    eigh_inverse_root,
    newton_db_inverse_root,
    newton_db_products,
)
from distributed_shampoo_dash.solvers.minimax import minimax_inverse_root, minimax_products

ERROR_TARGET = 1e-3


MAX_STUDY_ITERATIONS = 30


STUDY_ROOT = 4


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


def build_parser() -> argparse.ArgumentParser:
    """The command line (see the module docstring)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument(
        "--preset",
        choices=sorted(STACK_PRESETS),
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

    preset, device = STACK_PRESETS[args.preset], torch.device(args.device)
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

    machine = device_name(device)
    print(
        f"\npreset {args.preset} on {machine}, torch {torch.__version__}, root {args.root}, "
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

    report = {
        "preset": args.preset,
        "device": machine,
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
    written = [write_json(args.out / "solvers.json", report, indent=2)]
    if plot(shape_results, args.out / "solvers.png"):
        written.append(args.out / "solvers.png")
    print(f"\nwrote {' and '.join(map(str, written))}")


if __name__ == "__main__":
    main()
