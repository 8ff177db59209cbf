"""Bitwise comparison of checkpoints and states, shared by the trainer tests."""

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch.distributed.tensor import DTensor


def flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    """Nested dicts/lists/tuples as ``{"a.b.0": leaf}`` (DTensors as their local shard)."""
    if isinstance(value, Mapping):
        return {
            k: v for key, item in value.items() for k, v in flatten(item, f"{prefix}{key}.").items()
        }
    if isinstance(value, (list, tuple)) and any(
        isinstance(v, (Mapping, list, tuple, torch.Tensor)) for v in value
    ):
        return {
            k: v for i, item in enumerate(value) for k, v in flatten(item, f"{prefix}{i}.").items()
        }
    if isinstance(value, DTensor):
        value = value.to_local()
    return {prefix.rstrip("."): value}


def _same(first: Any, second: Any) -> bool:
    if isinstance(first, torch.Tensor) or isinstance(second, torch.Tensor):
        return (
            isinstance(first, torch.Tensor)
            and isinstance(second, torch.Tensor)
            and first.dtype == second.dtype
            and first.shape == second.shape
            and bool(torch.equal(first.cpu(), second.cpu()))
        )
    if isinstance(first, float) and isinstance(second, float) and math.isnan(first):
        return math.isnan(second)
    return bool(first == second)


def differences(first: Mapping[str, Any], second: Mapping[str, Any]) -> list[str]:
    """Keys of two flat states whose values are not bit-identical (or present in one only)."""
    missing = sorted(set(first) ^ set(second))
    return missing + sorted(k for k in set(first) & set(second) if not _same(first[k], second[k]))


def max_abs_difference(
    first: Mapping[str, Any], second: Mapping[str, Any], keys: list[str]
) -> float:
    """Largest absolute difference over the tensors under ``keys``."""
    return max(float((first[k].double() - second[k].double()).abs().max()) for k in keys)


def load_dcp_checkpoint(checkpoint_dir: Path, work_dir: Path) -> dict[str, Any]:
    """A DCP checkpoint directory read in this (non-distributed) process, flattened."""
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    target = work_dir / ("_".join(checkpoint_dir.parts[-3:]).replace("=", "-") + ".pt")
    dcp_to_torch_save(str(checkpoint_dir), str(target))
    return flatten(torch.load(target, weights_only=False))
