"""Batched inverse-root solvers for stacks of symmetric positive semi-definite matrices.

Every solver takes an ``(N, d, d)`` stack (a ``(d, d)`` matrix is a stack of one) and returns an
:class:`InverseRootResult` with the ``(N, d, d)`` roots and ``(N,)`` per-block diagnostics, without
reading any tensor value on the host. Only ``torch`` is needed.
"""

from distributed_shampoo_dash.solvers.chebyshev import (
    chebyshev_coefficients,
    chebyshev_inverse_root,
)
from distributed_shampoo_dash.solvers.common import InverseRootResult, inverse_root_residual
from distributed_shampoo_dash.solvers.coupled_newton import (
    DEFAULT_COUPLED_NEWTON_CONTROL,
    coupled_newton_inverse_root,
)
from distributed_shampoo_dash.solvers.eigh import eigh_inverse_root
from distributed_shampoo_dash.solvers.iteration import IterationControl
from distributed_shampoo_dash.solvers.newton_db import (
    DEFAULT_NEWTON_DB_CONTROL,
    check_newton_db_root,
    newton_db_inverse_root,
    newton_schulz_square_roots,
)
from distributed_shampoo_dash.solvers.precision import MatmulPrecision, as_matmul_precision
from distributed_shampoo_dash.solvers.scaling import (
    FROBENIUS_SCALING,
    MULTI_POWER_ITERATION_SCALING,
    ScalingMethod,
    SpectralScaling,
)

__all__ = [
    "DEFAULT_COUPLED_NEWTON_CONTROL",
    "DEFAULT_NEWTON_DB_CONTROL",
    "FROBENIUS_SCALING",
    "MULTI_POWER_ITERATION_SCALING",
    "InverseRootResult",
    "IterationControl",
    "MatmulPrecision",
    "ScalingMethod",
    "SpectralScaling",
    "as_matmul_precision",
    "chebyshev_coefficients",
    "chebyshev_inverse_root",
    "check_newton_db_root",
    "coupled_newton_inverse_root",
    "eigh_inverse_root",
    "inverse_root_residual",
    "newton_db_inverse_root",
    "newton_schulz_square_roots",
]
