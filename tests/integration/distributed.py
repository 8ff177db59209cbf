"""Worker of the multi-process tests: trains ``MixedShapeModel`` under an upstream distributor.

Every rank sees the same batches, so data-parallel averaging leaves the gradient of a
single-process run. ``run_worker`` is started by ``torch.multiprocessing.spawn`` (gloo on CPU);
rank 0 writes what the test compares to ``<out_dir>/<name>.pt``.
"""

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from distributed_shampoo import (
    DDPDistributedConfig,
    DistributedShampoo,
    EigenConfig,
    FSDPDistributedConfig,
    FullyShardDistributedConfig,
    HybridShardDistributedConfig,
)
from distributed_shampoo.distributor.shampoo_fsdp_utils import compile_fsdp_parameter_metadata
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import FullyShardedDataParallel, fully_shard
from torch.distributed.tensor import DTensor
from torch.nn.parallel import DistributedDataParallel

from distributed_shampoo_dash.integration.preconditioner_list import (
    BatchedRootInvShampooPreconditionerList,
)
from tests.integration.models import MixedShapeModel, make_batches, run_steps
from tests.integration.shampoo import preconditioner_list, shampoo_factory

#: Distributors under test, by the name the tests use.
DISTRIBUTORS = ("ddp", "fully_shard", "hybrid_shard", "fsdp1")


@dataclass(frozen=True)
class Job:
    """What one spawned group of processes does.

    Attributes:
        distributor (str): One of :data:`DISTRIBUTORS`.
        num_steps (int): Steps of each training run.
        compare (bool): Train with DASH off and on; save both models' parameters as ``compare``.
        checkpoints (tuple[tuple[bool, bool], ...]): ``(dash_when_saving, dash_when_loading)``
            pairs: train ``num_steps // 2`` steps, save with ``torch.distributed.checkpoint``,
            load into a fresh model and optimizer, train the rest; saved as
            ``resumed_<on|off>_<on|off>`` next to ``uninterrupted_<on|off>``.
        save_checkpoint (bool): Also leave a checkpoint after ``num_steps // 2`` steps (DASH on) in
            ``<out_dir>/checkpoint`` for a run at another world size.
        load_checkpoint (str | None): Load this checkpoint (DASH on), train ``num_steps // 2``
            steps and save the parameters as ``loaded``.
    """

    distributor: str
    num_steps: int = 10
    compare: bool = True
    checkpoints: tuple[tuple[bool, bool], ...] = field(default=())
    save_checkpoint: bool = False
    load_checkpoint: str | None = None


def _wrap(model: nn.Module, distributor: str) -> tuple[nn.Module, object]:
    """The wrapped model and the matching upstream ``distributed_config``."""
    match distributor:
        case "ddp":
            return DistributedDataParallel(model), DDPDistributedConfig()
        case "fully_shard":
            return fully_shard(model), FullyShardDistributedConfig()
        case "hybrid_shard":
            mesh = init_device_mesh(
                "cpu", (2, dist.get_world_size() // 2), mesh_dim_names=("replicate", "shard")
            )
            return fully_shard(model, mesh=mesh), HybridShardDistributedConfig(device_mesh=mesh)
        case "fsdp1":
            wrapped = FullyShardedDataParallel(
                model, use_orig_params=True, device_id=torch.device("cpu")
            )
            return wrapped, FSDPDistributedConfig(
                param_to_metadata=compile_fsdp_parameter_metadata(wrapped)
            )
    raise ValueError(f"Unknown distributor {distributor!r}; expected one of {DISTRIBUTORS}.")


def _build(distributor: str, use_dash: bool) -> tuple[nn.Module, DistributedShampoo]:
    """A seeded model under ``distributor`` and its optimizer, with the DASH or the upstream form
    of the config."""
    torch.manual_seed(0)
    model, distributed_config = _wrap(MixedShapeModel(), distributor)
    make_optimizer: Callable[[nn.Module], DistributedShampoo] = shampoo_factory(
        EigenConfig(),
        batched=use_dash,
        optimizer_kwargs={"distributed_config": distributed_config},
    )
    optimizer = make_optimizer(model)
    batched = isinstance(preconditioner_list(optimizer), BatchedRootInvShampooPreconditionerList)
    assert batched == use_dash, (
        f"DASH {'on' if use_dash else 'off'} but the list is {type(preconditioner_list(optimizer))}"
    )
    return model, optimizer


def full_parameters(model: nn.Module) -> dict[str, torch.Tensor]:
    """Every parameter of ``model`` gathered in full, by its unwrapped name (collective)."""
    if isinstance(model, FullyShardedDataParallel):
        with FullyShardedDataParallel.summon_full_params(model):
            return {name: p.detach().clone() for name, p in model.module.named_parameters()}
    module = model.module if isinstance(model, DistributedDataParallel) else model
    return {
        name: (p.full_tensor() if isinstance(p, DTensor) else p).detach().clone()
        for name, p in module.named_parameters()
    }


def _train(distributor: str, use_dash: bool, num_steps: int) -> dict[str, torch.Tensor]:
    model, optimizer = _build(distributor, use_dash)
    run_steps(model, optimizer, make_batches(num_steps))
    return full_parameters(model)


def _save(model: nn.Module, optimizer: DistributedShampoo, path: Path) -> None:
    state = {
        "model": get_model_state_dict(model),
        "optim": get_optimizer_state_dict(model, optimizer),
    }
    dcp.save(state, checkpoint_id=str(path))


def load(model: nn.Module, optimizer: DistributedShampoo, path: Path) -> None:
    """Loads a checkpoint written by ``_save`` into ``model`` and ``optimizer`` (any world size)."""
    state = {
        "model": get_model_state_dict(model),
        "optim": get_optimizer_state_dict(model, optimizer),
    }
    dcp.load(state, checkpoint_id=str(path))
    set_model_state_dict(model, state["model"])
    set_optimizer_state_dict(model, optimizer, state["optim"])


def _label(use_dash: bool) -> str:
    return "on" if use_dash else "off"


def _run_job(job: Job, out_dir: Path) -> dict[str, object]:
    results: dict[str, object] = {}
    half = job.num_steps // 2
    batches = make_batches(job.num_steps)
    if job.compare:
        results["compare"] = {
            _label(use_dash): _train(job.distributor, use_dash, job.num_steps)
            for use_dash in (False, True)
        }
    for save_dash, load_dash in job.checkpoints:
        results[f"uninterrupted_{_label(save_dash)}"] = _train(
            job.distributor, save_dash, job.num_steps
        )
        path = out_dir / f"checkpoint_{_label(save_dash)}_{_label(load_dash)}"
        model, optimizer = _build(job.distributor, save_dash)
        run_steps(model, optimizer, batches[:half])
        _save(model, optimizer, path)
        model, optimizer = _build(job.distributor, load_dash)
        load(model, optimizer, path)
        run_steps(model, optimizer, batches[half:], first_step=half)
        results[f"resumed_{_label(save_dash)}_{_label(load_dash)}"] = full_parameters(model)
    if job.save_checkpoint:
        model, optimizer = _build(job.distributor, True)
        run_steps(model, optimizer, batches[:half])
        _save(model, optimizer, out_dir / "checkpoint")
    if job.load_checkpoint is not None:
        model, optimizer = _build(job.distributor, True)
        load(model, optimizer, Path(job.load_checkpoint))
        run_steps(model, optimizer, batches[half:], first_step=half)
        results["loaded"] = full_parameters(model)
    return results


def run_worker(rank: int, world_size: int, port: int, job: Job, out_dir: str) -> None:
    """Entry point of one spawned rank."""
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size
    )
    try:
        results = _run_job(job, Path(out_dir))
        if rank == 0:
            torch.save(results, Path(out_dir) / "results.pt")
        dist.barrier()
    finally:
        dist.destroy_process_group()
