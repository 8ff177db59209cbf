"""Every solver against an fp64 eigendecomposition reference, spectrum by spectrum.

Each test builds ``(N, d, d)`` stacks whose blocks share one spectrum in independent random bases,
solves them, and compares each block with ``(A + epsilon I)^{-1/p}`` computed by
``torch.linalg.eigh`` in float64 *from the input exactly as the solver received it* (so input
rounding is not an error of the solver). The error is the relative Frobenius error per block.

Working precision follows the input: float32 stacks run fp32 products, float64 stacks fp64
products (``u`` below is the unit roundoff of that precision). The Chebyshev solver by design
returns the root of a *regularised* matrix ``A + r I``, ``r = max(delta u, epsilon)`` (``u`` its
spectral bound of ``A + epsilon I``, ``delta`` its ``rel_epsilon``): it is compared with the fp64
root of exactly that matrix, and
its promise is the interpolation bound of its polynomial plus rounding.

What a solver promises in a regime is written in ``TOLERANCES`` below. ``converges=True`` means
every block is finite with error <= tolerance. ``converges=False`` marks a regime that the
working precision cannot resolve (condition ~1e8 in fp32: ``u * kappa ~ 6``): there each block
must be accurate *or flagged* (``is_finite`` False or ``residual > FLAG_RESIDUAL``), never
silently wrong.
"""

import math
from collections.abc import Callable
from typing import NamedTuple

import pytest
import torch

from distributed_shampoo_dash.solvers import (
    MULTI_POWER_ITERATION_SCALING,
    InverseRootResult,
    IterationControl,
    MatmulPrecision,
    chebyshev_inverse_root,
    coupled_newton_inverse_root,
    eigh_inverse_root,
    newton_db_inverse_root,
)
from distributed_shampoo_dash.solvers.minimax import minimax_inverse_root
from tests.solver_helpers import (
    chebyshev_relative_bound,
    reference_inverse_root,
    relative_errors,
    stack_with_eigenvalues,
    stack_with_spectrum,
)

# --------------------------------------------------------------------------------------------
# The accuracy each solver promises (relative Frobenius error per block against fp64 eigh).
# --------------------------------------------------------------------------------------------

#: A block whose residual exceeds this (or that is not finite) counts as flagged. For the
#: iterative solvers ``error <= sqrt(d) * residual`` (``~ sqrt(d) * residual / p`` near convergence;
#: see test_solver_properties.py), so an unflagged block of dimension <= 100 has an error below
#: the best-effort tolerance 0.1.
FLAG_RESIDUAL = 1e-2


class Promise(NamedTuple):
    """Tolerance on the relative error; ``converges=False``: error <= tolerance *or* flagged."""

    tolerance: float
    converges: bool = True


BEST_EFFORT = Promise(tolerance=0.1, converges=False)

#: Regimes, by the condition number kappa of the matrix actually inverted (``A + epsilon I``):
#: "well_conditioned" kappa <= 256 (flat, i^-1/2, i^-1, all-zero plus epsilon, scaled copies),
#: "condition_1e3" kappa ~ 1e3 (rank deficient: half the eigenvalues 0, epsilon = 1e-3),
#: "condition_1e6" and "condition_1e8" (log-spaced eigenvalues from 1 down to 1 / kappa).
#: Errors grow like u * kappa / p. In fp32 (u = 6e-8) that is ~3e-2 at kappa = 1e6 for every method,
#: eigh included (a backward-stable fp32 eigh moves an eigenvalue of 1e-6 by ~u); at kappa = 1e8
#: (u * kappa ~ 6) fp32 resolves nothing, so only BEST_EFFORT applies. In fp64 every regime
#: converges. The Chebyshev row is the rounding floor on top of the interpolation bound
#: ``chebyshev_relative_bound(degree, p, delta)`` of its polynomial; its shifted target has
#: kappa <= (1 + delta) / delta ~ 100 whatever the spectrum, hence one row for all regimes.
TOLERANCES: dict[str, dict[str, dict[torch.dtype, Promise]]] = {
    "eigh": {
        "well_conditioned": {torch.float32: Promise(5e-5), torch.float64: Promise(1e-12)},
        "condition_1e3": {torch.float32: Promise(2e-3), torch.float64: Promise(1e-11)},
        "condition_1e6": {torch.float32: Promise(0.5), torch.float64: Promise(1e-9)},
        # fp32 eigh is backward stable only: its residual (the decomposition's) is ~u at any
        # condition, and an eigenvalue of 1e-8 rounded towards 0 takes its root anywhere (errors
        # 0.2 to 1 seen). Promised: no unflagged non-finite root; eigenvalues rounded to <= 0
        # give a non-finite root, which is flagged.
        "condition_1e8": {
            torch.float32: Promise(math.inf, converges=False),
            torch.float64: Promise(1e-7),
        },
    },
    "coupled_newton": {
        "well_conditioned": {torch.float32: Promise(2e-5), torch.float64: Promise(1e-11)},
        "condition_1e3": {torch.float32: Promise(5e-4), torch.float64: Promise(1e-11)},
        "condition_1e6": {torch.float32: Promise(5e-2), torch.float64: Promise(1e-9)},
        "condition_1e8": {torch.float32: BEST_EFFORT, torch.float64: Promise(1e-7)},
    },
    "newton_db": {
        "well_conditioned": {torch.float32: Promise(2e-5), torch.float64: Promise(1e-11)},
        "condition_1e3": {torch.float32: Promise(5e-4), torch.float64: Promise(1e-11)},
        "condition_1e6": {torch.float32: Promise(5e-2), torch.float64: Promise(1e-9)},
        "condition_1e8": {torch.float32: BEST_EFFORT, torch.float64: Promise(1e-7)},
    },
    # Its target has kappa <= (1 + delta) / delta (delta = MINIMAX_REL_EPSILON) whatever the
    # spectrum; fp32 rounding of the first steps bounds it near 1e-3 there (root 1 squares the
    # root-2 result and doubles that), and in fp64 the schedule's own target, |1 - t| <= 1e-4.
    # The first step in fp64 keeps the same promise here (at rel_epsilon 1e-5 the later steps'
    # rounding is of the same order); its gain at 1e-6 is tested on the real factors.
    **{
        solver: {
            regime: {torch.float32: Promise(2e-3), torch.float64: Promise(1.1e-4)}
            for regime in ("well_conditioned", "condition_1e3", "condition_1e6", "condition_1e8")
        }
        for solver in ("minimax", "minimax_fp64_first_step")
    },
    "chebyshev": {
        regime: {torch.float32: Promise(3e-5), torch.float64: Promise(1e-10)}
        for regime in ("well_conditioned", "condition_1e3", "condition_1e6", "condition_1e8")
    },
}

# --------------------------------------------------------------------------------------------
# Solver settings per case ("sensible" = what a user asking for a converged root would pass).
# --------------------------------------------------------------------------------------------

PRECISION = {torch.float32: MatmulPrecision.FP32, torch.float64: MatmulPrecision.FP64}
ITERATION_TOLERANCE = {torch.float32: 1e-6, torch.float64: 1e-12}
CHEBYSHEV_DEGREE = 60
CHEBYSHEV_RELATIVE_EPSILON = 1e-2
MINIMAX_REL_EPSILON = 1e-5
MINIMAX_FIRST_STEP_PRECISION = {
    "minimax": MatmulPrecision.FP32,
    "minimax_fp64_first_step": MatmulPrecision.FP64,
}


def coupled_newton_control(dtype: torch.dtype) -> IterationControl:
    # stop_at_best=False (upstream's semantics): with the default True, blocks stop at their
    # first iterate on well-posed problems (see test_coupled_newton_default_control_converges...).
    return IterationControl(
        num_iterations=60,
        tolerance=ITERATION_TOLERANCE[dtype],
        stop_at_best=False,
        early_exit_check_interval=1,
    )


def newton_db_control(dtype: torch.dtype) -> IterationControl:
    return IterationControl(
        num_iterations=40,
        tolerance=ITERATION_TOLERANCE[dtype],
        early_exit_check_interval=1,
    )


def ridge(A: torch.Tensor, epsilon: float, dtype: torch.dtype, rel_epsilon: float) -> torch.Tensor:
    """``(N,)`` float64 ridge ``max(rel_epsilon u, epsilon)`` of the target matrix, ``u`` the
    multi-power-iteration bound of ``A + epsilon I``."""
    working_dtype = PRECISION[dtype].working_dtype
    stack = A.to(working_dtype).reshape(-1, A.shape[-1], A.shape[-1])
    shifted = stack + epsilon * torch.eye(A.shape[-1], dtype=working_dtype, device=A.device)
    scale = MULTI_POWER_ITERATION_SCALING.upper_bound(shifted).double()
    return torch.clamp(rel_epsilon * scale, min=epsilon)


def solve(
    solver: str, A: torch.Tensor, root: float, epsilon: float
) -> tuple[InverseRootResult, torch.Tensor]:
    """Runs ``solver`` with this file's settings; returns the result and its fp64 reference."""
    dtype = A.dtype
    match solver:
        case "eigh":
            result = eigh_inverse_root(A, root, epsilon=epsilon)
            shift: float | torch.Tensor = epsilon
        case "coupled_newton":
            result = coupled_newton_inverse_root(
                A,
                root,
                epsilon=epsilon,
                precision=PRECISION[dtype],
                iteration=coupled_newton_control(dtype),
            )
            shift = epsilon
        case "newton_db":
            result = newton_db_inverse_root(
                A,
                root,
                epsilon=epsilon,
                precision=PRECISION[dtype],
                iteration=newton_db_control(dtype),
            )
            shift = epsilon
        case "chebyshev":
            result = chebyshev_inverse_root(
                A,
                root,
                epsilon=epsilon,
                degree=CHEBYSHEV_DEGREE,
                rel_epsilon=CHEBYSHEV_RELATIVE_EPSILON,
                precision=PRECISION[dtype],
            )
            shift = ridge(A, epsilon, dtype, CHEBYSHEV_RELATIVE_EPSILON)
        case "minimax" | "minimax_fp64_first_step":
            result = minimax_inverse_root(
                A,
                root,
                epsilon=epsilon,
                rel_epsilon=MINIMAX_REL_EPSILON,
                precision=PRECISION[dtype],
                first_step_precision=MINIMAX_FIRST_STEP_PRECISION[solver],
            )
            shift = ridge(A, epsilon, dtype, MINIMAX_REL_EPSILON)
        case _:
            raise AssertionError(solver)
    return result, reference_inverse_root(A, root, shift)


def promised_tolerance(solver: str, regime: str, dtype: torch.dtype, root: float) -> Promise:
    promise = TOLERANCES[solver][regime][dtype]
    if solver == "chebyshev":
        bound = chebyshev_relative_bound(CHEBYSHEV_DEGREE, root, CHEBYSHEV_RELATIVE_EPSILON)
        return promise._replace(tolerance=promise.tolerance + bound)
    return promise


def check_promise(
    result: InverseRootResult, reference: torch.Tensor, promise: Promise, what: str
) -> None:
    """Asserts the promise for every block (see the module docstring)."""
    errors = relative_errors(result.inverse_root, reference)
    accurate = errors <= promise.tolerance  # False for NaN errors
    flagged = ~result.is_finite | (result.residual > FLAG_RESIDUAL)
    report = (
        f"{what}: tolerance {promise.tolerance:.1e} (converges={promise.converges}); "
        f"errors {[f'{e:.2e}' for e in errors.tolist()]}, residuals "
        f"{[f'{r:.2e}' for r in result.residual.tolist()]}, finite {result.is_finite.tolist()}"
    )
    if promise.converges:
        assert bool((accurate & result.is_finite).all()), report
    else:
        assert bool((accurate | flagged).all()), "silently wrong block: " + report


# --------------------------------------------------------------------------------------------
# Spectra: eigenvalues (largest <= 1), the epsilon the case uses, and its regime.
# --------------------------------------------------------------------------------------------


def flat(dim: int, generator: torch.Generator) -> torch.Tensor:
    return 0.5 + 0.5 * torch.rand(dim, generator=generator, dtype=torch.float64)


def power_decay(exponent: float) -> Callable[[int, torch.Generator], torch.Tensor]:
    return lambda dim, generator: torch.arange(1, dim + 1, dtype=torch.float64) ** -exponent


def log_spaced(condition: float) -> Callable[[int, torch.Generator], torch.Tensor]:
    return lambda dim, generator: torch.logspace(
        0, -math.log10(condition), dim, dtype=torch.float64
    )


def half_zero(dim: int, generator: torch.Generator) -> torch.Tensor:
    eigenvalues = flat(dim, generator)
    eigenvalues[: dim // 2] = 0.0
    return eigenvalues


def all_zero(dim: int, generator: torch.Generator) -> torch.Tensor:
    return torch.zeros(dim, dtype=torch.float64)


class SpectrumCase(NamedTuple):
    eigenvalues: Callable[[int, torch.Generator], torch.Tensor]
    epsilon: float
    regime: str


SPECTRA: dict[str, SpectrumCase] = {
    "flat": SpectrumCase(flat, 0.0, "well_conditioned"),
    "decay_i^-1/2": SpectrumCase(power_decay(0.5), 0.0, "well_conditioned"),
    "decay_i^-1": SpectrumCase(power_decay(1.0), 0.0, "well_conditioned"),
    "rank_deficient": SpectrumCase(half_zero, 1e-3, "condition_1e3"),
    "all_zero": SpectrumCase(all_zero, 1e-4, "well_conditioned"),
    "condition_1e6": SpectrumCase(log_spaced(1e6), 0.0, "condition_1e6"),
    "condition_1e8": SpectrumCase(log_spaced(1e8), 0.0, "condition_1e8"),
}

SOLVERS = ("eigh", "coupled_newton", "newton_db", "minimax", "minimax_fp64_first_step", "chebyshev")
#: Roots each solver accepts that the grid runs (Newton-DB reaches powers of two only).
ROOTS: dict[str, tuple[float, ...]] = {
    "eigh": (1, 2, 3, 4, 6),
    "coupled_newton": (1, 2, 3, 4, 6),
    "newton_db": (1, 2, 4),
    "minimax": (1, 2, 3, 4, 6),
    "minimax_fp64_first_step": (1, 2, 3, 4, 6),
    "chebyshev": (1, 2, 3, 4, 6),
}
DTYPES = (torch.float32, torch.float64)
DIMS = (1, 2, 7, 64)
NUM_BLOCKS = 5


def grid_dims(spectrum: str) -> tuple[int, ...]:
    # A 1x1 block has a single eigenvalue: spectra other than these add nothing at d = 1.
    return DIMS if spectrum in ("flat", "all_zero") else DIMS[1:]


def grid_cases() -> list:
    cases = []
    for solver in SOLVERS:
        for spectrum in SPECTRA:
            for dtype in DTYPES:
                for dim in grid_dims(spectrum):
                    for root in ROOTS[solver]:
                        cases.append(
                            pytest.param(
                                solver,
                                spectrum,
                                dtype,
                                dim,
                                root,
                                id=f"{solver}-{spectrum}-{str(dtype)[6:]}-d{dim}-p{root}",
                            )
                        )
    return cases


def check_grid_case(solver: str, spectrum: str, dtype: torch.dtype, dim: int, root: float) -> None:
    case = SPECTRA[spectrum]
    promise = promised_tolerance(solver, case.regime, dtype, root)
    A = stack_with_spectrum(case.eigenvalues, NUM_BLOCKS, dim, seed=dim).to(dtype)

    stacked, reference = solve(solver, A, root, case.epsilon)
    assert stacked.inverse_root.shape == (NUM_BLOCKS, dim, dim)
    assert stacked.inverse_root.dtype == dtype
    check_promise(stacked, reference, promise, f"d={dim}, p={root}, N={NUM_BLOCKS}")

    single, single_reference = solve(solver, A[0], root, case.epsilon)  # a (d, d) input: N = 1
    assert single.inverse_root.shape == (1, dim, dim)
    check_promise(single, single_reference, promise, f"d={dim}, p={root}, N=1")


@pytest.mark.parametrize(("solver", "spectrum", "dtype", "dim", "root"), grid_cases())
def test_solver_keeps_its_promise_on_spectrum(
    solver: str, spectrum: str, dtype: torch.dtype, dim: int, root: float
) -> None:
    check_grid_case(solver, spectrum, dtype, dim, root)


#: d = 256 only for a few spectra and the roots Shampoo uses, to keep the file fast.
LARGE_CASES = [
    ("flat", torch.float32, 5, 4),
    ("decay_i^-1", torch.float32, 1, 2),
    ("decay_i^-1", torch.float64, 1, 4),
    ("rank_deficient", torch.float32, 1, 4),
    ("condition_1e6", torch.float32, 1, 4),
]


@pytest.mark.cuda
@pytest.mark.parametrize("solver", SOLVERS)
@pytest.mark.parametrize(
    ("spectrum", "dtype", "num_blocks", "root"),
    [
        pytest.param(*case, id=f"{case[0]}-{str(case[1])[6:]}-N{case[2]}-p{case[3]}")
        for case in LARGE_CASES
    ],
)
def test_solver_keeps_its_promise_at_dimension_256(
    solver: str, spectrum: str, dtype: torch.dtype, num_blocks: int, root: int, device: torch.device
) -> None:
    case = SPECTRA[spectrum]
    A = stack_with_spectrum(case.eigenvalues, num_blocks, 256, seed=256).to(
        dtype=dtype, device=device
    )
    result, reference = solve(solver, A, root, case.epsilon)
    assert (
        result.inverse_root.shape == (num_blocks, 256, 256) and result.inverse_root.dtype == dtype
    )
    assert (
        result.inverse_root.device == result.residual.device == result.is_finite.device == A.device
    )
    check_promise(result, reference, promised_tolerance(solver, case.regime, dtype, root), "d=256")


# --------------------------------------------------------------------------------------------
# Scale: the relative error of a well-conditioned spectrum does not depend on its scale.
# --------------------------------------------------------------------------------------------


def scale_cases() -> list:
    cases = []
    for solver in SOLVERS:
        for dtype in DTYPES:
            for scale in (1e-30, 1e30):
                for root in (1, 2, 4):
                    cases.append(
                        pytest.param(
                            solver,
                            dtype,
                            scale,
                            root,
                            id=f"{solver}-{str(dtype)[6:]}-{scale:.0e}-p{root}",
                        )
                    )
    return cases


@pytest.mark.parametrize(("solver", "dtype", "scale", "root"), scale_cases())
def test_relative_error_does_not_depend_on_the_scale(
    solver: str, dtype: torch.dtype, scale: float, root: int
) -> None:
    unit = stack_with_spectrum(power_decay(0.5), NUM_BLOCKS, 64, seed=3)
    promise = promised_tolerance(solver, "well_conditioned", dtype, root)

    unscaled, unscaled_reference = solve(solver, unit.to(dtype), root, 0.0)
    scaled, scaled_reference = solve(solver, (unit * scale).to(dtype), root, 0.0)

    check_promise(scaled, scaled_reference, promise, f"scale {scale:.0e}")
    unscaled_errors = relative_errors(unscaled.inverse_root, unscaled_reference)
    scaled_errors = relative_errors(scaled.inverse_root, scaled_reference)
    # Same relative error up to rounding (the scaled input is rounded differently): within a
    # factor 2, or within a few units of the working precision when both are at rounding level.
    slack = 8 * torch.finfo(PRECISION[dtype].working_dtype).eps
    assert bool(((scaled_errors - unscaled_errors).abs() <= unscaled_errors + slack).all()), (
        scaled_errors,
        unscaled_errors,
    )
    torch.testing.assert_close(scaled.residual, unscaled.residual, rtol=1.0, atol=slack)


# --------------------------------------------------------------------------------------------
# All-zero blocks, 2-D input and dtypes.
# --------------------------------------------------------------------------------------------


@pytest.mark.cuda
@pytest.mark.parametrize("solver", ["eigh", "coupled_newton", "newton_db"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("root", [1, 2, 4])
def test_all_zero_block_gives_epsilon_root_of_identity(
    solver: str, dtype: torch.dtype, root: int, device: torch.device
) -> None:
    epsilon = 1e-4
    result, _ = solve(solver, torch.zeros(3, 6, 6, dtype=dtype, device=device), root, epsilon)
    expected = epsilon ** (-1.0 / root) * torch.eye(6, dtype=dtype, device=device).expand(3, 6, 6)
    tolerance = TOLERANCES[solver]["well_conditioned"][dtype].tolerance
    torch.testing.assert_close(result.inverse_root, expected, rtol=tolerance, atol=0.0)


@pytest.mark.parametrize("solver", SOLVERS)
def test_all_zero_block_without_epsilon_is_flagged(solver: str) -> None:
    """``0^{-1/p}`` does not exist: the block must come back flagged, and without 0/0."""
    zero = torch.zeros(2, 5, 5)
    match solver:
        case "eigh":
            result = eigh_inverse_root(zero, 2)
        case "coupled_newton":
            result = coupled_newton_inverse_root(zero, 2)
        case "newton_db":
            result = newton_db_inverse_root(zero, 2)
        case "chebyshev":
            result = chebyshev_inverse_root(zero, 2)
        case "minimax":
            result = minimax_inverse_root(zero, 2)
        case "minimax_fp64_first_step":
            result = minimax_inverse_root(zero, 2, first_step_precision=MatmulPrecision.FP64)
    flagged = ~result.is_finite | (result.residual > FLAG_RESIDUAL)
    if solver in ("chebyshev", "minimax", "minimax_fp64_first_step"):
        # Their target (0 + r I)^{-1/2}, r the relative ridge of the smallest normal bound, exists:
        # it must not produce NaN from 0 / 0.
        assert not bool(result.inverse_root.isnan().any())
    else:
        assert bool(flagged.all()), (result.residual, result.is_finite)


DEFAULT_SOLVERS: dict[str, Callable[[torch.Tensor], InverseRootResult]] = {
    "eigh": lambda A: eigh_inverse_root(A, 4),
    "coupled_newton": lambda A: coupled_newton_inverse_root(A, 4),
    "newton_db": lambda A: newton_db_inverse_root(A, 4),
    "minimax": lambda A: minimax_inverse_root(A, 4),
    "minimax_fp64_first_step": lambda A: minimax_inverse_root(
        A, 4, first_step_precision=MatmulPrecision.FP64
    ),
    "chebyshev": lambda A: chebyshev_inverse_root(A, 4),
}


@pytest.mark.parametrize("solver", SOLVERS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_two_dimensional_input_is_a_stack_of_one_in_its_own_dtype(
    solver: str, dtype: torch.dtype
) -> None:
    A = stack_with_spectrum(flat, 1, 7, seed=1)[0].to(dtype)
    result = DEFAULT_SOLVERS[solver](A)
    assert result.inverse_root.shape == (1, 7, 7)
    assert result.inverse_root.dtype == dtype
    assert result.residual.shape == (1,) and result.residual.dtype == torch.float32
    assert result.is_finite.shape == (1,) and result.is_finite.dtype == torch.bool
    stacked = DEFAULT_SOLVERS[solver](A.unsqueeze(0))
    torch.testing.assert_close(result.inverse_root, stacked.inverse_root, rtol=0.0, atol=0.0)


def test_chebyshev_paper_setting_is_within_its_interpolation_bound() -> None:
    """Degree 60 with ``delta = 1e-3``: the error against the shifted target is the fit's bound."""
    A = stack_with_spectrum(power_decay(1.0), NUM_BLOCKS, 64, seed=4).float()
    result = chebyshev_inverse_root(A, 4, degree=60, rel_epsilon=1e-3)
    scale = MULTI_POWER_ITERATION_SCALING.upper_bound(A).double()
    errors = relative_errors(result.inverse_root, reference_inverse_root(A, 4, 1e-3 * scale))
    bound = chebyshev_relative_bound(60, 4, 1e-3)
    assert 1e-3 < bound < 1e-2  # the paper's setting is a ~0.6% fit, not a converged root
    assert bool(
        (
            errors <= bound + TOLERANCES["chebyshev"]["well_conditioned"][torch.float32].tolerance
        ).all()
    )


# --------------------------------------------------------------------------------------------
# Coupled Newton with its default control (stop at best): never silently wrong, but see below.
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("spectrum", list(SPECTRA))
@pytest.mark.parametrize("dim", [2, 7, 64])
def test_coupled_newton_default_control_is_accurate_or_flagged(spectrum: str, dim: int) -> None:
    case = SPECTRA[spectrum]
    A = stack_with_spectrum(case.eigenvalues, NUM_BLOCKS, dim, seed=dim).float()
    for root in (2, 4):
        result = coupled_newton_inverse_root(A, root, epsilon=case.epsilon)
        reference = reference_inverse_root(A, root, case.epsilon)
        promise = TOLERANCES["coupled_newton"][case.regime][torch.float32]
        check_promise(result, reference, promise._replace(converges=False), f"p={root}")


# --------------------------------------------------------------------------------------------
# Stopping rules on inputs where a naive rule stops a block at its first iterates.
# --------------------------------------------------------------------------------------------


def test_coupled_newton_default_control_converges_at_condition_1e3() -> None:
    """Upstream's entrywise ``max |M - I|`` rises from 0.868 to 0.923 at the first step of this
    2x2 block: judged by it, the block would stop at its first iterate (error 0.96)."""
    rotation = torch.tensor(
        [[math.cos(0.3), -math.sin(0.3)], [math.sin(0.3), math.cos(0.3)]], dtype=torch.float64
    )
    A = stack_with_eigenvalues(
        torch.tensor([1.0, 1e-3], dtype=torch.float64), rotation.unsqueeze(0)
    )
    result = coupled_newton_inverse_root(A, 2)  # default: 100 iterations, tolerance 1e-6
    assert relative_errors(result.inverse_root, reference_inverse_root(A, 2, 0.0)).item() < 1e-4


def test_newton_db_in_fp64_converges_on_a_two_cluster_spectrum_at_condition_1e8() -> None:
    """The residual changes by ~1e-8 per step while the small eigenvalue grows: below float32
    resolution, so the stopping rule must judge it in the working dtype and tolerate stalls."""
    A = torch.diag(torch.tensor([1.0, 1e-8], dtype=torch.float64))
    result = newton_db_inverse_root(
        A, 2, precision=MatmulPrecision.FP64, iteration=IterationControl(num_iterations=60)
    )
    assert relative_errors(result.inverse_root, reference_inverse_root(A, 2, 0.0)).item() < 1e-8


@pytest.mark.parametrize("solver", ["newton_db", "chebyshev"])
def test_power_iteration_scaling_survives_float32_entries_near_1e20(solver: str) -> None:
    """Squares of entries >~1e19 overflow float32: the power iteration must not square them."""
    A = 1e20 * torch.diag(torch.tensor([1.0, 0.5, 0.25]))
    result = DEFAULT_SOLVERS[solver](A)
    assert bool(result.is_finite.all())
    reference = reference_inverse_root(
        A, 4, CHEBYSHEV_RELATIVE_EPSILON * 1e20 if solver == "chebyshev" else 0.0
    )
    assert relative_errors(result.inverse_root, reference).item() < 1e-2
