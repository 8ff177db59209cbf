"""What DASH does with a stack of inverse roots: solve, accept, fall back, give up.

The policy, per block of a stack, for any batched config (see :mod:`.solve`):

1. *solve*: the config's batched solver computes the root, which is cast to the dtype it will be
   stored in (the inverse factors' ``inv_factor_matrix_dtype``);
2. *accept*: the cast root must be finite and, for a DASH config with ``max_residual`` set, have
   ``residual <= max_residual`` (:func:`acceptance`, evaluated on the device);
3. *fall back*: a rejected root of a DASH config with ``fallback_to_eigh`` is recomputed by eigh
   with upstream ``EigenConfig`` semantics and used if finite in the stored dtype
   (:func:`recompute_rejected`);
4. *give up*: a block with no usable root keeps its previous inverse factor and counts one failed
   amortized computation (upstream's handling of a solver exception), or, for upstream's own
   configs, gets upstream's error for a non-finite root.

:func:`inverse_roots` runs the whole policy on one stack (one host read of the acceptance flags
when nothing is rejected). The batched preconditioner list runs steps 1-2 for every chunk of a
param group, reads the flags of all chunks at once, and then steps 3-4 for the rejected blocks;
the per-block drop-in ``dash_matrix_inverse_root`` calls :func:`inverse_roots` on a stack of one.
"""

from dataclasses import dataclass
from typing import NamedTuple

import torch
from distributed_shampoo.preconditioner.matrix_functions_types import RootInvConfig
from torch import Tensor

from distributed_shampoo_dash.integration.configs import DashRootInvConfig
from distributed_shampoo_dash.integration.solve import batched_solver, eigh_solver
from distributed_shampoo_dash.solvers import InverseRootResult
from distributed_shampoo_dash.solvers.checks import as_stack, check_instance, check_positive_root
from distributed_shampoo_dash.solvers.linalg import finite_blocks


class InverseRoots(NamedTuple):
    """Inverse roots of a stack as the optimizer computes them, with their diagnostics.

    Attributes:
        inverse_root (Tensor): ``(N, d, d)`` in the requested dtype: the solver's root where
            ``accepted``, eigh's where ``recomputed``, the solver's rejected root elsewhere.
        residual (Tensor): ``(N,)`` float32 residual of the solver's root.
        is_finite (Tensor): ``(N,)`` bool, the solver's root and residual are finite.
        regularization (Tensor): ``(N,)``, the value added to the diagonal of each block for the
            root returned (in the solver's working dtype).
        accepted (Tensor): ``(N,)`` bool, the solver's root was accepted.
        recomputed (Tensor): ``(N,)`` bool, a rejected root was recomputed by eigh.
    """

    inverse_root: Tensor
    residual: Tensor
    is_finite: Tensor
    regularization: Tensor
    accepted: Tensor
    recomputed: Tensor

    @property
    def usable(self) -> Tensor:
        """``(N,)`` bool: the returned root may be used (accepted or recomputed)."""
        return self.accepted | self.recomputed


@dataclass
class SolvedStack:
    """A solver's roots of a stack, cast to the stored dtype, with their acceptance (on device).

    Attributes:
        result (InverseRootResult): The solver's result.
        roots (Tensor): ``(N, d, d)`` ``result.inverse_root`` in the stored dtype.
        accepted (Tensor): ``(N,)`` bool, see :func:`acceptance`.
    """

    result: InverseRootResult
    roots: Tensor
    accepted: Tensor


def acceptance(config: RootInvConfig, result: InverseRootResult, roots: Tensor) -> Tensor:
    """``(N,)`` bool: roots that may be used (finite as stored, within ``max_residual`` if set)."""
    accepted = result.is_finite & finite_blocks(roots)
    if isinstance(config, DashRootInvConfig) and config.max_residual is not None:
        accepted = accepted & (result.residual <= config.max_residual)
    return accepted


def solve_stack(
    config: RootInvConfig, stack: Tensor, root: float, *, epsilon: float, dtype: torch.dtype
) -> SolvedStack:
    """Steps 1-2 of the policy for an ``(N, d, d)`` stack of ``A`` (no host synchronisation).

    Raises:
        ValueError: If ``config`` at ``root`` is not batched (upstream's per-block path serves it).
        torch.linalg.LinAlgError: If a batched eigh fails (the caller falls back per block).
    """
    solver = batched_solver(config, root, epsilon)
    if solver is None:
        raise ValueError(
            f"Invalid config={config!r} at root {root}: it is not batched; upstream's "
            "matrix_inverse_root computes it one block at a time."
        )
    result = solver.solve(stack)
    roots = result.inverse_root.to(dtype)
    return SolvedStack(result, roots, acceptance(config, result, roots))


def recompute_rejected(
    config: RootInvConfig, stack: Tensor, root: float, *, epsilon: float, dtype: torch.dtype
) -> SolvedStack | None:
    """Step 3 for the rejected blocks' ``stack``: their eigh roots, or ``None`` if ``config`` has
    no fallback (upstream configs, or ``fallback_to_eigh=False``). ``accepted`` marks the finite
    ones.
    """
    if not (isinstance(config, DashRootInvConfig) and config.fallback_to_eigh):
        return None
    result = eigh_solver(config, root, epsilon).solve(stack)
    roots = result.inverse_root.to(dtype)
    return SolvedStack(result, roots, result.is_finite & finite_blocks(roots))


def inverse_roots(
    stack: Tensor,
    root: float,
    config: RootInvConfig,
    *,
    epsilon: float = 0.0,
    dtype: torch.dtype | None = None,
) -> InverseRoots:
    """The inverse roots of an ``(N, d, d)`` stack exactly as the optimizer computes them.

    Args:
        stack (Tensor): ``(N, d, d)`` (or ``(d, d)``) symmetric PSD matrices ``A``, as upstream
            hands them to ``matrix_inverse_root`` (bias-corrected, trace-scaled).
        root (float): The inverse root ``p``.
        config (RootInvConfig): A DASH config or a batched upstream config (``EigenConfig``,
            ``CoupledNewtonConfig``).
        epsilon (float): Shampoo's ``epsilon``. (Default: 0.0)
        dtype (torch.dtype | None): Dtype the roots are stored in and judged in (the
            ``inv_factor_matrix_dtype``). (Default: the stack's dtype)

    Returns:
        roots (InverseRoots): Roots and per-block diagnostics; ``roots.usable`` marks the blocks
        the optimizer would use (the others keep their previous inverse factor).

    Raises:
        ValueError: If ``config`` at ``root`` is not batched.
    """
    check_instance(config, RootInvConfig, "config")
    root = check_positive_root(root)
    stack = as_stack(stack, "stack")
    dtype = stack.dtype if dtype is None else dtype
    solved = solve_stack(config, stack, root, epsilon=epsilon, dtype=dtype)
    roots = solved.roots
    regularization = solved.result.regularization
    recomputed = torch.zeros_like(solved.accepted)
    rejected = (~solved.accepted).nonzero().squeeze(-1)
    if rejected.numel() > 0:
        fallback = recompute_rejected(config, stack[rejected], root, epsilon=epsilon, dtype=dtype)
        if fallback is not None:
            usable = fallback.accepted
            roots = roots.clone()
            roots[rejected] = torch.where(usable[:, None, None], fallback.roots, roots[rejected])
            regularization = regularization.clone()
            regularization[rejected] = torch.where(
                usable,
                fallback.result.regularization.to(regularization.dtype),
                regularization[rejected],
            )
            recomputed[rejected] = usable
    return InverseRoots(
        roots,
        solved.result.residual,
        solved.result.is_finite,
        regularization,
        solved.accepted,
        recomputed,
    )
