"""Every factor dtype and inverse-exponent override that upstream ``EigenConfig`` trains with
trains with every DASH solver: half-precision factors are computed in float32, roots no solver
step reaches go to batched eigh, and nothing raises after the state changed."""

import pytest
import torch

pytest.importorskip("distributed_shampoo")

from distributed_shampoo.preconditioner.matrix_functions_types import (
    EigenConfig,
    RootInvConfig,
)

import distributed_shampoo_dash as dash
from distributed_shampoo_dash.integration.configs import DashRootInvConfig
from tests.integration.shampoo import kronecker_factors, shampoo

#: Every DASH solver config at its defaults, and upstream's eigh batched.
SOLVER_CONFIGS: dict[str, RootInvConfig] = {
    config_class.__name__: config_class() for config_class in DashRootInvConfig.__subclasses__()
} | {"EigenConfig": EigenConfig()}
FACTOR_DTYPES = [torch.float16, torch.bfloat16, torch.float32, torch.float64]
#: No override; Shampoo with exponent -1/3 (root 3 of a 2-D factor); a root that is no small
#: fraction (1 / 0.29); root 8.
OVERRIDES = {
    "none": {},
    "one_third": {2: 1 / 3},
    "0.29": {1: 0.29, 2: 0.29},
    "one_eighth": {2: 1 / 8},
}


@pytest.mark.parametrize("override", list(OVERRIDES), ids=str)
@pytest.mark.parametrize("factor_dtype", FACTOR_DTYPES, ids=str)
@pytest.mark.parametrize("solver", list(SOLVER_CONFIGS))
def test_every_factor_dtype_and_override_trains_with_every_dash_solver(
    solver: str, factor_dtype: torch.dtype, override: str
) -> None:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 6), torch.nn.Linear(6, 4))
    initial = [parameter.detach().clone() for parameter in model.parameters()]
    optimizer = shampoo(
        model.parameters(),
        SOLVER_CONFIGS[solver],
        batched=True,
        epsilon=1e-6,
        preconditioner_kwargs={
            "factor_matrix_dtype": factor_dtype,
            "inverse_exponent_override": OVERRIDES[override],
        },
    )
    for _ in range(3):
        optimizer.zero_grad()
        model(torch.randn(5, 8)).square().sum().backward()
        optimizer.step()

    assert dash.is_batched(optimizer.param_groups[0]["preconditioner_config"])
    for parameter, before in zip(model.parameters(), initial, strict=True):
        assert bool(parameter.isfinite().all())
        assert not torch.equal(parameter, before)
    factors = [f for block in kronecker_factors(optimizer) for f in block.factor_matrices]
    assert factors and all(factor.dtype == factor_dtype for factor in factors)
