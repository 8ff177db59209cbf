"""How ``DistributedShampoo`` finds DASH: its config forms, mapped to the batched lists.

Upstream builds a param group's preconditioner list in
``DistributedShampoo._preconditioner_config_to_list_cls``, which looks the list class up by the
config's exact type (``preconditioner_config_to_list_cls[type(preconditioner_config)]``), so a
subclass of an upstream config is not found there. :func:`install` extends that method, once:
for a DASH config form (:data:`BATCHED_FORMS`) it builds the batched list with the arguments
upstream gives its own list, it refuses a DASH solver config in a Shampoo config that is not a
root-inverse one (:func:`check_amortized_computation`), and every other config goes to upstream's
method unchanged. It also
binds the per-block solver name upstream's root-inverse lists call,
``shampoo_preconditioner_list.matrix_inverse_root``, to
:func:`~.per_block.dash_matrix_inverse_root`, which serves DASH's solver configs and passes every
other config to upstream's ``matrix_inverse_root`` unchanged.

Importing :mod:`distributed_shampoo_dash.integration` (which any DASH config's import does) calls
:func:`install`; nothing is left to switch, and optimizers without a DASH config behave exactly as
upstream's.
"""

import dataclasses
from functools import wraps
from typing import Any, NamedTuple, TypeVar, cast

import torch
from distributed_shampoo import distributed_shampoo as distributed_shampoo_module
from distributed_shampoo import shampoo_types
from distributed_shampoo.preconditioner import shampoo_preconditioner_list
from distributed_shampoo.preconditioner.shampoo_preconditioner_list import PreconditionerList
from distributed_shampoo.shampoo_types import (
    BETAS,
    DISTRIBUTOR,
    EPSILON,
    USE_BIAS_CORRECTION,
    PreconditionerConfig,
)

from distributed_shampoo_dash.integration import preconditioner_configs
from distributed_shampoo_dash.integration.configs import DashRootInvConfig
from distributed_shampoo_dash.integration.per_block import dash_matrix_inverse_root
from distributed_shampoo_dash.integration.preconditioner_list import (
    BatchedRootInvKLShampooPreconditionerList,
    BatchedRootInvShampooPreconditionerList,
)

_Config = TypeVar("_Config", bound=PreconditionerConfig)


class BatchedForm(NamedTuple):
    """An upstream preconditioner config DASH batches.

    Attributes:
        upstream (type): Upstream's config class.
        dash (type): Its DASH form (a subclass with :class:`~.BatchedSettings`).
        list_cls (type): The batched preconditioner list a DASH-form param group gets.
    """

    upstream: type[PreconditionerConfig]
    dash: type[PreconditionerConfig]
    list_cls: type[PreconditionerList]


#: Every upstream preconditioner config DASH batches, with its DASH form and batched list.
BATCHED_FORMS: tuple[BatchedForm, ...] = (
    BatchedForm(
        shampoo_types.RootInvShampooPreconditionerConfig,
        preconditioner_configs.RootInvShampooPreconditionerConfig,
        BatchedRootInvShampooPreconditionerList,
    ),
    BatchedForm(
        shampoo_types.RootInvKLShampooPreconditionerConfig,
        preconditioner_configs.RootInvKLShampooPreconditionerConfig,
        BatchedRootInvKLShampooPreconditionerList,
    ),
)
_BY_UPSTREAM = {form.upstream: form for form in BATCHED_FORMS}
_BY_DASH = {form.dash: form for form in BATCHED_FORMS}


def is_batched(preconditioner_config: object) -> bool:
    """Whether ``preconditioner_config`` is a DASH form, i.e. its param group runs DASH."""
    return type(preconditioner_config) in _BY_DASH


def batched(preconditioner_config: _Config, **settings: Any) -> _Config:
    """The DASH form of an upstream preconditioner config: the same field values, batched.

    Args:
        preconditioner_config (PreconditionerConfig): An upstream config of a class in
            :data:`BATCHED_FORMS`, or a DASH form (returned with ``settings`` applied).
        **settings: :class:`~.BatchedSettings` fields, e.g. ``max_stack_bytes``.

    Returns:
        config (PreconditionerConfig): The DASH form; ``preconditioner_config`` is not changed.

    Raises:
        TypeError: If DASH does not batch the config's class (the message names it and lists
            what DASH batches).
    """
    config_type = type(preconditioner_config)
    form = _BY_DASH.get(config_type) or _BY_UPSTREAM.get(config_type)
    if form is None:
        supported = ", ".join(form.upstream.__name__ for form in BATCHED_FORMS)
        raise TypeError(
            f"DASH does not batch {config_type.__module__}.{config_type.__qualname__}; it batches "
            f"{supported} (from distributed_shampoo). Use that config as it is for upstream's "
            "preconditioner."
        )
    values = {
        field.name: getattr(preconditioner_config, field.name)
        for field in dataclasses.fields(preconditioner_config)  # type: ignore[arg-type]
        if field.init
    }
    return form.dash(**(values | settings))  # type: ignore[return-value]


def check_amortized_computation(preconditioner_config: PreconditionerConfig) -> None:
    """Refuses a DASH solver config as the amortized computation of a Shampoo config that is not
    a root-inverse one (the eigendecomposed configs take an ``EigendecompositionConfig``; upstream
    would fail at the first step with a bare assertion).

    Raises:
        TypeError: If ``preconditioner_config.amortized_computation_config`` is a
            :class:`~.configs.DashRootInvConfig` and ``preconditioner_config`` is not a
            ``RootInvShampooPreconditionerConfig``.
    """
    solver = getattr(preconditioner_config, "amortized_computation_config", None)
    if isinstance(solver, DashRootInvConfig) and not isinstance(
        preconditioner_config, shampoo_types.RootInvShampooPreconditionerConfig
    ):
        raise TypeError(
            f"Invalid amortized_computation_config={type(solver).__name__}(...) for "
            f"{type(preconditioner_config).__name__}: DASH's solver configs compute inverse roots "
            "and serve RootInvShampooPreconditionerConfig (and its DASH form); this config needs "
            "an EigendecompositionConfig such as upstream's EigenConfig or "
            "QREigendecompositionConfig."
        )


def batched_list(
    optimizer: Any,
    state_lists: dict[str, Any],
    group: dict[str, Any],
    preconditioner_config: shampoo_types.RootInvShampooPreconditionerConfig,
) -> PreconditionerList:
    """The batched list of a DASH-form param group, built with the arguments upstream's
    ``_preconditioner_config_to_list_cls`` gives the upstream list of that config."""
    beta2 = group[BETAS][1]
    drop_weighting = preconditioner_config.drop_weighting_factor_on_gsquare
    return _BY_DASH[type(preconditioner_config)].list_cls(  # type: ignore[call-arg]
        block_list=state_lists[DISTRIBUTOR].local_blocked_params,
        preconditioner_config=preconditioner_config,
        state=optimizer.state,
        block_info_list=state_lists[DISTRIBUTOR].local_block_info_list,
        beta2=beta2,
        weighting_factor=1.0 if drop_weighting or beta2 == 1.0 else 1 - beta2,
        epsilon=group[EPSILON],
        use_bias_correction=group[USE_BIAS_CORRECTION],
    )


def install() -> None:
    """Makes ``DistributedShampoo`` build the batched list for DASH config forms and binds the
    per-block solver name to DASH's (idempotent; called when the adapter is imported)."""
    shampoo_preconditioner_list.matrix_inverse_root = dash_matrix_inverse_root  # type: ignore[assignment]
    cls = distributed_shampoo_module.DistributedShampoo
    to_list_cls = cls._preconditioner_config_to_list_cls
    if getattr(to_list_cls, "__dash_installed__", False):
        return

    @wraps(to_list_cls)
    @torch.no_grad()
    def config_to_list_cls(
        self: Any,
        state_lists: dict[str, Any],
        group: dict[str, Any],
        preconditioner_config: PreconditionerConfig,
    ) -> PreconditionerList | None:
        check_amortized_computation(preconditioner_config)
        if is_batched(preconditioner_config):
            root_inv_config = cast(
                shampoo_types.RootInvShampooPreconditionerConfig, preconditioner_config
            )  # every DASH form subclasses it
            return batched_list(self, state_lists, group, root_inv_config)
        return to_list_cls(
            self, state_lists=state_lists, group=group, preconditioner_config=preconditioner_config
        )

    config_to_list_cls.__dash_installed__ = True  # type: ignore[attr-defined]
    cls._preconditioner_config_to_list_cls = config_to_list_cls  # type: ignore[method-assign]
