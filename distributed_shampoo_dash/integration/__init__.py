"""The upstream adapter: the DASH forms of upstream's preconditioner configs and the batched
lists they select, DASH's solver configs, the inverse roots exactly as the optimizer computes
them, and diagnostics.

Importing it (which any access to a DASH config does) calls :func:`~.install.install`, once: a
param group with a DASH config form gets the batched list, every other group upstream's.
"""

from distributed_shampoo_dash.integration.configs import (
    ChebyshevRootInvConfig,
    DashRootInvConfig,
    MinimaxRootInvConfig,
    NewtonDBRootInvConfig,
    default_root_inv_config,
)
from distributed_shampoo_dash.integration.cost_models import InverseRootCostModel
from distributed_shampoo_dash.integration.diagnostics import (
    InverseFactor,
    fallback_counts,
    inverse_factors,
    preconditioner_lists,
)
from distributed_shampoo_dash.integration.install import (
    BATCHED_FORMS,
    BatchedForm,
    batched,
    install,
    is_batched,
)
from distributed_shampoo_dash.integration.per_block import dash_matrix_inverse_root
from distributed_shampoo_dash.integration.policy import InverseRoots, inverse_roots
from distributed_shampoo_dash.integration.preconditioner_configs import (
    BatchedSettings,
    RootInvKLShampooPreconditionerConfig,
    RootInvShampooPreconditionerConfig,
)
from distributed_shampoo_dash.integration.preconditioner_list import (
    BatchedRootInvKLShampooPreconditionerList,
    BatchedRootInvShampooPreconditionerList,
)

install()

__all__ = [
    "BATCHED_FORMS",
    "BatchedForm",
    "BatchedRootInvKLShampooPreconditionerList",
    "BatchedRootInvShampooPreconditionerList",
    "BatchedSettings",
    "ChebyshevRootInvConfig",
    "DashRootInvConfig",
    "InverseFactor",
    "InverseRootCostModel",
    "InverseRoots",
    "MinimaxRootInvConfig",
    "NewtonDBRootInvConfig",
    "RootInvKLShampooPreconditionerConfig",
    "RootInvShampooPreconditionerConfig",
    "batched",
    "dash_matrix_inverse_root",
    "default_root_inv_config",
    "fallback_counts",
    "install",
    "inverse_factors",
    "inverse_roots",
    "is_batched",
    "preconditioner_lists",
]
