"""Inverse roots by a coupled iteration with minimax polynomials, converged for every block.

With the ridge of :mod:`~distributed_shampoo_dash.solvers.problem`, ``B = (A + r I) / s`` has its
spectrum in ``[l, 1]``, ``l = rel_epsilon / (1 + rel_epsilon)``, for every block. The iteration::

    X_0 = I,  M_0 = B
    P_k = a_k I + b_k M_k + c_k M_k^2
    X_{k+1} = X_k P_k             ->  B^{-1/p}
    M_{k+1} = P_k^p M_k           ->  I            (invariant M_k = X_k^p B)

acts on every eigenvalue ``b`` of ``B`` as the scalar map ``t <- t q(t^p)`` on ``t = x b^{1/p}``
(``x`` the eigenvalue of ``X``), from ``t_0 = b^{1/p}`` to 1. The polynomials are the greedy
minimax ones for the guaranteed interval of ``t`` at each step
(:mod:`~distributed_shampoo_dash.solvers.minimax_schedules`, derived offline and written by
``scripts/generate_minimax_schedules.py``), so the same fixed schedule takes
every block from ``[l^{1/p}, 1]`` to ``|1 - t| <= 1e-4``: about ``log(log(1/l))`` steps instead of
Newton-Schulz's ``log(1/l) / log(2.25)`` (root 4 at ``rel_epsilon = 1e-4``: 5 steps, against 24
Newton-Schulz steps of the paper's two chained runs to the same accuracy). For ``p = 2`` it is the
Denman-Beavers sign iteration ``x <- x q(x^2)`` with the Newton-Schulz ``q(m) = (3 - m) / 2``
replaced by the minimax ``q``.
Below the design interval each polynomial rises from 0, so an eigenvalue that is smaller than
assumed is under-inverted (damped), never over-inverted; above it the polynomials rise steeply,
which is why the schedule is designed with a 2% margin over the top and the scaling must bound
``lambda_max`` (multi-power iteration with safety factor 2 by default).

Products. The first step needs no ``X`` product, the last no ``M`` update: root 4 costs
``5k - 1`` products for ``k`` steps with the residual, root 2 ``4k - 1``; :func:`minimax_products`
counts them per precision.

Reduced precision. Steps whose guaranteed interval is within ``REDUCED_PRECISION_HALF_WIDTH`` of 1
(bf16: 0.25, fp16 and tf32: 0.5) run their products at the reduced precision, the others and the
residual in fp32. Those late steps are written in correction form, with ``M = I + H``,
``P = I + D``, ``(I + D)^p = I + R``::

    D = (a + b + c - 1) I + (b + 2c) H + c H^2,   X <- X + X D,
    R <- 2 R + R^2 (starting from D, log2 p times),   H <- (I + R)(I + H) - I = M + R M - I

(the same number of products; the iteration carries ``H`` from the first such step on, the last
update as ``M + R M`` in the product's epilogue with ``M = I + H`` formed on the diagonal in
place), so every product has a small operand and its rounding error scales with the distance to
convergence rather than with the size of the iterates. Early steps
stay in fp32: rounding ``B`` to bf16 perturbs it by more than ``l``, and the first polynomials
amplify that. Only powers of two use the correction form; other roots run every step in fp32.

First step in fp64 (``first_step_precision=FP64``). The first step maps the whole
interval ``[l^{1/p}, 1]`` and its fp32 rounding errors, of order ``u`` relative to ``||B||``, are
what the later steps cannot remove: on real Shampoo factors at ``rel_epsilon = 1e-6`` they leave the
fp32 iteration about ``3.6e-3`` from the root (root 2), against ``1e-3`` with the first step's few
products (root 4: 4, root 2: 3) and iterates in fp64; everything after it runs as before.

Residual and overshoot. :func:`~distributed_shampoo_dash.solvers.result.inverse_root_residual` on
the iterate before it is symmetrised: ``W^T B W - I``, ``W = X^{p/2}`` for even ``p`` and
``V^T V - I``, ``V = B X^p``, for odd ``p``, congruences with a rounding floor of ``u kappa^{1/2}``
instead of the ``u kappa`` of ``X^p B - I``, on the same scale for every root. The result reports
them as every solver does, and ``X`` symmetrised. At the default ridge the symmetrised root
stays within the acceptance (largest eigenvalue of ``X^p B`` at most 1.04 on random rank-one to
rank-four blocks); at ``rel_epsilon = 1e-6`` symmetrising can over-invert such nearly rank-one
blocks far beyond what the iterate's residual and overshoot show (``docs/usage.md``).
"""

from torch import Tensor

from distributed_shampoo_dash.solvers.checks import as_enum, check_integer_root, check_real
from distributed_shampoo_dash.solvers.linalg import (
    add_to_diagonal_,
    matrix_power,
    matrix_power_products,
)
from distributed_shampoo_dash.solvers.minimax_schedules import SCHEDULES
from distributed_shampoo_dash.solvers.precision import (
    MatmulPrecision,
    ProductCounts,
    batched_addmm,
    batched_matmul,
    prepared,
)
from distributed_shampoo_dash.solvers.problem import ScaledProblem, check_common_arguments
from distributed_shampoo_dash.solvers.result import (
    InverseRootResult,
    inverse_root_residual,
    residual_products,
)
from distributed_shampoo_dash.solvers.scaling import MULTI_POWER_ITERATION_SCALING, SpectralScaling

#: Roots with a stored schedule; root 1 runs root 2 and squares.
MINIMAX_ROOTS = (1, *SCHEDULES)
#: Smallest tabulated relative ridge.
MIN_REL_EPSILON = min(min(schedules) for schedules in SCHEDULES.values())
#: Largest distance to convergence at which a step may run at a reduced precision.
REDUCED_PRECISION_HALF_WIDTH = {
    MatmulPrecision.BF16: 0.25,
    MatmulPrecision.FP16: 0.5,
    MatmulPrecision.TF32: 0.5,
}

_METHOD = "the minimax iteration"
#: A step: ``(a, b, c, half_width)``.
_Step = tuple[float, float, float, float]


def check_minimax_rel_epsilon(rel_epsilon: object) -> float:
    """Checks a relative ridge for the minimax iteration: a real number in ``[1e-8, 1]``."""
    return check_real(
        rel_epsilon,
        "rel_epsilon",
        minimum=MIN_REL_EPSILON,
        maximum=1.0,
        reason=": the schedule needs the smallest eigenvalue of the scaled matrix bounded below",
    )


def minimax_schedule(root: int, rel_epsilon: float) -> tuple[_Step, ...]:
    """The stored schedule for ``root`` (2 for root 1) at the largest tabulated relative ridge
    not above ``rel_epsilon``: exact for tabulated values, conservative in between."""
    schedules = SCHEDULES[2 if root == 1 else root]
    return schedules[max(tabulated for tabulated in schedules if tabulated <= rel_epsilon)]


def _check_root(root: object) -> int:
    value = check_integer_root(root, _METHOD)
    if value not in MINIMAX_ROOTS:
        raise ValueError(
            f"Invalid root {value} for {_METHOD}. Must be one of {MINIMAX_ROOTS}; other roots are "
            "computed by eigh."
        )
    return value


def check_first_step_precision(precision: object) -> MatmulPrecision:
    """Checks the first step's precision: ``FP32`` or ``FP64`` (strings accepted)."""
    value = as_enum(precision, MatmulPrecision, "first_step_precision")
    if value not in (MatmulPrecision.FP32, MatmulPrecision.FP64):
        raise ValueError(
            f"Invalid first_step_precision={value.value}. Must be fp32 or fp64: the first step "
            "maps the whole interval and needs at least fp32."
        )
    return value


def _step_precision(
    index: int,
    step: _Step,
    precision: MatmulPrecision,
    first_step_precision: MatmulPrecision,
    iteration_root: int,
) -> MatmulPrecision:
    """The precision of step ``index``: fp64 for the first if asked, reduced once close enough to
    convergence (powers of two only), the working precision otherwise."""
    if index == 0 and first_step_precision is MatmulPrecision.FP64:
        return MatmulPrecision.FP64
    is_power_of_two = iteration_root & (iteration_root - 1) == 0
    if is_power_of_two and step[3] <= REDUCED_PRECISION_HALF_WIDTH.get(precision, 0.0):
        return precision
    return precision.full


def minimax_products(
    root: float,
    rel_epsilon: float,
    precision: MatmulPrecision = MatmulPrecision.FP32,
    first_step_precision: MatmulPrecision = MatmulPrecision.FP32,
) -> ProductCounts:
    """``d x d`` products :func:`minimax_inverse_root` runs per block, by precision."""
    root = _check_root(root)
    first_step_precision = check_first_step_precision(first_step_precision)
    p = 2 if root == 1 else root
    power = matrix_power_products(p)
    counts = ProductCounts()
    steps = minimax_schedule(root, check_minimax_rel_epsilon(rel_epsilon))
    for index, step in enumerate(steps):
        first, last = index == 0, index == len(steps) - 1
        step_precision = _step_precision(index, step, precision, first_step_precision, p)
        # q(M): M^2; X P (none at the first step); M <- P^p M (none at the last step).
        counts[step_precision] += 1 + (not first) + (0 if last else power + 1)
    counts[precision.full] += residual_products(p) + (root == 1)
    return counts


def _plain_step(
    X: Tensor | None, M: Tensor, step: _Step, p: int, last: bool, precision: MatmulPrecision
) -> tuple[Tensor, Tensor]:
    """``P = q(M) = a I + b M + c M^2`` (one product, ``b M`` in its epilogue), ``X <- X P``,
    ``M <- P^p M``."""
    a, b, c, _ = step
    # The first step holds M's split for its last product (the step has no X yet to hold).
    M_split = prepared(M, precision) if X is None else M
    P = add_to_diagonal_(batched_addmm(M, M_split, M_split, precision, alpha=c, beta=b), a)
    X = P if X is None else batched_matmul(X, P, precision)
    if not last:
        M = batched_matmul(matrix_power(P, p, precision), M_split, precision)
    return X, M


def _correction_step(
    X: Tensor, H: Tensor, step: _Step, p: int, last: bool, precision: MatmulPrecision
) -> tuple[Tensor, Tensor]:
    """The same step with ``M = I + H``, ``P = I + D``, on ``H`` (its diagonal shifted in place
    to form ``M``; the updated ``H`` returned): every product has a small operand, and each sum
    runs in the product's epilogue (:func:`~.precision.batched_addmm`)."""
    a, b, c, _ = step
    D = add_to_diagonal_(
        batched_addmm(H, H, H, precision, alpha=c, beta=b + 2 * c), a + b + c - 1.0
    )
    X = batched_addmm(X, X, D, precision)
    if not last:
        R = D
        for _ in range(p.bit_length() - 1):
            R = batched_addmm(R, R, R, precision, beta=2.0)
        M = add_to_diagonal_(H, 1.0)  # in place: H is not needed after this update
        H = add_to_diagonal_(batched_addmm(M, R, M, precision), -1.0)
    return X, H


def minimax_inverse_root(
    A: Tensor,
    root: int,
    *,
    epsilon: float = 0.0,
    rel_epsilon: float = 1e-4,
    precision: MatmulPrecision = MatmulPrecision.FP32,
    scaling: SpectralScaling = MULTI_POWER_ITERATION_SCALING,
    first_step_precision: MatmulPrecision = MatmulPrecision.FP32,
) -> InverseRootResult:
    """Computes ``(A_i + r_i I)^{-1/p}`` for every block by the minimax coupled iteration.

    Args:
        A (Tensor): ``(N, d, d)`` (or ``(d, d)``) symmetric PSD stack.
        root (int): ``p``, one of :data:`MINIMAX_ROOTS` (1, 2, 3, 4, 6, 8).
        epsilon (float): Absolute ridge. (Default: 0.0)
        rel_epsilon (float): Ridge relative to the spectral bound, in ``[1e-8, 1]``; it sets the
            interval the schedule is designed for. (Default: 1e-4)
        precision (MatmulPrecision): Precision of the late steps' products (see the module
            docstring); the rest runs in the working precision. (Default: ``FP32``)
        scaling (SpectralScaling): How the bound ``u >= lambda_max`` is found; it must be an upper
            bound up to the schedule's 2% margin. (Default: multi-power iteration, safety factor 2)
        first_step_precision (MatmulPrecision): ``FP64`` runs the first step in float64 (see the
            module docstring), ``FP32`` at the working precision. (Default: ``FP32``)

    Returns:
        result (InverseRootResult): Roots in ``A.dtype``; residual as in the module docstring.
    """
    stack, epsilon = check_common_arguments(A, epsilon, scaling, precision)
    return run_minimax(
        stack,
        _check_root(root),
        epsilon=epsilon,
        rel_epsilon=check_minimax_rel_epsilon(rel_epsilon),
        precision=precision,
        scaling=scaling,
        first_step_precision=check_first_step_precision(first_step_precision),
    )


def run_minimax(
    stack: Tensor,
    root: int,
    *,
    epsilon: float,
    rel_epsilon: float,
    precision: MatmulPrecision,
    scaling: SpectralScaling,
    first_step_precision: MatmulPrecision,
) -> InverseRootResult:
    """:func:`minimax_inverse_root` of an ``(N, d, d)`` stack for checked arguments."""
    problem = ScaledProblem.build(
        stack, epsilon=epsilon, rel_epsilon=rel_epsilon, scaling=scaling, precision=precision
    )
    p = 2 if root == 1 else root
    B = problem.scaled
    X: Tensor | None = None
    M = B
    H: Tensor | None = None  # M - I, from the first step in correction form on
    steps = minimax_schedule(root, rel_epsilon)
    for index, step in enumerate(steps):
        last = index == len(steps) - 1
        step_precision = _step_precision(index, step, precision, first_step_precision, p)
        if X is None:
            X, M = _plain_step(
                None, M.to(step_precision.working_dtype), step, p, last, step_precision
            )
            X, M = X.to(B.dtype), M.to(B.dtype)
        elif H is None and step_precision is precision.full:
            X, M = _plain_step(X, M, step, p, last, step_precision)
        else:
            # After a plain step M is a product of its own: shifted in place.
            H = add_to_diagonal_(M, -1.0) if H is None else H
            X, H = _correction_step(X, H, step, p, last, step_precision)
    assert X is not None
    del M, H  # not live in the residual's products
    residual = inverse_root_residual(B, X, p, precision.full)
    X = X + X.mT  # twice the symmetrised root: the result's scaling halves it
    if root == 1:
        return problem.result(batched_matmul(X, X, precision.full), root, residual, factor=0.25)
    return problem.result(X, root, residual, factor=0.5)
