"""Per-block bookkeeping shared by the coupled iterations (Newton-DB and coupled Newton).

All blocks of a stack advance together, one batched product at a time. Each block keeps its
*best* iterate so far, judged by a residual the iteration computes anyway (in the working dtype,
so that an fp64 iteration is not judged at float32 resolution), and stops taking new iterates
once it reaches the tolerance or its residual increases (a diverging block is thus frozen at its
best iterate, never at a worse or non-finite one; a block whose residual only stalls, as when a
tiny eigenvalue is still growing below the resolution of the residual, keeps iterating). Stopping
is a ``torch.where`` on the device, so no host synchronisation happens unless the caller asks for
an early exit check, which costs one ``any()`` read every ``early_exit_check_interval``
iterations.
"""

from dataclasses import dataclass

import torch
from torch import Tensor

from distributed_shampoo_dash.solvers.checks import (
    MAX_ITERATIONS,
    check_bool,
    check_int,
    check_real,
)
from distributed_shampoo_dash.solvers.linalg import select_blocks
from distributed_shampoo_dash.solvers.precision import MatmulPrecision


@dataclass(frozen=True, kw_only=True)
class IterationControl:
    """How long a coupled iteration runs.

    Attributes:
        num_iterations (int): Iterations at the solver's precision, ``1 .. 1000`` (the maximum
            when ``tolerance > 0``).
        tolerance (float): A block stops once its residual is ``<= tolerance``; 0 runs every block
            until its residual stops decreasing or the iterations run out. (Default: 0.0)
        refinement_iterations (int): Further iterations with fp32 products after the
            ``num_iterations`` ones, continuing from each block's best iterate, ``0 .. 1000``.
            (Default: 0)
        early_exit_check_interval (int | None): If set, every this many iterations the loop reads
            ``any(active)`` on the host (one synchronisation) and ends when no block is active.
            ``None`` never synchronises. (Default: None)
        stop_at_best (bool): Stop a block when its residual increases and return its best
            iterate. False keeps iterating every block above the tolerance and returns its last
            iterate, as upstream's coupled Newton does. (Default: True)
    """

    num_iterations: int
    tolerance: float = 0.0
    refinement_iterations: int = 0
    early_exit_check_interval: int | None = None
    stop_at_best: bool = True

    def __post_init__(self) -> None:
        checked: dict[str, object] = {
            "num_iterations": check_int(
                self.num_iterations, "num_iterations", minimum=1, maximum=MAX_ITERATIONS
            ),
            "tolerance": check_real(self.tolerance, "tolerance"),
            "refinement_iterations": check_int(
                self.refinement_iterations,
                "refinement_iterations",
                minimum=0,
                maximum=MAX_ITERATIONS,
            ),
            "stop_at_best": check_bool(self.stop_at_best, "stop_at_best"),
        }
        if self.early_exit_check_interval is not None:
            checked["early_exit_check_interval"] = check_int(
                self.early_exit_check_interval, "early_exit_check_interval", minimum=1
            )
        for name, value in checked.items():
            object.__setattr__(self, name, value)

    def phases(self, precision: MatmulPrecision) -> list[tuple[MatmulPrecision, int]]:
        """``(precision, iterations)`` of the main phase and, if any, the fp32 refinement phase."""
        phases = [(precision, self.num_iterations)]
        if self.refinement_iterations > 0:
            phases.append((precision.full, self.refinement_iterations))
        return phases

    def should_exit(self, iteration: int, tracker: "BestIterateTracker") -> bool:
        """Host-side early exit test, run only every ``early_exit_check_interval`` iterations."""
        interval = self.early_exit_check_interval
        return interval is not None and iteration % interval == 0 and not tracker.any_active()


class BestIterateTracker:
    """Keeps, per block, the iterate with the smallest residual seen so far.

    The first :meth:`offer` (and the first after :meth:`restart`) takes the iterates of every
    block unconditionally; later offers take them only for active blocks whose residual improved.

    Args:
        tolerance (float): Blocks whose residual is at or below it stop taking iterates.
        stop_at_best (bool): Take only improving iterates (else every iterate of an active block).
    """

    def __init__(self, tolerance: float, stop_at_best: bool = True) -> None:
        self.tolerance = tolerance
        self.stop_at_best = stop_at_best
        self.best: tuple[Tensor, ...] = ()
        self.best_residual: Tensor | None = None
        self.active: Tensor | None = None

    def offer(
        self, iterates: tuple[Tensor, ...], residual: Tensor, error: Tensor | None = None
    ) -> None:
        """Records ``iterates`` (each ``(N, d, d)``) with their ``(N,)`` ``residual``.

        ``error`` (``(N,)``, default ``residual``) is what the tolerance is tested against, for
        iterations whose stopping test (e.g. upstream's entrywise ``max |M - I|``) is not a
        monotone measure of progress.
        """
        error = residual if error is None else error
        if self.best_residual is None or self.active is None:
            self.best, self.best_residual = iterates, residual
            self.active = torch.isfinite(residual) & (error > self.tolerance)
            return
        improved = (
            self.active & (residual <= self.best_residual) if self.stop_at_best else self.active
        )
        self.best = tuple(
            select_blocks(improved, new, old) for new, old in zip(iterates, self.best, strict=True)
        )
        self.best_residual = torch.where(improved, residual, self.best_residual)
        self.active = improved & (error > self.tolerance)

    def restart(self) -> None:
        """Starts a new phase: the next offer, of the best iterates re-measured, resets the
        record.
        """
        self.best_residual = None

    def any_active(self) -> bool:
        """Host read of whether any block still takes iterates (one synchronisation)."""
        return self.active is None or bool(self.active.any())
