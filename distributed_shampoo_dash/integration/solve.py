"""Which solver computes a stack of inverse roots for a given ``RootInvConfig``.

Batched here: upstream ``EigenConfig`` (with a ``PerturbationConfig`` and no offload device),
upstream ``CoupledNewtonConfig`` (integer roots), and the DASH configs (any root; Newton-DB
hands roots other than ``2^k`` to batched eigh). Everything else (``PseudoInverseConfig``,
``CoupledHigherOrderConfig``, fractional roots for coupled Newton, eigendecomposition offload)
is left to upstream's per-block ``matrix_inverse_root``.
"""

import logging
from fractions import Fraction

from distributed_shampoo.preconditioner.matrix_functions import (
    matrix_inverse_root as upstream_matrix_inverse_root,
)
from distributed_shampoo.preconditioner.matrix_functions_types import (
    CoupledNewtonConfig,
    EigenConfig,
    PerturbationConfig,
    RootInvConfig,
)
from torch import Tensor

from distributed_shampoo_dash.integration.configs import (
    ChebyshevRootInvConfig,
    DashRootInvConfig,
    NewtonDBRootInvConfig,
)
from distributed_shampoo_dash.solvers import (
    FROBENIUS_SCALING,
    InverseRootResult,
    IterationControl,
    chebyshev_inverse_root,
    coupled_newton_inverse_root,
    eigh_inverse_root,
    newton_db_inverse_root,
)

logger: logging.Logger = logging.getLogger(__name__)

#: Iterations between host checks of "any block still iterating" for upstream's coupled Newton,
#: whose default allows 100 iterations although most blocks stop after 10 to 30.
COUPLED_NEWTON_EARLY_EXIT_CHECK_INTERVAL = 4


def _is_power_of_two(root: float) -> bool:
    return float(root).is_integer() and root >= 1 and int(root) & (int(root) - 1) == 0


def is_batchable(config: RootInvConfig, root: float) -> bool:
    """Whether :func:`solve_stack` handles ``config`` at ``root`` (else: upstream's per-block path)."""
    match config:
        case DashRootInvConfig():
            return True
        case EigenConfig():
            return (
                isinstance(config.rank_deficient_stability_config, PerturbationConfig)
                and config.eigendecomposition_offload_device == ""
            )
        case CoupledNewtonConfig():
            return float(root).is_integer()
        case _:
            return False


def eigh_stack(config: RootInvConfig, stack: Tensor, root: float, epsilon: float) -> InverseRootResult:
    """Batched eigh with upstream ``EigenConfig`` semantics (``config``'s perturbation flag if any)."""
    perturbation = getattr(config, "rank_deficient_stability_config", PerturbationConfig())
    return eigh_inverse_root(
        stack,
        root,
        epsilon=epsilon,
        perturb_before_computation=perturbation.perturb_before_computation,
    )


def solve_stack(config: RootInvConfig, stack: Tensor, root: float, epsilon: float) -> InverseRootResult:
    """Inverse ``root``-th roots of an ``(N, d, d)`` stack of ``A + epsilon I`` as ``config`` asks.

    Raises:
        ValueError: If ``is_batchable(config, root)`` is False.
        torch.linalg.LinAlgError: If a batched eigh fails (the caller falls back per block).
    """
    match config:
        case NewtonDBRootInvConfig() if _is_power_of_two(root):
            return newton_db_inverse_root(
                stack, int(root), epsilon=epsilon, control=config.control, scaling=config.scaling
            )
        case NewtonDBRootInvConfig():
            return eigh_stack(config, stack, root, epsilon)
        case ChebyshevRootInvConfig():
            return chebyshev_inverse_root(
                stack,
                root,
                epsilon=epsilon,
                degree=config.degree,
                relative_epsilon=config.relative_epsilon,
                precision=config.precision,
                scaling=config.scaling,
            )
        case EigenConfig() if is_batchable(config, root):
            return eigh_stack(config, stack, root, epsilon)
        case CoupledNewtonConfig() if is_batchable(config, root):
            control = IterationControl(
                num_iterations=config.max_iterations,
                tolerance=config.tolerance,
                early_exit_check_interval=COUPLED_NEWTON_EARLY_EXIT_CHECK_INTERVAL,
                stop_at_best=False,
            )
            return coupled_newton_inverse_root(
                stack, int(root), epsilon=epsilon, control=control, scaling=FROBENIUS_SCALING
            )
    raise ValueError(f"{type(config).__name__} at root {root} is not batched; use the per-block path.")


def accepted(config: RootInvConfig, result: InverseRootResult) -> Tensor:
    """``(N,)`` bool: blocks whose root may be used (finite, and within ``max_residual`` if set)."""
    if isinstance(config, DashRootInvConfig) and config.max_residual is not None:
        return result.is_finite & (result.residual <= config.max_residual)
    return result.is_finite


def dash_matrix_inverse_root(
    A: Tensor, root: Fraction, root_inv_config: RootInvConfig, epsilon: float = 0.0
) -> Tensor:
    """Drop-in for upstream ``matrix_inverse_root`` that also understands the DASH configs.

    For a DASH config, the root of the single matrix ``A`` is computed by its solver; if it is not
    accepted it is recomputed by eigh when ``fallback_to_eigh`` is set, and otherwise (or if that
    fails too) an ``ArithmeticError`` tells upstream to keep the previous inverse factor and count
    a failed amortized computation. Other configs go to upstream's own function unchanged.
    """
    if not isinstance(root_inv_config, DashRootInvConfig):
        return upstream_matrix_inverse_root(A=A, root=root, root_inv_config=root_inv_config, epsilon=epsilon)
    if A.ndim != 2 or A.shape[0] != A.shape[1]:
        raise ValueError(f"Matrix is not square and 2-dimensional! {A.shape=}")
    result = solve_stack(root_inv_config, A.unsqueeze(0), float(root), epsilon)
    if bool(accepted(root_inv_config, result).all()):
        return result.inverse_root[0]
    if root_inv_config.fallback_to_eigh:
        logger.warning(
            f"{type(root_inv_config).__name__} rejected a root (residual "
            f"{result.residual.item():.3e}, max {root_inv_config.max_residual}); recomputing it by eigh."
        )
        fallback = eigh_stack(root_inv_config, A.unsqueeze(0), float(root), epsilon)
        if bool(fallback.is_finite.all()):
            return fallback.inverse_root[0]
    raise ArithmeticError(
        f"{type(root_inv_config).__name__} produced no acceptable inverse root: residual "
        f"{result.residual.item():.3e} (max {root_inv_config.max_residual}), finite "
        f"{bool(result.is_finite.item())}."
    )
