"""The per-block solver binding DASH installs: upstream's ``matrix_inverse_root`` plus the DASH
configs.

Upstream's root-inverse lists call the module global ``matrix_inverse_root`` of
``distributed_shampoo.preconditioner.shampoo_preconditioner_list`` once per factor matrix, with
the bias-corrected matrix, and cast the result to the inverse factor's dtype.
:func:`~.install.install` binds that name to :func:`dash_matrix_inverse_root`, which serves the
DASH solver configs with the policy of :mod:`.policy` on a stack of one and hands every other
config to upstream's function unchanged.
"""

import logging
from fractions import Fraction

from distributed_shampoo.preconditioner.matrix_functions import (
    matrix_inverse_root as upstream_matrix_inverse_root,
)
from distributed_shampoo.preconditioner.matrix_functions_types import RootInvConfig
from torch import Tensor

from distributed_shampoo_dash.integration.configs import DashRootInvConfig
from distributed_shampoo_dash.integration.policy import describe_rejections, inverse_roots

logger: logging.Logger = logging.getLogger(__name__)

__all__ = ["dash_matrix_inverse_root", "upstream_matrix_inverse_root"]


def dash_matrix_inverse_root(
    A: Tensor, root: Fraction, root_inv_config: RootInvConfig, epsilon: float = 0.0
) -> Tensor:
    """Drop-in for upstream ``matrix_inverse_root`` that also understands the DASH configs.

    For a DASH config the root of the single matrix ``A`` is computed as :func:`.inverse_roots`
    does; a block with no usable root raises ``ArithmeticError``, which upstream turns into
    "keep the previous inverse factor and count a failed amortized computation". Other configs go
    to upstream's own function unchanged.
    """
    if not isinstance(root_inv_config, DashRootInvConfig):
        return upstream_matrix_inverse_root(
            A=A, root=root, root_inv_config=root_inv_config, epsilon=epsilon
        )
    if A.ndim != 2 or A.shape[0] != A.shape[1]:
        raise ValueError(f"Matrix is not square and 2-dimensional! {A.shape=}")
    roots = inverse_roots(A, float(root), root_inv_config, epsilon=epsilon)
    if bool(roots.accepted[0]):
        return roots.inverse_root[0]
    residual = f"residual {float(roots.residual[0]):.3e} (max {root_inv_config.max_residual})"
    if bool(roots.recomputed[0]):
        block = f"a {tuple(A.shape)} block ({residual})"
        logger.warning(describe_rejections(root_inv_config, block, recomputed=True))
        return roots.inverse_root[0]
    raise ArithmeticError(
        f"{type(root_inv_config).__name__} produced no acceptable inverse root: {residual}, "
        f"finite {bool(roots.is_finite[0])}."
    )
