"""Matrix-product precision for the iterative solvers.

Every iterative solver keeps its iterates in a *working dtype* (float64 for ``FP64``, float32
otherwise) and runs its products at a chosen :class:`MatmulPrecision`:

=========  ====================  ========================================================
precision  operand dtype         notes
=========  ====================  ========================================================
FP64       float64               reference accuracy, slow on most GPUs
FP32       float32               IEEE fp32 products (TF32 switched off)
TF32X3     float32               three TF32 products of a split, as accurate as fp32
TF32       float32               TF32 tensor-core products (10-bit mantissa operands)
BF16       bfloat16              operands rounded to bf16, result rounded to bf16
FP16       float16               operands rounded to fp16, result rounded to fp16
=========  ====================  ========================================================

A low-precision product is ``torch.matmul`` of the rounded operands (cuBLAS accumulates in fp32;
the result comes back in the operand dtype) and is cast back to the working dtype, so elementwise
updates, norms and residuals stay in fp32.

TF32 is requested through torch's own switch, ``torch.backends.cuda.matmul.fp32_precision``
(``"tf32"`` for TF32 and TF32X3, ``"ieee"`` for FP32), set around each product and restored after
it, on every device: CUDA's matmuls follow it, and on a CPU, which has no TF32, an emulating
dispatch mode (:mod:`distributed_shampoo_dash.solvers.tf32`) can read it and compute what a GPU
would. TF32X3 splits each fp32 operand as ``a = hi + lo``, ``hi = tf32(a)`` (round to nearest even
on 10 mantissa bits), ``lo = a - hi``, and sums ``lo_a hi_b + hi_a lo_b + hi_a hi_b`` (the small
terms first), dropping ``lo_a lo_b`` (relative size ``2^-22``): three tensor-core products with the
error of one fp32 product. ``full`` is the precision of the products that must be fp32-accurate (the
early steps of the minimax iteration, refinement, the residual): TF32X3 for the TF32 tiers, FP32 or
FP64 otherwise.
"""

import enum
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import Tensor

from distributed_shampoo_dash.solvers.checks import as_enum


@enum.unique
class MatmulPrecision(enum.Enum):
    """Precision of the matrix products inside an iterative solver."""

    FP64 = "fp64"
    FP32 = "fp32"
    TF32X3 = "3xtf32"
    TF32 = "tf32"
    BF16 = "bf16"
    FP16 = "fp16"

    @property
    def working_dtype(self) -> torch.dtype:
        """Dtype of the iterates: float64 for ``FP64``, float32 otherwise."""
        return torch.float64 if self is MatmulPrecision.FP64 else torch.float32

    @property
    def operand_dtype(self) -> torch.dtype:
        """Dtype the operands are rounded to before each product."""
        return _OPERAND_DTYPES[self]

    @property
    def full(self) -> "MatmulPrecision":
        """The fp32-accurate precision that goes with this one: ``FP64`` for ``FP64``, ``TF32X3``
        for ``TF32`` and ``TF32X3`` (tensor cores throughout), ``FP32`` otherwise."""
        return _FULL[self]

    @property
    def gemms(self) -> int:
        """Matrix multiplications one product launches: 3 for ``TF32X3``, 1 otherwise."""
        return 3 if self is MatmulPrecision.TF32X3 else 1

    @property
    def uses_tensor_cores(self) -> bool:
        """Whether the product runs on tensor cores on a GPU with them (TF32, bf16, fp16)."""
        return self not in (MatmulPrecision.FP64, MatmulPrecision.FP32)


#: ``d x d`` matrix products a solver runs per block, by the precision they run at.
ProductCounts = Counter[MatmulPrecision]

_OPERAND_DTYPES: dict[MatmulPrecision, torch.dtype] = {
    MatmulPrecision.FP64: torch.float64,
    MatmulPrecision.FP32: torch.float32,
    MatmulPrecision.TF32X3: torch.float32,
    MatmulPrecision.TF32: torch.float32,
    MatmulPrecision.BF16: torch.bfloat16,
    MatmulPrecision.FP16: torch.float16,
}


_FULL: dict[MatmulPrecision, MatmulPrecision] = {
    MatmulPrecision.FP64: MatmulPrecision.FP64,
    MatmulPrecision.FP32: MatmulPrecision.FP32,
    MatmulPrecision.TF32X3: MatmulPrecision.TF32X3,
    MatmulPrecision.TF32: MatmulPrecision.TF32X3,
    MatmulPrecision.BF16: MatmulPrecision.FP32,
    MatmulPrecision.FP16: MatmulPrecision.FP32,
}
#: Bits of an fp32 mantissa below TF32's 10.
_TF32_DROPPED_BITS = 13


def round_to_tf32(a: Tensor) -> Tensor:
    """``a`` (float32) rounded to TF32's 10 mantissa bits, to nearest, ties to even (as tensor
    cores round their operands), in float32.

    Adds half a unit of the last kept bit (less one, plus the kept bit's parity) to the raw bits
    and clears the dropped ones; a carry into the exponent is the correct rounding up.
    """
    bits = a.contiguous().view(torch.int32)
    parity = (bits >> _TF32_DROPPED_BITS) & 1
    half = (1 << (_TF32_DROPPED_BITS - 1)) - 1
    rounded = (bits + half + parity) & ~((1 << _TF32_DROPPED_BITS) - 1)
    return rounded.view(torch.float32)


def as_matmul_precision(precision: "MatmulPrecision | str") -> MatmulPrecision:
    """Converts ``"fp32"``-style strings to :class:`MatmulPrecision` (:func:`~.checks.as_enum`)."""
    return as_enum(precision, MatmulPrecision, "matmul precision")


@contextmanager
def fp32_matmul_precision(mode: str) -> Iterator[None]:
    """Sets ``torch.backends.cuda.matmul.fp32_precision`` (``"tf32"`` or ``"ieee"``) and restores
    it on exit."""
    matmul_backend = torch.backends.cuda.matmul
    previous = matmul_backend.fp32_precision
    matmul_backend.fp32_precision = mode
    try:
        yield
    finally:
        matmul_backend.fp32_precision = previous


def _split_product(a: Tensor, b: Tensor) -> Tensor:
    """``a @ b`` from three TF32 products of ``a = hi + lo``, ``b = hi + lo`` (module
    docstring)."""
    a_hi, b_hi = round_to_tf32(a), round_to_tf32(b)
    a_lo, b_lo = a - a_hi, b - b_hi
    product = torch.matmul(a_lo, b_hi)
    product += torch.matmul(a_hi, b_lo)
    product += torch.matmul(a_hi, b_hi)
    return product


def batched_matmul(a: Tensor, b: Tensor, precision: MatmulPrecision) -> Tensor:
    """Returns ``a @ b`` computed at ``precision``, in the dtype of ``a``.

    Args:
        a (Tensor): ``(..., m, k)`` operand in the working dtype.
        b (Tensor): ``(..., k, n)`` operand in the working dtype.
        precision (MatmulPrecision): Precision of the product.

    Returns:
        product (Tensor): ``(..., m, n)`` in ``a.dtype``.
    """
    working_dtype, operand_dtype = a.dtype, precision.operand_dtype
    if operand_dtype != torch.float32:
        return torch.matmul(a.to(operand_dtype), b.to(operand_dtype)).to(working_dtype)
    a, b = a.to(operand_dtype), b.to(operand_dtype)
    with fp32_matmul_precision("ieee" if precision is MatmulPrecision.FP32 else "tf32"):
        product = _split_product(a, b) if precision is MatmulPrecision.TF32X3 else a @ b
    return product.to(working_dtype)
