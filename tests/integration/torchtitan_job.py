"""A torchtitan job on CPU for the trainer tests: a config module plus the launcher torchrun runs.

``python -m torch.distributed.run --nproc_per_node=2 -m tests.integration.torchtitan_job
--module tests.integration.torchtitan_job --config tiny_shampoo [torchtitan flags]`` trains a
tiny model with torchtitan's own ``Trainer`` (its checkpointer, LR schedule, gradient clipping and
loop) and ``ShampooOptimizersContainer``. Everything here is test scaffolding, not package code:

* CPU shims: torchtitan 0.3.0 assumes an accelerator (``device_type`` falls back to ``"cuda"``)
  and imports triton kernels at import time. :func:`apply_cpu_shims` makes torch report ``"cpu"``
  as the available device type (so torchtitan picks gloo, ``torch.cpu`` and CPU tensors) and
  replaces the accelerator memory monitor with a stub, gives ``barrier`` an integer CPU device
  id, and puts an inert module in place of torchtitan's expert-parallel triton kernels (nothing
  here runs them).
* A tiny model without attention (embedding, two residual MLP blocks, norm, head) built from
  torchtitan's configurable modules, so no FlexAttention is needed, sharded with ``fully_shard``
  per block and at the root on torchtitan's ``fsdp`` mesh.
* A byte-level tokenizer stub and a seeded synthetic data loader that saves its position.
* ``post_optimizer_build_fn`` writes, per rank, the class of the optimizer's preconditioner list,
  so a test can check that DASH's batched list is in use.
"""

import os
import sys
import types
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

#: Environment variable with the folder where workers write what the tests read.
REPORT_DIR_VARIABLE = "DASH_TEST_REPORT_DIR"
#: torchtitan modules that import triton at import time (none of them runs here).
TRITON_KERNEL_MODULES = ("torchtitan.distributed.minimal_async_ep.kernels",)
VOCAB_SIZE = 64
SEQ_LEN = 16


def _inert(*args: Any, **kwargs: Any) -> Any:
    """Stands for any triton object: a decorator returns the function, anything else itself."""
    if len(args) == 1 and callable(args[0]) and not kwargs:
        return args[0]
    return _INERT


def _inert_attribute(name: str) -> Any:
    if name.startswith("__"):  # __file__, __path__, ...: a plain module has none of these
        raise AttributeError(name)
    return _INERT


class _Inert:
    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return _inert(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return _inert_attribute(name)

    def __getitem__(self, key: Any) -> Any:
        return _INERT


_INERT = _Inert()


def apply_cpu_shims() -> None:
    """Lets torchtitan 0.3.0 run on a CPU-only torch (call before importing torchtitan)."""
    import torch._utils

    torch._utils._get_available_device_type = lambda: "cpu"  # type: ignore[assignment]
    # The expert-parallel triton kernels, imported by torchtitan's model code at import time; an
    # inert module (not a fake triton, which torch itself would then try to use).
    for name in TRITON_KERNEL_MODULES:
        if name not in sys.modules:
            module = types.ModuleType(name)
            module.__getattr__ = _inert_attribute  # type: ignore[method-assign]
            sys.modules[name] = module


apply_cpu_shims()

from torch import nn
from torch.distributed.fsdp import fully_shard
from torchtitan.components import metrics as torchtitan_metrics
from torchtitan.components.checkpoint import CheckpointManager
from torchtitan.components.dataloader import BaseDataLoader
from torchtitan.components.loss import CrossEntropyLoss
from torchtitan.components.metrics import DeviceMemStats, MetricsProcessor
from torchtitan.components.optimizer import LRSchedulersContainer
from torchtitan.components.tokenizer import BaseTokenizer
from torchtitan.config import ParallelismConfig, TrainingConfig
from torchtitan.distributed import utils as torchtitan_distributed_utils
from torchtitan.models.common import Embedding, Linear, RMSNorm
from torchtitan.protocols import BaseModel
from torchtitan.protocols.model_spec import ModelSpec
from torchtitan.protocols.module import Module
from torchtitan.trainer import Trainer

from distributed_shampoo_dash.trainers.torchtitan import (
    ShampooOptimizersContainer,
    add_missing_set_timeout,
)

# The documented workaround for torchtitan 0.3.0 on torch 2.13 (needed on GPUs too).
add_missing_set_timeout()


class CPUMemoryMonitor:
    """Stands for torchtitan's accelerator memory monitor (``torch.cpu`` has no memory stats)."""

    device_name = "cpu"
    device_capacity_gib = 0.0

    def get_peak_stats(self) -> DeviceMemStats:
        return DeviceMemStats(0.0, 0.0, 0.0, 0.0, 0, 0)

    def reset_peak_stats(self) -> None:
        pass


torchtitan_metrics.build_device_memory_monitor = CPUMemoryMonitor  # type: ignore[assignment]


class CPUDeviceModule:
    """``torch.cpu`` with an integer ``current_device()`` (torchtitan passes it to ``barrier``)."""

    def current_device(self) -> int:
        return 0

    def __getattr__(self, name: str) -> Any:
        return getattr(torch.cpu, name)


torchtitan_distributed_utils.device_module = CPUDeviceModule()


class MLPBlock(Module):
    """``x + W2 relu(W1 norm(x))``."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.norm = RMSNorm.Config(normalized_shape=dim).build()
        self.up = Linear.Config(in_features=dim, out_features=hidden, bias=False).build()
        self.down = Linear.Config(in_features=hidden, out_features=dim, bias=False).build()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.down(torch.relu(self.up(self.norm(x))))


class TinyModel(BaseModel):
    """Token embedding, ``num_blocks`` residual MLP blocks, final norm and output head."""

    @dataclass(kw_only=True, slots=True)
    class Config(BaseModel.Config):
        vocab_size: int = VOCAB_SIZE
        dim: int = 32
        hidden: int = 48
        num_blocks: int = 2

        def update_from_config(self, *, config: Any, **kwargs: Any) -> None:
            pass

        def get_nparams_and_flops(self, model: nn.Module, seq_len: int) -> tuple[int, int]:
            num_params = sum(p.numel() for p in model.parameters())
            return num_params, 6 * num_params

    def __init__(self, config: Config) -> None:
        super().__init__()
        self.tok_embeddings = Embedding.Config(
            num_embeddings=config.vocab_size, embedding_dim=config.dim
        ).build()
        self.block_0 = MLPBlock(config.dim, config.hidden)
        self.block_1 = MLPBlock(config.dim, config.hidden)
        self.norm = RMSNorm.Config(normalized_shape=config.dim).build()
        self.lm_head = Linear.Config(
            in_features=config.dim, out_features=config.vocab_size, bias=False
        ).build()

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        h = self.block_1(self.block_0(self.tok_embeddings(tokens)))
        return self.lm_head(self.norm(h))


def parallelize_tiny(model: TinyModel, *, parallel_dims: Any, **kwargs: Any) -> TinyModel:
    """``fully_shard`` per block, then the root, on torchtitan's data-parallel shard mesh."""
    mesh = parallel_dims.get_mesh("fsdp")
    for block in (model.block_0, model.block_1):
        fully_shard(block, mesh=mesh)
    fully_shard(model, mesh=mesh)
    return model


def report_preconditioner_list(
    optimizers: ShampooOptimizersContainer, model_parts: list[nn.Module], parallel_dims: Any
) -> None:
    """Writes ``<report dir>/rank<r>_lists.txt``: the preconditioner list class of every
    optimizer.
    """
    from tests.integration.shampoo import preconditioner_list

    report_dir = Path(os.environ[REPORT_DIR_VARIABLE])
    names = [type(preconditioner_list(optimizer)).__name__ for optimizer in optimizers]
    (report_dir / f"rank{os.environ['RANK']}_lists.txt").write_text("\n".join(names))


class ByteTokenizer(BaseTokenizer):
    """Only the vocabulary size matters: the data loader produces token ids directly."""

    @dataclass(kw_only=True, slots=True)
    class Config(BaseTokenizer.Config):
        pass

    def __init__(self, config: Config, **kwargs: Any) -> None:
        super().__init__()

    def encode(self, *args: Any, **kwargs: Any) -> list[int]:
        return list(str(args[0]).encode())

    def decode(self, *args: Any, **kwargs: Any) -> str:
        return bytes(args[0]).decode(errors="replace")

    def get_vocab_size(self) -> int:
        return VOCAB_SIZE


class SyntheticDataLoader(BaseDataLoader):
    """Batch ``i`` of rank ``r`` is drawn from a generator seeded with ``(r, i)``; resumes at
    ``i``.
    """

    @dataclass(kw_only=True, slots=True)
    class Config(BaseDataLoader.Config):
        pass

    def __init__(
        self, config: Config, *, dp_rank: int, local_batch_size: int, seq_len: int, **kwargs: Any
    ) -> None:
        self.dp_rank = dp_rank
        self.local_batch_size = local_batch_size
        self.seq_len = seq_len
        self.position = 0

    def __iter__(self) -> Iterator[tuple[dict[str, torch.Tensor], torch.Tensor]]:
        while True:
            generator = torch.Generator().manual_seed(1000 * self.dp_rank + self.position)
            tokens = torch.randint(
                VOCAB_SIZE, (self.local_batch_size, self.seq_len + 1), generator=generator
            )
            self.position += 1
            yield {"input": tokens[:, :-1]}, tokens[:, 1:]

    def state_dict(self) -> dict[str, Any]:
        return {f"dp_rank_{self.dp_rank}": self.position}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if state_dict:
            self.position = int(state_dict[f"dp_rank_{self.dp_rank}"])


def tiny_shampoo() -> Trainer.Config:
    """The config-registry function: tiny model, DistributedShampoo + DASH, checkpoints every 2
    steps.
    """
    model_spec = ModelSpec(
        name="tiny",
        flavor="mlp",
        model=TinyModel.Config(),
        parallelize_fn=parallelize_tiny,
        pipelining_fn=None,
        post_optimizer_build_fn=report_preconditioner_list,
        state_dict_adapter=None,
    )
    return Trainer.Config(
        model_spec=model_spec,
        hf_assets_path="unused",
        tokenizer=ByteTokenizer.Config(),
        dataloader=SyntheticDataLoader.Config(),
        loss=CrossEntropyLoss.Config(),
        optimizer=ShampooOptimizersContainer.Config(
            lr=1e-2,
            epsilon=1e-8,
            max_preconditioner_dim=16,
            precondition_frequency=1,
            start_preconditioning_step=1,
            solver="eigen",
            implementation="for-loop",
        ),
        # The schedule depends only on total_steps, so a 2-step run and a 4-step run agree.
        lr_scheduler=LRSchedulersContainer.Config(warmup_steps=1, total_steps=4),
        training=TrainingConfig(local_batch_size=4, seq_len=SEQ_LEN, steps=4, max_norm=1.0),
        parallelism=ParallelismConfig(spmd_backend="partial_dtensor"),
        metrics=MetricsProcessor.Config(log_freq=1),
        checkpoint=CheckpointManager.Config(enable=True, interval=2, last_save_model_only=False),
    )


def main() -> None:
    """The torchrun entry point: torchtitan's own ``torchtitan.train.main`` after the shims."""
    torch.set_num_threads(1)
    from torchtitan.train import main as torchtitan_main

    torchtitan_main()


if __name__ == "__main__":
    main()
