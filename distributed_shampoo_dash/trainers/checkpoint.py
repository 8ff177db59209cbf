"""Param-group values that ``torch.distributed.checkpoint``'s state-dict options reject.

``DistributedShampoo`` keeps configuration objects in every param group (``WeightDecayType``, an
enum; ``grafting_config``, ``distributed_config``, ``preconditioner_config``, dataclasses). With
``StateDictOptions(cpu_offload=True)`` or ``full_state_dict=True``,
``torch.distributed.checkpoint.state_dict.get_optimizer_state_dict`` checks that every value is a
tensor, number, string, bytes, None or a container of those, and raises
``ValueError: Unexpected value type <enum 'WeightDecayType'>``. Lightning's
``ModelParallelStrategy`` saves with ``cpu_offload=True`` (and accelerate's FSDP2 plugin with
``offload_to_cpu``/full state dicts), so saving a Shampoo checkpoint there crashes.

:func:`register_checkpoint_hooks` registers two optimizer hooks (torch's public
``register_state_dict_post_hook`` / ``register_load_state_dict_pre_hook``; upstream registers its
own the same way):

* on save, every param-group value of another type becomes a string
  ``"<MARKER><module>.<type>=<repr>"`` (readable in the checkpoint, accepted by the type check);
* on load, such a string is replaced by the value the live optimizer holds for that key, so the
  loaded optimizer keeps its own configuration objects (a warning is logged if the checkpoint's
  type differs). Nothing is unpickled from the checkpoint.

Tensors and optimizer state are untouched, so a resume is bit-identical. Checkpoints written
without the hooks (which hold the objects themselves) still load.
"""

import logging
from collections.abc import Mapping
from typing import Any

import torch
from torch.optim import Optimizer

from distributed_shampoo_dash.trainers.parameter_guard import OptimizerT

__all__ = ["MARKER", "register_checkpoint_hooks"]

logger = logging.getLogger(__name__)

#: Prefix of a saved param-group value that stands for the live optimizer's value.
MARKER = "distributed_shampoo_dash.live_value:"
_PARAMS = "params"
_REGISTERED = "_distributed_shampoo_dash_checkpoint_hooks"
_PLAIN_TYPES = (torch.Tensor, int, float, str, bytes, type(None))


def _is_plain(value: Any) -> bool:
    """Whether the distributed-checkpoint type check accepts ``value`` (recursively)."""
    if isinstance(value, Mapping):
        return all(_is_plain(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return all(_is_plain(v) for v in value)
    return isinstance(value, _PLAIN_TYPES)


def _type_name(value: Any) -> str:
    return f"{type(value).__module__}.{type(value).__qualname__}"


def _describe(value: Any) -> str:
    return f"{MARKER}{_type_name(value)}={value!r}"


def _saved_type_name(marker: str) -> str:
    return marker[len(MARKER) :].split("=", 1)[0]


def _replace_objects_by_markers(optimizer: Optimizer, state_dict: dict[str, Any]) -> None:
    """State-dict post hook: param-group values the type check rejects become marker strings."""
    for group in state_dict["param_groups"]:
        for key, value in group.items():
            if key != _PARAMS and not _is_plain(value):
                group[key] = _describe(value)


def _restore_live_objects(optimizer: Optimizer, state_dict: dict[str, Any]) -> dict[str, Any]:
    """Load pre hook: marker strings become the live optimizer's values for the same keys."""
    groups = []
    for index, (saved, live) in enumerate(
        zip(state_dict["param_groups"], optimizer.param_groups, strict=False)
    ):
        group = dict(saved)
        for key, value in saved.items():
            if not (isinstance(value, str) and value.startswith(MARKER)) or key not in live:
                continue
            if _saved_type_name(value) != _type_name(live[key]):
                logger.warning(
                    "Param group %d, %r: the checkpoint was saved with a %s, "
                    "the optimizer has a %s; keeping the optimizer's.",
                    index,
                    key,
                    _saved_type_name(value),
                    _type_name(live[key]),
                )
            group[key] = live[key]
        groups.append(group)
    groups.extend(state_dict["param_groups"][len(groups) :])
    return {**state_dict, "param_groups": groups}


def register_checkpoint_hooks(optimizer: OptimizerT) -> OptimizerT:
    """Makes ``optimizer``'s state dicts pass distributed checkpointing's type check; returns it.

    Idempotent. Works for any optimizer; needed for ``DistributedShampoo`` wherever state dicts
    are taken with ``cpu_offload=True`` or ``full_state_dict=True`` (Lightning's
    ``ModelParallelStrategy``, accelerate's FSDP2 full or offloaded state dicts).
    """
    if getattr(optimizer, _REGISTERED, False):
        return optimizer
    optimizer.register_state_dict_post_hook(_replace_objects_by_markers)
    optimizer.register_load_state_dict_pre_hook(_restore_live_objects, prepend=True)
    setattr(optimizer, _REGISTERED, True)
    return optimizer
