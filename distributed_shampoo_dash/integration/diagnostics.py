"""What DASH did in an optimizer: its preconditioner lists, their fallback counts, and every factor
matrix with its current inverse root, for measuring root accuracy from outside the optimizer."""

from collections import Counter
from collections.abc import Iterator
from typing import NamedTuple

from distributed_shampoo import DistributedShampoo
from distributed_shampoo.preconditioner.shampoo_preconditioner_list import (
    RootInvShampooPreconditionerList,
)
from distributed_shampoo.shampoo_types import SHAMPOO_PRECONDITIONER_LIST
from torch import Tensor

from distributed_shampoo_dash.integration.preconditioner_list import (
    BatchedRootInvShampooPreconditionerList,
    bias_corrected_factor_stack,
)


def preconditioner_lists(optimizer: DistributedShampoo) -> list[object]:
    """The Shampoo preconditioner list of each param group, in order (batched or upstream's)."""
    return [
        state_lists[SHAMPOO_PRECONDITIONER_LIST] for state_lists in optimizer._per_group_state_lists
    ]


def fallback_counts(optimizer: DistributedShampoo) -> Counter[str]:
    """Fallbacks of every batched list of ``optimizer`` since construction, summed over groups.

    Keys: ``"eigh"``, roots recomputed by eigh after their solver's root was rejected;
    ``"replayed"``, blocks computed by upstream's per-block code (configs DASH does not batch, a
    replaced ``matrix_inverse_root``, non-finite factor matrices, roots with no usable fallback).
    Empty for an optimizer created without DASH.
    """
    counts: Counter[str] = Counter()
    for preconditioner_list in preconditioner_lists(optimizer):
        if isinstance(preconditioner_list, BatchedRootInvShampooPreconditionerList):
            counts.update(preconditioner_list.fallback_counts)
    return counts


class InverseFactor(NamedTuple):
    """One factor matrix of a root-inverse Shampoo block and its current inverse root.

    Attributes:
        name (str): Upstream's index of the factor matrix (``"<block>.<factor>"``).
        matrix (Tensor): ``(d, d)`` the matrix whose inverse root is taken: bias-corrected,
            trace-scaled if configured, unpacked, in the factor matrix dtype.
        inverse_root (Tensor): ``(d, d)`` the stored inverse factor, unpacked.
        root (float): The inverse root ``p``.
        epsilon (float): Shampoo's ``epsilon`` of the block.
    """

    name: str
    matrix: Tensor
    inverse_root: Tensor
    root: float
    epsilon: float


def inverse_factors(optimizer: DistributedShampoo) -> Iterator[InverseFactor]:
    """Every factor matrix of the blocks that currently have a gradient, with its inverse root,
    for the root-inverse Shampoo lists of ``optimizer`` (with DASH or without)."""
    for preconditioner_list in preconditioner_lists(optimizer):
        if not isinstance(preconditioner_list, RootInvShampooPreconditionerList):
            continue
        for block in preconditioner_list._masked_kronecker_factors_unwrapped:
            for name, factor, inverse, root in zip(
                block.factor_matrix_indices,
                block.factor_matrices,
                block.inv_factor_matrices,
                block.roots,
                strict=True,
            ):
                bias_correction2 = preconditioner_list._bias_correction2
                matrix = bias_corrected_factor_stack(block, [factor], bias_correction2)[0]
                yield InverseFactor(
                    name, matrix, block._unpack_matrix(inverse), float(root), block.epsilon
                )
