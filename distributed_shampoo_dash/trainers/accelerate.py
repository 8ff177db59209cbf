"""Hugging Face accelerate: ``DistributedShampoo`` + DASH with FSDP2 (and DDP).

accelerate's usual order, ``optimizer = Shampoo(model.parameters())`` followed by
``accelerator.prepare(model, optimizer)``, does not work for Shampoo: with FSDP2, ``prepare`` shards
the model and writes the new DTensor parameters into ``optimizer.param_groups``, but Shampoo
already holds views of the unsharded tensors, so it silently updates tensors the model no longer
uses (under DDP, ``prepare``'s ``model.to(device)`` can replace parameter storage the same way).
AdamW is not affected because it creates its state at the first step.

The recipe (accelerate tested: 1.15.0) is to prepare the model first and build the optimizer
from the prepared model's parameters, which :func:`prepare_shampoo` does::

    accelerator = Accelerator(fsdp_plugin=FullyShardedDataParallelPlugin(fsdp_version=2))
    model, optimizer = prepare_shampoo(accelerator, model, lr=1e-3, solver="minimax")
    dataloader, scheduler = accelerator.prepare(dataloader, scheduler)

accelerate's FSDP2 path shards a model only inside ``prepare(model, optimizer)`` (it refuses
``prepare_model(model)`` alone) and pairs the i-th prepared optimizer with the i-th model when it
saves. So under FSDP2 :func:`prepare_shampoo` passes the model with a placeholder
``torch.optim.SGD(lr=0)`` (stateless, never stepped), builds Shampoo over the sharded parameters,
and puts it in the returned ``AcceleratedOptimizer`` wrapper (its ``optimizer`` attribute, which
every method of the wrapper delegates to). ``save_state`` / ``load_state`` then see Shampoo as
``optimizer_0`` of ``model_0``. That is only equivalent while the wrapper has no gradient scaler
(fp16 mixed precision), which is refused; use bf16 (FSDP2's ``MixedPrecisionPolicy``) or fp32.
Without FSDP2 (DDP, one process) the model goes through ``prepare_model`` and Shampoo through
``prepare_optimizer``.

The optimizer also gets the state-dict hooks of
:mod:`distributed_shampoo_dash.trainers.checkpoint` (``save_state`` with full or CPU-offloaded
FSDP2 state dicts runs the same type check that breaks Lightning) and the parameter guard of
:mod:`distributed_shampoo_dash.trainers.parameter_guard`: an optimizer built the other way round
raises :class:`ReplacedParametersError` at its first step instead of training nothing.
Call :func:`register_parameter_guard` yourself on a ``DistributedShampoo`` you build by hand.
"""

from typing import Any

import torch
from accelerate import Accelerator
from accelerate.optimizer import AcceleratedOptimizer
from torch import nn

from distributed_shampoo_dash.trainers.checkpoint import register_checkpoint_hooks
from distributed_shampoo_dash.trainers.optimizer import build_shampoo
from distributed_shampoo_dash.trainers.parameter_guard import (
    ReplacedParametersError,
    register_parameter_guard,
)

__all__ = ["ReplacedParametersError", "prepare_shampoo", "register_parameter_guard"]


def prepare_shampoo(
    accelerator: Accelerator, model: nn.Module, **settings: Any
) -> tuple[nn.Module, AcceleratedOptimizer]:
    """Prepares ``model``, then builds and prepares ``DistributedShampoo`` + DASH over its
    parameters.

    ``settings`` are those of :func:`distributed_shampoo_dash.trainers.optimizer.build_shampoo`
    (``lr``, ``solver``, ``max_preconditioner_dim``, ``precondition_frequency``, ``epsilon``,
    ``grafting``, ``use_dash``, ...). The distributed config follows the prepared parameters
    (FSDP2 DTensors: ``FullyShardDistributedConfig``). Returns the prepared model and optimizer.

    Raises:
        ValueError: Under FSDP2 with fp16 mixed precision (a gradient scaler).
    """
    if not accelerator.is_fsdp2:
        model = accelerator.prepare_model(model)
        return model, accelerator.prepare_optimizer(_build(model, settings))
    placeholder = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.0)
    model, prepared = accelerator.prepare(model, placeholder)
    if prepared.scaler is not None:
        raise ValueError(
            "prepare_shampoo does not support accelerate's fp16 gradient scaler under FSDP2; use "
            "mixed_precision='bf16' or 'no'."
        )
    prepared.optimizer = _build(model, settings)
    return model, prepared


def _build(model: nn.Module, settings: dict[str, Any]) -> Any:
    optimizer = build_shampoo([p for p in model.parameters() if p.requires_grad], **settings)
    return register_checkpoint_hooks(optimizer)
