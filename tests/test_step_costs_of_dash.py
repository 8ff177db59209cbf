"""What the GPU-cost proxies of ``distributed_shampoo_dash.step_costs`` show about a DASH step:
the work it launches does not grow with the number of same-shape blocks, and the FLOPs of a root
computation are exactly each solver's documented product count
(``BatchedSolver.product_counts``)."""

from collections.abc import Callable

import pytest
import torch

pytestmark = pytest.mark.upstream
pytest.importorskip("distributed_shampoo")

from distributed_shampoo import (
    CoupledNewtonConfig,
    DistributedShampoo,
    EigenConfig,
)
from distributed_shampoo.preconditioner.matrix_functions_types import RootInvConfig

import distributed_shampoo_dash as dash
from distributed_shampoo_dash import step_costs
from distributed_shampoo_dash.benchmarks import step_rows, step_runs
from distributed_shampoo_dash.benchmarks.presets import PRESETS
from distributed_shampoo_dash.integration.dispatch import batched_solver
from distributed_shampoo_dash.solvers import MatmulPrecision, ScalingMethod
from distributed_shampoo_dash.solvers.result import OVERSHOOT_POWER_STEPS, OVERSHOOT_VECTORS
from tests.integration.shampoo import shampoo


def shampoo_steps(
    num_params: int, solver: RootInvConfig, use_dash: bool, device: torch.device
) -> tuple[Callable[[], None], DistributedShampoo]:
    """``DistributedShampoo`` over ``num_params`` weights of 16 x 16 (one block each), roots every
    second step, after two steps of warm-up (the next step computes no roots), and the function
    that draws new gradients."""
    generator = torch.Generator().manual_seed(0)
    params = [
        torch.nn.Parameter(torch.randn(16, 16, generator=generator).to(device))
        for _ in range(num_params)
    ]
    optimizer = shampoo(
        params,
        solver,
        batched=use_dash,
        epsilon=1e-6,
        lr=1e-3,
        max_preconditioner_dim=16,
        precondition_frequency=2,
        start_preconditioning_step=2,
    )

    def new_gradients() -> None:
        for param in params:
            param.grad = torch.randn(16, 16, generator=generator).to(device)

    for _ in range(2):
        new_gradients()
        optimizer.step()
    return new_gradients, optimizer


def costs_without_and_with_roots(
    num_params: int, solver: RootInvConfig, use_dash: bool, device: torch.device
) -> tuple[step_costs.StepCosts, step_costs.StepCosts, DistributedShampoo]:
    """Step costs of the third step (no roots) and the fourth (roots) of :func:`shampoo_steps`."""
    new_gradients, optimizer = shampoo_steps(num_params, solver, use_dash, device)
    new_gradients()
    without_roots = step_costs.measure(optimizer.step)
    new_gradients()
    with_roots = step_costs.measure(optimizer.step)
    return without_roots, with_roots, optimizer


@pytest.mark.cuda
@pytest.mark.parametrize("solver_name", ["eigen", "newton_db"])
def test_the_work_a_dash_step_launches_does_not_grow_with_the_number_of_same_shape_blocks(
    solver_name: str, device: torch.device
) -> None:
    """8 and 64 blocks of 16 x 16 (one chunk): the same ops launch work, with and without roots;
    only views, which launch nothing, add a few ops per block (upstream splits every parameter
    into blocks and lists them). Upstream's launches grow with the blocks."""
    solver = EigenConfig() if solver_name == "eigen" else dash.MinimaxRootInvConfig()
    few = costs_without_and_with_roots(8, solver, True, device)
    many = costs_without_and_with_roots(64, solver, True, device)
    for few_costs, many_costs in zip(few[:2], many[:2], strict=True):
        assert few_costs.launches == many_costs.launches
        assert many_costs.ops - few_costs.ops <= 4 * (64 - 8)  # views only
        assert few_costs.syncs == many_costs.syncs
    upstream_few = costs_without_and_with_roots(8, EigenConfig(), False, device)
    upstream_many = costs_without_and_with_roots(64, EigenConfig(), False, device)
    assert upstream_many[1].launches > 6 * upstream_few[1].launches
    assert upstream_many[0].launches > 4 * upstream_few[0].launches
    assert many[1].launches * 15 < upstream_many[1].launches


def dash_solver_configs() -> dict[str, RootInvConfig]:
    """Every batched solver, with settings that accept every root on these factors (so no eigh
    fallback adds work) and run a fixed number of products."""
    return {
        "eigh": EigenConfig(),
        "coupled_newton": CoupledNewtonConfig(max_iterations=6, tolerance=0.0),
        "minimax_fp32": dash.MinimaxRootInvConfig(),
        "minimax_bf16": dash.MinimaxRootInvConfig(
            precision=MatmulPrecision.BF16, max_residual=None
        ),
        "newton_db_paper": dash.NewtonDBRootInvConfig(max_residual=None),
        "chebyshev": dash.ChebyshevRootInvConfig(max_residual=None),
    }


@pytest.mark.cuda
@pytest.mark.parametrize(
    "solver_name",
    ["eigh", "coupled_newton", "minimax_fp32", "minimax_bf16", "newton_db_paper", "chebyshev"],
)
def test_root_computation_flops_are_the_solvers_documented_product_count(
    solver_name: str, device: torch.device
) -> None:
    """FLOPs of a root step minus those of a step without roots (the same factor update and
    preconditioning) = sum over factor matrices of ``BatchedSolver.products x 2 d^3``, plus the
    power iteration's ``k + 1`` products ``(d, d) @ (d, m)`` per factor where the solver scales by
    it and the overshoot's where it measures a residual (every solver but eigh). eigh's
    decomposition has no FLOP formula; its two products are its documented count."""
    solver = dash_solver_configs()[solver_name]
    without_roots, with_roots, optimizer = costs_without_and_with_roots(8, solver, True, device)
    assert not dash.fallback_counts(optimizer)

    expected = 0
    for factor in dash.inverse_factors(optimizer):
        d = factor.matrix.shape[0]
        batched = batched_solver(solver, factor.root, factor.epsilon)
        assert batched is not None
        expected += batched.products * 2 * d**3
        scaling = getattr(solver, "scaling", None)
        if scaling is not None and scaling.method is not ScalingMethod.FROBENIUS:
            expected += (scaling.num_iterations + 1) * 2 * d * d * scaling.num_vectors
        if batched.name != "eigh":
            expected += (OVERSHOOT_POWER_STEPS + 1) * 2 * d * d * OVERSHOOT_VECTORS
    assert expected > 0
    assert with_roots.flops - without_roots.flops == expected


@pytest.mark.parametrize(
    "label",
    ["DASH EigenConfig", "DASH minimax fp32", "DASH Chebyshev fp32 (degree 60)"],
)
def test_counting_on_the_meta_device_gives_the_counts_of_a_real_run(label: str) -> None:
    """``scripts/benchmark.py --on-meta`` (``step_runs.meta_costs``) counts presets too large to
    run here: on the ``smoke`` preset its counts and modelled GPU times equal those of a run on
    the CPU (when no root is rejected there)."""
    preset, row = PRESETS["smoke"], next(r for r in step_rows.rows() if r.label == label)
    on_meta = step_runs.meta_costs(row, preset, 2)

    params, generator = step_rows.make_parameters(preset, torch.device("cpu"))
    optimizer = step_rows.make_optimizer(
        params, row, preset, 2, max_stack_bytes=step_runs.MODELLED_STACK_BUDGET
    )
    for _ in range(2):
        step_rows.set_gradients(params, generator)
        optimizer.step()
    without_roots, with_roots, _ = step_runs.count_step_costs(
        optimizer, lambda: step_rows.set_gradients(params, generator), row, 2, 2
    )
    assert not dash.fallback_counts(optimizer)
    for key in ("ops", "launches", "products", "flops", "syncs", "peak_bytes", "phase_peak_bytes"):
        assert on_meta["costs_without_roots"][key] == without_roots[key], (
            key,
            on_meta,
            without_roots,
        )
        assert on_meta["costs_with_roots"][key] == with_roots[key], (key, on_meta, with_roots)
    assert on_meta["costs_without_roots"]["modelled"] == without_roots["modelled"]
    assert on_meta["costs_with_roots"]["modelled"] == with_roots["modelled"]
    assert on_meta["floor_flops_by_precision"] == step_runs.solver_floor_flops(
        optimizer, row.solver
    )


def test_a_root_step_of_the_anchor_preset_launches_few_kernels_with_the_cuda_budget() -> None:
    """The GPU default on the Llama-shaped ``anchor`` preset (289 factor matrices), chunked as on
    an 80 GB CUDA device: at most 2,000 kernels per root step (each chunk of root-4 blocks
    launches 179), a third of upstream's, and two host reads."""
    preset = PRESETS["anchor"]
    rows = {row.label: row for row in step_rows.rows()}
    dash_costs = step_runs.meta_costs(rows["DASH minimax tf32 (GPU default)"], preset, 1)
    upstream_costs = step_runs.meta_costs(rows["upstream EigenConfig"], preset, 1)
    launches = dash_costs["costs_with_roots"]["launches"]
    assert launches <= 2000
    assert 3 * launches <= upstream_costs["costs_with_roots"]["launches"]
    assert dash_costs["costs_with_roots"]["syncs"] == 2


def tensor_core_share(costs: dict[str, object]) -> float:
    """Share of a step's product FLOPs at TF32, 3xTF32, bf16 or fp16, on the modelled H100."""
    flops = costs["modelled"]["H100 SXM"]["flops_by_precision"]  # type: ignore[index]
    tensor_cores = sum(flops.get(name, 0) for name in ("tf32", "3xtf32", "bf16", "fp16"))
    return tensor_cores / sum(flops.values())


def test_the_anchor_preset_runs_its_products_on_tensor_cores() -> None:
    """The GPU default: every product of the step without roots on tensor cores (its Gram and
    preconditioning products follow the solver onto TF32) and, with roots, all but the power
    iterations' matrix-vector products; with ``tf32_step_products=False`` the step without roots
    keeps fp32 and a root step still has at least 75% of its product FLOPs on tensor cores."""
    preset = PRESETS["anchor"]
    rows = {row.label: row for row in step_rows.rows()}
    default = step_runs.meta_costs(rows["DASH minimax tf32 (GPU default)"], preset, 2)
    fp32_step = step_runs.meta_costs(rows["DASH minimax tf32, fp32 step products"], preset, 2)
    assert tensor_core_share(default["costs_without_roots"]) == 1.0
    assert tensor_core_share(default["costs_with_roots"]) >= 0.99  # fp32: power steps
    assert tensor_core_share(fp32_step["costs_without_roots"]) == 0.0
    assert tensor_core_share(fp32_step["costs_with_roots"]) >= 0.75


def test_upstream_on_the_meta_device_takes_the_common_branch_of_each_host_read() -> None:
    """Upstream's per-block checks read values on the host; on ``meta`` they pass and each
    eigendecomposition's ``lambda_min < epsilon`` reads False (``step_costs.MetaHostReads``),
    so a meta step differs from a real one only by the two eigenvalue shifts of the factors
    whose smallest eigenvalue is below epsilon there."""
    preset, row = PRESETS["smoke"], step_rows.rows()[0]
    on_meta = step_runs.meta_costs(row, preset, 2)

    params, generator = step_rows.make_parameters(preset, torch.device("cpu"))
    optimizer = step_rows.make_optimizer(params, row, preset, 2)
    for _ in range(2):
        step_rows.set_gradients(params, generator)
        optimizer.step()
    without_roots, with_roots, _ = step_runs.count_step_costs(
        optimizer, lambda: step_rows.set_gradients(params, generator), row, 2, 2
    )
    assert on_meta["costs_without_roots"] == without_roots
    for key in ("products", "flops", "syncs"):
        assert on_meta["costs_with_roots"][key] == with_roots[key], key
    num_factors = on_meta["num_factors"]
    assert isinstance(num_factors, int)
    assert 0 <= with_roots["ops"] - on_meta["costs_with_roots"]["ops"] <= 2 * num_factors
