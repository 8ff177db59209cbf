"""What every solver returns: the roots of a stack and their per-block diagnostics.

The residual of an inverse root ``X ~ B^{-1/p}``, ``p = n / q``, is measured in a symmetric
congruence form that is ``I`` at convergence::

    n even:  ||W^T B^q W - I||_F / sqrt(d),          W = X^{n/2}
    n odd:   ||V^T V - I||_F / sqrt(d),              V = B^q X^n  (V^T V = X^n B^{2q} X^n)

For ``X = B^{-1/p} (I + G)`` with ``G`` commuting with ``B`` they are about ``n ||G||_F /
sqrt(d)`` and ``2 n ||G||_F / sqrt(d)`` (``n``, resp. ``2 n``, times the RMS relative error of
the eigenvalues of ``X``), and never below ``||G||_F / sqrt(d)``. The congruence keeps the
residual of an ill-conditioned ``B`` near the size of the root's error, where ``||X^n B^q - I||``
multiplies errors that do not commute with ``B`` by its condition number.
"""

import math
from typing import NamedTuple

from torch import Tensor

from distributed_shampoo_dash.solvers.checks import rational_root
from distributed_shampoo_dash.solvers.linalg import (
    add_to_diagonal_,
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
    n, q = fraction.numerator, fraction.denominator
    if n % 2 == 0:
        return matrix_power_products(n // 2) + matrix_power_products(q) + 2
    return matrix_power_products(n) + matrix_power_products(q) + 2


def inverse_root_residual(
    B: Tensor, X: Tensor, root: float, precision: MatmulPrecision = MatmulPrecision.FP32
) -> Tensor:
    """Relative residual of ``X ~ B^{-1/p}``, ``p = n / q``, in the congruence form of the module
    docstring.

    Args:
        B (Tensor): ``(N, d, d)`` symmetric matrices whose inverse root was taken.
        X (Tensor): ``(N, d, d)`` computed inverse roots.
        root (float): ``p``; fractional roots must be ``n / q`` with a small ``q``.
        precision (MatmulPrecision): Precision of the :func:`residual_products` products.

    Returns:
        residual (Tensor): ``(N,)`` float32.
    """
    fraction = rational_root(root)
    n, q = fraction.numerator, fraction.denominator
    Bq = matrix_power(B, q, precision)
    if n % 2 == 0:
        W = matrix_power(X, n // 2, precision)
        gram = batched_matmul(W.mT, batched_matmul(Bq, W, precision), precision)
    else:
        V = batched_matmul(Bq, matrix_power(X, n, precision), precision)
        gram = batched_matmul(V.mT, V, precision)
    error = add_to_diagonal_(gram, -1.0)
    return (frobenius_norm(error) / math.sqrt(B.shape[-1])).float()
