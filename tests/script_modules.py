"""Imports the measuring scripts of ``scripts/`` (not a package) as modules.

The scripts import their siblings by name, as Python allows when a script runs, because its
directory is then first on ``sys.path``; the tests put it there too.
"""

import importlib
import sys
from pathlib import Path
from types import ModuleType

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"


def load_script(name: str) -> ModuleType:
    """``scripts/<name>.py`` as the module ``name``, shared with the scripts that import it."""
    if str(SCRIPTS) not in sys.path:
        sys.path.insert(0, str(SCRIPTS))
    return importlib.import_module(name)
