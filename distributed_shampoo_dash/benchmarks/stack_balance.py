"""How evenly upstream's DDP distributor spreads batched inverse-root work over ranks.

For a Llama preset (:data:`~distributed_shampoo_dash.benchmarks.presets.PRESETS`), a world size and
a cost model, :func:`measure` builds upstream's real ``DDPDistributor`` once per rank under a fake
process group (``init_process_group("fake", ...)``) over meta-device parameters, so nothing is
allocated, and reads back the blocks each rank owns. Per rank it reports:

* estimated solver FLOPs. A block of order ``n`` has ``n`` factors, one per dim ``d``, each with
  upstream's default inverse root ``p = 2n``; one factor costs ``products(p) * 2 d^3`` FLOPs, with
  the product counts of the default solver, the minimax iteration at ``rel_epsilon = 1e-5``
  (``minimax_products``): ``products(2) = 23``, ``products(4) = 24``, ``products(6) = 29``. This is
  ``InverseRootCostModel().cost`` with no per-block constant; other solvers change the counts
  (the paper's Newton-DB 31 and 61, coupled Newton 43, Chebyshev 62 for ``p = 4``) but not the
  ``d^3`` shape. Reported: max over mean (1.0 is perfect).
* ``(dim, root)`` groups: the distinct keys of its factors. Each group is at least one sequential
  batched solver call (more if a stack is chunked), so the group count is the rank's serial
  depth. Reported: max and mean.
* blocks and communication bytes (max over mean), to show what a FLOP-balanced split costs in
  all-gather balance: the DDP all-gather buffer is padded to the largest rank's bytes.

Cost models: ``memory`` is upstream's default ``AlignedMemoryCostModel``; ``poly-d3`` is upstream's
``PolynomialComputationalCostModel(coefficients=(0, 0, 0, 1))`` (``sum_d d^3``, root-blind);
``inverse-root`` is DASH's ``InverseRootCostModel`` (root-aware FLOPs, see its module).

Used by ``scripts/stack_balance.py``; needs upstream ``distributed_shampoo``.
"""

import statistics
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import torch
import torch.distributed as dist
from distributed_shampoo.distributor.shampoo_ddp_distributor import DDPDistributor
from distributed_shampoo.shampoo_types import (
    DISTRIBUTED_CONFIG,
    MAX_PRECONDITIONER_DIM,
    PARAMS,
    DDPDistributedConfig,
    LoadBalancingConfig,
)
from distributed_shampoo.utils.load_balancing_utils import (
    AlignedMemoryCostModel,
    CostModel,
    PolynomialComputationalCostModel,
)
from torch.testing._internal.distributed.fake_pg import FakeStore

from distributed_shampoo_dash.benchmarks.presets import Preset
from distributed_shampoo_dash.integration.cost_models import InverseRootCostModel

#: Cost models by command-line name.
COST_MODELS: dict[str, CostModel] = {
    "memory": AlignedMemoryCostModel(),
    "poly-d3": PolynomialComputationalCostModel(coefficients=(0.0, 0.0, 0.0, 1.0)),
    "inverse-root": InverseRootCostModel(),
}


#: The FLOP estimate of one block (the default solver, no per-block constant).
FLOP_MODEL = InverseRootCostModel()


Shape = tuple[int, ...]


GroupKey = tuple[int, float]


@dataclass(frozen=True)
class Balance:
    """Balance of one assignment.

    Attributes:
        preset (str), world_size (int), cost_model (str): What was measured.
        flops_per_rank (list[float]): Estimated inverse-root FLOPs of each rank.
        groups_per_rank (list[int]): Distinct ``(dim, root)`` groups of each rank.
        blocks_per_rank (list[int]): Blocks of each rank.
        bytes_per_rank (list[int]): fp32 bytes of each rank's blocks (its all-gather share).
    """

    preset: str
    world_size: int
    cost_model: str
    flops_per_rank: list[float]
    groups_per_rank: list[int]
    blocks_per_rank: list[int]
    bytes_per_rank: list[int]

    @property
    def flops_max_over_mean(self) -> float:
        return max_over_mean(self.flops_per_rank)

    @property
    def bytes_max_over_mean(self) -> float:
        return max_over_mean(self.bytes_per_rank)

    def summary(self) -> dict[str, object]:
        """The per-rank lists plus the derived ratios, for JSON."""
        return {
            **asdict(self),
            "flops_max_over_mean": self.flops_max_over_mean,
            "flops_max": max(self.flops_per_rank),
            "groups_max": max(self.groups_per_rank),
            "groups_mean": statistics.mean(self.groups_per_rank),
            "blocks_max_over_mean": max_over_mean(self.blocks_per_rank),
            "bytes_max_over_mean": self.bytes_max_over_mean,
        }


def max_over_mean(values: Sequence[float]) -> float:
    """``max / mean`` of ``values`` (1.0 when all are equal or all zero)."""
    mean = statistics.mean(values)
    return max(values) / mean if mean else 1.0


def meta_parameters(shapes: Sequence[Shape]) -> list[torch.nn.Parameter]:
    """Parameters of the given shapes on the meta device (no memory)."""
    return [torch.nn.Parameter(torch.empty(shape, device="meta")) for shape in shapes]


def ddp_block_shapes_per_rank(
    params: Sequence[torch.nn.Parameter],
    max_preconditioner_dim: int,
    world_size: int,
    cost_model: CostModel,
) -> list[list[Shape]]:
    """Shapes of the blocks upstream's ``DDPDistributor`` assigns to each rank.

    Builds the distributor once per rank under a fake process group of ``world_size`` ranks.
    Raises if a default process group is already initialised.
    """
    config = DDPDistributedConfig(load_balancing_config=LoadBalancingConfig(cost_model=cost_model))
    param_group = {
        PARAMS: list(params),
        MAX_PRECONDITIONER_DIM: max_preconditioner_dim,
        DISTRIBUTED_CONFIG: config,
    }
    shapes: list[list[Shape]] = []
    for rank in range(world_size):
        dist.init_process_group("fake", store=FakeStore(), rank=rank, world_size=world_size)
        try:
            distributor = DDPDistributor(param_group)
            shapes.append([tuple(block.shape) for block in distributor.local_blocked_params])
        finally:
            dist.destroy_process_group()
    return shapes


def factor_keys(shape: Shape) -> list[GroupKey]:
    """``(dim, root)`` of each factor of a block: one per dim, root ``2 * order`` (upstream
    default).
    """
    return [(d, 2.0 * len(shape)) for d in shape]


def block_flops(shape: Shape) -> float:
    """Estimated inverse-root FLOPs of a block: ``sum_d products(2 * order) * 2 d^3``."""
    return FLOP_MODEL.cost(torch.empty(shape, device="meta"))


def measure(preset_name: str, preset: Preset, world_size: int, cost_model_name: str) -> Balance:
    """Assigns ``preset``'s blocks with the named cost model and measures the balance."""
    params = meta_parameters(list(preset.shapes))
    per_rank = ddp_block_shapes_per_rank(
        params, preset.max_preconditioner_dim, world_size, COST_MODELS[cost_model_name]
    )
    return Balance(
        preset=preset_name,
        world_size=world_size,
        cost_model=cost_model_name,
        flops_per_rank=[sum(map(block_flops, shapes)) for shapes in per_rank],
        groups_per_rank=[
            len({key for s in shapes for key in factor_keys(s)}) for shapes in per_rank
        ],
        blocks_per_rank=[len(shapes) for shapes in per_rank],
        bytes_per_rank=[sum(4 * torch.Size(s).numel() for s in shapes) for shapes in per_rank],
    )


def markdown_table(balances: Sequence[Balance]) -> str:
    """One row per preset x world size x cost model."""
    header = (
        "| preset | W | cost model | FLOPs max/mean | max rank TFLOP | groups/rank max | "
        "groups/rank mean | blocks/rank max/mean | bytes max/mean |"
    )
    lines = [header, "|---|---|---|---|---|---|---|---|---|"]
    for b in balances:
        lines.append(
            f"| {b.preset} | {b.world_size} | {b.cost_model} | {b.flops_max_over_mean:.3f} | "
            f"{max(b.flops_per_rank) / 1e12:.4g} | {max(b.groups_per_rank)} | "
            f"{statistics.mean(b.groups_per_rank):.2f} | "
            f"{max(b.blocks_per_rank)}/{statistics.mean(b.blocks_per_rank):.1f} | "
            f"{b.bytes_max_over_mean:.3f} |"
        )
    return "\n".join(lines)
