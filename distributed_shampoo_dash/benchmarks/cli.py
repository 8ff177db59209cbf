"""What every script of ``scripts/`` shares on its command line and in its outputs.

:class:`HelpFormatter` renders a script's docstring as written and every option's default unless
it is unset; :func:`device_name` names the machine a measurement ran on; :func:`write_json`
writes a result file, creating its folder.
"""

import argparse
import json
from pathlib import Path
from typing import Any

import torch

from distributed_shampoo_dash.examples import training


class HelpFormatter(argparse.RawDescriptionHelpFormatter, training.HelpFormatter):
    """A script's docstring as written, and every option's default unless it is unset (``None``
    or ``False``: its help says what happens then)."""


def device_name(device: torch.device) -> str:
    """The GPU's name, or ``CPU (<threads> threads)``."""
    return (
        torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else f"CPU ({torch.get_num_threads()} threads)"
    )


def write_json(path: Path, payload: Any, **dumps: Any) -> Path:
    """Writes ``payload`` as JSON (``json.dumps`` keywords, e.g. ``indent``) to ``path``, creating
    its folder; returns ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, **dumps))
    return path
