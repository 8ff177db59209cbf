"""Shampoo's per-block Kronecker algebra on a stack of same-shape blocks.

A *group* is ``N`` blocks of one shape ``(d_0, ..., d_{o-1})`` stacked as ``G`` of shape
``(N, d_0, ..., d_{o-1})``. Upstream computes, per block, the mode-``k`` Gram matrix
``tensordot(g, g, all dims but k)`` for each preconditioned dim ``k``, and preconditions by
contracting the block's leading dim with an inverse factor once per dim (rotating the dims that
are not preconditioned). Both are done here for all ``N`` blocks at once with batched products,
in the same order of operations.
"""

from collections.abc import Sequence

import torch
from torch import Tensor


def mode_gram_matrices(G: Tensor, dim: int) -> Tensor:
    """``(N, d_k, d_k)`` stack of ``G_(k) G_(k)^T``, ``G_(k)`` the mode-``k`` unfolding of each
    block.

    Args:
        G (Tensor): ``(N, d_0, ..., d_{o-1})`` stack of blocks, ``o >= 1``.
        dim (int): The block dim ``k`` (``0 <= k < o``).
    """
    unfolded = G.movedim(dim + 1, 1).reshape(G.shape[0], G.shape[dim + 1], -1)
    return torch.bmm(unfolded, unfolded.mT)


def precondition_stack(
    G: Tensor, preconditioned_dims_selector: Sequence[bool], inverse_factors: Sequence[Tensor]
) -> Tensor:
    """Applies each block's Kronecker preconditioner: ``G x_0 L_0^T x_1 L_1^T ...`` per block.

    Dim by dim, the leading block dim ``d`` is contracted with the first index of that dim's
    inverse factor (``(N, R, d) @ (N, d, d)`` after unfolding) and becomes the last dim, or is
    only rotated to the last position when the dim is not preconditioned; after ``o`` steps the
    dims are back in order. Products run in the inverse factors' dtype, the result has ``G``'s.

    Args:
        G (Tensor): ``(N, d_0, ..., d_{o-1})`` stack of gradient blocks.
        preconditioned_dims_selector (Sequence[bool]): ``o`` flags, True for preconditioned dims.
        inverse_factors (Sequence[Tensor]): One ``(N, d_k, d_k)`` stack per preconditioned dim,
            in order.

    Returns:
        preconditioned (Tensor): ``(N, d_0, ..., d_{o-1})``.
    """
    target_dtype = inverse_factors[0].dtype if inverse_factors else G.dtype
    factors = iter(inverse_factors)
    X = G
    for should_precondition in preconditioned_dims_selector:
        n, d, *rest = X.shape
        if should_precondition:
            X = torch.bmm(X.to(target_dtype).reshape(n, d, -1).mT, next(factors)).reshape(
                n, *rest, d
            )
        else:
            X = X.movedim(1, -1)
    return X.to(G.dtype)
