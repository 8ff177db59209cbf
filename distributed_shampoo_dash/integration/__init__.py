"""The upstream adapter: DASH configs and the switch that routes ``DistributedShampoo`` to DASH.

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
from distributed_shampoo_dash.integration.install import (
    disable,
    enable,
    enabled,
    install_construction_check,
    is_enabled,
)
from distributed_shampoo_dash.integration.preconditioner_list import (
    BatchedRootInvShampooPreconditionerList,
)
from distributed_shampoo_dash.integration.solve import dash_matrix_inverse_root

install_construction_check()

__all__ = [
    "BatchedRootInvShampooPreconditionerList",
    "ChebyshevRootInvConfig",
    "DashRootInvConfig",
    "InverseRootCostModel",
    "NewtonDBRootInvConfig",
    "dash_matrix_inverse_root",
    "disable",
    "enable",
    "enabled",
    "is_enabled",
]
