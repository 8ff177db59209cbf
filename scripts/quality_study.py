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
``minimax-rel-<r>`` (other relative ridges), ``minimax-tf32`` (the CUDA default, its products
emulated as TF32 tensor cores compute them) and ``minimax-tf32-step`` (also the factor updates' and
preconditioning's products), ``minimax-bf16``, ``newton-db`` (the DASH
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
from collections.abc import Callable, Sequence
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import torch
from distributed_shampoo import (
    DistributedShampoo,
    RootInvShampooPreconditionerConfig,
)
from torch import nn

import distributed_shampoo_dash as dash
from distributed_shampoo_dash.benchmarks.cli import HelpFormatter
from distributed_shampoo_dash.benchmarks.quality_report import report
from distributed_shampoo_dash.benchmarks.quality_runs import (
    PRESETS,
    RUNS,
    SMOKE,
    RunSpec,
    StudyPreset,
)
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

ADAMW_EPSILON = 1e-8
MIN_LR_RATIO = 0.1
WARMUP_FRACTION = 0.1


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
            dash.batched(
                preconditioner_config,
                tf32_step_products=spec.tensor_cores.tf32_step_products,
            )
            if spec.use_dash
            else preconditioner_config
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
        "tensor_cores": spec.tensor_cores.value,
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
                with spec.tensor_cores.emulated():
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


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if not args.report:
        run_study(args)
    return 0 if args.no_report else report(args.out)


if __name__ == "__main__":
    sys.exit(main())
