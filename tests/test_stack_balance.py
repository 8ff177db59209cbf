"""``InverseRootCostModel`` and the DDP balance measured by
``distributed_shampoo_dash.benchmarks.stack_balance`` (``scripts/stack_balance.py``)."""

import pickle

import pytest
import torch

pytestmark = pytest.mark.upstream
distributed_shampoo = pytest.importorskip("distributed_shampoo")

from distributed_shampoo.shampoo_types import DDPDistributedConfig, LoadBalancingConfig
from distributed_shampoo.utils.load_balancing_utils import CostModel

import distributed_shampoo_dash as dash
from distributed_shampoo_dash.benchmarks import stack_balance
from distributed_shampoo_dash.benchmarks.presets import PRESETS
from distributed_shampoo_dash.integration.cost_models import InverseRootCostModel
from distributed_shampoo_dash.solvers import chebyshev_products, newton_db_products
from distributed_shampoo_dash.solvers.minimax import minimax_products


def meta(*shape: int) -> torch.Tensor:
    return torch.empty(shape, device="meta")


@pytest.mark.parametrize(
    "shape, expected",
    [
        ((1024, 768), 24 * 2 * (1024**3 + 768**3)),  # 2-D block: two root-4 factors
        ((1024,), 19 * 2 * 1024**3),  # 1-D block: one root-2 factor
        ((8, 8, 8), 23 * 2 * 3 * 8**3),  # 3-D block: three root-6 factors
        ((2, 2, 2, 2, 2), 61 * 2 * 5 * 2**3),  # root 10 goes to eigh: default_products
    ],
)
def test_cost_is_products_times_two_d_cubed_per_factor(
    shape: tuple[int, ...], expected: int
) -> None:
    """The default solver, ``MinimaxRootInvConfig()``, at its relative ridge 1e-4."""
    assert InverseRootCostModel().cost(meta(*shape)) == expected


def test_products_are_the_configured_solvers_own_count() -> None:
    assert InverseRootCostModel().products(4.0) == minimax_products(4, 1e-4).total() == 24
    paper = InverseRootCostModel(config=dash.NewtonDBRootInvConfig())
    assert paper.products(4.0) == newton_db_products(4).total() == 61
    chebyshev = dash.ChebyshevRootInvConfig(degree=11)
    assert (
        InverseRootCostModel(config=chebyshev).products(6.0)
        == chebyshev_products(6.0, degree=11).total()
    )


def test_block_overhead_and_a_custom_solver() -> None:
    model = InverseRootCostModel(config=dash.ChebyshevRootInvConfig(degree=11), block_overhead=5)
    assert isinstance(model, CostModel)
    # Chebyshev degree 11: 10 Clenshaw products plus the residual (3 for root 4, 2 for root 2).
    assert model.cost(meta(3, 2)) == 5 + 13 * 2 * (27 + 8)
    assert model.cost(meta(3)) == 5 + 12 * 2 * 27


def test_ddp_config_with_the_model_pickles() -> None:
    config = DDPDistributedConfig(
        load_balancing_config=LoadBalancingConfig(
            cost_model=InverseRootCostModel(block_overhead=1.0)
        )
    )
    assert pickle.loads(pickle.dumps(config)) == config


def test_every_block_is_assigned_to_exactly_one_rank() -> None:
    preset = PRESETS["cpu"]
    params = stack_balance.meta_parameters(list(preset.shapes))
    per_rank = stack_balance.ddp_block_shapes_per_rank(
        params, preset.max_preconditioner_dim, 4, InverseRootCostModel()
    )
    everything = stack_balance.ddp_block_shapes_per_rank(
        params, preset.max_preconditioner_dim, 1, InverseRootCostModel()
    )[0]
    assert sorted(shape for shapes in per_rank for shape in shapes) == sorted(everything)


def test_inverse_root_model_balances_flops_better_than_upstream_default() -> None:
    """gpu preset (meta tensors, no memory), 8 ranks: 1.081 with bytes, 1.012 with FLOPs."""
    preset = PRESETS["gpu"]
    default = stack_balance.measure("gpu", preset, 8, "memory")
    balanced = stack_balance.measure("gpu", preset, 8, "inverse-root")
    assert balanced.flops_max_over_mean < 1.02
    assert default.flops_max_over_mean > 1.05
    assert sum(balanced.flops_per_rank) == pytest.approx(sum(default.flops_per_rank))
