"""Shared pieces of the batched solvers: input checks, result type, norms, powers, residuals.

Shapes: a *stack* is a ``(N, d, d)`` tensor of ``N`` symmetric positive semi-definite blocks; a
2-D ``(d, d)`` input is treated as a stack of one. Per-block quantities are ``(N,)`` tensors.
Nothing here reads a tensor value on the host.
"""

import math
from fractions import Fraction
from typing import NamedTuple

import torch
from torch import Tensor

from distributed_shampoo_dash.solvers.precision import MatmulPrecision, batched_matmul

#: Largest denominator accepted when a fractional root is written as ``numerator / denominator``.
MAX_ROOT_DENOMINATOR = 16


class InverseRootResult(NamedTuple):
    """Inverse roots of a stack and their per-block diagnostics.

    Attributes:
        inverse_root (Tensor): ``(N, d, d)`` approximation of ``(A + epsilon I)^{-1/p}`` per block,
            in the dtype of the input stack.
        residual (Tensor): ``(N,)`` float32 relative residual of each block; its definition is
            given by each solver (``||X^p B - I||_F / sqrt(d)`` for the iterative ones).
        is_finite (Tensor): ``(N,)`` bool, True where the root and its residual are finite.
    """

    inverse_root: Tensor
    residual: Tensor
    is_finite: Tensor


def as_stack(A: object, name: str = "A") -> Tensor:
    """Checks a solver input and returns it as a ``(N, d, d)`` stack.

    Raises:
        TypeError: If ``A`` is not a tensor or is not of a floating-point dtype.
        ValueError: If ``A`` is not 2-D or 3-D, not square, or empty.
    """
    if not isinstance(A, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(A).__name__}.")
    if not A.dtype.is_floating_point:
        raise TypeError(
            f"{name} must have a floating-point dtype (float16, bfloat16, float32 or float64), "
            f"got {A.dtype}."
        )
    if A.ndim not in (2, 3):
        raise ValueError(
            f"{name} must be a (d, d) matrix or an (N, d, d) stack, got shape {tuple(A.shape)}."
        )
    if A.shape[-1] != A.shape[-2]:
        raise ValueError(f"{name} must hold square matrices, got shape {tuple(A.shape)}.")
    if A.shape[-1] < 1 or (A.ndim == 3 and A.shape[0] < 1):
        raise ValueError(
            f"{name} must hold at least one matrix of dimension >= 1, got shape {tuple(A.shape)}."
        )
    return A if A.ndim == 3 else A.unsqueeze(0)


def check_positive_root(root: float) -> float:
    """Checks that ``root`` is a finite real number > 0 and returns it as a float."""
    if isinstance(root, bool) or not isinstance(root, (int, float, Fraction)):
        raise TypeError(f"root must be a real number, got {type(root).__name__}.")
    if not (math.isfinite(root) and root > 0):
        raise ValueError(f"Invalid root {root}. Must be a finite number > 0.")
    return float(root)


def check_integer_root(root: float, method: str) -> int:
    """Checks that ``root`` is a positive integer (as a number) and returns it as an ``int``."""
    root = check_positive_root(root)
    if not root.is_integer():
        raise ValueError(f"Invalid root {root} for {method}. Must be a positive integer.")
    return int(root)


def check_count(value: int, name: str, minimum: int = 1) -> int:
    """Checks an iteration count, degree or similar integer parameter."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {value!r} of type {type(value).__name__}.")
    if value < minimum:
        raise ValueError(f"Invalid {name}={value}. Must be >= {minimum}.")
    return value


def check_nonnegative(value: float, name: str) -> float:
    """Checks a finite, non-negative real parameter such as epsilon or a tolerance."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}.")
    if not (math.isfinite(value) and value >= 0.0):
        raise ValueError(f"Invalid {name}={value}. Must be a finite number >= 0.")
    return float(value)


def check_positive(value: float, name: str, reason: str = "") -> float:
    """Checks a finite real parameter > 0; ``reason`` is appended to the error message."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}.")
    if not (math.isfinite(value) and value > 0.0):
        raise ValueError(f"Invalid {name}={value}. Must be a finite number > 0{reason}.")
    return float(value)


def check_instance(value: object, expected: type, name: str) -> None:
    """Raises ``TypeError`` naming ``value`` and ``expected`` unless ``value`` is an ``expected``."""
    if not isinstance(value, expected):
        raise TypeError(f"{name} must be a {expected.__name__}, got {value!r} of type {type(value).__name__}.")


def rational_root(root: float) -> Fraction:
    """Writes ``root`` as ``n / q`` with ``q <= MAX_ROOT_DENOMINATOR`` (for residuals of fractional roots).

    Raises:
        ValueError: If ``root`` is not a finite number > 0, or no such fraction is within ``1e-9``
            relative of it.
    """
    root = check_positive_root(root)
    fraction = Fraction(root).limit_denominator(MAX_ROOT_DENOMINATOR)
    if abs(float(fraction) - root) > 1e-9 * root:
        raise ValueError(
            f"Invalid root {root}: it must be a fraction with denominator <= "
            f"{MAX_ROOT_DENOMINATOR} (e.g. 10/3 for an inverse exponent of 0.3)."
        )
    return fraction


def batched_eye(stack: Tensor) -> Tensor:
    """Returns an ``(N, d, d)`` identity stack (an expanded view) matching ``stack``."""
    n, d, _ = stack.shape
    return torch.eye(d, dtype=stack.dtype, device=stack.device).expand(n, d, d)


def add_to_diagonal(stack: Tensor, value: Tensor | float) -> Tensor:
    """Returns ``stack + value * I`` for a scalar or a per-block ``(N,)`` ``value``."""
    result = stack.clone()
    diagonal = result.diagonal(dim1=-2, dim2=-1)
    diagonal.add_(value.unsqueeze(-1) if isinstance(value, Tensor) else value)
    return result


def frobenius_norm(stack: Tensor) -> Tensor:
    """Per-block Frobenius norm ``||A_i||_F`` of an ``(N, d, d)`` stack, safe from over/underflow.

    Entries are divided by the block's largest magnitude before squaring, so blocks with entries
    near 1e30 or 1e-30 in float32 still give finite, non-zero norms. An all-zero block gives 0.
    """
    largest = stack.abs().amax(dim=(-2, -1))
    safe = torch.where(largest > 0, largest, torch.ones_like(largest))
    return torch.linalg.vector_norm(stack / safe[:, None, None], dim=(-2, -1)) * largest


def matrix_power(stack: Tensor, exponent: int, precision: MatmulPrecision) -> Tensor:
    """``X^n`` per block by repeated squaring (``floor(log2 n) + popcount(n) - 1`` products).

    Args:
        stack (Tensor): ``(N, d, d)`` stack.
        exponent (int): Power ``n >= 1``.
        precision (MatmulPrecision): Precision of each product.
    """
    result: Tensor | None = None
    base = stack
    while True:
        if exponent & 1:
            result = base if result is None else batched_matmul(result, base, precision)
        exponent >>= 1
        if exponent == 0:
            assert result is not None
            return result
        base = batched_matmul(base, base, precision)


def inverse_root_residual(
    B: Tensor, X: Tensor, root: float, precision: MatmulPrecision = MatmulPrecision.FP32
) -> Tensor:
    """Relative residual ``||X^n B^q - I||_F / sqrt(d)`` of ``X ~ B^{-1/p}``, ``p = n / q``.

    For ``X = B^{-1/p} (I + G)`` with ``G`` commuting with ``B`` this is ``~ p ||G||_F / sqrt(d)``,
    ``p`` times the RMS relative error of the eigenvalues of ``X``. Evaluate it on the *scaled*
    problem (spectrum of ``B`` in ``(0, 1]``) so that it is well defined for any scale of ``A``.

    Args:
        B (Tensor): ``(N, d, d)`` matrices whose inverse root was taken.
        X (Tensor): ``(N, d, d)`` computed inverse roots.
        root (float): ``p``; fractional roots must be ``n / q`` with a small ``q``.
        precision (MatmulPrecision): Precision of the products.

    Returns:
        residual (Tensor): ``(N,)`` float32.
    """
    fraction = rational_root(root)
    power = matrix_power(X, fraction.numerator, precision)
    if fraction.denominator > 1:
        B = matrix_power(B, fraction.denominator, precision)
    error = batched_matmul(power, B, precision) - batched_eye(B)
    return (frobenius_norm(error) / math.sqrt(B.shape[-1])).float()


def stable_power(values: Tensor, exponent: float) -> Tensor:
    """``values ** exponent`` elementwise, evaluated in float64 and rounded to ``values.dtype``.

    CPU kernels evaluate ``pow`` with vectorised and scalar code that round differently, and which
    one handles an element depends on its position in the tensor. Evaluated in float64, both are
    accurate far below float32 resolution, so the float32 powers of a block do not depend on the
    stack it is in (a DDP rank stacks other blocks than a single device does). Products and
    eigendecompositions of a stack may still round differently from those of a single block.
    """
    return values.double().pow(exponent).to(values.dtype)


def finite_blocks(*stacks: Tensor) -> Tensor:
    """``(N,)`` bool: True where every entry of the given per-block tensors is finite."""
    finite = torch.ones(stacks[0].shape[0], dtype=torch.bool, device=stacks[0].device)
    for stack in stacks:
        finite = finite & torch.isfinite(stack).reshape(stack.shape[0], -1).all(dim=-1)
    return finite


def scaled_result(
    stack: Tensor,
    scaled_matrix: Tensor,
    scaled_root: Tensor,
    scale: Tensor,
    root: float,
    precision: MatmulPrecision,
) -> InverseRootResult:
    """Result of an iterative solver that worked on ``B = A_e / s``.

    Args:
        stack (Tensor): The ``(N, d, d)`` input, for its dtype.
        scaled_matrix (Tensor): ``B`` whose inverse root ``X_s ~ B^{-1/p}`` was computed.
        scaled_root (Tensor): ``X_s``.
        scale (Tensor): ``(N,)`` scales ``s``.
        root (float): ``p``.
        precision (MatmulPrecision): Precision of the residual products.

    Returns:
        result (InverseRootResult): ``X = s^{-1/p} X_s`` in ``stack.dtype`` with the residual
        ``||X_s^p B - I||_F / sqrt(d)`` and the finiteness flags.
    """
    residual = inverse_root_residual(scaled_matrix, scaled_root, root, precision)
    inverse_root = (scaled_root * stable_power(scale, -1.0 / root)[:, None, None]).to(stack.dtype)
    return InverseRootResult(inverse_root, residual, finite_blocks(inverse_root, residual.unsqueeze(-1)))
