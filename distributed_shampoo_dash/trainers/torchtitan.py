"""torchtitan: train with ``DistributedShampoo`` + DASH by naming a config in the config module.

torchtitan (tested: 0.3.0) builds its optimizer from ``Trainer.Config.optimizer``, an
``OptimizersContainer.Config``, and knows only ``Adam``, ``AdamW`` and ``DistMuon`` by name. This
module adds :class:`ShampooOptimizersContainer`, whose nested ``Config`` carries Shampoo's settings
as flat fields (solver, block size, frequency, epsilon, grafting, ...), so a config-registry
function sets::

    config.optimizer = ShampooOptimizersContainer.Config(lr=3e-4, solver="minimax")

and every field can be overridden on the command line (``--optimizer.solver eigen``,
``--optimizer.max_preconditioner_dim 512``). What the container does on top of torchtitan's own:

* names the optimizer ``DistributedShampoo`` for torchtitan's param-group machinery (by default one
  group of every trainable parameter; ``param_groups`` still works, e.g. AdamW for some
  parameters and Shampoo for the rest);
* drops the ``fused``/``foreach`` keys torchtitan adds to every param group (torch.optim
  implementation switches that mean nothing to Shampoo);
* passes the ``distributed_config`` that matches the parameters torchtitan hands over: torchtitan
  builds the optimizer after ``fully_shard``, so they are FSDP2 DTensors (see
  :func:`distributed_shampoo_dash.trainers.optimizer.distributed_config_for`);
* gives the preconditioner config in its DASH form (``use_dash``).

torchtitan's checkpointer then saves and loads the whole Shampoo state with DCP unchanged.
``docs/trainers.md`` has the torchrun command and the known incompatibilities of torchtitan 0.3.0
with torch 2.13 (:func:`add_missing_set_timeout` is the workaround for one of them).
"""

from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
from distributed_shampoo import DistributedShampoo
from torch import nn
from torch.optim import Optimizer
from torchtitan.components.optimizer import OptimizersContainer, ParamGroupConfig

from distributed_shampoo_dash.paper_defaults import PAPER_SETTINGS
from distributed_shampoo_dash.trainers.optimizer import (
    DEFAULT_SOLVER,
    GRAFTINGS,
    distributed_config_for,
    shampoo_kwargs,
    solver_names,
)
from distributed_shampoo_dash.trainers.parameter_guard import register_parameter_guard

__all__ = ["OPTIMIZER_NAME", "ShampooOptimizersContainer", "add_missing_set_timeout"]

#: The name param groups use for ``DistributedShampoo`` (``ParamGroupConfig.optimizer_name``).
OPTIMIZER_NAME = "DistributedShampoo"

#: Param-group keys torchtitan adds for torch.optim implementations; not Shampoo arguments.
_TORCH_IMPLEMENTATION_KEYS = frozenset({"fused", "foreach"})


def build_distributed_shampoo(
    param_groups: list[dict[str, Any]], **kwargs: Any
) -> DistributedShampoo:
    """``DistributedShampoo`` over torchtitan's param groups (the factory behind
    ``OPTIMIZER_NAME``).

    ``kwargs`` are the constructor arguments; ``distributed_config`` defaults to the one matching
    the groups' parameters. The parameter guard of
    :mod:`distributed_shampoo_dash.trainers.parameter_guard` is registered.
    """
    groups = [
        {k: v for k, v in g.items() if k not in _TORCH_IMPLEMENTATION_KEYS} for g in param_groups
    ]
    if "distributed_config" not in kwargs:
        kwargs["distributed_config"] = distributed_config_for(
            p for g in groups for p in g["params"]
        )
    return register_parameter_guard(DistributedShampoo(groups, **kwargs))


class ShampooOptimizersContainer(OptimizersContainer):
    """torchtitan's optimizer container with ``DistributedShampoo`` (+ DASH) as an optimizer.

    Build it through its config, as torchtitan does: ``config.optimizer.build(model_parts=...)``.
    """

    @dataclass(kw_only=True, slots=True)
    class Config(OptimizersContainer.Config):
        """Shampoo's settings; the defaults are the DASH paper's (Llama-953M on C4,
        :data:`~distributed_shampoo_dash.paper_defaults.PAPER_SETTINGS`).

        With ``param_groups`` left empty every trainable parameter is in one Shampoo group. Entries
        of ``optimizer_factory_kwargs_by_name["DistributedShampoo"]`` are passed to the
        constructor last, so any other ``DistributedShampoo`` argument (or an explicit
        ``distributed_config``) can be set there.
        """

        lr: float = 1e-3
        """Learning rate (the peak of torchtitan's LR schedule)."""

        betas: tuple[float, float] = PAPER_SETTINGS.betas
        """(momentum / gradient EMA, factor-matrix EMA)."""

        epsilon: float = PAPER_SETTINGS.epsilon
        """Shampoo epsilon added to the factor matrices before the inverse root."""

        weight_decay: float = PAPER_SETTINGS.weight_decay
        """Decoupled weight decay."""

        max_preconditioner_dim: int = PAPER_SETTINGS.max_preconditioner_dim
        """Block size: parameters are split into blocks of at most this many rows/columns."""

        precondition_frequency: int = PAPER_SETTINGS.precondition_frequency
        """Steps between inverse-root computations."""

        start_preconditioning_step: int = -1
        """First step that uses Shampoo's direction (-1: ``precondition_frequency``)."""

        solver: str = DEFAULT_SOLVER
        """Inverse-root solver: 'default' (the one DASH recommends for the parameters' device:
        'minimax' on a GPU, 'eigen' on a CPU), 'eigen', 'coupled-newton' (upstream's, batched by
        DASH; needs epsilon >= 1e-6), 'minimax' (DASH's minimax iteration), 'newton-db' (the DASH
        paper's Newton-DB), 'chebyshev'."""

        grafting: str = "adam"
        """Grafting (per-block step size): 'adam', 'rmsprop', 'adagrad', 'sgd' or 'none'."""

        grafting_beta2: float = PAPER_SETTINGS.grafting_beta2
        """Second-moment EMA of 'adam'/'rmsprop' grafting."""

        grafting_epsilon: float = PAPER_SETTINGS.grafting_epsilon
        """Epsilon of the grafting preconditioner."""

        use_dash: bool = True
        """The DASH form of the preconditioner config (False: upstream's; this optimizer only)."""

        def __post_init__(self) -> None:
            if self.solver not in solver_names():
                raise ValueError(
                    f"Unknown solver {self.solver!r}; expected one of {solver_names()}."
                )
            if self.grafting not in GRAFTINGS:
                raise ValueError(
                    f"Unknown grafting {self.grafting!r}; expected one of {list(GRAFTINGS)}."
                )
            if not self.max_preconditioner_dim >= 1:
                raise ValueError(
                    f"Invalid max_preconditioner_dim={self.max_preconditioner_dim}. Must be >= 1."
                )
            if not self.precondition_frequency >= 1:
                raise ValueError(
                    f"Invalid precondition_frequency={self.precondition_frequency}. Must be >= 1."
                )

        def shampoo_kwargs(self, device: str | torch.device = "cuda") -> dict[str, Any]:
            """``DistributedShampoo`` constructor arguments from the fields (no params), for
            parameters on ``device``."""
            return shampoo_kwargs(
                lr=self.lr,
                betas=self.betas,
                epsilon=self.epsilon,
                weight_decay=self.weight_decay,
                max_preconditioner_dim=self.max_preconditioner_dim,
                precondition_frequency=self.precondition_frequency,
                start_preconditioning_step=self.start_preconditioning_step,
                solver=self.solver,
                grafting=self.grafting,
                grafting_beta2=self.grafting_beta2,
                grafting_epsilon=self.grafting_epsilon,
                use_dash=self.use_dash,
                device=device,
            )

    def __init__(self, config: Config, *, model_parts: list[nn.Module]) -> None:
        param_groups = config.param_groups or [
            ParamGroupConfig(pattern=r".*", optimizer_name=OPTIMIZER_NAME)
        ]
        factory_kwargs = dict(config.optimizer_factory_kwargs_by_name)
        factory_kwargs[OPTIMIZER_NAME] = {
            **config.shampoo_kwargs(next(model_parts[0].parameters()).device),
            **factory_kwargs.get(OPTIMIZER_NAME, {}),
        }
        # Fields of torchtitan's base Config (untyped for mypy, hence the dict).
        changes: dict[str, Any] = {
            "param_groups": param_groups,
            "optimizer_factory_kwargs_by_name": factory_kwargs,
        }
        super().__init__(replace(config, **changes), model_parts=model_parts)

    @staticmethod
    def _resolve_optimizer_factory(name: str) -> Callable[..., Optimizer]:
        # torchtitan's only extension point for optimizer names (a private static method).
        if name == OPTIMIZER_NAME:
            return build_distributed_shampoo
        return OptimizersContainer._resolve_optimizer_factory(name)


def add_missing_set_timeout() -> bool:
    """Provides ``torch.distributed.set_timeout`` where torch lacks it (torch 2.13); returns
    whether.

    torchtitan 0.3.0 calls ``torch.distributed.set_timeout(timeout, group)`` after the first
    training step (to shorten the collective timeout), which torch 2.13.0 does not have, so every
    torchtitan 0.3.0 run on torch 2.13 (GPU or CPU) stops with ``AttributeError`` after step 1.
    This binds it to torch's own ``torch.distributed.distributed_c10d._set_pg_timeout``, which takes
    the same ``(timeout, group)`` arguments. Call it in the config module (imported by every rank
    before training); it changes nothing where torch has ``set_timeout``.
    """
    if hasattr(dist, "set_timeout"):
        return False
    from torch.distributed.distributed_c10d import _set_pg_timeout

    def set_timeout(timeout: timedelta, group: dist.ProcessGroup | None = None) -> None:
        _set_pg_timeout(timeout, group)

    dist.set_timeout = set_timeout  # type: ignore[attr-defined]
    return True
