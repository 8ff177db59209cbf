"""``RootInvShampooPreconditionerList`` whose every stage runs on stacks of same-shape blocks.

Upstream loops over blocks, and over the factors of each block, in all three stages of a step.
This list does each stage per *group* instead, building the stacks on the fly from the state
tensors and writing results back into them (one foreach op per chunk), so the optimizer state,
its ``state_dict`` and checkpoints are exactly upstream's and nothing can go stale:

* factor update: blocks grouped by (shape, dtype, preconditioned dims); one batched product per
  factor dim for the mode Gram matrices, one pack, one foreach EMA;
* preconditioning: the same groups; the group's inverse factors stacked (and unpacked in one
  indexing op), one batched product per preconditioned dim;
* amortized computation: bias-corrected (and trace-scaled) factor matrices grouped by
  ``(dim, root, dtype)``, one solver call per group.

Groups whose stacks would exceed :attr:`BatchedRootInvShampooPreconditionerList.max_stack_bytes`
are split into chunks, which bounds the extra memory of stacking.

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
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
from distributed_shampoo.preconditioner import shampoo_preconditioner_list
from distributed_shampoo.preconditioner.shampoo_preconditioner_list import (
    RootInvShampooKroneckerFactorsUnwrapped,
    RootInvShampooPreconditionerList,
)
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
from distributed_shampoo_dash.solvers.common import stable_power
from distributed_shampoo_dash.stacking import (
    InverseRootKey,
    chunked,
    group_indices,
    mode_gram_matrices,
    pack_stack,
    precondition_stack,
    stack_group,
    unpack_stack,
    unpacked_dim,
    write_back,
)

logger: logging.Logger = logging.getLogger(__name__)


def bias_corrected_factor_stack(
    kronecker_factors: RootInvShampooKroneckerFactorsUnwrapped,
    factor_matrices: Sequence[Tensor],
    bias_correction2: Tensor,
) -> Tensor:
    """The ``(N, d, d)`` matrices upstream hands to ``matrix_inverse_root``, one per factor.

    ``F / (1 - beta2^t)``, unpacked, times ``max(trace, epsilon)^{-e}`` when trace scaling is on:
    the operations of ``BaseShampooKroneckerFactorsUnwrapped.amortized_computation``, batched.

    Args:
        kronecker_factors (RootInvShampooKroneckerFactorsUnwrapped): Supplies the packing, trace
            scaling and epsilon settings (the same for every block of a list).
        factor_matrices (Sequence[Tensor]): ``N`` factor matrices of one dimension ``d``, as stored.
        bias_correction2 (Tensor): ``1 - beta2^t`` (or 1).
    """
    stack = torch.stack(list(factor_matrices)) / bias_correction2
    if kronecker_factors.use_symmetric_packing:
        stack = unpack_stack(stack, unpacked_dim(stack))
    if kronecker_factors.use_trace_scaling:
        traces = stack.diagonal(dim1=-2, dim2=-1).sum(dim=-1)
        safe_traces = torch.clamp(traces, min=kronecker_factors.epsilon)
        stack = stack * stable_power(safe_traces, -kronecker_factors.trace_scaling_exponent)[:, None, None]
    return stack


#: A factor matrix of a param group: (masked block index, factor index within the block).
_FactorRef = tuple[int, int]


@dataclass
class _SolvedChunk:
    """One solved chunk of a group, held until the param group's flags are read.

    Attributes:
        key (InverseRootKey): The group's key.
        refs (list[_FactorRef]): The chunk's factors, in stack order.
        roots (Tensor): Their roots, cast (and packed) to the inverse factors' format.
        result (InverseRootResult): The solver's result, for the residuals.
    """

    key: InverseRootKey
    refs: list[_FactorRef]
    roots: Tensor
    result: InverseRootResult


class BatchedRootInvShampooPreconditionerList(RootInvShampooPreconditionerList):
    """Root-inverse Shampoo preconditioners whose factor updates, preconditioning and amortized
    computation are batched per group of same-shape blocks.

    Attributes:
        max_stack_bytes (int): Largest stack, in bytes, one batched operation builds; larger
            groups are processed in chunks. (Default: 128 MiB)
        fallback_counts (Counter[str]): Roots recomputed by ``"eigh"`` and blocks ``"replayed"``
            through upstream's per-block path since construction.
    """

    max_stack_bytes: int = 128 * 2**20

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.fallback_counts: Counter[str] = Counter()

    def _block_groups(self, masked_grad_list: tuple[Tensor, ...]) -> Iterator[list[int]]:
        """Chunks of masked block positions sharing shape, dtype and preconditioned dims."""
        keys = [
            (tuple(grad.shape), grad.dtype, selector)
            for grad, selector in zip(
                masked_grad_list, self._masked_preconditioned_dims_selector_list, strict=True
            )
        ]
        for positions in group_indices(keys).values():
            grad = masked_grad_list[positions[0]]
            factors = self._masked_kronecker_factors_unwrapped[positions[0]]
            largest = max(
                [grad.numel() * grad.element_size()]
                + [inverse.shape[-1] ** 2 * inverse.element_size() for inverse in factors.inv_factor_matrices]
            )
            yield from chunked(positions, largest, self.max_stack_bytes)

    def _update_factor_matrices(self, masked_grad_list: tuple[Tensor, ...]) -> None:
        """Upstream's factor EMA ``F <- beta2 F + w pack(G_(k) G_(k)^T)``, a group at a time."""
        blocks = self._masked_kronecker_factors_unwrapped
        for positions in self._block_groups(masked_grad_list):
            first = blocks[positions[0]]
            if not first.factor_matrices:
                continue
            G = stack_group(masked_grad_list, positions)
            selector = self._masked_preconditioned_dims_selector_list[positions[0]]
            factor_matrices: list[Tensor] = []
            gram_matrices: list[Tensor] = []
            for factor_index, dim in enumerate(k for k, selected in enumerate(selector) if selected):
                gram = mode_gram_matrices(G, dim)
                factor_matrices.extend(blocks[i].factor_matrices[factor_index] for i in positions)
                gram_matrices.extend((pack_stack(gram) if first.use_symmetric_packing else gram).unbind(0))
            if self._beta2 != 1.0:
                torch._foreach_mul_(factor_matrices, self._beta2)
            torch._foreach_add_(factor_matrices, gram_matrices, alpha=self._weighting_factor)

    def precondition(self, masked_grad_list: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
        """Upstream's ``precondition``: each block's gradient times its inverse factors, per group."""
        blocks = self._masked_kronecker_factors_unwrapped
        preconditioned: list[Tensor] = list(masked_grad_list)
        for positions in self._block_groups(masked_grad_list):
            G = stack_group(masked_grad_list, positions)
            selector = self._masked_preconditioned_dims_selector_list[positions[0]]
            dims = [G.shape[k + 1] for k, selected in enumerate(selector) if selected]
            inverse_factors = [
                self._unpacked_stack([blocks[i].inv_factor_matrices[factor_index] for i in positions], dim)
                for factor_index, dim in enumerate(dims)
            ]
            result = precondition_stack(G, selector, inverse_factors)
            for position, row in zip(positions, result.unbind(0), strict=True):
                preconditioned[position] = row
        return tuple(preconditioned)

    def _unpacked_stack(self, matrices: list[Tensor], dim: int) -> Tensor:
        """``(N, d, d)`` stack of state matrices stored packed or not."""
        stack = torch.stack(matrices)
        return unpack_stack(stack, dim) if self._preconditioner_config.use_symmetric_packing else stack

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
                f"{type(config).__name__} needs DASH's per-block solver binding, which was "
                "removed (DASH disabled) after this optimizer was created: enable DASH again."
            )

        refs: list[_FactorRef] = []
        keys: list[InverseRootKey] = []
        for block_index, kronecker_factors in enumerate(blocks):
            for factor_index, (factor_matrix, root) in enumerate(
                zip(kronecker_factors.factor_matrices, kronecker_factors.roots, strict=True)
            ):
                refs.append((block_index, factor_index))
                keys.append(InverseRootKey(self._factor_dim(factor_matrix), float(root), factor_matrix.dtype))

        replayed: set[int] = set()
        solved: list[_SolvedChunk] = []
        input_checks: list[Tensor] = []
        for key, group in group_indices(keys).items():
            if not is_batchable(config, key.root):
                replayed.update(refs[p][0] for p in group)
                continue
            for positions in chunked(group, key.dim**2 * key.dtype.itemsize, self.max_stack_bytes):
                chunk_refs = [refs[p] for p in positions]
                stack = self._bias_corrected_stack(chunk_refs)
                input_checks.append(torch.isfinite(stack).all().unsqueeze(0))
                try:
                    result = solve_stack(config, stack, key.root, self._epsilon)
                except Exception as exception:  # noqa: BLE001 - like upstream, any solver failure falls back
                    logger.warning(
                        f"Batched {type(config).__name__} failed on {len(chunk_refs)} factor matrices "
                        f"of dim {key.dim} ({exception!r}); using the per-block path for their blocks."
                    )
                    replayed.update(block_index for block_index, _ in chunk_refs)
                    continue
                solved.append(_SolvedChunk(key, chunk_refs, self._to_inverse_factor_format(result.inverse_root), result))

        # One device-to-host read for the whole param group.
        flags = (
            torch.cat([*input_checks, *(accepted(config, chunk.result) for chunk in solved)]).tolist()
            if input_checks
            else []
        )
        if not all(flags[: len(input_checks)]):
            self._replay(range(len(blocks)))
            return
        offset = len(input_checks)
        for chunk in solved:
            rejected = [j for j, ok in enumerate(flags[offset : offset + len(chunk.refs)]) if not ok]
            offset += len(chunk.refs)
            if rejected:
                replayed.update(chunk.refs[j][0] for j in self._fallback(config, chunk, rejected))
            kept = [j for j, (block_index, _) in enumerate(chunk.refs) if block_index not in replayed]
            write_back(chunk.roots[kept], [self._inverse_factor(chunk.refs[j]) for j in kept], range(len(kept)))

        for block_index, kronecker_factors in enumerate(blocks):
            if block_index not in replayed:
                kronecker_factors._failed_amortized_computation_counter = 0
        self.fallback_counts["replayed"] += len(replayed)
        self._replay(replayed)

    def _fallback(self, config: object, chunk: _SolvedChunk, rejected: list[int]) -> list[int]:
        """Recomputes a chunk's rejected roots by eigh (DASH configs with ``fallback_to_eigh``).

        The recomputed roots replace the rejected ones in ``chunk.roots``.

        Returns:
            still_rejected (list[int]): Indices into the chunk that have no acceptable root.
        """
        residuals = chunk.result.residual[rejected].tolist()
        described = ", ".join(
            f"{chunk.refs[j]} (residual {residual:.2e})" for j, residual in zip(rejected, residuals, strict=True)
        )
        if not (isinstance(config, DashRootInvConfig) and config.fallback_to_eigh):
            logger.warning(f"{type(config).__name__} rejected the roots of (block, factor) {described}.")
            return rejected
        logger.warning(
            f"{type(config).__name__} rejected the roots of (block, factor) {described}; recomputing by eigh."
        )
        self.fallback_counts["eigh"] += len(rejected)
        stack = self._bias_corrected_stack([chunk.refs[j] for j in rejected])
        try:
            fallback = eigh_stack(config, stack, chunk.key.root, self._epsilon)
        except Exception as exception:  # noqa: BLE001 - the rejected roots stay rejected
            logger.warning(f"The eigh fallback failed too ({exception!r}).")
            return rejected
        chunk.roots[rejected] = self._to_inverse_factor_format(fallback.inverse_root)
        finite = fallback.is_finite.tolist()
        return [j for j, ok in zip(rejected, finite, strict=True) if not ok]

    def _factor_dim(self, factor_matrix: Tensor) -> int:
        """``d`` of a factor matrix as stored (packed or not)."""
        if self._preconditioner_config.use_symmetric_packing:
            return unpacked_dim(factor_matrix)
        return factor_matrix.shape[-1]

    def _inverse_factor(self, ref: _FactorRef) -> Tensor:
        block_index, factor_index = ref
        return self._masked_kronecker_factors_unwrapped[block_index].inv_factor_matrices[factor_index]

    def _bias_corrected_stack(self, refs: list[_FactorRef]) -> Tensor:
        """``(N, d, d)`` bias-corrected (and trace-scaled) factor matrices of ``refs`` (one ``d``)."""
        blocks = self._masked_kronecker_factors_unwrapped
        return bias_corrected_factor_stack(
            blocks[refs[0][0]],
            [blocks[block_index].factor_matrices[factor_index] for block_index, factor_index in refs],
            self._bias_correction2,
        )

    def _to_inverse_factor_format(self, roots: Tensor) -> Tensor:
        """Casts ``(N, d, d)`` roots to the inverse factors' dtype and packs them if packing is on."""
        roots = roots.to(dtype=self._preconditioner_config.inv_factor_matrix_dtype)
        return pack_stack(roots) if self._preconditioner_config.use_symmetric_packing else roots
