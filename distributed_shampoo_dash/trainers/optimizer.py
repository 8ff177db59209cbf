"""Building ``DistributedShampoo`` + DASH for a trainer from plain names and numbers.

Trainers configure optimizers from flat, serialisable fields (command-line flags, YAML, dataclass
configs), not from upstream's nested config objects. This module turns those fields into
upstream's objects: a solver name into an ``amortized_computation_config``, a grafting name into a
grafting config, and the FSDP2 parameters a trainer hands over into the matching
``distributed_config``. It imports upstream and the adapter but no training framework.
"""

from collections.abc import Callable, Iterable
from typing import Any

import torch
from distributed_shampoo import (
    AdaGradPreconditionerConfig,
    AdamPreconditionerConfig,
    CoupledNewtonConfig,
    DistributedConfig,
    DistributedShampoo,
    EigenConfig,
    FullyShardDistributedConfig,
    HybridShardDistributedConfig,
    PreconditionerConfig,
    RMSpropPreconditionerConfig,
    RootInvConfig,
    RootInvShampooPreconditionerConfig,
    SGDPreconditionerConfig,
)
from distributed_shampoo.shampoo_types import DefaultSingleDeviceDistributedConfig
from torch.distributed.tensor import DTensor, Replicate, Shard

from distributed_shampoo_dash.integration import (
    ChebyshevRootInvConfig,
    MinimaxRootInvConfig,
    NewtonDBRootInvConfig,
    batched,
    default_root_inv_config,
)
from distributed_shampoo_dash.paper_defaults import PAPER_SETTINGS
from distributed_shampoo_dash.trainers.parameter_guard import register_parameter_guard

#: Name of the solver DASH recommends for the parameters' device
#: (:func:`~distributed_shampoo_dash.default_root_inv_config`).
DEFAULT_SOLVER = "default"

#: Solver name -> factory of its ``amortized_computation_config`` (default settings), besides
#: :data:`DEFAULT_SOLVER`. Add an entry to offer another solver (or a variant, e.g.
#: ``"minimax-fp64-first-step"``) to every trainer.
SOLVERS: dict[str, Callable[[], RootInvConfig]] = {
    "eigen": EigenConfig,
    "coupled-newton": CoupledNewtonConfig,
    "minimax": MinimaxRootInvConfig,
    "newton-db": NewtonDBRootInvConfig,
    "chebyshev": ChebyshevRootInvConfig,
}

#: Grafting names accepted by :func:`grafting_config`.
GRAFTINGS = ("adam", "rmsprop", "adagrad", "sgd", "none")


def solver_names() -> list[str]:
    """Every name :func:`solver_config` accepts."""
    return [DEFAULT_SOLVER, *SOLVERS]


def solver_config(name: str, device: str | torch.device = "cuda") -> RootInvConfig:
    """The ``amortized_computation_config`` named ``name``: :data:`DEFAULT_SOLVER` (the one DASH
    recommends for ``device``) or a key of :data:`SOLVERS`."""
    if name == DEFAULT_SOLVER:
        return default_root_inv_config(device)
    try:
        return SOLVERS[name]()
    except KeyError:
        raise ValueError(f"Unknown solver {name!r}; expected one of {solver_names()}.") from None


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


def shampoo_kwargs(
    *,
    lr: float = 1e-3,
    betas: tuple[float, float] = PAPER_SETTINGS.betas,
    epsilon: float = PAPER_SETTINGS.epsilon,
    weight_decay: float = PAPER_SETTINGS.weight_decay,
    max_preconditioner_dim: int = PAPER_SETTINGS.max_preconditioner_dim,
    precondition_frequency: int = PAPER_SETTINGS.precondition_frequency,
    start_preconditioning_step: int = -1,
    solver: str = DEFAULT_SOLVER,
    grafting: str = "adam",
    grafting_beta2: float = PAPER_SETTINGS.grafting_beta2,
    grafting_epsilon: float = PAPER_SETTINGS.grafting_epsilon,
    use_dash: bool = True,
    device: str | torch.device = "cuda",
) -> dict[str, Any]:
    """``DistributedShampoo`` constructor arguments (all but params and distributed config).

    The defaults are the DASH paper's (Llama-953M on C4,
    :data:`~distributed_shampoo_dash.paper_defaults.PAPER_SETTINGS`): ``betas=(0.9, 0.95)``,
    epsilon 1e-10, Adam grafting with ``beta2=0.95`` and epsilon 1e-8, blocks of 1024, roots every
    10 steps; the solver is the one DASH recommends for ``device`` (the parameters'). ``solver``
    is one of :func:`solver_names`, ``grafting`` one of :data:`GRAFTINGS`. ``use_dash`` gives the
    preconditioner config in its DASH form (:func:`~distributed_shampoo_dash.batched`), else
    upstream's.
    """
    preconditioner_config = RootInvShampooPreconditionerConfig(
        amortized_computation_config=solver_config(solver, device)
    )
    return {
        "lr": lr,
        "betas": (betas[0], betas[1]),
        "epsilon": epsilon,
        "weight_decay": weight_decay,
        "max_preconditioner_dim": max_preconditioner_dim,
        "precondition_frequency": precondition_frequency,
        "start_preconditioning_step": start_preconditioning_step,
        "grafting_config": grafting_config(grafting, grafting_beta2, grafting_epsilon),
        "preconditioner_config": (
            batched(preconditioner_config) if use_dash else preconditioner_config
        ),
    }


def build_shampoo(
    params: Iterable[torch.Tensor] | Iterable[dict[str, Any]],
    *,
    use_dash: bool = True,
    distributed_config: DistributedConfig | None = None,
    extra_kwargs: dict[str, Any] | None = None,
    **settings: Any,
) -> DistributedShampoo:
    """``DistributedShampoo`` over ``params`` (tensors or param-group dicts), DASH on or off.

    ``settings`` are :func:`shampoo_kwargs`'s; ``distributed_config`` defaults to
    :func:`distributed_config_for` the parameters (so build the optimizer after the model is
    sharded); ``extra_kwargs`` go to the constructor as they are. ``use_dash`` chooses the DASH
    form of the preconditioner config (this optimizer only). The optimizer raises
    :class:`~distributed_shampoo_dash.trainers.parameter_guard.ReplacedParametersError` at its
    next step if a wrapper replaces its parameters afterwards.
    """
    groups: list[Any] = list(params)
    tensors = [p for g in groups for p in (g["params"] if isinstance(g, dict) else [g])]
    if distributed_config is None:
        distributed_config = distributed_config_for(tensors)
    optimizer = DistributedShampoo(
        groups,
        distributed_config=distributed_config,
        **shampoo_kwargs(use_dash=use_dash, device=tensors[0].device, **settings),
        **(extra_kwargs or {}),
    )
    register_parameter_guard(optimizer)
    return optimizer
