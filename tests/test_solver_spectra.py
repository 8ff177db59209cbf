"""Every solver against an fp64 eigendecomposition reference, spectrum by spectrum.

Each test builds ``(N, d, d)`` stacks whose blocks share one spectrum in independent random bases,
solves them, and compares each block with ``(A + epsilon I)^{-1/p}`` computed by
``torch.linalg.eigh`` in float64 *from the input exactly as the solver received it* (so input
rounding is not an error of the solver). The error is the relative Frobenius error per block.

Working precision follows the input: float32 stacks run fp32 products, float64 stacks fp64
products (``u`` below is the unit roundoff of that precision). The Chebyshev solver by design
returns the root of a *regularised* matrix ``A + r I``, ``r = max(delta u, epsilon)`` (``u`` its
spectral bound of ``A + epsilon I``, ``delta`` its ``rel_epsilon``), and so does the minimax
iteration: each is compared with the fp64 root of exactly that matrix; Chebyshev's promise is the
interpolation bound of its polynomial plus rounding.

Each solver runs as its case of ``tests/solver_cases.py`` (every registry entry, and minimax with
an fp64 first step), at the case's converged settings, and keeps the promise written there for
the regime. ``converges=True`` means every block is finite with error <= tolerance.
``converges=False`` marks a regime that the working precision cannot resolve (condition ~1e8 in
fp32: ``u * kappa ~ 6``): there each block must be accurate *or flagged* (``is_finite`` False or
``residual > FLAG_RESIDUAL``), never silently wrong.
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
    ScalingMethod,
    chebyshev_inverse_root,
    coupled_newton_inverse_root,
    newton_db_inverse_root,
)
from tests.solver_cases import (
    ACCURACY_CASES,
    ENTRIES,
    FLAG_RESIDUAL,
    PRECISION,
    Promise,
    SolverCase,
    case_names,
)
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

#: The roots the grid runs, where a solver computes them (Newton-DB reaches powers of two only).
ROOTS = (1, 2, 3, 4, 6)
DTYPES = (torch.float32, torch.float64)
DIMS = (1, 2, 7, 64)
NUM_BLOCKS = 5


def grid_dims(spectrum: str) -> tuple[int, ...]:
    # A 1x1 block has a single eigenvalue: spectra other than these add nothing at d = 1.
    return DIMS if spectrum in ("flat", "all_zero") else DIMS[1:]


def grid_cases() -> list:
    cases = []
    for solver in ACCURACY_CASES:
        for spectrum in SPECTRA:
            for dtype in DTYPES:
                for dim in grid_dims(spectrum):
                    for root in filter(solver.solver.supports_root, ROOTS):
                        cases.append(
                            pytest.param(
                                solver,
                                spectrum,
                                dtype,
                                dim,
                                root,
                                id=f"{solver.name}-{spectrum}-{str(dtype)[6:]}-d{dim}-p{root}",
                            )
                        )
    return cases


def check_grid_case(
    solver: SolverCase, spectrum: str, dtype: torch.dtype, dim: int, root: float
) -> None:
    case = SPECTRA[spectrum]
    promise = solver.promise(case.regime, dtype, root)
    A = stack_with_spectrum(case.eigenvalues, NUM_BLOCKS, dim, seed=dim).to(dtype)

    stacked, reference = solver.solve(A, root, case.epsilon)
    assert stacked.inverse_root.shape == (NUM_BLOCKS, dim, dim)
    assert stacked.inverse_root.dtype == dtype
    check_promise(stacked, reference, promise, f"d={dim}, p={root}, N={NUM_BLOCKS}")

    single, single_reference = solver.solve(A[0], root, case.epsilon)  # a (d, d) input: N = 1
    assert single.inverse_root.shape == (1, dim, dim)
    check_promise(single, single_reference, promise, f"d={dim}, p={root}, N=1")


@pytest.mark.parametrize(("solver", "spectrum", "dtype", "dim", "root"), grid_cases())
def test_solver_keeps_its_promise_on_spectrum(
    solver: SolverCase, spectrum: str, dtype: torch.dtype, dim: int, root: float
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
@pytest.mark.parametrize("solver", ACCURACY_CASES, ids=case_names(ACCURACY_CASES))
@pytest.mark.parametrize(
    ("spectrum", "dtype", "num_blocks", "root"),
    [
        pytest.param(*case, id=f"{case[0]}-{str(case[1])[6:]}-N{case[2]}-p{case[3]}")
        for case in LARGE_CASES
    ],
)
def test_solver_keeps_its_promise_at_dimension_256(
    solver: SolverCase,
    spectrum: str,
    dtype: torch.dtype,
    num_blocks: int,
    root: int,
    device: torch.device,
) -> None:
    case = SPECTRA[spectrum]
    A = stack_with_spectrum(case.eigenvalues, num_blocks, 256, seed=256).to(
        dtype=dtype, device=device
    )
    result, reference = solver.solve(A, root, case.epsilon)
    assert (
        result.inverse_root.shape == (num_blocks, 256, 256) and result.inverse_root.dtype == dtype
    )
    assert (
        result.inverse_root.device == result.residual.device == result.is_finite.device == A.device
    )
    check_promise(result, reference, solver.promise(case.regime, dtype, root), "d=256")


# --------------------------------------------------------------------------------------------
# Scale: the relative error of a well-conditioned spectrum does not depend on its scale.
# --------------------------------------------------------------------------------------------


def scale_cases() -> list:
    cases = []
    for solver in ACCURACY_CASES:
        for dtype in DTYPES:
            for scale in (1e-30, 1e30):
                for root in (1, 2, 4):
                    cases.append(
                        pytest.param(
                            solver,
                            dtype,
                            scale,
                            root,
                            id=f"{solver.name}-{str(dtype)[6:]}-{scale:.0e}-p{root}",
                        )
                    )
    return cases


@pytest.mark.parametrize(("solver", "dtype", "scale", "root"), scale_cases())
def test_relative_error_does_not_depend_on_the_scale(
    solver: SolverCase, dtype: torch.dtype, scale: float, root: int
) -> None:
    unit = stack_with_spectrum(power_decay(0.5), NUM_BLOCKS, 64, seed=3)
    promise = solver.promise("well_conditioned", dtype, root)

    unscaled, unscaled_reference = solver.solve(unit.to(dtype), root, 0.0)
    scaled, scaled_reference = solver.solve((unit * scale).to(dtype), root, 0.0)

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


#: Cases whose converged settings have no relative ridge: their root of ``0 + epsilon I`` is
#: ``epsilon^{-1/p} I``.
UNRIDGED_CASES = tuple(
    case
    for case in ACCURACY_CASES
    if case.relative_ridge(**case.converged_options(torch.float32)) == 0
)


@pytest.mark.cuda
@pytest.mark.parametrize("solver", UNRIDGED_CASES, ids=case_names(UNRIDGED_CASES))
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("root", [1, 2, 4])
def test_all_zero_block_gives_epsilon_root_of_identity(
    solver: SolverCase, dtype: torch.dtype, root: int, device: torch.device
) -> None:
    epsilon = 1e-4
    result, _ = solver.solve(torch.zeros(3, 6, 6, dtype=dtype, device=device), root, epsilon)
    expected = epsilon ** (-1.0 / root) * torch.eye(6, dtype=dtype, device=device).expand(3, 6, 6)
    tolerance = solver.promises["well_conditioned"][dtype].tolerance
    torch.testing.assert_close(result.inverse_root, expected, rtol=tolerance, atol=0.0)


@pytest.mark.parametrize("solver", ACCURACY_CASES, ids=case_names(ACCURACY_CASES))
def test_all_zero_block_without_epsilon_is_flagged(solver: SolverCase) -> None:
    """``0^{-1/p}`` does not exist: the block must come back flagged, and without 0/0."""
    result = solver(torch.zeros(2, 5, 5), 2)
    flagged = ~result.is_finite | (result.residual > FLAG_RESIDUAL)
    if solver.relative_ridge() > 0:
        # Their target (0 + r I)^{-1/2}, r the relative ridge of the smallest normal bound, exists:
        # it must not produce NaN from 0 / 0.
        assert not bool(result.inverse_root.isnan().any())
    else:
        assert bool(flagged.all()), (result.residual, result.is_finite)


@pytest.mark.parametrize("solver", ACCURACY_CASES, ids=case_names(ACCURACY_CASES))
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_two_dimensional_input_is_a_stack_of_one_in_its_own_dtype(
    solver: SolverCase, dtype: torch.dtype
) -> None:
    A = stack_with_spectrum(flat, 1, 7, seed=1)[0].to(dtype)
    result = solver(A, 4)
    assert result.inverse_root.shape == (1, 7, 7)
    assert result.inverse_root.dtype == dtype
    assert result.residual.shape == (1,) and result.residual.dtype == torch.float32
    assert result.is_finite.shape == (1,) and result.is_finite.dtype == torch.bool
    stacked = solver(A.unsqueeze(0), 4)
    torch.testing.assert_close(result.inverse_root, stacked.inverse_root, rtol=0.0, atol=0.0)


def test_chebyshev_paper_setting_is_within_its_interpolation_bound() -> None:
    """Degree 60 with ``delta = 1e-3``: the error against the shifted target is the fit's bound."""
    A = stack_with_spectrum(power_decay(1.0), NUM_BLOCKS, 64, seed=4).float()
    result = chebyshev_inverse_root(A, 4, degree=60, rel_epsilon=1e-3)
    scale = MULTI_POWER_ITERATION_SCALING.upper_bound(A).double()
    errors = relative_errors(result.inverse_root, reference_inverse_root(A, 4, 1e-3 * scale))
    bound = chebyshev_relative_bound(60, 4, 1e-3)
    assert 1e-3 < bound < 1e-2  # the paper's setting is a ~0.6% fit, not a converged root
    rounding = ENTRIES["chebyshev"].promises["well_conditioned"][torch.float32].tolerance
    assert bool((errors <= bound + rounding).all())


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
        promise = ENTRIES["coupled_newton"].promises[case.regime][torch.float32]
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


#: Cases whose default spectral bound is a power iteration.
POWER_ITERATION_CASES = tuple(
    case
    for case in ACCURACY_CASES
    if "scaling" in case.solver.options
    and case.effective_options()["scaling"].method is not ScalingMethod.FROBENIUS
)


@pytest.mark.parametrize("solver", POWER_ITERATION_CASES, ids=case_names(POWER_ITERATION_CASES))
def test_power_iteration_scaling_survives_float32_entries_near_1e20(solver: SolverCase) -> None:
    """Squares of entries >~1e19 overflow float32: the power iteration must not square them."""
    A = 1e20 * torch.diag(torch.tensor([1.0, 0.5, 0.25]))
    result = solver(A, 4)
    assert bool(result.is_finite.all())
    reference = reference_inverse_root(A, 4, solver.target_ridge(A, 0.0))
    assert relative_errors(result.inverse_root, reference).item() < 1e-2
