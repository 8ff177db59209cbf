"""Dispatch: which batched solver computes a stack of inverse roots for a given ``RootInvConfig``.

:func:`batched_solver` is the one place a config is matched to a solver of the registry
(:data:`~distributed_shampoo_dash.solvers.SOLVERS`): it returns the solver call for a stack and
the ``d x d`` products it runs per precision, or ``None`` for what stays on upstream's per-block
``matrix_inverse_root``. The config's fields were checked when it was constructed, so the call
checks nothing again. Batched: upstream ``EigenConfig`` (with a
``PerturbationConfig`` and no offload device), upstream ``CoupledNewtonConfig`` (integer roots),
and the DASH configs (any root; minimax and Newton-DB hand roots their steps cannot reach to
batched eigh).
Per block: ``PseudoInverseConfig``, ``CoupledHigherOrderConfig``, fractional roots for coupled
Newton, eigendecomposition offload.
"""

from collections.abc import Callable
from typing import NamedTuple

import torch
from distributed_shampoo.preconditioner.matrix_functions_types import (
    CoupledNewtonConfig,
    EigenConfig,
    PerturbationConfig,
    RootInvConfig,
)
from torch import Tensor

from distributed_shampoo_dash.integration.configs import DashRootInvConfig
from distributed_shampoo_dash.solvers import (
    FROBENIUS_SCALING,
    SOLVERS,
    InverseRootResult,
    IterationControl,
    MatmulPrecision,
    ProductCounts,
)

#: Iterations between host checks of "any block still iterating" for upstream's coupled Newton,
#: whose default allows 100 iterations although most blocks stop after 10 to 30.
COUPLED_NEWTON_EARLY_EXIT_CHECK_INTERVAL = 4


class BatchedSolver(NamedTuple):
    """A solver of :data:`~distributed_shampoo_dash.solvers.SOLVERS` bound to a config, a root
    and an epsilon.

    Attributes:
        name (str): The solver's registry key: ``"eigh"``, ``"minimax"``, ``"newton_db"``,
            ``"chebyshev"`` or ``"coupled_newton"``.
        solve (Callable[[Tensor], InverseRootResult]): Inverse roots of an ``(N, d, d)`` stack.
        product_counts (ProductCounts): ``d x d`` matrix products it runs per block, by precision
            (at most; ``eigh`` itself is not a product), as the solver's ``*_products`` counts them.
        products (int): All precisions together.
        workspace (int): Stacks of the input's size the solver allocates at its peak, its result
            included (the registry's).
    """

    name: str
    solve: Callable[[Tensor], InverseRootResult]
    product_counts: ProductCounts

    @property
    def products(self) -> int:
        return self.product_counts.total()

    @property
    def workspace(self) -> int:
        return SOLVERS[self.name].workspace


def bound_solver(name: str, root: float, epsilon: float, **options: object) -> BatchedSolver:
    """The registry's solver ``name`` bound to ``root``, ``epsilon`` and ``options``."""
    solve, product_counts = SOLVERS[name].bind(root, epsilon, **options)
    return BatchedSolver(name, solve, product_counts)


def eigh_solver(config: RootInvConfig, root: float, epsilon: float) -> BatchedSolver:
    """Batched eigh with upstream ``EigenConfig`` semantics (``config``'s perturbation flag if
    any).
    """
    perturbation = getattr(config, "rank_deficient_stability_config", PerturbationConfig())
    return bound_solver(
        "eigh", root, epsilon, perturb_before_computation=perturbation.perturb_before_computation
    )


def batched_solver(
    config: RootInvConfig, root: float, epsilon: float, dtype: torch.dtype = torch.float32
) -> BatchedSolver | None:
    """The batched solver for ``config`` at ``root``, or ``None`` for upstream's per-block path.

    A DASH config names its solver (``config.solver``) and carries its options as fields; a root
    that solver does not compute goes to batched eigh. Upstream's coupled Newton iterates in the
    factor matrices' ``dtype`` (float64 factors in float64, as upstream), in float32 otherwise.
    """
    match config:
        case DashRootInvConfig():
            solver = SOLVERS[config.solver]
            if not solver.supports_root(root):
                return eigh_solver(config, root, epsilon)
            options = {name: getattr(config, name) for name in solver.options}
            return bound_solver(solver.name, root, epsilon, **options)
        case EigenConfig() if (
            isinstance(config.rank_deficient_stability_config, PerturbationConfig)
            and config.eigendecomposition_offload_device == ""
        ):
            return eigh_solver(config, root, epsilon)
        case CoupledNewtonConfig() if SOLVERS["coupled_newton"].supports_root(root):
            iteration = IterationControl(
                num_iterations=config.max_iterations,
                tolerance=config.tolerance,
                early_exit_check_interval=COUPLED_NEWTON_EARLY_EXIT_CHECK_INTERVAL,
                stop_at_best=False,
            )
            return bound_solver(
                "coupled_newton",
                root,
                epsilon,
                rel_epsilon=0.0,
                precision=(
                    MatmulPrecision.FP64 if dtype == torch.float64 else MatmulPrecision.FP32
                ),
                iteration=iteration,
                scaling=FROBENIUS_SCALING,
            )
        case _:
            return None
