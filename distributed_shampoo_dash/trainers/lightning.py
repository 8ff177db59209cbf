"""Lightning: ``DistributedShampoo`` + DASH under ``ModelParallelStrategy`` (FSDP2), checkpoints
included.

With Lightning (tested: 2.6.6) ``ModelParallelStrategy``, ``configure_model`` shards the model
with ``fully_shard`` and ``configure_optimizers`` then sees DTensor parameters, so Shampoo trains
unchanged. Saving a checkpoint crashed: the strategy takes the optimizer state with
``get_optimizer_state_dict(..., StateDictOptions(cpu_offload=True))``, whose type check rejects the
configuration objects Shampoo keeps in its param groups
(``ValueError: Unexpected value type <enum 'WeightDecayType'>``).
:func:`register_checkpoint_hooks` (from :mod:`distributed_shampoo_dash.trainers.checkpoint`) is the
fix: two optimizer state-dict hooks, no strategy subclass. :func:`configure_shampoo` builds the
optimizer with it registered::

    class Model(L.LightningModule):
        def configure_model(self):
            fully_shard(self.model, mesh=self.device_mesh["data_parallel"])

        def configure_optimizers(self):
            return configure_shampoo(self, lr=1e-3, solver="minimax")

Use the strategy's default sharded checkpoints (``save_distributed_checkpoint=True``): upstream's
FSDP distributors keep each rank's blocks as plain local tensors, so a full checkpoint
(``save_distributed_checkpoint=False``, gathered on rank 0) would hold rank 0's Shampoo state
only and a resume would silently restart the other ranks' preconditioners;
:func:`configure_shampoo` refuses that combination. See ``docs/trainers.md``.
"""

from typing import Any

import lightning.pytorch as pl
from distributed_shampoo import DistributedShampoo, FullyShardDistributedConfig
from lightning.pytorch.strategies import ModelParallelStrategy

from distributed_shampoo_dash.trainers.checkpoint import register_checkpoint_hooks
from distributed_shampoo_dash.trainers.optimizer import build_shampoo

__all__ = ["configure_shampoo", "register_checkpoint_hooks"]


def configure_shampoo(module: pl.LightningModule, **settings: Any) -> DistributedShampoo:
    """``DistributedShampoo`` + DASH over ``module``'s trainable parameters, checkpoint hooks on.

    Call it from ``configure_optimizers`` (after ``configure_model`` has sharded the model).
    ``settings`` are those of :func:`distributed_shampoo_dash.trainers.optimizer.build_shampoo`
    (``lr``, ``solver``, ``max_preconditioner_dim``, ``precondition_frequency``, ``epsilon``,
    ``grafting``, ``use_dash``, ...).

    Raises:
        ValueError: Under ``ModelParallelStrategy(save_distributed_checkpoint=False)`` with sharded
            parameters on several ranks, whose full checkpoints would lose the Shampoo state of
            every rank but 0.
    """
    parameters = [p for p in module.parameters() if p.requires_grad]
    optimizer = build_shampoo(parameters, **settings)
    _check_checkpoint_layout(module, optimizer)
    register_checkpoint_hooks(optimizer)
    return optimizer


def _check_checkpoint_layout(module: pl.LightningModule, optimizer: DistributedShampoo) -> None:
    """Raises if the strategy would save full checkpoints of rank-local Shampoo blocks."""
    strategy = module.trainer.strategy
    full_checkpoints = not getattr(strategy, "_save_distributed_checkpoint", True)
    sharded = any(
        isinstance(group["distributed_config"], FullyShardDistributedConfig)
        for group in optimizer.param_groups
    )
    if (
        isinstance(strategy, ModelParallelStrategy)
        and full_checkpoints
        and sharded
        and strategy.world_size > 1
    ):
        raise ValueError(
            "ModelParallelStrategy(save_distributed_checkpoint=False) saves a full checkpoint "
            "from rank 0, which holds only rank 0's DistributedShampoo blocks (each rank keeps its "
            "own as local tensors): resuming would reset the other ranks' preconditioners. Keep "
            "the default save_distributed_checkpoint=True."
        )
