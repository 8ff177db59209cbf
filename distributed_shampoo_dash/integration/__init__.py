"""The upstream adapter: DASH configs and the switch that routes ``DistributedShampoo`` to DASH.

This is the only part of the package that imports ``distributed_shampoo``.
"""

from distributed_shampoo_dash.integration.configs import (
    ChebyshevRootInvConfig,
    DashRootInvConfig,
    NewtonDBRootInvConfig,
)
from distributed_shampoo_dash.integration.install import disable, enable, enabled, is_enabled
from distributed_shampoo_dash.integration.preconditioner_list import (
    BatchedRootInvShampooPreconditionerList,
)
from distributed_shampoo_dash.integration.solve import dash_matrix_inverse_root

__all__ = [
    "BatchedRootInvShampooPreconditionerList",
    "ChebyshevRootInvConfig",
    "DashRootInvConfig",
    "NewtonDBRootInvConfig",
    "dash_matrix_inverse_root",
    "disable",
    "enable",
    "enabled",
    "is_enabled",
]
