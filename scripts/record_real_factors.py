"""Records real Shampoo factor matrices for the solver tests: ``tests/data/real_factors.pt``.

A byte-level Llama (``distributed_shampoo_dash.examples.llama``: hidden 128, 2 layers, 4 heads,
SwiGLU 352, untied head) is trained on the Python standard library's sources with upstream
``DistributedShampoo`` and ``EigenConfig`` (betas 0.9 / 0.95, epsilon 1e-10, Adam grafting,
``max_preconditioner_dim`` 128, roots every 10 steps, lr 1e-3, batch 16 windows of 128 bytes,
seed 0). At each recorded step the matrices whose inverse roots the optimizer takes (bias-corrected
Kronecker factors, as ``distributed_shampoo_dash.inverse_factors`` gives them) are kept for a fixed
selection of parameters: every kind of factor (embedding, attention, MLP, head, norm), at step 1
(a single gradient's outer products: rank-deficient, rank one for 1-D parameters), 10, 50 and 300.

The file is a dict: ``description``, ``epsilon`` and ``factors``, a list of dicts with ``step``,
``param`` (the parameter's name), ``factor`` (upstream's factor index), ``kind``, ``root`` (2 for
1-D parameters, 4 for 2-D), ``dim`` (``d``) and ``upper``, the ``d (d + 1) / 2`` entries of the
symmetric ``d x d`` float32 matrix on and above its diagonal in row-major order (the matrices are
exactly symmetric, so this halves the file losslessly). Usage::

    python3 scripts/record_real_factors.py                 # writes tests/data/real_factors.pt
    python3 scripts/record_real_factors.py --out /tmp/f.pt --steps 1 10
"""

import argparse
import time
from dataclasses import replace
from pathlib import Path

import torch
from distributed_shampoo import (
    DistributedShampoo,
    EigenConfig,
    RootInvShampooPreconditionerConfig,
)

import distributed_shampoo_dash as dash
from distributed_shampoo_dash.benchmarks.cli import HelpFormatter
from distributed_shampoo_dash.examples import llama
from distributed_shampoo_dash.paper_defaults import PAPER_SETTINGS

DEFAULT_OUT = Path(__file__).resolve().parents[1] / "tests" / "data" / "real_factors.pt"
DEFAULT_STEPS = (1, 10, 50, 300)
#: The paper's settings with blocks of 128 (every matrix of the model is one block).
SETTINGS = replace(PAPER_SETTINGS, max_preconditioner_dim=128)
EPSILON = SETTINGS.epsilon
#: The recorded parameters: one of every kind, both layers' attention and MLP inputs.
RECORDED = {
    "embed.weight": "embedding",
    "layers.0.attention.q_proj.weight": "attention",
    "layers.1.attention.o_proj.weight": "attention",
    "layers.0.mlp.gate_proj.weight": "mlp",
    "head.weight": "head",
    "layers.0.attention_norm.weight": "norm",
    "norm.weight": "norm",
}
MODEL = llama.LlamaConfig(
    hidden_size=128, num_layers=2, num_heads=4, ffn_hidden_size=352, seq_len=128
)
BATCH_SIZE = 16


def build_parser() -> argparse.ArgumentParser:
    """The command line (see the module docstring)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="file to write")
    parser.add_argument(
        "--steps", type=int, nargs="+", default=list(DEFAULT_STEPS), help="steps to record"
    )
    return parser


def upper_triangle(matrix: torch.Tensor) -> torch.Tensor:
    """The entries of a symmetric ``(d, d)`` matrix on and above the diagonal, row by row."""
    if not torch.equal(matrix, matrix.mT):
        raise ValueError("Expected an exactly symmetric factor matrix.")
    rows, columns = torch.triu_indices(*matrix.shape)
    return matrix[rows, columns].clone()


def record(steps: list[int]) -> list[dict[str, object]]:
    """Trains the model and returns the selected factor matrices at each of ``steps``."""
    torch.manual_seed(0)
    model = llama.Llama(MODEL)
    names = [name for name, _ in model.named_parameters()]
    missing = set(RECORDED) - set(names)
    if missing:
        raise SystemExit(f"Parameters not in the model: {sorted(missing)}; names are {names}.")
    optimizer = DistributedShampoo(
        model.parameters(),
        lr=1e-3,
        start_preconditioning_step=SETTINGS.precondition_frequency,
        preconditioner_config=RootInvShampooPreconditionerConfig(
            amortized_computation_config=EigenConfig()
        ),
        **SETTINGS.shampoo_kwargs(),
    )
    corpus = llama.load_stdlib_corpus()
    generator = torch.Generator().manual_seed(1)
    factors: list[dict[str, object]] = []
    for step in range(1, max(steps) + 1):
        windows = llama.random_windows(corpus.train, BATCH_SIZE, MODEL.seq_len, generator)
        inputs, targets = llama.split_windows(windows)
        optimizer.zero_grad()
        llama.causal_lm_loss(model(inputs), targets).backward()
        optimizer.step()
        if step not in steps:
            continue
        for inverse_factor in dash.inverse_factors(optimizer):
            param = names[int(inverse_factor.name.split(".")[0])]
            if param in RECORDED:
                factors.append(
                    {
                        "step": step,
                        "param": param,
                        "factor": inverse_factor.name,
                        "kind": RECORDED[param],
                        "root": int(inverse_factor.root),
                        "dim": inverse_factor.matrix.shape[0],
                        "upper": upper_triangle(inverse_factor.matrix.detach().float()),
                    }
                )
    return factors


def main() -> None:
    args = build_parser().parse_args()
    start = time.perf_counter()
    factors = record(sorted(set(args.steps)))
    description = (
        f"{len(factors)} bias-corrected Shampoo factor matrices of a byte-level Llama "
        f"({MODEL.hidden_size} wide, {MODEL.num_layers} layers) trained on the Python standard "
        f"library with upstream DistributedShampoo (EigenConfig, epsilon {EPSILON}), steps "
        f"{sorted(set(args.steps))}; written by scripts/record_real_factors.py"
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"description": description, "epsilon": EPSILON, "factors": factors}, args.out)
    print(
        f"{description}\n-> {args.out} ({args.out.stat().st_size / 2**20:.1f} MiB, "
        f"{time.perf_counter() - start:.0f} s)"
    )


if __name__ == "__main__":
    main()
