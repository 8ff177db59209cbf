"""The upstream adapter: DASH configs, the switch that routes ``DistributedShampoo`` to DASH, the
inverse roots exactly as the optimizer computes them, and diagnostics.

This is the only part of the package that imports ``distributed_shampoo``. Importing it (which any
access to a DASH config does) installs the check that makes ``DistributedShampoo`` refuse a DASH
config while DASH is disabled; importing the top-level package alone changes nothing.
"""

from distributed_shampoo_dash.integration.configs import (
    ChebyshevRootInvConfig,
    DashRootInvConfig,
    NewtonDBRootInvConfig,
)
from distributed_shampoo_dash.integration.cost_models import InverseRootCostModel
from distributed_shampoo_dash.integration.diagnostics import (
    InverseFactor,
    fallback_counts,
    inverse_factors,
    preconditioner_lists,
)
from distributed_shampoo_dash.integration.install import (
    disable,
    enable,
    enabled,
    install_construction_check,
    is_enabled,
)
from distributed_shampoo_dash.integration.per_block import dash_matrix_inverse_root
from distributed_shampoo_dash.integration.preconditioner_list import (
    BatchedRootInvKLShampooPreconditionerList,
    BatchedRootInvShampooPreconditionerList,
)
from distributed_shampoo_dash.integration.roots import InverseRoots, inverse_roots

install_construction_check()

__all__ = [
    "BatchedRootInvKLShampooPreconditionerList",
    "BatchedRootInvShampooPreconditionerList",
    "ChebyshevRootInvConfig",
    "DashRootInvConfig",
    "InverseFactor",
    "InverseRootCostModel",
    "InverseRoots",
    "NewtonDBRootInvConfig",
    "dash_matrix_inverse_root",
    "disable",
    "enable",
    "enabled",
    "fallback_counts",
    "inverse_factors",
    "inverse_roots",
    "is_enabled",
    "preconditioner_lists",
]
