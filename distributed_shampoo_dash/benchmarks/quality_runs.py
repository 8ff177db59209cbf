"""The runs of the training-quality study (``scripts/quality_study.py``, ``docs/quality.md``): its
presets and one :class:`RunSpec` per optimizer (AdamW, upstream and DASH Shampoo per solver).

Needs upstream ``distributed_shampoo``.
"""

import contextlib
import enum
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from typing import Any

from distributed_shampoo import CoupledNewtonConfig, EigenConfig

import distributed_shampoo_dash as dash
from distributed_shampoo_dash.examples import training as example
from distributed_shampoo_dash.paper_defaults import PAPER_SETTINGS
from distributed_shampoo_dash.solvers import FROBENIUS_SCALING, IterationControl
from distributed_shampoo_dash.solvers.tf32 import EmulatedTF32

ROUNDING_NOISE = 1e-7


@dataclass(frozen=True)
class StudyPreset:
    """Model (an ``examples/train_distributed.py`` preset) and the training length."""

    model_preset: str
    batch_size: int
    steps: int
    eval_every: int
    eval_windows: int
    lr: float

    @property
    def model(self) -> example.Preset:
        return example.PRESETS[self.model_preset]


PRESETS = {
    # tiny model (0.12M parameters, 64x64 blocks); see docs/quality.md for the time per run.
    "cpu": StudyPreset(
        "tiny", batch_size=16, steps=4000, eval_every=100, eval_windows=256, lr=2e-3
    ),
    # small model (3.5M parameters, whole matrices up to 768x256 as blocks).
    "gpu": StudyPreset(
        "small", batch_size=32, steps=3000, eval_every=100, eval_windows=512, lr=2e-3
    ),
}


SMOKE = {"steps": 6, "eval_every": 3, "eval_windows": 16}


class TensorCores(enum.Enum):
    """Which fp32 products of an optimizer step compute what TF32 tensor cores would
    (:class:`~distributed_shampoo_dash.solvers.tf32.EmulatedTF32`, on any device)."""

    #: None: every product in fp32.
    OFF = "off"
    #: The solver's: those it requests at TF32 or 3xTF32; the step's own in fp32
    #: (``tf32_step_products=False``).
    SOLVER = "solver"
    #: Every product the step requests at TF32: also the factor updates' Gram products and the
    #: preconditioning products (``tf32_step_products`` at its default, which follows a
    #: tensor-core solver onto TF32).
    STEP = "step"

    @property
    def tf32_step_products(self) -> bool | None:
        """The DASH form's ``tf32_step_products`` for this setting (None: its default)."""
        return False if self is TensorCores.SOLVER else None

    @contextlib.contextmanager
    def emulated(self) -> Iterator[None]:
        """Context in which an optimizer step computes as this setting says."""
        if self is TensorCores.OFF:
            yield
            return
        with EmulatedTF32():
            yield


@dataclass(frozen=True)
class RunSpec:
    """One optimizer of the study. ``solver`` builds the ``amortized_computation_config``."""

    name: str
    description: str
    use_dash: bool
    solver: Callable[[], Any] | None  # None: AdamW
    precondition_frequency: int = 1
    epsilon: float = PAPER_SETTINGS.epsilon
    #: Relative gradient noise: every gradient entry is multiplied by ``1 + noise * N(0, 1)``.
    gradient_noise: float = 0.0
    #: Which products of each optimizer step compute as TF32 tensor cores would.
    tensor_cores: TensorCores = TensorCores.OFF


RUNS: dict[str, RunSpec] = {
    spec.name: spec
    for spec in (
        RunSpec("adamw", "torch.optim.AdamW", False, None),
        RunSpec(
            "upstream-eigen", "upstream EigenConfig, DASH off, roots every step", False, EigenConfig
        ),
        RunSpec(
            "upstream-eigen-every10",
            "upstream EigenConfig, DASH off, roots every 10 steps",
            False,
            EigenConfig,
            precondition_frequency=10,
        ),
        RunSpec("dash-eigen", "EigenConfig, DASH on (batched eigh)", True, EigenConfig),
        # upstream-eigen with fp32-rounding-sized gradient noise: the noise floor against which
        # the dash-eigen vs upstream-eigen difference is judged (docs/quality.md).
        RunSpec(
            "upstream-eigen-perturbed",
            f"upstream EigenConfig, DASH off, gradients x (1 + {ROUNDING_NOISE:g} N(0,1))",
            False,
            EigenConfig,
            gradient_noise=ROUNDING_NOISE,
        ),
        RunSpec(
            "minimax",
            "MinimaxRootInvConfig(): minimax steps, rel_epsilon 1e-4",
            True,
            dash.MinimaxRootInvConfig,
        ),
        *(
            RunSpec(
                f"minimax-rel-{rel_epsilon:g}",
                f"MinimaxRootInvConfig(rel_epsilon={rel_epsilon:g})",
                True,
                partial(dash.MinimaxRootInvConfig, rel_epsilon=rel_epsilon),
            )
            for rel_epsilon in (1e-5, 3e-4, 1e-3)
        ),
        # At 1e-6 healthy fp32 roots reach residuals of 1e-2 (the rounding of the first steps,
        # docs/solvers.md), so the acceptance is loosened to keep eigh out of the comparison.
        RunSpec(
            "minimax-rel-1e-06",
            "MinimaxRootInvConfig(rel_epsilon=1e-6, max_residual=5e-2)",
            True,
            lambda: dash.MinimaxRootInvConfig(rel_epsilon=1e-6, max_residual=5e-2),
        ),
        # The first step in fp64 removes the rounding of the root, not of the residual: on the
        # nearly rank-one factors of early steps it still reaches 1e-2.
        RunSpec(
            "minimax-rel-1e-06-fp64-first-step",
            'MinimaxRootInvConfig(rel_epsilon=1e-6, first_step_precision="fp64", '
            "max_residual=5e-2)",
            True,
            lambda: dash.MinimaxRootInvConfig(
                rel_epsilon=1e-6, first_step_precision="fp64", max_residual=5e-2
            ),
        ),
        # The CUDA default on a CPU, its products emulated as TF32 tensor cores compute them.
        RunSpec(
            "minimax-tf32",
            'default_root_inv_config("cuda"): minimax, precision tf32 (3xTF32 early steps and '
            "residual), step products in fp32 (tf32_step_products=False), TF32 emulated",
            True,
            lambda: dash.default_root_inv_config("cuda"),
            tensor_cores=TensorCores.SOLVER,
        ),
        RunSpec(
            "minimax-tf32-step",
            'default_root_inv_config("cuda") with its default step products: the factor '
            "updates' and preconditioning's products in TF32 too, TF32 emulated",
            True,
            lambda: dash.default_root_inv_config("cuda"),
            tensor_cores=TensorCores.STEP,
        ),
        RunSpec(
            "minimax-bf16",
            "MinimaxRootInvConfig(precision=bf16, max_residual=5e-2)",
            True,
            lambda: dash.MinimaxRootInvConfig(precision="bf16", max_residual=5e-2),
        ),
        RunSpec(
            "newton-db",
            "NewtonDBRootInvConfig(): 10 Newton-Schulz steps, eigh for residual > 1",
            True,
            dash.NewtonDBRootInvConfig,
        ),
        RunSpec(
            "newton-db-accept-all",
            "NewtonDBRootInvConfig(max_residual=None): every finite root accepted",
            True,
            lambda: dash.NewtonDBRootInvConfig(max_residual=None),
        ),
        RunSpec(
            "newton-db-frobenius",
            "NewtonDBRootInvConfig(scaling=FROBENIUS_SCALING)",
            True,
            lambda: dash.NewtonDBRootInvConfig(scaling=FROBENIUS_SCALING),
        ),
        RunSpec(
            "coupled-newton",
            "upstream CoupledNewtonConfig, DASH on (batched coupled Newton)",
            True,
            CoupledNewtonConfig,
            epsilon=example.DEFAULT_EPSILON["coupled-newton"],
        ),
        RunSpec(
            "chebyshev", "ChebyshevRootInvConfig()", True, lambda: dash.ChebyshevRootInvConfig()
        ),
        RunSpec(
            "newton-db-bf16-refined",
            ("NewtonDBRootInvConfig(precision=bf16, iteration=IterationControl(10, refinement 2))"),
            True,
            lambda: dash.NewtonDBRootInvConfig(
                precision="bf16",
                iteration=IterationControl(num_iterations=10, refinement_iterations=2),
            ),
        ),
    )
}
