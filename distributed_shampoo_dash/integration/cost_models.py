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
and ``products(p)`` the ``d x d`` products the configured solver runs per factor, as the solver's
own ``*_products`` function counts them (:func:`~.solve.batched_solver`); a root the config
leaves to eigh (e.g. root 6 of 3-D blocks with Newton-DB) or does not batch counts as
``default_products``.

Usage (the model is a plain dataclass, so the config pickles, unlike a lambda)::

    DDPDistributedConfig(load_balancing_config=LoadBalancingConfig(cost_model=InverseRootCostModel()))
"""

from dataclasses import dataclass, field

from distributed_shampoo.preconditioner.matrix_functions_types import RootInvConfig
from distributed_shampoo.utils.load_balancing_utils import CostModel
from torch import Tensor

from distributed_shampoo_dash.integration.configs import MinimaxRootInvConfig
from distributed_shampoo_dash.integration.dispatch import batched_solver
from distributed_shampoo_dash.solvers.checks import check_instance, check_int, check_real


@dataclass
class InverseRootCostModel(CostModel):
    """Cost of a block = estimated FLOPs of its factors' inverse roots, plus a per-block constant.

    Attributes:
        config (RootInvConfig): The solver whose product count prices a root.
            (Default: ``MinimaxRootInvConfig()``)
        default_products (int): Product-equivalent of a root ``config`` computes by eigh or does
            not batch. (Default: 61)
        block_overhead (float): FLOP-equivalent constant added per block, e.g. to model per-block
            launch latency. (Default: 0.0)
    """

    config: RootInvConfig = field(default_factory=MinimaxRootInvConfig)
    default_products: int = 61
    block_overhead: float = 0.0

    def __post_init__(self) -> None:
        check_instance(self.config, RootInvConfig, "config")
        self.default_products = check_int(self.default_products, "default_products", minimum=0)
        self.block_overhead = check_real(self.block_overhead, "block_overhead")

    def products(self, root: float) -> int:
        """Products one factor with inverse root ``root`` costs."""
        solver = batched_solver(self.config, root, 0.0)
        if solver is None or solver.name == "eigh":
            return self.default_products
        return solver.products

    def cost(self, tensor: Tensor) -> float:
        """``block_overhead + sum_d products(2 * ndim) * 2 d^3`` for a block of ``tensor``'s
        shape.
        """
        products = self.products(2.0 * tensor.ndim)
        return self.block_overhead + sum(2.0 * products * d**3 for d in tensor.shape)
