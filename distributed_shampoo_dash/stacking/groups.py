"""Group, stack and unstack lists of same-shape tensors.

Example: matrices ``[A0 (128x128, p=4), A1 (64x64, p=2), A2 (128x128, p=4)]`` with keys
``(d, p)`` give the groups ``{(128, 4): [0, 2], (64, 2): [1]}``; the
first stack is ``torch.stack([A0, A2])`` of shape ``(2, 128, 128)``, and its rows are written
back into the tensors at positions 0 and 2.
"""

from collections.abc import Hashable, Iterator, Sequence
from typing import TypeVar

import torch
from torch import Tensor

_Key = TypeVar("_Key", bound=Hashable)


def group_indices(keys: Sequence[_Key]) -> dict[_Key, list[int]]:
    """Positions of equal keys, groups ordered by first appearance, positions ascending."""
    groups: dict[_Key, list[int]] = {}
    for position, key in enumerate(keys):
        groups.setdefault(key, []).append(position)
    return groups


def chunked(positions: Sequence[int], item_bytes: int, max_stack_bytes: int) -> Iterator[list[int]]:
    """Splits a group into consecutive chunks whose stacks hold at most ``max_stack_bytes``.

    A chunk holds at least one item, so an item larger than the budget is a chunk of its own.

    Args:
        positions (Sequence[int]): The group.
        item_bytes (int): Bytes of one stacked item, e.g. ``d * d * 4`` for a float32 matrix.
        max_stack_bytes (int): Budget of one stack.
    """
    size = max(1, max_stack_bytes // max(item_bytes, 1))
    for start in range(0, len(positions), size):
        yield list(positions[start : start + size])


def stack_group(tensors: Sequence[Tensor], positions: Sequence[int]) -> Tensor:
    """``(N, *shape)`` stack of ``tensors[i]`` for ``i`` in ``positions`` (all of one shape)."""
    return torch.stack([tensors[i] for i in positions])
