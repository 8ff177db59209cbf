"""``RootInvShampooPreconditionerList`` whose every stage runs on stacks of same-shape blocks.

Upstream loops over blocks, and over the factors of each block, in all three stages of a step.
This list does each stage per *group* instead, building the stacks on the fly from the state
tensors and writing results back into them, so the optimizer state, its ``state_dict`` and
checkpoints are exactly upstream's and nothing can go stale:

* factor update: blocks grouped by (shape, dtype, preconditioned dims); one batched product per
  factor dim for the mode Gram matrices, one pack, one foreach EMA (a subclass that overrides
  upstream's ``_compute_outer_product_list`` hook, such as KL-Shampoo's list, keeps upstream's
  per-block factor update, which calls the hook);
* preconditioning: the same groups; the group's inverse factors stacked (and unpacked in one
  indexing op), one batched product per preconditioned dim;
* amortized computation: bias-corrected (and trace-scaled) factor matrices grouped by
  ``(dim, root, dtype)``, one solver call per chunk of a group (:mod:`.policy`).

Memory. A group is processed in chunks, one after the other, each within a budget for the
memory one batched operation allocates: its stacks, the solver's work space and its results
(:meth:`~BatchedRootInvShampooPreconditionerList.stack_budget`). By default the budget is half the
bytes of the param group's gradients (at least 4 MiB): upstream's own step allocates several
gradient-sized lists (preconditioned gradients, grafting and momentum temporaries), so stacking
adds a bounded fraction to what the step already needs, whatever the number of blocks. On a CUDA
device it is at least 1/32 of the device's memory: each chunk launches the same few hundred
kernels whatever its size, so larger chunks launch fewer (the 264 factor matrices of 1024 of a
Llama-shaped model's root step take five chunks on an 80 GB device instead of 53).

Amortized computation, per param group:

1. *check*: every bias-corrected factor matrix is finite (a device flag from one read of the stored
   factor matrices, :func:`bias_corrected_factors_finite`, which may only err towards "not
   finite");
2. *solve*: each chunk's bias-corrected stack is built, solved and its accepted roots are written
   into the inverse factors, selected on the device (``torch.where``), and only if every factor
   matrix was finite;
3. *read*: the input flag and all acceptance flags are read in one host synchronisation;
4. *apply*: rejected roots follow the policy of :mod:`.policy` (eigh fallback for DASH configs);
   blocks without a usable root, and all blocks if a factor matrix was non-finite, are *replayed*
   through upstream's own per-block code, which raises upstream's ``PreconditionerValueError``,
   keeps previous inverse factors and counts failed amortized computations exactly as upstream.

So nothing is written that upstream would not write, and every block's outcome is upstream's.
Configs that are not batched, and a ``matrix_inverse_root`` replaced by anything but upstream's
or DASH's function (e.g. a test mock), use upstream's per-block path unchanged. Fallbacks and
replays are logged and counted in :attr:`~BatchedRootInvShampooPreconditionerList.fallback_counts`.
"""

import contextlib
import logging
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from distributed_shampoo.preconditioner import shampoo_preconditioner_list
from distributed_shampoo.preconditioner.shampoo_preconditioner_list import (
    RootInvKLShampooPreconditionerList,
    RootInvShampooKroneckerFactorsUnwrapped,
    RootInvShampooPreconditionerList,
)
from torch import Tensor

from distributed_shampoo_dash.integration.configs import step_products_in_tf32
from distributed_shampoo_dash.integration.per_block import (
    dash_matrix_inverse_root,
    upstream_matrix_inverse_root,
)
from distributed_shampoo_dash.integration.policy import RootPolicy, SolvedStack, describe_rejections
from distributed_shampoo_dash.solvers.linalg import stable_power
from distributed_shampoo_dash.solvers.precision import fp32_matmul_precision
from distributed_shampoo_dash.stacking import (
    chunked,
    group_indices,
    mode_gram_matrices,
    pack_stack,
    precondition_stack,
    stack_group,
    unpack_stack,
    unpacked_dim,
)

logger: logging.Logger = logging.getLogger(__name__)

#: Rejected roots named in one warning; the rest are counted.
_LOGGED_REJECTIONS = 8


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
        stack = (
            stack
            * stable_power(safe_traces, -kronecker_factors.trace_scaling_exponent)[:, None, None]
        )
    return stack


def cuda_memory_bytes(device: torch.device) -> int | None:
    """Total memory of ``device`` if it is a CUDA device (torch's cached device properties: no
    device call), else None."""
    if device.type != "cuda":
        return None
    return int(torch.cuda.get_device_properties(device).total_memory)


def bias_corrected_factors_finite(
    kronecker_factors: RootInvShampooKroneckerFactorsUnwrapped,
    factor_matrices: Sequence[Tensor],
    bias_correction2: Tensor,
) -> Tensor:
    """Device flag: True only if every matrix :func:`bias_corrected_factor_stack` would build from
    ``factor_matrices`` is finite, without building it.

    Each matrix is read once for ``S = sum |F_ij|`` (``torch._foreach_norm``, order 1), which is
    NaN or infinite if an entry is and bounds every entry: rounding is monotone, so ``S / (1 -
    beta2^t)`` finite means every bias-corrected entry is, and with trace scaling, whose factor
    ``max(trace, epsilon)^{-e}`` is at most ``epsilon^{-e}``, ``2 epsilon^{-e} S / (1 - beta2^t)``
    finite means every scaled entry is. The flag is False for a finite matrix only when ``S``
    itself nears the dtype's range (entries within a factor ``d^2`` of it, or of it times
    ``epsilon^e`` with trace scaling), where the per-block replay then runs upstream's own check.

    Args:
        kronecker_factors (RootInvShampooKroneckerFactorsUnwrapped): Supplies the trace scaling
            settings (the same for every block of a list).
        factor_matrices (Sequence[Tensor]): At least one factor matrix, as stored (packed or not),
            all of one dtype (the flag is computed in it, as the stack would be).
        bias_correction2 (Tensor): ``1 - beta2^t`` (or 1).

    Returns:
        finite (Tensor): ``()`` bool.
    """
    bounds = torch.stack(torch._foreach_norm(list(factor_matrices), 1)) / bias_correction2
    if kronecker_factors.use_trace_scaling:
        # On the host: a Python scalar, no copy to the device in the step.
        epsilon = torch.tensor(kronecker_factors.epsilon, dtype=torch.float64)
        largest_scale = float(stable_power(epsilon, -kronecker_factors.trace_scaling_exponent))
        bounds = bounds * (2.0 * largest_scale)
    return torch.isfinite(bounds).all()


@dataclass(frozen=True)
class InverseRootKey:
    """What makes two factor matrices share one batched inverse-root call.

    Attributes:
        dim (int): ``d`` of the ``d x d`` matrix.
        root (float): The inverse root ``p``.
        dtype (torch.dtype): The factor matrix dtype.
    """

    dim: int
    root: float
    dtype: torch.dtype


#: A factor matrix of a param group: (masked block index, factor index within the block).
FactorRef = tuple[int, int]


@dataclass(frozen=True)
class RootChunk:
    """Factor matrices solved by one batched call.

    Attributes:
        key (InverseRootKey): Their dimension, root and dtype.
        policy (RootPolicy): What computes, accepts and recomputes their roots.
        refs (list[FactorRef]): The factor matrices, in stack order.
    """

    key: InverseRootKey
    policy: RootPolicy
    refs: list[FactorRef]


class BatchedRootInvShampooPreconditionerList(RootInvShampooPreconditionerList):
    """Root-inverse Shampoo preconditioners whose factor updates, preconditioning and amortized
    computation are batched per group of same-shape blocks.

    Attributes:
        max_stack_bytes (int | None): Memory, in bytes, one batched operation may allocate for its
            stacks, work space and results, from the config's
            :attr:`~.BatchedSettings.max_stack_bytes` (an upstream config has none); ``None``
            sizes it from the gradients (:meth:`stack_budget`).
        tf32_step_products (bool): Gram and preconditioning products on TF32 tensor cores, as
            :func:`~.configs.step_products_in_tf32` says for the config (an upstream config has no
            such setting: torch's switch decides, as upstream).
        fallback_counts (Counter[str]): Roots recomputed by ``"eigh"`` and blocks ``"replayed"``
            through upstream's per-block path since construction.
    """

    #: Automatic budget: this fraction of the param group's gradient bytes, but at least
    #: :attr:`min_stack_bytes`, and on a CUDA device at least :meth:`device_stack_budget`.
    stack_budget_fraction: float = 0.5
    min_stack_bytes: int = 4 * 2**20
    device_memory_fraction: float = 1 / 32

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.max_stack_bytes: int | None = getattr(
            self._preconditioner_config, "max_stack_bytes", None
        )
        self.tf32_step_products: bool = step_products_in_tf32(self._preconditioner_config)
        self.fallback_counts: Counter[str] = Counter()
        self._root_policies: dict[InverseRootKey, RootPolicy | None] = {}
        self._grouping: tuple[object, list[list[int]]] | None = None

    # Factor update and preconditioning.

    @classmethod
    def device_stack_budget(cls, device_memory_bytes: int) -> int:
        """The least automatic budget on a CUDA device of ``device_memory_bytes``:
        :attr:`device_memory_fraction` of it."""
        return int(cls.device_memory_fraction * device_memory_bytes)

    def stack_budget(self, masked_grad_list: tuple[Tensor, ...]) -> int:
        """Bytes one batched operation may allocate: :attr:`max_stack_bytes` if set, else
        ``max(min_stack_bytes, stack_budget_fraction * sum of the gradients' bytes)``, and on a
        CUDA device at least :meth:`device_stack_budget` of its memory."""
        if self.max_stack_bytes is not None:
            return self.max_stack_bytes
        gradient_bytes = sum(grad.numel() * grad.element_size() for grad in masked_grad_list)
        budget = max(self.min_stack_bytes, int(self.stack_budget_fraction * gradient_bytes))
        memory = cuda_memory_bytes(masked_grad_list[0].device) if masked_grad_list else None
        return budget if memory is None else max(budget, self.device_stack_budget(memory))

    def _block_groups(self, masked_grad_list: tuple[Tensor, ...]) -> list[list[int]]:
        """Chunks of masked block positions sharing shape, dtype and preconditioned dims.

        Computed once for the gradients' layout and budget (both stages of every step share it)
        and again only when they change (e.g. a masked list compressed). A block's share of a
        chunk's memory: the stacked gradient, the results of two contractions and its inverse
        factors (stacked packed, and unpacked) or its Gram matrices.
        """
        keys = [
            (tuple(grad.shape), grad.dtype, tuple(selector))
            for grad, selector in zip(
                masked_grad_list, self._masked_preconditioned_dims_selector_list, strict=True
            )
        ]
        budget = self.stack_budget(masked_grad_list)
        layout = (tuple(keys), budget)
        if self._grouping is not None and self._grouping[0] == layout:
            return self._grouping[1]
        groups: list[list[int]] = []
        for positions in group_indices(keys).values():
            grad = masked_grad_list[positions[0]]
            factors = self._masked_kronecker_factors_unwrapped[positions[0]]
            factor_bytes = sum(
                self._factor_dim(inverse) ** 2 * inverse.element_size()
                for inverse in factors.inv_factor_matrices
            )
            item_bytes = 3 * grad.numel() * grad.element_size() + 3 * factor_bytes // 2
            groups.extend(chunked(positions, item_bytes, budget))
        self._grouping = (layout, groups)
        return groups

    def _update_factor_matrices(self, masked_grad_list: tuple[Tensor, ...]) -> None:
        """Upstream's factor EMA ``F <- beta2 F + w pack(G_(k) G_(k)^T)``, a group at a time."""
        if (
            type(self)._compute_outer_product_list
            is not RootInvShampooPreconditionerList._compute_outer_product_list
        ):
            super()._update_factor_matrices(masked_grad_list)
            return
        blocks = self._masked_kronecker_factors_unwrapped
        for positions in self._block_groups(masked_grad_list):
            first = blocks[positions[0]]
            if not first.factor_matrices:
                continue
            G = stack_group(masked_grad_list, positions)
            selector = self._masked_preconditioned_dims_selector_list[positions[0]]
            for factor_index, dim in enumerate(
                k for k, selected in enumerate(selector) if selected
            ):
                with self._step_products():
                    gram = mode_gram_matrices(G, dim)
                packed = pack_stack(gram) if first.use_symmetric_packing else gram
                del gram
                factor_matrices = [blocks[i].factor_matrices[factor_index] for i in positions]
                if self._beta2 != 1.0:
                    torch._foreach_mul_(factor_matrices, self._beta2)
                torch._foreach_add_(
                    factor_matrices, list(packed.unbind(0)), alpha=self._weighting_factor
                )

    def precondition(self, masked_grad_list: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
        """Upstream's ``precondition``: each block's gradient times its inverse factors, per
        group.
        """
        blocks = self._masked_kronecker_factors_unwrapped
        preconditioned: list[Tensor] = list(masked_grad_list)
        for positions in self._block_groups(masked_grad_list):
            G = stack_group(masked_grad_list, positions)
            selector = self._masked_preconditioned_dims_selector_list[positions[0]]
            dims = [G.shape[k + 1] for k, selected in enumerate(selector) if selected]
            inverse_factors = [
                self._unpacked_stack(
                    [blocks[i].inv_factor_matrices[factor_index] for i in positions], dim
                )
                for factor_index, dim in enumerate(dims)
            ]
            with self._step_products():
                result = precondition_stack(G, selector, inverse_factors)
            for position, row in zip(positions, result.unbind(0), strict=True):
                preconditioned[position] = row
        return tuple(preconditioned)

    def _step_products(self) -> contextlib.AbstractContextManager[None]:
        """Where the Gram and preconditioning products run: TF32 if
        :attr:`tf32_step_products`, else as torch's switch says."""
        if self.tf32_step_products:
            return fp32_matmul_precision("tf32")
        return contextlib.nullcontext()

    def _unpacked_stack(self, matrices: list[Tensor], dim: int) -> Tensor:
        """``(N, d, d)`` stack of state matrices stored packed or not."""
        stack = torch.stack(matrices)
        return (
            unpack_stack(stack, dim) if self._preconditioner_config.use_symmetric_packing else stack
        )

    # Amortized computation.

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
            self._batched_amortized_computation(self.stack_budget(masked_grad_list))

    @torch.compiler.disable
    def _batched_amortized_computation(self, budget: int) -> None:
        """Check, solve, read, apply (see the module docstring)."""
        blocks = self._masked_kronecker_factors_unwrapped
        if shampoo_preconditioner_list.matrix_inverse_root not in (
            upstream_matrix_inverse_root,
            dash_matrix_inverse_root,
        ):
            self._replay(set(range(len(blocks))))
            return
        chunks, replayed = self._root_chunks(budget)
        inputs_finite = self._inputs_finite(chunks)
        solved: list[tuple[RootChunk, SolvedStack]] = []
        for chunk in chunks:
            try:
                solved.append((chunk, self._solve_and_write(chunk, inputs_finite)))
            except Exception as exception:  # noqa: BLE001 - like upstream, any solver failure falls back
                logger.warning(
                    f"Batched {type(self._config).__name__} failed on {len(chunk.refs)} factor "
                    f"matrices of dim {chunk.key.dim} ({exception!r}); using the per-block path "
                    "for their blocks."
                )
                replayed.update(block for block, _ in chunk.refs)

        # The one host read of the param group.
        flags = torch.cat([inputs_finite.reshape(1), *(s.accepted for _, s in solved)]).tolist()
        if not flags[0]:
            self._replay(set(range(len(blocks))))
            return
        offset = 1
        for chunk, solved_stack in solved:
            accepted = flags[offset : offset + len(chunk.refs)]
            offset += len(chunk.refs)
            rejected = [j for j, ok in enumerate(accepted) if not ok]
            if rejected:
                unresolved = self._apply_fallback(chunk, solved_stack, rejected)
                replayed.update(chunk.refs[j][0] for j in unresolved)

        for block_index, kronecker_factors in enumerate(blocks):
            if block_index not in replayed:
                kronecker_factors._failed_amortized_computation_counter = 0
        self._replay(replayed)

    @property
    def _config(self) -> object:
        return self._preconditioner_config.amortized_computation_config

    def _root_chunks(self, budget: int) -> tuple[list[RootChunk], set[int]]:
        """The chunks of batched factor matrices, and the blocks left to the per-block path.

        A factor matrix's share of a chunk's memory: its bias-corrected matrix, the solver's work
        space and the selection of the roots written back, in stacks of ``d x d``.
        """
        refs: list[FactorRef] = []
        keys: list[InverseRootKey] = []
        for block_index, kronecker_factors in enumerate(self._masked_kronecker_factors_unwrapped):
            for factor_index, (factor_matrix, root) in enumerate(
                zip(kronecker_factors.factor_matrices, kronecker_factors.roots, strict=True)
            ):
                refs.append((block_index, factor_index))
                keys.append(
                    InverseRootKey(
                        self._factor_dim(factor_matrix), float(root), factor_matrix.dtype
                    )
                )
        chunks: list[RootChunk] = []
        per_block: set[int] = set()
        for key, group in group_indices(keys).items():
            policy = self._root_policy(key)
            if policy is None:
                per_block.update(refs[p][0] for p in group)
                continue
            item_bytes = (policy.solver.workspace + 2) * key.dim**2 * key.dtype.itemsize
            for positions in chunked(group, item_bytes, budget):
                chunks.append(RootChunk(key, policy, [refs[p] for p in positions]))
        return chunks, per_block

    def _root_policy(self, key: InverseRootKey) -> RootPolicy | None:
        """The policy for ``key``'s factor matrices, built once per key (``None``: per block)."""
        if key not in self._root_policies:
            self._root_policies[key] = RootPolicy.of(
                self._config,  # type: ignore[arg-type]
                key.root,
                epsilon=self._epsilon,
                factor_dtype=key.dtype,
                dtype=self._preconditioner_config.inv_factor_matrix_dtype,
            )
        return self._root_policies[key]

    def _inputs_finite(self, chunks: list[RootChunk]) -> Tensor:
        """Device flag: every bias-corrected factor matrix of ``chunks`` is finite
        (:func:`bias_corrected_factors_finite`, per chunk: in the chunk's dtype)."""
        blocks = self._masked_kronecker_factors_unwrapped
        finite: Tensor | None = None
        for chunk in chunks:
            chunk_finite = bias_corrected_factors_finite(
                blocks[chunk.refs[0][0]], self._factor_matrices(chunk.refs), self._bias_correction2
            )
            finite = chunk_finite if finite is None else finite & chunk_finite
        return torch.ones((), dtype=torch.bool) if finite is None else finite

    def _solve_and_write(self, chunk: RootChunk, inputs_finite: Tensor) -> SolvedStack:
        """Solves a chunk and writes its accepted roots if every input was finite (no host sync)."""
        solved = chunk.policy.solve(self._bias_corrected_stack(chunk.refs))
        self._write_roots(chunk.refs, solved.roots, solved.accepted & inputs_finite)
        return solved

    def _apply_fallback(
        self, chunk: RootChunk, solved: SolvedStack, rejected: list[int]
    ) -> list[int]:
        """Policy steps 3-4 for a chunk's rejected roots; returns those still without a root."""
        residuals = solved.result.residual[rejected].tolist()
        described = ", ".join(
            f"{chunk.refs[j]} (residual {residual:.2e})"
            for j, residual in zip(rejected[:_LOGGED_REJECTIONS], residuals, strict=False)
        )
        if len(rejected) > _LOGGED_REJECTIONS:
            described += f" and {len(rejected) - _LOGGED_REJECTIONS} more"
        refs = [chunk.refs[j] for j in rejected]
        fallback = chunk.policy.recompute(self._bias_corrected_stack(refs))
        logger.warning(
            describe_rejections(
                chunk.policy.config, f"(block, factor) {described}", fallback is not None
            )
        )
        if fallback is None:
            return rejected
        self.fallback_counts["eigh"] += len(rejected)
        self._write_roots(refs, fallback.roots, fallback.accepted)
        usable = fallback.accepted.tolist()
        return [j for j, ok in zip(rejected, usable, strict=True) if not ok]

    def _write_roots(self, refs: list[FactorRef], roots: Tensor, mask: Tensor) -> None:
        """Copies ``roots[j]`` into the inverse factor of ``refs[j]`` where ``mask[j]`` (on
        device).
        """
        targets = [self._inverse_factor(ref) for ref in refs]
        new = pack_stack(roots) if self._preconditioner_config.use_symmetric_packing else roots
        selected = torch.where(mask.reshape(-1, *[1] * (new.ndim - 1)), new, torch.stack(targets))
        torch._foreach_copy_(targets, list(selected.unbind(0)))

    def _replay(self, block_indices: set[int]) -> None:
        """Runs upstream's per-block amortized computation for the given masked blocks, in order."""
        if block_indices:
            self.fallback_counts["replayed"] += len(block_indices)
        blocks = self._masked_kronecker_factors_unwrapped
        for block_index in sorted(block_indices):
            blocks[block_index].amortized_computation(bias_correction2=self._bias_correction2)

    def _factor_dim(self, factor_matrix: Tensor) -> int:
        """``d`` of a factor matrix as stored (packed or not)."""
        if self._preconditioner_config.use_symmetric_packing:
            return unpacked_dim(factor_matrix)
        return factor_matrix.shape[-1]

    def _inverse_factor(self, ref: FactorRef) -> Tensor:
        block_index, factor_index = ref
        return self._masked_kronecker_factors_unwrapped[block_index].inv_factor_matrices[
            factor_index
        ]

    def _bias_corrected_stack(self, refs: list[FactorRef]) -> Tensor:
        """``(N, d, d)`` bias-corrected (and trace-scaled) factor matrices of ``refs`` (one
        ``d``).
        """
        return bias_corrected_factor_stack(
            self._masked_kronecker_factors_unwrapped[refs[0][0]],
            self._factor_matrices(refs),
            self._bias_correction2,
        )

    def _factor_matrices(self, refs: list[FactorRef]) -> list[Tensor]:
        """The stored factor matrices of ``refs``, in order."""
        blocks = self._masked_kronecker_factors_unwrapped
        return [blocks[block].factor_matrices[factor] for block, factor in refs]


class BatchedRootInvKLShampooPreconditionerList(
    BatchedRootInvShampooPreconditionerList, RootInvKLShampooPreconditionerList
):
    """KL-Shampoo's root-inverse list with batched roots and preconditioning.

    The factor update stays upstream's per-block loop through KL-Shampoo's
    ``_compute_outer_product_list`` (its outer products use the preconditioned gradient).
    """
