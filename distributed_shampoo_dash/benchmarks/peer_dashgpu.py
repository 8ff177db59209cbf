"""The DASH authors' optimizer, ``DashGpu`` of ``ista-daslab-optimizers``, for side-by-side rows.

The package is used at run time when it is importable, never copied. Install it on the GPU
machine without its dependencies (they include CUDA kernel builds)::

    python3 -m pip install --no-deps ista-daslab-optimizers

Its top-level ``__init__`` imports every optimizer of the package and their dependencies
(``gpustat``, compiled kernels), which ``--no-deps`` leaves out, so :func:`load` imports its
``dash`` subpackage alone; ``wandb``, which that subpackage imports only to log statistics, is
replaced by an empty module when it is not installed. Its coupled Newton in fp16 runs Triton
kernels (a CUDA GPU and ``triton``, which CUDA builds of torch ship with).

Settings (:data:`SETTINGS`): coupled Newton with fp16 products (the authors' fastest setting that
stays finite on the GPU preset) and Newton-DB in fp32, ten iterations each, with the
hyper-parameters of the step benchmark's rows
(:mod:`~distributed_shampoo_dash.benchmarks.step_rows`) where ``DashConfig`` has them (the DASH
paper's, ``PAPER_SETTINGS``: factor EMA 0.95, gradient EMA 0.9, Adam grafting 0.95 / 1e-8, epsilon
1e-10; the preset's block size and the precondition frequency); everything else is ``DashConfig``'s
default (1-D parameters use AdamW).
"""

import dataclasses
import importlib
import importlib.util
import sys
import types
from dataclasses import dataclass
from typing import Any

import torch

from distributed_shampoo_dash.paper_defaults import PAPER_SETTINGS

PACKAGE = "ista_daslab_optimizers"
#: Modules the ``dash`` subpackage imports only for logging, replaced by empty ones if absent.
LOGGING_ONLY_MODULES = ("wandb",)


@dataclass(frozen=True)
class DashGpuSetting:
    """One way to run ``DashGpu``.

    Attributes:
        label (str): Row label.
        method (str): Name of a ``DashInverseRootMethodType`` member (``"CN"``, ``"NDB"``, ...).
        matmul_dtype (torch.dtype): Dtype of the inverse-root products.
    """

    label: str
    method: str
    matmul_dtype: torch.dtype


SETTINGS = (
    DashGpuSetting("DashGpu coupled Newton fp16", "CN", torch.float16),
    DashGpuSetting("DashGpu Newton-DB fp32", "NDB", torch.float32),
)


@dataclass(frozen=True)
class Peer:
    """The loaded ``dash`` subpackage and how it was loaded.

    Attributes:
        module (types.ModuleType): ``ista_daslab_optimizers.dash``.
        version (str): The installed package version.
        stubbed (tuple[str, ...]): Modules replaced by empty ones.
    """

    module: types.ModuleType
    version: str
    stubbed: tuple[str, ...]


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("ista-daslab-optimizers")
    except PackageNotFoundError:
        return "unknown"


def load() -> tuple[Peer | None, str]:
    """``(peer, "")`` if ``DashGpu`` can be imported, else ``(None, why not)``."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or spec.submodule_search_locations is None:
        return None, f"{PACKAGE} is not installed (pip install --no-deps ista-daslab-optimizers)"
    stubbed = []
    for name in LOGGING_ONLY_MODULES:
        if name not in sys.modules and importlib.util.find_spec(name) is None:
            sys.modules[name] = types.ModuleType(name)
            stubbed.append(name)
    try:
        module = importlib.import_module(f"{PACKAGE}.dash")
    except ImportError:
        # The top-level __init__ failed on a dependency of another optimizer: import the dash
        # subpackage under an empty parent package instead.
        parent = types.ModuleType(PACKAGE)
        parent.__path__ = list(spec.submodule_search_locations)
        parent.__spec__ = spec
        sys.modules[PACKAGE] = parent
        try:
            module = importlib.import_module(f"{PACKAGE}.dash")
        except Exception as error:  # noqa: BLE001 - any import failure is reported, not raised
            return None, f"{PACKAGE}.dash does not import: {type(error).__name__}: {error}"
    if not hasattr(module, "DashGpu") or not hasattr(module, "DashConfig"):
        return None, f"{PACKAGE}.dash has no DashGpu/DashConfig (version {_version()})"
    return Peer(module, _version(), tuple(stubbed)), ""


def config_fields(
    peer: Peer, setting: DashGpuSetting, block_size: int, precondition_frequency: int
) -> dict[str, Any]:
    """The ``DashConfig`` fields set for ``setting`` (only those the installed version has)."""
    wanted: dict[str, Any] = {
        "inv_root_method": getattr(peer.module.DashInverseRootMethodType, setting.method),
        "matmul_dtype": setting.matmul_dtype,
        "newton_steps": 10,
        "block_size": block_size,
        "inv_root_freq": precondition_frequency,
        "beta_G": PAPER_SETTINGS.betas[0],
        "beta_LR": PAPER_SETTINGS.betas[1],
        "beta_graft": PAPER_SETTINGS.grafting_beta2,
        "eps_grafting": PAPER_SETTINGS.grafting_epsilon,
        "eps_inv_root": PAPER_SETTINGS.epsilon,
    }
    known = {field.name for field in dataclasses.fields(peer.module.DashConfig)}
    return {name: value for name, value in wanted.items() if name in known}


def make_optimizer(
    peer: Peer,
    params: list[torch.nn.Parameter],
    setting: DashGpuSetting,
    block_size: int,
    precondition_frequency: int,
) -> torch.optim.Optimizer:
    """A ``DashGpu`` over ``params`` (lr 1e-3, no weight decay) with ``setting``."""
    config = peer.module.DashConfig(
        **config_fields(peer, setting, block_size, precondition_frequency)
    )
    optimizer: torch.optim.Optimizer = peer.module.DashGpu(
        [{"params": params}], lr=1e-3, weight_decay=0.0, config=config
    )
    return optimizer


def computes_roots(step: int, precondition_frequency: int) -> bool:
    """Whether 1-based ``step`` computes inverse roots in ``DashGpu`` (also at its first step)."""
    return step == 1 or step % precondition_frequency == 0
