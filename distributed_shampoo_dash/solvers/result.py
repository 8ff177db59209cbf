"""What every solver returns: the roots of a stack and their per-block diagnostics.

The residual of an inverse root ``X ~ B^{-1/p}`` is ``||X^n B^q - I||_F / sqrt(d)`` for
``p = n / q``. For ``X = B^{-1/p} (I + G)`` with ``G`` commuting with ``B`` it is about
``p ||G||_F / sqrt(d)``, ``p`` times the RMS relative error of the eigenvalues of ``X``. The
iterative solvers evaluate it on their *scaled* problem (spectrum of ``B`` in ``(0, 1]``), so it
is well defined for any scale of the input.
"""

import math
from typing import NamedTuple

from torch import Tensor

from distributed_shampoo_dash.solvers.checks import rational_root
from distributed_shampoo_dash.solvers.linalg import (
    batched_eye,
    frobenius_norm,
    matrix_power,
    matrix_power_products,
)
from distributed_shampoo_dash.solvers.precision import MatmulPrecision, batched_matmul


class InverseRootResult(NamedTuple):
    """Inverse roots of a stack and their per-block diagnostics.

    Attributes:
        inverse_root (Tensor): ``(N, d, d)`` approximation of ``(A + r I)^{-1/p}`` per block, in
            the dtype of the input stack.
        residual (Tensor): ``(N,)`` float32 relative residual of each block; its definition is
            given by each solver (``||X^p B - I||_F / sqrt(d)`` for the iterative ones).
        is_finite (Tensor): ``(N,)`` bool, True where the root and its residual are finite.
        regularization (Tensor): ``(N,)`` ``r``, the value added to each block's diagonal
            (``epsilon``, or more with a relative ridge or eigh's shift of a negative spectrum),
            in the solver's working dtype (float64 for float64 work, float32 otherwise).
    """

    inverse_root: Tensor
    residual: Tensor
    is_finite: Tensor
    regularization: Tensor


def residual_products(root: float) -> int:
    """``d x d`` products :func:`inverse_root_residual` runs for ``root = n / q``."""
    fraction = rational_root(root)
    return (
        matrix_power_products(fraction.numerator) + matrix_power_products(fraction.denominator) + 1
    )


def inverse_root_residual(
    B: Tensor, X: Tensor, root: float, precision: MatmulPrecision = MatmulPrecision.FP32
) -> Tensor:
    """Relative residual ``||X^n B^q - I||_F / sqrt(d)`` of ``X ~ B^{-1/p}``, ``p = n / q``.

    Args:
        B (Tensor): ``(N, d, d)`` matrices whose inverse root was taken.
        X (Tensor): ``(N, d, d)`` computed inverse roots.
        root (float): ``p``; fractional roots must be ``n / q`` with a small ``q``.
        precision (MatmulPrecision): Precision of the :func:`residual_products` products.

    Returns:
        residual (Tensor): ``(N,)`` float32.
    """
    fraction = rational_root(root)
    power = matrix_power(X, fraction.numerator, precision)
    if fraction.denominator > 1:
        B = matrix_power(B, fraction.denominator, precision)
    error = batched_matmul(power, B, precision) - batched_eye(B)
    return (frobenius_norm(error) / math.sqrt(B.shape[-1])).float()
