"""Which batched solver computes a stack of inverse roots for a given ``RootInvConfig``.

:func:`batched_solver` is the one place a config is matched to a solver: it returns the solver
call for a stack and the ``d x d`` products it runs per precision, or ``None`` for what stays on
upstream's per-block ``matrix_inverse_root``. Batched: upstream ``EigenConfig`` (with a
``PerturbationConfig`` and no offload device), upstream ``CoupledNewtonConfig`` (integer roots),
and the DASH configs (any root; minimax and Newton-DB hand roots their steps cannot reach to
batched eigh).
Per block: ``PseudoInverseConfig``, ``CoupledHigherOrderConfig``, fractional roots for coupled
Newton, eigendecomposition offload.
"""

from collections.abc import Callable
from functools import partial
from typing import NamedTuple

from distributed_shampoo.preconditioner.matrix_functions_types import (
    CoupledNewtonConfig,
    EigenConfig,
    PerturbationConfig,
    RootInvConfig,
)
from torch import Tensor

from distributed_shampoo_dash.integration.configs import (
    ChebyshevRootInvConfig,
    MinimaxRootInvConfig,
    NewtonDBRootInvConfig,
)
from distributed_shampoo_dash.solvers import (
    EIGH_PRODUCTS,
    FROBENIUS_SCALING,
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

#: Iterations between host checks of "any block still iterating" for upstream's coupled Newton,
#: whose default allows 100 iterations although most blocks stop after 10 to 30.
COUPLED_NEWTON_EARLY_EXIT_CHECK_INTERVAL = 4


class BatchedSolver(NamedTuple):
    """A solver bound to a config, a root and an epsilon.

    Attributes:
        name (str): The solver: ``"eigh"``, ``"minimax"``, ``"newton_db"``, ``"chebyshev"`` or
            ``"coupled_newton"``.
        solve (Callable[[Tensor], InverseRootResult]): Inverse roots of an ``(N, d, d)`` stack.
        product_counts (ProductCounts): ``d x d`` matrix products it runs per block, by precision
            (at most; ``eigh`` itself is not a product), as the solver's ``*_products`` counts them.
        products (int): All precisions together.
        workspace (int): Stacks of the input's size the solver allocates at its peak, its result
            included (:data:`SOLVER_WORKSPACE`).
    """

    name: str
    solve: Callable[[Tensor], InverseRootResult]
    product_counts: ProductCounts

    @property
    def products(self) -> int:
        return self.product_counts.total()

    @property
    def workspace(self) -> int:
        return SOLVER_WORKSPACE[self.name]


#: Peak allocation of each solver in stacks of its input's size (float32, result included), as
#: measured by ``tests/test_memory.py`` (peak resident memory of one call in a fresh process).
SOLVER_WORKSPACE = {"eigh": 6, "coupled_newton": 9, "newton_db": 12, "chebyshev": 6, "minimax": 10}


def eigh_solver(config: RootInvConfig, root: float, epsilon: float) -> BatchedSolver:
    """Batched eigh with upstream ``EigenConfig`` semantics (``config``'s perturbation flag if
    any).
    """
    perturbation = getattr(config, "rank_deficient_stability_config", PerturbationConfig())
    solve = partial(
        eigh_inverse_root,
        root=root,
        epsilon=epsilon,
        perturb_before_computation=perturbation.perturb_before_computation,
    )
    return BatchedSolver("eigh", solve, ProductCounts({MatmulPrecision.FP32: EIGH_PRODUCTS}))


def batched_solver(config: RootInvConfig, root: float, epsilon: float) -> BatchedSolver | None:
    """The batched solver for ``config`` at ``root``, or ``None`` for upstream's per-block path."""
    match config:
        case MinimaxRootInvConfig() if root in MINIMAX_ROOTS:
            solve = partial(
                minimax_inverse_root,
                root=int(root),
                epsilon=epsilon,
                rel_epsilon=config.rel_epsilon,
                precision=config.precision,
                scaling=config.scaling,
                first_step_precision=config.first_step_precision,
            )
            products = minimax_products(
                root, config.rel_epsilon, config.precision, config.first_step_precision
            )
            return BatchedSolver("minimax", solve, products)
        case NewtonDBRootInvConfig() if is_power_of_two(root):
            solve = partial(
                newton_db_inverse_root,
                root=int(root),
                epsilon=epsilon,
                rel_epsilon=config.rel_epsilon,
                precision=config.precision,
                iteration=config.iteration,
                scaling=config.scaling,
            )
            return BatchedSolver(
                "newton_db", solve, newton_db_products(root, config.precision, config.iteration)
            )
        case MinimaxRootInvConfig() | NewtonDBRootInvConfig():
            return eigh_solver(config, root, epsilon)
        case ChebyshevRootInvConfig():
            solve = partial(
                chebyshev_inverse_root,
                root=root,
                epsilon=epsilon,
                rel_epsilon=config.rel_epsilon,
                precision=config.precision,
                degree=config.degree,
                scaling=config.scaling,
            )
            return BatchedSolver(
                "chebyshev", solve, chebyshev_products(root, config.precision, config.degree)
            )
        case EigenConfig() if (
            isinstance(config.rank_deficient_stability_config, PerturbationConfig)
            and config.eigendecomposition_offload_device == ""
        ):
            return eigh_solver(config, root, epsilon)
        case CoupledNewtonConfig() if float(root).is_integer():
            iteration = IterationControl(
                num_iterations=config.max_iterations,
                tolerance=config.tolerance,
                early_exit_check_interval=COUPLED_NEWTON_EARLY_EXIT_CHECK_INTERVAL,
                stop_at_best=False,
            )
            solve = partial(
                coupled_newton_inverse_root,
                root=int(root),
                epsilon=epsilon,
                iteration=iteration,
                scaling=FROBENIUS_SCALING,
            )
            return BatchedSolver(
                "coupled_newton",
                solve,
                coupled_newton_products(root, MatmulPrecision.FP32, iteration),
            )
        case _:
            return None
