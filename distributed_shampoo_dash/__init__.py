"""DASH for Distributed Shampoo: batched block preconditioning and matmul-only inverse roots.

A param group uses DASH when its preconditioner config is a DASH form: the upstream class of the
same name imported from here (``RootInvShampooPreconditionerConfig``,
``RootInvKLShampooPreconditionerConfig``), or ``batched(config)`` of an upstream config. Every other
config runs upstream's code unchanged.

The solvers need only torch. The upstream adapter (the config forms, ``batched``, ``is_batched``;
the solver configs ``MinimaxRootInvConfig``, ``NewtonDBRootInvConfig`` and
``ChebyshevRootInvConfig`` and ``default_root_inv_config(device)``, the one DASH recommends;
``inverse_roots``, the roots of a stack exactly as the optimizer computes them; the diagnostics
``fallback_counts``, ``preconditioner_lists`` and ``inverse_factors``; the DDP cost model
``InverseRootCostModel``) is imported on first access and needs ``distributed_shampoo`` installed.
"""

from typing import Any

from distributed_shampoo_dash import solvers

__all__ = [
    "BATCHED_FORMS",
    "ChebyshevRootInvConfig",
    "InverseFactor",
    "InverseRootCostModel",
    "InverseRoots",
    "MinimaxRootInvConfig",
    "NewtonDBRootInvConfig",
    "RootInvKLShampooPreconditionerConfig",
    "RootInvShampooPreconditionerConfig",
    "batched",
    "default_root_inv_config",
    "fallback_counts",
    "inverse_factors",
    "inverse_roots",
    "is_batched",
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
