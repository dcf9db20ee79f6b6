"""Lock waits as PostgreSQL reports them in its server log.

With ``log_lock_waits = on``, a backend that has waited ``deadlock_timeout`` for a lock logs

    2026-12-03 07:14:01.123 UTC [12345] LOG:  process 12345 still waiting for ShareLock on
        transaction 789 after 1.023 ms

(one line, with :data:`dsqlkit.local.backend.LOG_SETTINGS`). The endpoint starts the
PostgreSQL it manages so and reads its log as it is written; this module picks out the
process ids of such lines (it does no I/O). They only tell the lock monitor when to ask
PostgreSQL who waits on whom (:mod:`dsqlkit.local.occ.monitor`): a client can get text of
its own into the log, so nothing here is taken as fact.
"""

from __future__ import annotations

import re

_WAITING = re.compile(rb"\[(\d{1,10})\] LOG:  process (\d{1,10}) still waiting for ")
# A log line longer than this is not a lock wait's; its bytes are dropped.
_MAX_LINE = 1 << 16


class LockWaitParser:
    """Feed it the log as it comes (any chunking); it returns the process ids of the lock
    waits in the lines it completes."""

    def __init__(self) -> None:
        self._partial = b""

    def feed(self, chunk: bytes) -> list[int]:
        data = self._partial + chunk
        lines = data.split(b"\n")
        self._partial = lines.pop()
        if len(self._partial) > _MAX_LINE:
            self._partial = b""
        pids: list[int] = []
        for line in lines:
            if b"still waiting" not in line:
                continue
            m = _WAITING.search(line)
            if m is not None and m.group(1) == m.group(2):
                pids.append(int(m.group(1)))
        return pids


__all__ = ["LockWaitParser"]
