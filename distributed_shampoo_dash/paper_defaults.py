"""The DASH paper's optimizer settings, defined once, as ``DistributedShampoo`` arguments.

DASH (arXiv 2602.02016) trains Llama-953M on C4 with Distributed Shampoo set as below. The
package's trainers (``distributed_shampoo_dash.trainers``), the example training programs and the
benchmark scripts all start from :data:`PAPER_SETTINGS`; a run that needs another value replaces
it (``dataclasses.replace(PAPER_SETTINGS, max_preconditioner_dim=128)``)::

    from distributed_shampoo_dash.paper_defaults import PAPER_SETTINGS

    optimizer = DistributedShampoo(
        params, lr=1e-3, preconditioner_config=..., **PAPER_SETTINGS.shampoo_kwargs()
    )

Where each value comes from:

* ``betas=(0.9, 0.95)``: the paper's gradient EMA (``beta1``, momentum) 0.9 and factor-matrix EMA
  (``beta2``) 0.95;
* ``epsilon=1e-10``: the paper's Shampoo epsilon for eigh and Chebyshev (its Newton runs use 0,
  which upstream's configs do not accept; the DASH configs add a relative ridge instead);
* ``grafting_beta2=0.95``, ``grafting_epsilon=1e-8``: the paper's Adam grafting;
* ``max_preconditioner_dim=1024``: the paper's block size;
* ``precondition_frequency=10``: inverse roots every 10 steps, the frequency the docs' targets for
  amortised roots are stated at (``docs/benchmarks.md``; the DASH authors' ``DashGpu`` is compared
  there too) and the trainers' default;
* ``weight_decay=0.0``: none (upstream's default); a learning rate is not a setting of the paper
  here, every caller passes its own.

The numbers need only the standard library; :meth:`PaperSettings.shampoo_kwargs` imports upstream
``distributed_shampoo`` for the grafting config.
"""

import math
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, kw_only=True)
class PaperSettings:
    """``DistributedShampoo`` settings (see the module docstring for where each comes from).

    Attributes:
        betas (tuple[float, float]): Gradient EMA and factor-matrix EMA, each in ``[0, 1)`` (the
            factor EMA may be 1: upstream's running sum).
        epsilon (float): Shampoo epsilon (> 0).
        grafting_beta2 (float): Adam grafting's second-moment EMA, in ``(0, 1]``.
        grafting_epsilon (float): Adam grafting's epsilon (> 0).
        max_preconditioner_dim (int): Largest block dimension (>= 1).
        precondition_frequency (int): Inverse roots every this many steps (>= 1).
        weight_decay (float): Weight decay (>= 0).
    """

    betas: tuple[float, float] = (0.9, 0.95)
    epsilon: float = 1e-10
    grafting_beta2: float = 0.95
    grafting_epsilon: float = 1e-8
    max_preconditioner_dim: int = 1024
    precondition_frequency: int = 10
    weight_decay: float = 0.0

    def __post_init__(self) -> None:
        beta1, beta2 = self.betas
        if not 0.0 <= beta1 < 1.0:
            raise ValueError(f"Invalid betas[0]={beta1}; expected 0 <= betas[0] < 1.")
        if not 0.0 < beta2 <= 1.0:
            raise ValueError(f"Invalid betas[1]={beta2}; expected 0 < betas[1] <= 1.")
        if not (math.isfinite(self.epsilon) and self.epsilon > 0.0):
            raise ValueError(f"Invalid epsilon={self.epsilon}; expected a finite epsilon > 0.")
        if not 0.0 < self.grafting_beta2 <= 1.0:
            raise ValueError(
                f"Invalid grafting_beta2={self.grafting_beta2}; expected 0 < grafting_beta2 <= 1."
            )
        if not self.grafting_epsilon > 0.0:
            raise ValueError(
                f"Invalid grafting_epsilon={self.grafting_epsilon}; expected grafting_epsilon > 0."
            )
        if self.max_preconditioner_dim < 1:
            raise ValueError(
                f"Invalid max_preconditioner_dim={self.max_preconditioner_dim}; expected >= 1."
            )
        if self.precondition_frequency < 1:
            raise ValueError(
                f"Invalid precondition_frequency={self.precondition_frequency}; expected >= 1."
            )
        if not self.weight_decay >= 0.0:
            raise ValueError(f"Invalid weight_decay={self.weight_decay}; expected >= 0.")

    def shampoo_kwargs(self) -> dict[str, Any]:
        """``DistributedShampoo`` keyword arguments: ``betas``, ``epsilon``, ``weight_decay``,
        ``max_preconditioner_dim``, ``precondition_frequency`` and ``grafting_config`` (upstream's
        ``AdamPreconditionerConfig``); the caller adds ``lr``, the preconditioner config and
        anything else."""
        from distributed_shampoo import AdamPreconditionerConfig

        return {
            "betas": self.betas,
            "epsilon": self.epsilon,
            "weight_decay": self.weight_decay,
            "max_preconditioner_dim": self.max_preconditioner_dim,
            "precondition_frequency": self.precondition_frequency,
            "grafting_config": AdamPreconditionerConfig(
                beta2=self.grafting_beta2, epsilon=self.grafting_epsilon
            ),
        }


#: The paper's settings (Llama-953M on C4).
PAPER_SETTINGS = PaperSettings()
