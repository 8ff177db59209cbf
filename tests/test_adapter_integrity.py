"""Nothing silently corrupted, nothing half-done: roots are judged in the dtype they are stored in,
and an error DASH raises leaves the optimizer exactly as it was."""

import copy
from collections.abc import Iterator
from unittest import mock

import pytest
import torch

pytestmark = pytest.mark.upstream
distributed_shampoo = pytest.importorskip("distributed_shampoo")

from distributed_shampoo import CoupledNewtonConfig, DistributedShampoo, EigenConfig
from distributed_shampoo.preconditioner import shampoo_preconditioner_list
from distributed_shampoo.preconditioner.matrix_functions_types import RootInvConfig

import distributed_shampoo_dash as dash
from distributed_shampoo_dash.integration import dash_matrix_inverse_root
from tests.integration.models import MixedShapeModel, make_batches, run_steps
from tests.integration.shampoo import shampoo_factory


@pytest.fixture(autouse=True)
def dash_disabled_afterwards() -> Iterator[None]:
    yield
    dash.disable()


# --------------------------------------------------------------------------------------------
# Roots are judged in the dtype of the inverse factors.
# --------------------------------------------------------------------------------------------

#: A 1-D parameter of 24 elements: its 24 x 24 factor is rank one, so at epsilon 1e-12 its inverse
#: square root reaches 1e6, above float16's largest finite value (65504).
VECTOR_SIZE, TINY_EPSILON = 24, 1e-12

STORED_DTYPES = [torch.float32, torch.bfloat16, torch.float16]
SOLVERS: dict[str, RootInvConfig] = {
    "eigen": EigenConfig(),
    "coupled_newton": CoupledNewtonConfig(),
    "newton_db": dash.NewtonDBRootInvConfig(),
    # Rejects every root, so that each one takes the eigh fallback.
    "newton_db_fallback": dash.NewtonDBRootInvConfig(max_residual=0.0),
    "chebyshev": dash.ChebyshevRootInvConfig(),
}


def vector_run(
    solver: RootInvConfig, dtype: torch.dtype
) -> tuple[str, torch.Tensor, list[torch.Tensor]]:
    """Two steps on a single 1-D parameter; returns the outcome, the parameter and the inverse
    factors.

    The outcome is ``"ok"`` or the name and first sentence of the exception the step raised.
    """
    torch.manual_seed(0)
    weight = torch.nn.Parameter(torch.randn(VECTOR_SIZE))
    optimizer = shampoo_factory(solver, TINY_EPSILON, inv_factor_matrix_dtype=dtype)(
        torch.nn.ParameterList([weight])
    )
    outcome = "ok"
    for step in range(2):
        optimizer.zero_grad()
        (weight * torch.linspace(-1.0, 1.0, VECTOR_SIZE) * (step + 1)).sum().backward()
        try:
            optimizer.step()
        except Exception as error:  # noqa: BLE001 - the outcome is compared, whatever it is
            outcome = f"{type(error).__name__}: {str(error).split('!')[0]}"
            break
    inverse_factors = [factor.inverse_root for factor in dash.inverse_factors(optimizer)]
    return outcome, weight.detach().clone(), inverse_factors


def per_block_run(
    solver: RootInvConfig, dtype: torch.dtype
) -> tuple[str, torch.Tensor, list[torch.Tensor]]:
    """The same run through upstream's per-block code: upstream alone, or (DASH configs) with
    DASH's per-block binding wrapped, which the batched list answers with the per-block path."""
    if isinstance(solver, dash.NewtonDBRootInvConfig | dash.ChebyshevRootInvConfig):
        dash.enable()
        with mock.patch.object(
            shampoo_preconditioner_list, "matrix_inverse_root", wraps=dash_matrix_inverse_root
        ):
            return vector_run(solver, dtype)
    dash.disable()
    return vector_run(solver, dtype)


@pytest.mark.parametrize("dtype", STORED_DTYPES, ids=str)
@pytest.mark.parametrize("solver", sorted(SOLVERS))
def test_roots_are_judged_in_their_stored_dtype_as_upstream_judges_them(
    solver: str, dtype: torch.dtype
) -> None:
    config = SOLVERS[solver]
    reference_outcome, reference_weight, reference_inverses = per_block_run(config, dtype)
    dash.enable()
    outcome, weight, inverses = vector_run(config, dtype)

    # At epsilon 1e-12 the rank-one factor's null space is resolved by rounding alone, so values
    # are compared through the outcome only: the same error (or none), and nothing non-finite.
    assert outcome == reference_outcome
    assert all(bool(torch.isfinite(inverse).all()) for inverse in inverses)
    assert bool(torch.isfinite(weight).all()) and bool(torch.isfinite(reference_weight).all())
    assert len(inverses) == len(reference_inverses)


def test_a_root_above_float16s_range_raises_upstreams_error_and_is_never_stored() -> None:
    dash.disable()
    upstream_outcome, _, _ = vector_run(EigenConfig(), torch.float16)
    dash.enable()
    outcome, weight, inverses = vector_run(EigenConfig(), torch.float16)
    assert upstream_outcome.startswith("PreconditionerValueError: Encountered nan or inf values in")
    assert outcome == upstream_outcome
    assert bool(torch.isfinite(weight).all())
    assert all(bool(torch.isfinite(inverse).all()) for inverse in inverses)


# --------------------------------------------------------------------------------------------
# An error DASH raises is raised before the step changes anything.
# --------------------------------------------------------------------------------------------


def snapshot(model: torch.nn.Module, optimizer: DistributedShampoo) -> dict[str, object]:
    return {
        "model": copy.deepcopy(model.state_dict()),
        "optimizer": copy.deepcopy(optimizer.state_dict()),
    }


def assert_bitwise_equal(first: object, second: object) -> None:
    if isinstance(first, torch.Tensor):
        assert isinstance(second, torch.Tensor) and first.dtype == second.dtype
        assert torch.equal(first, second)
    elif isinstance(first, dict):
        assert isinstance(second, dict) and first.keys() == second.keys()
        for key in first:
            assert_bitwise_equal(first[key], second[key])
    elif isinstance(first, list | tuple):
        assert isinstance(second, list | tuple) and len(first) == len(second)
        for a, b in zip(first, second, strict=True):
            assert_bitwise_equal(a, b)
    else:
        assert first == second


def test_stepping_with_dash_disabled_raises_before_changing_anything() -> None:
    factory = shampoo_factory(dash.NewtonDBRootInvConfig(), epsilon=1e-6)
    batches = make_batches(4)
    dash.enable()
    torch.manual_seed(0)
    uninterrupted_model = MixedShapeModel()
    run_steps(uninterrupted_model, factory(uninterrupted_model), batches)

    torch.manual_seed(0)
    model = MixedShapeModel()
    optimizer = factory(model)
    run_steps(model, optimizer, batches[:2])
    before = snapshot(model, optimizer)
    dash.disable()
    with pytest.raises(ValueError, match=r"needs DASH.*distributed_shampoo_dash\.enable\(\)"):
        run_steps(model, optimizer, batches[2:3])
    assert_bitwise_equal(snapshot(model, optimizer), before)

    # Following the message and retrying the step gives the uninterrupted run.
    dash.enable()
    run_steps(model, optimizer, batches[2:])
    for parameter, expected in zip(
        model.parameters(), uninterrupted_model.parameters(), strict=True
    ):
        assert torch.equal(parameter, expected)
