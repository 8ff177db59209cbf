"""Build hook: ships ``distributed_shampoo_dash_environment.pth`` at the root of ``site-packages``.

Everything else about the package is in ``pyproject.toml``. Python runs the ``.pth`` line at
interpreter start; it imports nothing unless ``DISTRIBUTED_SHAMPOO_DASH`` is set (see
``_distributed_shampoo_dash_startup.py``). setuptools has no declarative way to put a file at the
root of ``site-packages``, so ``build_py`` copies it there: into the wheel's root for a regular
install, and into the editable wheel's root (the ``install_lib`` that ``pip install -e .``
configures) for an editable one.
"""

from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

HOOK = "distributed_shampoo_dash_environment.pth"
SOURCE = Path(__file__).resolve().parent / HOOK


class BuildPyWithHook(build_py):
    """``build_py`` that also places the ``.pth`` hook next to the top-level packages."""

    def run(self) -> None:
        super().run()
        target = self._hook_directory() / HOOK
        target.parent.mkdir(parents=True, exist_ok=True)
        self.copy_file(str(SOURCE), str(target), preserve_mode=False)

    def _hook_directory(self) -> Path:
        if getattr(self, "editable_mode", False):
            # The editable wheel's root: setuptools' editable_wheel points install_lib there.
            return Path(self.get_finalized_command("install").install_lib)
        return Path(self.build_lib)

    def get_outputs(self, include_bytecode: bool = True) -> list[str]:
        outputs = list(super().get_outputs(include_bytecode))
        if getattr(self, "editable_mode", False):
            return outputs
        return [*outputs, str(Path(self.build_lib) / HOOK)]


setup(cmdclass={"build_py": BuildPyWithHook})
