"""What every solver returns: the roots of a stack and their per-block diagnostics.

The residual of an inverse root ``X ~ B^{-1/p}``, ``p = n / q``, is measured in a symmetric
congruence form ``S - I``, ``S`` with the eigenvalues of ``(X^n B^q)^k = (X^p B)^{k q}`` when ``X``
commutes with ``B``, and ``I`` at convergence::

    n even:  ||S - I||_F / sqrt(d),   S = W^T B^q W,   W = X^{n/2}   (k = 1)
    n odd:   ||S - I||_F / sqrt(d),   S = V^T V,       V = B^q X^n   (k = 2)

For ``X = B^{-1/p} (I + G)`` with ``G`` commuting with ``B`` they are about ``n ||G||_F /
sqrt(d)`` and ``2 n ||G||_F / sqrt(d)`` (``n``, resp. ``2 n``, times the RMS relative error of
the eigenvalues of ``X``), and never below ``||G||_F / sqrt(d)``. The congruence keeps the
residual of an ill-conditioned ``B`` near the size of the root's error, where ``||X^n B^q - I||``
multiplies errors that do not commute with ``B`` by its condition number.

The residual is an average over the ``d`` directions, so one over-inverted direction (an
eigenvalue of ``X^p B`` above 1, which a spectral bound below ``lambda_max`` produces) barely
moves it. The *overshoot* looks for that direction: ``OVERSHOOT_POWER_STEPS`` power steps on
``E = S - I`` from ``OVERSHOOT_VECTORS`` start vectors of their own estimate its eigenvalue of
largest magnitude, ``e`` (``E`` is symmetric up to rounding, and a Rayleigh quotient sees only its
symmetric part), and ``overshoot = (1 + e)^{1/(k q)} - 1`` says what it means for ``X^p B`` (the
eigenvalues of ``S`` are those of ``(X^p B)^{k q}``): its largest eigenvalue minus 1, negative where
the largest error is an under-inverted direction. Limits: the extreme eigenvalues of ``E``'s fp32
rounding are about 8 times the residual on real Shampoo factors (1.5e-2 at a residual of 2e-3;
about 5e-2 at ``rel_epsilon = 1e-6``), and an over-inversion smaller than an under-inverted
direction of the same block is not the eigenvalue found.
"""

import math
from typing import NamedTuple

import torch
from torch import Tensor

from distributed_shampoo_dash.solvers.checks import rational_root
from distributed_shampoo_dash.solvers.linalg import (
    add_to_diagonal_,
    matrix_power,
    matrix_power_products,
    unit_divisor,
)
from distributed_shampoo_dash.solvers.precision import MatmulPrecision, batched_matmul, prepared
from distributed_shampoo_dash.solvers.scaling import normalized_rayleigh_lambda_max

#: Power steps and start vectors of the overshoot estimate (each step one ``(N, d, d) @ (N, d, m)``
#: product, ``m / d`` of a ``d x d`` product).
OVERSHOOT_POWER_STEPS = 8
OVERSHOOT_VECTORS = 4
#: Seed of the overshoot's start vectors, other than the spectral bound's.
_OVERSHOOT_SEED = 0x0FF5E7


class InverseRootResult(NamedTuple):
    """Inverse roots of a stack and their per-block diagnostics.

    Attributes:
        inverse_root (Tensor): ``(N, d, d)`` approximation of ``(A + r I)^{-1/p}`` per block, in
            the dtype of the input stack.
        residual (Tensor): ``(N,)`` float32 relative residual of each block; its definition is
            given by each solver (the congruence residual of the module docstring for the
            iterative ones).
        is_finite (Tensor): ``(N,)`` bool, True where the root and its residual are finite.
        overshoot (Tensor): ``(N,)`` float32 estimate of ``lambda_max(X_s^p B) - 1`` (module
            docstring) for the iterative solvers; 0 for eigh, whose root is exact to rounding.
        regularization (Tensor): ``(N,)`` ``r``, the value added to each block's diagonal
            (``epsilon``, or more with a relative ridge or eigh's shift of a negative spectrum),
            in the solver's working dtype (float64 for float64 work, float32 otherwise).
    """

    inverse_root: Tensor
    residual: Tensor
    is_finite: Tensor
    overshoot: Tensor
    regularization: Tensor


class RootResidual(NamedTuple):
    """The residual and the overshoot of an inverse root (module docstring).

    Attributes:
        residual (Tensor): ``(N,)`` float32 RMS congruence residual.
        overshoot (Tensor): ``(N,)`` float32 estimate of ``lambda_max(X^p B) - 1``.
    """

    residual: Tensor
    overshoot: Tensor


def residual_products(root: float) -> int:
    """``d x d`` products :func:`inverse_root_residual` runs for ``root = n / q``."""
    fraction = rational_root(root)
    n, q = fraction.numerator, fraction.denominator
    if n % 2 == 0:
        return matrix_power_products(n // 2) + matrix_power_products(q) + 2
    return matrix_power_products(n) + matrix_power_products(q) + 2


def inverse_root_residual(
    B: Tensor, X: Tensor, root: float, precision: MatmulPrecision = MatmulPrecision.FP32
) -> RootResidual:
    """Relative residual and overshoot of ``X ~ B^{-1/p}``, ``p = n / q``, in the congruence form
    of the module docstring.

    Args:
        B (Tensor): ``(N, d, d)`` symmetric matrices whose inverse root was taken.
        X (Tensor): ``(N, d, d)`` computed inverse roots.
        root (float): ``p``; fractional roots must be ``n / q`` with a small ``q``.
        precision (MatmulPrecision): Precision of the :func:`residual_products` products.

    Returns:
        residual (RootResidual): ``(N,)`` float32 residual and overshoot per block.
    """
    fraction = rational_root(root)
    n, q = fraction.numerator, fraction.denominator
    Bq = matrix_power(B, q, precision)
    if n % 2 == 0:
        W = prepared(matrix_power(X, n // 2, precision), precision)  # split once for both
        gram = batched_matmul(W.mT, batched_matmul(Bq, W, precision), precision)
    else:
        V = batched_matmul(Bq, matrix_power(X, n, precision), precision)
        gram = batched_matmul(V.mT, V, precision)
    error = add_to_diagonal_(gram, -1.0)
    # Both norms of E / max_ij |E_ij| (in place: E is a temporary), safe from over- and underflow.
    divisor = unit_divisor(error)
    error.div_(divisor[:, None, None])
    residual = torch.linalg.vector_norm(error, dim=(-2, -1)) * divisor / math.sqrt(B.shape[-1])
    extreme = divisor * normalized_rayleigh_lambda_max(
        error, OVERSHOOT_POWER_STEPS, OVERSHOOT_VECTORS, seed=_OVERSHOOT_SEED
    )
    congruence_power = q if n % 2 == 0 else 2 * q
    overshoot = (1.0 + extreme).clamp_min(0.0) ** (1.0 / congruence_power) - 1.0
    return RootResidual(residual.float(), overshoot.float())
