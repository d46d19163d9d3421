"""Third-party log lines (tifffile's) kept from stderr: collected while a file is read, and the
first folded into the error that reading then raises, so a reader of patchfold sees one message."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator


class _Collected(logging.Handler):
    """Keeps the messages of a third-party logger instead of letting them reach stderr."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@contextlib.contextmanager
def tifffile_messages() -> Iterator[list[str]]:
    """While tifffile reads, its log lines (``incorrect StripByteCounts``...) are kept, not printed:
    a reader of patchfold sees one message, with the first of them folded into its error."""
    logger = logging.getLogger("tifffile")
    handler, propagate = _Collected(), logger.propagate
    logger.addHandler(handler)
    logger.propagate = False
    try:
        yield handler.messages
    finally:
        logger.removeHandler(handler)
        logger.propagate = propagate


def with_log(error: BaseException, messages: list[str]) -> str:
    """``error``'s text, with the first collected log line in parentheses."""
    return f"{error} ({messages[0]})" if messages else str(error)
