"""Nothing silently corrupted: roots are judged in the dtype they are stored in, as upstream's
per-block path judges them."""

import pytest
import torch

pytestmark = pytest.mark.upstream
distributed_shampoo = pytest.importorskip("distributed_shampoo")

from distributed_shampoo import EigenConfig
from distributed_shampoo.preconditioner.matrix_functions_types import RootInvConfig

import distributed_shampoo_dash as dash
from distributed_shampoo_dash.solvers import DEFAULT_SOLVER
from tests.integration.shampoo import shampoo_factory
from tests.solver_cases import ENTRIES, ENTRY_CASES, root_inv_config

#: A 1-D parameter of 24 elements: its 24 x 24 factor is rank one, so at epsilon 1e-12 its inverse
#: square root reaches 1e6, above float16's largest finite value (65504).
VECTOR_SIZE, TINY_EPSILON = 24, 1e-12

STORED_DTYPES = [torch.float32, torch.bfloat16, torch.float16]
#: The config of each registry solver, and DASH's default solver rejecting every root, so that
#: each one takes the eigh fallback.
CONFIGS: dict[str, RootInvConfig] = {
    **{case.name: root_inv_config(case) for case in ENTRY_CASES},
    f"{DEFAULT_SOLVER.name}_fallback": root_inv_config(
        ENTRIES[DEFAULT_SOLVER.name], max_residual=0.0
    ),
}


def vector_run(
    solver: RootInvConfig, dtype: torch.dtype, batched: bool
) -> tuple[str, torch.Tensor, list[torch.Tensor]]:
    """Two steps on a single 1-D parameter, with the DASH form of the config if ``batched`` (else
    upstream's per-block list, which serves DASH's solver configs per block); returns the outcome,
    the parameter and the inverse factors.

    The outcome is ``"ok"`` or the name and first sentence of the exception the step raised.
    """
    torch.manual_seed(0)
    weight = torch.nn.Parameter(torch.randn(VECTOR_SIZE))
    optimizer = shampoo_factory(
        solver, batched=batched, epsilon=TINY_EPSILON, inv_factor_matrix_dtype=dtype
    )(torch.nn.ParameterList([weight]))
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


@pytest.mark.parametrize("dtype", STORED_DTYPES, ids=str)
@pytest.mark.parametrize("solver", sorted(CONFIGS))
def test_roots_are_judged_in_their_stored_dtype_as_upstream_judges_them(
    solver: str, dtype: torch.dtype
) -> None:
    config = CONFIGS[solver]
    reference_outcome, reference_weight, reference_inverses = vector_run(config, dtype, False)
    outcome, weight, inverses = vector_run(config, dtype, batched=True)

    # At epsilon 1e-12 the rank-one factor's null space is resolved by rounding alone, so values
    # are compared through the outcome only: the same error (or none), and nothing non-finite.
    assert outcome == reference_outcome
    assert all(bool(torch.isfinite(inverse).all()) for inverse in inverses)
    assert bool(torch.isfinite(weight).all()) and bool(torch.isfinite(reference_weight).all())
    assert len(inverses) == len(reference_inverses)


def test_a_root_above_float16s_range_raises_upstreams_error_and_is_never_stored() -> None:
    upstream_outcome, _, _ = vector_run(EigenConfig(), torch.float16, batched=False)
    outcome, weight, inverses = vector_run(EigenConfig(), torch.float16, batched=True)
    assert upstream_outcome.startswith("PreconditionerValueError: Encountered nan or inf values in")
    assert outcome == upstream_outcome
    assert bool(torch.isfinite(weight).all())
    assert all(bool(torch.isfinite(inverse).all()) for inverse in inverses)
