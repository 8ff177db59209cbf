"""Argument checks shared by the solvers and the configs.

Every check names the argument as the caller wrote it and says what was expected, raising
``TypeError`` for a value of the wrong type and ``ValueError`` for a value out of range. Numbers
are accepted through the ``numbers`` ABCs, so numpy scalars work wherever Python numbers do, and
are returned as Python ``int``/``float``/``bool`` (configs are pickled into checkpoints).
"""

import enum
import math
import numbers
from fractions import Fraction
from typing import TypeVar

from torch import Tensor

#: Largest denominator accepted when a fractional root is written as ``numerator / denominator``.
MAX_ROOT_DENOMINATOR = 16
#: Upper bound of every iteration count, polynomial degree and number of start vectors: a step
#: that runs more products than this per block is a configuration error, not a setting.
MAX_ITERATIONS = 1000


def type_name(value: object) -> str:
    """The qualified type name of ``value`` (``numpy.float32`` rather than ``float32``)."""
    cls = type(value)
    return (
        cls.__qualname__ if cls.__module__ == "builtins" else f"{cls.__module__}.{cls.__qualname__}"
    )


_Enum = TypeVar("_Enum", bound=enum.Enum)


def as_enum(value: object, enum_type: type[_Enum], what: str) -> _Enum:
    """``value`` as a member of ``enum_type``: a member, or the string of one (any case).

    Raises:
        ValueError: If ``value`` is a string that names no member (the message lists them).
        TypeError: If ``value`` is neither a member nor a string.
    """
    if isinstance(value, enum_type):
        return value
    if isinstance(value, str):
        try:
            return enum_type(value.lower())
        except ValueError:
            allowed = ", ".join(repr(member.value) for member in enum_type)
            raise ValueError(f"Invalid {what} {value!r}. Must be one of {allowed}.") from None
    raise TypeError(
        f"Invalid {what} {value!r} of type {type_name(value)}. "
        f"Must be a {enum_type.__name__} or one of its string values."
    )


def check_int(value: object, name: str, *, minimum: int, maximum: int | None = None) -> int:
    """Checks an integer in ``[minimum, maximum]`` (iteration counts, degrees, vectors)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"Invalid {name}={value!r} of type {type_name(value)}. Must be an int.")
    number = int(value)
    if number < minimum or (maximum is not None and number > maximum):
        allowed = f">= {minimum}" if maximum is None else f"in [{minimum}, {maximum}]"
        raise ValueError(f"Invalid {name}={number}. Must be an int {allowed}.")
    return number


def check_real(
    value: object,
    name: str,
    *,
    minimum: float = 0.0,
    exclusive: bool = False,
    maximum: float = math.inf,
    reason: str = "",
) -> float:
    """Checks a finite real number ``>= minimum`` (``> minimum`` if ``exclusive``), ``<= maximum``.

    ``reason`` is appended to the range in the error message.
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(
            f"Invalid {name}={value!r} of type {type_name(value)}. Must be a real number."
        )
    number = float(value)
    below = number <= minimum if exclusive else number < minimum
    if not math.isfinite(number) or below or number > maximum:
        bound = f"> {minimum}" if exclusive else f">= {minimum}"
        if maximum < math.inf:
            bound += f" and <= {maximum}"
        raise ValueError(f"Invalid {name}={number}. Must be a finite number {bound}{reason}.")
    return number


def _is_bool(value: object) -> bool:
    """Whether ``value`` is a ``bool`` or a numpy boolean scalar."""
    is_numpy_bool = type(value).__module__ == "numpy" and type(value).__name__ in ("bool", "bool_")
    return isinstance(value, bool) or is_numpy_bool


def check_bool(value: object, name: str) -> bool:
    """Checks a flag: a ``bool`` or a numpy boolean scalar."""
    if not _is_bool(value):
        raise TypeError(f"Invalid {name}={value!r} of type {type_name(value)}. Must be a bool.")
    return bool(value)


def check_optional_bool(value: object, name: str) -> bool | None:
    """Checks a flag that ``None`` leaves to a default: ``None``, a ``bool`` or a numpy boolean
    scalar."""
    if value is None:
        return None
    if not _is_bool(value):
        raise TypeError(
            f"Invalid {name}={value!r} of type {type_name(value)}. Must be a bool or None."
        )
    return bool(value)


def check_instance(value: object, expected: type, name: str) -> None:
    """Raises ``TypeError`` naming ``value`` and ``expected`` unless ``value`` is an
    ``expected``.
    """
    if not isinstance(value, expected):
        raise TypeError(
            f"Invalid {name}={value!r} of type {type_name(value)}. Must be a {expected.__name__}."
        )


def as_stack(A: object, name: str = "A") -> Tensor:
    """Checks a solver input and returns it as a ``(N, d, d)`` stack (a ``(d, d)`` matrix is one).

    Raises:
        TypeError: If ``A`` is not a tensor or is not of a floating-point dtype.
        ValueError: If ``A`` is not 2-D or 3-D, not square, or empty.
    """
    if not isinstance(A, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type_name(A)}.")
    if not A.dtype.is_floating_point:
        raise TypeError(
            f"{name} must have a floating-point dtype (float16, bfloat16, float32 or float64), "
            f"got {A.dtype}."
        )
    if A.ndim not in (2, 3):
        raise ValueError(
            f"{name} must be a (d, d) matrix or an (N, d, d) stack, got shape {tuple(A.shape)}."
        )
    if A.shape[-1] != A.shape[-2]:
        raise ValueError(f"{name} must hold square matrices, got shape {tuple(A.shape)}.")
    if A.shape[-1] < 1 or (A.ndim == 3 and A.shape[0] < 1):
        raise ValueError(
            f"{name} must hold at least one matrix of dimension >= 1, got shape {tuple(A.shape)}."
        )
    return A if A.ndim == 3 else A.unsqueeze(0)


def check_positive_root(root: object) -> float:
    """Checks that ``root`` is a finite real number > 0 and returns it as a float."""
    if isinstance(root, bool) or not isinstance(root, numbers.Real):
        raise TypeError(f"Invalid root={root!r} of type {type_name(root)}. Must be a real number.")
    value = float(root)
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"Invalid root {value}. Must be a finite number > 0.")
    return value


def check_integer_root(root: object, method: str) -> int:
    """Checks that ``root`` is a positive integer (as a number) and returns it as an ``int``."""
    value = check_positive_root(root)
    if not value.is_integer():
        raise ValueError(f"Invalid root {value} for {method}. Must be a positive integer.")
    return int(value)


def is_power_of_two(root: float) -> bool:
    """Whether ``root`` is ``2^m`` for an integer ``m >= 0``."""
    return float(root).is_integer() and root >= 1 and int(root) & (int(root) - 1) == 0


def check_power_of_two_root(root: object, method: str) -> int:
    """Checks that ``root`` is ``2^m`` for some ``m >= 0`` and returns it as an ``int``.

    Raises:
        ValueError: If ``root`` is not a power of two (``method`` only composes square roots).
    """
    value = check_positive_root(root)
    if not is_power_of_two(value):
        raise ValueError(
            f"Invalid root {root} for {method}. Must be a power of two (1, 2, 4, 8, ...); "
            "use the Chebyshev, coupled Newton or eigh solver for other roots."
        )
    return int(value)


def rational_root(root: object) -> Fraction:
    """Writes ``root`` as ``n / q`` with ``q <= MAX_ROOT_DENOMINATOR`` (for residuals of fractional
    roots).

    Raises:
        ValueError: If ``root`` is not a finite number > 0, or no such fraction is within ``1e-9``
            relative of it.
    """
    value = check_positive_root(root)
    fraction = Fraction(value).limit_denominator(MAX_ROOT_DENOMINATOR)
    if abs(float(fraction) - value) > 1e-9 * value:
        raise ValueError(
            f"Invalid root {value}: it must be a fraction with denominator <= "
            f"{MAX_ROOT_DENOMINATOR} (e.g. 10/3 for an inverse exponent of 0.3)."
        )
    return fraction


def is_rational_root(root: float) -> bool:
    """Whether :func:`rational_root` writes ``root`` as a fraction (the roots whose residual the
    iterative solvers can form)."""
    try:
        rational_root(root)
    except ValueError:
        return False
    return True
