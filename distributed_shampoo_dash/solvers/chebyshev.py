"""Inverse ``p``-th roots by a Chebyshev polynomial evaluated with Clenshaw's recurrence.

Fit. On ``t in [0, 1]`` the function ``g(t) = (t + delta)^{-1/p}`` is interpolated at the
``n = degree + 1`` Chebyshev nodes ``x_k = cos(theta_k)``, ``theta_k = pi (k + 1/2) / n``,
``t_k = (x_k + 1) / 2``:

    g(t) ~ sum_{j=0..degree}' c_j T_j(2t - 1),   c_j = (2 / n) sum_k g(t_k) cos(j theta_k)

(the primed sum halves ``c_0``). The coefficients depend only on ``(degree, p, delta)`` and are
computed once in float64 and cached as Python floats, so evaluation needs no host-device copy.

Evaluation. With ``A_e = A + epsilon I``, ``s >= lambda_max(A_e)``, ``B = A_e / s`` (spectrum in
``[0, 1]``) and ``S = 2 B - I`` (spectrum in ``[-1, 1]``), Clenshaw's backward recurrence

    b_{degree+1} = b_{degree+2} = 0,   b_j = c_j I + 2 S b_{j+1} - b_{j+2},   g(B) = c_0 I + S b_1 - b_2

costs ``degree - 1`` products (``b_degree`` and ``b_{degree-1}`` need none), and

    X = s^{-1/p} g(B) ~ (A_e + delta s I)^{-1/p}.

So ``delta`` (``relative_epsilon``) is a regularisation relative to ``lambda_max``: it bounds the
condition number the polynomial must resolve by ``(1 + delta) / delta``. The interpolation error
falls like ``exp(-2 sqrt(delta) degree)``, so a smaller ``delta`` needs a higher degree. Any real
root ``p > 0`` works. The residual is ``||X_s^p (B + delta I) - I||_F / sqrt(d)`` (fractional ``p``
as ``n / q`` with a small ``q``), ``X_s = s^{1/p} X``.
"""

import math
from functools import lru_cache

import torch
from torch import Tensor

from distributed_shampoo_dash.solvers.common import (
    InverseRootResult,
    add_to_diagonal,
    as_stack,
    batched_eye,
    check_count,
    check_instance,
    check_nonnegative,
    check_positive,
    check_positive_root,
    scaled_result,
)
from distributed_shampoo_dash.solvers.precision import (
    MatmulPrecision,
    as_matmul_precision,
    batched_matmul,
)
from distributed_shampoo_dash.solvers.scaling import MULTI_POWER_ITERATION_SCALING, SpectralScaling


@lru_cache(maxsize=64)
def chebyshev_coefficients(degree: int, root: float, relative_epsilon: float) -> tuple[float, ...]:
    """Chebyshev coefficients ``c_0 .. c_degree`` of ``(t + delta)^{-1/p}`` on ``t in [0, 1]``.

    ``c_0`` is already halved, so ``g(t) = sum_j c_j T_j(2 t - 1)``.
    """
    n = degree + 1
    theta = (torch.arange(n, dtype=torch.float64) + 0.5) * (math.pi / n)
    t = (torch.cos(theta) + 1.0) / 2.0
    values = (t + relative_epsilon).pow(-1.0 / root)
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
    b_next1 = add_to_diagonal((2.0 * coefficients[degree]) * S, coefficients[degree - 1])
    for j in range(degree - 2, 0, -1):
        b_j = add_to_diagonal(2.0 * batched_matmul(S, b_next1, precision) - b_next2, coefficients[j])
        b_next2, b_next1 = b_next1, b_j
    return add_to_diagonal(batched_matmul(S, b_next1, precision) - b_next2, coefficients[0])


def chebyshev_inverse_root(
    A: Tensor,
    root: float,
    *,
    epsilon: float = 0.0,
    degree: int = 60,
    relative_epsilon: float = 1e-3,
    precision: MatmulPrecision | str = MatmulPrecision.FP32,
    scaling: SpectralScaling = MULTI_POWER_ITERATION_SCALING,
) -> InverseRootResult:
    """Computes ``(A_i + epsilon I + delta s_i I)^{-1/p}`` for every block by a Chebyshev series.

    Args:
        A (Tensor): ``(N, d, d)`` (or ``(d, d)``) symmetric PSD stack.
        root (float): ``p > 0``.
        epsilon (float): Added to the diagonal before scaling. (Default: 0.0)
        degree (int): Polynomial degree ``>= 1``; costs ``degree - 1`` products. (Default: 60)
        relative_epsilon (float): ``delta > 0``, the shift of the fitted function relative to
            ``s``. (Default: 1e-3)
        precision (MatmulPrecision | str): Precision of the products. (Default: ``FP32``)
        scaling (SpectralScaling): How ``s >= lambda_max`` is found; the scaled spectrum must not
            exceed 1. (Default: multi-power iteration with safety factor 2)

    Returns:
        result (InverseRootResult): Roots in ``A.dtype``; residual as in the module docstring.
    """
    stack = as_stack(A)
    root = check_positive_root(root)
    epsilon = check_nonnegative(epsilon, "epsilon")
    degree = check_count(degree, "degree")
    relative_epsilon = check_positive(
        relative_epsilon,
        "relative_epsilon",
        ": the fitted function (t + delta)^(-1/p) is singular at t = 0 when delta = 0",
    )
    precision = as_matmul_precision(precision)
    check_instance(scaling, SpectralScaling, "scaling")

    working = add_to_diagonal(stack.to(precision.working_dtype), epsilon)
    scale = scaling.upper_bound(working)
    scaled = working / scale[:, None, None]
    S = add_to_diagonal(2.0 * scaled, -1.0)
    scaled_root = clenshaw(S, chebyshev_coefficients(degree, root, relative_epsilon), precision)

    shifted = add_to_diagonal(scaled, relative_epsilon)
    return scaled_result(stack, shifted, scaled_root, scale, root, precision.full)
