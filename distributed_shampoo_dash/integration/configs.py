"""DASH inverse-root configs for ``RootInvShampooPreconditionerConfig.amortized_computation_config``.

Both subclass upstream's ``RootInvConfig`` (through the abstract :class:`DashRootInvConfig`) and
not any concrete upstream config, so upstream's ``match`` on config classes never mistakes them
for its own. They are keyword-only dataclasses, validated in ``__post_init__``, and pickle as
plain dataclasses (they are stored in ``param_groups`` and so in checkpoints).

Acceptance of a computed root (per block): it must be finite and, unless ``max_residual`` is
``None``, have ``residual <= max_residual`` (``residual = ||X_s^p B - I||_F / sqrt(d)`` on the
scaled problem, see :mod:`distributed_shampoo_dash.solvers`). A rejected block is recomputed by
eigh (``fallback_to_eigh``) or keeps its previous inverse factor and counts one failed amortized
computation, exactly as an upstream solver exception does. With the default ``max_residual=1``
an *under-inverted* block (every eigenvalue of ``X^p A`` in ``(0, 1]``, as after the paper's ten
Newton-DB iterations on an ill-conditioned factor) is accepted, while an over-inverted or
diverged one is not.
"""

from dataclasses import dataclass

from distributed_shampoo.preconditioner.matrix_functions_types import RootInvConfig

from distributed_shampoo_dash.solvers import (
    IterationControl,
    MatmulPrecision,
    ScalingMethod,
    SpectralScaling,
    as_matmul_precision,
)
from distributed_shampoo_dash.solvers.common import check_nonnegative


@dataclass(init=False, kw_only=True)
class DashRootInvConfig(RootInvConfig):
    """Fields shared by the DASH inverse-root configs (abstract).

    Attributes:
        precision (MatmulPrecision): Precision of the solver's products. (Default: ``FP32``)
        scaling_method (ScalingMethod): How ``s >= lambda_max`` is found.
            (Default: ``MULTI_POWER_ITERATION``)
        power_iterations (int): Power steps of the power-iteration scalings. (Default: 10)
        power_iteration_vectors (int): Start vectors per block of the multi-power iteration. (Default: 16)
        safety_factor (float): Multiplies the power-iteration estimate of ``lambda_max``. (Default: 2.0)
        max_residual (float | None): Largest accepted residual; ``None`` accepts any finite root.
            (Default: 1.0)
        fallback_to_eigh (bool): Recompute rejected blocks by eigh (upstream ``EigenConfig``
            semantics) instead of keeping their previous inverse factor. (Default: True)
    """

    precision: MatmulPrecision = MatmulPrecision.FP32
    scaling_method: ScalingMethod = ScalingMethod.MULTI_POWER_ITERATION
    power_iterations: int = 10
    power_iteration_vectors: int = 16
    safety_factor: float = 2.0
    max_residual: float | None = 1.0
    fallback_to_eigh: bool = True

    def __post_init__(self) -> None:
        self.precision = as_matmul_precision(self.precision)
        self.scaling_method = self.scaling.method
        if self.max_residual is not None:
            check_nonnegative(self.max_residual, "max_residual")
        if not isinstance(self.fallback_to_eigh, bool):
            raise TypeError(
                f"fallback_to_eigh must be a bool, got {type(self.fallback_to_eigh).__name__}."
            )

    @property
    def scaling(self) -> SpectralScaling:
        """The :class:`SpectralScaling` these fields describe (validates them)."""
        return SpectralScaling(
            method=self.scaling_method,
            num_iterations=self.power_iterations,
            num_vectors=self.power_iteration_vectors,
            safety_factor=self.safety_factor,
        )


@dataclass(kw_only=True)
class NewtonDBRootInvConfig(DashRootInvConfig):
    """Inverse roots by the coupled Newton-Schulz (Denman-Beavers) iteration, batched.

    Reaches roots ``2^k`` (the Shampoo defaults 2 for 1-D and 4 for 2-D blocks); other roots
    (e.g. 6 for 3-D blocks, or inverse-exponent overrides) are computed by batched eigh.
    The defaults are the DASH paper's: ten fp32 iterations per square root, multi-power-iteration
    scaling. Set ``tolerance > 0`` (and raise ``num_iterations``) to iterate each block to that
    residual instead.

    Attributes:
        num_iterations (int): Iterations per square root (maximum when ``tolerance > 0``). (Default: 10)
        tolerance (float): Per-block stop at ``||Z Y - I||_F / sqrt(d) <= tolerance``; 0 runs all
            iterations (a block still stops at its best iterate). (Default: 0.0)
        refinement_iterations (int): fp32 iterations after reduced-precision ones. (Default: 0)
        early_exit_check_interval (int | None): Check every this many iterations whether any
            block is still active and stop if none is (one host sync per check). (Default: None)
    """

    num_iterations: int = 10
    tolerance: float = 0.0
    refinement_iterations: int = 0
    early_exit_check_interval: int | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        _ = self.control  # IterationControl validates the iteration fields.

    @property
    def control(self) -> IterationControl:
        """The :class:`IterationControl` these fields describe."""
        return IterationControl(
            num_iterations=self.num_iterations,
            tolerance=self.tolerance,
            precision=self.precision,
            refinement_iterations=self.refinement_iterations,
            early_exit_check_interval=self.early_exit_check_interval,
        )


@dataclass(kw_only=True)
class ChebyshevRootInvConfig(DashRootInvConfig):
    """Inverse roots by a Chebyshev series of ``(t + delta)^{-1/p}`` evaluated with Clenshaw.

    Any root ``p``. The result is the inverse root of ``A + epsilon I + delta s I`` with
    ``s >= lambda_max``: ``relative_epsilon`` (``delta``) is a regularisation relative to the
    largest eigenvalue, and the degree needed grows like ``1 / sqrt(delta)``.

    Attributes:
        degree (int): Polynomial degree; ``degree - 1`` products. (Default: 60)
        relative_epsilon (float): ``delta > 0``. (Default: 1e-3)
    """

    degree: int = 60
    relative_epsilon: float = 1e-3

    def __post_init__(self) -> None:
        super().__post_init__()
        if isinstance(self.degree, bool) or not isinstance(self.degree, int) or self.degree < 1:
            raise ValueError(f"Invalid degree={self.degree}. Must be an int >= 1.")
        check_nonnegative(self.relative_epsilon, "relative_epsilon")
        if self.relative_epsilon == 0.0:
            raise ValueError("Invalid relative_epsilon=0.0. Must be > 0.")
