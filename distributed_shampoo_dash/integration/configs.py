"""DASH inverse-root configs for ``RootInvShampooPreconditionerConfig.amortized_computation_config``.

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
from dataclasses import dataclass
from typing import Any

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
from distributed_shampoo_dash.solvers.checks import check_bool, check_instance, check_real
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


@dataclass(kw_only=True)
class NewtonDBRootInvConfig(DashRootInvConfig):
    """Inverse roots by the coupled Newton-Schulz (Denman-Beavers) iteration, batched.

    Reaches roots ``2^k`` (the Shampoo defaults 2 for 1-D and 4 for 2-D blocks); other roots
    (e.g. 6 for 3-D blocks, or inverse-exponent overrides) are computed by batched eigh.
    The defaults are the DASH paper's: ten fp32 iterations per square root, multi-power-iteration
    scaling. Set ``iteration=IterationControl(num_iterations=30, tolerance=1e-5)`` to iterate each
    block to that residual instead.

    Attributes:
        iteration (IterationControl): Iterations per square root, tolerance, fp32 refinement
            iterations and early-exit checks. (Default: 10 iterations)
    """

    iteration: IterationControl = DEFAULT_NEWTON_DB_ITERATION

    def _checked_fields(self) -> dict[str, Any]:
        check_instance(self.iteration, IterationControl, "iteration")
        return super()._checked_fields()


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
