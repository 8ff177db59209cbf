"""A Hugging Face accelerate FSDP2 job on CPU for the trainer tests (run under torchrun).

``python -m torch.distributed.run --nproc_per_node=2 -m tests.integration.accelerate_job
--phase P --state-dir D --report-dir R`` trains a tiny MLP with ``prepare_shampoo`` (FSDP2,
DistributedShampoo + DASH, roots every step); every rank draws batch ``s`` from a generator seeded
with ``(rank, s)``. Phases:

* ``uninterrupted``: steps 1-4, ``accelerator.save_state`` after steps 2 and 4 (``D/step2``,
  ``D/step4``);
* ``resumed``: ``load_state(--resume-from)``, steps 3-4, ``save_state(D/step4)``;
* ``control``: the same, then the optimizer is put back to the state it had when built (its state
  "not restored");
* ``prebuilt``: the order that fails silently, Shampoo built on the unsharded model and then
  ``accelerator.prepare(model, optimizer)``; its first step must raise;
* ``prebuilt-unguarded``: the same with a plain ``DistributedShampoo`` (no guard): trains 2 steps
  and writes to ``R/rank<r>_changed.txt`` whether any local weight changed.

CPU shim (test scaffolding only): accelerate enables FSDP only on an accelerator and uses DDP on
CPU, so :func:`force_fsdp2` marks the process state as FSDP after ``Accelerator()`` is built (the
FSDP2 code path itself is device-agnostic and runs on gloo).
"""

import argparse
import copy
from pathlib import Path

import torch
import torch.nn.functional as F
from accelerate import Accelerator
from accelerate.state import PartialState
from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin
from distributed_shampoo import DistributedShampoo
from torch import nn

from distributed_shampoo_dash.trainers.accelerate import prepare_shampoo
from distributed_shampoo_dash.trainers.optimizer import build_shampoo, shampoo_kwargs
from tests.integration.shampoo import TRAINER_SETTINGS, preconditioner_list


def force_fsdp2(accelerator: Accelerator, plugin: FullyShardedDataParallelPlugin) -> None:
    """Makes a CPU ``Accelerator`` take its FSDP2 code path (gloo), as it would on GPUs."""
    PartialState().distributed_type = DistributedType.FSDP
    accelerator.state.distributed_type = DistributedType.FSDP
    accelerator.state.fsdp_plugin = plugin


def batch(rank: int, step: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(1000 * rank + step)
    return torch.randn(8, 16, generator=generator), torch.randn(8, 8, generator=generator)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument(
        "--phase",
        choices=("uninterrupted", "resumed", "control", "prebuilt", "prebuilt-unguarded"),
        required=True,
    )
    parser.add_argument("--state-dir", type=Path, required=True)
    parser.add_argument("--report-dir", type=Path, required=True)
    parser.add_argument("--resume-from", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(1)

    plugin = FullyShardedDataParallelPlugin(fsdp_version=2, state_dict_type="SHARDED_STATE_DICT")
    accelerator = Accelerator(fsdp_plugin=plugin, cpu=True)
    force_fsdp2(accelerator, plugin)
    try:
        run_phase(args, accelerator)
    finally:
        # The prepared optimizer's distributor holds the process group: released first, its
        # gloo threads stop when the group is destroyed, not at interpreter teardown
        # (docs/distributed.md, "Ending a job").
        accelerator.free_memory()
        accelerator.end_training()


def run_phase(args: argparse.Namespace, accelerator: Accelerator) -> None:
    """Builds the model and optimizer in the order of ``args.phase`` and trains."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 24), nn.ReLU(), nn.Linear(24, 8))
    if args.phase == "prebuilt":
        optimizer = build_shampoo(model.parameters(), **TRAINER_SETTINGS)
        model, optimizer = accelerator.prepare(model, optimizer)
    elif args.phase == "prebuilt-unguarded":
        optimizer = DistributedShampoo(model.parameters(), **shampoo_kwargs(**TRAINER_SETTINGS))
        model, optimizer = accelerator.prepare(model, optimizer)
    else:
        model, optimizer = prepare_shampoo(accelerator, model, **TRAINER_SETTINGS)
    # (Taken only where it is needed: with the prebuilt optimizer even state_dict() fails.)
    initial_state = copy.deepcopy(optimizer.state_dict()) if args.phase == "control" else None
    rank = accelerator.process_index
    args.report_dir.mkdir(parents=True, exist_ok=True)
    (args.report_dir / f"rank{rank}_list.txt").write_text(
        type(preconditioner_list(optimizer.optimizer)).__name__
    )

    if args.phase == "prebuilt-unguarded":
        before = [p.to_local().detach().clone() for p in model.parameters()]
        for step in (1, 2):
            inputs, targets = batch(rank, step)
            accelerator.backward(F.mse_loss(model(inputs), targets))
            optimizer.step()
            optimizer.zero_grad()
        changed = any(
            not torch.equal(b, p.to_local())
            for b, p in zip(before, model.parameters(), strict=True)
        )
        (args.report_dir / f"rank{rank}_changed.txt").write_text(str(changed))
        return

    first_step = 1
    if args.resume_from is not None:
        accelerator.load_state(str(args.resume_from))
        first_step = 3
        if initial_state is not None:
            optimizer.load_state_dict(initial_state)
    for step in range(first_step, 5):
        inputs, targets = batch(rank, step)
        accelerator.backward(F.mse_loss(model(inputs), targets))
        optimizer.step()
        optimizer.zero_grad()
        if step % 2 == 0:
            accelerator.save_state(str(args.state_dir / f"step{step}"))


if __name__ == "__main__":
    main()
