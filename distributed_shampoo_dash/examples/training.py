"""Shared pieces of the example training programs: presets, devices, timing and progress.

Used by ``examples/train_distributed.py`` and ``scripts/quality_study.py``; torch only (the
optimizer is built by each program).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import torch

from distributed_shampoo_dash.paper_defaults import PAPER_SETTINGS

#: Shampoo epsilon per solver when --epsilon is not given, where it is not the paper's
#: (:func:`shampoo_epsilon`): coupled Newton's iteration (upstream's and DASH's alike) diverges on
#: the rank-deficient factors of the first root computations of this model at 1e-10 and 1e-8
#: (PreconditionerValueError).
DEFAULT_EPSILON = {"coupled-newton": 1e-6}


def shampoo_epsilon(solver: str) -> float:
    """The Shampoo epsilon of ``solver`` (a ``--solver`` name) when none is given: the paper's
    (:data:`~distributed_shampoo_dash.paper_defaults.PAPER_SETTINGS`), or :data:`DEFAULT_EPSILON`'s
    entry."""
    return DEFAULT_EPSILON.get(solver, PAPER_SETTINGS.epsilon)


@dataclass(frozen=True)
class Preset:
    """Model size and batch defaults of a ``--preset`` (each can be overridden by its flag)."""

    hidden_size: int
    num_layers: int
    num_heads: int
    ffn_hidden_size: int
    seq_len: int
    batch_size: int
    max_preconditioner_dim: int


PRESETS = {
    # 0.12M parameters: every factor is 64 x 64, many same-shaped blocks to stack.
    "tiny": Preset(64, 2, 4, 128, 64, 8, 64),
    # 3.5M parameters: whole matrices (up to 768 x 256) as blocks, the paper's block limit.
    "small": Preset(256, 4, 4, 768, 128, 16, PAPER_SETTINGS.max_preconditioner_dim),
}


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows defaults, except the unset ones (``None``: taken from the preset or the solver)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default is None or action.default is False:
            return action.help
        return super()._get_help_string(action)


def pick_device(choice: str, local_rank: int) -> torch.device:
    """``cuda:<local_rank>`` or ``cpu`` for ``--device``."""
    use_cuda = torch.cuda.is_available() if choice == "auto" else choice == "cuda"
    if not use_cuda:
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise SystemExit("--device cuda, but torch.cuda.is_available() is False.")
    if local_rank >= torch.cuda.device_count():
        raise SystemExit(
            f"LOCAL_RANK {local_rank} has no GPU ({torch.cuda.device_count()} visible): "
            "use one process per GPU (--nproc_per_node <= number of GPUs)."
        )
    torch.cuda.set_device(local_rank)
    return torch.device("cuda", local_rank)


def synchronize(device: torch.device) -> None:
    """Waits for queued device work (CUDA) so that host timers measure it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def mean_ms(times: list[float]) -> str:
    """Mean of ``times`` (seconds) in milliseconds, formatted; ``n/a`` when empty."""
    return f"{1e3 * sum(times) / len(times):.1f} ms" if times else "n/a"


class Progress(Protocol):
    def update(self, n: int = 1) -> Any: ...
    def set_postfix_str(self, s: str = "", refresh: bool = True) -> Any: ...
    def close(self) -> Any: ...


class TextProgress:
    """A plain progress line on stderr for when tqdm is not installed.

    On a terminal the line is rewritten at every step; otherwise (logs, pipes) a line is printed
    at every tenth of the run. ``enabled=False`` prints nothing (ranks other than 0).
    """

    def __init__(self, total: int, enabled: bool = True, stream: Any = sys.stderr) -> None:
        self.total, self.count, self.postfix, self.stream = total, 0, "", stream
        self.enabled = enabled
        self.interactive = enabled and bool(getattr(stream, "isatty", lambda: False)())
        self.every = max(1, total // 10)
        self.start = time.perf_counter()

    def _line(self) -> str:
        width = 24
        filled = width * self.count // max(1, self.total)
        elapsed = time.perf_counter() - self.start
        return (
            f"train [{'#' * filled}{'.' * (width - filled)}] {self.count}/{self.total} "
            f"{elapsed:.1f}s {self.postfix}"
        )

    def update(self, n: int = 1) -> None:
        self.count += n
        if self.interactive:
            self.stream.write("\r" + self._line())
            self.stream.flush()
        elif self.enabled and (self.count % self.every == 0 or self.count == self.total):
            print(self._line(), file=self.stream, flush=True)

    def set_postfix_str(self, s: str = "", refresh: bool = True) -> None:
        self.postfix = s

    def close(self) -> None:
        if self.interactive:
            self.stream.write("\n")
            self.stream.flush()


def make_progress(total: int, enabled: bool) -> tuple[Progress, Callable[[str], None]]:
    """A progress bar and a function that prints a line above it; both silent unless ``enabled``.

    The bar is tqdm's if tqdm is importable, else a :class:`TextProgress`.
    """
    try:
        from tqdm import tqdm
    except ImportError:
        progress = TextProgress(total, enabled)

        def write(message: str) -> None:
            if progress.interactive:
                sys.stderr.write("\r\033[K")  # clear the progress line first
            if enabled:
                print(message, flush=True)

        return progress, write

    def tqdm_write(message: str) -> None:
        if enabled:
            tqdm.write(message)

    return tqdm(total=total, desc="train", dynamic_ncols=True, disable=not enabled), tqdm_write
