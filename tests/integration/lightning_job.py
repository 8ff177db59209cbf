"""A Lightning ``ModelParallelStrategy`` job on CPU for the trainer tests (run under torchrun).

``python -m torch.distributed.run --nproc_per_node=2 -m tests.integration.lightning_job
--checkpoint-dir D --report-dir R [--resume-from CKPT] [--reset-optimizer]`` trains a tiny MLP,
sharded with ``fully_shard`` on the strategy's data-parallel mesh, with ``configure_shampoo``
(DistributedShampoo + DASH, roots every step) for 4 steps, and lets ``ModelCheckpoint`` save a
sharded checkpoint every 2 steps. Every rank draws its own batch from a generator seeded with
``(rank, global_step)``, so a resumed run sees the batches an uninterrupted one does.

``--no-checkpoint-hooks`` builds the optimizer without ``register_checkpoint_hooks`` (the
reported crash). ``--reset-optimizer`` is the tests' control: after Lightning has restored the
checkpoint, the optimizer is put back to the state it had when it was built, as if its state had
not been saved. Each rank writes the class of its preconditioner list to
``<report dir>/rank<r>_list.txt``.
"""

import argparse
import copy
import os
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.strategies import ModelParallelStrategy
from torch import nn
from torch.distributed.fsdp import fully_shard
from torch.utils.data import DataLoader

from distributed_shampoo_dash.trainers.lightning import configure_shampoo
from distributed_shampoo_dash.trainers.optimizer import build_shampoo
from tests.integration.shampoo import TRAINER_SETTINGS, preconditioner_list

NUM_STEPS = 4


class TinyModule(pl.LightningModule):
    def __init__(self, report_dir: Path, reset_optimizer: bool, checkpoint_hooks: bool) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.model = nn.Sequential(nn.Linear(16, 24), nn.ReLU(), nn.Linear(24, 8))
        self.report_dir = report_dir
        self.reset_optimizer = reset_optimizer
        self.checkpoint_hooks = checkpoint_hooks
        self.initial_optimizer_state: dict[str, Any] = {}

    def configure_model(self) -> None:
        mesh = self.device_mesh["data_parallel"]
        for layer in self.model:
            if isinstance(layer, nn.Linear):
                fully_shard(layer, mesh=mesh)
        fully_shard(self.model, mesh=mesh)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        if self.checkpoint_hooks:
            optimizer = configure_shampoo(self, **TRAINER_SETTINGS)
        else:  # what a user without the fix builds
            optimizer = build_shampoo(
                [p for p in self.parameters() if p.requires_grad], **TRAINER_SETTINGS
            )
        self.initial_optimizer_state = copy.deepcopy(optimizer.state_dict())
        return optimizer

    def on_train_start(self) -> None:
        optimizer = self.optimizers().optimizer  # type: ignore[union-attr]
        name = type(preconditioner_list(optimizer)).__name__
        (self.report_dir / f"rank{self.global_rank}_list.txt").write_text(name)
        if self.reset_optimizer:
            optimizer.load_state_dict(self.initial_optimizer_state)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        generator = torch.Generator().manual_seed(1000 * self.global_rank + self.global_step)
        inputs = torch.randn(8, 16, generator=generator)
        targets = torch.randn(8, 8, generator=generator)
        return F.mse_loss(self.model(inputs), targets)

    def train_dataloader(self) -> DataLoader:
        return DataLoader(list(range(64)), batch_size=1)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--checkpoint-dir", type=Path, required=True)
    parser.add_argument("--report-dir", type=Path, required=True)
    parser.add_argument("--resume-from", type=Path)
    parser.add_argument("--reset-optimizer", action="store_true")
    parser.add_argument("--no-checkpoint-hooks", action="store_true")
    parser.add_argument(
        "--full-checkpoint", action="store_true", help="save_distributed_checkpoint=False"
    )
    args = parser.parse_args()
    torch.set_num_threads(1)
    args.report_dir.mkdir(parents=True, exist_ok=True)
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=int(os.environ["WORLD_SIZE"]),
        strategy=ModelParallelStrategy(
            data_parallel_size=int(os.environ["WORLD_SIZE"]),
            tensor_parallel_size=1,
            save_distributed_checkpoint=not args.full_checkpoint,
        ),
        max_steps=NUM_STEPS,
        callbacks=[
            ModelCheckpoint(
                dirpath=args.checkpoint_dir, filename="{step}", every_n_train_steps=2, save_top_k=-1
            )
        ],
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )
    module = TinyModule(args.report_dir, args.reset_optimizer, not args.no_checkpoint_hooks)
    trainer.fit(module, ckpt_path=args.resume_from)


if __name__ == "__main__":
    main()
