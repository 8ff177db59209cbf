"""Training-quality study: a small byte-level Llama trained by every inverse-root solver, side by
side.

Setup (docs/quality.md has the full description):

* Model and data: ``distributed_shampoo_dash/examples/llama.py`` (shared with the example). A
  byte-level Llama (vocabulary 256, RMSNorm, rotary attention, SwiGLU, untied head) of the shape
  of ``examples/train_distributed.py``'s presets (``--preset cpu``: its ``tiny`` model,
  ``--preset gpu``: its ``small`` model), trained on random windows of the Python standard
  library's ``*.py`` files; every 10th file (sorted by path) is the validation split. Training
  windows come from ``Generator(seed * 100003 + 1)``, the model from ``torch.manual_seed(seed)``:
  every run sees the same initial model and the same batches for a given seed. The validation
  loss is the mean next-byte cross entropy (nats/byte) over a fixed set of validation windows
  (``Generator(0)``, the same for every run and seed), computed at step 0 and every
  ``--eval-every`` steps.
* Schedule (every run): learning rate ``lr_t = lr * t / w`` for ``t <= w`` warmup steps, then cosine
  decay ``lr_t = lr * (r + (1 - r) (1 + cos(pi (t - w) / (T - w))) / 2)`` to ``r = 0.1`` of the peak
  at the last step ``T``; ``w = 10%`` of ``T``. It is written into every param group's ``lr`` before
  each step.
* Shampoo runs (upstream ``DistributedShampoo``, single device, the DASH paper's defaults,
  ``distributed_shampoo_dash.paper_defaults.PAPER_SETTINGS``): betas
  ``(0.9, 0.95)``, epsilon ``1e-10`` (``1e-6`` for ``coupled-newton``, as in the example: coupled
  Newton fails on this model's rank-deficient early factors at 1e-10), weight decay 0, Adam grafting
  (beta2 0.95, epsilon 1e-8), ``max_preconditioner_dim`` of the example preset (64 for cpu, 1024 for
  gpu), ``RootInvShampooPreconditionerConfig`` with the run's solver; inverse roots every step
  except ``upstream-eigen-every10``. Shampoo preconditions ``G x_1 L^{-1/4} x_2 R^{-1/4}`` (roots
  4 for 2-D blocks, 2 for 1-D) with the factor EMAs ``L <- 0.95 L + 0.05 G G^T``,
  ``R <- 0.95 R + 0.05 G^T G``, grafted onto Adam's step norm.
* ``adamw``: ``torch.optim.AdamW`` with the same lr and schedule, betas (0.9, 0.95), eps 1e-8,
  weight decay 0.

Runs (``--runs``, default all; see :data:`RUNS`): ``adamw``, ``upstream-eigen``,
``upstream-eigen-every10``, ``dash-eigen``, ``upstream-eigen-perturbed`` (upstream-eigen with every
gradient entry multiplied by ``1 + 1e-7 N(0, 1)``: the fp32-rounding noise floor of the
dash-eigen check), ``minimax`` (the default: minimax steps, rel_epsilon 1e-4) and
``minimax-rel-<r>`` (other relative ridges), ``minimax-bf16``, ``newton-db`` (the DASH
paper's Newton-DB, eigh for residual > 1), ``newton-db-accept-all`` (every finite root
accepted), ``newton-db-frobenius``, ``coupled-newton``, ``chebyshev``,
``newton-db-bf16-refined``. ``--epsilon`` replaces the epsilon of every Shampoo run
(the smoke test uses 1e-6: at 1e-10 the inverse roots of near-singular factors amplify rounding so
much that upstream-eigen and upstream-eigen-perturbed already differ by ~3e-3 after 20 steps).

Each run and seed writes ``<out>/<run>/seed<seed>.json``: the configuration, per evaluation point
(step, validation loss, mean train loss since the previous point, cumulative training wall time
without evaluations, mean optimizer step time, DASH fallback counts), the mean/median optimizer
step time (step 1 left out), and ``finite`` with the failure (step and cause: exception message or
first non-finite loss) of a run that diverged; a failed run stops there and is reported, never
dropped. ``--report`` (also run at the end of a study) reads every log under ``<out>`` and writes
``<out>/report.md`` (table: final validation loss mean +- spread over seeds, where spread is half of
max - min; optimizer ms/step; fallbacks; finite seeds) and ``<out>/quality.png`` (validation loss
vs step and vs wall time, mean over seeds with a min/max band), and checks that ``dash-eigen``
reproduces ``upstream-eigen``'s validation curve within 1e-3 at every logged point (max abs
difference per seed, printed).

Commands::

    OMP_NUM_THREADS=2 python3 scripts/quality_study.py --preset cpu              # full cpu study
    python3 scripts/quality_study.py --preset gpu --device cuda --out bench_out/quality_gpu
    python3 scripts/quality_study.py --runs upstream-eigen dash-eigen --seeds 0 1
    python3 scripts/quality_study.py --report                                    # report only
    python3 scripts/quality_study.py --runs coupled-newton --seeds 2 &           # parallel parts:
    python3 scripts/quality_study.py --runs chebyshev --seeds 2 --no-report      # same --out
    python3 scripts/quality_study.py --smoke --out /tmp/quality_smoke            # a few steps
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import statistics
import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch
from distributed_shampoo import (
    CoupledNewtonConfig,
    DistributedShampoo,
    EigenConfig,
    RootInvShampooPreconditionerConfig,
)
from torch import nn

import distributed_shampoo_dash as dash
from distributed_shampoo_dash.benchmarks.cli import HelpFormatter
from distributed_shampoo_dash.examples import training as example
from distributed_shampoo_dash.examples.llama import (
    ByteCorpus,
    Llama,
    LlamaConfig,
    causal_lm_loss,
    load_stdlib_corpus,
    random_windows,
    split_windows,
)
from distributed_shampoo_dash.paper_defaults import PAPER_SETTINGS
from distributed_shampoo_dash.solvers import (
    FROBENIUS_SCALING,
    IterationControl,
)

EQUIVALENCE_TOLERANCE = 1e-3
ROUNDING_NOISE = 1e-7
ADAMW_EPSILON = 1e-8
MIN_LR_RATIO = 0.1
WARMUP_FRACTION = 0.1


# --------------------------------------------------------------------------------------------------
# Presets and runs
# --------------------------------------------------------------------------------------------------


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
                lambda rel_epsilon=rel_epsilon: dash.MinimaxRootInvConfig(rel_epsilon=rel_epsilon),
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


# --------------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    """The command line (see the module docstring); :func:`parse_args` fills in the presets'."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument(
        "--runs",
        nargs="+",
        choices=tuple(RUNS),
        default=list(RUNS),
        metavar="RUN",
        help="runs to train, see Runs above",
    )
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2], help="seeds per run")
    parser.add_argument("--preset", choices=tuple(PRESETS), default="cpu", help="model and length")
    parser.add_argument("--steps", type=int, default=None, help="training steps (default: preset)")
    parser.add_argument(
        "--eval-every",
        type=int,
        default=None,
        help="validation every this many steps (default: preset)",
    )
    parser.add_argument(
        "--eval-windows", type=int, default=None, help="validation windows (default: preset)"
    )
    parser.add_argument(
        "--smoke",
        action="store_true",
        help=f"a few steps for tests: {SMOKE} unless given explicitly",
    )
    parser.add_argument(
        "--epsilon",
        type=float,
        default=None,
        help="Shampoo epsilon of every Shampoo run (default: 1e-10; 1e-6 for coupled-newton)",
    )
    parser.add_argument(
        "--max-files",
        type=int,
        default=None,
        help="read only this many stdlib files (default: all)",
    )
    parser.add_argument(
        "--device", choices=("auto", "cpu", "cuda"), default="auto", help="auto: cuda if available"
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=Path("bench_out/quality"),
        help="folder of the logs (<out>/<run>/seed<seed>.json), report.md and quality.png",
    )
    parser.add_argument(
        "--report", action="store_true", help="only render the report from the logs in --out"
    )
    parser.add_argument(
        "--no-report", action="store_true", help="train without rendering the report"
    )
    return parser


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The options, the unset ones taken from the preset (or the smoke settings)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    preset = PRESETS[args.preset]
    for name in ("steps", "eval_every", "eval_windows"):
        if getattr(args, name) is None:
            setattr(args, name, SMOKE[name] if args.smoke else getattr(preset, name))
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1.")
    return args


# --------------------------------------------------------------------------------------------------
# Schedule, model, optimizer
# --------------------------------------------------------------------------------------------------


def learning_rate(step: int, steps: int, peak: float) -> float:
    """Linear warmup over 10% of ``steps``, then cosine decay to ``MIN_LR_RATIO * peak`` (1-based
    step).
    """
    warmup = max(1, round(WARMUP_FRACTION * steps))
    if step <= warmup:
        return peak * step / warmup
    progress = (step - warmup) / max(1, steps - warmup)
    return peak * (MIN_LR_RATIO + (1 - MIN_LR_RATIO) * 0.5 * (1 + math.cos(math.pi * progress)))


def build_model(preset: StudyPreset, seed: int, device: torch.device) -> Llama:
    """The seeded Llama of the preset's model shape."""
    shape = preset.model
    config = LlamaConfig(
        hidden_size=shape.hidden_size,
        num_layers=shape.num_layers,
        num_heads=shape.num_heads,
        ffn_hidden_size=shape.ffn_hidden_size,
        seq_len=shape.seq_len,
    )
    torch.manual_seed(seed)
    return Llama(config).to(device)


def build_optimizer(spec: RunSpec, model: nn.Module, preset: StudyPreset) -> torch.optim.Optimizer:
    """AdamW, or ``DistributedShampoo`` with the paper defaults and the run's solver, with the DASH
    form of the preconditioner config for a DASH run (the batched list) or upstream's."""
    if spec.use_dash:
        logging.getLogger("distributed_shampoo_dash").setLevel(logging.ERROR)  # counts are logged
    if spec.solver is None:
        return torch.optim.AdamW(
            model.parameters(),
            lr=preset.lr,
            betas=PAPER_SETTINGS.betas,
            eps=ADAMW_EPSILON,
            weight_decay=PAPER_SETTINGS.weight_decay,
        )
    preconditioner_config = RootInvShampooPreconditionerConfig(
        amortized_computation_config=spec.solver()
    )
    settings = replace(
        PAPER_SETTINGS,
        epsilon=spec.epsilon,
        max_preconditioner_dim=preset.model.max_preconditioner_dim,
        precondition_frequency=spec.precondition_frequency,
    )
    return DistributedShampoo(
        model.parameters(),
        lr=preset.lr,
        preconditioner_config=(
            dash.batched(preconditioner_config) if spec.use_dash else preconditioner_config
        ),
        **settings.shampoo_kwargs(),
    )


def fallback_counts(optimizer: torch.optim.Optimizer) -> dict[str, int]:
    """DASH's fallback counters over all param groups (zeros for upstream lists and AdamW)."""
    counts = dash.fallback_counts(optimizer) if isinstance(optimizer, DistributedShampoo) else {}
    return {kind: int(counts.get(kind, 0)) for kind in ("eigh", "replayed")}


def run_config(
    spec: RunSpec,
    preset: StudyPreset,
    args: argparse.Namespace,
    seed: int,
    corpus: ByteCorpus,
    optimizer: torch.optim.Optimizer,
    device: torch.device,
) -> dict[str, Any]:
    """Everything that defines the run, for its log."""
    shampoo = isinstance(optimizer, DistributedShampoo)
    return {
        "run": spec.name,
        "description": spec.description,
        "seed": seed,
        "preset": args.preset,
        "model": asdict(preset.model) | {"example_preset": preset.model_preset},
        "batch_size": preset.batch_size,
        "steps": args.steps,
        "eval_every": args.eval_every,
        "eval_windows": args.eval_windows,
        "data": corpus.description,
        "schedule": (
            f"linear warmup {WARMUP_FRACTION:.0%} of steps, cosine to {MIN_LR_RATIO} x peak"
        ),
        "lr": preset.lr,
        "betas": list(PAPER_SETTINGS.betas),
        "weight_decay": PAPER_SETTINGS.weight_decay,
        "optimizer": type(optimizer).__name__,
        "epsilon": spec.epsilon if shampoo else None,
        "adamw_eps": None if shampoo else ADAMW_EPSILON,
        "gradient_noise": spec.gradient_noise,
        "grafting": (
            f"Adam beta2 {PAPER_SETTINGS.grafting_beta2} eps {PAPER_SETTINGS.grafting_epsilon}"
            if shampoo
            else None
        ),
        "max_preconditioner_dim": preset.model.max_preconditioner_dim if shampoo else None,
        "precondition_frequency": spec.precondition_frequency if shampoo else None,
        "solver": repr(spec.solver()) if spec.solver is not None else None,
        "dash": spec.use_dash,
        "preconditioner_lists": sorted(
            {type(pl).__name__ for pl in dash.preconditioner_lists(optimizer)}
        ),
        "device": str(device),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
    }


# --------------------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------------------


def validation_windows(corpus: ByteCorpus, count: int, seq_len: int) -> torch.Tensor:
    """``(count, seq_len + 1)`` fixed validation windows (generator seeded 0)."""
    return random_windows(corpus.validation, count, seq_len, torch.Generator().manual_seed(0))


@torch.no_grad()
def evaluate(
    model: nn.Module, windows: torch.Tensor, batch_size: int, device: torch.device
) -> float:
    """Mean next-byte cross entropy (nats/byte) over ``windows``."""
    model.eval()
    total = 0.0
    for chunk in windows.split(batch_size):
        inputs, targets = split_windows(chunk.to(device))
        total += float(causal_lm_loss(model(inputs), targets, reduction="none").double().sum())
    model.train()
    return total / (windows.shape[0] * (windows.shape[1] - 1))


@torch.no_grad()
def perturb_gradients(model: nn.Module, noise: float, generator: torch.Generator) -> None:
    """Multiplies every gradient entry by ``1 + noise * N(0, 1)`` (rounding-sized for 1e-7)."""
    for parameter in model.parameters():
        if parameter.grad is not None:
            factor = torch.randn(parameter.grad.shape, generator=generator, device=parameter.device)
            parameter.grad.mul_(factor.mul_(noise).add_(1.0))


def failure_cause(error: BaseException) -> str:
    """A short cause; upstream's ``PreconditionerValueError`` message holds a whole matrix."""
    message = str(error).split("bias_corrected_factor_matrix=")[0].strip()
    return f"{type(error).__name__}: {message[:400]}"


def train_run(
    spec: RunSpec,
    seed: int,
    args: argparse.Namespace,
    corpus: ByteCorpus,
    device: torch.device,
    say: Callable[[str], None],
) -> dict[str, Any]:
    """Trains one run and seed; returns its log (also for a run that failed)."""
    preset = PRESETS[args.preset]
    if args.epsilon is not None and spec.solver is not None:
        spec = replace(spec, epsilon=args.epsilon)
    seq_len = preset.model.seq_len
    model = build_model(preset, seed, device)
    noise_generator = torch.Generator(device).manual_seed(seed * 100_003 + 2)
    val_windows = validation_windows(corpus, args.eval_windows, seq_len)
    generator = torch.Generator().manual_seed(seed * 100_003 + 1)
    log: dict[str, Any] = {"points": [], "finite": True, "failure": None}
    try:
        optimizer = build_optimizer(spec, model, preset)
    except Exception as error:  # noqa: BLE001 - a configuration the optimizer refuses is a result too
        log.update(finite=False, failure={"step": 0, "cause": failure_cause(error)})
        log["config"] = {"run": spec.name, "seed": seed, "description": spec.description}
        return log
    log["config"] = run_config(spec, preset, args, seed, corpus, optimizer, device)
    initial = evaluate(model, val_windows, preset.batch_size, device)
    log["points"].append(
        {
            "step": 0,
            "val_loss": initial,
            "train_loss": None,
            "wall_s": 0.0,
            "optimizer_ms": None,
            "fallbacks": fallback_counts(optimizer),
        }
    )
    train_seconds, completed = 0.0, 0
    optimizer_times: list[float] = []
    interval_losses: list[float] = []
    interval_opt: list[float] = []
    progress, _ = example.make_progress(args.steps, enabled=True)
    try:
        for step in range(1, args.steps + 1):
            for group in optimizer.param_groups:
                group["lr"] = learning_rate(step, args.steps, preset.lr)
            inputs, targets = split_windows(
                random_windows(corpus.train, preset.batch_size, seq_len, generator).to(device)
            )
            example.synchronize(device)
            start = time.perf_counter()
            optimizer.zero_grad(set_to_none=True)
            loss = causal_lm_loss(model(inputs), targets)
            loss.backward()
            if spec.gradient_noise:
                perturb_gradients(model, spec.gradient_noise, noise_generator)
            example.synchronize(device)
            backward_done = time.perf_counter()
            try:
                optimizer.step()
            except Exception as error:  # noqa: BLE001 - a failed step is a result, recorded
                log.update(finite=False, failure={"step": step, "cause": failure_cause(error)})
                break
            example.synchronize(device)
            end = time.perf_counter()
            train_seconds += end - start
            if step > 1 or args.steps == 1:
                optimizer_times.append(end - backward_done)
                interval_opt.append(end - backward_done)
            loss_value = float(loss.detach())
            interval_losses.append(loss_value)
            if not math.isfinite(loss_value):
                log.update(
                    finite=False,
                    failure={"step": step, "cause": f"non-finite train loss {loss_value}"},
                )
                break
            completed = step
            progress.set_postfix_str(f"{spec.name} seed {seed} loss {loss_value:.4f}")
            progress.update(1)
            if step % args.eval_every == 0 or step == args.steps:
                val_loss = evaluate(model, val_windows, preset.batch_size, device)
                log["points"].append(
                    {
                        "step": step,
                        "val_loss": val_loss,
                        "train_loss": statistics.fmean(interval_losses),
                        "wall_s": train_seconds,
                        "optimizer_ms": 1e3 * statistics.fmean(interval_opt)
                        if interval_opt
                        else None,
                        "fallbacks": fallback_counts(optimizer),
                    }
                )
                interval_losses, interval_opt = [], []
                if not math.isfinite(val_loss):
                    log.update(
                        finite=False,
                        failure={"step": step, "cause": f"non-finite validation loss {val_loss}"},
                    )
                    break
    finally:
        progress.close()
    log.update(
        steps_done=completed,
        train_wall_s=train_seconds,
        optimizer_ms_mean=1e3 * statistics.fmean(optimizer_times) if optimizer_times else None,
        optimizer_ms_median=1e3 * statistics.median(optimizer_times) if optimizer_times else None,
        fallbacks=fallback_counts(optimizer),
    )
    if log["failure"]:
        say(
            f"{spec.name} seed {seed}: FAILED at step {log['failure']['step']}: "
            f"{log['failure']['cause']}"
        )
    return log


def log_path(out: Path, run: str, seed: int) -> Path:
    return out / run / f"seed{seed}.json"


def run_study(args: argparse.Namespace) -> None:
    """Trains every selected run and seed and writes the logs."""
    device = example.pick_device(args.device, 0)
    corpus = load_stdlib_corpus(max_files=args.max_files)
    print(f"data: {corpus.description}")
    for name in args.runs:
        for seed in args.seeds:
            print(
                f"== {name} seed {seed}: {RUNS[name].description} ({args.steps} steps, {device})",
                flush=True,
            )
            log = train_run(RUNS[name], seed, args, corpus, device, print)
            path = log_path(args.out, name, seed)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(log, indent=1))
            last = log["points"][-1] if log["points"] else {}
            print(
                f"   final val loss {last.get('val_loss', float('nan')):.4f} "
                f"at step {last.get('step')} "
                f"| opt {log.get('optimizer_ms_mean') or float('nan'):.2f} ms/step "
                f"| fallbacks {log.get('fallbacks')} | finite {log['finite']} -> {path}",
                flush=True,
            )


# --------------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------------


def load_logs(out: Path) -> dict[str, list[dict[str, Any]]]:
    """Logs under ``out`` by run name (in :data:`RUNS` order, then unknown names), seeds sorted."""
    logs: dict[str, list[dict[str, Any]]] = {}
    for path in sorted(out.glob("*/seed*.json")):
        log = json.loads(path.read_text())
        logs.setdefault(log["config"]["run"], []).append(log)
    order = [name for name in RUNS if name in logs] + sorted(set(logs) - set(RUNS))
    return {name: sorted(logs[name], key=lambda log: log["config"]["seed"]) for name in order}


def curve(log: dict[str, Any]) -> dict[int, float]:
    """Validation loss by step."""
    return {point["step"]: point["val_loss"] for point in log["points"]}


def curve_differences(
    logs: dict[str, list[dict[str, Any]]], reference: str, candidate: str
) -> dict[int, float] | None:
    """Max |validation loss difference| between two runs at their logged points, per common seed.

    ``inf`` for a seed whose two logs hold different steps (one of them stopped early); ``None``
    when no seed has logs of both runs.
    """
    curves = {
        name: {log["config"]["seed"]: curve(log) for log in logs.get(name, [])}
        for name in (reference, candidate)
    }
    seeds = sorted(set(curves[reference]) & set(curves[candidate]))
    if not seeds:
        return None
    result = {}
    for seed in seeds:
        a, b = curves[reference][seed], curves[candidate][seed]
        result[seed] = max(abs(a[s] - b[s]) for s in a) if a.keys() == b.keys() else math.inf
    return result


def equivalence(logs: dict[str, list[dict[str, Any]]]) -> dict[int, float] | None:
    """The check: dash-eigen against upstream-eigen (see :func:`curve_differences`)."""
    return curve_differences(logs, "upstream-eigen", "dash-eigen")


def summary_rows(logs: dict[str, list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """One row per run: final validation loss over the finite seeds, times, fallbacks, failures."""
    rows = []
    for name, runs in logs.items():
        finals = [log["points"][-1]["val_loss"] for log in runs if log["finite"] and log["points"]]
        times = [
            log["optimizer_ms_mean"] for log in runs if log.get("optimizer_ms_mean") is not None
        ]
        fallbacks: Counter[str] = Counter()
        for log in runs:
            fallbacks.update(log.get("fallbacks") or {})
        rows.append(
            {
                "run": name,
                "seeds": [log["config"]["seed"] for log in runs],
                "steps": max(
                    (log["points"][-1]["step"] for log in runs if log["points"]), default=0
                ),
                "final_mean": statistics.fmean(finals) if finals else math.nan,
                "final_spread": (max(finals) - min(finals)) / 2 if finals else math.nan,
                "optimizer_ms": statistics.fmean(times) if times else math.nan,
                "fallbacks": dict(fallbacks),
                "finite": sum(log["finite"] for log in runs),
                "failures": [
                    (log["config"]["seed"], log["failure"]) for log in runs if log["failure"]
                ],
                "epsilon": runs[0]["config"].get("epsilon"),
            }
        )
    return rows


def markdown_report(logs: dict[str, list[dict[str, Any]]]) -> str:
    """The results table, the failures and the dash-eigen vs upstream-eigen check."""
    lines = [
        (
            "| run | seeds | steps | final val loss (nats/byte), mean ± spread | opt ms/step | "
            "DASH fallbacks (eigh/replayed) | finite |"
        ),
        "|---|---|---|---|---|---|---|",
    ]
    rows = summary_rows(logs)
    for row in rows:
        fallbacks = row["fallbacks"]
        lines.append(
            f"| {row['run']} | {','.join(map(str, row['seeds']))} | {row['steps']} "
            f"| {final_text(row)} | {row['optimizer_ms']:.2f} "
            f"| {fallbacks.get('eigh', 0)}/{fallbacks.get('replayed', 0)} "
            f"| {row['finite']}/{len(row['seeds'])} |"
        )
    lines.append("")
    lines.append(
        "Spread: half of (max - min) over the finite seeds. Shampoo epsilon per run: "
        + ", ".join(
            f"{row['run']} {row['epsilon']:g}" for row in rows if row["epsilon"] is not None
        )
        + "."
    )
    failures = [(row["run"], seed, failure) for row in rows for seed, failure in row["failures"]]
    lines.append("")
    lines.append("Failures: none." if not failures else "Failures (run, seed, step: cause):")
    for run, seed, failure in failures:
        lines.append(f"- {run} seed {seed}, step {failure['step']}: {failure['cause']}")
    lines.append("")
    lines.append(equivalence_text(logs))
    return "\n".join(lines) + "\n"


def final_text(row: dict[str, Any]) -> str:
    """``mean ± spread``, or why there is none."""
    if row["finite"] == 0:
        return "no finite seed"
    return f"{row['final_mean']:.4f} ± {row['final_spread']:.4f}"


def equivalence_text(logs: dict[str, list[dict[str, Any]]]) -> str:
    """The dash-eigen vs upstream-eigen check in words, with the noise floor when it was run."""
    differences = equivalence(logs)
    if differences is None:
        return (
            "dash-eigen vs upstream-eigen: not checked "
            "(logs of both runs with a common seed needed)."
        )
    ok = all(value <= EQUIVALENCE_TOLERANCE for value in differences.values())
    text = (
        f"dash-eigen reproduces upstream-eigen's validation curve within "
        f"{EQUIVALENCE_TOLERANCE:g} at every logged point: {'PASS' if ok else 'FAIL'} "
        f"(max abs difference {per_seed_text(differences)})."
    )
    floor = curve_differences(logs, "upstream-eigen", "upstream-eigen-perturbed")
    if floor is not None:
        text += (
            f"\nNoise floor: upstream-eigen vs upstream-eigen-perturbed (gradients x (1 + "
            f"{ROUNDING_NOISE:g} N(0,1))): max abs difference {per_seed_text(floor)}."
        )
    return text


def per_seed_text(differences: dict[int, float]) -> str:
    return ", ".join(f"seed {seed}: {value:.2e}" for seed, value in differences.items())


def band(
    logs: list[dict[str, Any]], x_key: str
) -> tuple[list[float], list[float], list[float], list[float]]:
    """x (mean over seeds), mean, min and max validation loss at each step logged by any seed."""
    by_step: dict[int, list[tuple[float, float]]] = {}
    for log in logs:
        for point in log["points"]:
            if math.isfinite(point["val_loss"]):
                by_step.setdefault(point["step"], []).append((point[x_key], point["val_loss"]))
    steps = sorted(by_step)
    xs = [statistics.fmean(x for x, _ in by_step[s]) for s in steps]
    ys = [[y for _, y in by_step[s]] for s in steps]
    return xs, [statistics.fmean(y) for y in ys], [min(y) for y in ys], [max(y) for y in ys]


def plot(logs: dict[str, list[dict[str, Any]]], path: Path) -> bool:
    """Validation loss vs step and vs training wall time; ``False`` without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed; no PNG written.")
        return False
    figure, axes = plt.subplots(1, 2, figsize=(13, 5))
    for name, runs in logs.items():
        for axis, key in zip(axes, ("step", "wall_s"), strict=True):
            xs, mean, low, high = band(runs, key)
            (line,) = axis.plot(xs, mean, label=name, linewidth=1.2)
            axis.fill_between(xs, low, high, color=line.get_color(), alpha=0.2, linewidth=0)
    for axis, label in zip(axes, ("step", "training wall time (s)"), strict=True):
        axis.set_xlabel(label)
        axis.set_ylabel("validation loss (nats/byte)")
        axis.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    figure.suptitle("byte-level Llama on stdlib sources: mean over seeds, min/max band")
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return True


def report(out: Path) -> int:
    """Writes ``report.md`` and ``quality.png`` from the logs in ``out``; 1 if the check fails."""
    logs = load_logs(out)
    if not logs:
        print(f"no logs under {out}")
        return 1
    text = markdown_report(logs)
    (out / "report.md").write_text(text)
    print(text, end="")
    written = [out / "report.md"]
    if plot(logs, out / "quality.png"):
        written.append(out / "quality.png")
    print(f"wrote {' and '.join(map(str, written))}")
    differences = equivalence(logs)
    return int(differences is not None and max(differences.values()) > EQUIVALENCE_TOLERANCE)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if not args.report:
        run_study(args)
    return 0 if args.no_report else report(args.out)


if __name__ == "__main__":
    sys.exit(main())
