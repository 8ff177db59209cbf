"""Example model, data and training helpers used by ``examples/`` and ``scripts/`` (torch only)."""
