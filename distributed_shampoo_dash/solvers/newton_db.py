"""Inverse ``2^k``-th roots by the coupled, inverse-free Newton-Schulz (Denman-Beavers) iteration.

For a symmetric ``B`` with spectrum in ``(0, 1]`` (within the convergence region ``(0, 2)``)::

    Y_0 = B,  Z_0 = I
    E_k = (3 I - Z_k Y_k) / 2
    Y_{k+1} = Y_k E_k  ->  B^{1/2}
    Z_{k+1} = E_k Z_k  ->  B^{-1/2}

The first step is closed form (``E_0 = 1.5 I - 0.5 B``, ``Y_1 = B E_0``, ``Z_1 = E_0``), so ``k``
iterations cost ``3k - 2`` products, plus one ``Z Y`` product to judge the last iterate. Each
eigenvalue ``x`` of ``B`` converges quadratically once ``x`` is near 1 and gains about a factor
2.25 per step while it is small, so ``k`` grows like ``log(lambda_max / lambda_min)``.

The inverse ``p = 2^m``-th root of ``A_e = A + epsilon I`` is then, with ``s >= lambda_max(A_e)``::

    B = A_e / s;   B <- B^{1/2} (m - 1 times, the Y output);   X = s^{-1/p} (B)^{-1/2} (Z output)

and ``p = 1`` squares the inverse square root. Per block the residual ``||Z Y - I||_F / sqrt(d)``
(free inside the iteration) picks the best iterate; the returned residual is the explicit
``||X_s^p B_0 - I||_F / sqrt(d)`` of the scaled problem (``X_s = s^{1/p} X``, ``B_0 = A_e / s``).
"""

import math

from torch import Tensor

from distributed_shampoo_dash.solvers.common import (
    InverseRootResult,
    add_to_diagonal,
    as_stack,
    batched_eye,
    check_instance,
    check_nonnegative,
    check_positive_root,
    frobenius_norm,
    scaled_result,
)
from distributed_shampoo_dash.solvers.iteration import BestIterateTracker, IterationControl
from distributed_shampoo_dash.solvers.precision import batched_matmul
from distributed_shampoo_dash.solvers.scaling import MULTI_POWER_ITERATION_SCALING, SpectralScaling

#: Newton-DB iteration defaults of the DASH paper: 10 fp32 iterations, no tolerance.
DEFAULT_NEWTON_DB_CONTROL = IterationControl(num_iterations=10)


def check_newton_db_root(root: float) -> int:
    """Checks that ``root`` is ``2^m`` for some ``m >= 0`` and returns it as an ``int``.

    Raises:
        ValueError: If ``root`` is not a power of two (Newton-DB only composes square roots).
    """
    value = check_positive_root(root)
    if not value.is_integer() or int(value) & (int(value) - 1):
        raise ValueError(
            f"Invalid root {root} for Newton-DB. Must be a power of two (1, 2, 4, 8, ...); "
            "use the Chebyshev, coupled Newton or eigh solver for other roots."
        )
    return int(value)


def _coupled_residual(product: Tensor) -> Tensor:
    """``||Z Y - I||_F / sqrt(d)`` per block, in the working dtype of ``product``."""
    d = product.shape[-1]
    return frobenius_norm(product - batched_eye(product)) / math.sqrt(d)


def newton_schulz_square_roots(B: Tensor, control: IterationControl) -> tuple[Tensor, Tensor]:
    """``(B^{1/2}, B^{-1/2})`` per block by the coupled Newton-Schulz iteration.

    Args:
        B (Tensor): ``(N, d, d)`` symmetric stack in the working dtype, spectrum in ``(0, 2)``.
        control (IterationControl): Iteration count, tolerance on ``||Z Y - I||_F / sqrt(d)``,
            precision and refinement.

    Returns:
        (Y, Z) (tuple[Tensor, Tensor]): Each ``(N, d, d)``: the best iterate of each block.
    """
    identity = batched_eye(B)
    tracker = BestIterateTracker(control.tolerance, control.stop_at_best)
    (main_precision, main_iterations), *refinement = control.phases()

    # Closed-form first iteration from Y_0 = B, Z_0 = I.
    E = add_to_diagonal(-0.5 * B, 1.5)
    Y, Z = batched_matmul(B, E, main_precision), E
    phases = [(main_precision, main_iterations - 1), *refinement]
    for phase_index, (precision, iterations) in enumerate(phases):
        if phase_index > 0:
            # Re-couple from the best inverse square root: Y = B Z restores the invariant that
            # rounding at the lower precision broke, which the coupled step cannot see otherwise.
            tracker.restart()
            Z = tracker.best[1]
            Y = batched_matmul(B, Z, precision)
        for iteration in range(iterations):
            product = batched_matmul(Z, Y, precision)
            tracker.offer((Y, Z), _coupled_residual(product))
            if control.should_exit(iteration + 1, tracker):
                break
            E = 0.5 * (3.0 * identity - product)
            Y, Z = batched_matmul(Y, E, precision), batched_matmul(E, Z, precision)
        tracker.offer((Y, Z), _coupled_residual(batched_matmul(Z, Y, precision)))
    Y, Z = tracker.best
    return Y, Z


def newton_db_inverse_root(
    A: Tensor,
    root: int,
    *,
    epsilon: float = 0.0,
    control: IterationControl = DEFAULT_NEWTON_DB_CONTROL,
    scaling: SpectralScaling = MULTI_POWER_ITERATION_SCALING,
) -> InverseRootResult:
    """Computes ``(A_i + epsilon I)^{-1/p}``, ``p = 2^m``, for every block with matrix products only.

    Args:
        A (Tensor): ``(N, d, d)`` (or ``(d, d)``) symmetric PSD stack.
        root (int): ``p``, a power of two.
        epsilon (float): Added to the diagonal before scaling. (Default: 0.0)
        control (IterationControl): Iterations per square root, tolerance, precision and
            refinement. (Default: 10 fp32 iterations, the DASH paper's setting)
        scaling (SpectralScaling): How ``s >= lambda_max`` is found.
            (Default: multi-power iteration, 16 vectors, 10 steps, safety factor 2)

    Returns:
        result (InverseRootResult): Roots in ``A.dtype``; residual as in the module docstring.
    """
    stack = as_stack(A)
    root = check_newton_db_root(root)
    epsilon = check_nonnegative(epsilon, "epsilon")
    check_instance(control, IterationControl, "control")
    check_instance(scaling, SpectralScaling, "scaling")

    working = add_to_diagonal(stack.to(control.precision.working_dtype), epsilon)
    scale = scaling.upper_bound(working)
    scaled = working / scale[:, None, None]

    B = scaled
    for _ in range(max(int(math.log2(root)) - 1, 0)):
        B, _ = newton_schulz_square_roots(B, control)
    _, inverse_square_root = newton_schulz_square_roots(B, control)
    scaled_root = (
        batched_matmul(inverse_square_root, inverse_square_root, control.precision)
        if root == 1
        else inverse_square_root
    )

    return scaled_result(stack, scaled, scaled_root, scale, root, control.precision.full)
