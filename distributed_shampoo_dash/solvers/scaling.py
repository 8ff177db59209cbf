"""Spectral scaling: a per-block upper bound ``s >= lambda_max(A)`` for an SPD stack.

The iterative inverse-root methods converge only when the spectrum of ``A / s`` lies in their
convergence region, and they converge faster the closer ``lambda_max(A) / s`` is to 1:

* ``FROBENIUS``: ``s = ||A||_F``. Always an upper bound, but on a flat spectrum of dimension
  ``d`` it is ``sqrt(d) lambda_max``, so every eigenvalue of ``A / s`` shrinks by ``sqrt(d)``.
* ``POWER_ITERATION``: ``s = min(c * rho, ||A||_F)`` where ``rho`` is the Rayleigh quotient of a
  random vector after ``k`` power steps (``rho <= lambda_max``) and ``c`` a safety factor.
* ``MULTI_POWER_ITERATION``: the same with ``m`` random start vectors per block advanced
  together by one ``(N, d, d) @ (N, d, m)`` product per step, keeping the largest Rayleigh
  quotient; with ``m = 16`` the estimate is close to ``lambda_max`` even after 10 steps.

Taking the minimum with ``||A||_F`` keeps the bound no looser than Frobenius scaling (it matters
for nearly rank-one blocks). Start vectors come from a private generator with a fixed seed, so
the global random state is untouched and results are reproducible; every block starts from the
same vectors, so a block's bound does not depend on its position in the stack. A zero block gets the
smallest normal number of its dtype as its bound, so ``A / s`` is 0 rather than ``0 / 0``.
"""

import enum
import math
from dataclasses import dataclass
from typing import assert_never

import torch
from torch import Tensor

from distributed_shampoo_dash.solvers.checks import MAX_ITERATIONS, as_enum, check_int, check_real
from distributed_shampoo_dash.solvers.linalg import unit_divisor

_START_VECTOR_SEED = 0x5EED


@enum.unique
class ScalingMethod(enum.Enum):
    """How the per-block spectral bound is obtained."""

    FROBENIUS = "frobenius"
    POWER_ITERATION = "power_iteration"
    MULTI_POWER_ITERATION = "multi_power_iteration"


def as_scaling_method(method: "ScalingMethod | str") -> ScalingMethod:
    """Converts ``"frobenius"``-style strings to :class:`ScalingMethod`
    (:func:`~.checks.as_enum`).
    """
    return as_enum(method, ScalingMethod, "scaling method")


def normalization_interval(d: int, dtype: torch.dtype) -> int:
    """Power steps between two normalisations of the vectors, for blocks of size ``d``.

    On a block whose entries are at most 1 in magnitude, ``||A||_2 <= ||A||_F <= d``, so each
    step grows a vector's norm by at most ``d``; ``k`` steps from a unit vector stay below
    ``d^k``, and the squares a norm sums stay finite while ``d^{2k}`` is below the dtype's
    largest value (float32: 6 steps for ``d = 1024``). The top eigenvalue of such a symmetric
    block is at least its largest entry, so a start vector with a component along its top
    eigenvector does not shrink.
    """
    exponent_budget = math.log2(torch.finfo(dtype).max) / 2 - 2
    return max(1, int(exponent_budget // math.log2(max(d, 2))))


def _unit_columns(V: Tensor) -> Tensor:
    """``V`` with each column divided by its norm (a zero column stays 0)."""
    return V / torch.linalg.vector_norm(V, dim=-2, keepdim=True).clamp_min(
        torch.finfo(V.dtype).tiny
    )


def normalized_rayleigh_lambda_max(
    A: Tensor, num_iterations: int, num_vectors: int, *, seed: int = _START_VECTOR_SEED
) -> Tensor:
    """:func:`rayleigh_lambda_max` of a stack whose entries are at most 1 in magnitude.

    The vectors are normalised every :func:`normalization_interval` steps and before the
    Rayleigh quotient, not after every step: one ``(N, d, d) @ (N, d, m)`` product per step and
    a normalisation (three small ops) every few steps.
    """
    n, d, _ = A.shape
    generator = torch.Generator(device=A.device).manual_seed(seed)
    V = torch.randn((d, num_vectors), generator=generator, device=A.device, dtype=A.dtype).expand(
        n, d, num_vectors
    )
    interval = normalization_interval(d, A.dtype)
    for step in range(num_iterations):
        if step % interval == 0:
            V = _unit_columns(V)
        V = A @ V
    V = _unit_columns(V)
    rayleigh = (V * (A @ V)).sum(dim=-2)
    return rayleigh.amax(dim=-1)


def rayleigh_lambda_max(
    A: Tensor,
    num_iterations: int,
    num_vectors: int,
    *,
    seed: int = _START_VECTOR_SEED,
) -> Tensor:
    """Largest Rayleigh quotient of ``num_vectors`` random vectors after ``num_iterations`` steps.

    Args:
        A (Tensor): ``(N, d, d)`` symmetric stack.
        num_iterations (int): Power steps ``k >= 1``, each one ``(N, d, d) @ (N, d, m)`` product.
        num_vectors (int): Start vectors ``m >= 1`` per block.
        seed (int): Seed of the start vectors' private generator. (Default: the scaling's)

    Returns:
        lambda_estimate (Tensor): ``(N,)`` lower estimate of ``lambda_max`` per block, >= 0 for
            PSD input. For an indefinite ``A`` the vectors converge to the eigenvalue of largest
            magnitude, and the estimate is that eigenvalue where it is the largest Rayleigh
            quotient.

    The iteration runs on ``A / max_ij |A_ij|`` (entries in ``[-1, 1]``,
    :func:`normalized_rayleigh_lambda_max`) and scales the estimate back, so that no squared
    entry over- or underflows whatever the scale of ``A``.
    """
    divisor = unit_divisor(A)
    estimate = normalized_rayleigh_lambda_max(
        A / divisor[:, None, None], num_iterations, num_vectors, seed=seed
    )
    return estimate * divisor


@dataclass(frozen=True, kw_only=True)
class SpectralScaling:
    """How to bound ``lambda_max`` of each block before an iterative inverse root.

    Attributes:
        method (ScalingMethod): Which bound to use. (Default: ``MULTI_POWER_ITERATION``)
        num_iterations (int): Power steps ``1 <= k <= 1000`` for the power-iteration methods.
            (Default: 10)
        num_vectors (int): Start vectors ``1 <= m <= 1000`` per block for
            ``MULTI_POWER_ITERATION``; ``POWER_ITERATION`` uses one. (Default: 16)
        safety_factor (float): ``c >= 1`` multiplying the power-iteration estimate. (Default: 2.0)
    """

    method: ScalingMethod = ScalingMethod.MULTI_POWER_ITERATION
    num_iterations: int = 10
    num_vectors: int = 16
    safety_factor: float = 2.0

    def __post_init__(self) -> None:
        checked = {
            "method": as_scaling_method(self.method),
            "num_iterations": check_int(
                self.num_iterations, "num_iterations", minimum=1, maximum=MAX_ITERATIONS
            ),
            "num_vectors": check_int(
                self.num_vectors, "num_vectors", minimum=1, maximum=MAX_ITERATIONS
            ),
            "safety_factor": check_real(self.safety_factor, "safety_factor", minimum=1.0),
        }
        for name, value in checked.items():
            object.__setattr__(self, name, value)

    def upper_bound(self, A: Tensor) -> Tensor:
        """Per-block scale ``s`` with ``lambda_max(A_i) <= s_i`` (exact for Frobenius, w.h.p.
        otherwise).

        Args:
            A (Tensor): ``(N, d, d)`` symmetric PSD stack in its working dtype.

        Returns:
            scale (Tensor): ``(N,)`` positive bounds in ``A.dtype``.

        The bound is taken of ``A / max_ij |A_ij|`` (:meth:`normalized_upper_bound`, one copy of
        the stack, safe from over- and underflow) and scaled back.
        """
        divisor = unit_divisor(A)
        normalized = self.normalized_upper_bound(A / divisor[:, None, None])
        return (normalized * divisor).clamp_min(torch.finfo(A.dtype).tiny)

    def normalized_upper_bound(self, A: Tensor) -> Tensor:
        """:meth:`upper_bound` of a stack whose entries are at most 1 in magnitude, in its units
        and not clamped (0 for a zero block).

        Args:
            A (Tensor): ``(N, d, d)`` symmetric PSD stack, ``max_ij |A_ij| <= 1`` per block.

        Returns:
            scale (Tensor): ``(N,)`` bounds in ``A.dtype``.
        """
        frobenius = torch.linalg.vector_norm(A, dim=(-2, -1))
        match self.method:
            case ScalingMethod.FROBENIUS:
                return frobenius
            case ScalingMethod.POWER_ITERATION | ScalingMethod.MULTI_POWER_ITERATION:
                vectors = 1 if self.method is ScalingMethod.POWER_ITERATION else self.num_vectors
                estimate = normalized_rayleigh_lambda_max(A, self.num_iterations, vectors)
                return torch.minimum(self.safety_factor * estimate, frobenius)
            case _:
                assert_never(self.method)


#: Upstream's scaling for coupled Newton (``||A||_F``).
FROBENIUS_SCALING = SpectralScaling(method=ScalingMethod.FROBENIUS)
#: The DASH paper's scaling: 10 power steps on 16 vectors, safety factor 2.
MULTI_POWER_ITERATION_SCALING = SpectralScaling()
