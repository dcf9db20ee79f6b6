"""One client session: startup, then the relay to its backend session, until either side
closes.

The session is the I/O shell around three parts that do not touch sockets:

* :mod:`dsqlkit.local.protocol`: the relay (which backend answer completes which client
  message, units, held-back answers);
* :mod:`dsqlkit.local.policy`: DSQL's rules for each statement;
* :mod:`dsqlkit.local.occ.session`: this session's side of DSQL's optimistic concurrency
  (the decisions are :mod:`dsqlkit.local.occ.engine`'s).

It owns the two links, the connection-age timer, the endpoint's own queries on the backend,
and the tasks that do endpoint work while the relay holds the client's messages.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Awaitable
from typing import TYPE_CHECKING

from dsqlkit.errors import LocalEndpointError
from dsqlkit.local import wire
from dsqlkit.local.backend import BackendRefused, BackendSession
from dsqlkit.local.link import Link, LinkClosed
from dsqlkit.local.occ.session import SessionOcc
from dsqlkit.local.policy import ANY_STATEMENT, StatementPolicy
from dsqlkit.local.protocol import IDLE, IN_BLOCK, Checked, Collector, Phase, Relay
from dsqlkit.local.startup import Refusal, greeting, startup

if TYPE_CHECKING:
    from dsqlkit.local.server import Server

log = logging.getLogger(__name__)


class Session:
    """A client connection from the startup packet to its end."""

    def __init__(self, server: Server, client: Link, *, sni: str | None) -> None:
        self.server = server
        self.client = client
        self.sni = sni
        self.backend: BackendSession | None = None
        self.user = ""
        self.key = (0, 0)
        self.started = server.clock()
        self.settings: dict[str, str] = {}
        self.relay = Relay(self, self._write_backend, client.write)
        self.policy = StatementPolicy(self, self.relay, server, self.settings)
        self.occ = SessionOcc(self, self.relay, self.policy, server)
        self.expired = False
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        # Counted in server.sessions_waiting: the backend owes this session an answer.
        self._waiting = False
        self._age_timer: asyncio.TimerHandle | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def sid(self) -> int:
        """The session's id for the OCC engine (the pid handed to the client)."""
        return self.key[0]

    @property
    def backend_pid(self) -> int | None:
        return self.backend.pid if self.backend is not None else None

    @property
    def _closed(self) -> bool:
        return self.relay.closed

    # ------------------------------------------------------------ startup

    async def run(self) -> None:
        """Serve the session until either side closes."""
        try:
            started = await asyncio.wait_for(startup(self.server, self.client, self.sni),
                                             self.server.config.startup_timeout)
        except Refusal as r:
            self._fatal(r.frame())
            return
        except BackendRefused as exc:
            self._fatal(exc.frame)
            return
        except wire.ProtocolViolation as exc:
            self._fatal(wire.error_response(exc.sqlstate, str(exc), severity="FATAL"))
            return
        except (LinkClosed, ConnectionError):
            self.close()
            return
        except asyncio.TimeoutError:
            self._fatal(wire.error_response("08006", "unable to accept connection, "
                                            "timed out during startup", severity="FATAL"))
            return
        except LocalEndpointError as exc:
            log.warning("session startup failed: %s", exc)
            self._fatal(wire.error_response("08006", "unable to accept connection, "
                                            "server unavailable", severity="FATAL"))
            return
        self.user = started.user
        self.settings.update(started.settings)
        self.backend = started.backend
        self.key = self.server.register(self)
        self.client.write(greeting(started.backend, self.key))
        self._start_relay()
        await self.done

    def _start_relay(self) -> None:
        assert self.backend is not None
        b = self.backend.link
        c = self.client
        c.peer, b.peer = b, c
        c.on_lost = self.close
        b.on_lost = self._backend_lost
        c.on_violation = self.violation
        b.on_violation = lambda exc: self.close()
        c.on_frames = self._client_frames
        b.on_frames = self._backend_frames
        self.check_age()
        # Bytes that arrived together with the password message are already buffered.
        c.data_received(b"")
        b.data_received(b"")

    def _client_frames(self, data: bytes, frames: list[tuple[int, int, int]]) -> None:
        try:
            self.relay.client_frames(data, frames)
        except Exception as exc:
            self._internal_error(exc)

    def _backend_frames(self, data: bytes, frames: list[tuple[int, int, int]]) -> None:
        try:
            self.relay.backend_frames(data, frames)
        except Exception as exc:
            self._internal_error(exc)

    def _write_backend(self, data: bytes) -> None:
        assert self.backend is not None
        self.backend.link.write(data)

    # ------------------------------------------------------------ the relay's hooks

    def check(self, mtype: int, data: bytes, start: int, end: int) -> Checked:
        checked = self.policy.check(mtype, data, start, end)
        if checked != (None, None) or not self.occ.commit_mode:
            return checked
        if mtype == wire.PARSE:
            self.occ.deferral.parsed(data[start:end])
        elif mtype == wire.BIND:
            deferred = self.occ.deferral.bind(data[start:end])
            if deferred is not None:
                return deferred
        return checked

    def unit_begins(self, mtype: int, data: bytes, start: int, end: int) -> bool:
        self.policy.unit_begins()
        if not self.occ.unit_begins(mtype, data, start, end):
            return False
        if self.relay.txn_status == IN_BLOCK and self.server.faults.roll("disconnect"):
            log.info("fault injection: dropping a connection in the middle of a transaction")
            self.client.abort()
            self.close()
        return True

    def batch_ended(self) -> None:
        self.policy.rules.end_batch()

    def backend_error(self, fields: dict[str, str]) -> bytes | None:
        log.debug("session %s: backend error %s %s", self.sid, fields.get("C"), fields.get("M"))
        conflict, answer = self.occ.conflict_answer(fields)
        if conflict:
            return answer
        self.policy.rules.errored(ANY_STATEMENT)
        if "dsqlkit_" in fields.get("W", ""):
            # An error raised by the endpoint's own triggers: drop their PL/pgSQL context.
            fields.pop("W", None)
            fields.pop("P", None)
            return wire.encode_fields(wire.ERROR_RESPONSE, fields)
        return None

    def unit_done(self) -> None:
        self._not_waiting()
        if self.occ.unit_done():
            return
        monitor = self.server.monitor
        if monitor is not None:
            monitor.became_idle(self)  # those waiting on its locks may need it to make way
        relay = self.relay
        if self.expired and relay.txn_status == IDLE and not relay.held:
            relay.flush()
            self._end_for_age()
            return
        relay.pump()

    def started_waiting(self) -> None:
        if not self._waiting:
            self._waiting = True
            self.server.sessions_waiting += 1
            monitor = self.server.monitor
            if monitor is not None:
                monitor.started_waiting(self)

    def _not_waiting(self) -> None:
        if self._waiting:
            self._waiting = False
            self.server.sessions_waiting -= 1
            monitor = self.server.monitor
            if monitor is not None:
                monitor.stopped_waiting(self)

    def forward_first(self) -> bool:
        # Only while no other session waits for the backend: under load, finishing the
        # bookkeeping first and then waking the client costs less CPU in all.
        return self.server.sessions_waiting <= 1

    def violation(self, exc: wire.ProtocolViolation) -> None:
        self._fatal(wire.error_response(exc.sqlstate, str(exc), severity="FATAL"))

    def terminate(self) -> None:
        self.close()

    # ------------------------------------------------------------ endpoint work

    def spawn(self, work: Awaitable[object]) -> None:
        task: asyncio.Task[None] = asyncio.ensure_future(self._guarded(work))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _guarded(self, work: Awaitable[object]) -> None:
        try:
            await work
        except (ConnectionError, LocalEndpointError) as exc:
            log.info("session ended during endpoint work on its backend: %s", exc)
            self.close()
        except Exception as exc:
            self._internal_error(exc)

    def hold_for(self, work: Awaitable[object]) -> None:
        """Hold the client's messages while ``work`` runs, then release them."""
        self.relay.hold()
        self.spawn(self._held(work))

    async def _held(self, work: Awaitable[object]) -> None:
        try:
            await work
        finally:
            if not self._closed:
                if self.expired and self.relay.txn_status == IDLE and not self.relay.held:
                    self._end_for_age()
                else:
                    self.relay.release()

    async def run_internal(self, payload: bytes, ready: int, *, hashed: bool = False,
                           into: hashlib.blake2b | None = None) -> Collector:
        """Send the endpoint's own messages; collect the backend's answers to them."""
        if self._closed:
            raise ConnectionError("session closed")
        future: asyncio.Future[Collector] = asyncio.get_running_loop().create_future()

        def done(collector: Collector) -> None:
            if not future.done():
                future.set_result(collector)

        self._internal_future = future
        self.relay.send_internal(payload, Collector(ready, done, hashed=hashed, into=into))
        try:
            return await future
        finally:
            self._internal_future = None
            if not self.relay.expect:
                self._not_waiting()

    _internal_future: asyncio.Future[Collector] | None = None

    async def query_rows(self, sql: str) -> list[list[str | None]]:
        collected = await self.run_internal(wire.query(sql), 1)
        if collected.errors:
            return []
        return [[None if v is None else v.decode("utf-8", "replace") for v in row]
                for row in collected.rows]

    def backend_idle(self) -> bool:
        """Nothing of the client's or the endpoint's runs on the backend."""
        relay = self.relay
        return (self.backend is not None and not relay.closed and not relay.busy
                and not relay.to_backend)

    # ------------------------------------------------------------ the lock monitor's asks

    def park(self) -> None:
        self.occ.park()

    def lost(self) -> None:
        self.occ.lost()

    # ------------------------------------------------------------ ending

    def check_age(self) -> None:
        """(Re)arm the connection-age timer on the server's clock; a session past the cap
        ends at once if idle, else when its transaction ends."""
        age = self.server.config.max_connection_age
        if age <= 0 or self._closed:
            return
        if self._age_timer is not None:
            self._age_timer.cancel()
        remaining = age - (self.server.clock() - self.started)
        if remaining <= 0:
            self._age_reached()
        else:
            self._age_timer = asyncio.get_running_loop().call_later(remaining, self.check_age)

    def _age_reached(self) -> None:
        self.expired = True
        relay = self.relay
        if not relay.busy and not relay.held and relay.txn_status == IDLE:
            self._end_for_age()

    def _end_for_age(self) -> None:
        limit = self.server.config.max_connection_age
        log.info("closing a session at the connection age limit (%ss)", limit)
        self._fatal(wire.error_response(
            "08006", f"connection age limit of {limit:g}s exceeded", severity="FATAL"))

    def _internal_error(self, exc: Exception) -> None:
        """A bug in the endpoint must cost one session, with an error it can read."""
        log.error("internal error in a session; closing it", exc_info=exc)
        self._fatal(wire.error_response("XX000", "internal error in dsqlkit local; see its log",
                                        severity="FATAL"))

    def _backend_lost(self) -> None:
        if not self._closed:
            log.warning("backend session lost; closing the client session")
        self.close()

    def _fatal(self, frame: bytes) -> None:
        self.relay.to_client.clear()
        self.client.write(frame)
        self.close()

    def close(self) -> None:
        if self._closed:
            return
        self.relay.close()
        self._not_waiting()
        if self.server.monitor is not None:
            self.server.monitor.forget(self)
        if self._age_timer is not None:
            self._age_timer.cancel()
        if self.key != (0, 0):
            self.server.engine.forget(self.sid)
            self.server.transaction_finished(self.sid)
        self.server.unregister(self)
        if self.backend is not None:
            self.backend.link.write(wire.TERMINATE_MSG)
            self.backend.link.close()
        self.client.close()
        # Endpoint work waiting on the backend (a replay, a catalog question) will never get
        # its answer now.
        future = self._internal_future
        if future is not None and not future.done():
            future.set_exception(ConnectionError("session closed"))
        self.occ.closed()
        if not self.done.done():
            self.done.set_result(None)


__all__ = ["Phase", "Session"]
