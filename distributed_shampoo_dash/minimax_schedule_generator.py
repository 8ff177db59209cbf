"""The generator of ``distributed_shampoo_dash/solvers/minimax_schedules.py``: the minimax
polynomial schedules of the coupled inverse-root iteration, one per root and relative ridge.

Math. The iteration (``solvers/minimax.py``) keeps ``X -> B^{-1/p}`` and ``M = X^p B -> I`` and
applies ``P = q(M) = a I + b M + c M^2``, ``X <- X P``, ``M <- P^p M``. Every iterate is a function
of ``B``: for an eigenvalue ``b`` of ``B`` write ``t = x b^{1/p}`` (``x`` the eigenvalue of ``X``);
one step is the scalar map

    t <- f(t) = t q(t^p) = a t + b t^(p+1) + c t^(2p+1),      t_0 = b^{1/p},

and ``t = 1`` means ``X = B^{-1/p}``. With the ridge of ``solvers/problem.py`` the spectrum of
``B`` lies in ``[l, 1]``, ``l = rel_epsilon / (1 + rel_epsilon)``, so ``t_0`` lies in
``[l^{1/p}, 1]`` for every block.

Greedy minimax (Polar Express, Amsel et al., arXiv 2505.16932, for the sign function): for the
current guaranteed interval ``[lo, hi]`` of ``t`` choose the ``f`` in ``span{t, t^(p+1),
t^(2p+1)}`` that minimises ``max |1 - f|`` over ``[lo, hi + margin (hi - lo)]`` (the margin
absorbs a spectral bound slightly below ``lambda_max`` and rounding above 1: these polynomials
rise steeply above their interval). Its image is ``[1 - E, 1 + E]``, the next interval; stop once
``E <= target``. ``{1, t, t^(p+1), t^(2p+1)}`` is a Haar system on ``t > 0`` (Descartes' rule of
signs), so the best ``f`` is unique and equioscillates at ``lo``, the two positive critical points
of ``f`` and the top; the Remez exchange below solves a 4 x 4 system and a quadratic per sweep, in
the centred variable ``u = (t^p - m_c) / h`` that keeps the system well conditioned on narrow
intervals. Below a half-width of 1e-4 the minimax error is beneath double-precision resolution
and the osculating polynomial (``f(1) = 1``, ``f'(1) = f''(1) = 0``) is used instead.

Every step is checked on a dense grid: ``f`` rises from 0 up to its first critical point (which
lies above ``lo``), so an eigenvalue below the design interval is under-inverted, never
over-inverted, and ``0 <= f <= 1 + E`` on ``[0, hi + margin (hi - lo)]``.

The stored table covers roots 2, 3, 4, 6 and 8 and ``rel_epsilon`` in ``{1, 2, 3, 5} x 10^-k``
from 1e-8 to 5e-1 (and 1); the solver uses the schedule of the largest tabulated ``rel_epsilon``
not above its own, which is exact for tabulated values and conservative otherwise. Only the
standard library is used, so the generation is deterministic to the last bit on a given Python.

:func:`schedule` computes one schedule, :func:`module_source` the text of the stored module;
``scripts/generate_minimax_schedules.py`` writes it (``--check`` compares).
"""

import itertools
import math
from dataclasses import dataclass

#: Stop once the guaranteed ``|1 - t|`` is at most this.
TARGET = 1e-4


#: Fraction of the interval's width added above its top.
MARGIN = 0.02


#: Roots with a stored schedule (root 1 uses root 2 and squares).
ROOTS = (2, 3, 4, 6, 8)


#: Tabulated relative ridges.
REL_EPSILONS = tuple(
    sorted(
        {float(f"{mantissa}e{exponent}") for exponent in range(-8, 0) for mantissa in (1, 2, 3, 5)}
        | {1.0}
    )
)


#: Below this half-width of the interval around 1 the osculating polynomial is used.
NARROW_HALF_WIDTH = 1e-4


Coefficients = tuple[float, float, float]


@dataclass(frozen=True)
class Step:
    """One polynomial of a schedule: ``q(m) = a + b m + c m^2`` for ``t`` in ``[lo, hi]``.

    Attributes:
        coefficients (Coefficients): ``(a, b, c)``.
        lo (float), hi (float): The guaranteed interval of ``t`` before the step.
        error (float): ``E``, the half-width of the interval around 1 after it.
    """

    coefficients: Coefficients
    lo: float
    hi: float
    error: float

    @property
    def half_width(self) -> float:
        """``max(1 - lo, hi - 1)``: how far from converged the step starts."""
        return max(1.0 - self.lo, self.hi - 1.0)


def f(t: float, coefficients: Coefficients, p: int) -> float:
    """``f(t) = t q(t^p)``."""
    a, b, c = coefficients
    m = t**p
    return t * (a + m * (b + m * c))


def solve(matrix: list[list[float]], rhs: list[float]) -> list[float]:
    """Gaussian elimination with partial pivoting."""
    n = len(rhs)
    rows = [row[:] + [value] for row, value in zip(matrix, rhs, strict=True)]
    for column in range(n):
        pivot = max(range(column, n), key=lambda r: abs(rows[r][column]))
        rows[column], rows[pivot] = rows[pivot], rows[column]
        for r in range(column + 1, n):
            factor = rows[r][column] / rows[column][column]
            for c in range(column, n + 1):
                rows[r][c] -= factor * rows[column][c]
    x = [0.0] * n
    for r in range(n - 1, -1, -1):
        x[r] = (rows[r][n] - sum(rows[r][c] * x[c] for c in range(r + 1, n))) / rows[r][r]
    return x


def equioscillating(points: list[float], p: int) -> tuple[Coefficients, float, list[float]]:
    """The ``f`` with ``1 - f(s_i) = (-1)^i E`` at the four reference points, its ``E``, and its
    positive critical points, sorted.

    Unknowns are the coefficients ``(alpha, beta, gamma)`` of ``q`` in ``u = (m - m_c) / h``,
    ``m = t^p``, converted to ``(a, b, c)``; the critical points are the roots of ``t f'(t)``, a
    quadratic in ``u``.
    """
    ms = [t**p for t in points]
    m_c, h = 0.5 * (ms[0] + ms[-1]), 0.5 * (ms[-1] - ms[0])
    rows = []
    for t, m, sign in zip(points, ms, (1.0, -1.0, 1.0, -1.0), strict=True):
        u = (m - m_c) / h
        rows.append([t, t * u, t * u * u, sign])
    alpha, beta, gamma, error = solve(rows, [1.0] * 4)
    a = alpha - beta * m_c / h + gamma * m_c * m_c / (h * h)
    b = beta / h - 2.0 * gamma * m_c / (h * h)
    c = gamma / (h * h)
    ratio = m_c / h
    q2, q1, q0 = (
        gamma * (1 + 2 * p),
        beta * (1 + p) + 2 * gamma * p * ratio,
        alpha + beta * p * ratio,
    )
    critical = []
    discriminant = q1 * q1 - 4 * q2 * q0
    if q2 != 0 and discriminant >= 0:
        root = -0.5 * (q1 + math.copysign(math.sqrt(discriminant), q1))
        if root != 0:
            for u in (root / q2, q0 / root):
                m = m_c + h * u
                if m > 0:
                    critical.append(m ** (1.0 / p))
    return (a, b, c), error, sorted(critical)


def minimax(lo: float, hi: float, p: int) -> tuple[Coefficients, float, float]:
    """Best ``f`` to 1 on ``[lo, hi]`` in the max norm by Remez exchange.

    Returns ``(coefficients, E, first critical point)``.
    """
    ratio = hi / lo
    points = [lo, lo * ratio**0.35, lo * ratio**0.8, hi]
    for _ in range(100):
        _, _, critical = equioscillating(points, p)
        critical = [t for t in critical if lo < t < hi]
        if len(critical) != 2:
            raise RuntimeError(f"Remez lost the alternation on [{lo}, {hi}] for p={p}")
        new = [lo, critical[0], critical[1], hi]
        moved = max(abs(n - o) for n, o in zip(new, points, strict=True)) / (hi - lo)
        points = new
        if moved < 1e-13:
            break
    coefficients, error, _ = equioscillating(points, p)
    levels = [abs(1.0 - f(t, coefficients, p)) for t in points]
    if not error > 0 or max(abs(level - error) for level in levels) > 1e-6 * error + 1e-15:
        raise RuntimeError(f"Remez did not equioscillate on [{lo}, {hi}] for p={p}: {levels}")
    return coefficients, error, points[1]


def osculating(p: int) -> Coefficients:
    """The ``q`` with ``f(1) = 1`` and ``f'(1) = f''(1) = 0``."""
    exponents = (1, p + 1, 2 * p + 1)
    rows = [[1.0] * 3, [float(n) for n in exponents], [float(n * (n - 1)) for n in exponents]]
    a, b, c = solve(rows, [1.0, 0.0, 0.0])
    return (a, b, c)


def taylor_error(coefficients: Coefficients, p: int, half_width: float) -> float:
    """``max |1 - f(1 + e)|`` over ``|e| <= half_width`` from the Taylor series at 1."""
    exponents = (1, p + 1, 2 * p + 1)
    worst = 0.0
    for k in range(41):
        e = -half_width + 2 * half_width * k / 40
        value = 1.0 - sum(coefficients)
        for order in range(1, 2 * p + 2):
            derivative = sum(
                coefficient * math.perm(n, order)
                for coefficient, n in zip(coefficients, exponents, strict=True)
                if n >= order
            )
            value -= derivative * e**order / math.factorial(order)
        worst = max(worst, abs(value))
    return worst


def check_step(step: Step, p: int, first_critical: float, grid: int = 4001) -> None:
    """Raises unless ``f`` rises from 0 to its first critical point and stays in
    ``[0, 1 + E]`` on ``[0, hi + margin (hi - lo)]``."""
    rising = [f(first_critical * i / (grid - 1), step.coefficients, p) for i in range(grid)]
    if any(later < earlier for earlier, later in itertools.pairwise(rising)):
        raise RuntimeError(f"f is not increasing below its interval: {step}")
    top = step.hi + MARGIN * (step.hi - step.lo)
    values = [f(top * i / (grid - 1), step.coefficients, p) for i in range(grid)]
    if min(values) < 0 or max(values) > (1 + step.error) * (1 + 1e-12):
        raise RuntimeError(f"f leaves [0, 1 + E] on [0, top]: {step}")


def schedule(rel_epsilon: float, p: int) -> list[Step]:
    """The greedy schedule from ``t_0`` in ``[l^{1/p}, 1]``,
    ``l = rel_epsilon / (1 + rel_epsilon)``.
    """
    lo, hi = (rel_epsilon / (1.0 + rel_epsilon)) ** (1.0 / p), 1.0
    steps = []
    while True:
        top = hi + MARGIN * (hi - lo)
        half_width = max(1.0 - lo, top - 1.0)
        if half_width < NARROW_HALF_WIDTH:
            coefficients = osculating(p)
            error, first_critical = taylor_error(coefficients, p, half_width), 1.0
        else:
            coefficients, error, first_critical = minimax(lo, top, p)
        step = Step(coefficients, lo, hi, error)
        check_step(step, p, first_critical)
        steps.append(step)
        if error <= TARGET:
            return steps
        lo, hi = 1.0 - error, 1.0 + error


def module_source() -> str:
    """The text of ``minimax_schedules.py``."""
    lines = [
        '"""Minimax polynomial schedules of the coupled inverse-root iteration (generated file).',
        "",
        "Written by ``python3 scripts/generate_minimax_schedules.py`` (which documents the math);",
        "``--check`` regenerates and compares. Do not edit by hand.",
        "",
        (
            "``SCHEDULES[p][rel_epsilon]`` is the schedule for root ``p`` when the spectrum of the "
            "scaled"
        ),
        (
            "matrix lies in ``[rel_epsilon / (1 + rel_epsilon), 1]``: "
            "one ``(a, b, c, half_width)`` per"
        ),
        (
            "iteration, ``q(m) = a + b m + c m^2`` and ``half_width`` the guaranteed "
            "``max |1 - t|`` before"
        ),
        f"the step. Target ``|1 - t| <= {TARGET:g}`` after the last step, top margin {MARGIN:g}.",
        '"""',
        "",
        f"TARGET = {TARGET!r}",
        f"MARGIN = {MARGIN!r}",
        "",
        "SCHEDULES: dict[int, dict[float, tuple[tuple[float, float, float, float], ...]]] = {",
    ]
    for p in ROOTS:
        lines.append(f"    {p}: {{")
        for rel_epsilon in REL_EPSILONS:
            lines.append(f"        {rel_epsilon!r}: (")
            for step in schedule(rel_epsilon, p):
                a, b, c = step.coefficients
                lines.append(f"            ({a!r}, {b!r}, {c!r}, {step.half_width!r}),")
            lines.append("        ),")
        lines.append("    },")
    lines.append("}")
    return "\n".join(lines) + "\n"
