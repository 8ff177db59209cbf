"""Inverse ``p``-th roots by a Chebyshev polynomial evaluated with Clenshaw's recurrence.

Scaled problem. With the ridge ``r = max(rel_epsilon u, epsilon)`` and ``B = (A + r I) / s`` of
:mod:`~distributed_shampoo_dash.solvers.problem`, the spectrum of ``B`` lies in ``[l, 1]`` with
``l = rel_epsilon / (1 + rel_epsilon)``, so ``rel_epsilon > 0`` is required: it bounds the
condition number the polynomial must resolve by ``1 / l``.

Fit. On ``t in [l, 1]`` the function ``g(t) = t^{-1/p}`` is interpolated at the
``n = degree + 1`` Chebyshev nodes ``x_k = cos(theta_k)``, ``theta_k = pi (k + 1/2) / n``,
``t_k = l + (1 - l) (x_k + 1) / 2``:

    g(t) ~ sum_{j=0..degree}' c_j T_j(x(t)),   x(t) = (2 t - 1 - l) / (1 - l),
    c_j = (2 / n) sum_k g(t_k) cos(j theta_k)

(the primed sum halves ``c_0``). The coefficients depend only on ``(degree, p, l)`` and are
computed once in float64 and cached as Python floats, so evaluation needs no host-device copy.
The interpolation error falls like ``exp(-2 sqrt(l) degree)``, so a smaller ``rel_epsilon``
needs a higher degree. Any real root ``p > 0`` works.

Evaluation. With ``S = x(B)`` (spectrum in ``[-1, 1]``), Clenshaw's backward recurrence

    b_{degree+1} = b_{degree+2} = 0,   b_j = c_j I + 2 S b_{j+1} - b_{j+2},
    g(B) = c_0 I + S b_1 - b_2

costs ``degree - 1`` products (``b_degree`` and ``b_{degree-1}`` need none), and
``X = s^{-1/p} g(B) ~ (A + r I)^{-1/p}``. The residual is ``||X_s^p B - I||_F / sqrt(d)``
(fractional ``p`` as ``n / q`` with a small ``q``), ``X_s = s^{1/p} X``.
"""

import math
from functools import lru_cache

import torch
from torch import Tensor

from distributed_shampoo_dash.solvers.checks import (
    MAX_ITERATIONS,
    check_int,
    check_real,
    rational_root,
)
from distributed_shampoo_dash.solvers.linalg import add_to_diagonal, add_to_diagonal_, batched_eye
from distributed_shampoo_dash.solvers.precision import (
    MatmulPrecision,
    ProductCounts,
    batched_matmul,
)
from distributed_shampoo_dash.solvers.problem import ScaledProblem, check_common_arguments
from distributed_shampoo_dash.solvers.result import InverseRootResult, residual_products
from distributed_shampoo_dash.solvers.scaling import MULTI_POWER_ITERATION_SCALING, SpectralScaling

_ZERO_RIDGE_REASON = ": the fitted function t^(-1/p) is singular at t = 0 when rel_epsilon = 0"


def check_degree(degree: object) -> int:
    """Checks a polynomial degree: an int in ``[1, 1000]``."""
    return check_int(degree, "degree", minimum=1, maximum=MAX_ITERATIONS)


def check_chebyshev_rel_epsilon(rel_epsilon: object) -> float:
    """Checks Chebyshev's relative ridge: a real number in ``(0, 1]``."""
    return check_real(
        rel_epsilon, "rel_epsilon", exclusive=True, maximum=1.0, reason=_ZERO_RIDGE_REASON
    )


def spectrum_lower_bound(rel_epsilon: float) -> float:
    """``l = rel_epsilon / (1 + rel_epsilon)``, the smallest eigenvalue the scaled problem can
    have.
    """
    return rel_epsilon / (1.0 + rel_epsilon)


@lru_cache(maxsize=64)
def chebyshev_coefficients(degree: int, root: float, lower: float) -> tuple[float, ...]:
    """Chebyshev coefficients ``c_0 .. c_degree`` of ``t^{-1/p}`` on ``t in [lower, 1]``.

    ``c_0`` is already halved, so ``g(t) = sum_j c_j T_j((2 t - 1 - lower) / (1 - lower))``.
    """
    n = degree + 1
    theta = (torch.arange(n, dtype=torch.float64) + 0.5) * (math.pi / n)
    t = lower + (1.0 - lower) * (torch.cos(theta) + 1.0) / 2.0
    values = t.pow(-1.0 / root)
    j = torch.arange(n, dtype=torch.float64)
    coefficients = (2.0 / n) * (torch.cos(j[:, None] * theta[None, :]) @ values)
    coefficients[0] /= 2.0
    return tuple(coefficients.tolist())


def clenshaw(S: Tensor, coefficients: tuple[float, ...], precision: MatmulPrecision) -> Tensor:
    """Evaluates ``sum_j c_j T_j(S)`` for an ``(N, d, d)`` stack ``S`` by Clenshaw's recurrence.

    Args:
        S (Tensor): ``(N, d, d)`` symmetric stack with spectrum in ``[-1, 1]``.
        coefficients (tuple[float, ...]): ``c_0 .. c_degree`` (``c_0`` halved), degree >= 1.
        precision (MatmulPrecision): Precision of the ``degree - 1`` products.

    Returns:
        value (Tensor): ``(N, d, d)``.
    """
    degree = len(coefficients) - 1
    if degree == 1:
        return add_to_diagonal(S * coefficients[1], coefficients[0])
    b_next2 = coefficients[degree] * batched_eye(S)
    b_next1 = add_to_diagonal_((2.0 * coefficients[degree]) * S, coefficients[degree - 1])
    for j in range(degree - 2, 0, -1):
        b_j = add_to_diagonal_(
            2.0 * batched_matmul(S, b_next1, precision) - b_next2, coefficients[j]
        )
        b_next2, b_next1 = b_next1, b_j
    return add_to_diagonal_(batched_matmul(S, b_next1, precision) - b_next2, coefficients[0])


def chebyshev_products(
    root: float, precision: MatmulPrecision = MatmulPrecision.FP32, degree: int = 60
) -> ProductCounts:
    """``d x d`` products :func:`chebyshev_inverse_root` runs per block: Clenshaw and residual."""
    counts = ProductCounts({precision: degree - 1})
    counts[precision.full] += residual_products(root)
    return counts


def chebyshev_inverse_root(
    A: Tensor,
    root: float,
    *,
    epsilon: float = 0.0,
    rel_epsilon: float = 1e-3,
    precision: MatmulPrecision = MatmulPrecision.FP32,
    degree: int = 60,
    scaling: SpectralScaling = MULTI_POWER_ITERATION_SCALING,
) -> InverseRootResult:
    """Computes ``(A_i + r_i I)^{-1/p}`` for every block by a Chebyshev series.

    Args:
        A (Tensor): ``(N, d, d)`` (or ``(d, d)``) symmetric PSD stack.
        root (float): ``p = n / q > 0`` with ``q <= 16`` (the residual needs ``B^q``).
        epsilon (float): Absolute ridge. (Default: 0.0)
        rel_epsilon (float): Ridge relative to the spectral bound, ``0 < rel_epsilon <= 1``.
            (Default: 1e-3)
        precision (MatmulPrecision): Precision of the products. (Default: ``FP32``)
        degree (int): Polynomial degree ``1 .. 1000``; costs ``degree - 1`` products. (Default: 60)
        scaling (SpectralScaling): How the bound ``u >= lambda_max`` is found; the scaled spectrum
            must not exceed 1. (Default: multi-power iteration with safety factor 2)

    Returns:
        result (InverseRootResult): Roots in ``A.dtype``; residual as in the module docstring.
    """
    stack, epsilon = check_common_arguments(A, epsilon, scaling, precision)
    return run_chebyshev(
        stack,
        float(rational_root(root)),
        epsilon=epsilon,
        rel_epsilon=check_chebyshev_rel_epsilon(rel_epsilon),
        precision=precision,
        degree=check_degree(degree),
        scaling=scaling,
    )


def run_chebyshev(
    stack: Tensor,
    root: float,
    *,
    epsilon: float,
    rel_epsilon: float,
    precision: MatmulPrecision,
    degree: int,
    scaling: SpectralScaling,
) -> InverseRootResult:
    """:func:`chebyshev_inverse_root` of an ``(N, d, d)`` stack for checked arguments."""
    problem = ScaledProblem.build(
        stack, epsilon=epsilon, rel_epsilon=rel_epsilon, scaling=scaling, precision=precision
    )
    lower = spectrum_lower_bound(rel_epsilon)
    S = add_to_diagonal_(problem.scaled * (2.0 / (1.0 - lower)), -(1.0 + lower) / (1.0 - lower))
    scaled_root = clenshaw(S, chebyshev_coefficients(degree, root, lower), precision)
    return problem.result(scaled_root, root, problem.residual(scaled_root, root, precision.full))
