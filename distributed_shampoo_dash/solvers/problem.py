"""The scaled problem every iterative solver works on, set up once for all of them.

For a stack ``A`` of symmetric PSD blocks, an absolute ``epsilon`` and a relative ``rel_epsilon``
(upstream's ``CoupledHigherOrderConfig`` semantics), per block::

    u = scaling bound of A + epsilon I           (u >= lambda_max(A) + epsilon)
    r = max(rel_epsilon * u, epsilon)            (the ridge, "regularization")
    s = u + (r - epsilon)                        (s >= lambda_max(A + r I))
    B = (A + r I) / s                            spectrum in [r / s, 1]

With ``rel_epsilon = 0`` this is ``B = (A + epsilon I) / u``, the scaling of upstream's coupled
Newton. With ``rel_epsilon > 0`` the smallest eigenvalue of ``B`` is at least
``rel_epsilon / (1 + rel_epsilon)`` whatever ``A`` is, which bounds the condition number the
iteration has to resolve. A solver computes ``X_s ~ B^{-1/p}`` and :meth:`ScaledProblem.result`
returns ``X = s^{-1/p} X_s ~ (A + r I)^{-1/p}`` with its residual against ``B``.
"""

from dataclasses import dataclass

import torch
from torch import Tensor

from distributed_shampoo_dash.solvers.checks import as_stack, check_instance, check_real
from distributed_shampoo_dash.solvers.linalg import (
    add_to_diagonal_,
    finite_blocks,
    largest_magnitude,
    stable_power,
)
from distributed_shampoo_dash.solvers.precision import MatmulPrecision
from distributed_shampoo_dash.solvers.result import (
    InverseRootResult,
    RootResidual,
    inverse_root_residual,
)
from distributed_shampoo_dash.solvers.scaling import SpectralScaling


def check_rel_epsilon(rel_epsilon: object) -> float:
    """Checks a relative ridge: a real number in ``[0, 1]``."""
    return check_real(rel_epsilon, "rel_epsilon", maximum=1.0)


def check_common_arguments(
    A: object, epsilon: object, scaling: object, precision: object
) -> tuple[Tensor, float]:
    """Checks the arguments every iterative solver takes; returns ``A`` as an ``(N, d, d)`` stack
    and ``epsilon`` as a float.

    Raises:
        TypeError: If ``A`` is not a floating-point tensor, ``scaling`` not a
            :class:`SpectralScaling` or ``precision`` not a :class:`MatmulPrecision`.
        ValueError: If ``A`` is not a (stack of) square matrices or ``epsilon`` is negative or not
            finite.
    """
    stack = as_stack(A)
    checked_epsilon = check_real(epsilon, "epsilon")
    check_instance(scaling, SpectralScaling, "scaling")
    check_instance(precision, MatmulPrecision, "precision")
    return stack, checked_epsilon


@dataclass(frozen=True)
class ScaledProblem:
    """``B = (A + r I) / s`` per block, in the working dtype.

    Attributes:
        dtype (torch.dtype): Dtype of the input stack, and of the returned roots.
        scaled (Tensor): ``(N, d, d)`` ``B``.
        scale (Tensor): ``(N,)`` ``s``.
        regularization (Tensor): ``(N,)`` ``r``, in the working dtype.
    """

    dtype: torch.dtype
    scaled: Tensor
    scale: Tensor
    regularization: Tensor

    @classmethod
    def build(
        cls,
        stack: Tensor,
        *,
        epsilon: float,
        rel_epsilon: float,
        scaling: SpectralScaling,
        precision: MatmulPrecision,
    ) -> "ScaledProblem":
        """Sets up a solver's scaled problem from checked arguments (the solvers' public functions
        check theirs with :func:`check_common_arguments` and their own checks; a config checks its
        fields when it is constructed).

        Args:
            stack (Tensor): ``(N, d, d)`` symmetric PSD stack.
            epsilon (float): Absolute ridge ``>= 0``.
            rel_epsilon (float): Ridge relative to the spectral bound, ``0 <= rel_epsilon <= 1``.
            scaling (SpectralScaling): How the bound ``u`` is found.
            precision (MatmulPrecision): The solver's precision; fixes the working dtype.
        """
        working = stack.to(precision.working_dtype)
        tiny = torch.finfo(working.dtype).tiny
        # The bound of (A + epsilon I) / L, L >= every |(A + epsilon I)_ij| (entries at most 1,
        # safe from over- and underflow); then B from A in one division, as if A + r I were
        # formed first (the same rounding of every off-diagonal entry).
        divisor = (largest_magnitude(working) + epsilon).clamp_min(tiny)
        normalized = add_to_diagonal_(working / divisor[:, None, None], epsilon / divisor)
        bound = (scaling.normalized_upper_bound(normalized) * divisor).clamp_min(tiny)
        del normalized
        extra = (rel_epsilon * bound - epsilon).clamp_min(0.0)
        scale = bound + extra
        return cls(
            dtype=stack.dtype,
            scaled=add_to_diagonal_(working / scale[:, None, None], (epsilon + extra) / scale),
            scale=scale,
            regularization=extra + epsilon,
        )

    def residual(
        self, scaled_root: Tensor, root: float, precision: MatmulPrecision
    ) -> RootResidual:
        """Residual and overshoot of ``X_s ~ B^{-1/p}``
        (:func:`~distributed_shampoo_dash.solvers.result.inverse_root_residual`)."""
        return inverse_root_residual(self.scaled, scaled_root, root, precision)

    def result(
        self, scaled_root: Tensor, root: float, residual: RootResidual, factor: float = 1.0
    ) -> InverseRootResult:
        """``X = c s^{-1/p} X_s`` in the input dtype, with the residual and overshoot of ``X_s``
        and the flags.

        Args:
            scaled_root (Tensor): ``(N, d, d)`` ``X_s / c ~ B^{-1/p} / c``.
            root (float): ``p``.
            residual (RootResidual): ``(N,)`` float32 residual and overshoot of ``X_s`` on the
                scaled problem.
            factor (float): ``c``, folded into the scaling (a solver that returns a multiple of
                its root saves an elementwise pass). (Default: 1.0)
        """
        scale_factor = (stable_power(self.scale, -1.0 / root) * factor)[:, None, None]
        inverse_root = (scaled_root * scale_factor).to(self.dtype)
        return InverseRootResult(
            inverse_root,
            residual.residual,
            finite_blocks(inverse_root, residual.residual.unsqueeze(-1)),
            residual.overshoot,
            self.regularization,
        )
