"""Turning DASH on and off for ``distributed_shampoo.DistributedShampoo``.

``enable()`` rebinds three upstream module globals, the only hook points upstream offers:

* ``distributed_shampoo.distributed_shampoo.RootInvShampooPreconditionerList`` and
  ``RootInvKLShampooPreconditionerList``, the classes ``DistributedShampoo`` instantiates for a
  ``RootInvShampooPreconditionerConfig`` and a ``RootInvKLShampooPreconditionerConfig``, become
  the batched lists (for optimizers created afterwards);
* ``distributed_shampoo.preconditioner.shampoo_preconditioner_list.matrix_inverse_root``, the
  per-block solver binding, becomes :func:`~.per_block.dash_matrix_inverse_root`, which serves the
  DASH configs and hands every other config to upstream's function.

``disable()`` puts upstream's objects back. Both are idempotent and act on the whole process
(module globals): switch DASH before creating optimizers and before starting threads that create
them, not concurrently with another thread doing so. Importing this package changes nothing;
importing the adapter (``distributed_shampoo_dash.integration``, which every access to a DASH
config does) wraps, once, the method ``DistributedShampoo`` uses to build its preconditioner
lists, so that an optimizer with a DASH config

* is refused at construction while DASH is disabled (upstream alone would silently keep identity
  preconditioners for a few steps and then fail), and
* gets a step pre-hook that refuses to step while DASH is disabled, before the step changes any
  state (a DASH config needs DASH's per-block binding whenever a block is replayed).
"""

from collections.abc import Iterator
from contextlib import contextmanager
from functools import wraps
from typing import Any

from distributed_shampoo import distributed_shampoo as distributed_shampoo_module
from distributed_shampoo.preconditioner import shampoo_preconditioner_list
from distributed_shampoo.shampoo_types import BaseShampooPreconditionerConfig

from distributed_shampoo_dash.integration.configs import DashRootInvConfig
from distributed_shampoo_dash.integration.per_block import (
    dash_matrix_inverse_root,
    upstream_matrix_inverse_root,
)
from distributed_shampoo_dash.integration.preconditioner_list import (
    BatchedRootInvKLShampooPreconditionerList,
    BatchedRootInvShampooPreconditionerList,
)

#: Upstream list classes DASH replaces, by their module global name, and their batched versions.
_LISTS: dict[str, tuple[type, type]] = {
    "RootInvShampooPreconditionerList": (
        shampoo_preconditioner_list.RootInvShampooPreconditionerList,
        BatchedRootInvShampooPreconditionerList,
    ),
    "RootInvKLShampooPreconditionerList": (
        shampoo_preconditioner_list.RootInvKLShampooPreconditionerList,
        BatchedRootInvKLShampooPreconditionerList,
    ),
}
_PRECONDITIONER_CONFIG = "preconditioner_config"


def enable() -> None:
    """Routes every ``DistributedShampoo`` created from now on through DASH (idempotent)."""
    for name, (_, batched) in _LISTS.items():
        setattr(distributed_shampoo_module, name, batched)
    shampoo_preconditioner_list.matrix_inverse_root = dash_matrix_inverse_root  # type: ignore[assignment]


def disable() -> None:
    """Restores upstream's list classes and solver binding (idempotent)."""
    for name, (upstream, _) in _LISTS.items():
        setattr(distributed_shampoo_module, name, upstream)
    shampoo_preconditioner_list.matrix_inverse_root = upstream_matrix_inverse_root


def is_enabled() -> bool:
    """Whether optimizers created now use DASH."""
    return (
        distributed_shampoo_module.RootInvShampooPreconditionerList
        is BatchedRootInvShampooPreconditionerList
    )


@contextmanager
def enabled() -> Iterator[None]:
    """DASH on inside the block, restored to its previous state afterwards.

    Optimizers created inside keep their batched list afterwards, but DASH configs need DASH
    enabled at every step: use this for scoped experiments and tests, :func:`enable` for training.
    """
    was_enabled = is_enabled()
    enable()
    try:
        yield
    finally:
        if not was_enabled:
            disable()


def _dash_config_groups(optimizer: Any) -> list[tuple[int, DashRootInvConfig]]:
    """``(index, config)`` of the param groups whose preconditioner uses a DASH config."""
    found = []
    for index, group in enumerate(optimizer.param_groups):
        preconditioner_config = group.get(_PRECONDITIONER_CONFIG)
        if isinstance(preconditioner_config, BaseShampooPreconditionerConfig):
            amortized_config = preconditioner_config.amortized_computation_config
            if isinstance(amortized_config, DashRootInvConfig):
                found.append((index, amortized_config))
    return found


def _check_dash_is_enabled(optimizer: Any, *_: object) -> None:
    """Raises if a param group uses a DASH config while DASH is disabled."""
    if is_enabled():
        return
    for index, config in _dash_config_groups(optimizer):
        raise ValueError(
            f"param_groups[{index}] uses {type(config).__name__}, which needs DASH. "
            "Call distributed_shampoo_dash.enable() before creating DistributedShampoo and keep "
            "it enabled while the optimizer steps."
        )


def install_construction_check() -> None:
    """Makes ``DistributedShampoo`` reject DASH configs while DASH is off (idempotent)."""
    cls = distributed_shampoo_module.DistributedShampoo
    instantiate = cls._instantiate_shampoo_preconditioner_list
    if getattr(instantiate, "__dash_checked__", False):
        return

    @wraps(instantiate)
    def checked(self: Any) -> None:
        _check_dash_is_enabled(self)
        instantiate(self)
        if _dash_config_groups(self):
            self.register_step_pre_hook(_check_dash_is_enabled)

    checked.__dash_checked__ = True  # type: ignore[attr-defined]
    cls._instantiate_shampoo_preconditioner_list = checked  # type: ignore[method-assign]
