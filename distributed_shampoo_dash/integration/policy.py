"""What DASH does with a stack of inverse roots: solve, accept, fall back, give up.

The policy, per block of a stack, for any batched config (:mod:`.dispatch` picks the solver):

1. *solve*: the config's batched solver computes the root, which is cast to the dtype it will be
   stored in (the inverse factors' ``inv_factor_matrix_dtype``);
2. *accept*: the cast root must be finite and, for a DASH config, have ``residual <=
   max_residual`` and ``overshoot <= max_overshoot`` where those are set (evaluated on the
   device);
3. *fall back*: a rejected root of a DASH config with ``fallback_to_eigh`` is recomputed by eigh
   with upstream ``EigenConfig`` semantics and used if finite in the stored dtype;
4. *give up*: a block with no usable root keeps its previous inverse factor and counts one failed
   amortized computation (upstream's handling of a solver exception), or, for upstream's own
   configs, gets upstream's error for a non-finite root.

A :class:`RootPolicy` holds steps 1-3 for one (config, root, epsilon, dtypes), with its solvers
bound once. Its two users apply the outcome to their own storage: :func:`inverse_roots` returns
it for a stack (one host read of the acceptance flags when nothing is rejected), and the batched
preconditioner list runs step 1-2 for every chunk of a param group, reads the flags of all chunks
at once, runs step 3 for the rejected blocks and writes the usable roots into the inverse
factors; the per-block drop-in ``dash_matrix_inverse_root`` calls :func:`inverse_roots` on a
stack of one. :func:`describe_rejections` words the log message both give.
"""

from dataclasses import dataclass
from typing import NamedTuple

import torch
from distributed_shampoo.preconditioner.matrix_functions_types import RootInvConfig
from torch import Tensor

from distributed_shampoo_dash.integration.configs import DashRootInvConfig
from distributed_shampoo_dash.integration.dispatch import BatchedSolver, batched_solver, eigh_solver
from distributed_shampoo_dash.solvers import InverseRootResult
from distributed_shampoo_dash.solvers.checks import (
    as_stack,
    check_instance,
    check_positive_root,
    check_real,
)
from distributed_shampoo_dash.solvers.linalg import finite_blocks, select_blocks


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
        accepted (Tensor): ``(N,)`` bool, the roots that may be used.
    """

    result: InverseRootResult
    roots: Tensor
    accepted: Tensor


@dataclass(frozen=True)
class RootPolicy:
    """Steps 1-3 of the policy for one config, root, epsilon and pair of dtypes.

    Attributes:
        config (RootInvConfig): A batched config (see :func:`.dispatch.batched_solver`).
        solver (BatchedSolver): Its solver at this root and epsilon.
        fallback (BatchedSolver | None): Eigh with upstream ``EigenConfig`` semantics for a DASH
            config with ``fallback_to_eigh``; ``None`` otherwise.
        max_residual (float | None): Largest accepted residual (DASH configs), or ``None``.
        max_overshoot (float | None): Largest accepted overshoot (DASH configs), or ``None``.
        dtype (torch.dtype): Dtype the roots are stored in and judged in.
    """

    config: RootInvConfig
    solver: BatchedSolver
    fallback: BatchedSolver | None
    max_residual: float | None
    max_overshoot: float | None
    dtype: torch.dtype

    @classmethod
    def of(
        cls,
        config: RootInvConfig,
        root: float,
        *,
        epsilon: float,
        factor_dtype: torch.dtype,
        dtype: torch.dtype,
    ) -> "RootPolicy | None":
        """The policy for ``config`` at ``root``, or ``None`` if ``config`` at ``root`` is not
        batched (upstream's per-block path serves it).

        Args:
            config (RootInvConfig): The ``amortized_computation_config``, checked at construction.
            root (float): The inverse root ``p``.
            epsilon (float): Shampoo's ``epsilon``.
            factor_dtype (torch.dtype): Dtype of the factor matrices.
            dtype (torch.dtype): Dtype the roots are stored in (``inv_factor_matrix_dtype``).
        """
        solver = batched_solver(config, root, epsilon, factor_dtype)
        if solver is None:
            return None
        is_dash = isinstance(config, DashRootInvConfig)
        return cls(
            config=config,
            solver=solver,
            fallback=eigh_solver(config, root, epsilon)
            if is_dash and config.fallback_to_eigh
            else None,
            max_residual=config.max_residual if is_dash else None,
            max_overshoot=config.max_overshoot if is_dash else None,
            dtype=dtype,
        )

    def solve(self, stack: Tensor) -> SolvedStack:
        """Steps 1-2 for an ``(N, d, d)`` stack of ``A`` (no host synchronisation).

        Raises:
            torch.linalg.LinAlgError: If a batched eigh fails (the caller falls back per block).
        """
        result = self.solver.solve(stack)
        roots, accepted = self._stored(result)
        if self.max_residual is not None:
            accepted = accepted & (result.residual <= self.max_residual)
        if self.max_overshoot is not None:
            accepted = accepted & (result.overshoot <= self.max_overshoot)
        return SolvedStack(result, roots, accepted)

    def recompute(self, stack: Tensor) -> SolvedStack | None:
        """Step 3 for the rejected blocks' ``stack``: their eigh roots, or ``None`` without a
        fallback. ``accepted`` marks the finite ones.
        """
        if self.fallback is None:
            return None
        result = self.fallback.solve(stack)
        return SolvedStack(result, *self._stored(result))

    def _stored(self, result: InverseRootResult) -> tuple[Tensor, Tensor]:
        """The roots in the storage dtype and where they are finite: read again only where the
        cast made a new tensor (a narrower dtype can overflow)."""
        roots = result.inverse_root.to(self.dtype)
        if roots is result.inverse_root:
            return roots, result.is_finite
        return roots, result.is_finite & finite_blocks(roots)


def describe_rejections(config: RootInvConfig, rejected: str, recomputed: bool) -> str:
    """The warning for rejected roots: ``rejected`` names them, ``recomputed`` says whether eigh
    recomputes them."""
    message = f"{type(config).__name__} rejected the roots of {rejected}"
    return f"{message}; recomputing by eigh." if recomputed else f"{message}."


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
    epsilon = check_real(epsilon, "epsilon")
    dtype = stack.dtype if dtype is None else dtype
    policy = RootPolicy.of(config, root, epsilon=epsilon, factor_dtype=stack.dtype, dtype=dtype)
    if policy is None:
        raise ValueError(
            f"Invalid config={config!r} at root {root}: it is not batched; upstream's "
            "matrix_inverse_root computes it one block at a time."
        )
    solved = policy.solve(stack)
    roots = solved.roots
    regularization = solved.result.regularization
    recomputed = torch.zeros_like(solved.accepted)
    rejected = (~solved.accepted).nonzero().squeeze(-1)
    fallback = policy.recompute(stack[rejected]) if rejected.numel() > 0 else None
    if fallback is not None:
        usable = fallback.accepted
        roots = roots.clone()
        roots[rejected] = select_blocks(usable, fallback.roots, roots[rejected])
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
