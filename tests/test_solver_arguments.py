"""Invalid arguments raise ``ValueError`` or ``TypeError`` whose message names the bad value and
what is allowed, before any computation starts."""

import math
import re
from collections.abc import Callable

import numpy as np
import pytest
import torch

from distributed_shampoo_dash.solvers import (
    IterationControl,
    SpectralScaling,
    as_matmul_precision,
    chebyshev_inverse_root,
    coupled_newton_inverse_root,
    eigh_inverse_root,
    inverse_root_residual,
    newton_db_inverse_root,
)
from tests.solver_cases import ENTRY_CASES, SolverCase, case_names

A = 2.0 * torch.eye(3).expand(2, 3, 3).contiguous()


def parametrize_solvers(cases: tuple[SolverCase, ...]) -> pytest.MarkDecorator:
    """Runs a test once per case of ``cases``, as its ``solver`` argument."""
    return pytest.mark.parametrize("solver", cases, ids=case_names(cases))


#: Every registry solver.
ALL_SOLVERS = parametrize_solvers(ENTRY_CASES)
#: Solvers with an optional ridge relative to the spectral bound (``rel_epsilon`` in [0, 1]).
OPTIONAL_RIDGE_SOLVERS = parametrize_solvers(
    tuple(
        case
        for case in ENTRY_CASES
        if "rel_epsilon" in case.solver.options and case.relative_ridge() == 0
    )
)
#: Solvers whose products run at a matmul precision.
PRECISION_SOLVERS = parametrize_solvers(
    tuple(case for case in ENTRY_CASES if "precision" in case.solver.options)
)
#: Each solver with an ``iteration`` or ``scaling`` option, with that keyword.
OPTION_OBJECTS = [
    pytest.param(case, keyword, value, id=f"{case.name}-{keyword}-{value}")
    for keyword, value in (("iteration", 10), ("scaling", "frobenius"))
    for case in ENTRY_CASES
    if keyword in case.solver.options
]


def named(value: object) -> str:
    """Regex for ``value`` as the message writes it (``str``), e.g. ``-0\\.001`` or ``nan``."""
    return re.escape(str(value))


# --------------------------------------------------------------------------------------------
# Roots.
# --------------------------------------------------------------------------------------------


@ALL_SOLVERS
@pytest.mark.parametrize("root", [0, -1, -2.5, math.nan, math.inf, -math.inf])
def test_root_must_be_a_finite_positive_number(solver: SolverCase, root: float) -> None:
    with pytest.raises(ValueError, match=rf"Invalid root {named(root)}\b.*finite number > 0"):
        solver(A, root)


@ALL_SOLVERS
@pytest.mark.parametrize("root", ["2", None, True, torch.tensor(2.0)])
def test_root_must_be_a_real_number(solver: SolverCase, root: object) -> None:
    with pytest.raises(
        TypeError,
        match=rf"Invalid root=.* of type (\w+\.)*{type(root).__name__}\. Must be a real number",
    ):
        solver(A, root)


@pytest.mark.parametrize("root", [3, 6, 12, 3.0])
def test_newton_db_rejects_roots_that_are_not_powers_of_two(root: float) -> None:
    with pytest.raises(
        ValueError, match=rf"Invalid root {named(root)} for Newton-DB\. Must be a power of two"
    ):
        newton_db_inverse_root(A, root)


@pytest.mark.parametrize("root", [0.5, 1.5])
def test_newton_db_names_powers_of_two_for_fractional_roots(root: float) -> None:
    with pytest.raises(
        ValueError, match=rf"Invalid root {named(root)} for Newton-DB\. Must be a power of two"
    ):
        newton_db_inverse_root(A, root)


@pytest.mark.parametrize("root", [2.5, 0.5, 10 / 3])
def test_coupled_newton_rejects_non_integer_roots(root: float) -> None:
    with pytest.raises(
        ValueError,
        match=rf"Invalid root {named(root)} for coupled Newton\. Must be a positive integer",
    ):
        coupled_newton_inverse_root(A, root)


def test_chebyshev_rejects_roots_that_are_not_small_fractions() -> None:
    with pytest.raises(
        ValueError,
        match=rf"Invalid root {named(math.pi)}: it must be a fraction with denominator <= 16",
    ):
        chebyshev_inverse_root(A, math.pi)


@pytest.mark.parametrize("root", [0, -1, math.nan, math.inf])
def test_inverse_root_residual_rejects_invalid_roots(root: float) -> None:
    with pytest.raises(ValueError, match=rf"Invalid root {named(root)}\b.*> 0"):
        inverse_root_residual(A, A, root)


# --------------------------------------------------------------------------------------------
# The input stack.
# --------------------------------------------------------------------------------------------


@ALL_SOLVERS
@pytest.mark.parametrize("shape", [(3, 4), (2, 3, 4), (2, 4, 3)])
def test_input_must_hold_square_matrices(solver: SolverCase, shape: tuple[int, ...]) -> None:
    with pytest.raises(ValueError, match=rf"square matrices, got shape {named(shape)}"):
        solver(torch.ones(shape), 2)


@ALL_SOLVERS
@pytest.mark.parametrize("shape", [(3,), (1, 2, 3, 3), ()])
def test_input_must_be_a_matrix_or_a_stack(solver: SolverCase, shape: tuple[int, ...]) -> None:
    pattern = rf"must be a \(d, d\) matrix or an \(N, d, d\) stack, got shape {named(shape)}"
    with pytest.raises(ValueError, match=pattern):
        solver(torch.ones(shape), 2)


@ALL_SOLVERS
@pytest.mark.parametrize("shape", [(0, 3, 3), (2, 0, 0), (0, 0)])
def test_input_must_not_be_empty(solver: SolverCase, shape: tuple[int, ...]) -> None:
    with pytest.raises(
        ValueError, match=rf"at least one matrix of dimension >= 1, got shape {named(shape)}"
    ):
        solver(torch.ones(shape), 2)


@ALL_SOLVERS
@pytest.mark.parametrize("dtype", [torch.int64, torch.int32, torch.bool, torch.complex64])
def test_input_must_have_a_floating_point_dtype(solver: SolverCase, dtype: torch.dtype) -> None:
    with pytest.raises(
        TypeError,
        match=(
            rf"floating-point dtype \(float16, bfloat16, float32 or float64\), "
            rf"got {named(dtype)}"
        ),
    ):
        solver(torch.eye(3, dtype=dtype), 2)


@ALL_SOLVERS
@pytest.mark.parametrize("value", [[[1.0]], np.eye(3), 1.0])
def test_input_must_be_a_tensor(solver: SolverCase, value: object) -> None:
    with pytest.raises(
        TypeError, match=rf"A must be a torch\.Tensor, got (\w+\.)*{type(value).__name__}"
    ):
        solver(value, 2)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_eigh_decomposes_half_precision_input_in_float32(dtype: torch.dtype) -> None:
    A = torch.tensor([[4.0, 1.0], [1.0, 3.0]])
    result = eigh_inverse_root(A.to(dtype), 2)
    expected = eigh_inverse_root(A.to(dtype).float(), 2).inverse_root.to(dtype)

    assert result.inverse_root.dtype == dtype
    assert bool(result.is_finite.all())
    assert torch.equal(result.inverse_root, expected)


# --------------------------------------------------------------------------------------------
# Epsilon, degree, relative epsilon.
# --------------------------------------------------------------------------------------------


@ALL_SOLVERS
@pytest.mark.parametrize("epsilon", [-1e-3, -math.inf, math.inf, math.nan])
def test_epsilon_must_be_finite_and_non_negative(solver: SolverCase, epsilon: float) -> None:
    with pytest.raises(
        ValueError, match=rf"Invalid epsilon={named(epsilon)}\. Must be a finite number >= 0"
    ):
        solver(A, 2, epsilon=epsilon)


@ALL_SOLVERS
def test_epsilon_must_be_a_real_number(solver: SolverCase) -> None:
    with pytest.raises(
        TypeError, match=r"Invalid epsilon='1e-3' of type str\. Must be a real number"
    ):
        solver(A, 2, epsilon="1e-3")


@pytest.mark.parametrize("degree", [0, -3, 1001])
def test_chebyshev_degree_must_be_between_one_and_a_thousand(degree: int) -> None:
    with pytest.raises(
        ValueError, match=rf"Invalid degree={degree}\. Must be an int in \[1, 1000\]"
    ):
        chebyshev_inverse_root(A, 2, degree=degree)


def test_chebyshev_rel_epsilon_must_be_positive() -> None:
    with pytest.raises(ValueError, match=r"Invalid rel_epsilon=0\.0\. Must be a finite number > 0"):
        chebyshev_inverse_root(A, 2, rel_epsilon=0.0)


@pytest.mark.parametrize("rel_epsilon", [-1e-3, math.nan, 2.0])
def test_chebyshev_rel_epsilon_messages_name_the_range(rel_epsilon: float) -> None:
    with pytest.raises(
        ValueError,
        match=(
            rf"Invalid rel_epsilon={named(rel_epsilon)}\. "
            rf"Must be a finite number > 0\.0 and <= 1\.0"
        ),
    ):
        chebyshev_inverse_root(A, 2, rel_epsilon=rel_epsilon)


@OPTIONAL_RIDGE_SOLVERS
@pytest.mark.parametrize("rel_epsilon", [-1e-3, math.inf, 1.5])
def test_rel_epsilon_must_be_between_zero_and_one(solver: SolverCase, rel_epsilon: float) -> None:
    with pytest.raises(
        ValueError,
        match=(
            rf"Invalid rel_epsilon={named(rel_epsilon)}\. "
            rf"Must be a finite number >= 0\.0 and <= 1\.0"
        ),
    ):
        solver(A, 2, rel_epsilon=rel_epsilon)


# --------------------------------------------------------------------------------------------
# Iteration counts (IterationControl, SpectralScaling) and integer parameters.
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("num_iterations", [0, -1, 1001, 10**9])
def test_iteration_control_needs_between_one_and_a_thousand_iterations(num_iterations: int) -> None:
    with pytest.raises(
        ValueError,
        match=rf"Invalid num_iterations={num_iterations}\. Must be an int in \[1, 1000\]",
    ):
        IterationControl(num_iterations=num_iterations)


@pytest.mark.parametrize("refinement_iterations", [-1, 1001])
def test_refinement_iterations_must_be_between_zero_and_a_thousand(
    refinement_iterations: int,
) -> None:
    with pytest.raises(
        ValueError,
        match=(
            rf"Invalid refinement_iterations={refinement_iterations}\. "
            rf"Must be an int in \[0, 1000\]"
        ),
    ):
        IterationControl(num_iterations=5, refinement_iterations=refinement_iterations)


@pytest.mark.parametrize("tolerance", [-1e-6, math.nan, math.inf])
def test_iteration_tolerance_must_be_finite_and_non_negative(tolerance: float) -> None:
    with pytest.raises(
        ValueError, match=rf"Invalid tolerance={named(tolerance)}\. Must be a finite number >= 0"
    ):
        IterationControl(num_iterations=5, tolerance=tolerance)


def test_early_exit_check_interval_must_be_at_least_one() -> None:
    with pytest.raises(
        ValueError, match=r"Invalid early_exit_check_interval=0\. Must be an int >= 1"
    ):
        IterationControl(num_iterations=5, early_exit_check_interval=0)


INTEGER_PARAMETERS: dict[str, Callable[[object], object]] = {
    "degree": lambda value: chebyshev_inverse_root(A, 2, degree=value),
    "num_iterations": lambda value: IterationControl(num_iterations=value),
    "refinement_iterations": lambda value: IterationControl(
        num_iterations=5, refinement_iterations=value
    ),
    "num_vectors": lambda value: SpectralScaling(num_vectors=value),
}


@pytest.mark.parametrize("name", sorted(INTEGER_PARAMETERS))
@pytest.mark.parametrize("value", [2.5, "3", True])
def test_integer_parameters_reject_non_integers_naming_value_and_type(
    name: str, value: object
) -> None:
    message = (
        rf"Invalid {name}={named(repr(value))} of type {type(value).__name__}\. Must be an int"
    )
    with pytest.raises(TypeError, match=message):
        INTEGER_PARAMETERS[name](value)


@pytest.mark.parametrize("name", sorted(INTEGER_PARAMETERS))
def test_integer_parameters_accept_numpy_integers(name: str) -> None:
    INTEGER_PARAMETERS[name](np.int64(3))


def test_numpy_scalars_are_stored_as_python_numbers() -> None:
    control = IterationControl(
        num_iterations=np.int32(4), tolerance=np.float32(0.5), stop_at_best=np.bool_(False)
    )
    assert (type(control.num_iterations), type(control.tolerance), type(control.stop_at_best)) == (
        int,
        float,
        bool,
    )
    scaling = SpectralScaling(num_vectors=np.int64(8), safety_factor=np.float64(1.5))
    assert (type(scaling.num_vectors), type(scaling.safety_factor)) == (int, float)


def test_flags_of_the_wrong_type_name_their_qualified_type() -> None:
    with pytest.raises(TypeError, match=r"Invalid stop_at_best=1 of type int\. Must be a bool"):
        IterationControl(num_iterations=5, stop_at_best=1)
    with pytest.raises(TypeError, match=r"of type numpy\.float64\. Must be a bool"):
        eigh_inverse_root(A, 2, perturb_before_computation=np.float64(1.0))


# --------------------------------------------------------------------------------------------
# Matmul precision and spectral scaling.
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("precision", ["fp8", "float32", ""])
def test_precision_string_must_name_a_known_precision(precision: str) -> None:
    allowed = r"Must be one of 'fp64', 'fp32', '3xtf32', 'tf32', 'bf16', 'fp16'"
    with pytest.raises(
        ValueError, match=rf"Invalid matmul precision {named(repr(precision))}\. {allowed}"
    ):
        as_matmul_precision(precision)


def test_precision_must_be_a_string_or_matmul_precision() -> None:
    with pytest.raises(
        TypeError, match=r"Invalid matmul precision 32 of type int\. Must be a MatmulPrecision"
    ):
        as_matmul_precision(32)


@PRECISION_SOLVERS
def test_solvers_take_a_matmul_precision_not_a_string(solver: SolverCase) -> None:
    with pytest.raises(
        TypeError, match=r"Invalid precision='bf16' of type str\. Must be a MatmulPrecision"
    ):
        solver(A, 2, precision="bf16")


def test_scaling_method_must_be_known() -> None:
    allowed = r"Must be one of 'frobenius', 'power_iteration', 'multi_power_iteration'"
    with pytest.raises(ValueError, match=rf"Invalid scaling method 'lanczos'\. {allowed}"):
        SpectralScaling(method="lanczos")


def test_scaling_method_must_be_a_string_or_scaling_method() -> None:
    with pytest.raises(
        TypeError, match=r"Invalid scaling method 3 of type int\. Must be a ScalingMethod"
    ):
        SpectralScaling(method=3)


@pytest.mark.parametrize("safety_factor", [0.5, 0.0, -2.0, math.nan, math.inf])
def test_safety_factor_must_be_finite_and_at_least_one(safety_factor: float) -> None:
    with pytest.raises(
        ValueError,
        match=rf"Invalid safety_factor={named(safety_factor)}\. Must be a finite number >= 1\.0",
    ):
        SpectralScaling(safety_factor=safety_factor)


def test_safety_factor_of_the_wrong_type_names_its_type() -> None:
    with pytest.raises(TypeError, match=r"safety_factor.*(str|'2')"):
        SpectralScaling(safety_factor="2")


@pytest.mark.parametrize("num_vectors", [0, -1, 1001])
def test_power_iteration_needs_between_one_and_a_thousand_vectors(num_vectors: int) -> None:
    with pytest.raises(
        ValueError, match=rf"Invalid num_vectors={num_vectors}\. Must be an int in \[1, 1000\]"
    ):
        SpectralScaling(num_vectors=num_vectors)


@pytest.mark.parametrize("num_iterations", [0, 10**9])
def test_power_iteration_needs_between_one_and_a_thousand_steps(num_iterations: int) -> None:
    with pytest.raises(
        ValueError,
        match=rf"Invalid num_iterations={num_iterations}\. Must be an int in \[1, 1000\]",
    ):
        SpectralScaling(num_iterations=num_iterations)


@pytest.mark.parametrize(("solver", "keyword", "value"), OPTION_OBJECTS)
def test_solvers_reject_iterations_and_scalings_of_the_wrong_type(
    solver: SolverCase, keyword: str, value: object
) -> None:
    with pytest.raises(
        TypeError, match=rf"{keyword}.*{named(value)}|{keyword}.*{type(value).__name__}"
    ):
        solver(A, 2, **{keyword: value})
