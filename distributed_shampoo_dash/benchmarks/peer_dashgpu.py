"""The DASH authors' optimizer, ``DashGpu`` of ``ista-daslab-optimizers``, for side-by-side rows.

The package is used at run time when it is importable, never copied. Install it on the GPU
machine without its dependencies (they include CUDA kernel builds)::

    python3 -m pip install --no-deps ista-daslab-optimizers

Its top-level ``__init__`` imports every optimizer of the package and their dependencies
(``gpustat``, compiled kernels), which ``--no-deps`` leaves out, so :func:`load` imports its
``dash`` subpackage alone; ``wandb``, which that subpackage imports only to log statistics, is
replaced by an empty module when it is not installed. Its coupled Newton in fp16 runs Triton
kernels (a CUDA GPU and ``triton``, which CUDA builds of torch ship with): without ``triton`` it
does not import, unless :func:`load` is asked for stand-ins (for tracing on the ``meta`` device,
where no Triton kernel runs): its two kernel modules (:data:`TRITON_KERNEL_MODULES`) are then
replaced by modules whose kernels raise, and :func:`aten_kernels` runs the one kernel on a step's
path (``ns_line_1``, ``A A^T`` of the fp16 coupled Newton) as an aten product (the Triton kernel
computes the lower-triangle tiles only, about half the FLOPs the aten product counts; the GPU time
model, :mod:`~distributed_shampoo_dash.gpu_time_model`, prices the aten product).

Settings (:data:`SETTINGS`, the step benchmark's side-by-side rows): coupled Newton with fp16
products (the authors' fastest setting that stays finite on the GPU preset) and Newton-DB in fp32;
:data:`RECORDED_SETTINGS` adds every other setting whose step time was recorded on one H100
(``shared/measurements/README.md``: eigh, coupled Newton fp32, Chebyshev, Newton-DB bf16). Each is
run as recorded, with the DASH paper's hyper-parameters where ``DashConfig`` has them
(``PAPER_SETTINGS``: factor EMA 0.95, gradient EMA 0.9, Adam grafting 0.95 / 1e-8; epsilon 1e-10
for eigh and Chebyshev, 0 for the Newton methods; ten Newton iterations, Chebyshev degree 60,
multi-vector power-iteration scaling; the preset's block size and the precondition frequency,
preconditioning from step 1); everything else is ``DashConfig``'s default (1-D parameters use
AdamW).
"""

import dataclasses
import importlib
import importlib.util
import sys
import types
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch

from distributed_shampoo_dash.paper_defaults import PAPER_SETTINGS
from distributed_shampoo_dash.step_costs import patched

PACKAGE = "ista_daslab_optimizers"
#: Modules the ``dash`` subpackage imports only for logging, replaced by empty ones if absent.
LOGGING_ONLY_MODULES = ("wandb",)
#: The package's Triton kernel modules and the kernels ``dash`` imports from them, replaced by
#: kernels that raise where ``triton`` does not import.
TRITON_KERNEL_MODULES = {
    f"{PACKAGE}.utils.triton_kernels": ("update_dash_preconditioner",),
    f"{PACKAGE}.utils.newton_schulz_triton": ("ns_line_1",),
}


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

    @property
    def eps_inv_root(self) -> float:
        """The paper's epsilon for this method: ``PAPER_SETTINGS.epsilon`` for eigh and
        Chebyshev, 0 for the Newton methods."""
        return PAPER_SETTINGS.epsilon if self.method in ("EVD", "CBSHV") else 0.0


SETTINGS = (
    DashGpuSetting("DashGpu coupled Newton fp16", "CN", torch.float16),
    DashGpuSetting("DashGpu Newton-DB fp32", "NDB", torch.float32),
)
#: Every setting with a step time recorded on one H100 (``SETTINGS`` first).
RECORDED_SETTINGS = (
    *SETTINGS,
    DashGpuSetting("DashGpu eigh fp32", "EVD", torch.float32),
    DashGpuSetting("DashGpu coupled Newton fp32", "CN", torch.float32),
    DashGpuSetting("DashGpu Chebyshev fp32", "CBSHV", torch.float32),
    DashGpuSetting("DashGpu Newton-DB bf16", "NDB", torch.bfloat16),
)
#: Chebyshev degree of the recorded runs (the DASH paper's).
CHEBYSHEV_DEGREE = 60


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


def _kernel_needing_triton(name: str) -> Any:
    def kernel(*args: object, **kwargs: object) -> None:
        raise RuntimeError(f"DashGpu's {name} is a Triton kernel: it needs triton and a CUDA GPU")

    return kernel


def _stub_triton_kernels() -> None:
    """Puts modules of raising kernels in the place of :data:`TRITON_KERNEL_MODULES`."""
    for module_name, kernels in TRITON_KERNEL_MODULES.items():
        if module_name not in sys.modules:
            module = types.ModuleType(module_name)
            for kernel in kernels:
                setattr(module, kernel, _kernel_needing_triton(kernel))
            sys.modules[module_name] = module


def load(*, triton_stand_ins: bool = False) -> tuple[Peer | None, str]:
    """``(peer, "")`` if ``DashGpu`` can be imported, else ``(None, why not)``. Without ``triton``
    it imports only with ``triton_stand_ins`` (its Triton kernels then raise; see the module
    docstring)."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or spec.submodule_search_locations is None:
        return None, f"{PACKAGE} is not installed (pip install --no-deps ista-daslab-optimizers)"
    has_triton = importlib.util.find_spec("triton") is not None
    if not (has_triton or triton_stand_ins):
        return None, "its kernels need triton (CUDA builds of torch ship it), not installed"
    stubbed = []
    for name in LOGGING_ONLY_MODULES:
        if name not in sys.modules and importlib.util.find_spec(name) is None:
            sys.modules[name] = types.ModuleType(name)
            stubbed.append(name)
    if not has_triton:
        _stub_triton_kernels()
        stubbed += TRITON_KERNEL_MODULES
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
        "cbshv_degree": CHEBYSHEV_DEGREE,
        "matrix_scaling_type": peer.module.DashMatrixScalingType.POWER_ITER_MULTI,
        "block_size": block_size,
        "inv_root_freq": precondition_frequency,
        "start_prec_step": 1,
        "beta_G": PAPER_SETTINGS.betas[0],
        "beta_LR": PAPER_SETTINGS.betas[1],
        "beta_graft": PAPER_SETTINGS.grafting_beta2,
        "eps_grafting": PAPER_SETTINGS.grafting_epsilon,
        "eps_inv_root": setting.eps_inv_root,
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


def _aten_ns_line_1(A: torch.Tensor, *, out: torch.Tensor | None = None) -> torch.Tensor:
    """``A @ A^T`` (of each matrix of a stack) as one aten product, into ``out`` if given."""
    return torch.matmul(A, A.mT, out=out)


@contextmanager
def aten_kernels(peer: Peer) -> Iterator[None]:
    """Inside the block the fp16/bf16 coupled Newton of ``DashGpu`` computes ``A A^T`` with an aten
    product instead of its Triton kernel ``ns_line_1`` (same result; what a trace on ``meta`` can
    run and count). The factor update's Triton kernel is not on the step's path (``DashGpu`` uses
    ``bmm`` there)."""
    coupled_newton = importlib.import_module(f"{peer.module.__name__}.invertors.inv_cn")
    with patched(coupled_newton, "ns_line_1", _aten_ns_line_1):
        yield
