"""A small byte-level Llama-style language model and a byte-level text corpus, in plain torch.

Model: token embedding -> ``num_layers`` pre-norm transformer blocks (RMSNorm, causal
self-attention with rotary position embeddings, SwiGLU MLP) -> RMSNorm -> untied linear head.
Every linear layer is bias-free, so a model is a set of 2-D matrices plus the 1-D RMSNorm
weights: the shapes Shampoo preconditions in a real Llama, at a size that trains on a CPU.

Data: the Python standard library's own ``*.py`` files, read as bytes (vocabulary 256, no
tokenizer, no network). The files are those under ``sysconfig.get_paths()["stdlib"]`` (recursively,
skipping ``site-packages``/``dist-packages``), sorted by their path relative to that directory;
file ``i`` of that order goes to the validation split when ``i % validation_every ==
validation_every - 1`` (every 10th file by default), the others to the training split. Each split is
the concatenation of its files, each followed by one ``\\x00`` separator byte. The corpus therefore
depends only on the Python version (and distribution) that runs it; :attr:`ByteCorpus.description`
says which files were read. Training and evaluation draw random ``(batch, seq_len + 1)`` windows
from a split with a seeded ``torch.Generator``: ``windows[:, :-1]`` are the inputs and
``windows[:, 1:]`` the targets.

Reused by ``examples/train_distributed.py``; holds only the model and the data, no training loop.

Example::

    corpus = load_stdlib_corpus()
    model = Llama(
        LlamaConfig(hidden_size=64, num_layers=2, num_heads=4, ffn_hidden_size=128, seq_len=64)
    )
    generator = torch.Generator().manual_seed(0)
    inputs, targets = split_windows(random_windows(corpus.train, 8, 64, generator))
    loss = causal_lm_loss(model(inputs), targets)
"""

from __future__ import annotations

import math
import sysconfig
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "ByteCorpus",
    "CausalSelfAttention",
    "Llama",
    "LlamaConfig",
    "RMSNorm",
    "SwiGLU",
    "TransformerBlock",
    "causal_lm_loss",
    "load_stdlib_corpus",
    "random_windows",
    "split_windows",
    "stdlib_source_files",
]

#: Byte-level vocabulary: every byte value is a token.
BYTE_VOCAB_SIZE = 256
#: Byte appended after every file of a split (marks document boundaries).
DOCUMENT_SEPARATOR = b"\x00"
#: Directories under the stdlib path that hold installed packages, not the standard library.
EXCLUDED_DIRECTORIES = ("site-packages", "dist-packages")


# --------------------------------------------------------------------------------------------------
# Model
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LlamaConfig:
    """Shape of a :class:`Llama` model.

    Attributes:
        vocab_size (int): Number of tokens; 256 for bytes. (Default: 256)
        hidden_size (int): Model width ``H``. (Default: 256)
        num_layers (int): Number of transformer blocks. (Default: 4)
        num_heads (int): Attention heads; must divide ``hidden_size``. (Default: 4)
        ffn_hidden_size (int): Inner width ``F`` of the SwiGLU MLP. (Default: 768)
        seq_len (int): Longest sequence the rotary tables cover. (Default: 128)
        rope_theta (float): Rotary base frequency. (Default: 10000.0)
        norm_eps (float): RMSNorm epsilon. (Default: 1e-5)
        init_std (float): Standard deviation of the normal initialisation; the two residual
            output projections of each block use ``init_std / sqrt(2 * num_layers)``.
            (Default: 0.02)
    """

    vocab_size: int = BYTE_VOCAB_SIZE
    hidden_size: int = 256
    num_layers: int = 4
    num_heads: int = 4
    ffn_hidden_size: int = 768
    seq_len: int = 128
    rope_theta: float = 10000.0
    norm_eps: float = 1e-5
    init_std: float = 0.02

    def __post_init__(self) -> None:
        for name in (
            "vocab_size",
            "hidden_size",
            "num_layers",
            "num_heads",
            "ffn_hidden_size",
            "seq_len",
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"Invalid {name}={value!r}. Must be an int >= 1.")
        if self.hidden_size % self.num_heads != 0:
            raise ValueError(
                f"hidden_size={self.hidden_size} must be divisible by num_heads={self.num_heads}."
            )
        if self.head_dim % 2 != 0:
            raise ValueError(f"head_dim={self.head_dim} must be even for rotary embeddings.")

    @property
    def head_dim(self) -> int:
        """Width of one attention head, ``hidden_size // num_heads``."""
        return self.hidden_size // self.num_heads


class RMSNorm(nn.Module):
    """Root-mean-square layer norm with a learned scale.

    ``y = x / sqrt(mean(x^2, -1) + eps) * weight``; input and output ``(..., H)``, weight ``(H,)``.
    """

    def __init__(self, hidden_size: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(hidden_size))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x``: ``(..., H)`` -> ``(..., H)``."""
        normed = x.float() * torch.rsqrt(x.float().pow(2).mean(dim=-1, keepdim=True) + self.eps)
        return normed.type_as(x) * self.weight


def rotary_tables(seq_len: int, head_dim: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Cosine and sine tables of rotary embeddings, each ``(seq_len, head_dim // 2)`` (fp32)."""
    frequencies = 1.0 / theta ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim)
    angles = torch.outer(torch.arange(seq_len, dtype=torch.float64), frequencies)
    return angles.cos().float(), angles.sin().float()


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotates pairs ``(x[..., :D/2], x[..., D/2:])`` by position-dependent angles.

    Args:
        x: ``(B, heads, T, D)``.
        cos, sin: ``(T, D // 2)``.

    Returns:
        ``(B, heads, T, D)``, same dtype as ``x``.
    """
    first, second = x.float().chunk(2, dim=-1)
    rotated = torch.cat((first * cos - second * sin, first * sin + second * cos), dim=-1)
    return rotated.type_as(x)


class CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention with rotary embeddings on queries and keys.

    Separate bias-free ``(H, H)`` projections for queries, keys, values and output.
    """

    def __init__(self, config: LlamaConfig) -> None:
        super().__init__()
        self.num_heads = config.num_heads
        self.head_dim = config.head_dim
        self.q_proj = nn.Linear(config.hidden_size, config.hidden_size, bias=False)
        self.k_proj = nn.Linear(config.hidden_size, config.hidden_size, bias=False)
        self.v_proj = nn.Linear(config.hidden_size, config.hidden_size, bias=False)
        self.o_proj = nn.Linear(config.hidden_size, config.hidden_size, bias=False)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        """``x``: ``(B, T, H)``; ``cos``, ``sin``: ``(T, head_dim // 2)`` -> ``(B, T, H)``."""
        batch, length, hidden = x.shape

        def heads(projection: nn.Linear) -> torch.Tensor:  # (B, T, H) -> (B, heads, T, D)
            return projection(x).view(batch, length, self.num_heads, self.head_dim).transpose(1, 2)

        query = apply_rotary(heads(self.q_proj), cos, sin)
        key = apply_rotary(heads(self.k_proj), cos, sin)
        attended = F.scaled_dot_product_attention(query, key, heads(self.v_proj), is_causal=True)
        return self.o_proj(attended.transpose(1, 2).reshape(batch, length, hidden))


class SwiGLU(nn.Module):
    """Gated MLP ``down(silu(gate(x)) * up(x))``: ``(H -> F)`` twice, then ``(F -> H)``."""

    def __init__(self, config: LlamaConfig) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(config.hidden_size, config.ffn_hidden_size, bias=False)
        self.up_proj = nn.Linear(config.hidden_size, config.ffn_hidden_size, bias=False)
        self.down_proj = nn.Linear(config.ffn_hidden_size, config.hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x``: ``(B, T, H)`` -> ``(B, T, H)``."""
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class TransformerBlock(nn.Module):
    """Pre-norm block: ``x + attn(norm(x))``, then ``x + mlp(norm(x))``."""

    def __init__(self, config: LlamaConfig) -> None:
        super().__init__()
        self.attention_norm = RMSNorm(config.hidden_size, config.norm_eps)
        self.attention = CausalSelfAttention(config)
        self.mlp_norm = RMSNorm(config.hidden_size, config.norm_eps)
        self.mlp = SwiGLU(config)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        """``x``: ``(B, T, H)`` -> ``(B, T, H)``."""
        x = x + self.attention(self.attention_norm(x), cos, sin)
        return x + self.mlp(self.mlp_norm(x))


class Llama(nn.Module):
    """Byte-level Llama-style decoder with an untied output head.

    Parameters: ``embed.weight`` ``(V, H)``; per block four ``(H, H)`` attention projections,
    ``(F, H)`` gate and up, ``(H, F)`` down and two ``(H,)`` norm weights; ``norm.weight`` ``(H,)``;
    ``head.weight`` ``(V, H)``. The blocks are ``self.layers`` (a ``ModuleList``), the natural
    units to wrap one by one with ``fully_shard``.
    """

    rotary_cos: torch.Tensor
    rotary_sin: torch.Tensor

    def __init__(self, config: LlamaConfig) -> None:
        super().__init__()
        self.config = config
        self.embed = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(TransformerBlock(config) for _ in range(config.num_layers))
        self.norm = RMSNorm(config.hidden_size, config.norm_eps)
        self.head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        cos, sin = rotary_tables(config.seq_len, config.head_dim, config.rope_theta)
        self.register_buffer("rotary_cos", cos, persistent=False)
        self.register_buffer("rotary_sin", sin, persistent=False)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Normal(0, init_std) weights, scaled down on residual outputs; RMSNorm weights one."""
        std = self.config.init_std
        residual_std = std / math.sqrt(2 * self.config.num_layers)
        for name, parameter in self.named_parameters():
            if parameter.dim() == 1:
                nn.init.ones_(parameter)
            elif name.endswith(("o_proj.weight", "down_proj.weight")):
                nn.init.normal_(parameter, mean=0.0, std=residual_std)
            else:
                nn.init.normal_(parameter, mean=0.0, std=std)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """Next-token logits.

        Args:
            tokens: ``(B, T)`` integer tokens in ``[0, vocab_size)``, ``T <= config.seq_len``.

        Returns:
            ``(B, T, vocab_size)`` logits; position ``t`` predicts token ``t + 1``.
        """
        length = tokens.shape[1]
        if length > self.config.seq_len:
            raise ValueError(f"Sequence of {length} tokens exceeds seq_len={self.config.seq_len}.")
        cos, sin = self.rotary_cos[:length], self.rotary_sin[:length]
        x = self.embed(tokens)
        for layer in self.layers:
            x = layer(x, cos, sin)
        return self.head(self.norm(x))


def causal_lm_loss(
    logits: torch.Tensor, targets: torch.Tensor, reduction: str = "mean"
) -> torch.Tensor:
    """Cross entropy of ``logits`` ``(B, T, V)`` against ``targets`` ``(B, T)``, in nats per token.

    ``reduction="mean"`` gives a scalar; ``"none"`` gives ``(B, T)``.
    """
    losses = F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), reduction="none")
    losses = losses.view_as(targets)
    return losses.mean() if reduction == "mean" else losses


# --------------------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------------------


def stdlib_source_files(root: str | Path | None = None) -> list[Path]:
    """Every ``*.py`` file under ``root`` (default: this interpreter's stdlib), sorted by path.

    Files under ``site-packages``/``dist-packages`` are skipped. Sorting is by the POSIX path
    relative to ``root``, so the order does not depend on the file system.
    """
    base = Path(sysconfig.get_paths()["stdlib"] if root is None else root)
    files = [
        path
        for path in base.rglob("*.py")
        if path.is_file() and not set(EXCLUDED_DIRECTORIES) & set(path.relative_to(base).parts)
    ]
    return sorted(files, key=lambda path: path.relative_to(base).as_posix())


@dataclass(frozen=True)
class ByteCorpus:
    """The byte-level train and validation splits.

    Attributes:
        train (torch.Tensor): ``(N_train,)`` uint8, concatenated training files.
        validation (torch.Tensor): ``(N_validation,)`` uint8, concatenated validation files.
        num_train_files (int): Files in the training split.
        num_validation_files (int): Files in the validation split.
        description (str): Where the bytes came from and how they were split.
    """

    train: torch.Tensor
    validation: torch.Tensor
    num_train_files: int
    num_validation_files: int
    description: str


def load_stdlib_corpus(
    root: str | Path | None = None, validation_every: int = 10, max_files: int | None = None
) -> ByteCorpus:
    """Reads the stdlib sources as bytes and splits them by file.

    Args:
        root: Directory to read (default: ``sysconfig.get_paths()["stdlib"]``).
        validation_every: File ``i`` (0-based, in :func:`stdlib_source_files` order) is a
            validation file when ``i % validation_every == validation_every - 1``. (Default: 10)
        max_files: Read only the first ``max_files`` files of that order (for quick runs); the
            split rule is unchanged. (Default: all)

    Returns:
        The :class:`ByteCorpus`; both splits are non-empty.
    """
    if validation_every < 2:
        raise ValueError(f"Invalid validation_every={validation_every}. Must be >= 2.")
    files = stdlib_source_files(root)
    if max_files is not None:
        files = files[:max_files]
    train_parts: list[bytes] = []
    validation_parts: list[bytes] = []
    for index, path in enumerate(files):
        parts = (
            validation_parts if index % validation_every == validation_every - 1 else train_parts
        )
        parts.append(path.read_bytes() + DOCUMENT_SEPARATOR)
    if not train_parts or not validation_parts:
        raise ValueError(
            f"Need at least {validation_every} source files to split, found {len(files)} under "
            f"{root or sysconfig.get_paths()['stdlib']}."
        )

    def to_tensor(parts: list[bytes]) -> torch.Tensor:
        return torch.frombuffer(bytearray(b"".join(parts)), dtype=torch.uint8)

    train, validation = to_tensor(train_parts), to_tensor(validation_parts)
    base = Path(sysconfig.get_paths()["stdlib"] if root is None else root)
    description = (
        f"{len(files)} *.py files under {base} (every {validation_every}th to validation): "
        f"train {len(train_parts)} files / {train.numel() / 1e6:.1f} MB, "
        f"validation {len(validation_parts)} files / {validation.numel() / 1e6:.1f} MB"
    )
    return ByteCorpus(train, validation, len(train_parts), len(validation_parts), description)


def random_windows(
    data: torch.Tensor, batch_size: int, seq_len: int, generator: torch.Generator
) -> torch.Tensor:
    """``batch_size`` windows of ``seq_len + 1`` consecutive bytes at uniform random offsets.

    Args:
        data: ``(N,)`` uint8 split, ``N > seq_len``.
        batch_size: Number of windows ``B``.
        seq_len: Model sequence length ``T``.
        generator: CPU generator that picks the offsets (seed it for reproducible batches).

    Returns:
        ``(B, T + 1)`` int64 tokens on ``data``'s device.
    """
    if data.numel() <= seq_len:
        raise ValueError(f"Split of {data.numel()} bytes is too short for seq_len={seq_len}.")
    starts = torch.randint(0, data.numel() - seq_len, (batch_size,), generator=generator)
    offsets = starts[:, None] + torch.arange(seq_len + 1)
    return data[offsets.to(data.device)].long()


def split_windows(windows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(B, T + 1)`` windows -> inputs ``(B, T)`` and next-token targets ``(B, T)``."""
    return windows[:, :-1], windows[:, 1:]
