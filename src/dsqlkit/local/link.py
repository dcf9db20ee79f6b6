"""One side of a proxied connection (client or backend) as an asyncio protocol.

A :class:`Link` frames incoming bytes with :class:`~dsqlkit.local.wire.FrameReader`. During
startup, code awaits frames one by one (:meth:`Link.read_frame`); once a session relays, the
link hands every batch of complete frames to a callback, with no task switch per message.
Back-pressure is symmetric: when one side's outgoing buffer fills, its peer stops reading.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from typing import cast

from dsqlkit.local import wire

# (data, [(type, start, end), ...]): complete frames as offsets into one bytes object.
FramesCallback = Callable[[bytes, list[tuple[int, int, int]]], None]


class LinkClosed(ConnectionError):
    """The peer closed the connection (or it was lost)."""


_READ_BUFFER = 256 * 1024
_local = threading.local()


def _read_buffer() -> memoryview:
    """One read buffer per event-loop thread, shared by all its links: the loop fills it
    and the link copies the bytes out before anything else can run."""
    buf: memoryview | None = getattr(_local, "buf", None)
    if buf is None:
        buf = _local.buf = memoryview(bytearray(_READ_BUFFER))
    return buf


class Link(asyncio.BufferedProtocol):
    """A buffered protocol: the event loop reads (and decrypts TLS) straight into a reused
    buffer instead of allocating a large bytes object for every read."""

    def __init__(self, *, typed: bool = True, max_length: int = wire.MAX_MESSAGE) -> None:
        self._rview = _read_buffer()
        self.reader = wire.FrameReader(typed=typed, max_length=max_length)
        self.transport: asyncio.Transport | None = None
        self.peer: Link | None = None
        self.on_frames: FramesCallback | None = None
        self.on_violation: Callable[[wire.ProtocolViolation], None] | None = None
        self.on_lost: Callable[[], None] | None = None
        self.eof = False
        self._waiter: asyncio.Future[None] | None = None
        self._paused_peer = False
        self._write_paused = False

    # -- asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement the interface without subclassing asyncio.Transport.
        self.transport = cast(asyncio.Transport, transport)

    def get_buffer(self, sizehint: int) -> memoryview:
        return self._rview

    def buffer_updated(self, nbytes: int) -> None:
        self.data_received(bytes(self._rview[:nbytes]))

    def data_received(self, data: bytes) -> None:
        on_frames = self.on_frames
        if on_frames is None:
            self.reader.feed(data)
            self._wake()
            return
        try:
            chunk, frames = self.reader.scan(data)
        except wire.ProtocolViolation as exc:
            if self.on_violation is not None:
                self.on_violation(exc)
            else:
                self.close()
            return
        if frames:
            on_frames(chunk, frames)

    def eof_received(self) -> bool | None:
        self.eof = True
        self._wake()
        return None  # close the transport

    def connection_lost(self, exc: Exception | None) -> None:
        self.eof = True
        self._wake()
        if self.on_lost is not None:
            cb, self.on_lost = self.on_lost, None
            cb()

    def pause_writing(self) -> None:
        # Our outgoing buffer is full: stop reading from the peer that feeds it.
        self._write_paused = True
        if self.peer is not None and self.peer.transport is not None:
            self._paused_peer = True
            self.peer.transport.pause_reading()

    def resume_writing(self) -> None:
        self._write_paused = False
        if self._paused_peer and self.peer is not None and self.peer.transport is not None:
            self._paused_peer = False
            if not self.peer.transport.is_closing():
                self.peer.transport.resume_reading()

    # -- reading during startup

    def _wake(self) -> None:
        w = self._waiter
        if w is not None and not w.done():
            w.set_result(None)

    async def read_frame(self) -> tuple[int, bytes]:
        """The next complete frame; raises :class:`LinkClosed` or ProtocolViolation."""
        while True:
            frame = self.reader.next_frame()
            if frame is not None:
                return frame
            if self.eof:
                raise LinkClosed("connection closed by peer")
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None

    # -- writing

    def write(self, data: bytes) -> None:
        t = self.transport
        if t is not None and not t.is_closing():
            t.write(data)

    def close(self) -> None:
        t = self.transport
        if t is not None and not t.is_closing():
            t.close()

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()

    @property
    def closing(self) -> bool:
        return self.transport is None or self.transport.is_closing()
