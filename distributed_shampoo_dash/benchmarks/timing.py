"""Device-synchronised wall time of repeated calls."""

import time
from collections.abc import Callable

import torch

from distributed_shampoo_dash.examples.training import synchronize


def timed_seconds(run: Callable[[], object], device: torch.device, repeats: int) -> list[float]:
    """Wall time of ``repeats`` device-synchronised calls of ``run`` (warm it up first)."""
    times = []
    for _ in range(repeats):
        synchronize(device)
        start = time.perf_counter()
        run()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return times
