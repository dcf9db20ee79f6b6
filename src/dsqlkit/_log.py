"""``logging.getLogger(__name__)``, imported on first real use.

``import logging`` costs several milliseconds of a cold start (a Lambda init, a CLI run).
The connector's hot path only ever emits debug records, and while the ``logging`` module
has not been imported nobody can have configured a level or a handler for them, so they
would be dropped anyway (the last-resort handler shows WARNING and above only): such
records are skipped without importing anything. Warnings and errors always go through
``logging``.
"""

from __future__ import annotations

import sys

TYPE_CHECKING = False

if TYPE_CHECKING:
    import logging


class LazyLogger:
    __slots__ = ("_logger", "name")

    def __init__(self, name: str) -> None:
        self.name = name
        self._logger: logging.Logger | None = None

    @property
    def logger(self) -> logging.Logger:
        logger = self._logger
        if logger is None:
            import logging

            logger = self._logger = logging.getLogger(self.name)
        return logger

    def isEnabledFor(self, level: int) -> bool:
        if self._logger is None and "logging" not in sys.modules:
            return level >= 30
        return self.logger.isEnabledFor(level)

    def debug(self, msg: str, *args: object) -> None:
        if self._logger is None and "logging" not in sys.modules:
            return
        self.logger.debug(msg, *args, stacklevel=2)

    def info(self, msg: str, *args: object) -> None:
        if self._logger is None and "logging" not in sys.modules:
            return
        self.logger.info(msg, *args, stacklevel=2)

    def warning(self, msg: str, *args: object) -> None:
        self.logger.warning(msg, *args, stacklevel=2)

    def error(self, msg: str, *args: object) -> None:
        self.logger.error(msg, *args, stacklevel=2)


def get_logger(name: str) -> LazyLogger:
    """The logger for ``name`` (pass ``__name__``), as ``logging.getLogger`` would return."""
    return LazyLogger(name)
