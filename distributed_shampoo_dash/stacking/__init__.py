"""Grouping of per-block matrices into same-shape stacks, and writing results back.

Only torch is needed. A *group* is the list of positions (in the caller's flat list of blocks)
whose matrices share a key, e.g. ``(dim, root, dtype)`` for inverse roots; a *stack* is the
``(N, d, d)`` tensor of a group's matrices in that order.
"""

from distributed_shampoo_dash.stacking.groups import (
    InverseRootKey,
    group_indices,
    stack_group,
    write_back,
)

__all__ = ["InverseRootKey", "group_indices", "stack_group", "write_back"]
