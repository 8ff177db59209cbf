"""What DASH batches and what it leaves to upstream's per-block path, unchanged."""

from functools import partial
from unittest import mock

import pytest
import torch

pytestmark = pytest.mark.upstream
distributed_shampoo = pytest.importorskip("distributed_shampoo")

from distributed_shampoo import (
    CoupledHigherOrderConfig,
    EigenConfig,
    PseudoInverseConfig,
)
from distributed_shampoo.preconditioner import shampoo_preconditioner_list
from distributed_shampoo.preconditioner.matrix_functions_types import RootInvConfig

import distributed_shampoo_dash as dash
from distributed_shampoo_dash.integration.policy import RootPolicy
from distributed_shampoo_dash.solvers import eigh_inverse_root
from tests.integration.models import train
from tests.integration.shampoo import max_parameter_difference, preconditioner_list, shampoo_factory

NUM_STEPS = 6


@pytest.mark.parametrize(
    "solver, epsilon",
    [
        (EigenConfig(rank_deficient_stability_config=PseudoInverseConfig()), 0.0),
        (CoupledHigherOrderConfig(rel_epsilon=1e-4, abs_epsilon=1e-6), 1e-8),
    ],
    ids=["pseudo_inverse", "coupled_higher_order"],
)
def test_configs_dash_does_not_batch_take_upstreams_per_block_path(
    solver: RootInvConfig, epsilon: float
) -> None:
    upstream_model, _, _ = train(
        shampoo_factory(solver, batched=False, epsilon=epsilon), num_steps=NUM_STEPS
    )
    with mock.patch.object(
        RootPolicy, "solve", autospec=True, side_effect=RootPolicy.solve
    ) as batched_solve:
        dash_model, dash_optimizer, _ = train(
            shampoo_factory(solver, batched=True, epsilon=epsilon), num_steps=NUM_STEPS
        )

    batched_solve.assert_not_called()
    assert dash.fallback_counts(dash_optimizer)["replayed"] > 0
    assert max_parameter_difference(upstream_model, dash_model) < 5e-4


def test_a_mocked_matrix_inverse_root_is_called_per_factor_as_upstream_does() -> None:
    def count_calls(batched: bool) -> int:
        with mock.patch.object(
            shampoo_preconditioner_list,
            "matrix_inverse_root",
            wraps=shampoo_preconditioner_list.matrix_inverse_root,
        ) as mocked:
            train(shampoo_factory(EigenConfig(), batched=batched), num_steps=2)
        return mocked.call_count

    assert count_calls(batched=True) == count_calls(batched=False) > 0


@pytest.mark.parametrize(
    "config, root",
    [(dash.MinimaxRootInvConfig(), 2.5), (dash.NewtonDBRootInvConfig(), 6.0)],
    ids=["minimax_fractional_root", "paper_root_6"],
)
def test_newton_db_hands_roots_it_cannot_reach_to_batched_eigh(
    config: RootInvConfig, root: float
) -> None:
    stack = torch.randn(3, 6, 6, dtype=torch.float64)
    stack = stack @ stack.mT
    result = dash.inverse_roots(stack, root, config, epsilon=1e-6)
    expected = eigh_inverse_root(stack, root, epsilon=1e-6)
    torch.testing.assert_close(result.inverse_root, expected.inverse_root)
    assert bool(result.accepted.all()) and not bool(result.recomputed.any())


def test_newton_db_trains_a_3d_parameter_whose_blocks_need_root_6() -> None:
    torch.manual_seed(0)
    weight = torch.nn.Parameter(torch.randn(4, 5, 6))
    target = torch.randn(4, 5, 6)
    optimizer = shampoo_factory(dash.MinimaxRootInvConfig(), batched=True)(
        torch.nn.ParameterList([weight])
    )
    losses = []
    for _ in range(10):
        optimizer.zero_grad()
        loss = (weight - target).square().sum()
        loss.backward()
        optimizer.step()
        losses.append(float(loss))
    factors = preconditioner_list(optimizer)._local_kronecker_factors_unwrapped[0]
    assert factors.roots == (6.0, 6.0, 6.0)
    assert losses[-1] < losses[0] and bool(torch.isfinite(weight).all())


def kl_shampoo_factory(
    model: torch.nn.Module, batched: bool
) -> distributed_shampoo.DistributedShampoo:
    config_cls = (
        dash.RootInvKLShampooPreconditionerConfig
        if batched
        else distributed_shampoo.RootInvKLShampooPreconditionerConfig
    )
    return distributed_shampoo.DistributedShampoo(
        model.parameters(),
        lr=0.01,
        betas=(0.9, 0.95),
        epsilon=1e-6,
        max_preconditioner_dim=8,
        precondition_frequency=1,
        start_preconditioning_step=1,
        preconditioner_config=config_cls(amortized_computation_config=EigenConfig()),
    )


def test_kl_shampoo_keeps_its_outer_products_and_batches_its_roots() -> None:
    """KL-Shampoo's list overrides upstream's ``_compute_outer_product_list`` hook: with DASH its
    factor update still goes through the hook, so the optimizer is upstream's."""
    upstream_model, _, _ = train(partial(kl_shampoo_factory, batched=False), num_steps=NUM_STEPS)
    with mock.patch.object(
        dash.integration.BatchedRootInvKLShampooPreconditionerList,
        "_compute_outer_product_list",
        autospec=True,
        side_effect=shampoo_preconditioner_list.RootInvKLShampooPreconditionerList._compute_outer_product_list,
    ) as hook:
        dash_model, dash_optimizer, _ = train(
            partial(kl_shampoo_factory, batched=True), num_steps=NUM_STEPS
        )

    assert isinstance(
        preconditioner_list(dash_optimizer),
        dash.integration.BatchedRootInvKLShampooPreconditionerList,
    )
    assert hook.call_count > 0
    assert max_parameter_difference(upstream_model, dash_model) < 5e-4
