r"""Train a small byte-level Llama with Distributed Shampoo + DASH under torchrun (DDP or
fully_shard).

Every rank builds the same seeded model (``distributed_shampoo_dash/examples/llama.py``), wraps it
with ``DistributedDataParallel`` (``--distributed ddp``, with upstream's ``DDPDistributedConfig``)
or with torch's ``fully_shard`` per transformer block and then the root (``--distributed
fully_shard``, with ``FullyShardDistributedConfig``), and trains it on random byte windows of the
Python standard library's sources (each rank draws its own windows). The optimizer is upstream's
``DistributedShampoo`` with the DASH paper's defaults: betas (0.9, 0.95), epsilon 1e-10 (1e-6 for
``coupled-newton``, which diverges on this model's rank-deficient early factors at 1e-10), Adam
grafting (beta2 0.95, epsilon 1e-8), blocks of at most 1024 (64 for ``--preset tiny``), inverse
roots every ``--precondition-frequency`` steps (default 10). Its preconditioner config is DASH's
form of ``RootInvShampooPreconditionerConfig`` unless ``--no-dash``, so the optimizer uses DASH's
batched preconditioner stacks; ``--solver`` picks the inverse-root method::

    eigen           upstream EigenConfig()            (batched eigh with DASH)
    coupled-newton  upstream CoupledNewtonConfig()    (batched coupled Newton with DASH)
    minimax       dash.MinimaxRootInvConfig()      (DASH only; minimax iteration)
    newton-db dash.NewtonDBRootInvConfig() (DASH only; the paper's Newton-DB)
    chebyshev       dash.ChebyshevRootInvConfig()     (DASH only)

Run it (CPU: gloo, one process per rank; GPU: nccl, one GPU per rank, ``--device auto`` picks CUDA
when available)::

    torchrun --standalone --nproc_per_node=2 examples/train_distributed.py \
        --distributed ddp --solver minimax --steps 20
    torchrun --standalone --nproc_per_node=2 examples/train_distributed.py \
        --distributed fully_shard --solver minimax --steps 20
    torchrun --standalone --nproc_per_node=2 examples/train_distributed.py \
        --distributed fully_shard --solver eigen --no-dash --steps 20
    torchrun --standalone --nproc_per_node=8 examples/train_distributed.py \
        --distributed fully_shard --preset small --solver chebyshev --steps 200
    python3 examples/train_distributed.py --solver minimax --steps 3 \
        --precondition-frequency 1   # world size 1, no torchrun

Without torchrun's environment (``RANK``, ``WORLD_SIZE``, ...) the script starts a one-process
group itself, so the same DDP/fully_shard code path runs at world size 1.

Rank 0 prints the configuration (model, data, optimizer, solver, DASH on/off, world size), a
progress bar (``tqdm`` if installed: ``pip install -e ".[examples]"``; a plain text line
otherwise), a log line every ``--log-every`` steps (loss averaged over ranks, step and optimizer
step times), the validation loss and a one-line ``summary:``. Mean times leave out step 1
(first-call overheads); "root steps" are the steps that compute inverse roots (multiples of the
precondition frequency), the others only precondition with the stored roots. On CUDA the timers
synchronise the device. With DASH on, the log lines also count DASH's fallbacks over all ranks
(``eigh``: roots a DASH solver produced but that failed its residual check and were recomputed by
eigh; ``replayed``: blocks handed to upstream's per-block code); ``--show-fallback-warnings``
prints DASH's warning for each. A non-finite loss stops the run with exit status 1, and so does a
failed inverse root (upstream's ``PreconditionerValueError``, shortened, with a hint).
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

from distributed_shampoo_dash.examples.llama import (
    ByteCorpus,
    Llama,
    LlamaConfig,
    causal_lm_loss,
    load_stdlib_corpus,
    random_windows,
    split_windows,
)
from distributed_shampoo_dash.examples.training import (
    PRESETS,
    HelpFormatter,
    make_progress,
    mean_ms,
    pick_device,
    shampoo_epsilon,
    synchronize,
)
from distributed_shampoo_dash.paper_defaults import PAPER_SETTINGS

try:
    from distributed_shampoo import (
        DDPDistributedConfig,
        DistributedConfig,
        DistributedShampoo,
        FullyShardDistributedConfig,
        RootInvShampooPreconditionerConfig,
    )
    from distributed_shampoo.shampoo_types import PreconditionerValueError
except ImportError as error:  # pragma: no cover - depends on the environment
    raise SystemExit(
        f"This example needs Meta's distributed_shampoo: install it as README.md says ({error})"
    ) from error

import distributed_shampoo_dash as dash
from distributed_shampoo_dash.trainers.optimizer import SOLVERS as SOLVER_CONFIGS
from distributed_shampoo_dash.trainers.optimizer import solver_config

SOLVERS = tuple(SOLVER_CONFIGS)
DASH_ONLY_SOLVERS = ("minimax", "newton-db", "chebyshev")
# --------------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Train a byte-level Llama with DistributedShampoo + DASH (DDP or fully_shard).",
        formatter_class=HelpFormatter,
    )
    parser.add_argument(
        "--distributed",
        choices=("ddp", "fully_shard"),
        default="ddp",
        help="data-parallel wrapper and the matching upstream distributed_config",
    )
    parser.add_argument(
        "--solver",
        choices=SOLVERS,
        default="minimax",
        help="inverse-root method of RootInvShampooPreconditionerConfig",
    )
    parser.add_argument(
        "--no-dash",
        action="store_true",
        help="run upstream DistributedShampoo alone (solver eigen or coupled-newton)",
    )
    parser.add_argument(
        "--preset",
        choices=tuple(PRESETS),
        default="tiny",
        help="model size and batch defaults: "
        + "; ".join(
            f"{name}: hidden {p.hidden_size}, {p.num_layers} layers, {p.num_heads} heads, "
            f"ffn {p.ffn_hidden_size}, seq_len {p.seq_len}, batch {p.batch_size}, "
            f"max_preconditioner_dim {p.max_preconditioner_dim}"
            for name, p in PRESETS.items()
        ),
    )
    parser.add_argument("--steps", type=int, default=50, help="training steps")
    parser.add_argument(
        "--batch-size",
        type=int,
        default=None,
        help="sequences per rank and step (default: from --preset)",
    )
    parser.add_argument(
        "--seq-len", type=int, default=None, help="tokens per sequence (default: from --preset)"
    )
    parser.add_argument(
        "--hidden-size", type=int, default=None, help="model width (default: from --preset)"
    )
    parser.add_argument(
        "--num-layers", type=int, default=None, help="transformer blocks (default: from --preset)"
    )
    parser.add_argument(
        "--num-heads", type=int, default=None, help="attention heads (default: from --preset)"
    )
    parser.add_argument(
        "--ffn-size", type=int, default=None, help="SwiGLU inner width (default: from --preset)"
    )
    parser.add_argument(
        "--max-preconditioner-dim",
        type=int,
        default=None,
        help="Shampoo block size limit (default: from --preset)",
    )
    parser.add_argument(
        "--precondition-frequency",
        type=int,
        default=PAPER_SETTINGS.precondition_frequency,
        help="compute inverse roots every this many steps",
    )
    parser.add_argument("--lr", type=float, default=2e-3, help="learning rate")
    parser.add_argument(
        "--epsilon",
        type=float,
        default=None,
        help="Shampoo epsilon (default: 1e-10, the paper's; 1e-6 for coupled-newton)",
    )
    parser.add_argument(
        "--weight-decay",
        type=float,
        default=PAPER_SETTINGS.weight_decay,
        help="decoupled weight decay",
    )
    parser.add_argument(
        "--seed", type=int, default=0, help="model initialisation and training-data seed"
    )
    parser.add_argument(
        "--device",
        choices=("auto", "cpu", "cuda"),
        default="auto",
        help="auto: cuda if available, else cpu",
    )
    parser.add_argument(
        "--eval-batches",
        type=int,
        default=4,
        help="validation windows = eval_batches x batch_size (split across ranks)",
    )
    parser.add_argument(
        "--log-every", type=int, default=10, help="log a line every this many steps"
    )
    parser.add_argument(
        "--show-fallback-warnings",
        action="store_true",
        help="print DASH's warning for every rejected root (counts are always shown)",
    )
    args = parser.parse_args(argv)

    if args.no_dash and args.solver in DASH_ONLY_SOLVERS:
        parser.error(
            f"--solver {args.solver} is a DASH solver and needs DASH; drop --no-dash, or run "
            "upstream alone with --solver eigen or --solver coupled-newton."
        )
    preset = PRESETS[args.preset]
    for name in (
        "batch_size",
        "seq_len",
        "hidden_size",
        "num_layers",
        "num_heads",
        "max_preconditioner_dim",
    ):
        if getattr(args, name) is None:
            setattr(args, name, getattr(preset, name))
    if args.epsilon is None:
        args.epsilon = shampoo_epsilon(args.solver)
    if args.ffn_size is None:
        args.ffn_size = preset.ffn_hidden_size
    for name in (
        "steps",
        "batch_size",
        "seq_len",
        "precondition_frequency",
        "eval_batches",
        "log_every",
        "max_preconditioner_dim",
    ):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}.")
    return args


# --------------------------------------------------------------------------------------------------
# Process group and device
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Context:
    """Where this process runs."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    backend: str
    launcher: str

    @property
    def is_main(self) -> bool:
        return self.rank == 0


@contextmanager
def process_group(device_choice: str) -> Iterator[Context]:
    """Joins torchrun's process group, or starts a one-process group without torchrun."""
    launched = all(
        name in os.environ for name in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
    )
    local_rank = int(os.environ.get("LOCAL_RANK", "0")) if launched else 0
    device = pick_device(device_choice, local_rank)
    backend = "nccl" if device.type == "cuda" else "gloo"
    with tempfile.TemporaryDirectory() as store_dir:
        if launched:
            dist.init_process_group(backend)  # env:// from torchrun
        else:
            dist.init_process_group(
                backend, init_method=Path(store_dir, "store").as_uri(), rank=0, world_size=1
            )
        try:
            yield Context(
                rank=dist.get_rank(),
                world_size=dist.get_world_size(),
                local_rank=local_rank,
                device=device,
                backend=backend,
                launcher="torchrun" if launched else "single process (no torchrun)",
            )
        finally:
            dist.destroy_process_group()


# --------------------------------------------------------------------------------------------------
# Model, wrapper, optimizer
# --------------------------------------------------------------------------------------------------


def wrap_model(model: Llama, kind: str, ctx: Context) -> tuple[nn.Module, DistributedConfig]:
    """DDP or fully_shard (per block, then the root) and the matching upstream
    distributed_config.
    """
    if kind == "ddp":
        wrapped = nn.parallel.DistributedDataParallel(
            model,
            device_ids=[ctx.device.index] if ctx.device.type == "cuda" else None,
        )
        # -1: one group of all ranks; each rank computes the roots of its share of the blocks.
        config = DDPDistributedConfig(
            communication_dtype=torch.float32, num_trainers_per_group=-1, communicate_params=False
        )
        return wrapped, config
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    mesh = init_device_mesh(ctx.device.type, (ctx.world_size,))
    for layer in model.layers:
        fully_shard(layer, mesh=mesh)
    fully_shard(model, mesh=mesh)
    return model, FullyShardDistributedConfig()


def solver_description(solver: str, use_dash: bool) -> str:
    """What computes the inverse roots, in words."""
    if not use_dash:
        return f"{solver}: upstream per-block {'eigh' if solver == 'eigen' else 'coupled Newton'}"
    return {
        "eigen": "eigen: DASH batched eigh (upstream EigenConfig semantics)",
        "coupled-newton": (
            "coupled-newton: DASH batched coupled Newton (upstream CoupledNewtonConfig)"
        ),
        "minimax": "minimax: DASH batched minimax iteration (relative ridge 1e-4)",
        "newton-db": "newton-db: DASH batched Newton-DB, the paper's 10 steps",
        "chebyshev": "chebyshev: DASH batched Chebyshev/Clenshaw",
    }[solver]


def build_optimizer(
    model: nn.Module, args: argparse.Namespace, config: DistributedConfig
) -> DistributedShampoo:
    """``DistributedShampoo`` with the DASH paper's defaults; the preconditioner config is DASH's
    form unless ``--no-dash``."""
    config_cls = (
        RootInvShampooPreconditionerConfig
        if args.no_dash
        else dash.RootInvShampooPreconditionerConfig
    )
    settings = replace(
        PAPER_SETTINGS,
        epsilon=args.epsilon,
        weight_decay=args.weight_decay,
        max_preconditioner_dim=args.max_preconditioner_dim,
        precondition_frequency=args.precondition_frequency,
    )
    return DistributedShampoo(
        model.parameters(),
        lr=args.lr,
        distributed_config=config,
        preconditioner_config=config_cls(amortized_computation_config=solver_config(args.solver)),
        **settings.shampoo_kwargs(),
    )


# --------------------------------------------------------------------------------------------------
# Progress display (rank 0)
# --------------------------------------------------------------------------------------------------


# --------------------------------------------------------------------------------------------------
# Training and evaluation
# --------------------------------------------------------------------------------------------------


def mean_over_ranks(value: torch.Tensor, world_size: int) -> float:
    """Average of a scalar over all ranks (a collective)."""
    total = value.detach().float().reshape(1).clone()
    dist.all_reduce(total)
    return float(total) / world_size


@torch.no_grad()
def evaluate(model: nn.Module, corpus: ByteCorpus, args: argparse.Namespace, ctx: Context) -> float:
    """Mean validation loss (nats/byte) over ``eval_batches * batch_size`` fixed windows.

    The windows come from a generator seeded with 0 (the same for every run and world size)
    and are dealt round-robin to the ranks; ranks with fewer windows pad with zero-weight ones,
    so every rank runs the same number of forward passes (fully_shard needs that).
    """
    model.eval()
    generator = torch.Generator().manual_seed(0)
    windows = random_windows(
        corpus.validation, args.eval_batches * args.batch_size, args.seq_len, generator
    )
    mine = windows[ctx.rank :: ctx.world_size]
    per_rank = math.ceil(windows.shape[0] / ctx.world_size)
    weights = torch.cat((torch.ones(mine.shape[0]), torch.zeros(per_rank - mine.shape[0])))
    mine = torch.cat((mine, windows[: per_rank - mine.shape[0]]))
    totals = torch.zeros(2, dtype=torch.float64, device=ctx.device)
    for chunk, chunk_weights in zip(
        mine.split(args.batch_size), weights.split(args.batch_size), strict=True
    ):
        inputs, targets = split_windows(chunk.to(ctx.device))
        losses = causal_lm_loss(model(inputs), targets, reduction="none").mean(dim=1)
        chunk_weights = chunk_weights.to(ctx.device, torch.float64)
        totals += torch.stack(((losses.double() * chunk_weights).sum(), chunk_weights.sum()))
    dist.all_reduce(totals)
    model.train()
    return float(totals[0] / totals[1])


FALLBACK_KINDS = ("eigh", "replayed")


def fallback_counts(optimizer: DistributedShampoo, device: torch.device) -> dict[str, int]:
    """DASH's fallback counters summed over all ranks (a collective); zero counts left out.

    ``eigh``: roots recomputed by eigh after failing their check; ``replayed``: blocks handed to
    upstream's per-block code.
    """
    counts = dash.fallback_counts(optimizer)
    totals = torch.tensor([counts[kind] for kind in FALLBACK_KINDS], device=device)
    dist.all_reduce(totals)
    return {kind: int(count) for kind, count in zip(FALLBACK_KINDS, totals.tolist()) if count}


def train(args: argparse.Namespace, ctx: Context) -> int:
    use_dash = not args.no_dash
    if use_dash and not args.show_fallback_warnings:
        # One warning per rejected root is noisy in a training log; the counts are printed.
        logging.getLogger("distributed_shampoo_dash").setLevel(logging.ERROR)

    corpus = load_stdlib_corpus()
    config = LlamaConfig(
        hidden_size=args.hidden_size,
        num_layers=args.num_layers,
        num_heads=args.num_heads,
        ffn_hidden_size=args.ffn_size,
        seq_len=args.seq_len,
    )
    torch.manual_seed(args.seed)  # the same initial model on every rank
    llama = Llama(config).to(ctx.device)
    num_parameters = sum(p.numel() for p in llama.parameters())
    model, distributed_config = wrap_model(llama, args.distributed, ctx)
    optimizer = build_optimizer(model, args, distributed_config)
    list_classes = sorted({type(pl).__name__ for pl in dash.preconditioner_lists(optimizer)})
    solver = solver_description(args.solver, use_dash)
    say = print if ctx.is_main else (lambda *_, **__: None)
    say(
        f"model: byte-level Llama, hidden {config.hidden_size}, {config.num_layers} layers, "
        f"{config.num_heads} heads, ffn {config.ffn_hidden_size}, seq_len {config.seq_len}, "
        f"{num_parameters / 1e6:.2f}M parameters"
    )
    say(f"data: {corpus.description}")
    say(
        f"optimizer: DistributedShampoo lr {args.lr:g}, betas {PAPER_SETTINGS.betas}, "
        f"epsilon {args.epsilon:g}, weight decay {args.weight_decay:g}, "
        f"max_preconditioner_dim {args.max_preconditioner_dim}, "
        f"precondition_frequency {args.precondition_frequency}, "
        f"Adam grafting (beta2 {PAPER_SETTINGS.grafting_beta2:g}, "
        f"eps {PAPER_SETTINGS.grafting_epsilon:g})"
    )
    say(
        f"solver: {solver} | DASH {'on' if use_dash else 'off'} "
        f"(preconditioner list: {', '.join(list_classes) or 'n/a'})"
    )
    say(
        f"distributed: {args.distributed} ({type(distributed_config).__name__}) | world size "
        f"{ctx.world_size} | backend {ctx.backend} | device {ctx.device} | {ctx.launcher}"
    )

    generator = torch.Generator().manual_seed(args.seed * 100_003 + 1 + ctx.rank)  # per-rank data
    progress, write = make_progress(args.steps, enabled=ctx.is_main)
    step_times: list[float] = []
    optimizer_times: dict[bool, list[float]] = {True: [], False: []}  # keyed by "root step"
    losses: list[float] = []
    status = 0
    try:
        for step in range(1, args.steps + 1):
            inputs, targets = split_windows(
                random_windows(corpus.train, args.batch_size, args.seq_len, generator).to(
                    ctx.device
                )
            )
            optimizer.zero_grad(set_to_none=True)
            synchronize(ctx.device)
            start = time.perf_counter()
            loss = causal_lm_loss(model(inputs), targets)
            loss.backward()
            synchronize(ctx.device)
            backward_done = time.perf_counter()
            try:
                optimizer.step()
            except PreconditionerValueError as error:  # upstream's message holds a whole matrix
                summary = str(error).split("bias_corrected_factor_matrix=")[0][:300]
                raise SystemExit(
                    f"rank {ctx.rank}, step {step}: {summary}... The inverse root failed; "
                    f"try a larger --epsilon (now {args.epsilon:g}) or another --solver."
                ) from None
            synchronize(ctx.device)
            end = time.perf_counter()

            root_step = step % args.precondition_frequency == 0
            if step > 1 or args.steps == 1:
                step_times.append(end - start)
                optimizer_times[root_step].append(end - backward_done)
            mean_loss = mean_over_ranks(loss, ctx.world_size)
            losses.append(mean_loss)
            if not math.isfinite(mean_loss):
                say(f"error: non-finite loss {mean_loss} at step {step}", file=sys.stderr)
                status = 1
                break
            step_ms, optimizer_ms = 1e3 * (end - start), 1e3 * (end - backward_done)
            progress.set_postfix_str(
                f"loss {mean_loss:.4f} step {step_ms:.0f}ms opt {optimizer_ms:.0f}ms"
            )
            progress.update(1)
            if step % args.log_every == 0 or step == args.steps:
                fallbacks = fallback_counts(optimizer, ctx.device) if use_dash else {}
                write(
                    f"step {step}/{args.steps} | loss {mean_loss:.4f} | step {step_ms:.1f} ms "
                    f"| opt step {optimizer_ms:.1f} ms{' (roots)' if root_step else ''}"
                    + (f" | DASH fallbacks {fallbacks or 'none'}" if use_dash else "")
                )
    finally:
        progress.close()
    if status:
        return status

    validation_loss = evaluate(model, corpus, args, ctx)
    all_optimizer_times = optimizer_times[True] + optimizer_times[False]
    tokens_per_step = args.batch_size * args.seq_len * ctx.world_size
    step_seconds = sum(step_times) / len(step_times)
    say(
        f"validation loss {validation_loss:.4f} nats/byte "
        f"({validation_loss / math.log(2):.3f} bits/byte) "
        f"on {args.eval_batches * args.batch_size} windows"
    )
    if use_dash:
        fallbacks = fallback_counts(optimizer, ctx.device)
        say(f"DASH fallbacks, all ranks (eigh: roots recomputed by eigh): {fallbacks or 'none'}")
    say(
        f"summary: {args.distributed} world {ctx.world_size} {ctx.device.type} "
        f"| DASH {'on' if use_dash else 'off'} "
        f"| solver {args.solver} | steps {len(losses)} | loss {losses[0]:.4f} -> {losses[-1]:.4f} "
        f"| val loss {validation_loss:.4f} | mean step {mean_ms(step_times)} | mean opt step "
        f"{mean_ms(all_optimizer_times)} (root steps {mean_ms(optimizer_times[True])}, "
        f"others {mean_ms(optimizer_times[False])}) | {tokens_per_step / step_seconds:.0f} tokens/s"
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    with process_group(args.device) as ctx:
        return train(args, ctx)


if __name__ == "__main__":
    sys.exit(main())
