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
would. TF32X3 splits each fp32 operand as ``a = hi + lo``, ``hi`` ``a`` truncated to TF32
(:func:`tf32_high_part`), ``lo = a - hi``, and sums ``lo_a hi_b + hi_a lo_b + hi_a hi_b`` (the small
terms first, each added in the next product's epilogue), dropping ``lo_a lo_b`` (relative size below
``2^-20``): three tensor-core products with the error of one fp32 product. A product with an addend,
``c + a b`` (:func:`batched_addmm`), sums in the epilogue too, so the polynomial updates of the
iterations need no elementwise pass of their own. ``full`` is the precision of the products
that must be fp32-accurate (the early steps of the minimax iteration, refinement, the residual):
TF32X3 for the TF32 tiers, FP32 or FP64 otherwise.
"""

import enum
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from typing import NamedTuple

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


def tf32_high_part(a: Tensor) -> Tensor:
    """``hi``, ``a`` (float32) truncated to TF32's 10 mantissa bits: the raw bits with the low 13
    cleared, one elementwise pass. ``lo = a - hi`` is exact in float32 and ``|lo| < 2^-10 |a|``;
    a product of splits does not need ``hi`` rounded to nearest (its error is that of one fp32
    product either way, ``tests/test_tf32.py``).
    """
    return a.view(torch.int32).bitwise_and(~((1 << _TF32_DROPPED_BITS) - 1)).view(torch.float32)


def _scaled_sum(c: Tensor | None, product: Tensor, alpha: float, beta: float) -> Tensor:
    """``beta c + alpha product`` as elementwise ops, for a product computed on its own."""
    if c is None:
        return product if alpha == 1.0 else product.mul_(alpha)
    return torch.add(c if beta == 1.0 else beta * c, product, alpha=alpha)


def _product(c: Tensor | None, a: Tensor, b: Tensor, alpha: float, beta: float) -> Tensor:
    """``beta c + alpha a b`` as one product, the sum in its epilogue where the shapes allow."""
    if c is not None and c.ndim == a.ndim == b.ndim == 3:
        return torch.baddbmm(c, a, b, beta=beta, alpha=alpha)
    if c is not None and c.ndim == a.ndim == b.ndim == 2:
        return torch.addmm(c, a, b, beta=beta, alpha=alpha)
    return _scaled_sum(c, torch.matmul(a, b), alpha, beta)


def _accumulate_(out: Tensor, a: Tensor, b: Tensor, alpha: float) -> Tensor:
    """``out += alpha a b`` in place, in the product's epilogue where the shapes allow."""
    if out.ndim == a.ndim == b.ndim == 3:
        return out.baddbmm_(a, b, alpha=alpha)
    if out.ndim == a.ndim == b.ndim == 2:
        return out.addmm_(a, b, alpha=alpha)
    return out.add_(torch.matmul(a, b), alpha=alpha)


class SplitOperand(NamedTuple):
    """An fp32 operand with its TF32 split ``value = hi + lo`` (module docstring), formed once for
    several TF32X3 products (:func:`prepared`).

    Attributes:
        value (Tensor): The operand.
        hi (Tensor): ``value`` truncated to TF32 (:func:`tf32_high_part`).
        lo (Tensor): ``value - hi``, exact.
    """

    value: Tensor
    hi: Tensor
    lo: Tensor

    @property
    def mT(self) -> "SplitOperand":
        """The transposed operand, split (views: the split of a transpose is the transposed
        split)."""
        return SplitOperand(self.value.mT, self.hi.mT, self.lo.mT)


#: A product operand: a tensor, or one split in advance for several TF32X3 products.
Operand = Tensor | SplitOperand


def prepared(a: Tensor, precision: MatmulPrecision) -> Operand:
    """``a`` ready for several products at ``precision``: split once for ``TF32X3`` (two more
    stacks of its size live while the result is held), ``a`` itself otherwise."""
    if precision is not MatmulPrecision.TF32X3:
        return a
    hi = tf32_high_part(a)
    return SplitOperand(a, hi, a - hi)


def value_of(a: Operand) -> Tensor:
    """The tensor of an operand."""
    return a.value if isinstance(a, SplitOperand) else a


def _split_product(c: Tensor | None, a: Operand, b: Operand, alpha: float, beta: float) -> Tensor:
    """``beta c + alpha a b`` from three TF32 products of ``a = hi + lo``, ``b = hi + lo``
    (module docstring), the small terms first.

    A square ``a a`` splits its operand once, and a :class:`SplitOperand` is not split again;
    otherwise each ``lo`` is formed just before its product, so at most four stacks of the
    result's size are live (three for a square).
    """
    a_hi = a.hi if isinstance(a, SplitOperand) else tf32_high_part(a)
    if b is a:
        b_hi, a_lo = a_hi, (a.lo if isinstance(a, SplitOperand) else a - a_hi)
        product = _product(c, a_lo, b_hi, alpha, beta)
        _accumulate_(product, a_hi, a_lo, alpha)
    else:
        b_hi = b.hi if isinstance(b, SplitOperand) else tf32_high_part(b)
        a_lo = a.lo if isinstance(a, SplitOperand) else a - a_hi
        product = _product(c, a_lo, b_hi, alpha, beta)
        del a_lo
        _accumulate_(product, a_hi, b.lo if isinstance(b, SplitOperand) else b - b_hi, alpha)
    return _accumulate_(product, a_hi, b_hi, alpha)


def batched_addmm(
    c: Tensor | None,
    a: Operand,
    b: Operand,
    precision: MatmulPrecision,
    *,
    alpha: float = 1.0,
    beta: float = 1.0,
) -> Tensor:
    """Returns ``beta c + alpha a @ b``, the product computed at ``precision``, in the dtype of
    ``a``.

    At the fp32 and fp64 operand dtypes the scaling and the sum run in the product's epilogue
    (``baddbmm``/``addmm``: no elementwise pass of their own); a bf16 or fp16 product is rounded
    to its dtype first, then scaled and added in the working dtype.

    Args:
        c (Tensor | None): ``(..., m, n)`` addend in the working dtype (``None``: no addend).
        a (Operand): ``(..., m, k)`` operand in the working dtype (split in advance or not:
            :func:`prepared`).
        b (Operand): ``(..., k, n)`` operand in the working dtype.
        precision (MatmulPrecision): Precision of the product.
        alpha (float): Factor of the product. (Default: 1.0)
        beta (float): Factor of the addend. (Default: 1.0)

    Returns:
        result (Tensor): ``(..., m, n)`` in ``a.dtype``.
    """
    working_dtype, operand_dtype = value_of(a).dtype, precision.operand_dtype
    if operand_dtype not in (torch.float32, torch.float64):
        product = torch.matmul(value_of(a).to(operand_dtype), value_of(b).to(operand_dtype))
        return _scaled_sum(c, product.to(working_dtype), alpha, beta)
    c = None if c is None else c.to(operand_dtype)
    with fp32_matmul_precision("ieee" if precision is MatmulPrecision.FP32 else "tf32"):
        if precision is MatmulPrecision.TF32X3:
            result = _split_product(
                c, _cast(a, operand_dtype), _cast(b, operand_dtype), alpha, beta
            )
        else:
            a, b = value_of(a).to(operand_dtype), value_of(b).to(operand_dtype)
            result = _product(c, a, b, alpha, beta)
    return result.to(working_dtype)


def _cast(a: Operand, dtype: torch.dtype) -> Operand:
    """``a`` in ``dtype``: a split operand as it is if its value has the dtype (the split of a
    cast is a new one)."""
    if isinstance(a, SplitOperand) and a.value.dtype == dtype:
        return a
    return value_of(a).to(dtype)


def batched_matmul(a: Operand, b: Operand, precision: MatmulPrecision) -> Tensor:
    """Returns ``a @ b`` computed at ``precision``, in the dtype of ``a``
    (:func:`batched_addmm` without an addend).

    Args:
        a (Operand): ``(..., m, k)`` operand in the working dtype.
        b (Operand): ``(..., k, n)`` operand in the working dtype.
        precision (MatmulPrecision): Precision of the product.

    Returns:
        product (Tensor): ``(..., m, n)`` in ``a.dtype``.
    """
    return batched_addmm(None, a, b, precision)
