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

and ``p = 1`` squares the inverse square root (``A_e = A + r I`` and ``s`` as in
:mod:`~distributed_shampoo_dash.solvers.problem`). Per block the residual
``||Z Y - I||_F / sqrt(d)`` (free inside the iteration) picks the best iterate; the returned
residual is the explicit ``||X_s^p B_0 - I||_F / sqrt(d)`` of the scaled problem
(``X_s = s^{1/p} X``, ``B_0 = A_e / s``).

Products (:func:`newton_db_products`): a run of ``k`` iterations costs ``3k - 1`` (the
closed-form first step, three per further step, one to judge the last iterate), ``r`` refinement
iterations ``3r + 2`` more (re-coupling, steps, judging); a root ``2^m`` chains ``max(m, 1)``
runs, ``p = 1`` squares once, and the residual adds :func:`residual_products`.
"""

import math

from torch import Tensor

from distributed_shampoo_dash.solvers.checks import check_instance, check_power_of_two_root
from distributed_shampoo_dash.solvers.iteration import BestIterateTracker, IterationControl
from distributed_shampoo_dash.solvers.linalg import add_to_diagonal, batched_eye, frobenius_norm
from distributed_shampoo_dash.solvers.precision import (
    MatmulPrecision,
    ProductCounts,
    batched_matmul,
)
from distributed_shampoo_dash.solvers.problem import (
    ScaledProblem,
    check_common_arguments,
    check_rel_epsilon,
)
from distributed_shampoo_dash.solvers.result import InverseRootResult, residual_products
from distributed_shampoo_dash.solvers.scaling import MULTI_POWER_ITERATION_SCALING, SpectralScaling

#: Newton-DB iteration defaults of the DASH paper: 10 iterations per square root, no tolerance.
DEFAULT_NEWTON_DB_ITERATION = IterationControl(num_iterations=10)

_METHOD = "Newton-DB"


def _coupled_residual(product: Tensor) -> Tensor:
    """``||Z Y - I||_F / sqrt(d)`` per block, in the working dtype of ``product``."""
    d = product.shape[-1]
    return frobenius_norm(product - batched_eye(product)) / math.sqrt(d)


def newton_schulz_square_roots(
    B: Tensor, precision: MatmulPrecision, iteration: IterationControl
) -> tuple[Tensor, Tensor]:
    """``(B^{1/2}, B^{-1/2})`` per block by the coupled Newton-Schulz iteration.

    Args:
        B (Tensor): ``(N, d, d)`` symmetric stack in the working dtype, spectrum in ``(0, 2)``.
        precision (MatmulPrecision): Precision of the products.
        iteration (IterationControl): Iteration count, tolerance on ``||Z Y - I||_F / sqrt(d)``
            and refinement.

    Returns:
        (Y, Z) (tuple[Tensor, Tensor]): Each ``(N, d, d)``: the best iterate of each block.
    """
    identity = batched_eye(B)
    tracker = BestIterateTracker(iteration.tolerance, iteration.stop_at_best)
    (main_precision, main_iterations), *refinement = iteration.phases(precision)

    # Closed-form first iteration from Y_0 = B, Z_0 = I.
    E = add_to_diagonal(-0.5 * B, 1.5)
    Y, Z = batched_matmul(B, E, main_precision), E
    phases = [(main_precision, main_iterations - 1), *refinement]
    for phase_index, (phase_precision, iterations) in enumerate(phases):
        if phase_index > 0:
            # Re-couple from the best inverse square root: Y = B Z restores the invariant that
            # rounding at the lower precision broke, which the coupled step cannot see otherwise.
            tracker.restart()
            Z = tracker.best[1]
            Y = batched_matmul(B, Z, phase_precision)
        for step in range(iterations):
            product = batched_matmul(Z, Y, phase_precision)
            tracker.offer((Y, Z), _coupled_residual(product))
            if iteration.should_exit(step + 1, tracker):
                break
            E = 0.5 * (3.0 * identity - product)
            Y, Z = batched_matmul(Y, E, phase_precision), batched_matmul(E, Z, phase_precision)
        tracker.offer((Y, Z), _coupled_residual(batched_matmul(Z, Y, phase_precision)))
    Y, Z = tracker.best
    return Y, Z


def newton_db_products(
    root: float,
    precision: MatmulPrecision = MatmulPrecision.FP32,
    iteration: IterationControl = DEFAULT_NEWTON_DB_ITERATION,
) -> ProductCounts:
    """Most ``d x d`` products :func:`newton_db_inverse_root` runs per block (fewer on early
    exit).
    """
    root = check_power_of_two_root(root, _METHOD)
    runs = max(root.bit_length() - 1, 1)
    counts = ProductCounts({precision: runs * (3 * iteration.num_iterations - 1) + (root == 1)})
    if iteration.refinement_iterations > 0:
        counts[precision.full] += runs * (3 * iteration.refinement_iterations + 2)
    counts[precision.full] += residual_products(root)
    return counts


def newton_db_inverse_root(
    A: Tensor,
    root: int,
    *,
    epsilon: float = 0.0,
    rel_epsilon: float = 0.0,
    precision: MatmulPrecision = MatmulPrecision.FP32,
    iteration: IterationControl = DEFAULT_NEWTON_DB_ITERATION,
    scaling: SpectralScaling = MULTI_POWER_ITERATION_SCALING,
) -> InverseRootResult:
    """Computes ``(A_i + r_i I)^{-1/p}``, ``p = 2^m``, for every block with matrix products only.

    Args:
        A (Tensor): ``(N, d, d)`` (or ``(d, d)``) symmetric PSD stack.
        root (int): ``p``, a power of two.
        epsilon (float): Absolute ridge. (Default: 0.0)
        rel_epsilon (float): Ridge relative to the spectral bound; ``r = max(rel_epsilon u,
            epsilon)``. (Default: 0.0)
        precision (MatmulPrecision): Precision of the products. (Default: ``FP32``)
        iteration (IterationControl): Iterations per square root, tolerance and refinement.
            (Default: 10 iterations, the DASH paper's setting)
        scaling (SpectralScaling): How the bound ``u >= lambda_max`` is found.
            (Default: multi-power iteration, 16 vectors, 10 steps, safety factor 2)

    Returns:
        result (InverseRootResult): Roots in ``A.dtype``; residual as in the module docstring.
    """
    stack, epsilon = check_common_arguments(A, epsilon, scaling, precision)
    check_instance(iteration, IterationControl, "iteration")
    return run_newton_db(
        stack,
        check_power_of_two_root(root, _METHOD),
        epsilon=epsilon,
        rel_epsilon=check_rel_epsilon(rel_epsilon),
        precision=precision,
        iteration=iteration,
        scaling=scaling,
    )


def run_newton_db(
    stack: Tensor,
    root: int,
    *,
    epsilon: float,
    rel_epsilon: float,
    precision: MatmulPrecision,
    iteration: IterationControl,
    scaling: SpectralScaling,
) -> InverseRootResult:
    """:func:`newton_db_inverse_root` of an ``(N, d, d)`` stack for checked arguments."""
    problem = ScaledProblem.build(
        stack, epsilon=epsilon, rel_epsilon=rel_epsilon, scaling=scaling, precision=precision
    )

    B = problem.scaled
    for _ in range(root.bit_length() - 2):
        B, _ = newton_schulz_square_roots(B, precision, iteration)
    _, inverse_square_root = newton_schulz_square_roots(B, precision, iteration)
    scaled_root = (
        batched_matmul(inverse_square_root, inverse_square_root, precision)
        if root == 1
        else inverse_square_root
    )
    return problem.result(scaled_root, root, problem.residual(scaled_root, root, precision.full))
