"""Optimizer factories and state accessors shared by the adapter tests (needs upstream)."""

from collections.abc import Callable, Iterator
from typing import Any

import torch
from distributed_shampoo import (
    AdamPreconditionerConfig,
    DistributedShampoo,
    RootInvShampooPreconditionerConfig,
)
from distributed_shampoo.preconditioner.matrix_functions_types import RootInvConfig
from distributed_shampoo.preconditioner.shampoo_preconditioner_list import (
    RootInvShampooKroneckerFactorsUnwrapped,
    RootInvShampooPreconditionerList,
)

import distributed_shampoo_dash as dash

#: The trainer jobs' settings (``distributed_shampoo_dash.trainers.optimizer``): blocks of 8,
#: roots every step from the first, batched eigh.
TRAINER_SETTINGS: dict[str, Any] = {
    "lr": 1e-2,
    "epsilon": 1e-8,
    "max_preconditioner_dim": 8,
    "precondition_frequency": 1,
    "start_preconditioning_step": 1,
    "solver": "eigen",
}


def root_inv_config(batched: bool, **fields: Any) -> RootInvShampooPreconditionerConfig:
    """``RootInvShampooPreconditionerConfig(**fields)``: DASH's form if ``batched``, else
    upstream's."""
    if batched:
        return dash.RootInvShampooPreconditionerConfig(**fields)
    return RootInvShampooPreconditionerConfig(**fields)


def shampoo(
    params: Any,
    solver: RootInvConfig,
    *,
    batched: bool,
    epsilon: float = 1e-8,
    preconditioner_kwargs: dict[str, Any] | None = None,
    **optimizer_kwargs: Any,
) -> DistributedShampoo:
    """``DistributedShampoo`` with Adam grafting and, unless ``optimizer_kwargs`` say otherwise,
    blocks of at most 8 and roots every step; ``batched`` chooses the DASH form of the
    preconditioner config (``preconditioner_kwargs`` may hold its DASH settings), else
    upstream's."""
    settings: dict[str, Any] = {
        "lr": 0.01,
        "betas": (0.9, 0.95),
        "max_preconditioner_dim": 8,
        "precondition_frequency": 1,
        "start_preconditioning_step": 1,
        "grafting_config": AdamPreconditionerConfig(beta2=0.95, epsilon=1e-8),
    }
    return DistributedShampoo(
        params,
        epsilon=epsilon,
        preconditioner_config=root_inv_config(
            batched, amortized_computation_config=solver, **(preconditioner_kwargs or {})
        ),
        **(settings | optimizer_kwargs),
    )


def shampoo_factory(
    solver: RootInvConfig,
    *,
    batched: bool,
    epsilon: float = 1e-8,
    optimizer_kwargs: dict[str, Any] | None = None,
    **preconditioner_kwargs: Any,
) -> Callable[[torch.nn.Module], DistributedShampoo]:
    """:func:`shampoo` of a model's parameters."""
    return lambda model: shampoo(
        model.parameters(),
        solver,
        batched=batched,
        epsilon=epsilon,
        preconditioner_kwargs=preconditioner_kwargs,
        **(optimizer_kwargs or {}),
    )


def max_parameter_difference(first: torch.nn.Module, second: torch.nn.Module) -> float:
    return max(
        float((a - b).detach().abs().max())
        for a, b in zip(first.parameters(), second.parameters(), strict=True)
    )


def preconditioner_list(
    optimizer: DistributedShampoo, group: int = 0
) -> RootInvShampooPreconditionerList:
    preconditioner_list = dash.preconditioner_lists(optimizer)[group]
    assert isinstance(preconditioner_list, RootInvShampooPreconditionerList)
    return preconditioner_list


def kronecker_factors(
    optimizer: DistributedShampoo,
) -> Iterator[RootInvShampooKroneckerFactorsUnwrapped]:
    """Every block's unwrapped Kronecker factors (all blocks, masked or not), param group 0."""
    yield from preconditioner_list(optimizer)._local_kronecker_factors_unwrapped
