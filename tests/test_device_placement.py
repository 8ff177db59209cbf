"""A DASH step creates every tensor on its parameters' device: checked on the ``meta`` device.

On ``meta`` (shapes only, no data) an op that mixes a tensor of the parameters' device with one
created on the host raises, as it does on a GPU, so a whole step there finds device-placement bugs
without a GPU. Two pieces of scaffolding: meta tensors have no values, so the one host read of
the step's flags (``Tensor.tolist``) returns "all accepted" for them, and no random generator
exists for ``meta``, so the power iteration's private generator is created on the host (``randn``
on ``meta`` ignores it). A batched solver that raised would fall back to upstream's per-block
path, whose host reads raise on ``meta`` too, so a placement bug cannot pass silently.
"""

from collections.abc import Iterator

import pytest
import torch

pytestmark = pytest.mark.upstream
pytest.importorskip("distributed_shampoo")

from distributed_shampoo import (
    EigenConfig,
)
from distributed_shampoo.preconditioner.matrix_functions_types import RootInvConfig

import distributed_shampoo_dash as dash
from distributed_shampoo_dash import step_costs
from tests.integration.shampoo import shampoo


@pytest.fixture
def meta_scaffolding() -> Iterator[None]:
    """``distributed_shampoo_dash.step_costs``'s ``meta_scaffolding`` (see the module docstring)."""
    with step_costs.meta_scaffolding():
        yield


CONFIGS: dict[str, RootInvConfig] = {
    "eigh": EigenConfig(),
    "minimax_fp32": dash.MinimaxRootInvConfig(),
    "minimax_bf16": dash.MinimaxRootInvConfig(precision="bf16", max_residual=5e-2),
    "newton_db_paper": dash.NewtonDBRootInvConfig(),
    "chebyshev": dash.ChebyshevRootInvConfig(),
}


@pytest.mark.parametrize("use_symmetric_packing", [True, False], ids=["packed", "unpacked"])
@pytest.mark.parametrize("config", sorted(CONFIGS))
def test_a_dash_step_keeps_every_tensor_on_the_parameters_device(
    config: str,
    use_symmetric_packing: bool,
    meta_scaffolding: None,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """1-D, 2-D (with remainder blocks) and 3-D parameters, roots every second step: factor
    updates, root computations and preconditioning all run, on ``meta``."""
    params = [
        torch.nn.Parameter(torch.empty(shape, device="meta"))
        for shape in [(40, 24), (24,), (3, 4, 5)]
    ]
    optimizer = shampoo(
        params,
        CONFIGS[config],
        batched=True,
        epsilon=1e-6,
        preconditioner_kwargs={"use_symmetric_packing": use_symmetric_packing},
        lr=1e-3,
        max_preconditioner_dim=16,
        precondition_frequency=2,
        start_preconditioning_step=2,
    )
    for _ in range(4):
        for param in params:
            param.grad = torch.empty(param.shape, device="meta")
        optimizer.step()
    assert all(param.device.type == "meta" for param in params)
    assert not dash.fallback_counts(optimizer)
    assert "failed" not in caplog.text
    inverse_factors = list(dash.inverse_factors(optimizer))
    assert inverse_factors and all(
        factor.inverse_root.device.type == "meta" for factor in inverse_factors
    )
