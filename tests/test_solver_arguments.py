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

A = 2.0 * torch.eye(3).expand(2, 3, 3).contiguous()

Solve = Callable[..., object]
SOLVERS: dict[str, Solve] = {
    "eigh": eigh_inverse_root,
    "coupled_newton": coupled_newton_inverse_root,
    "newton_db": newton_db_inverse_root,
    "chebyshev": chebyshev_inverse_root,
}
ALL_SOLVERS = pytest.mark.parametrize("solver", sorted(SOLVERS))


def named(value: object) -> str:
    """Regex for ``value`` as the message writes it (``str``), e.g. ``-0\\.001`` or ``nan``."""
    return re.escape(str(value))


# --------------------------------------------------------------------------------------------
# Roots.
# --------------------------------------------------------------------------------------------


@ALL_SOLVERS
@pytest.mark.parametrize("root", [0, -1, -2.5, math.nan, math.inf, -math.inf])
def test_root_must_be_a_finite_positive_number(solver: str, root: float) -> None:
    with pytest.raises(ValueError, match=rf"Invalid root {named(root)}\b.*finite number > 0"):
        SOLVERS[solver](A, root)


@ALL_SOLVERS
@pytest.mark.parametrize("root", ["2", None, True, torch.tensor(2.0)])
def test_root_must_be_a_real_number(solver: str, root: object) -> None:
    with pytest.raises(TypeError, match=rf"root must be a real number, got {type(root).__name__}"):
        SOLVERS[solver](A, root)


@pytest.mark.parametrize("root", [3, 6, 12, 3.0])
def test_newton_db_rejects_roots_that_are_not_powers_of_two(root: float) -> None:
    with pytest.raises(ValueError, match=rf"Invalid root {named(root)} for Newton-DB\. Must be a power of two"):
        newton_db_inverse_root(A, root)


@pytest.mark.parametrize("root", [0.5, 1.5])
def test_newton_db_names_powers_of_two_for_fractional_roots(root: float) -> None:
    with pytest.raises(ValueError, match=rf"Invalid root {named(root)} for Newton-DB\. Must be a power of two"):
        newton_db_inverse_root(A, root)


@pytest.mark.parametrize("root", [2.5, 0.5, 10 / 3])
def test_coupled_newton_rejects_non_integer_roots(root: float) -> None:
    with pytest.raises(ValueError, match=rf"Invalid root {named(root)} for coupled Newton\. Must be a positive integer"):
        coupled_newton_inverse_root(A, root)


def test_chebyshev_rejects_roots_that_are_not_small_fractions() -> None:
    with pytest.raises(ValueError, match=rf"Invalid root {named(math.pi)}: it must be a fraction with denominator <= 16"):
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
def test_input_must_hold_square_matrices(solver: str, shape: tuple[int, ...]) -> None:
    with pytest.raises(ValueError, match=rf"square matrices, got shape {named(shape)}"):
        SOLVERS[solver](torch.ones(shape), 2)


@ALL_SOLVERS
@pytest.mark.parametrize("shape", [(3,), (1, 2, 3, 3), ()])
def test_input_must_be_a_matrix_or_a_stack(solver: str, shape: tuple[int, ...]) -> None:
    pattern = rf"must be a \(d, d\) matrix or an \(N, d, d\) stack, got shape {named(shape)}"
    with pytest.raises(ValueError, match=pattern):
        SOLVERS[solver](torch.ones(shape), 2)


@ALL_SOLVERS
@pytest.mark.parametrize("shape", [(0, 3, 3), (2, 0, 0), (0, 0)])
def test_input_must_not_be_empty(solver: str, shape: tuple[int, ...]) -> None:
    with pytest.raises(ValueError, match=rf"at least one matrix of dimension >= 1, got shape {named(shape)}"):
        SOLVERS[solver](torch.ones(shape), 2)


@ALL_SOLVERS
@pytest.mark.parametrize("dtype", [torch.int64, torch.int32, torch.bool, torch.complex64])
def test_input_must_have_a_floating_point_dtype(solver: str, dtype: torch.dtype) -> None:
    with pytest.raises(TypeError, match=rf"floating-point dtype \(float16, bfloat16, float32 or float64\), got {named(dtype)}"):
        SOLVERS[solver](torch.eye(3, dtype=dtype), 2)


@ALL_SOLVERS
@pytest.mark.parametrize("value", [[[1.0]], np.eye(3), 1.0])
def test_input_must_be_a_tensor(solver: str, value: object) -> None:
    with pytest.raises(TypeError, match=rf"A must be a torch\.Tensor, got {type(value).__name__}"):
        SOLVERS[solver](value, 2)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_eigh_rejects_half_precision_input_with_a_type_error(dtype: torch.dtype) -> None:
    with pytest.raises(TypeError, match=rf"{named(dtype)}.*float32.*float64|float32.*float64.*{named(dtype)}"):
        eigh_inverse_root(torch.eye(3, dtype=dtype), 2)


# --------------------------------------------------------------------------------------------
# Epsilon, degree, relative epsilon.
# --------------------------------------------------------------------------------------------


@ALL_SOLVERS
@pytest.mark.parametrize("epsilon", [-1e-3, -math.inf, math.inf, math.nan])
def test_epsilon_must_be_finite_and_non_negative(solver: str, epsilon: float) -> None:
    with pytest.raises(ValueError, match=rf"Invalid epsilon={named(epsilon)}\. Must be a finite number >= 0"):
        SOLVERS[solver](A, 2, epsilon=epsilon)


@ALL_SOLVERS
def test_epsilon_must_be_a_real_number(solver: str) -> None:
    with pytest.raises(TypeError, match=r"epsilon must be a real number, got str"):
        SOLVERS[solver](A, 2, epsilon="1e-3")


@pytest.mark.parametrize("degree", [0, -3])
def test_chebyshev_degree_must_be_at_least_one(degree: int) -> None:
    with pytest.raises(ValueError, match=rf"Invalid degree={degree}\. Must be >= 1"):
        chebyshev_inverse_root(A, 2, degree=degree)


def test_chebyshev_relative_epsilon_must_be_positive() -> None:
    with pytest.raises(ValueError, match=r"Invalid relative_epsilon=0\.0\. Must be a finite number > 0"):
        chebyshev_inverse_root(A, 2, relative_epsilon=0.0)


@pytest.mark.parametrize("relative_epsilon", [-1e-3, math.nan])
def test_chebyshev_relative_epsilon_messages_name_the_positive_range(relative_epsilon: float) -> None:
    with pytest.raises(ValueError, match=rf"Invalid relative_epsilon={named(relative_epsilon)}\. Must be (a finite number )?> 0"):
        chebyshev_inverse_root(A, 2, relative_epsilon=relative_epsilon)


# --------------------------------------------------------------------------------------------
# Iteration counts (IterationControl, SpectralScaling) and integer parameters.
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("num_iterations", [0, -1])
def test_iteration_control_needs_at_least_one_iteration(num_iterations: int) -> None:
    with pytest.raises(ValueError, match=rf"Invalid num_iterations={num_iterations}\. Must be >= 1"):
        IterationControl(num_iterations=num_iterations)


def test_refinement_iterations_must_not_be_negative() -> None:
    with pytest.raises(ValueError, match=r"Invalid refinement_iterations=-1\. Must be >= 0"):
        IterationControl(num_iterations=5, refinement_iterations=-1)


@pytest.mark.parametrize("tolerance", [-1e-6, math.nan, math.inf])
def test_iteration_tolerance_must_be_finite_and_non_negative(tolerance: float) -> None:
    with pytest.raises(ValueError, match=rf"Invalid tolerance={named(tolerance)}\. Must be a finite number >= 0"):
        IterationControl(num_iterations=5, tolerance=tolerance)


def test_early_exit_check_interval_must_be_at_least_one() -> None:
    with pytest.raises(ValueError, match=r"Invalid early_exit_check_interval=0\. Must be >= 1"):
        IterationControl(num_iterations=5, early_exit_check_interval=0)


INTEGER_PARAMETERS: dict[str, Callable[[object], object]] = {
    "degree": lambda value: chebyshev_inverse_root(A, 2, degree=value),
    "num_iterations": lambda value: IterationControl(num_iterations=value),
    "refinement_iterations": lambda value: IterationControl(num_iterations=5, refinement_iterations=value),
    "num_vectors": lambda value: SpectralScaling(num_vectors=value),
}


@pytest.mark.parametrize("name", sorted(INTEGER_PARAMETERS))
def test_integer_parameters_reject_non_integers_naming_value_and_type(name: str) -> None:
    with pytest.raises(TypeError, match=rf"{name} must be an int, got 2\.5 of type float"):
        INTEGER_PARAMETERS[name](2.5)


# --------------------------------------------------------------------------------------------
# Matmul precision and spectral scaling.
# --------------------------------------------------------------------------------------------

PRECISION_SETTERS: dict[str, Callable[[object], object]] = {
    "as_matmul_precision": as_matmul_precision,
    "IterationControl": lambda precision: IterationControl(num_iterations=5, precision=precision),
    "chebyshev_inverse_root": lambda precision: chebyshev_inverse_root(A, 2, precision=precision),
}


@pytest.mark.parametrize("setter", sorted(PRECISION_SETTERS))
@pytest.mark.parametrize("precision", ["fp8", "float32", ""])
def test_precision_string_must_name_a_known_precision(setter: str, precision: str) -> None:
    allowed = r"Must be one of 'fp64', 'fp32', 'tf32', 'bf16', 'fp16'"
    with pytest.raises(ValueError, match=rf"Invalid matmul precision {named(repr(precision))}\. {allowed}"):
        PRECISION_SETTERS[setter](precision)


@pytest.mark.parametrize("setter", sorted(PRECISION_SETTERS))
def test_precision_must_be_a_string_or_matmul_precision(setter: str) -> None:
    with pytest.raises(TypeError, match=r"Invalid matmul precision 32 of type int\. Must be a MatmulPrecision"):
        PRECISION_SETTERS[setter](32)


def test_scaling_method_must_be_known() -> None:
    allowed = r"Must be one of 'frobenius', 'power_iteration', 'multi_power_iteration'"
    with pytest.raises(ValueError, match=rf"Invalid scaling method 'lanczos'\. {allowed}"):
        SpectralScaling(method="lanczos")


def test_scaling_method_must_be_a_string_or_scaling_method() -> None:
    with pytest.raises(TypeError, match=r"Invalid scaling method 3 of type int\. Must be a ScalingMethod"):
        SpectralScaling(method=3)


@pytest.mark.parametrize("safety_factor", [0.5, 0.0, -2.0, math.nan, math.inf])
def test_safety_factor_must_be_finite_and_at_least_one(safety_factor: float) -> None:
    with pytest.raises(ValueError, match=rf"Invalid safety_factor={named(safety_factor)}\. Must be a finite number >= 1\.0"):
        SpectralScaling(safety_factor=safety_factor)


def test_safety_factor_of_the_wrong_type_names_its_type() -> None:
    with pytest.raises(TypeError, match=r"safety_factor.*(str|'2')"):
        SpectralScaling(safety_factor="2")


@pytest.mark.parametrize("num_vectors", [0, -1])
def test_power_iteration_needs_at_least_one_vector(num_vectors: int) -> None:
    with pytest.raises(ValueError, match=rf"Invalid num_vectors={num_vectors}\. Must be >= 1"):
        SpectralScaling(num_vectors=num_vectors)


def test_power_iteration_needs_at_least_one_step() -> None:
    with pytest.raises(ValueError, match=r"Invalid num_iterations=0\. Must be >= 1"):
        SpectralScaling(num_iterations=0)


@pytest.mark.parametrize(
    ("solver", "keyword", "value"),
    [
        ("newton_db", "control", 10),
        ("coupled_newton", "control", 10),
        ("newton_db", "scaling", "frobenius"),
        ("chebyshev", "scaling", "frobenius"),
    ],
)
def test_solvers_reject_controls_and_scalings_of_the_wrong_type(solver: str, keyword: str, value: object) -> None:
    with pytest.raises(TypeError, match=rf"{keyword}.*{named(value)}|{keyword}.*{type(value).__name__}"):
        SOLVERS[solver](A, 2, **{keyword: value})
