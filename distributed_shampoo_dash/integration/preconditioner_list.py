"""``RootInvShampooPreconditionerList`` whose inverse roots are computed stack by stack.

Upstream computes, for every block and every factor of the block, one inverse root after the
other (``BaseShampooKroneckerFactorsUnwrapped.amortized_computation``). This list gathers the
bias-corrected (and trace-scaled) factor matrices of all blocks of its param group, groups them by
``(dim, root, dtype)`` and makes one solver call per group. Results are written into the same
state tensors (``copy_``, packed when symmetric packing is on), so the optimizer state, its
``state_dict`` and checkpoints are exactly upstream's.

Error semantics are upstream's, block by block. The happy path reads one batch of flags from the
device per param group (input finiteness and per-block acceptance). Whenever something is off,
the affected blocks are *replayed* through upstream's own per-block code, which raises the same
``PreconditionerValueError`` for non-finite factors, keeps the previous inverse factor after a
solver exception and counts failed amortized computations per block:

* any non-finite factor matrix: every block is replayed (upstream raises at the first one);
* a batched solver call raises (e.g. ``eigh`` does not converge): the blocks of that group;
* an upstream config gives a non-finite root: that block (upstream raises);
* a DASH config gives a rejected root (see :mod:`~distributed_shampoo_dash.integration.configs`):
  the rejected roots are recomputed by batched eigh if ``fallback_to_eigh``; blocks still without
  an acceptable root are replayed (their factor keeps its previous inverse and one failure is
  counted). Fallbacks are logged and counted in :attr:`fallback_counts`.

Configs that are not batched, and a ``matrix_inverse_root`` replaced by anything but upstream's
or DASH's function (e.g. a test mock), use upstream's per-block path unchanged.
"""

import logging
from collections import Counter

import torch
from distributed_shampoo.preconditioner import shampoo_preconditioner_list
from distributed_shampoo.preconditioner.shampoo_preconditioner_list import (
    RootInvShampooKroneckerFactorsUnwrapped,
    RootInvShampooPreconditionerList,
)
from distributed_shampoo.utils.shampoo_utils import pack_upper_triangular
from torch import Tensor

from distributed_shampoo_dash.integration.configs import DashRootInvConfig
from distributed_shampoo_dash.integration.solve import (
    accepted,
    dash_matrix_inverse_root,
    eigh_stack,
    is_batchable,
    solve_stack,
    upstream_matrix_inverse_root,
)
from distributed_shampoo_dash.solvers import InverseRootResult
from distributed_shampoo_dash.stacking import InverseRootKey, group_indices, stack_group, write_back

logger: logging.Logger = logging.getLogger(__name__)


def bias_corrected_factor_matrix(
    kronecker_factors: RootInvShampooKroneckerFactorsUnwrapped,
    factor_matrix: Tensor,
    bias_correction2: Tensor,
) -> Tensor:
    """The ``(d, d)`` matrix upstream hands to ``matrix_inverse_root`` for one factor.

    ``F / (1 - beta2^t)``, unpacked, and multiplied by ``max(trace, epsilon)^{-e}`` when trace
    scaling is on: the same operations as ``BaseShampooKroneckerFactorsUnwrapped.amortized_computation``.
    """
    matrix = kronecker_factors._unpack_matrix(factor_matrix / bias_correction2)
    if kronecker_factors.use_trace_scaling:
        safe_trace = torch.clamp(torch.trace(matrix), min=kronecker_factors.epsilon)
        matrix = matrix * torch.pow(safe_trace, -kronecker_factors.trace_scaling_exponent)
    return matrix


class BatchedRootInvShampooPreconditionerList(RootInvShampooPreconditionerList):
    """Root-inverse Shampoo preconditioners whose amortized computation is batched per group.

    Attributes:
        fallback_counts (Counter[str]): Roots recomputed by ``"eigh"`` and blocks ``"replayed"``
            through upstream's per-block path since construction.
    """

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.fallback_counts: Counter[str] = Counter()

    def update_preconditioners(
        self,
        masked_grad_list: tuple[Tensor, ...],
        step: Tensor,
        perform_amortized_computation: bool,
    ) -> None:
        super().update_preconditioners(
            masked_grad_list=masked_grad_list,
            step=step,
            perform_amortized_computation=False,
        )
        if perform_amortized_computation:
            self._batched_amortized_computation()

    def _replay(self, block_indices: set[int] | range) -> None:
        """Runs upstream's per-block amortized computation for the given masked blocks, in order."""
        blocks = self._masked_kronecker_factors_unwrapped
        for block_index in sorted(block_indices):
            blocks[block_index].amortized_computation(bias_correction2=self._bias_correction2)

    @torch.compiler.disable
    def _batched_amortized_computation(self) -> None:
        config = self._preconditioner_config.amortized_computation_config
        blocks = self._masked_kronecker_factors_unwrapped
        if shampoo_preconditioner_list.matrix_inverse_root not in (
            upstream_matrix_inverse_root,
            dash_matrix_inverse_root,
        ):
            self._replay(range(len(blocks)))
            return
        if isinstance(config, DashRootInvConfig) and (
            shampoo_preconditioner_list.matrix_inverse_root is not dash_matrix_inverse_root
        ):
            raise RuntimeError(
                f"{type(config).__name__} needs DASH, which was disabled after this optimizer was "
                "created: call distributed_shampoo_dash.enable() again."
            )

        # Flatten every factor of every block: position -> (block index, factor index).
        owners: list[int] = []
        matrices: list[Tensor] = []
        keys: list[InverseRootKey] = []
        targets: list[Tensor] = []
        for block_index, kronecker_factors in enumerate(blocks):
            for factor_matrix, inv_factor_matrix, root in zip(
                kronecker_factors.factor_matrices,
                kronecker_factors.inv_factor_matrices,
                kronecker_factors.roots,
                strict=True,
            ):
                matrix = bias_corrected_factor_matrix(
                    kronecker_factors, factor_matrix, self._bias_correction2
                )
                owners.append(block_index)
                matrices.append(matrix)
                keys.append(InverseRootKey.of(matrix, root))
                targets.append(inv_factor_matrix)

        replayed: set[int] = set()
        solved: list[tuple[InverseRootKey, list[int], Tensor, InverseRootResult]] = []
        input_checks: list[Tensor] = []
        for key, positions in group_indices(keys).items():
            if not is_batchable(config, key.root):
                replayed.update(owners[p] for p in positions)
                continue
            stack = stack_group(matrices, positions)
            input_checks.append(torch.isfinite(stack).all().unsqueeze(0))
            try:
                result = solve_stack(config, stack, key.root, self._epsilon)
            except Exception as exception:
                logger.warning(
                    f"Batched {type(config).__name__} failed on {len(positions)} factor matrices "
                    f"of dim {key.dim} ({exception!r}); using the per-block path for their blocks."
                )
                replayed.update(owners[p] for p in positions)
                continue
            solved.append((key, positions, stack, result))

        # One device-to-host read for the whole param group.
        flags = (
            torch.cat([*input_checks, *(accepted(config, result) for *_, result in solved)]).tolist()
            if input_checks
            else []
        )
        if not all(flags[: len(input_checks)]):
            self._replay(range(len(blocks)))
            return
        offset = len(input_checks)
        for key, positions, stack, result in solved:
            group_flags = flags[offset : offset + len(positions)]
            offset += len(positions)
            rejected = [j for j, ok in enumerate(group_flags) if not ok]
            roots = result.inverse_root
            if rejected:
                roots, still_rejected = self._fallback(
                    config, key, stack, positions, result, rejected
                )
                replayed.update(owners[positions[j]] for j in still_rejected)
            kept = [j for j, position in enumerate(positions) if owners[position] not in replayed]
            write_back(
                roots[kept],
                targets,
                [positions[j] for j in kept],
                transform=self._to_inverse_factor_format,
            )

        for block_index, kronecker_factors in enumerate(blocks):
            if block_index not in replayed:
                kronecker_factors._failed_amortized_computation_counter = 0
        self.fallback_counts["replayed"] += len(replayed)
        self._replay(replayed)

    def _fallback(
        self,
        config: object,
        key: InverseRootKey,
        stack: Tensor,
        positions: list[int],
        result: InverseRootResult,
        rejected: list[int],
    ) -> tuple[Tensor, list[int]]:
        """Recomputes a group's rejected roots by eigh (DASH configs with ``fallback_to_eigh``).

        Returns:
            roots (Tensor): The group's ``(N, d, d)`` roots with the recomputed ones substituted.
            still_rejected (list[int]): Indices into the group that have no acceptable root.
        """
        residuals = result.residual[rejected].tolist()
        described = ", ".join(
            f"{positions[j]} (residual {residual:.2e})"
            for j, residual in zip(rejected, residuals, strict=True)
        )
        if not (isinstance(config, DashRootInvConfig) and config.fallback_to_eigh):
            logger.warning(f"{type(config).__name__} rejected the roots of factors {described}.")
            return result.inverse_root, rejected
        logger.warning(
            f"{type(config).__name__} rejected the roots of factors {described}; recomputing by eigh."
        )
        self.fallback_counts["eigh"] += len(rejected)
        try:
            fallback = eigh_stack(config, stack[rejected], key.root, self._epsilon)
        except Exception as exception:
            logger.warning(f"The eigh fallback failed too ({exception!r}).")
            return result.inverse_root, rejected
        roots = result.inverse_root.clone()
        roots[rejected] = fallback.inverse_root.to(dtype=roots.dtype)
        finite = fallback.is_finite.tolist()
        return roots, [j for j, ok in zip(rejected, finite, strict=True) if not ok]

    def _to_inverse_factor_format(self, root: Tensor, target: Tensor) -> Tensor:
        """Casts a ``(d, d)`` root to the inverse factor's dtype and packs it if packing is on."""
        root = root.to(dtype=target.dtype)
        return pack_upper_triangular(root) if self._preconditioner_config.use_symmetric_packing else root
