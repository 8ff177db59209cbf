"""Runs test jobs in fresh processes of this interpreter, with the repository importable."""

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def repository_environment(**extra: str) -> dict[str, str]:
    """This process's environment with the repository first on ``PYTHONPATH``, one thread per
    process, and ``extra`` on top."""
    return {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
        "OMP_NUM_THREADS": "1",
        **extra,
    }


def run_two_ranks(
    module: str, *args: str, environment: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """``torchrun --standalone --nproc_per_node=2 -m module *args`` from the repository root,
    output captured, at most 300 s."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    return subprocess.run(
        [*command, "-m", module, *args],
        env=environment or repository_environment(),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def run_python(code: str) -> subprocess.CompletedProcess[str]:
    """``python -c code`` from the repository root, output captured, at most 120 s."""
    return subprocess.run(
        [sys.executable, "-c", code],
        env=repository_environment(),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
