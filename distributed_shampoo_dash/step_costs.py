"""What an optimizer step costs on a GPU, counted on any device (CPU and ``meta`` included).

On a GPU an optimizer step with many small blocks is bound by kernel launches and host
synchronisations, one with large blocks by its matrix products. All of these can be counted
exactly, whatever the device, by watching the aten ops a step dispatches
(``TorchDispatchMode``)::

    from distributed_shampoo_dash.step_costs import measure

    costs = measure(optimizer.step)  # runs one step
    costs.launches, costs.syncs, costs.flops, costs.peak_bytes

:func:`measure` returns a :class:`StepCosts`; the counters it combines can also be used alone:

* :class:`OpCounter`: dispatched aten ops, those of them that launch work (``launches``: every op
  but views, whose output aliases an input, and the metadata ops in :data:`NO_KERNEL_OPS`), the
  ``d x d`` matrix products (a ``(d, d) @ (d, d)`` product counts 1, a batched one ``N``), and
  FLOPs by ``torch.utils.flop_counter``'s formulas (:func:`op_flops`);
* :class:`SyncCounter`: reads of tensor values by the host, each of which waits for the device on
  a GPU: ``.item()`` and every other op in :data:`SYNC_OPS`, boolean-mask indexing, ``.tolist()``,
  and copies between devices;
* :class:`LiveBytes`: bytes of the tensors created while it is active and still alive, and their
  peak (the step's transient memory as the caching allocator would see it, less the work space
  that kernels allocate internally), overall and above the start of named phases (methods of
  objects wrapped while measuring, e.g. a preconditioner list's ``update_preconditioners``,
  where DASH's stacks and solver work space live);
* :func:`measure`: all of them around one call;
* :func:`meta_scaffolding`: what an optimizer step needs to run on the ``meta`` device (shapes
  only; host reads answered by :class:`MetaHostReads`), so its counts can be taken for models far
  too large for the machine at hand.

Caveats. A CPU run cannot tell a host tensor from a device one, so :class:`SyncCounter` also
counts reads of tensors a GPU run keeps on the host (upstream keeps its step counter there): the
counts of a step are an upper bound of its GPU synchronisations by a per-step constant. CUDA's
``linalg.eigh`` reads its error codes on the host after every call, so each eigh call counts as a
synchronisation here too. FLOPs are those ``torch.utils.flop_counter`` has formulas for (products,
convolutions, attention); ``eigh`` itself has none and counts 0.

The dispatch modes build on ``torch.utils._python_dispatch.TorchDispatchMode``, a private torch
module; the counts are tested against known calls and DASH steps (``tests/test_step_costs.py``,
``tests/test_step_costs_of_dash.py``). Torch only: no upstream import. Used by the step benchmark
(``scripts/benchmark.py``, ``docs/benchmarks.md``) and the GPU report.
"""

import weakref
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from typing import Any, NamedTuple, Self

import torch
from torch._ops import OpOverload
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import flop_registry
from torch.utils.weak import WeakIdKeyDictionary

aten = torch.ops.aten

#: Ops that read a tensor value on the host (a device synchronisation on a GPU).
SYNC_OPS = frozenset(
    {
        aten._local_scalar_dense.default,
        aten.nonzero.default,
        aten.nonzero_static.default,
        aten.masked_select.default,
        aten.equal.default,
        aten.unique_consecutive.default,
        aten._unique2.default,
        aten.repeat_interleave.Tensor,
        # CUDA checks eigh's per-matrix error codes on the host after every call.
        aten._linalg_eigh.default,
    }
)
#: Ops that launch no kernel besides views: shape and metadata bookkeeping.
NO_KERNEL_OPS = frozenset(
    {
        aten.detach.default,
        aten.lift_fresh.default,
        aten._unsafe_view.default,
        aten.empty.memory_format,
        aten.empty_strided.default,
        aten.empty_like.default,
        aten.new_empty.default,
        aten.new_empty_strided.default,
        aten.set_.source_Storage_storage_offset,
        aten.resize_.default,
        aten.sym_size.int,
        aten.sym_stride.int,
        aten.sym_numel.default,
        aten.sym_storage_offset.default,
        aten.is_same_size.default,
    }
)
#: Matrix products: ``mm`` ``(d, k) @ (k, n)`` and ``bmm`` ``(N, d, k) @ (N, k, n)``, with the
#: index of their two operands (``out=`` and ``out_dtype`` overloads included).
_PRODUCT_OPS: dict[object, tuple[int, int]] = {
    **{
        overload: (0, 1)
        for packet in (aten.mm, aten.bmm)
        for overload in (packet.default, packet.out, packet.dtype, packet.dtype_out)
    },
    **{
        overload: (1, 2)
        for packet in (aten.addmm, aten.baddbmm)
        for overload in (packet.default, packet.out, packet.dtype, packet.dtype_out)
    },
    aten.addmm_.default: (1, 2),
    aten.baddbmm_.default: (1, 2),
}
#: In-place products, priced by the formula of their out-of-place form.
_IN_PLACE_PRODUCTS = {aten.addmm_: aten.addmm, aten.baddbmm_: aten.baddbmm}


_ABSENT = object()


@contextmanager
def patched(owner: object, name: str, value: object) -> Iterator[None]:
    """Sets ``owner.name = value`` inside the block and restores exactly what was there (an
    attribute ``owner`` only inherited is deleted again)."""
    previous = vars(owner).get(name, _ABSENT)
    setattr(owner, name, value)
    try:
        yield
    finally:
        if previous is _ABSENT:
            delattr(owner, name)
        else:
            setattr(owner, name, previous)


def tensors_in(tree: object) -> list[torch.Tensor]:
    """The tensors among an op's arguments or result: a tensor, or tensors inside tuples, lists
    and dicts (the only containers aten ops take or return)."""
    if isinstance(tree, torch.Tensor):
        return [tree]
    if isinstance(tree, (tuple, list)):
        return [tensor for item in tree for tensor in tensors_in(item)]
    if isinstance(tree, dict):
        return [tensor for item in tree.values() for tensor in tensors_in(item)]
    return []


def launches_work(func: OpOverload) -> bool:
    """Whether an op launches at least one kernel on a GPU: neither a view (its output aliases an
    input) nor one of :data:`NO_KERNEL_OPS`."""
    return not (func.is_view or func in NO_KERNEL_OPS)


def square_products(func: object, args: tuple[Any, ...]) -> int:
    """``d x d`` products of one op: 1 for a square ``mm``, ``N`` for a square ``bmm``, else 0."""
    operands = _PRODUCT_OPS.get(func)
    if operands is None:
        return 0
    a, b = args[operands[0]], args[operands[1]]
    d = a.shape[-1]
    if a.shape[-2:] != (d, d) or b.shape[-2:] != (d, d):
        return 0
    return a.shape[0] if a.ndim == 3 else 1


def flop_formula(func: OpOverload) -> Callable[..., int] | None:
    """``torch.utils.flop_counter``'s FLOP formula for an op (in-place products: that of their
    out-of-place form), or None."""
    packet = func.overloadpacket
    return flop_registry.get(_IN_PLACE_PRODUCTS.get(packet, packet))


def op_flops(func: OpOverload, args: tuple[Any, ...], kwargs: dict[str, Any], out: Any) -> int:
    """FLOPs of one op that returned ``out``, by ``torch.utils.flop_counter``'s formula for it (0
    without one: only products, convolutions and attention have one). Overloads with an
    ``out_dtype`` argument (``bmm.dtype_out``: fp16 operands, fp32 result), whose extra positional
    argument the formulas do not take, pass their leading tensor operands only (all that a
    product's formula reads)."""
    formula = flop_formula(func)
    if formula is None:
        return 0
    if any(argument.name == "out_dtype" for argument in func._schema.arguments):
        operands = []
        for arg in args:
            if not isinstance(arg, torch.Tensor):
                break
            operands.append(arg)
        return int(formula(*operands, out_val=out))
    return int(formula(*args, **kwargs, out_val=out))


class OpCounter(TorchDispatchMode):
    """Counts the aten ops dispatched while active.

    Attributes:
        ops (int): Every dispatched op.
        launches (int): Ops that are neither views nor in :data:`NO_KERNEL_OPS` (each launches at
            least one kernel on a GPU).
        products (int): ``d x d`` matrix products (:func:`square_products`).
        flops (int): FLOPs (:func:`op_flops`).
        by_op (Counter[str]): Ops by name.
    """

    def __init__(self) -> None:
        super().__init__()
        self.ops = 0
        self.launches = 0
        self.products = 0
        self.flops = 0
        self.by_op: Counter[str] = Counter()

    def __torch_dispatch__(
        self,
        func: OpOverload,
        types: Sequence[type],
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
    ) -> Any:
        self.ops += 1
        self.by_op[str(func)] += 1
        if launches_work(func):
            self.launches += 1
        self.products += square_products(func, args)
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        self.flops += op_flops(func, args, kwargs, out)
        return out


def _is_boolean_index(func: object, args: tuple[Any, ...]) -> bool:
    """``x[mask]`` and ``x[mask] = y``: boolean indices need their count on the host."""
    if func not in (aten.index.Tensor, aten.index_put.default, aten.index_put_.default):
        return False
    return any(index is not None and index.dtype in (torch.bool, torch.uint8) for index in args[1])


def _is_copy_between_devices(func: object, args: tuple[Any, ...], kwargs: dict[str, Any]) -> bool:
    """A blocking copy between the host and another device (``non_blocking=True`` copies are
    asynchronous on CUDA: its sync debug mode does not flag them either)."""
    if func is aten._to_copy.default:
        target = kwargs.get("device")
        crosses = target is not None and torch.device(target).type != args[0].device.type
        return crosses and not kwargs.get("non_blocking", False)
    if func is aten.copy_.default:
        non_blocking = args[2] if len(args) > 2 else kwargs.get("non_blocking", False)
        return args[0].device.type != args[1].device.type and not non_blocking
    return False


def reads_on_host(func: object, args: tuple[Any, ...], kwargs: dict[str, Any]) -> bool:
    """Whether an op reads tensor values on the host (a device synchronisation on a GPU): an op of
    :data:`SYNC_OPS`, boolean-mask indexing, or a blocking copy between devices."""
    return (
        func in SYNC_OPS
        or _is_boolean_index(func, args)
        or _is_copy_between_devices(func, args, kwargs)
    )


class SyncCounter(TorchDispatchMode):
    """Counts host reads of tensor values while active (device synchronisations on a GPU).

    Counted: the ops of :data:`SYNC_OPS`, boolean-mask indexing, copies between devices, and
    ``Tensor.tolist()`` (one read per call; it dispatches no op on CPU, so it is counted by
    wrapping the method while the counter is active).

    Attributes:
        count (int): Reads counted.
        by_op (Counter[str]): Reads by op (``"Tensor.tolist"`` for ``tolist``).
    """

    def __init__(self) -> None:
        super().__init__()
        self.count = 0
        self.by_op: Counter[str] = Counter()
        self._patches = ExitStack()

    def _record(self, name: str) -> None:
        self.count += 1
        self.by_op[name] += 1

    def __torch_dispatch__(
        self,
        func: OpOverload,
        types: Sequence[type],
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
    ) -> Any:
        kwargs = kwargs or {}
        if reads_on_host(func, args, kwargs):
            self._record(str(func))
        return func(*args, **kwargs)

    def __enter__(self) -> Self:
        original = torch.Tensor.tolist

        def counted_tolist(tensor: torch.Tensor) -> Any:
            if tensor.numel() > 0:
                self._record("Tensor.tolist")
            return original(tensor)

        self._patches.enter_context(patched(torch.Tensor, "tolist", counted_tolist))
        return super().__enter__()

    def __exit__(self, *exc_info: object) -> None:
        super().__exit__(*exc_info)
        self._patches.close()


class LiveBytes(TorchDispatchMode):
    """Bytes of the tensors created while active that are still alive, and their peak.

    A storage is counted when an op returns a tensor on a storage no input of any op had before
    (views and in-place results are not new), and uncounted when it is freed. Tensors that existed
    before the mode started are never counted.

    Attributes:
        live (int): Bytes counted and still alive.
        peak (int): Largest ``live`` seen.
        phase_peaks (dict[str, int]): Per phase, the largest ``live`` above its value when the
            phase started (the largest over repeated phases of one name).
    """

    def __init__(self) -> None:
        super().__init__()
        self.live = 0
        self.peak = 0
        self.phase_peaks: dict[str, int] = {}
        self._phase_starts: dict[str, int] = {}
        self._seen: WeakIdKeyDictionary = WeakIdKeyDictionary()

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        """Tracks the peak above the current ``live`` while the block runs, as ``name``."""
        self._phase_starts[name] = self.live
        self.phase_peaks.setdefault(name, 0)
        try:
            yield
        finally:
            del self._phase_starts[name]

    def _free(self, nbytes: int) -> None:
        self.live -= nbytes

    def __torch_dispatch__(
        self,
        func: OpOverload,
        types: Sequence[type],
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
    ) -> Any:
        kwargs = kwargs or {}
        for tensor in tensors_in((args, kwargs)):
            storage = tensor.untyped_storage()
            if storage not in self._seen:
                self._seen[storage] = 0  # existed before: never counted
        result = func(*args, **kwargs)
        for tensor in tensors_in(result):
            storage = tensor.untyped_storage()
            if storage in self._seen:
                continue
            nbytes = storage.nbytes()
            self._seen[storage] = nbytes
            self.live += nbytes
            weakref.finalize(storage, self._free, nbytes)
        self.peak = max(self.peak, self.live)
        for name, start in self._phase_starts.items():
            self.phase_peaks[name] = max(self.phase_peaks[name], self.live - start)
        return result


class StepCosts(NamedTuple):
    """What one call dispatched (see the module docstring).

    Attributes:
        ops (int): Dispatched aten ops.
        launches (int): Of them, ops that launch work.
        syncs (int): Host reads of tensor values.
        products (int): ``d x d`` matrix products.
        flops (int): FLOPs (:func:`op_flops`).
        peak_bytes (int): Peak bytes of the tensors the call created, alive at once.
        phase_peak_bytes (dict[str, int]): Peak bytes above the start of each phase.
        syncs_by_op (dict[str, int]): The reads by op.
    """

    ops: int
    launches: int
    syncs: int
    products: int
    flops: int
    peak_bytes: int
    phase_peak_bytes: dict[str, int]
    syncs_by_op: dict[str, int]


#: A phase of :func:`measure`: its name, an object and the name of the method that is the phase.
Phase = tuple[str, object, str]


@contextmanager
def phases_of(live: LiveBytes, phases: Sequence[Phase]) -> Iterator[None]:
    """Wraps each phase's method on its object (an instance attribute shadowing the method) so
    that calls run inside ``live.phase(name)``; removes the wrappers afterwards."""
    with ExitStack() as stack:
        for name, owner, method_name in phases:
            method = getattr(owner, method_name)

            def in_phase(
                *args: Any, _method: Callable[..., Any] = method, _name: str = name, **kwargs: Any
            ) -> Any:
                with live.phase(_name):
                    return _method(*args, **kwargs)

            stack.enter_context(patched(owner, method_name, in_phase))
        yield


@contextmanager
def counting() -> Iterator[tuple[OpCounter, SyncCounter, LiveBytes]]:
    """All three counters active at once (every op passes through each)."""
    ops, syncs, live = OpCounter(), SyncCounter(), LiveBytes()
    with ExitStack() as stack:
        for mode in (live, syncs, ops):
            stack.enter_context(mode)
        yield ops, syncs, live


#: How a host read of a one-element ``meta`` boolean is answered, by the op that made it: every
#: check passes (``all``: all finite; ``any``: nothing NaN) and every compared quantity exceeds
#: what it is compared with (``error > tol`` is True, ``error < tol`` False), so an iteration
#: that stops at a tolerance runs to its iteration cap.
META_BOOLEAN_ANSWERS: dict[object, bool] = {
    aten.all: True,
    aten.any: False,
    aten.gt: True,
    aten.ge: True,
    aten.ne: True,
    aten.lt: False,
    aten.le: False,
    aten.eq: False,
}
#: Ops whose one-element boolean is the negation of their input's.
_NEGATIONS = frozenset({aten.logical_not, aten.bitwise_not})


class MetaHostReads(TorchDispatchMode):
    """Answers host reads of ``meta`` tensors (``.item()``, ``bool()``), which hold no values.

    A one-element boolean made by an op of :data:`META_BOOLEAN_ANSWERS` (or the negation of one)
    reads as that op's answer; any other boolean raises ``RuntimeError``; a number reads as 1 (a
    positive value: upstream's ``lambda_min < epsilon`` check of an eigendecomposition takes its
    common branch, as on factor matrices with full rank).
    """

    def __init__(self) -> None:
        super().__init__()
        self._answers: WeakIdKeyDictionary = WeakIdKeyDictionary()

    def _answer_of(self, func: OpOverload, args: tuple[Any, ...]) -> bool | None:
        if func.overloadpacket in _NEGATIONS:
            answer = self._answers.get(args[0])
            return None if answer is None else not answer
        return META_BOOLEAN_ANSWERS.get(func.overloadpacket)

    def __torch_dispatch__(
        self,
        func: OpOverload,
        types: Sequence[type],
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
    ) -> Any:
        if func is aten._local_scalar_dense.default and args[0].device.type == "meta":
            value = args[0]
            if value.dtype is not torch.bool:
                return 1
            if value not in self._answers:
                raise RuntimeError(
                    "a host read of a meta boolean made by an op without an answer in "
                    "META_BOOLEAN_ANSWERS"
                )
            return self._answers[value]
        result = func(*args, **(kwargs or {}))
        if (
            isinstance(result, torch.Tensor)
            and result.device.type == "meta"
            and result.dtype is torch.bool
            and result.numel() == 1
        ):
            answer = self._answer_of(func, args)
            if answer is not None:
                self._answers[result] = answer
        return result


_TORCH_GENERATOR = torch.Generator


class _HostGenerator(torch.Generator):
    """What ``torch.Generator(device=...)`` makes inside :func:`meta_scaffolding`: a host
    generator, whatever the device (a class, so that annotations like ``torch.Generator | None``
    still evaluate)."""

    def __new__(cls, device: object = None) -> torch.Generator:  # type: ignore[misc]
        return _TORCH_GENERATOR()


@contextmanager
def meta_scaffolding() -> Iterator[None]:
    """Lets an optimizer step run on ``meta`` tensors (shapes only): ``Tensor.tolist`` of a meta
    tensor returns "all True" (the one host read of DASH's flags: every input finite, every root
    accepted), other host reads of meta tensors are answered by :class:`MetaHostReads` (every
    check passes, iterations run to their cap; upstream's per-block checks, the DASH authors'
    tolerance tests), and ``torch.Generator(device=...)`` returns a host generator (``meta`` has
    none; ``randn`` on ``meta`` ignores it).
    """
    host_tolist = torch.Tensor.tolist

    def tolist(tensor: torch.Tensor) -> Any:
        return [True] * tensor.numel() if tensor.device.type == "meta" else host_tolist(tensor)

    with (
        patched(torch.Tensor, "tolist", tolist),
        patched(torch, "Generator", _HostGenerator),
        MetaHostReads(),
    ):
        yield


def measure(call: Callable[[], object], phases: Sequence[Phase] = ()) -> StepCosts:
    """Runs ``call`` once under every counter and returns what it dispatched; ``phases`` name
    methods whose calls get their own peak bytes (:meth:`LiveBytes.phase`)."""
    with counting() as (ops, syncs, live), phases_of(live, phases):
        call()
    return StepCosts(
        ops=ops.ops,
        launches=ops.launches,
        syncs=syncs.count,
        products=ops.products,
        flops=ops.flops,
        peak_bytes=live.peak,
        phase_peak_bytes=dict(live.phase_peaks),
        syncs_by_op=dict(syncs.by_op),
    )
