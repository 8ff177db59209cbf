"""Properties every solver must have, whatever the block: batching, symmetry, honest residuals,
safe spectral bounds, ordered matmul precisions, and no process-global side effects.

The hypothesis tests draw SPD blocks ``Q diag(10^l) Q^T`` with ``d`` in 1..24, log10-eigenvalues
``l`` in ``[-3, 0]`` (condition <= 1e3) and ``Q`` from the QR of a seeded Gaussian matrix. Solver
settings and tolerances are those of the solver cases (``tests/solver_cases.py``: their converged
settings and ``condition_1e3`` promises), the settings of ``tests/test_solver_spectra.py``.
"""

import math
from collections.abc import Callable
from functools import partial
from typing import Any

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from distributed_shampoo_dash import step_costs
from distributed_shampoo_dash.solvers import (
    FROBENIUS_SCALING,
    MULTI_POWER_ITERATION_SCALING,
    InverseRootResult,
    IterationControl,
    MatmulPrecision,
    ScalingMethod,
    SpectralScaling,
)
from distributed_shampoo_dash.solvers.linalg import finite_blocks, stable_power
from distributed_shampoo_dash.solvers.scaling import (
    normalization_interval,
    normalized_rayleigh_lambda_max,
    rayleigh_lambda_max,
)
from tests.solver_cases import (
    ACCURACY_CASES,
    ENTRY_CASES,
    FLAG_RESIDUAL,
    SolverCase,
    case_names,
)
from tests.solver_helpers import (
    random_orthogonal,
    reference_inverse_root,
    relative_errors,
    stack_with_eigenvalues,
)

PROPERTY_SETTINGS = settings(max_examples=30, deadline=None, derandomize=True)
MAX_LOG10_CONDITION = 3.0
DTYPES = (torch.float32, torch.float64)


# --------------------------------------------------------------------------------------------
# (a) A batched call equals the per-block calls.
# --------------------------------------------------------------------------------------------

BATCH_EPSILON = 1e-3


def mixed_stack(dim: int = 16) -> torch.Tensor:
    """Five float32 blocks: flat, i^-1, condition 1e3, half zero (epsilon decides), condition
    1e6.
    """
    generator = torch.Generator().manual_seed(0)
    half = dim // 2
    eigenvalues = torch.stack(
        [
            0.5 + 0.5 * torch.rand(dim, generator=generator, dtype=torch.float64),
            torch.arange(1, dim + 1, dtype=torch.float64) ** -1.0,
            torch.logspace(0, -3, dim, dtype=torch.float64),
            torch.cat(
                [
                    torch.zeros(half, dtype=torch.float64),
                    torch.ones(dim - half, dtype=torch.float64),
                ]
            ),
            torch.logspace(0, -6, dim, dtype=torch.float64),
        ]
    )
    return stack_with_eigenvalues(eigenvalues, random_orthogonal(5, dim, generator)).float()


def with_each_spectral_bound(cases: tuple[SolverCase, ...]) -> tuple[SolverCase, ...]:
    """``cases``, and a ``_frobenius`` variant of each whose default bound is another one."""
    frobenius = tuple(
        case.variant("frobenius", scaling=FROBENIUS_SCALING)
        for case in cases
        if "scaling" in case.solver.options
        and case.effective_options()["scaling"].method is not ScalingMethod.FROBENIUS
    )
    return (*cases, *frobenius)


#: Every solver, with each spectral bound (the power-iteration start vectors are the same for
#: every block, so a block's bound does not depend on the stack it is in).
BATCHABLE_CASES = with_each_spectral_bound(ENTRY_CASES)


def per_block(solver: SolverCase, A: torch.Tensor) -> InverseRootResult:
    results = [solver(A[i], 4, epsilon=BATCH_EPSILON) for i in range(A.shape[0])]
    return InverseRootResult(*(torch.cat(parts) for parts in zip(*results, strict=True)))


@pytest.mark.parametrize("solver", BATCHABLE_CASES, ids=case_names(BATCHABLE_CASES))
def test_batched_call_equals_per_block_calls_to_fp32_rounding(solver: SolverCase) -> None:
    A = mixed_stack()
    batched = solver(A, 4, epsilon=BATCH_EPSILON)
    single = per_block(solver, A)
    # A different BLAS may block batched and single products differently: fp32 rounding only.
    assert relative_errors(batched.inverse_root, single.inverse_root.double()).max() <= 1e-6
    torch.testing.assert_close(batched.residual, single.residual, rtol=1e-5, atol=1e-7)
    assert torch.equal(batched.is_finite, single.is_finite)


def test_power_iteration_bound_of_a_block_does_not_depend_on_its_position() -> None:
    generator = torch.Generator().manual_seed(5)
    eigenvalues = torch.linspace(1.0, 0.9, 64, dtype=torch.float64)
    stack = stack_with_eigenvalues(eigenvalues, random_orthogonal(3, 64, generator)).float()
    batched = MULTI_POWER_ITERATION_SCALING.upper_bound(stack)
    single = torch.cat(
        [MULTI_POWER_ITERATION_SCALING.upper_bound(stack[i : i + 1]) for i in range(3)]
    )
    torch.testing.assert_close(batched, single, rtol=1e-6, atol=0.0)


@pytest.mark.parametrize("exponent", [-0.25, -0.5, -1.0 / 3.0])
def test_float32_powers_do_not_depend_on_the_position_of_an_element(exponent: float) -> None:
    generator = torch.Generator().manual_seed(0)
    values = torch.logspace(-10, 3, 1000, dtype=torch.float32)[
        torch.randperm(1000, generator=generator)
    ]
    together = stable_power(values, exponent)
    alone = torch.cat([stable_power(values[i : i + 1], exponent) for i in range(values.numel())])
    assert torch.equal(together, alone)
    # Correctly rounded up to float64 rounding: at most one float32 ulp from the float64 power.
    reference = values.double().pow(exponent)
    ulp = torch.finfo(torch.float32).eps * reference.abs()
    assert ((together.double() - reference).abs() <= ulp).all()


# --------------------------------------------------------------------------------------------
# (b) Properties over random SPD blocks.
# --------------------------------------------------------------------------------------------


@st.composite
def spd_blocks(
    draw: st.DrawFn, max_log10_condition: float = MAX_LOG10_CONDITION
) -> tuple[torch.Tensor, float]:
    """A ``(1, d, d)`` SPD block in a drawn dtype and its exact condition number."""
    dim = draw(st.integers(min_value=1, max_value=24))
    log10_eigenvalues = draw(
        st.lists(
            st.floats(min_value=-max_log10_condition, max_value=0.0), min_size=dim, max_size=dim
        )
    )
    seed = draw(st.integers(min_value=0, max_value=2**31 - 1))
    dtype = draw(st.sampled_from(DTYPES))
    eigenvalues = 10.0 ** torch.tensor(log10_eigenvalues, dtype=torch.float64)
    basis = random_orthogonal(1, dim, torch.Generator().manual_seed(seed))
    condition = float(eigenvalues.max() / eigenvalues.min())
    return stack_with_eigenvalues(eigenvalues, basis).to(dtype), condition


def unit_roundoff(dtype: torch.dtype) -> float:
    return torch.finfo(dtype).eps / 2


@PROPERTY_SETTINGS
@given(problem=spd_blocks(), root=st.sampled_from([1, 2, 4]))
def test_roots_are_symmetric_finite_and_accurate_up_to_condition_1e3(
    problem: tuple[torch.Tensor, float], root: int
) -> None:
    A, condition = problem
    for solver in ACCURACY_CASES:
        result, reference = solver.solve(A, root, 0.0)
        X = result.inverse_root
        assert (
            X.dtype == A.dtype and bool(result.is_finite.all()) and bool(torch.isfinite(X).all())
        ), solver.name
        # Symmetric up to rounding amplified by the conditioning of the root.
        asymmetry = torch.linalg.norm(X - X.mT) / torch.linalg.norm(X)
        assert asymmetry <= 64 * unit_roundoff(A.dtype) * condition ** (1.0 / root) * X.shape[-1], (
            solver.name,
            asymmetry,
        )
        tolerance = solver.promise("condition_1e3", A.dtype, root).tolerance
        error = relative_errors(X, reference).item()
        assert error <= tolerance, (solver.name, error, tolerance, condition)


#: Solvers whose steps can be cut short (an iteration count, or a polynomial degree).
TRUNCATABLE_CASES = tuple(
    case for case in ENTRY_CASES if {"iteration", "degree"} & set(case.solver.options)
)


@PROPERTY_SETTINGS
@given(
    problem=spd_blocks(),
    root=st.sampled_from([1, 2, 4]),
    iterations=st.integers(min_value=1, max_value=30),
    solver=st.sampled_from(TRUNCATABLE_CASES),
)
def test_residual_is_small_exactly_when_the_error_is_small(
    problem: tuple[torch.Tensor, float], root: int, iterations: int, solver: SolverCase
) -> None:
    """For ``X = B^{-1/p} (I + G)`` (``G`` commuting with ``B``),
    ``residual = ||(I + G)^m - I||_F / sqrt(d)`` with ``m = p`` for even ``p`` and ``m = 2 p`` for
    odd ``p`` (the congruence forms of :mod:`distributed_shampoo_dash.solvers.result`) and
    ``error = ||B^{-1/p} G||_F / ||B^{-1/p}||_F``, so

        error <= sqrt(d) * residual + rounding          (|(1 + g)^m - 1| >= |g| for m >= 1)
        residual <= 2 m kappa^{1/p} * error + rounding  (unconverged iterates have |g| <= 1)

    checked on partially converged iterates (few iterations, or a low Chebyshev degree)."""
    A, condition = problem
    precision = MatmulPrecision.FP32 if A.dtype == torch.float32 else MatmulPrecision.FP64
    if solver.truncated is None:
        raise AssertionError(f"add the truncated options of solver {solver.name!r}")
    options = {**solver.truncated(iterations), "precision": precision}
    result = solver(A, root, **options)
    shift = solver.target_ridge(A, 0.0, **options)
    if solver.relative_ridge(**options) > 0:
        lambdas = torch.linalg.eigvalsh(A.double())
        condition = float((lambdas[..., -1] + shift) / (lambdas[..., 0] + shift))
    error = relative_errors(result.inverse_root, reference_inverse_root(A, root, shift)).item()
    residual = result.residual.item()
    dim = A.shape[-1]
    u_out, u_work = unit_roundoff(A.dtype), unit_roundoff(precision.working_dtype)
    error_rounding = 16 * u_out + 4 * dim * u_work * condition ** (1.0 / root)
    assert error <= math.sqrt(dim) * residual * (1 + 1e-3) + error_rounding, (error, residual)
    power = root if root % 2 == 0 else 2 * root
    rounding = 4 * power * dim * u_work * condition
    assert residual <= 2 * power * condition ** (1.0 / root) * error + rounding, (
        error,
        residual,
        condition,
    )


@PROPERTY_SETTINGS
@given(problem=spd_blocks())
def test_spectral_upper_bounds_are_at_least_lambda_max(problem: tuple[torch.Tensor, float]) -> None:
    A, _ = problem
    lambda_max = torch.linalg.eigvalsh(A.double())[..., -1]
    slack = 1 - 4 * A.shape[-1] * unit_roundoff(
        A.dtype
    )  # bounds are sums of d products in A's dtype
    for scaling in (FROBENIUS_SCALING, MULTI_POWER_ITERATION_SCALING):
        assert bool((scaling.upper_bound(A).double() >= slack * lambda_max).all()), scaling.method
    # The power-iteration estimate is a Rayleigh quotient: a lower bound, within a factor 2 here.
    estimate = rayleigh_lambda_max(A, 10, 16).double()
    assert bool(
        (estimate <= lambda_max / slack).all() and (2 * estimate >= slack * lambda_max).all()
    )


def test_rayleigh_estimate_is_a_lower_bound_for_tiny_float32_blocks() -> None:
    A = 1e-30 * torch.diag(torch.tensor([1.0, 0.5, 0.25])).unsqueeze(0)
    assert rayleigh_lambda_max(A, 10, 16).item() <= 1e-30 * (1 + 1e-6)


@pytest.mark.parametrize("d", [1, 2, 64, 1024])
def test_power_steps_between_normalisations_keep_the_largest_growth_finite(d: int) -> None:
    # A block of ones grows a vector by exactly d per step, the most entries in [-1, 1] allow.
    interval = normalization_interval(d, torch.float32)
    assert interval >= 1
    assert float(d) ** (2 * interval) < torch.finfo(torch.float32).max
    estimate = normalized_rayleigh_lambda_max(torch.ones(1, d, d), 3 * interval + 1, 4)
    assert estimate.item() == pytest.approx(d, rel=1e-5)


def test_power_iteration_normalises_every_few_steps_not_every_step() -> None:
    d, steps = 1024, 10
    interval = normalization_interval(d, torch.float32)
    with step_costs.meta_scaffolding(), step_costs.OpCounter() as counter:
        normalized_rayleigh_lambda_max(torch.empty(2, d, d, device="meta"), steps, 16)
    normalisations = math.ceil(steps / interval) + 1
    assert counter.by_op["aten.linalg_vector_norm.default"] == normalisations
    assert counter.by_op["aten.bmm.default"] == steps + 1  # and the Rayleigh quotient's


# --------------------------------------------------------------------------------------------
# (c) Matmul precision, refinement and global state.
# --------------------------------------------------------------------------------------------

#: Iterative solvers with a matmul precision: their iterations can be refined in fp32.
PRECISION_CASES = tuple(
    case for case in ENTRY_CASES if {"iteration", "precision"} <= set(case.solver.options)
)


def precision_problem(device: torch.device | str = "cpu") -> torch.Tensor:
    generator = torch.Generator().manual_seed(1)
    eigenvalues = torch.logspace(0, -2, 32, dtype=torch.float64)
    return stack_with_eigenvalues(eigenvalues, random_orthogonal(4, 32, generator)).to(device)


def has_tf32(device: torch.device) -> bool:
    """TF32 products exist: CUDA devices of compute capability 8.0 (Ampere) and later."""
    return device.type == "cuda" and torch.cuda.get_device_capability(device) >= (8, 0)


@pytest.mark.cuda
@pytest.mark.parametrize("solver", PRECISION_CASES, ids=case_names(PRECISION_CASES))
def test_errors_are_ordered_by_matmul_precision(solver: SolverCase, device: torch.device) -> None:
    A = precision_problem(
        device
    )  # float64 input, so that FP64 products are not hidden by the output dtype
    reference = reference_inverse_root(A, 4, 0.0)

    def error(precision: MatmulPrecision) -> float:
        result = solver(A, 4, precision=precision, iteration=IterationControl(num_iterations=20))
        return relative_errors(result.inverse_root, reference).max().item()

    errors = {precision: error(precision) for precision in MatmulPrecision}
    # Unit roundoffs: fp64 1e-16 < fp32 6e-8 < fp16 5e-4 < bf16 4e-3 (tf32 5e-4, CUDA only).
    assert errors[MatmulPrecision.FP64] < 1e-12
    assert errors[MatmulPrecision.FP64] < errors[MatmulPrecision.FP32] < 1e-5
    assert (
        errors[MatmulPrecision.FP32]
        < errors[MatmulPrecision.FP16]
        < errors[MatmulPrecision.BF16]
        < 5e-2
    )
    if has_tf32(device):
        assert errors[MatmulPrecision.FP32] < errors[MatmulPrecision.TF32] < 5e-2
    else:  # TF32 only changes the products of CUDA tensor cores: elsewhere it is FP32.
        assert errors[MatmulPrecision.TF32] == errors[MatmulPrecision.FP32]


@pytest.mark.parametrize("solver", PRECISION_CASES, ids=case_names(PRECISION_CASES))
def test_low_precision_results_are_flagged_by_their_residual(solver: SolverCase) -> None:
    A = precision_problem().float()
    result = solver(
        A, 4, precision=MatmulPrecision.BF16, iteration=IterationControl(num_iterations=20)
    )
    errors = relative_errors(result.inverse_root, reference_inverse_root(A, 4, 0.0))
    assert bool((errors > 1e-3).all()) and bool((result.residual > FLAG_RESIDUAL).all())


@pytest.mark.parametrize("solver", PRECISION_CASES, ids=case_names(PRECISION_CASES))
def test_fp32_refinement_after_bf16_does_not_lose_accuracy(solver: SolverCase) -> None:
    """Refinement removes the part of the bf16 error that commutes with ``A``; Newton-DB re-couples
    (``Y = B Z``) and gains 2-4x in one step, then stops at the part that does not commute, which
    a coupled iteration does not reduce (coupled Newton keeps its bf16 error): the error shrinks
    at least by the case's ``refinement_gain``."""
    A = precision_problem().float()
    reference = reference_inverse_root(A, 4, 0.0)

    def error(refinement_iterations: int) -> float:
        iteration = IterationControl(num_iterations=20, refinement_iterations=refinement_iterations)
        result = solver(A, 4, precision=MatmulPrecision.BF16, iteration=iteration)
        return relative_errors(result.inverse_root, reference).max().item()

    assert error(5) <= solver.refinement_gain * error(0)


def global_state() -> dict[str, object]:
    """Every process-global setting a solver could plausibly touch."""
    state: dict[str, object] = {
        "cuda.matmul.allow_tf32": torch.backends.cuda.matmul.allow_tf32,
        "float32_matmul_precision": torch.get_float32_matmul_precision(),
        "cudnn.allow_tf32": torch.backends.cudnn.allow_tf32,
        "default_dtype": torch.get_default_dtype(),
        "grad_enabled": torch.is_grad_enabled(),
        "deterministic_algorithms": torch.are_deterministic_algorithms_enabled(),
        "num_threads": torch.get_num_threads(),
    }
    for name, owner in (
        ("cuda.matmul.fp32_precision", torch.backends.cuda.matmul),
        ("backends.fp32_precision", torch.backends),
        ("cudnn.fp32_precision", torch.backends.cudnn),
    ):
        if hasattr(owner, "fp32_precision"):
            state[name] = owner.fp32_precision
    return state


def cheap_options(case: SolverCase) -> dict[str, Any]:
    """Options of a cheap call of ``case``: three iterations and a refinement step, a degree-5
    fit."""
    options: dict[str, Any] = {"epsilon": 1e-6}
    if "iteration" in case.solver.options:
        options["iteration"] = IterationControl(num_iterations=3, refinement_iterations=1)
    if "degree" in case.solver.options:
        options["degree"] = 5
    return options


def state_calls() -> dict[str, Callable[[torch.Tensor], InverseRootResult]]:
    """A call of each solver at each matmul precision and, with TF32 products (on CUDA the
    precision that a global flag switches), with each other spectral bound."""
    calls: dict[str, Callable[[torch.Tensor], InverseRootResult]] = {}
    for case in ENTRY_CASES:
        options = cheap_options(case)
        if not {"precision", "scaling"} & set(case.solver.options):
            calls[case.name] = partial(case, root=4, **options)
        if "precision" in case.solver.options:
            for precision in MatmulPrecision:
                calls[f"{case.name}_{precision.value}"] = partial(
                    case, root=4, precision=precision, **options
                )
        if "scaling" in case.solver.options:
            default = case.effective_options()["scaling"].method
            if "precision" in case.solver.options:
                options["precision"] = MatmulPrecision.TF32
            for method in ScalingMethod:
                if method is not default:
                    calls[f"{case.name}_{method.value}"] = partial(
                        case, root=4, scaling=SpectralScaling(method=method), **options
                    )
    return calls


STATE_CALLS = state_calls()


def rng_states(device: torch.device) -> list[torch.Tensor]:
    """The CPU generator's state, and the device's if it is a CUDA device."""
    states = [torch.random.get_rng_state()]
    if device.type == "cuda":
        states.append(torch.cuda.get_rng_state(device))
    return states


@pytest.mark.cuda
@pytest.mark.parametrize("call", sorted(STATE_CALLS))
def test_solver_changes_no_global_torch_state(call: str, device: torch.device) -> None:
    A = precision_problem(device).float()
    before, rng_before = global_state(), rng_states(device)
    result = STATE_CALLS[call](A)
    assert global_state() == before
    assert all(
        torch.equal(now, then) for now, then in zip(rng_states(device), rng_before, strict=True)
    )
    assert result.inverse_root.device == A.device


def test_solvers_honour_their_input_dtype_under_a_float64_default_dtype() -> None:
    A = precision_problem()[:2].float()
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        results = [call(A) for call in STATE_CALLS.values()]
    finally:
        torch.set_default_dtype(previous)
    assert all(result.inverse_root.dtype == torch.float32 for result in results)
    assert all(result.residual.dtype == torch.float32 for result in results)


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_finite_blocks_flags_the_blocks_of_any_stack_with_a_non_finite_entry(bad: float) -> None:
    roots = -torch.ones(4, 3, 3)  # negative entries: the check reads magnitudes
    roots[1, 2, 0] = bad
    residual = torch.tensor([-0.5, 0.0, 0.1, bad])
    assert finite_blocks(roots).tolist() == [True, False, True, True]
    assert finite_blocks(roots, residual).tolist() == [True, False, True, False]
    assert finite_blocks(residual).tolist() == [True, True, True, False]
