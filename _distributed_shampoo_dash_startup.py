"""Interpreter-start hook behind ``DISTRIBUTED_SHAMPOO_DASH=1`` (loaded by the package's ``.pth``).

The package installs ``distributed_shampoo_dash_environment.pth`` into ``site-packages``. Python
runs its single line in every interpreter it starts (``torchrun`` workers and ``multiprocessing``
children included). The line reads ``DISTRIBUTED_SHAMPOO_DASH`` and, only when the variable is set
to something, imports this module and calls :func:`install`, so an unset variable costs one
dictionary look-up and imports nothing.

Why a lazy hook rather than ``enable()`` right away: ``.pth`` lines run while ``site`` is still
building ``sys.path``. A user-site or virtual-environment install is processed before the
directory that holds ``torch`` and ``distributed_shampoo`` is added, so importing them there fails.
:func:`install` instead puts a finder at the front of ``sys.meta_path`` that waits for the first
import of ``distributed_shampoo`` (which every ``DistributedShampoo`` user does before building one)
and then calls :func:`distributed_shampoo_dash.environment.enable_from_environment`, which checks
the value and turns DASH on. Processes that never import upstream (the ``torchrun`` agent, data
loader workers) never import torch because of DASH.

If ``distributed_shampoo_dash.integration`` is the first module to import ``distributed_shampoo``
(a script that touches a DASH config first), DASH is enabled once that import is complete too,
so the adapter is never used half-initialised.

This module is top level, outside the package, because importing ``distributed_shampoo_dash``
imports torch; it uses only the standard library.
"""

from __future__ import annotations

import sys

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing and importlib.machinery stay unimported at interpreter start.
    from collections.abc import Sequence
    from importlib.machinery import ModuleSpec
    from types import ModuleType
    from typing import Any

#: Modules whose completed import may turn DASH on.
UPSTREAM_MODULE = "distributed_shampoo"
ADAPTER_MODULE = "distributed_shampoo_dash.integration"
_WATCHED = frozenset({UPSTREAM_MODULE, ADAPTER_MODULE})


class _EnableAfterImport:
    """A ``sys.meta_path`` finder that enables DASH once ``distributed_shampoo`` is imported.

    It finds nothing itself: for a watched name it asks the finders after it for the real spec and
    wraps that spec's loader so that :meth:`_module_executed` runs after the module body.
    """

    def __init__(self) -> None:
        self._executing = 0
        self._done = False

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> ModuleSpec | None:
        if fullname not in _WATCHED or self._done:
            return None
        spec = _spec_from_later_finders(self, fullname, path, target)
        if spec is None or spec.loader is None:
            return spec
        # Duck-typed Loader: importlib.abc stays unimported at interpreter start.
        spec.loader = _NotifyingLoader(spec.loader, self)  # type: ignore[assignment]
        return spec

    def _module_executing(self) -> None:
        self._executing += 1

    def _module_executed(self, succeeded: bool) -> None:
        self._executing -= 1
        if succeeded and self._executing == 0 and UPSTREAM_MODULE in sys.modules:
            self._enable()

    def _enable(self) -> None:
        if self._done:
            return
        self._done = True
        if self in sys.meta_path:
            sys.meta_path.remove(self)
        from distributed_shampoo_dash.environment import enable_from_environment

        enable_from_environment()


class _NotifyingLoader:
    """Delegates to the real loader and tells the finder when the module body has run."""

    def __init__(self, loader: Any, finder: _EnableAfterImport) -> None:
        self._loader = loader
        self._finder = finder

    def create_module(self, spec: ModuleSpec) -> ModuleType | None:
        create: Any = getattr(self._loader, "create_module", None)
        return create(spec) if create is not None else None

    def exec_module(self, module: ModuleType) -> None:
        self._finder._module_executing()
        succeeded = False
        try:
            self._loader.exec_module(module)
            succeeded = True
        finally:
            self._finder._module_executed(succeeded)

    def __getattr__(self, name: str) -> Any:
        # get_filename, get_source, get_resource_reader, is_package, ... of the real loader.
        return getattr(self._loader, name)


def _spec_from_later_finders(
    finder: _EnableAfterImport,
    fullname: str,
    path: Sequence[str] | None,
    target: ModuleType | None,
) -> ModuleSpec | None:
    """The spec the finders after ``finder`` in ``sys.meta_path`` give for ``fullname``."""
    finders = sys.meta_path[sys.meta_path.index(finder) + 1 :] if finder in sys.meta_path else []
    for later in finders:
        find_spec = getattr(later, "find_spec", None)
        if find_spec is None:
            continue
        spec = find_spec(fullname, path, target)
        if spec is not None:
            return spec
    return None


def install() -> None:
    """Enables DASH now if ``distributed_shampoo`` is imported already, else at its first import.

    Idempotent: a second call in the same interpreter adds no second finder.
    """
    if any(isinstance(finder, _EnableAfterImport) for finder in sys.meta_path):
        return
    finder = _EnableAfterImport()
    if UPSTREAM_MODULE in sys.modules:
        finder._enable()
        return
    sys.meta_path.insert(0, finder)
