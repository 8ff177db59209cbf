"""The step benchmark's rows as the GPU time model sees them: the ``anchor`` preset is the recorded
parameter set, and the DASH authors' ``DashGpu`` is traced on ``meta`` with its Triton kernel as
an aten product. Counts only: modelled times are never tested."""

import pytest
import torch

pytestmark = pytest.mark.upstream
pytest.importorskip("distributed_shampoo")

from distributed_shampoo import CoupledNewtonConfig

from distributed_shampoo_dash.benchmarks import peer_dashgpu, step_rows, step_runs
from distributed_shampoo_dash.benchmarks.presets import PRESETS
from distributed_shampoo_dash.benchmarks.recorded_h100 import RECORDED_H100
from distributed_shampoo_dash.gpu_time_model import GPUS


def test_the_anchor_preset_is_the_parameter_set_of_the_recorded_h100_steps() -> None:
    layer = [(1024,), (3072, 1024), (1024, 1024), (1024,), (2816, 1024), (2816, 1024), (1024, 2816)]
    preset = PRESETS["anchor"]
    assert preset.shapes == ((32000, 1024), *layer * 8, (1024,))
    assert preset.max_preconditioner_dim == 1024


def test_every_recorded_row_is_a_row_of_the_benchmark() -> None:
    labels = {row.label for row in step_rows.rows()} | {
        setting.label for setting in peer_dashgpu.RECORDED_SETTINGS
    }
    assert set(RECORDED_H100) <= labels


def test_upstream_coupled_newton_is_not_traced_on_meta() -> None:
    row = step_rows.Row("upstream CoupledNewtonConfig", False, CoupledNewtonConfig())
    assert step_runs.not_on_meta(row) is not None
    with pytest.raises(ValueError, match="iteration cap"):
        step_runs.meta_costs(row, PRESETS["smoke"], 1)


def test_dashgpu_coupled_newton_fp16_is_traced_on_meta_with_fp16_products() -> None:
    peer, reason = peer_dashgpu.load(triton_stand_ins=True)
    if peer is None:
        pytest.skip(reason)
    setting = next(s for s in peer_dashgpu.RECORDED_SETTINGS if s.matmul_dtype is torch.float16)
    row = step_rows.PeerRow(setting.label, setting)
    result = step_runs.meta_costs(row, PRESETS["smoke"], 2)
    without_roots, with_roots = result["costs_without_roots"], result["costs_with_roots"]
    assert isinstance(without_roots, dict) and isinstance(with_roots, dict)
    for gpu in GPUS:
        modelled = with_roots["modelled"][gpu.name]
        assert modelled["flops_by_precision"]["fp16"] > 0  # A A^T of every Newton step
        assert modelled["launches"] > without_roots["modelled"][gpu.name]["launches"]
    # Ten Newton steps, each with a tolerance test read on the host (answered "not converged").
    assert with_roots["syncs"] - without_roots["syncs"] >= 10
