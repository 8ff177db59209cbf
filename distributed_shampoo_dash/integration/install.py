"""Turning DASH on and off for ``distributed_shampoo.DistributedShampoo``.

``enable()`` rebinds two upstream module globals, the only hook points upstream offers:

* ``distributed_shampoo.distributed_shampoo.RootInvShampooPreconditionerList``, the class
  ``DistributedShampoo`` instantiates for a ``RootInvShampooPreconditionerConfig``, becomes
  :class:`BatchedRootInvShampooPreconditionerList` (for optimizers created afterwards);
* ``distributed_shampoo.preconditioner.shampoo_preconditioner_list.matrix_inverse_root``, the
  per-block solver binding, becomes :func:`dash_matrix_inverse_root`, which serves the DASH
  configs and hands every other config to upstream's function.

``disable()`` puts upstream's objects back. Both are idempotent. Importing this package changes
nothing; importing the adapter (``distributed_shampoo_dash.integration``, which every access to a
DASH config does) installs, once, a check that makes ``DistributedShampoo`` refuse a DASH config at
construction while DASH is disabled (upstream alone would silently keep identity
preconditioners for a few steps and then fail).
"""

from collections.abc import Iterator
from contextlib import contextmanager
from functools import wraps
from typing import Any

from distributed_shampoo import distributed_shampoo as distributed_shampoo_module
from distributed_shampoo.preconditioner import shampoo_preconditioner_list
from distributed_shampoo.shampoo_types import BaseShampooPreconditionerConfig

from distributed_shampoo_dash.integration.configs import DashRootInvConfig
from distributed_shampoo_dash.integration.preconditioner_list import (
    BatchedRootInvShampooPreconditionerList,
)
from distributed_shampoo_dash.integration.solve import (
    dash_matrix_inverse_root,
    upstream_matrix_inverse_root,
)

_UPSTREAM_LIST_CLS = shampoo_preconditioner_list.RootInvShampooPreconditionerList
_PRECONDITIONER_CONFIG = "preconditioner_config"


def enable() -> None:
    """Routes every ``DistributedShampoo`` created from now on through DASH (idempotent)."""
    distributed_shampoo_module.RootInvShampooPreconditionerList = (  # type: ignore[misc]
        BatchedRootInvShampooPreconditionerList
    )
    shampoo_preconditioner_list.matrix_inverse_root = dash_matrix_inverse_root  # type: ignore[assignment]


def disable() -> None:
    """Restores upstream's list class and solver binding (idempotent)."""
    distributed_shampoo_module.RootInvShampooPreconditionerList = _UPSTREAM_LIST_CLS  # type: ignore[misc]
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


def _check_dash_configs_are_routed(optimizer: Any) -> None:
    """Raises if a param group uses a DASH config while DASH is disabled."""
    for index, group in enumerate(optimizer.param_groups):
        preconditioner_config = group.get(_PRECONDITIONER_CONFIG)
        if not isinstance(preconditioner_config, BaseShampooPreconditionerConfig):
            continue
        amortized_config = preconditioner_config.amortized_computation_config
        if isinstance(amortized_config, DashRootInvConfig) and not is_enabled():
            raise ValueError(
                f"param_groups[{index}] uses {type(amortized_config).__name__}, which needs DASH. "
                "Call distributed_shampoo_dash.enable() before creating DistributedShampoo."
            )


def install_construction_check() -> None:
    """Makes ``DistributedShampoo.__init__`` reject DASH configs while DASH is off (idempotent)."""
    cls = distributed_shampoo_module.DistributedShampoo
    instantiate = cls._instantiate_shampoo_preconditioner_list
    if getattr(instantiate, "__dash_checked__", False):
        return

    @wraps(instantiate)
    def checked(self: Any) -> None:
        _check_dash_configs_are_routed(self)
        instantiate(self)

    checked.__dash_checked__ = True  # type: ignore[attr-defined]
    cls._instantiate_shampoo_preconditioner_list = checked  # type: ignore[method-assign]
