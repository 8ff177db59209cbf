"""TF32 products on any device: what a GPU's tensor cores compute, emulated where there are none.

An NVIDIA GPU runs a float32 matrix product on TF32 tensor cores when
``torch.backends.cuda.matmul.fp32_precision`` is ``"tf32"``: each operand element is rounded to TF32
(10 mantissa bits, round to nearest even) and the products are accumulated in fp32. A CPU ignores
the switch and computes in fp32. Inside :class:`EmulatedTF32` a CPU (or a GPU) computes what the
tensor cores would: every float32 ``mm``, ``bmm``, ``addmm`` and ``baddbmm`` (in place or not)
dispatched while the switch reads ``"tf32"`` has its two matrix operands rounded to TF32 first
(:func:`~distributed_shampoo_dash.solvers.precision.round_to_tf32`); the additive input of
``addmm``/``baddbmm`` and the accumulation stay fp32, as on the GPU. Products the switch leaves at
``"ieee"`` (or ``"none"``, torch's default) are untouched. ::

    from distributed_shampoo_dash.solvers import MatmulPrecision
    from distributed_shampoo_dash.solvers.minimax import minimax_inverse_root
    from distributed_shampoo_dash.solvers.tf32 import EmulatedTF32

    with EmulatedTF32():  # the roots an H100 would return
        result = minimax_inverse_root(stack, 4, precision=MatmulPrecision.TF32)

The solvers request TF32 through that switch on every device
(:func:`~distributed_shampoo_dash.solvers.precision.batched_matmul`), so code that runs on a GPU
runs its tensor-core products emulated here unchanged. The emulation reproduces an H100's measured
TF32 error on a batched Newton-DB inverse root (5.30e-4 against 5.39e-4 measured); truncating the
dropped bits instead gives 8e-4 to 1.2e-3. It builds on ``torch.utils._python_dispatch``, a
private torch module, as the package's step counters do.
"""

from typing import Any

import torch
from torch._ops import OpOverload
from torch.utils._python_dispatch import TorchDispatchMode

from distributed_shampoo_dash.solvers.precision import round_to_tf32

aten = torch.ops.aten

#: Products whose matrix operands TF32 rounds, with the positions of those operands.
_MATRIX_OPERANDS: dict[OpOverload, tuple[int, int]] = {
    aten.mm.default: (0, 1),
    aten.bmm.default: (0, 1),
    aten.addmm.default: (1, 2),
    aten.baddbmm.default: (1, 2),
    aten.addmm_.default: (1, 2),
    aten.baddbmm_.default: (1, 2),
}


def tf32_requested() -> bool:
    """Whether torch's switch asks for TF32 float32 products now."""
    return torch.backends.cuda.matmul.fp32_precision == "tf32"


class EmulatedTF32(TorchDispatchMode):
    """Rounds the operands of float32 products to TF32 while torch's switch asks for TF32.

    Attributes:
        products (int): Float32 products it rounded so far.
    """

    def __init__(self) -> None:
        super().__init__()
        self.products = 0

    def __torch_dispatch__(
        self,
        func: OpOverload,
        types: Any,
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
    ) -> Any:
        operands = _MATRIX_OPERANDS.get(func)
        if (
            operands is not None
            and tf32_requested()
            and all(args[i].dtype == torch.float32 for i in operands)
        ):
            args = tuple(round_to_tf32(a) if i in operands else a for i, a in enumerate(args))
            self.products += 1
        return func(*args, **(kwargs or {}))
