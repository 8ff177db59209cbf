"""Load-balancing cost models for upstream's DDP distributor, sized for batched inverse roots.

Upstream's ``DDPDistributor`` hands every parameter block (after merging and blocking, on the
meta device in the communication dtype) to ``LoadBalancingConfig.cost_model.cost`` and assigns
blocks greedily, largest cost first, to the least-loaded rank. Its default,
``AlignedMemoryCostModel``, balances bytes: a ``(1024,)`` norm weight costs 4 KiB against 4 MiB for
a ``(1024, 1024)`` block, although its ``1024 x 1024`` factor matrix costs half as much to invert
(a square root instead of two chained ones). ``InverseRootCostModel`` balances the inverse-root
FLOPs instead::

    cost(block) = block_overhead + sum over dims d of products(p) * 2 d^3,   p = 2 * block.ndim

``p`` is upstream's default inverse root of a block of that order (no ``inverse_exponent_override``)
and ``products(p)`` is the number of ``d x d`` matrix products the solver runs per factor, by default
Newton-DB with 10 fp32 iterations (``scripts/benchmark_solvers.py``): 31 for ``p = 2``, 61 for
``p = 4``, 91 for ``p = 8``; other roots use ``default_products`` (61).

Usage (the model is a plain dataclass, so the config pickles, unlike a lambda)::

    DDPDistributedConfig(load_balancing_config=LoadBalancingConfig(cost_model=InverseRootCostModel()))
"""

from dataclasses import dataclass

from distributed_shampoo.utils.load_balancing_utils import CostModel
from torch import Tensor

#: Newton-DB, 10 fp32 iterations: ``max(m, 1) (3k - 1) + P(p) + 1`` products for ``p = 2^m``.
NEWTON_DB_PRODUCTS_BY_ROOT: tuple[tuple[float, int], ...] = ((2.0, 31), (4.0, 61), (8.0, 91))


@dataclass
class InverseRootCostModel(CostModel):
    """Cost of a block = estimated FLOPs of its factors' inverse roots, plus a per-block constant.

    Attributes:
        products_by_root (tuple[tuple[float, int], ...]): ``(root, products)`` pairs: the ``d x d``
            products one factor of that root costs. (Default: Newton-DB, 10 iterations)
        default_products (int): Products for a root not in ``products_by_root``. (Default: 61)
        block_overhead (float): FLOP-equivalent constant added per block, e.g. to model per-block
            launch latency. (Default: 0.0)
    """

    products_by_root: tuple[tuple[float, int], ...] = NEWTON_DB_PRODUCTS_BY_ROOT
    default_products: int = 61
    block_overhead: float = 0.0

    def products(self, root: float) -> int:
        """Products one factor with inverse root ``root`` costs."""
        return dict(self.products_by_root).get(float(root), self.default_products)

    def cost(self, tensor: Tensor) -> float:
        """``block_overhead + sum_d products(2 * ndim) * 2 d^3`` for a block of ``tensor``'s shape."""
        products = self.products(2.0 * tensor.ndim)
        return self.block_overhead + sum(2.0 * products * d**3 for d in tensor.shape)
