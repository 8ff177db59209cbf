"""DASH inverse-root configs for
``RootInvShampooPreconditionerConfig.amortized_computation_config``.

They subclass upstream's ``RootInvConfig`` (through the abstract :class:`DashRootInvConfig`) and
not any concrete upstream config, so upstream's ``match`` on config classes never mistakes them
for its own. They are keyword-only dataclasses whose fields carry the names of the solver
arguments they become (``precision``, ``rel_epsilon``, ``scaling``, ``iteration``, ``degree``);
options with several fields are the solvers' own frozen option objects
(:class:`~distributed_shampoo_dash.solvers.SpectralScaling`,
:class:`~distributed_shampoo_dash.solvers.IterationControl`), which validate themselves. Every
value is checked once, at construction, by the solvers' own checks, so an error names the field
as the user wrote it. A config is immutable after construction (``dataclasses.replace`` makes a
changed copy): it is stored in ``param_groups``, and so in checkpoints, which it pickles into as a
plain dataclass.

Acceptance of a computed root (per block): it must be finite in the dtype it is stored in and,
unless ``max_residual`` is ``None``, have ``residual <= max_residual`` (the RMS congruence
residual on the scaled problem, about ``p`` times the RMS relative error of the root, see
:mod:`distributed_shampoo_dash.solvers`) and, unless ``max_overshoot`` is ``None``, ``overshoot
<= max_overshoot`` (the estimated largest eigenvalue of ``X^p (A + r I)`` minus 1: an
over-inverted direction, which the averaged residual does not show).
A rejected block is recomputed by eigh (``fallback_to_eigh``) or keeps its previous inverse factor
and counts one failed amortized computation, exactly as an upstream solver exception does.
"""

import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from distributed_shampoo.preconditioner.matrix_functions_types import EigenConfig, RootInvConfig

from distributed_shampoo_dash.solvers import (
    DEFAULT_NEWTON_DB_ITERATION,
    MULTI_POWER_ITERATION_SCALING,
    IterationControl,
    MatmulPrecision,
    SpectralScaling,
    as_matmul_precision,
)
from distributed_shampoo_dash.solvers.chebyshev import check_chebyshev_rel_epsilon, check_degree
from distributed_shampoo_dash.solvers.checks import (
    check_bool,
    check_instance,
    check_real,
)
from distributed_shampoo_dash.solvers.minimax import (
    check_first_step_precision,
    check_minimax_rel_epsilon,
)
from distributed_shampoo_dash.solvers.problem import check_rel_epsilon

#: Attribute set once a config is constructed; afterwards assignments raise.
_CONSTRUCTED = "_constructed"


@dataclass(init=False, kw_only=True)
class DashRootInvConfig(RootInvConfig):
    """Fields shared by the DASH inverse-root configs (abstract).

    Attributes:
        precision (MatmulPrecision): Precision of the solver's products (strings such as
            ``"bf16"`` accepted). (Default: ``FP32``)
        rel_epsilon (float): Ridge relative to the spectral bound ``u >= lambda_max``, in
            ``[0, 1]``: the root is that of ``A + r I`` with ``r = max(rel_epsilon u, epsilon)``
            (upstream ``CoupledHigherOrderConfig`` semantics). (Default: 0.0)
        scaling (SpectralScaling): How ``u`` is found. (Default: multi-power iteration, 10 steps,
            16 vectors, safety factor 2)
        max_residual (float | None): Largest accepted residual; ``None`` accepts any finite root.
            (Default: 1.0)
        max_overshoot (float | None): Largest accepted overshoot; ``None`` does not check it.
            (Default: None)
        fallback_to_eigh (bool): Recompute rejected blocks by eigh (upstream ``EigenConfig``
            semantics) instead of keeping their previous inverse factor. (Default: True)
        solver (ClassVar[str]): The solver of :data:`~distributed_shampoo_dash.solvers.SOLVERS`
            the config runs; its fields carry that solver's option names.
    """

    solver: ClassVar[str]

    precision: MatmulPrecision = MatmulPrecision.FP32
    rel_epsilon: float = 0.0
    scaling: SpectralScaling = MULTI_POWER_ITERATION_SCALING
    max_residual: float | None = 1.0
    max_overshoot: float | None = None
    fallback_to_eigh: bool = True

    def __post_init__(self) -> None:
        for name, value in self._checked_fields().items():
            object.__setattr__(self, name, value)
        object.__setattr__(self, _CONSTRUCTED, True)

    def _checked_fields(self) -> dict[str, Any]:
        """Every field, checked and normalised (subclasses add theirs)."""
        check_instance(self.scaling, SpectralScaling, "scaling")
        return {
            "precision": as_matmul_precision(self.precision),
            "rel_epsilon": check_rel_epsilon(self.rel_epsilon),
            "scaling": self.scaling,
            "max_residual": (
                None if self.max_residual is None else check_real(self.max_residual, "max_residual")
            ),
            "max_overshoot": (
                None
                if self.max_overshoot is None
                else check_real(self.max_overshoot, "max_overshoot")
            ),
            "fallback_to_eigh": check_bool(self.fallback_to_eigh, "fallback_to_eigh"),
        }

    @property
    def rank_deficient_stability_config(self) -> Any:
        """Not a field: an ``EigendecompositionConfig``'s, which the eigendecomposed and
        eigenvalue-corrected Shampoo configs read at construction; raises ``AttributeError``
        saying why this config does not go there."""
        raise AttributeError(
            f"{type(self).__name__} has no rank_deficient_stability_config: it is a DASH "
            "root-inverse config for RootInvShampooPreconditionerConfig; the eigendecomposed and "
            "eigenvalue-corrected Shampoo configs need an EigendecompositionConfig such as "
            "upstream's EigenConfig or QREigendecompositionConfig."
        )

    def __setattr__(self, name: str, value: object) -> None:
        if getattr(self, _CONSTRUCTED, False):
            raise dataclasses.FrozenInstanceError(
                f"cannot assign to field {name!r}: {type(self).__name__} is immutable once "
                f"constructed; use dataclasses.replace(config, {name}=...)."
            )
        super().__setattr__(name, value)


#: Default relative ridge of :class:`MinimaxRootInvConfig` (docs/quality.md says why).
DEFAULT_REL_EPSILON = 1e-4


@dataclass(kw_only=True)
class MinimaxRootInvConfig(DashRootInvConfig):
    """Inverse roots by a coupled, inverse-free iteration with per-step minimax polynomials,
    batched: DASH's default matmul-only solver.

    Every block converges to the inverse root of ``A + r I``, ``r = max(rel_epsilon u, epsilon)``,
    in a fixed number of minimax-polynomial steps for the interval the relative ridge guarantees
    (root 4 at ``rel_epsilon = 1e-4``: 5 steps, 24 products), for roots 1, 2, 3, 4, 6 and 8; other
    roots (inverse-exponent overrides) are computed by batched eigh. A root whose residual exceeds
    ``max_residual`` (the iteration did not converge, or rounding) or that over-inverts a direction
    by more than ``max_overshoot`` (a spectral bound below ``lambda_max``) falls back to eigh.
    Reduced ``precision`` applies to the last steps only; with it, raise ``max_residual`` (bf16:
    about 5e-2). Below ``rel_epsilon`` of about 1e-5, fp32 rounding in the first step limits the
    accuracy, which ``first_step_precision="fp64"`` removes, and the residual's own rounding floor
    nears 1e-2: raise ``max_residual`` there too (about 5e-2).

    Attributes:
        rel_epsilon (float): As in :class:`DashRootInvConfig`, in ``[1e-8, 1]``. (Default: 1e-4)
        max_residual (float | None): As in :class:`DashRootInvConfig`. (Default: 1e-2)
        max_overshoot (float | None): As in :class:`DashRootInvConfig`; the default accepts no
            eigenvalue of ``X^p (A + r I)`` above 1.05. (Default: 5e-2)
        first_step_precision (MatmulPrecision): ``FP64`` runs the first step's products in float64
            (root 4: 4 of them), ``FP32`` at the working precision. (Default: ``FP32``)
    """

    solver: ClassVar[str] = "minimax"
    rel_epsilon: float = DEFAULT_REL_EPSILON
    max_residual: float | None = 1e-2
    max_overshoot: float | None = 5e-2
    first_step_precision: MatmulPrecision = MatmulPrecision.FP32

    def _checked_fields(self) -> dict[str, Any]:
        return {
            **super()._checked_fields(),
            "rel_epsilon": check_minimax_rel_epsilon(self.rel_epsilon),
            "first_step_precision": check_first_step_precision(self.first_step_precision),
        }


@dataclass(kw_only=True)
class NewtonDBRootInvConfig(DashRootInvConfig):
    """Inverse roots by the DASH paper's Newton-DB, batched: coupled Newton-Schulz steps
    ``(3I - ZY) / 2``, roots ``2^k`` as chained square roots
    (:mod:`distributed_shampoo_dash.solvers.newton_db`); other roots are computed by batched eigh.

    The defaults are the paper's setting: ten steps per square root, no relative ridge, and a
    lenient acceptance (``max_residual=1``, which accepts under-inverted roots; ``None`` accepts
    every finite root).

    Attributes:
        rel_epsilon (float): As in :class:`DashRootInvConfig`. (Default: 0.0)
        max_residual (float | None): As in :class:`DashRootInvConfig`. (Default: 1.0)
        iteration (IterationControl): Iterations per square root, tolerance, fp32 refinement
            iterations and early-exit checks. (Default: 10 iterations)
    """

    solver: ClassVar[str] = "newton_db"
    max_residual: float | None = 1.0
    iteration: IterationControl = DEFAULT_NEWTON_DB_ITERATION

    def _checked_fields(self) -> dict[str, Any]:
        check_instance(self.iteration, IterationControl, "iteration")
        return {**super()._checked_fields(), "iteration": self.iteration}


@dataclass(kw_only=True)
class ChebyshevRootInvConfig(DashRootInvConfig):
    """Inverse roots by a Chebyshev series of ``t^{-1/p}`` evaluated with Clenshaw.

    Roots ``p = n / q`` with ``q <= 16``; any other root (e.g. an inverse-exponent override of
    0.29) is computed by batched eigh. The result is the inverse root of ``A + r I`` with ``r =
    max(rel_epsilon u, epsilon)``; ``rel_epsilon`` must be > 0 here, and the degree needed grows
    like ``1 / sqrt(rel_epsilon)``.

    Accuracy is the interpolant's, not a converged iteration's: with the defaults, the relative
    error against the fp64 root is about 3.5e-2 at root 1, 1e-2 at root 2 and 4e-3 at root 4
    (64 x 64 stacks with log-spaced spectra, condition 10 to 1e6), and the default
    ``max_residual=1`` accepts all of them. For tighter roots raise ``degree`` and lower
    ``max_residual``, or use :class:`MinimaxRootInvConfig`.

    Attributes:
        rel_epsilon (float): In ``(0, 1]``. (Default: 1e-3)
        degree (int): Polynomial degree, ``1 .. 1000``; ``degree - 1`` products. (Default: 60)
    """

    solver: ClassVar[str] = "chebyshev"
    rel_epsilon: float = 1e-3
    degree: int = 60

    def _checked_fields(self) -> dict[str, Any]:
        return {
            **super()._checked_fields(),
            "rel_epsilon": check_chebyshev_rel_epsilon(self.rel_epsilon),
            "degree": check_degree(self.degree),
        }


def default_root_inv_config(device: str | torch.device) -> RootInvConfig:
    """The ``amortized_computation_config`` DASH recommends for a device.

    On an accelerator (``"cuda"``, any non-CPU ``torch.device``), :class:`MinimaxRootInvConfig`
    with ``precision=TF32``: matrix products only, every one on tensor cores (the late steps in
    TF32, the early steps and the residual in 3xTF32, as accurate as fp32), no eigendecomposition
    (whose GPU kernels are slow for many small blocks and read error codes on the host), every
    block converged to its regularised root (on the real factors of the tests, under TF32
    emulation, within 2.0e-4 of the fp64 root). On a CPU,
    upstream's ``EigenConfig`` (batched by the DASH form of the preconditioner config): LAPACK's
    eigh is exact and, measured in ``docs/benchmarks.md``, faster there than the minimax iteration's
    products.

    Args:
        device (str | torch.device): ``"cpu"``, ``"cuda"``, ``"cuda:1"``, or a ``torch.device``.

    Returns:
        config (RootInvConfig): A new config with default settings.

    Raises:
        ValueError: If ``device`` does not name a device.
    """
    try:
        device_type = torch.device(device).type
    except (RuntimeError, TypeError):
        raise ValueError(
            f"Invalid device={device!r}. Must be a torch.device or a device string such as "
            "'cpu' or 'cuda'."
        ) from None
    if device_type == "cpu":
        return EigenConfig()
    return MinimaxRootInvConfig(precision=MatmulPrecision.TF32)


def step_products_in_tf32(preconditioner_config: object) -> bool:
    """Whether a preconditioner config's Gram and preconditioning products run on TF32.

    Its ``tf32_step_products`` (a DASH form's setting; an upstream config has none: ``False``,
    torch's switch decides), or where that is ``None``, whether its
    ``amortized_computation_config`` runs its own products on tensor cores (a DASH config whose
    ``precision`` is TF32, 3xTF32, bf16 or fp16, as :func:`default_root_inv_config` on CUDA).
    """
    setting = getattr(preconditioner_config, "tf32_step_products", False)
    if setting is not None:
        return bool(setting)
    solver = getattr(preconditioner_config, "amortized_computation_config", None)
    return isinstance(solver, DashRootInvConfig) and solver.precision.uses_tensor_cores
