"""Batched linear-algebra helpers on ``(N, d, d)`` stacks; none reads a tensor value on the host."""

import torch
from torch import Tensor

from distributed_shampoo_dash.solvers.precision import (
    MatmulPrecision,
    Operand,
    batched_matmul,
    value_of,
)


def batched_eye(stack: Tensor) -> Tensor:
    """Returns an ``(N, d, d)`` identity stack (an expanded view) matching ``stack``."""
    n, d, _ = stack.shape
    return torch.eye(d, dtype=stack.dtype, device=stack.device).expand(n, d, d)


def add_to_diagonal(stack: Tensor, value: Tensor | float) -> Tensor:
    """Returns ``stack + value * I`` for a scalar or a per-block ``(N,)`` ``value``."""
    return add_to_diagonal_(stack.clone(), value)


def add_to_diagonal_(stack: Tensor, value: Tensor | float) -> Tensor:
    """Adds ``value * I`` to ``stack`` in place (scalar or per-block ``(N,)``) and returns it."""
    stack.diagonal(dim1=-2, dim2=-1).add_(
        value.unsqueeze(-1) if isinstance(value, Tensor) else value
    )
    return stack


def frobenius_norm(stack: Tensor) -> Tensor:
    """Per-block Frobenius norm ``||A_i||_F`` of an ``(N, d, d)`` stack, safe from over/underflow.

    Entries are divided by the block's largest magnitude before squaring, so blocks with entries
    near 1e30 or 1e-30 in float32 still give finite, non-zero norms. An all-zero block gives 0.
    """
    divisor = unit_divisor(stack)
    return torch.linalg.vector_norm(stack / divisor[:, None, None], dim=(-2, -1)) * divisor


def largest_magnitude(stack: Tensor) -> Tensor:
    """``max_ij |A_ij|`` per block of an ``(N, d, d)`` stack, in one read (no ``abs`` copy)."""
    return torch.linalg.vector_norm(stack, float("inf"), dim=(-2, -1))


def unit_divisor(stack: Tensor) -> Tensor:
    """``(N,)`` :func:`largest_magnitude`, at least the dtype's smallest normal number: dividing a
    block by it brings every entry into ``[-1, 1]`` (a zero block stays 0, not ``0 / 0``)."""
    return largest_magnitude(stack).clamp_min(torch.finfo(stack.dtype).tiny)


def matrix_power_products(exponent: int) -> int:
    """Products :func:`matrix_power` runs for ``X^n``: ``floor(log2 n) + popcount(n) - 1``."""
    return exponent.bit_length() - 1 + exponent.bit_count() - 1


def matrix_power(stack: Operand, exponent: int, precision: MatmulPrecision) -> Tensor:
    """``X^n`` per block by repeated squaring (:func:`matrix_power_products` products).

    Args:
        stack (Operand): ``(N, d, d)`` stack (split in advance or not: the first square uses the
            split).
        exponent (int): Power ``n >= 1``.
        precision (MatmulPrecision): Precision of each product.
    """
    result: Tensor | None = None
    base = stack
    while True:
        if exponent & 1:
            result = value_of(base) if result is None else batched_matmul(result, base, precision)
        exponent >>= 1
        if exponent == 0:
            assert result is not None
            return result
        base = batched_matmul(base, base, precision)


def stable_power(values: Tensor, exponent: float) -> Tensor:
    """``values ** exponent`` elementwise, evaluated in float64 and rounded to ``values.dtype``.

    CPU kernels evaluate ``pow`` with vectorised and scalar code that round differently, and which
    one handles an element depends on its position in the tensor. Evaluated in float64, both are
    accurate far below float32 resolution, so the float32 powers of a block do not depend on the
    stack it is in (a DDP rank stacks other blocks than a single device does). Products and
    eigendecompositions of a stack may still round differently from those of a single block.
    """
    return values.double().pow(exponent).to(values.dtype)


def finite_blocks(*stacks: Tensor) -> Tensor:
    """``(N,)`` bool: True only where every entry of the given per-block tensors is finite.

    One read of each stack (a half-precision one is read as float32): a block's ``sum |x|``,
    summed over the stacks, is NaN or infinite if an entry is, and finite otherwise unless the
    entries come within a factor of their count of the float32 range (then the block reads as not
    finite, the safe side: it is recomputed). The sum is never negative, so ``sum < inf`` is its
    finiteness in one op; a ``torch.isfinite`` of the stack would make four passes and three
    temporaries of its size.
    """
    total: Tensor | None = None
    for stack in stacks:
        dtype = torch.promote_types(stack.dtype, torch.float32)
        dims = tuple(range(1, stack.ndim))
        sums = torch.linalg.vector_norm(stack, 1, dim=dims, dtype=dtype) if dims else stack.abs()
        total = sums if total is None else total + sums
    assert total is not None, "finite_blocks needs at least one stack"
    return total < torch.inf


def select_blocks(mask: Tensor, new: Tensor, old: Tensor) -> Tensor:
    """Per-block ``new if mask else old`` for ``(N, d, d)`` stacks and an ``(N,)`` mask."""
    return torch.where(mask[:, None, None], new, old)
