"""Group, stack and unstack lists of same-shape tensors.

Example: matrices ``[A0 (128x128, p=4), A1 (64x64, p=2), A2 (128x128, p=4)]`` with keys
``InverseRootKey.of(A, p)`` give the groups ``{(128, 4, f32): [0, 2], (64, 2, f32): [1]}``; the
first stack is ``torch.stack([A0, A2])`` of shape ``(2, 128, 128)``, and its rows are written
back into the tensors at positions 0 and 2.
"""

from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import TypeVar

import torch
from torch import Tensor

_Key = TypeVar("_Key", bound=Hashable)


@dataclass(frozen=True)
class InverseRootKey:
    """What makes two factor matrices share one batched inverse-root call.

    Attributes:
        dim (int): ``d`` of the ``d x d`` matrix.
        root (float): The inverse root ``p``.
        dtype (torch.dtype): The matrix dtype.
    """

    dim: int
    root: float
    dtype: torch.dtype

    @classmethod
    def of(cls, matrix: Tensor, root: float) -> "InverseRootKey":
        """Key of a ``(d, d)`` ``matrix`` whose inverse ``root``-th root is wanted."""
        return cls(dim=matrix.shape[-1], root=float(root), dtype=matrix.dtype)


def group_indices(keys: Sequence[_Key]) -> dict[_Key, list[int]]:
    """Positions of equal keys, groups ordered by first appearance, positions ascending."""
    groups: dict[_Key, list[int]] = {}
    for position, key in enumerate(keys):
        groups.setdefault(key, []).append(position)
    return groups


def stack_group(tensors: Sequence[Tensor], positions: Sequence[int]) -> Tensor:
    """``(N, *shape)`` stack of ``tensors[i]`` for ``i`` in ``positions`` (all of one shape)."""
    return torch.stack([tensors[i] for i in positions])


def write_back(
    stack: Tensor,
    targets: Sequence[Tensor],
    positions: Sequence[int],
    transform: Callable[[Tensor, Tensor], Tensor] | None = None,
) -> None:
    """Copies row ``j`` of ``stack`` into ``targets[positions[j]]`` in place (``copy_``).

    Targets keep their identity (optimizer state stays the same tensors), their dtype and device.

    Args:
        stack (Tensor): ``(N, ...)`` results.
        targets (Sequence[Tensor]): The tensors to write into.
        positions (Sequence[int]): ``N`` positions into ``targets``.
        transform (Callable[[Tensor, Tensor], Tensor] | None): Maps ``(row, target)`` to the value
            to copy, e.g. to pack a symmetric matrix; ``None`` copies the row. (Default: None)
    """
    for row, position in zip(stack.unbind(0), positions, strict=True):
        target = targets[position]
        target.copy_(row if transform is None else transform(row, target))
