"""Inverse ``p``-th roots by the coupled Newton iteration (upstream's method), batched.

With ``A_e = A + r I``, a bound ``s >= lambda_max(A_e)`` and ``B = A_e / s`` (see
:mod:`~distributed_shampoo_dash.solvers.problem`; ``r = epsilon`` unless ``rel_epsilon > 0``)::

    X_0 = c^{1/p} I,   M_0 = c B,   c = (p + 1) / 2
    C_k = ((p + 1) I - M_k) / p
    X_{k+1} = X_k C_k             ->  B^{-1/p}
    M_{k+1} = C_k^p M_k           ->  I            (invariant M_k = X_k^p B)

and ``X = s^{-1/p} X_k``. With Frobenius scaling (``s = ||A_e||_F``) this is exactly upstream's
``CoupledNewtonConfig`` iteration (``z = (p + 1) / (2 ||A_e||_F)``, ``X_0 = z^{1/p} I``,
``M_0 = z A_e``); the spectrum of ``M_0`` lies in ``(0, (p + 1) / 2]``, inside the convergence
region ``(0, p + 1)``. Each iteration costs ``2 + floor(log2 p) + popcount(p) - 1`` products
(4 for ``p = 4``; :func:`coupled_newton_products`). As upstream, a block stops once
``max |M_k - I| <= tolerance``. With ``stop_at_best`` it also stops when ``||M_k - I||_F``
increases and keeps its best iterate: every eigenvalue ``m`` of ``M_k`` moves to
``m ((p + 1 - m) / p)^p``, closer to 1, so the Frobenius error decreases in exact arithmetic,
while the entrywise maximum need not (it can rise in the first steps). The returned residual is
the explicit ``||X_s^p B - I||_F / sqrt(d)`` with ``X_s = s^{1/p} X``.
"""

from torch import Tensor

from distributed_shampoo_dash.solvers.checks import check_instance, check_integer_root
from distributed_shampoo_dash.solvers.iteration import BestIterateTracker, IterationControl
from distributed_shampoo_dash.solvers.linalg import (
    add_to_diagonal,
    batched_eye,
    frobenius_norm,
    largest_magnitude,
    matrix_power,
    matrix_power_products,
)
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
from distributed_shampoo_dash.solvers.scaling import FROBENIUS_SCALING, SpectralScaling

#: Upstream ``CoupledNewtonConfig`` defaults: up to 100 iterations, tolerance 1e-6.
DEFAULT_COUPLED_NEWTON_ITERATION = IterationControl(num_iterations=100, tolerance=1e-6)

_METHOD = "coupled Newton"


def _errors(M: Tensor) -> tuple[Tensor, Tensor]:
    """``(||M - I||_F, max_ij |M - I|_ij)`` per block: progress measure and upstream's stopping
    test.
    """
    error = M - batched_eye(M)
    return frobenius_norm(error), largest_magnitude(error)


def coupled_newton_products(
    root: float,
    precision: MatmulPrecision = MatmulPrecision.FP32,
    iteration: IterationControl = DEFAULT_COUPLED_NEWTON_ITERATION,
) -> ProductCounts:
    """Most ``d x d`` products :func:`coupled_newton_inverse_root` runs per block (fewer on early
    exit).
    """
    root = check_integer_root(root, _METHOD)
    per_step = 2 + matrix_power_products(root)
    counts = ProductCounts({precision: iteration.num_iterations * per_step})
    counts[precision.full] += iteration.refinement_iterations * per_step + residual_products(root)
    return counts


def coupled_newton_inverse_root(
    A: Tensor,
    root: int,
    *,
    epsilon: float = 0.0,
    rel_epsilon: float = 0.0,
    precision: MatmulPrecision = MatmulPrecision.FP32,
    iteration: IterationControl = DEFAULT_COUPLED_NEWTON_ITERATION,
    scaling: SpectralScaling = FROBENIUS_SCALING,
) -> InverseRootResult:
    """Computes ``(A_i + r_i I)^{-1/p}`` for every block by the coupled Newton iteration.

    Args:
        A (Tensor): ``(N, d, d)`` (or ``(d, d)``) symmetric PSD stack.
        root (int): ``p``, a positive integer.
        epsilon (float): Absolute ridge. (Default: 0.0)
        rel_epsilon (float): Ridge relative to the spectral bound (see
            :mod:`~distributed_shampoo_dash.solvers.problem`). (Default: 0.0)
        precision (MatmulPrecision): Precision of the products. (Default: ``FP32``)
        iteration (IterationControl): Maximum iterations, tolerance on ``max |M - I|`` and
            refinement. (Default: upstream's 100 iterations and tolerance 1e-6)
        scaling (SpectralScaling): How ``s >= lambda_max`` is found. (Default: Frobenius, as
            upstream)

    Returns:
        result (InverseRootResult): Roots in ``A.dtype``; residual as in the module docstring.
    """
    stack, epsilon = check_common_arguments(A, epsilon, scaling, precision)
    check_instance(iteration, IterationControl, "iteration")
    return run_coupled_newton(
        stack,
        check_integer_root(root, _METHOD),
        epsilon=epsilon,
        rel_epsilon=check_rel_epsilon(rel_epsilon),
        precision=precision,
        iteration=iteration,
        scaling=scaling,
    )


def run_coupled_newton(
    stack: Tensor,
    root: int,
    *,
    epsilon: float,
    rel_epsilon: float,
    precision: MatmulPrecision,
    iteration: IterationControl,
    scaling: SpectralScaling,
) -> InverseRootResult:
    """:func:`coupled_newton_inverse_root` of an ``(N, d, d)`` stack for checked arguments."""
    problem = ScaledProblem.build(
        stack, epsilon=epsilon, rel_epsilon=rel_epsilon, scaling=scaling, precision=precision
    )

    c = (root + 1) / 2
    X = c ** (1.0 / root) * batched_eye(problem.scaled)
    M = c * problem.scaled
    tracker = BestIterateTracker(iteration.tolerance, iteration.stop_at_best)
    tracker.offer((X, M), *_errors(M))
    for phase_index, (phase_precision, iterations) in enumerate(iteration.phases(precision)):
        if phase_index > 0:
            tracker.restart()
            X, M = tracker.best
            tracker.offer((X, M), *_errors(M))
        for step in range(iterations):
            C = add_to_diagonal(M * (-1.0 / root), 1.0 + 1.0 / root)
            X = batched_matmul(X, C, phase_precision)
            M = batched_matmul(matrix_power(C, root, phase_precision), M, phase_precision)
            tracker.offer((X, M), *_errors(M))
            if iteration.should_exit(step + 1, tracker):
                break
    scaled_root, _ = tracker.best
    return problem.result(scaled_root, root, problem.residual(scaled_root, root, precision.full))
