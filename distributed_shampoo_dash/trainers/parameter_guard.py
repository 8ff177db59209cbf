"""An error instead of silently frozen weights when an optimizer's parameters are replaced.

``DistributedShampoo`` resolves its parameters when it is built: its distributor keeps views of
each parameter's storage (its blocks) and its state is laid out for them. A wrapper that swaps
the parameters afterwards leaves it updating tensors the model no longer uses, with no error:

* Hugging Face accelerate with FSDP2 shards the model in ``prepare(model, optimizer)`` and writes
  the new DTensor parameters into ``optimizer.param_groups`` (AdamW, whose state is created
  lazily at the first step, copes; Shampoo keeps its views of the unsharded tensors);
* a ``model.to(device)`` that moves storage (``param.data`` replaced) after the optimizer is built.

:func:`register_parameter_guard` records, when called, every parameter object of every param group
and the address of its (local) storage, and registers a step pre-hook (torch's public
``Optimizer.register_step_pre_hook``) that raises :class:`ReplacedParametersError` before any step
in which one differs. The check is one identity and one pointer comparison per parameter.
"""

from typing import Any, TypeVar

import torch
from torch.distributed.tensor import DTensor
from torch.optim import Optimizer

OptimizerT = TypeVar("OptimizerT", bound=Optimizer)

__all__ = ["ReplacedParametersError", "register_parameter_guard"]

_REGISTERED = "_distributed_shampoo_dash_parameter_guard"


class ReplacedParametersError(RuntimeError):
    """The optimizer's parameters are no longer the tensors it was built for."""


def _storage_address(parameter: torch.Tensor) -> int:
    local = parameter.to_local() if isinstance(parameter, DTensor) else parameter
    return local.data_ptr()


def _snapshot(optimizer: Optimizer) -> list[list[tuple[torch.Tensor, int]]]:
    return [[(p, _storage_address(p)) for p in group["params"]] for group in optimizer.param_groups]


def _describe(parameter: torch.Tensor) -> str:
    kind = "DTensor" if isinstance(parameter, DTensor) else "tensor"
    return f"{kind} of shape {tuple(parameter.shape)}"


def _check(optimizer: Optimizer, expected: list[list[tuple[torch.Tensor, int]]]) -> None:
    if len(optimizer.param_groups) != len(expected):
        raise ReplacedParametersError(
            f"{type(optimizer).__name__} was built with {len(expected)} param groups and now has "
            f"{len(optimizer.param_groups)}. {_ADVICE}"
        )
    for group_index, (group, recorded) in enumerate(
        zip(optimizer.param_groups, expected, strict=True)
    ):
        current = group["params"]
        for index, (parameter, (original, address)) in enumerate(
            zip(current, recorded, strict=False)
        ):
            if parameter is not original:
                what = (
                    f"was replaced by another {_describe(parameter)} (was a {_describe(original)})"
                )
            elif _storage_address(parameter) != address:
                what = "had its storage replaced (param.data reassigned, e.g. by model.to(device))"
            else:
                continue
            raise ReplacedParametersError(
                f"Parameter {index} of param group {group_index} of {type(optimizer).__name__} "
                f"{what} after the optimizer was built, so the optimizer would keep updating the "
                f"old tensors and the model would silently never change. {_ADVICE}"
            )
        if len(current) != len(recorded):
            raise ReplacedParametersError(
                f"Param group {group_index} of {type(optimizer).__name__} had {len(recorded)} "
                f"parameters when the optimizer was built and has {len(current)} now. {_ADVICE}"
            )


_ADVICE = (
    "Build the optimizer from the wrapped/sharded model's parameters, after the wrapper (with "
    "accelerate and FSDP2: model = accelerator.prepare_model(model), then build the optimizer "
    "from model.parameters() and pass it to accelerator.prepare_optimizer; see "
    "distributed_shampoo_dash.trainers.accelerate.prepare_shampoo)."
)


def register_parameter_guard(optimizer: OptimizerT) -> OptimizerT:
    """Raises :class:`ReplacedParametersError` at ``step()`` if a parameter is replaced; returns it.

    Call it right after building the optimizer. Idempotent (the first call's parameters count).
    """
    if getattr(optimizer, _REGISTERED, False):
        return optimizer
    expected = _snapshot(optimizer)

    def check_before_step(opt: Optimizer, args: Any, kwargs: Any) -> None:
        _check(opt, expected)

    optimizer.register_step_pre_hook(check_before_step)
    setattr(optimizer, _REGISTERED, True)
    return optimizer
