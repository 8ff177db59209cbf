"""Batched inverse-root solvers for stacks of symmetric positive semi-definite matrices.

Every solver takes an ``(N, d, d)`` stack (a ``(d, d)`` matrix is a stack of one), the root and,
keyword-only, the same kinds of options the same way: ``epsilon``, and for the iterative solvers
``rel_epsilon`` (:mod:`~distributed_shampoo_dash.solvers.problem`), ``precision``
(:class:`MatmulPrecision`), ``scaling`` (:class:`SpectralScaling`) and their own options
(:class:`IterationControl`, a degree). Each returns an :class:`InverseRootResult` with the
``(N, d, d)`` roots and ``(N,)`` per-block diagnostics, without reading any tensor value on the
host, and has a ``*_products`` function next to it that counts the ``d x d`` products it runs.
:data:`SOLVERS` lists every solver with its products, roots, work space and options
(:mod:`~distributed_shampoo_dash.solvers.registry`); :data:`DEFAULT_SOLVER` is DASH's default.
Only ``torch`` is needed.
"""

from distributed_shampoo_dash.solvers.chebyshev import (
    chebyshev_coefficients,
    chebyshev_inverse_root,
    chebyshev_products,
)
from distributed_shampoo_dash.solvers.coupled_newton import (
    DEFAULT_COUPLED_NEWTON_ITERATION,
    coupled_newton_inverse_root,
    coupled_newton_products,
)
from distributed_shampoo_dash.solvers.eigh import EIGH_PRODUCTS, eigh_inverse_root, eigh_products
from distributed_shampoo_dash.solvers.iteration import IterationControl
from distributed_shampoo_dash.solvers.newton_db import (
    DEFAULT_NEWTON_DB_ITERATION,
    newton_db_inverse_root,
    newton_db_products,
    newton_schulz_square_roots,
)
from distributed_shampoo_dash.solvers.precision import (
    MatmulPrecision,
    ProductCounts,
    as_matmul_precision,
)
from distributed_shampoo_dash.solvers.registry import DEFAULT_SOLVER, SOLVERS, Solver
from distributed_shampoo_dash.solvers.result import (
    InverseRootResult,
    RootResidual,
    inverse_root_residual,
    residual_products,
)
from distributed_shampoo_dash.solvers.scaling import (
    FROBENIUS_SCALING,
    MULTI_POWER_ITERATION_SCALING,
    ScalingMethod,
    SpectralScaling,
)

__all__ = [
    "DEFAULT_COUPLED_NEWTON_ITERATION",
    "DEFAULT_NEWTON_DB_ITERATION",
    "DEFAULT_SOLVER",
    "EIGH_PRODUCTS",
    "FROBENIUS_SCALING",
    "MULTI_POWER_ITERATION_SCALING",
    "SOLVERS",
    "InverseRootResult",
    "IterationControl",
    "MatmulPrecision",
    "ProductCounts",
    "RootResidual",
    "ScalingMethod",
    "Solver",
    "SpectralScaling",
    "as_matmul_precision",
    "chebyshev_coefficients",
    "chebyshev_inverse_root",
    "chebyshev_products",
    "coupled_newton_inverse_root",
    "coupled_newton_products",
    "eigh_inverse_root",
    "eigh_products",
    "inverse_root_residual",
    "newton_db_inverse_root",
    "newton_db_products",
    "newton_schulz_square_roots",
    "residual_products",
]
