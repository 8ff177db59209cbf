r"""What a traced call would take on a GPU: a roofline model over the aten ops it dispatches.

The ops of any call (an optimizer step) are recorded on any device, ``meta`` included
(:func:`~distributed_shampoo_dash.step_costs.meta_scaffolding`), by :class:`OpCostTrace`, and
priced on a :class:`GpuSpec`::

    from distributed_shampoo_dash.gpu_time_model import H100_SXM, OpCostTrace

    with OpCostTrace() as trace:
        optimizer.step()
    trace.modelled(H100_SXM).seconds

Per op ``i`` the trace records (device independent, :class:`OpCost`): its FLOPs ``F_i``
(:func:`~distributed_shampoo_dash.step_costs.op_flops`: ``torch.utils.flop_counter``'s formulas
for products, convolutions and attention; 0 for every other op)
and the precision a GPU would run them at (:func:`product_precision`: the operand dtype, float32
products at TF32 while ``torch.backends.cuda.matmul.fp32_precision`` reads ``"tf32"``), the bytes
``B_i`` it reads and writes (:func:`op_bytes`), whether it launches a kernel (``L_i``, the
classification of :func:`~distributed_shampoo_dash.step_costs.launches_work`: views and shape
bookkeeping launch nothing and cost nothing), and for ``linalg.eigh`` the block size ``d`` and the
number of blocks ``n_i``. Host reads of tensor values (device synchronisations) are counted with
:class:`~distributed_shampoo_dash.step_costs.SyncCounter`'s classification, not priced. The
modelled time on a GPU with precision peaks ``P(p)``, bandwidth ``W`` and launch cost ``c`` is

.. math::

    T = \sum_i \Big( \max\big(F_i / P(p_i),\; B_i / W,\; n_i\, t_{eigh}(d_i)\big) + c\, L_i \Big)

each op running alone at its roofline, one after another, plus a fixed cost per launch (what a
kernel costs beyond its work: launch latency, ramp-up and tail). ``t_eigh(d)`` is a measured
per-block time (:meth:`GpuSpec.eigh_seconds`): FLOP formulas do not describe an eigensolver.

What it leaves out: host time (a step whose ops the host cannot issue as fast as the GPU runs them
is host-bound: upstream's per-block loops are, by about 17 us per dispatched op on an H100); overlap
of independent kernels; caches (bytes are HBM traffic); the cost of a synchronisation beyond the
wait; ``_foreach`` ops count one launch however many kernels they split into; and the
decompositions of :data:`UNMODELLED_OPS` (Cholesky, QR, SVD, solves), which are priced by their
bytes only and named in :attr:`ModelledTime.unmodelled_ops`. The devices (:data:`GPUS`) are
calibrated against step times measured on one H100 (``docs/benchmarks.md``, *GPU time model*).
Torch only: no upstream import.
"""

import functools
import math
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
from torch._ops import OpOverload

from distributed_shampoo_dash.solvers.precision import MatmulPrecision
from distributed_shampoo_dash.step_costs import (
    SyncCounter,
    flop_formula,
    launches_work,
    op_flops,
    reads_on_host,
    tensors_in,
)

aten = torch.ops.aten

#: Precisions a single GPU product runs at (a peak each in :class:`GpuSpec`).
PRODUCT_PRECISIONS = (
    MatmulPrecision.FP64,
    MatmulPrecision.FP32,
    MatmulPrecision.TF32,
    MatmulPrecision.BF16,
    MatmulPrecision.FP16,
)
_DTYPE_PRECISIONS: dict[torch.dtype, MatmulPrecision] = {
    torch.float64: MatmulPrecision.FP64,
    torch.float32: MatmulPrecision.FP32,
    torch.bfloat16: MatmulPrecision.BF16,
    torch.float16: MatmulPrecision.FP16,
}
#: Ops that write their first argument without reading it.
OVERWRITING_OPS = frozenset(
    {aten.copy_.default, aten.fill_.Scalar, aten.fill_.Tensor, aten.zero_.default}
)
#: Matrix decompositions with no FLOP formula and no measured time: priced by their bytes only.
UNMODELLED_OPS = frozenset(
    {
        aten.linalg_cholesky_ex,
        aten.linalg_qr,
        aten._linalg_svd,
        aten._linalg_solve_ex,
        aten.linalg_solve_triangular,
        aten.triangular_solve,
        aten.linalg_inv_ex,
        aten.linalg_lu_factor_ex,
        aten.linalg_eig,
        aten._linalg_eigvals,
    }
)
_UNMODELLED_NAMES = frozenset(str(packet) for packet in UNMODELLED_OPS)


@dataclass(frozen=True, kw_only=True)
class GpuSpec:
    """A GPU as the model sees it.

    Attributes:
        name (str): Device name.
        peak_tflops (Mapping[MatmulPrecision, float]): Product throughput in TFLOP/s at each of
            :data:`PRODUCT_PRECISIONS`.
        nominal_bandwidth_tbps (float): Memory bandwidth of the data sheet, TB/s.
        bandwidth_tbps (float): Bandwidth the model uses (what a streaming kernel achieves), TB/s.
        launch_us (float): Fixed cost per launched kernel, microseconds.
        eigh_ms_per_block (Mapping[int, float]): Measured ``linalg.eigh`` time per ``d x d`` fp32
            block, milliseconds, by ``d``.
        memory_bytes (int): Device memory, bytes (what sizes DASH's automatic chunks there).
        source (str): Where the figures come from.
    """

    name: str
    peak_tflops: Mapping[MatmulPrecision, float]
    nominal_bandwidth_tbps: float
    bandwidth_tbps: float
    launch_us: float
    eigh_ms_per_block: Mapping[int, float]
    memory_bytes: int
    source: str

    def __post_init__(self) -> None:
        missing = [p.value for p in PRODUCT_PRECISIONS if p not in self.peak_tflops]
        if missing:
            raise ValueError(f"{self.name}: peak_tflops has no peak for {missing}")
        if any(peak <= 0 for peak in self.peak_tflops.values()):
            raise ValueError(f"{self.name}: peak_tflops={dict(self.peak_tflops)} must be > 0")
        if not 0 < self.bandwidth_tbps <= self.nominal_bandwidth_tbps:
            raise ValueError(
                f"{self.name}: bandwidth_tbps={self.bandwidth_tbps} must be in "
                f"(0, nominal_bandwidth_tbps={self.nominal_bandwidth_tbps}]"
            )
        if self.memory_bytes <= 0:
            raise ValueError(f"{self.name}: memory_bytes={self.memory_bytes} must be > 0")
        if self.launch_us < 0:
            raise ValueError(f"{self.name}: launch_us={self.launch_us} must be >= 0")
        if not self.eigh_ms_per_block or any(
            d <= 0 or ms <= 0 for d, ms in self.eigh_ms_per_block.items()
        ):
            raise ValueError(
                f"{self.name}: eigh_ms_per_block={dict(self.eigh_ms_per_block)} needs at least "
                "one size, all sizes and times > 0"
            )

    @property
    def launch_s(self) -> float:
        """:attr:`launch_us` in seconds."""
        return self.launch_us * 1e-6

    def product_seconds(self, flops: int, precision: MatmulPrecision) -> float:
        """``flops / peak(precision)``; a 3xTF32 product of ``flops`` runs ``precision.gemms``
        (3) TF32 products of that size."""
        if precision is MatmulPrecision.TF32X3:
            return precision.gemms * self.product_seconds(flops, MatmulPrecision.TF32)
        return flops / (self.peak_tflops[precision] * 1e12)

    def memory_seconds(self, nbytes: int) -> float:
        """``nbytes / bandwidth``."""
        return nbytes / (self.bandwidth_tbps * 1e12)

    def eigh_seconds(self, d: int, blocks: int) -> float:
        """``blocks * t(d)``: ``t`` the measured per-block time of :attr:`eigh_ms_per_block`,
        interpolated log-log (a power law) between measured sizes and scaled by ``d^3`` from the
        nearest measured size outside them (unmeasured there: the work of a dense eigensolver
        grows as ``d^3``, its measured time grew slower, ``d^0.6`` to ``d^1.2``)."""
        sizes = sorted(self.eigh_ms_per_block)
        table = self.eigh_ms_per_block
        if d <= sizes[0] or d >= sizes[-1]:
            nearest = sizes[0] if d <= sizes[0] else sizes[-1]
            per_block_ms = table[nearest] * (d / nearest) ** 3
        else:
            upper = next(size for size in sizes if size >= d)
            lower = sizes[sizes.index(upper) - 1]
            exponent = math.log(table[upper] / table[lower]) / math.log(upper / lower)
            per_block_ms = table[lower] * (d / lower) ** exponent
        return blocks * per_block_ms * 1e-3


#: ``linalg.eigh`` per fp32 block on one H100, milliseconds: stacks of 256 x 256, 64 x 1024 and
#: 16 x 2048 blocks, one batched call each (``shared/measurements/2026-11-22-h100-baseline.json``,
#: rows ``solvers n=... b=...``; a loop over the blocks took the same time).
H100_EIGH_MS_PER_BLOCK = {256: 1222.2 / 256, 1024: 713.1 / 64, 2048: 413.4 / 16}

H100_SXM = GpuSpec(
    name="H100 SXM",
    peak_tflops={
        MatmulPrecision.FP64: 67.0,
        MatmulPrecision.FP32: 51.1,
        MatmulPrecision.TF32: 410.5,
        MatmulPrecision.BF16: 738.7,
        MatmulPrecision.FP16: 738.7,
    },
    nominal_bandwidth_tbps=3.35,
    bandwidth_tbps=2.8,
    launch_us=5.0,
    eigh_ms_per_block=H100_EIGH_MS_PER_BLOCK,
    memory_bytes=80 * 10**9,
    source=(
        "fp32, TF32 and bf16 peaks measured (batched 1024 x 1024 products, torch 2.11); fp16 taken "
        "as bf16's; fp64 the nominal tensor-core 67 TFLOP/s; HBM3 3.35 TB/s nominal, 2.8 TB/s "
        "achievable; launch cost calibrated on the recorded H100 step times; eigh measured; 80 GB"
    ),
)

H200 = GpuSpec(
    name="H200",
    peak_tflops=H100_SXM.peak_tflops,
    nominal_bandwidth_tbps=4.8,
    bandwidth_tbps=H100_SXM.bandwidth_tbps * 4.8 / H100_SXM.nominal_bandwidth_tbps,
    launch_us=H100_SXM.launch_us,
    eigh_ms_per_block=H100_EIGH_MS_PER_BLOCK,
    memory_bytes=141 * 10**9,
    source=(
        "the H100 SXM's compute (same GH100 chip and clocks), launch cost and eigh times; HBM3e "
        "4.8 TB/s nominal, achievable scaled from the H100's by the same ratio (2.8 x 4.8 / 3.35); "
        "141 GB; nothing measured on an H200"
    ),
)

#: The modelled devices, in the order tables show them.
GPUS = (H100_SXM, H200)


def fp32_products_use_tf32() -> bool:
    """Whether a float32 product runs on TF32 tensor cores now: torch's switch
    ``torch.backends.cuda.matmul.fp32_precision`` (``"none"`` defers to
    ``torch.backends.fp32_precision``; the legacy ``allow_tf32 = True`` reads as ``"tf32"``)."""
    mode = torch.backends.cuda.matmul.fp32_precision
    if mode == "none":
        mode = torch.backends.fp32_precision  # type: ignore[attr-defined]
    return mode == "tf32"


def product_precision(func: OpOverload, args: tuple[Any, ...]) -> MatmulPrecision | None:
    """Precision a GPU runs an op's FLOPs at: that of its first tensor operand's dtype, TF32 for
    float32 while :func:`fp32_products_use_tf32`; None for an op without a FLOP formula or with
    operands of another dtype."""
    if flop_formula(func) is None:
        return None
    operand = next(iter(tensors_in(args)), None)
    precision = None if operand is None else _DTYPE_PRECISIONS.get(operand.dtype)
    if precision is MatmulPrecision.FP32 and fp32_products_use_tf32():
        return MatmulPrecision.TF32
    return precision


def distinct_bytes(tensor: torch.Tensor) -> int:
    """Bytes of the distinct elements a tensor addresses: ``numel x itemsize`` without its
    broadcast (stride-0) dimensions, so an ``expand``-ed identity counts once."""
    if tensor.numel() == 0:
        return 0
    if tensor.layout is not torch.strided:
        return tensor.numel() * tensor.element_size()
    distinct = math.prod(
        size for size, stride in zip(tensor.shape, tensor.stride(), strict=True) if stride != 0
    )
    return distinct * tensor.element_size()


def op_bytes(
    func: OpOverload, args: tuple[Any, ...], kwargs: dict[str, Any], out: Any
) -> tuple[int, int]:
    """``(read, written)`` bytes of one op (:func:`distinct_bytes` of each tensor).

    Read: every tensor argument but the ``out=`` arguments and the destination of
    :data:`OVERWRITING_OPS`, which are only written (an in-place op's ``self`` is read and
    written). Written: the returned tensors, or, for an op that returns none (in-place
    ``_foreach`` ops), the arguments its schema marks as written.
    """
    names, only_written, written = _argument_roles(func)
    named = dict(zip(names, args, strict=False)) | kwargs
    read = sum(
        distinct_bytes(tensor)
        for name, value in named.items()
        if name not in only_written
        for tensor in tensors_in(value)
    )
    written_tensors = tensors_in(out)
    if not written_tensors:
        written_tensors = [tensor for name in written for tensor in tensors_in(named.get(name))]
    return read, sum(distinct_bytes(tensor) for tensor in written_tensors)


@functools.cache
def _argument_roles(func: OpOverload) -> tuple[tuple[str, ...], frozenset[str], tuple[str, ...]]:
    """An op's argument names, those it only writes (``out=``, :data:`OVERWRITING_OPS`' first)
    and those it writes (its schema's mutable arguments), from its schema."""
    arguments = func._schema.arguments
    only_written = {argument.name for argument in arguments if argument.is_out}
    if func in OVERWRITING_OPS:
        only_written.add(arguments[0].name)
    written = tuple(
        argument.name
        for argument in arguments
        if argument.alias_info is not None and argument.alias_info.is_write
    )
    return tuple(argument.name for argument in arguments), frozenset(only_written), written


@dataclass(frozen=True)
class OpCost:
    """What one dispatched op costs, whatever the device (see the module docstring).

    Attributes:
        op (str): The aten op.
        flops (int): Its FLOPs (``torch.utils.flop_counter``; 0 for most ops).
        precision (MatmulPrecision | None): What its FLOPs run at (:func:`product_precision`).
        bytes_read (int): Bytes read (:func:`op_bytes`).
        bytes_written (int): Bytes written.
        launches (int): 1 if it launches a kernel, else 0 (and then it costs nothing).
        eigh_blocks (tuple[int, int] | None): ``(d, n)`` for ``linalg.eigh`` of ``n`` blocks of
            ``d x d``.
    """

    op: str
    flops: int
    precision: MatmulPrecision | None
    bytes_read: int
    bytes_written: int
    launches: int
    eigh_blocks: tuple[int, int] | None = None

    def work_seconds(self, gpu: GpuSpec) -> float:
        """``max(F / P(p), B / W, n t_eigh(d))`` on ``gpu`` (0 for an op that launches nothing)."""
        if not self.launches:
            return 0.0
        bound = self.memory_seconds(gpu)
        if self.precision is not None:
            bound = max(bound, gpu.product_seconds(self.flops, self.precision))
        if self.eigh_blocks is not None:
            bound = max(bound, gpu.eigh_seconds(*self.eigh_blocks))
        return bound

    def memory_seconds(self, gpu: GpuSpec) -> float:
        """``B / W`` on ``gpu``."""
        return gpu.memory_seconds(self.bytes_read + self.bytes_written)

    def seconds(self, gpu: GpuSpec) -> float:
        """``max(F / P(p), B / W, n t_eigh(d)) + c L`` on ``gpu``."""
        return self.work_seconds(gpu) + gpu.launch_s * self.launches


def op_cost(func: OpOverload, args: tuple[Any, ...], kwargs: dict[str, Any], out: Any) -> OpCost:
    """The :class:`OpCost` of one op that returned ``out``."""
    if not launches_work(func):
        return OpCost(str(func), 0, None, 0, 0, 0)
    read, written = op_bytes(func, args, kwargs, out)
    eigh_blocks = None
    if func is aten._linalg_eigh.default:
        matrices = args[0]
        d = matrices.shape[-1]
        eigh_blocks = (d, matrices.numel() // (d * d) if d else 0)
    return OpCost(
        op=str(func),
        flops=op_flops(func, args, kwargs, out),
        precision=product_precision(func, args),
        bytes_read=read,
        bytes_written=written,
        launches=1,
        eigh_blocks=eigh_blocks,
    )


class ModelledTime(NamedTuple):
    """A trace priced on one GPU.

    Attributes:
        gpu (str): The device's name.
        seconds (float): Modelled time, ``T`` of the module docstring.
        product_s (float): Of it, ops bound by their FLOPs.
        memory_s (float): Ops bound by their bytes.
        eigh_s (float): ``linalg.eigh`` (its measured per-block time).
        launch_s (float): Launch cost, ``c`` times the launches.
        ops (int): Dispatched ops.
        launches (int): Of them, kernels.
        host_reads (int): Host reads of tensor values (not priced).
        flops_by_precision (dict[str, int]): FLOPs by precision.
        bytes (int): Bytes read and written.
        seconds_by_op (dict[str, float]): Modelled time by op, largest first.
        unmodelled_ops (tuple[str, ...]): Ops of :data:`UNMODELLED_OPS` in the trace.
    """

    gpu: str
    seconds: float
    product_s: float
    memory_s: float
    eigh_s: float
    launch_s: float
    ops: int
    launches: int
    host_reads: int
    flops_by_precision: dict[str, int]
    bytes: int
    seconds_by_op: dict[str, float]
    unmodelled_ops: tuple[str, ...]


def modelled_time(costs: Mapping[OpCost, int], gpu: GpuSpec, host_reads: int = 0) -> ModelledTime:
    """Prices ``costs`` (each op's cost and how often it ran) on ``gpu``."""
    product_s = memory_s = eigh_s = 0.0
    flops: Counter[str] = Counter()
    by_op: dict[str, float] = {}
    for cost, count in costs.items():
        if not cost.launches:
            continue
        work = cost.work_seconds(gpu)
        if work == cost.memory_seconds(gpu):
            memory_s += count * work
        elif cost.eigh_blocks is not None:
            eigh_s += count * work
        else:
            product_s += count * work
        if cost.precision is not None:
            flops[cost.precision.value] += count * cost.flops
        by_op[cost.op] = by_op.get(cost.op, 0.0) + count * cost.seconds(gpu)
    launches = sum(count * cost.launches for cost, count in costs.items())
    launch_s = launches * gpu.launch_s
    unmodelled = sorted(
        {cost.op for cost in costs if cost.op.rsplit(".", 1)[0] in _UNMODELLED_NAMES}
    )
    return ModelledTime(
        gpu=gpu.name,
        seconds=product_s + memory_s + eigh_s + launch_s,
        product_s=product_s,
        memory_s=memory_s,
        eigh_s=eigh_s,
        launch_s=launch_s,
        ops=sum(costs.values()),
        launches=launches,
        host_reads=host_reads,
        flops_by_precision=dict(flops),
        bytes=sum(count * (c.bytes_read + c.bytes_written) for c, count in costs.items()),
        seconds_by_op=dict(sorted(by_op.items(), key=lambda item: -item[1])),
        unmodelled_ops=tuple(unmodelled),
    )


class OpCostTrace(SyncCounter):
    """Records the :class:`OpCost` of every op dispatched while active, and its host reads
    (:class:`~distributed_shampoo_dash.step_costs.SyncCounter`, whose counts it keeps).

    Attributes:
        costs (Counter[OpCost]): Each distinct op cost and how often it occurred.
    """

    def __init__(self) -> None:
        super().__init__()
        self.costs: Counter[OpCost] = Counter()

    def __torch_dispatch__(
        self,
        func: OpOverload,
        types: Sequence[type],
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
    ) -> Any:
        kwargs = kwargs or {}
        if reads_on_host(func, args, kwargs):
            self._record(str(func))
        out = func(*args, **kwargs)
        self.costs[op_cost(func, args, kwargs, out)] += 1
        return out

    def modelled(self, gpu: GpuSpec) -> ModelledTime:
        """The trace priced on ``gpu``."""
        return modelled_time(self.costs, gpu, host_reads=self.count)
