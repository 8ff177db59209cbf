"""The solver benchmark's rows: every batched inverse-root solver x precision x iteration count.

Each :class:`Row` runs its solver on an fp32 ``(N, d, d)`` stack and knows its ``d x d`` products
per precision (the solvers' own ``*_products`` counts; None for eigh) or why it cannot run for a
root. Torch only.
"""

from collections.abc import Callable
from dataclasses import dataclass, replace

from torch import Tensor

from distributed_shampoo_dash.solvers import (
    InverseRootResult,
    IterationControl,
    MatmulPrecision,
    ProductCounts,
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

FP32, TF32, BF16, FP16 = (
    MatmulPrecision.FP32,
    MatmulPrecision.TF32,
    MatmulPrecision.BF16,
    MatmulPrecision.FP16,
)


CHEBYSHEV_REL_EPSILON = 1e-3


#: Rows whose target is the root of a regularised matrix (marked with a dagger in the tables).
RIDGE_ROWS = ("chebyshev", "minimax")


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
