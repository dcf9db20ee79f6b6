"""One side of a proxied connection (client or backend) as an asyncio protocol.

A :class:`Link` frames incoming bytes with :class:`~dsqlkit.local.wire.FrameReader`. During
startup, code awaits frames one by one (:meth:`Link.read_frame`); once a session relays, the
link hands every batch of complete frames to a callback, with no task switch per message.
Back-pressure is symmetric: when one side's outgoing buffer fills, its peer stops reading.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import cast

from dsqlkit.local import wire

FramesCallback = Callable[[list[tuple[int, bytes]]], None]


class LinkClosed(ConnectionError):
    """The peer closed the connection (or it was lost)."""


class Link(asyncio.Protocol):
    def __init__(self, *, typed: bool = True, max_length: int = wire.MAX_MESSAGE) -> None:
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

    def data_received(self, data: bytes) -> None:
        self.reader.feed(data)
        if self.on_frames is not None:
            try:
                frames = self.reader.frames()
            except wire.ProtocolViolation as exc:
                if self.on_violation is not None:
                    self.on_violation(exc)
                else:
                    self.close()
                return
            if frames:
                self.on_frames(frames)
        else:
            self._wake()

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
