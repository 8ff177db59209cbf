"""DASH for Distributed Shampoo: batched block preconditioning and matmul-only inverse roots.

Importing this package changes nothing in ``distributed_shampoo``. The solvers need only torch;
the upstream adapter (the switch ``enable``, ``disable``, ``enabled``, ``is_enabled``; the configs
``NewtonDBRootInvConfig`` and ``ChebyshevRootInvConfig``; ``inverse_roots``, the roots of a stack
exactly as the optimizer computes them; the diagnostics ``fallback_counts``,
``preconditioner_lists`` and ``inverse_factors``; the DDP cost model ``InverseRootCostModel``) is
imported on first access and needs ``distributed_shampoo`` installed.
"""

from typing import Any

from distributed_shampoo_dash import solvers

__all__ = [
    "ChebyshevRootInvConfig",
    "InverseFactor",
    "InverseRootCostModel",
    "InverseRoots",
    "NewtonDBRootInvConfig",
    "disable",
    "enable",
    "enabled",
    "fallback_counts",
    "inverse_factors",
    "inverse_roots",
    "is_enabled",
    "preconditioner_lists",
    "solvers",
]

#: Names served from ``distributed_shampoo_dash.integration`` on first access.
_ADAPTER_NAMES = frozenset(__all__) - {"solvers"}


def __getattr__(name: str) -> Any:
    if name in _ADAPTER_NAMES:
        from distributed_shampoo_dash import integration

        return getattr(integration, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
