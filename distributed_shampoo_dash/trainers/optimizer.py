"""Building ``DistributedShampoo`` + DASH for a trainer from plain names and numbers.

Trainers configure optimizers from flat, serialisable fields (command-line flags, YAML, dataclass
configs), not from upstream's nested config objects. This module turns those fields into
upstream's objects: a solver name into an ``amortized_computation_config``, a grafting name into a
grafting config, and the FSDP2 parameters a trainer hands over into the matching
``distributed_config``. It imports upstream and the adapter but no training framework.
"""

from collections.abc import Callable, Iterable

import torch
from distributed_shampoo import (
    AdaGradPreconditionerConfig,
    AdamPreconditionerConfig,
    CoupledNewtonConfig,
    DistributedConfig,
    EigenConfig,
    FullyShardDistributedConfig,
    HybridShardDistributedConfig,
    PreconditionerConfig,
    RMSpropPreconditionerConfig,
    RootInvConfig,
    SGDPreconditionerConfig,
)
from distributed_shampoo.shampoo_types import DefaultSingleDeviceDistributedConfig
from torch.distributed.tensor import DTensor, Replicate, Shard

from distributed_shampoo_dash.integration import ChebyshevRootInvConfig, NewtonDBRootInvConfig

#: Solver name -> factory of its ``amortized_computation_config`` (default settings). Add an entry
#: to offer another solver (or a variant, e.g. ``"newton-db-converged"``) to every trainer.
SOLVERS: dict[str, Callable[[], RootInvConfig]] = {
    "eigen": EigenConfig,
    "coupled-newton": CoupledNewtonConfig,
    "newton-db": NewtonDBRootInvConfig,
    "chebyshev": ChebyshevRootInvConfig,
}

#: Grafting names accepted by :func:`grafting_config`.
GRAFTINGS = ("adam", "rmsprop", "adagrad", "sgd", "none")


def solver_config(name: str) -> RootInvConfig:
    """The ``amortized_computation_config`` named ``name`` (a key of :data:`SOLVERS`)."""
    try:
        return SOLVERS[name]()
    except KeyError:
        raise ValueError(f"Unknown solver {name!r}; expected one of {sorted(SOLVERS)}.") from None


def grafting_config(name: str, beta2: float, epsilon: float) -> PreconditionerConfig | None:
    """Upstream's grafting config for ``name`` (one of :data:`GRAFTINGS`; ``"none"`` gives None).

    ``beta2`` is used by ``adam`` and ``rmsprop``; ``epsilon`` by every grafting but ``sgd``.
    """
    match name:
        case "adam":
            return AdamPreconditionerConfig(beta2=beta2, epsilon=epsilon)
        case "rmsprop":
            return RMSpropPreconditionerConfig(beta2=beta2, epsilon=epsilon)
        case "adagrad":
            return AdaGradPreconditionerConfig(epsilon=epsilon)
        case "sgd":
            return SGDPreconditionerConfig()
        case "none":
            return None
    raise ValueError(f"Unknown grafting {name!r}; expected one of {list(GRAFTINGS)}.")


def distributed_config_for(parameters: Iterable[torch.Tensor]) -> DistributedConfig:
    """The upstream ``distributed_config`` that matches how FSDP2 laid out ``parameters``.

    * plain tensors (one process, or no sharding): single-device config;
    * DTensors sharded on dim 0 of a 1-D mesh (``fully_shard``): ``FullyShardDistributedConfig``;
    * DTensors replicated on dim 0 and sharded on dim 1 of a 2-D mesh (HSDP):
      ``HybridShardDistributedConfig`` on that mesh.

    Raises:
        ValueError: For a mix of plain tensors and DTensors, several meshes, or any other
            placement (tensor, context or expert parallelism, or a multi-axis storage mesh), which
            upstream's distributors do not handle.
    """
    parameters = list(parameters)
    dtensors = [p for p in parameters if isinstance(p, DTensor)]
    if not dtensors:
        return DefaultSingleDeviceDistributedConfig
    if len(dtensors) != len(parameters):
        raise ValueError(
            f"{len(parameters) - len(dtensors)} of {len(parameters)} parameters are not DTensors: "
            "shard every parameter with fully_shard (FSDP2) or none."
        )
    layouts = {(p.device_mesh, tuple(p.placements)) for p in dtensors}
    if len(layouts) == 1:
        mesh, placements = layouts.pop()
        if placements == (Shard(0),):
            return FullyShardDistributedConfig()
        if placements == (Replicate(), Shard(0)):
            return HybridShardDistributedConfig(device_mesh=mesh)
    described = sorted({f"mesh {m.mesh_dim_names or m.shape} placements {p}" for m, p in layouts})
    raise ValueError(
        "DistributedShampoo supports FSDP2 parameters sharded on dim 0 of one 1-D mesh "
        "(fully_shard) or replicated x sharded on one 2-D mesh (HSDP); got "
        f"{'; '.join(described)}. Use data parallelism only (no tensor, context or expert "
        "parallelism)."
    )
