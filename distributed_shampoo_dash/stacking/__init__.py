"""Same-shape stacks of per-block tensors: grouping, Kronecker algebra, packing, write-back.

Only torch is needed. A *group* is the list of positions (in the caller's flat list of blocks)
whose matrices share a key, e.g. ``(dim, root, dtype)`` for inverse roots; a *stack* is the
``(N, d, d)`` tensor of a group's matrices in that order.
"""

from distributed_shampoo_dash.stacking.groups import (
    chunked,
    group_indices,
    stack_group,
)
from distributed_shampoo_dash.stacking.kronecker import mode_gram_matrices, precondition_stack
from distributed_shampoo_dash.stacking.packing import (
    pack_stack,
    packed_size,
    unpack_stack,
    unpacked_dim,
)

__all__ = [
    "chunked",
    "group_indices",
    "mode_gram_matrices",
    "pack_stack",
    "packed_size",
    "precondition_stack",
    "stack_group",
    "unpack_stack",
    "unpacked_dim",
]
