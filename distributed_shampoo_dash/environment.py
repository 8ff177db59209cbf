"""Turning DASH on from the environment, for processes whose code cannot call ``enable()``.

With ``DISTRIBUTED_SHAMPOO_DASH=1``, every Python process that inherits the environment (including
those that ``torchrun`` or ``multiprocessing`` spawn) runs with DASH enabled. The installed
package does this by itself: its ``distributed_shampoo_dash_environment.pth`` file, which Python
runs at interpreter start, sees the variable and calls :func:`enable_from_environment` as soon as
``distributed_shampoo`` is first imported (``_distributed_shampoo_dash_startup.py`` explains
why it waits for that import). Calling :func:`enable_from_environment` from a ``sitecustomize``
module works too. Without the variable nothing is imported and nothing changes.
"""

import os

#: Name of the environment variable read by :func:`enable_from_environment`.
ENVIRONMENT_VARIABLE = "DISTRIBUTED_SHAMPOO_DASH"

_ON = frozenset({"1", "true", "on", "yes"})
_OFF = frozenset({"", "0", "false", "off", "no"})


def enable_from_environment() -> bool:
    """Enables DASH if ``DISTRIBUTED_SHAMPOO_DASH`` says so; returns whether it did.

    Raises:
        ValueError: If the variable holds anything but one of ``1/true/on/yes`` or
            ``0/false/off/no`` (case-insensitive) or the empty string.
    """
    value = os.environ.get(ENVIRONMENT_VARIABLE, "")
    if value.strip().lower() in _OFF:
        return False
    if value.strip().lower() not in _ON:
        raise ValueError(
            f"Invalid {ENVIRONMENT_VARIABLE}={value!r}. Must be one of "
            f"{sorted(_ON)} to enable DASH or {sorted(_OFF - {''})} (or unset) to leave it off."
        )
    from distributed_shampoo_dash.integration import enable

    enable()
    return True
