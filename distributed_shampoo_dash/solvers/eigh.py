"""Inverse roots by batched symmetric eigendecomposition, with upstream ``EigenConfig`` semantics.

For each block, with ``A_e = A + epsilon I`` (only when ``perturb_before_computation``):

    A_e = Q diag(L) Q^T                               (torch.linalg.eigh on the whole stack)
    L  <- L - lambda_min + epsilon    if lambda_min < epsilon      (perturb_before_computation)
    L  <- L - min(lambda_min, 0) + epsilon                        (otherwise)
    X   = Q diag(L^{-1/p}) Q^T

which is exactly what ``distributed_shampoo``'s ``matrix_inverse_root`` does with ``EigenConfig``
and a ``PerturbationConfig`` one block at a time, with the ``lambda_min`` test evaluated per block
on the device (``torch.where``) instead of on the host. Any real root ``p > 0`` is allowed. The
result's ``regularization`` is what was added to each block's diagonal in all: ``epsilon`` (when
``perturb_before_computation``) plus the shift of its eigenvalues.
"""

import torch
from torch import Tensor

from distributed_shampoo_dash.solvers.checks import (
    as_stack,
    check_bool,
    check_positive_root,
    check_real,
)
from distributed_shampoo_dash.solvers.linalg import (
    add_to_diagonal,
    finite_blocks,
    frobenius_norm,
    stable_power,
)
from distributed_shampoo_dash.solvers.precision import MatmulPrecision, ProductCounts
from distributed_shampoo_dash.solvers.result import InverseRootResult

#: ``d x d`` products of :func:`eigh_inverse_root` besides ``eigh``: the reconstruction
#: ``Q diag(L^{-1/p}) Q^T`` and the decomposition residual ``A_e Q``.
EIGH_PRODUCTS = 2


def eigh_products(root: float) -> ProductCounts:
    """``d x d`` products of :func:`eigh_inverse_root` per block (any root): :data:`EIGH_PRODUCTS`
    in fp32 (the decomposition itself is not a product)."""
    check_positive_root(root)
    return ProductCounts({MatmulPrecision.FP32: EIGH_PRODUCTS})


def eigh_inverse_root(
    A: Tensor,
    root: float,
    *,
    epsilon: float = 0.0,
    perturb_before_computation: bool = True,
) -> InverseRootResult:
    """Computes ``(A_i + epsilon I)^{-1/p}`` for every block by one batched ``eigh``.

    Args:
        A (Tensor): ``(N, d, d)`` (or ``(d, d)``) symmetric PSD stack. Half-precision stacks are
            decomposed in float32 (``eigh`` has no half-precision kernel), as upstream does.
        root (float): The root ``p > 0``.
        epsilon (float): Regularisation, applied as described in the module docstring.
            (Default: 0.0)
        perturb_before_computation (bool): Upstream's ``PerturbationConfig`` flag. (Default: True)

    Returns:
        result (InverseRootResult): Roots in ``A.dtype``. The residual is the eigendecomposition
        residual ``||A_e Q - Q diag(L)||_F / ||A_e||_F`` (0 for an all-zero block). A block with a
        non-finite entry has a NaN residual and ``is_finite`` False (its root is not to be used);
        the other blocks are unaffected.

    Raises:
        torch.linalg.LinAlgError: If ``eigh`` fails to converge on a finite block (the caller
            decides on a fallback).
    """
    return run_eigh(
        as_stack(A),
        check_positive_root(root),
        epsilon=check_real(epsilon, "epsilon"),
        perturb_before_computation=check_bool(
            perturb_before_computation, "perturb_before_computation"
        ),
    )


def run_eigh(
    stack: Tensor, root: float, *, epsilon: float, perturb_before_computation: bool
) -> InverseRootResult:
    """:func:`eigh_inverse_root` of an ``(N, d, d)`` stack for checked arguments."""
    working = stack.to(torch.promote_types(stack.dtype, torch.float32))
    finite = finite_blocks(working)
    # A non-finite block would fail the whole batched call: its non-finite entries are zeroed
    # for the decomposition and its result is marked unusable.
    if perturb_before_computation:
        decomposed = add_to_diagonal(working, epsilon).nan_to_num_(nan=0.0, posinf=0.0, neginf=0.0)
    else:
        decomposed = working.nan_to_num(nan=0.0, posinf=0.0, neginf=0.0)
    eigenvalues, eigenvectors = torch.linalg.eigh(decomposed)

    lambda_min = eigenvalues.amin(dim=-1, keepdim=True)
    if perturb_before_computation:
        shifted = torch.where(
            lambda_min < epsilon, (eigenvalues - lambda_min) + epsilon, eigenvalues
        )
    else:
        shifted = (eigenvalues - lambda_min.clamp(max=0.0)) + epsilon
    inverse_root = (
        eigenvectors * stable_power(shifted, -1.0 / root).unsqueeze(-2)
    ) @ eigenvectors.mT

    decomposition_error = decomposed @ eigenvectors - eigenvectors * eigenvalues.unsqueeze(-2)
    norm = frobenius_norm(decomposed)
    residual = frobenius_norm(decomposition_error) / torch.where(norm > 0, norm, 1.0)
    residual = torch.where(finite, residual, torch.nan).float()
    shift = shifted[..., 0] - eigenvalues[..., 0]
    regularization = shift + epsilon if perturb_before_computation else shift
    inverse_root = inverse_root.to(stack.dtype)
    return InverseRootResult(
        inverse_root,
        residual,
        finite_blocks(inverse_root, residual.unsqueeze(-1)),
        torch.zeros_like(residual),
        regularization,
    )
