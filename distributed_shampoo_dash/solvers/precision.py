"""Matrix-product precision for the iterative solvers.

Every iterative solver keeps its iterates in a *working dtype* (float64 for ``FP64``, float32
otherwise) and runs its products at a chosen :class:`MatmulPrecision`:

=========  ====================  ========================================================
precision  operand dtype         notes
=========  ====================  ========================================================
FP64       float64               reference accuracy, slow on GPUs
FP32       float32               full fp32 products (TF32 explicitly disabled on CUDA)
TF32       float32               fp32 operands, TF32 tensor cores on CUDA (fp32 on CPU)
BF16       bfloat16              operands rounded to bf16, result rounded to bf16
FP16       float16               operands rounded to fp16, result rounded to fp16
=========  ====================  ========================================================

A low-precision product is ``torch.matmul`` of the rounded operands (cuBLAS accumulates in fp32;
the result comes back in the operand dtype) and is cast back to the working dtype, so elementwise
updates, norms and residuals stay in fp32. The TF32 switch of cuBLAS is process-global in PyTorch;
:func:`batched_matmul` sets it only around the product it launches and always restores it,
so no flag is left changed after a call.
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
        """Full precision of the working dtype: ``FP64`` for ``FP64``, ``FP32`` otherwise."""
        return MatmulPrecision.FP64 if self is MatmulPrecision.FP64 else MatmulPrecision.FP32


#: ``d x d`` matrix products a solver runs per block, by the precision they run at.
ProductCounts = Counter[MatmulPrecision]

_OPERAND_DTYPES: dict[MatmulPrecision, torch.dtype] = {
    MatmulPrecision.FP64: torch.float64,
    MatmulPrecision.FP32: torch.float32,
    MatmulPrecision.TF32: torch.float32,
    MatmulPrecision.BF16: torch.bfloat16,
    MatmulPrecision.FP16: torch.float16,
}


def as_matmul_precision(precision: "MatmulPrecision | str") -> MatmulPrecision:
    """Converts ``"fp32"``-style strings to :class:`MatmulPrecision` (:func:`~.checks.as_enum`)."""
    return as_enum(precision, MatmulPrecision, "matmul precision")


@contextmanager
def _cuda_fp32_matmul_mode(mode: str) -> Iterator[None]:
    """Sets cuBLAS fp32 matmul mode (``"tf32"`` or ``"ieee"``) and restores it on exit."""
    matmul_backend = torch.backends.cuda.matmul
    previous = matmul_backend.fp32_precision
    matmul_backend.fp32_precision = mode
    try:
        yield
    finally:
        matmul_backend.fp32_precision = previous


def batched_matmul(a: Tensor, b: Tensor, precision: MatmulPrecision) -> Tensor:
    """Returns ``a @ b`` computed at ``precision``, in the dtype of ``a``.

    Args:
        a (Tensor): ``(..., m, k)`` operand in the working dtype.
        b (Tensor): ``(..., k, n)`` operand in the working dtype.
        precision (MatmulPrecision): Precision of the product.

    Returns:
        product (Tensor): ``(..., m, n)`` in ``a.dtype``.
    """
    operand_dtype = precision.operand_dtype
    if a.is_cuda and operand_dtype == torch.float32:
        mode = "tf32" if precision is MatmulPrecision.TF32 else "ieee"
        with _cuda_fp32_matmul_mode(mode):
            return torch.matmul(a.to(operand_dtype), b.to(operand_dtype)).to(a.dtype)
    return torch.matmul(a.to(operand_dtype), b.to(operand_dtype)).to(a.dtype)
