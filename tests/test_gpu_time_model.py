"""The GPU time model of ``distributed_shampoo_dash.gpu_time_model``: what it records per op and
how it prices it, on known calls (``meta`` tensors: shapes only, nothing computed)."""

from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import torch

from distributed_shampoo_dash import gpu_time_model
from distributed_shampoo_dash.gpu_time_model import GpuSpec, OpCost, OpCostTrace
from distributed_shampoo_dash.solvers import MatmulPrecision

#: Round numbers: 1e12 FLOP/s per unit of peak, 1e12 bytes/s per unit of bandwidth.
GPU = GpuSpec(
    name="test GPU",
    peak_tflops={
        MatmulPrecision.FP64: 10.0,
        MatmulPrecision.FP32: 50.0,
        MatmulPrecision.TF32: 400.0,
        MatmulPrecision.BF16: 800.0,
        MatmulPrecision.FP16: 800.0,
    },
    nominal_bandwidth_tbps=4.0,
    bandwidth_tbps=2.0,
    launch_us=5.0,
    eigh_ms_per_block={256: 4.0, 1024: 16.0, 2048: 64.0},
    memory_bytes=2**30,
    source="test",
)


@contextmanager
def fp32_matmul_precision(mode: str) -> Iterator[None]:
    backend = torch.backends.cuda.matmul
    previous = backend.fp32_precision
    backend.fp32_precision = mode
    try:
        yield
    finally:
        backend.fp32_precision = previous


def meta(*shape: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return torch.empty(shape, device="meta", dtype=dtype)


def launched(trace: OpCostTrace) -> list[OpCost]:
    """The costs of the ops that launched a kernel, one entry per op."""
    return [cost for cost, count in trace.costs.items() if cost.launches for _ in range(count)]


@pytest.mark.parametrize(
    ("dtype", "mode", "precision"),
    [
        (torch.float32, "ieee", MatmulPrecision.FP32),
        (torch.float32, "tf32", MatmulPrecision.TF32),
        (torch.bfloat16, "ieee", MatmulPrecision.BF16),
        (torch.float16, "tf32", MatmulPrecision.FP16),
        (torch.float64, "tf32", MatmulPrecision.FP64),
    ],
)
def test_a_product_costs_the_larger_of_its_flops_at_its_precision_and_its_bytes_plus_a_launch(
    dtype: torch.dtype, mode: str, precision: MatmulPrecision
) -> None:
    n, d = 8, 512
    a, b = meta(n, d, d, dtype=dtype), meta(n, d, d, dtype=dtype)
    with fp32_matmul_precision(mode), OpCostTrace() as trace:
        torch.bmm(a, b)
    [cost] = launched(trace)
    itemsize = a.element_size()
    assert cost.precision is precision
    assert cost.flops == 2 * n * d**3
    assert (cost.bytes_read, cost.bytes_written) == (2 * n * d * d * itemsize, n * d * d * itemsize)
    flop_s = cost.flops / (GPU.peak_tflops[precision] * 1e12)
    byte_s = (cost.bytes_read + cost.bytes_written) / 2e12
    assert cost.seconds(GPU) == pytest.approx(max(flop_s, byte_s) + 5e-6)


def test_fp32_products_follow_the_switch_of_the_moment_including_the_legacy_flag() -> None:
    a = meta(64, 64)
    with OpCostTrace() as trace:
        with fp32_matmul_precision("tf32"):
            a @ a
        with fp32_matmul_precision("ieee"):
            a @ a
    assert sorted(cost.precision.value for cost in launched(trace)) == ["fp32", "tf32"]  # type: ignore[union-attr]


def test_views_and_shape_bookkeeping_launch_nothing_and_cost_nothing() -> None:
    stack = meta(4, 32, 32)
    with OpCostTrace() as trace:
        views = [stack.mT, stack.view(4, 1024), stack[1], stack.expand(2, 4, 32, 32)]
        torch.empty(10, device="meta")
    assert len(views) == 4 and trace.costs and not launched(trace)
    modelled = trace.modelled(GPU)
    assert modelled.seconds == 0.0 and modelled.launches == 0 and modelled.bytes == 0


def test_each_tensor_is_read_and_written_once_and_a_broadcast_counts_distinct_elements() -> None:
    x, y = meta(1000), meta(1000)
    identity = torch.eye(32, device="meta").expand(8, 32, 32)
    with OpCostTrace() as trace:
        x.add_(y)  # reads x and y, writes x
        x.copy_(y)  # reads y only
        torch.mul(identity, 2.0)  # reads the 32 x 32 identity once, writes 8 of them
        torch._foreach_mul_([x, y], 2.0)  # returns nothing: writes its arguments
    add, copy, mul, foreach = launched(trace)
    assert (add.bytes_read, add.bytes_written) == (8000, 4000)
    assert (copy.bytes_read, copy.bytes_written) == (4000, 4000)
    assert (mul.bytes_read, mul.bytes_written) == (32 * 32 * 4, 8 * 32 * 32 * 4)
    assert (foreach.bytes_read, foreach.bytes_written) == (8000, 8000)


def test_an_out_argument_is_only_written_and_an_out_dtype_product_runs_at_its_operands() -> None:
    a, out = meta(4, 64, 64, dtype=torch.float16), meta(4, 64, 64)
    with OpCostTrace() as trace:
        torch.bmm(a, a, out_dtype=torch.float32, out=out)
    [cost] = launched(trace)
    assert cost.op == "aten.bmm.dtype_out" and cost.precision is MatmulPrecision.FP16
    assert cost.flops == 2 * 4 * 64**3
    assert (cost.bytes_read, cost.bytes_written) == (2 * 4 * 64 * 64 * 2, 4 * 64 * 64 * 4)


@pytest.mark.parametrize(
    ("d", "per_block_ms"),
    [
        (1024, 16.0),  # measured
        (512, 8.0),  # between 256 (4 ms) and 1024 (16 ms): the power law through them, d^1
        (4096, 64.0 * 8),  # above the largest: d^3 from 2048
        (128, 4.0 / 8),  # below the smallest: d^3 from 256
    ],
)
def test_eigh_is_priced_by_the_measured_per_block_time(d: int, per_block_ms: float) -> None:
    with OpCostTrace() as trace:
        torch.linalg.eigh(meta(3, d, d))
    [cost] = launched(trace)
    assert cost.eigh_blocks == (d, 3) and cost.flops == 0
    assert cost.seconds(GPU) == pytest.approx(3 * per_block_ms * 1e-3 + 5e-6)
    assert trace.count == 1  # CUDA reads eigh's error codes on the host
    modelled = trace.modelled(GPU)
    assert modelled.eigh_s == pytest.approx(3 * per_block_ms * 1e-3)
    assert modelled.host_reads == 1


def test_modelled_time_is_the_sum_of_its_parts_over_every_op() -> None:
    a = meta(16, 256, 256)
    with OpCostTrace() as trace:
        for _ in range(3):
            product = a @ a  # compute-bound in fp32
        (product + 1).sum()  # memory-bound
        torch.linalg.eigh(a)
        torch.linalg.qr(a)  # no time of its own: named as unmodelled
    modelled = trace.modelled(GPU)
    assert modelled.launches == len(launched(trace)) == 7
    assert modelled.launch_s == pytest.approx(7 * 5e-6)
    assert modelled.product_s == pytest.approx(3 * 2 * 16 * 256**3 / 50e12)
    assert modelled.seconds == pytest.approx(
        modelled.product_s + modelled.memory_s + modelled.eigh_s + modelled.launch_s
    )
    assert modelled.seconds == pytest.approx(sum(c.seconds(GPU) for c in launched(trace)))
    assert modelled.seconds == pytest.approx(sum(modelled.seconds_by_op.values()))
    assert modelled.flops_by_precision == {"fp32": 3 * 2 * 16 * 256**3}
    assert modelled.unmodelled_ops == ("aten.linalg_qr.default",)


def test_the_h200_is_the_h100_with_more_bandwidth() -> None:
    h100, h200 = gpu_time_model.H100_SXM, gpu_time_model.H200
    assert h200.peak_tflops == h100.peak_tflops and h200.launch_us == h100.launch_us
    assert h200.bandwidth_tbps / h200.nominal_bandwidth_tbps == pytest.approx(
        h100.bandwidth_tbps / h100.nominal_bandwidth_tbps
    )
    assert gpu_time_model.GPUS == (h100, h200)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"peak_tflops": {MatmulPrecision.FP32: 1.0}}, "no peak for"),
        ({"bandwidth_tbps": 5.0}, "bandwidth_tbps=5.0"),
        ({"launch_us": -1.0}, "launch_us=-1.0"),
        ({"eigh_ms_per_block": {}}, "eigh_ms_per_block"),
        ({"memory_bytes": 0}, "memory_bytes=0"),
    ],
)
def test_gpu_spec_names_the_bad_field(change: dict[str, object], message: str) -> None:
    fields = {field: getattr(GPU, field) for field in GPU.__dataclass_fields__} | change
    with pytest.raises(ValueError, match=message):
        GpuSpec(**fields)  # type: ignore[arg-type]


def test_a_3xtf32_product_takes_three_tf32_products() -> None:
    tf32 = GPU.product_seconds(10**12, MatmulPrecision.TF32)
    assert tf32 == pytest.approx(1 / 400)
    assert GPU.product_seconds(10**12, MatmulPrecision.TF32X3) == pytest.approx(3 * tf32)
