"""Command-line pieces shared by the scripts of this directory (they import it by name)."""

import argparse

from distributed_shampoo_dash.examples import training


class HelpFormatter(argparse.RawDescriptionHelpFormatter, training.HelpFormatter):
    """A script's docstring as written, and every option's default unless it is unset (``None``
    or ``False``: its help says what happens then)."""
