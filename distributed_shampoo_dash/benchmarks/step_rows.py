"""The rows of the step benchmark: which optimizer each builds, over which parameters and gradients.

Every row is upstream ``DistributedShampoo`` with the DASH paper's settings
(:data:`~distributed_shampoo_dash.paper_defaults.PAPER_SETTINGS`) and one root-inverse solver,
DASH on or off (:class:`Row`), or the DASH authors' ``DashGpu`` (:class:`PeerRow`,
:mod:`~distributed_shampoo_dash.benchmarks.peer_dashgpu`). Needs upstream ``distributed_shampoo``.
"""

from collections.abc import Sequence
from dataclasses import dataclass, replace

import torch
from distributed_shampoo import (
    CoupledNewtonConfig,
    DistributedShampoo,
    EigenConfig,
    RootInvShampooPreconditionerConfig,
)
from distributed_shampoo.preconditioner.matrix_functions_types import RootInvConfig

import distributed_shampoo_dash as dash
from distributed_shampoo_dash.benchmarks import peer_dashgpu
from distributed_shampoo_dash.benchmarks.presets import Preset
from distributed_shampoo_dash.paper_defaults import PAPER_SETTINGS
from distributed_shampoo_dash.solvers import IterationControl, MatmulPrecision

#: Ten iterations at the reduced precision, then two in fp32.
REFINED = IterationControl(num_iterations=10, refinement_iterations=2)


@dataclass(frozen=True)
class Row:
    """One benchmarked optimizer: a label, whether DASH is on, the root-inverse solver, and
    DASH settings of the preconditioner config (:class:`~.BatchedSettings` fields)."""

    label: str
    use_dash: bool
    solver: RootInvConfig
    settings: tuple[tuple[str, object], ...] = ()


@dataclass(frozen=True)
class PeerRow:
    """One benchmarked setting of the DASH authors' ``DashGpu`` (:mod:`.peer_dashgpu`)."""

    label: str
    setting: peer_dashgpu.DashGpuSetting


AnyRow = Row | PeerRow


def rows() -> list[Row]:
    """Upstream ``EigenConfig`` first (the reference for speedups), then DASH with each solver
    (and upstream ``CoupledNewtonConfig``, to compare the same solver), the accelerator default
    (``default_root_inv_config("cuda")``) among them."""
    return [
        Row("upstream EigenConfig", False, EigenConfig()),
        Row("DASH EigenConfig", True, EigenConfig()),
        Row("upstream CoupledNewtonConfig", False, CoupledNewtonConfig()),
        Row("DASH CoupledNewtonConfig", True, CoupledNewtonConfig()),
        Row("DASH minimax fp32", True, dash.MinimaxRootInvConfig()),
        Row("DASH minimax tf32 (GPU default)", True, dash.default_root_inv_config("cuda")),
        Row(
            "DASH minimax tf32, fp32 step products",
            True,
            dash.default_root_inv_config("cuda"),
            settings=(("tf32_step_products", False),),
        ),
        Row(
            "DASH minimax bf16",
            True,
            dash.MinimaxRootInvConfig(precision=MatmulPrecision.BF16, max_residual=5e-2),
        ),
        Row(
            "DASH minimax fp16",
            True,
            dash.MinimaxRootInvConfig(precision=MatmulPrecision.FP16, max_residual=5e-2),
        ),
        Row("DASH Newton-DB paper fp32 (k=10)", True, dash.NewtonDBRootInvConfig()),
        Row(
            "DASH Newton-DB paper bf16 (k=10, +2 fp32)",
            True,
            dash.NewtonDBRootInvConfig(precision=MatmulPrecision.BF16, iteration=REFINED),
        ),
        Row("DASH Chebyshev fp32 (degree 60)", True, dash.ChebyshevRootInvConfig()),
    ]


def peer_rows(
    settings: Sequence[peer_dashgpu.DashGpuSetting] = peer_dashgpu.SETTINGS,
    triton_stand_ins: bool = False,
) -> tuple[list[PeerRow], str]:
    """The ``DashGpu`` rows of ``settings`` if the authors' package imports (with stand-ins for
    its Triton kernels if asked: ``peer_dashgpu.load``), else ``([], why not)``."""
    peer, reason = peer_dashgpu.load(triton_stand_ins=triton_stand_ins)
    if peer is None:
        return [], reason
    return [PeerRow(setting.label, setting) for setting in settings], ""


def select_rows(candidates: Sequence[AnyRow], only: Sequence[str] | None) -> list[AnyRow]:
    """The first row (the reference) and those whose label contains one of ``only`` (all if
    empty).
    """
    return [
        row
        for index, row in enumerate(candidates)
        if index == 0 or not only or any(name in row.label for name in only)
    ]


def make_optimizer(
    params: list[torch.nn.Parameter],
    row: Row,
    preset: Preset,
    precondition_frequency: int,
    max_stack_bytes: int | None = None,
) -> DistributedShampoo:
    """The DASH paper's settings (``PAPER_SETTINGS``: betas 0.9/0.95, Adam grafting 0.95/1e-8,
    epsilon 1e-10) with the preset's block size, lr 1e-3, and the DASH form of the preconditioner
    config for a DASH row, with ``max_stack_bytes`` (``None``: the automatic budget)."""
    preconditioner_config = RootInvShampooPreconditionerConfig(
        amortized_computation_config=row.solver
    )
    settings = replace(
        PAPER_SETTINGS,
        max_preconditioner_dim=preset.max_preconditioner_dim,
        precondition_frequency=precondition_frequency,
    )
    return DistributedShampoo(
        params,
        lr=1e-3,
        start_preconditioning_step=precondition_frequency,
        preconditioner_config=(
            dash.batched(
                preconditioner_config, max_stack_bytes=max_stack_bytes, **dict(row.settings)
            )
            if row.use_dash
            else preconditioner_config
        ),
        **settings.shampoo_kwargs(),
    )


def make_any_optimizer(
    params: list[torch.nn.Parameter], row: AnyRow, preset: Preset, precondition_frequency: int
) -> torch.optim.Optimizer:
    """:func:`make_optimizer` for Shampoo rows, ``DashGpu`` for peer rows."""
    if isinstance(row, PeerRow):
        peer, reason = peer_dashgpu.load()
        if peer is None:
            raise RuntimeError(reason)
        return peer_dashgpu.make_optimizer(
            peer, params, row.setting, preset.max_preconditioner_dim, precondition_frequency
        )
    return make_optimizer(params, row, preset, precondition_frequency)


def computes_roots(step: int, precondition_frequency: int) -> bool:
    """Whether 1-based ``step`` computes inverse roots (upstream's rule with its default start)."""
    return step % precondition_frequency == 0


def row_computes_roots(row: AnyRow, step: int, precondition_frequency: int) -> bool:
    """:func:`computes_roots`, or ``DashGpu``'s rule for peer rows."""
    if isinstance(row, PeerRow):
        return peer_dashgpu.computes_roots(step, precondition_frequency)
    return computes_roots(step, precondition_frequency)


def make_parameters(
    preset: Preset, device: torch.device
) -> tuple[list[torch.nn.Parameter], torch.Generator]:
    """The preset's parameters (seeded) and the generator that draws their gradients."""
    generator = torch.Generator(device="cpu").manual_seed(0)
    params = [
        torch.nn.Parameter(torch.randn(shape, generator=generator).mul_(0.02).to(device))
        for shape in preset.shapes
    ]
    return params, generator


def set_gradients(params: list[torch.nn.Parameter], generator: torch.Generator) -> None:
    for param in params:
        param.grad = torch.randn(param.shape, generator=generator).to(param.device)
