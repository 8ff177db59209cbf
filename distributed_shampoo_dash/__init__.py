"""DASH for Distributed Shampoo: batched block preconditioning and matmul-only inverse roots.

Importing this package changes nothing in ``distributed_shampoo``. The solvers need only torch;
the upstream adapter (``enable``, ``disable`` and the new ``RootInvConfig`` subclasses) is loaded
on first access and needs ``distributed_shampoo`` installed.
"""

from distributed_shampoo_dash import solvers

__all__ = ["solvers"]
