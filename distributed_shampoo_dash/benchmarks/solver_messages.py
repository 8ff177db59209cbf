"""What the solvers log while a benchmark row runs, collected and summarised instead of printed, and
a one-line description of a row that raised.

The loggers of ``distributed_shampoo_dash`` and ``distributed_shampoo`` (roots rejected and
recomputed by eigh, Newton iterations that did not converge) are collected per row
(:func:`collected_solver_messages`) and summarised by kind (:func:`messages_note`).
"""

import contextlib
import logging
import re
from collections import Counter
from collections.abc import Iterator, Sequence

from distributed_shampoo.shampoo_types import PreconditionerValueError

from distributed_shampoo_dash.benchmarks.step_rows import AnyRow, Row

#: Loggers of the solvers' messages: the package's and upstream's (every module logs to a child).
SOLVER_LOGGERS = ("distributed_shampoo_dash", "distributed_shampoo")


class _MessageCollector(logging.Handler):
    """Keeps the message of every record it handles."""

    def __init__(self) -> None:
        super().__init__()
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@contextlib.contextmanager
def collected_solver_messages() -> Iterator[list[str]]:
    """Collects what :data:`SOLVER_LOGGERS` log inside the block instead of printing it (they do
    not propagate meanwhile); yields the list of messages, filled as they come."""
    collector = _MessageCollector()
    loggers = [logging.getLogger(name) for name in SOLVER_LOGGERS]
    propagate = [logger.propagate for logger in loggers]
    for logger in loggers:
        logger.addHandler(collector)
        logger.propagate = False
    try:
        yield collector.messages
    finally:
        for logger, previous in zip(loggers, propagate, strict=True):
            logger.removeHandler(collector)
            logger.propagate = previous


def message_kind(message: str) -> str:
    """What a message says without its block numbers and values: its first line up to the first
    digit or parenthesis, then ``...`` and its last clause after ``"; "`` if it has one."""
    line = message.strip().splitlines()[0] if message.strip() else ""
    head = re.split(r"[\d(]", line, maxsplit=1)[0].strip() or line[:60]
    if head == line:
        return line
    _, semicolon, tail = line.rpartition("; ")
    return f"{head} ..." + (f" {tail.rstrip('.')}" if semicolon and tail else "")


def message_count(count: int) -> str:
    """``"<count> solver message(s)"``."""
    return f"{count} solver message{'' if count == 1 else 's'}"


def messages_note(messages: Sequence[str]) -> str:
    """``"<n> solver messages: <k> x '<kind>', ..."``, most frequent kind first ("" for none)."""
    if not messages:
        return ""
    kinds = Counter(message_kind(message) for message in messages)
    return f"{message_count(len(messages))}: " + ", ".join(
        f"{count} x '{kind}'" for kind, count in kinds.most_common()
    )


def failure_reason(row: AnyRow, exception: Exception) -> str | None:
    """Why a row raised, where that is known from the exception."""
    if not isinstance(exception, PreconditionerValueError) or not isinstance(row, Row):
        return None
    message = str(exception)
    if message.startswith("Encountered nan or inf values in"):  # upstream's check of a root
        return (
            f"{'DASH' if row.use_dash else 'upstream'}'s {type(row.solver).__name__} produced a "
            "non-finite inverse root from this preset's factors, and upstream raises on that "
            "(docs/usage.md, Fallback rules)"
        )
    if message.startswith("Encountered nan/inf values in factor matrix"):
        return "a factor matrix is not finite (non-finite gradients or a diverged run)"
    return None


def failure_description(row: AnyRow, exception: Exception) -> str:
    """One line: the exception's type, the first sentence of its first line (at most 160
    characters) and, where known, the reason."""
    lines = str(exception).strip().splitlines()
    first = re.split(r"(?<=[.!?])\s", lines[0], maxsplit=1)[0] if lines else ""
    if len(first) > 160:
        first = first[:157] + "..."
    reason = failure_reason(row, exception)
    return f"{type(exception).__name__}: {first}" + (f" Reason: {reason}" if reason else "")
