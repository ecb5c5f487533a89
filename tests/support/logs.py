"""Capture one logger's records in a test, whatever the worker's logging setup did to it."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@contextmanager
def captured(name: str, level: int = logging.INFO) -> Iterator[list[logging.LogRecord]]:
    """The records ``name`` logs at ``level`` or above inside the block.

    Our own handler, not pytest's caplog: a worker's logging setup may stop records before
    caplog sees them, and an earlier in-process worker may have left the level at ERROR.
    """
    handler = _Records()
    logger = logging.getLogger(name)
    previous = logger.level
    logger.setLevel(level)
    logger.addHandler(handler)
    try:
        yield handler.records
    finally:
        logger.removeHandler(handler)
        logger.setLevel(previous)
