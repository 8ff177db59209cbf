"""Tests of BatchedRootInvShampooPreconditionerConfig and the DASH solver configs in
DistributedShampoo.
"""

import unittest

import torch
from distributed_shampoo import (
    BatchedRootInvShampooPreconditionerConfig,
    ChebyshevRootInvConfig,
    CoupledNewtonConfig,
    DistributedShampoo,
    EigenConfig,
    MinimaxRootInvConfig,
    RootInvShampooPreconditionerConfig,
)
from distributed_shampoo.preconditioner.dash.preconditioner_list import (
    BatchedRootInvShampooPreconditionerList,
)
from distributed_shampoo.preconditioner.matrix_functions_types import RootInvConfig
from distributed_shampoo.shampoo_types import (
    RootInvShampooPreconditionerConfig as RootInvConfigType,
)
from torch import nn
from torch.testing._internal.common_utils import (
    instantiate_parametrized_tests,
    parametrize,
)


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(12, 10), nn.Tanh(), nn.Linear(10, 3, bias=False))


def _train(
    preconditioner_config: RootInvConfigType, num_steps: int = 10
) -> tuple[nn.Module, DistributedShampoo, list[float]]:
    model = _model()
    optimizer = DistributedShampoo(
        model.parameters(),
        lr=0.01,
        betas=(0.9, 0.95),
        epsilon=1e-4,  # coupled Newton does not converge in fp32 on rank-deficient factors at 1e-8
        max_preconditioner_dim=8,
        precondition_frequency=1,
        start_preconditioning_step=1,
        preconditioner_config=preconditioner_config,
    )
    generator = torch.Generator().manual_seed(0)
    inputs, targets = (
        torch.randn(16, 12, generator=generator),
        torch.randn(16, 3, generator=generator),
    )
    losses = []
    for _ in range(num_steps):
        optimizer.zero_grad()
        loss = nn.functional.mse_loss(model(inputs), targets)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return model, optimizer, losses


def _max_difference(first: nn.Module, second: nn.Module) -> float:
    return max(
        (a - b).abs().max().item()
        for a, b in zip(first.parameters(), second.parameters(), strict=True)
    )


@instantiate_parametrized_tests
class BatchedRootInvShampooPreconditionerConfigTest(unittest.TestCase):
    def test_config_selects_the_batched_list(self) -> None:
        _, optimizer, _ = _train(BatchedRootInvShampooPreconditionerConfig(), num_steps=1)
        self.assertIsInstance(
            optimizer._per_group_state_lists[0]["shampoo_preconditioner_list"],
            BatchedRootInvShampooPreconditionerList,
        )

    @parametrize("solver", (EigenConfig(), CoupledNewtonConfig()))
    @parametrize("use_symmetric_packing", (False, True))
    def test_batched_list_matches_the_per_block_list(
        self, solver: RootInvConfig, use_symmetric_packing: bool
    ) -> None:
        batched, batched_optimizer, _ = _train(
            BatchedRootInvShampooPreconditionerConfig(
                amortized_computation_config=solver, use_symmetric_packing=use_symmetric_packing
            )
        )
        per_block, per_block_optimizer, _ = _train(
            RootInvShampooPreconditionerConfig(
                amortized_computation_config=solver, use_symmetric_packing=use_symmetric_packing
            )
        )
        self.assertLess(_max_difference(batched, per_block), 5e-4)
        self.assertEqual(
            batched_optimizer.state_dict()["state"].keys(),
            per_block_optimizer.state_dict()["state"].keys(),
        )

    @parametrize("solver", (MinimaxRootInvConfig(), ChebyshevRootInvConfig()))
    @parametrize("batched", (False, True))
    def test_dash_solver_configs_train(self, solver: RootInvConfig, batched: bool) -> None:
        config_class = (
            BatchedRootInvShampooPreconditionerConfig
            if batched
            else RootInvShampooPreconditionerConfig
        )
        model, _, losses = _train(config_class(amortized_computation_config=solver))
        self.assertLess(losses[-1], losses[0])
        self.assertTrue(all(torch.isfinite(p).all() for p in model.parameters()))
