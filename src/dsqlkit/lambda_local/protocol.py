"""Frames between the server and an execution environment: a 4-byte length, then JSON.

Shared by both sides, free of I/O policy: the server reads with a deadline (``select``), the
environment with plain blocking reads. Kept to the standard library, because the environment
process imports it before anything else and its import time is part of every cold start.
"""

from __future__ import annotations

import json
import os
import select
import struct
import time
from typing import Any

_HEADER = struct.Struct("!I")
# A response may be up to 6 MB of JSON, plus error text and a log tail; a frame bigger than
# this means a corrupted stream, not a big answer.
MAX_FRAME = 64 * 1024 * 1024


class ChannelClosed(EOFError):
    """The other side closed its end (the environment exited or the server went away)."""


class ChannelTimeout(TimeoutError):
    """No complete frame arrived before the deadline."""


def encode(message: dict[str, Any]) -> bytes:
    body = json.dumps(message, separators=(",", ":")).encode()
    return _HEADER.pack(len(body)) + body


def write_frame(fd: int, message: dict[str, Any]) -> None:
    data = memoryview(encode(message))
    while data:
        n = os.write(fd, data)
        data = data[n:]


def _read_exact(fd: int, n: int, deadline: float | None) -> bytes:
    chunks: list[bytes] = []
    remaining = n
    while remaining:
        if deadline is not None:
            wait = deadline - time.monotonic()
            if wait <= 0:
                raise ChannelTimeout
            ready, _, _ = select.select([fd], [], [], wait)
            if not ready:
                raise ChannelTimeout
        chunk = os.read(fd, min(remaining, 1 << 20))
        if not chunk:
            raise ChannelClosed
        chunks.append(chunk)
        remaining -= len(chunk)
    return b"".join(chunks)


def read_frame(fd: int, deadline: float | None = None) -> dict[str, Any]:
    """The next message; ``deadline`` is a ``time.monotonic()`` value, or None to block."""
    (length,) = _HEADER.unpack(_read_exact(fd, _HEADER.size, deadline))
    if length > MAX_FRAME:
        raise ChannelClosed(f"frame of {length} bytes: the stream is corrupt")
    message = json.loads(_read_exact(fd, length, deadline))
    if not isinstance(message, dict):
        raise ChannelClosed("a frame that is not a JSON object: the stream is corrupt")
    return message
