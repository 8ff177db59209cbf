"""Symmetric packing of whole stacks, in upstream's layout.

Upstream stores a symmetric ``(d, d)`` matrix as its upper triangle in row-major order, a vector
of ``d (d + 1) / 2`` entries (``pack_upper_triangular``). These functions do the same for an
``(N, d, d)`` stack in one indexing operation each way.
"""

import math
from functools import lru_cache

import torch
from torch import Tensor


def packed_size(dim: int) -> int:
    """``d (d + 1) / 2``, the length of a packed ``(d, d)`` symmetric matrix."""
    return dim * (dim + 1) // 2


@lru_cache(maxsize=64)
def _upper_triangle(dim: int, device: torch.device) -> tuple[Tensor, Tensor]:
    rows, cols = torch.triu_indices(dim, dim, device=device)
    return rows, cols


@lru_cache(maxsize=64)
def _unpack_index(dim: int, device: torch.device) -> Tensor:
    """``(d, d)`` long tensor: the packed position of entry ``(i, j)``, mirrored below the
    diagonal.
    """
    rows, cols = _upper_triangle(dim, device)
    index = torch.empty(dim, dim, dtype=torch.long, device=device)
    positions = torch.arange(rows.numel(), device=device)
    index[rows, cols] = positions
    index[cols, rows] = positions
    return index


def pack_stack(stack: Tensor) -> Tensor:
    """``(N, d (d + 1) / 2)`` upper triangles, row-major, of an ``(N, d, d)`` stack."""
    rows, cols = _upper_triangle(stack.shape[-1], stack.device)
    return stack[:, rows, cols]


def unpack_stack(packed: Tensor, dim: int) -> Tensor:
    """``(N, d, d)`` symmetric stack from ``(N, d (d + 1) / 2)`` packed upper triangles."""
    return packed[:, _unpack_index(dim, packed.device)]


def unpacked_dim(packed: Tensor) -> int:
    """``d`` of a packed ``(d (d + 1) / 2,)`` vector (its last dim)."""
    return (math.isqrt(1 + 8 * packed.shape[-1]) - 1) // 2
