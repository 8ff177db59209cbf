"""DASH inverse-root configs for
``RootInvShampooPreconditionerConfig.amortized_computation_config``.

Both subclass upstream's ``RootInvConfig`` (through the abstract :class:`DashRootInvConfig`) and
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
unless ``max_residual`` is ``None``, have ``residual <= max_residual`` (``residual =
||X_s^p B - I||_F / sqrt(d)`` on the scaled problem, see :mod:`distributed_shampoo_dash.solvers`).
A rejected block is recomputed by eigh (``fallback_to_eigh``) or keeps its previous inverse factor
and counts one failed amortized computation, exactly as an upstream solver exception does.
"""

import dataclasses
import enum
from dataclasses import dataclass
from typing import Any, Self

from distributed_shampoo.preconditioner.matrix_functions_types import RootInvConfig

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
    as_enum,
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
        fallback_to_eigh (bool): Recompute rejected blocks by eigh (upstream ``EigenConfig``
            semantics) instead of keeping their previous inverse factor. (Default: True)
    """

    precision: MatmulPrecision = MatmulPrecision.FP32
    rel_epsilon: float = 0.0
    scaling: SpectralScaling = MULTI_POWER_ITERATION_SCALING
    max_residual: float | None = 1.0
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
            "fallback_to_eigh": check_bool(self.fallback_to_eigh, "fallback_to_eigh"),
        }

    def __setattr__(self, name: str, value: object) -> None:
        if getattr(self, _CONSTRUCTED, False):
            raise dataclasses.FrozenInstanceError(
                f"cannot assign to field {name!r}: {type(self).__name__} is immutable once "
                f"constructed; use dataclasses.replace(config, {name}=...)."
            )
        super().__setattr__(name, value)


@enum.unique
class NewtonDBSteps(enum.Enum):
    """The polynomial steps of the coupled inverse-root iteration.

    ``MINIMAX``: per-step minimax polynomials for the interval the relative ridge guarantees
    (:mod:`distributed_shampoo_dash.solvers.minimax`), one stage for any root; converges every
    block. ``NEWTON_SCHULZ``: the DASH paper's Newton-DB, ``(3I - ZY) / 2`` every step, roots
    ``2^k`` as chained square roots (:mod:`distributed_shampoo_dash.solvers.newton_db`).
    """

    MINIMAX = "minimax"
    NEWTON_SCHULZ = "newton_schulz"


#: Default relative ridge of :class:`NewtonDBRootInvConfig` (docs/quality.md says why).
DEFAULT_REL_EPSILON = 1e-4


@dataclass(kw_only=True)
class NewtonDBRootInvConfig(DashRootInvConfig):
    """Inverse roots by a coupled, inverse-free Newton iteration, batched.

    By default (``steps=MINIMAX``) every block converges to the inverse root of ``A + r I``,
    ``r = max(rel_epsilon u, epsilon)``, in a fixed number of minimax-polynomial steps (root 4 at
    ``rel_epsilon = 1e-4``: 5 steps, 24 products), for roots 1, 2, 3, 4, 6 and 8; other roots
    (inverse-exponent overrides) are computed by batched eigh. A root whose residual exceeds
    ``max_residual`` (the iteration did not converge: a spectral bound below ``lambda_max``, or
    rounding) falls back to eigh. Reduced ``precision`` applies to the last steps only; with it,
    raise ``max_residual`` (bf16: about 5e-2). Below ``rel_epsilon`` of about 1e-5, fp32 rounding
    in the first step limits the accuracy, which ``first_step_precision="fp64"`` removes, and the
    residual's own rounding floor nears 1e-2: raise ``max_residual`` there too (about 5e-2).

    ``steps=NEWTON_SCHULZ`` runs the DASH paper's Newton-DB instead, ``iteration`` setting its
    steps per square root (roots ``2^k``); :meth:`paper` gives the paper's whole setting.

    Attributes:
        steps (NewtonDBSteps): ``MINIMAX`` or ``NEWTON_SCHULZ`` (strings accepted).
            (Default: ``MINIMAX``)
        rel_epsilon (float): As in :class:`DashRootInvConfig`; ``MINIMAX`` needs it in
            ``[1e-8, 1]``. (Default: 1e-4)
        max_residual (float | None): As in :class:`DashRootInvConfig`. (Default: 1e-2)
        first_step_precision (MatmulPrecision): ``MINIMAX`` only: ``FP64`` runs the first step's
            products in float64 (root 4: 4 of them), ``FP32`` at the working precision.
            (Default: ``FP32``)
        iteration (IterationControl): ``NEWTON_SCHULZ`` only: iterations per square root,
            tolerance, fp32 refinement iterations and early-exit checks. (Default: 10 iterations)
    """

    steps: NewtonDBSteps = NewtonDBSteps.MINIMAX
    rel_epsilon: float = DEFAULT_REL_EPSILON
    max_residual: float | None = 1e-2
    first_step_precision: MatmulPrecision = MatmulPrecision.FP32
    iteration: IterationControl = DEFAULT_NEWTON_DB_ITERATION

    @classmethod
    def paper(cls, **changes: Any) -> Self:
        """The DASH paper's Newton-DB: ten Newton-Schulz steps per square root, no relative ridge,
        and a lenient acceptance (``max_residual=1``, which accepts under-inverted roots).
        ``changes`` override any field, e.g. ``max_residual=None`` to accept every finite root."""
        settings: dict[str, Any] = {
            "steps": NewtonDBSteps.NEWTON_SCHULZ,
            "rel_epsilon": 0.0,
            "max_residual": 1.0,
        }
        return cls(**(settings | changes))

    def _checked_fields(self) -> dict[str, Any]:
        check_instance(self.iteration, IterationControl, "iteration")
        fields = {
            **super()._checked_fields(),
            "steps": as_enum(self.steps, NewtonDBSteps, "steps"),
            "first_step_precision": check_first_step_precision(self.first_step_precision),
        }
        if fields["steps"] is NewtonDBSteps.MINIMAX:
            fields["rel_epsilon"] = check_minimax_rel_epsilon(self.rel_epsilon)
        return fields


@dataclass(kw_only=True)
class ChebyshevRootInvConfig(DashRootInvConfig):
    """Inverse roots by a Chebyshev series of ``t^{-1/p}`` evaluated with Clenshaw.

    Any root ``p``. The result is the inverse root of ``A + r I`` with ``r = max(rel_epsilon u,
    epsilon)``; ``rel_epsilon`` must be > 0 here, and the degree needed grows like
    ``1 / sqrt(rel_epsilon)``.

    Attributes:
        rel_epsilon (float): In ``(0, 1]``. (Default: 1e-3)
        degree (int): Polynomial degree, ``1 .. 1000``; ``degree - 1`` products. (Default: 60)
    """

    rel_epsilon: float = 1e-3
    degree: int = 60

    def _checked_fields(self) -> dict[str, Any]:
        return {
            **super()._checked_fields(),
            "rel_epsilon": check_chebyshev_rel_epsilon(self.rel_epsilon),
            "degree": check_degree(self.degree),
        }
