"""Lock waits as PostgreSQL logs them, and what the lock monitor does about them.

The parser and the monitor's decisions are driven without sockets (the monitor's question to
PostgreSQL answered from a script); one test reads the log of a real PostgreSQL to pin the
format the parser expects.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
import pytest

from clock_support import settles
from dsqlkit.local import LocalDSQL
from dsqlkit.local.backend import BackendAddress
from dsqlkit.local.occ.engine import Engine, Wait, WaitKind
from dsqlkit.local.occ.lockwaits import LockWaitParser
from dsqlkit.local.occ.monitor import LockMonitor
from dsqlkit.local.pglog import ServerLog

WAIT = (b"2026-12-03 07:14:01.123 UTC [12345] LOG:  process 12345 still waiting for ShareLock "
        b"on transaction 789 after 1.023 ms\n"
        b"2026-12-03 07:14:01.123 UTC [12345] DETAIL:  Process holding the lock: 4321. "
        b"Wait queue: 12345.\n")


def test_a_wait_in_one_chunk() -> None:
    assert LockWaitParser().feed(WAIT) == [12345]


@pytest.mark.parametrize("cut", range(1, len(WAIT)))
def test_a_wait_cut_anywhere(cut: int) -> None:
    parser = LockWaitParser()
    assert parser.feed(WAIT[:cut]) + parser.feed(WAIT[cut:]) == [12345]


def test_a_wait_byte_by_byte() -> None:
    parser = LockWaitParser()
    assert [p for i in range(len(WAIT)) for p in parser.feed(WAIT[i:i + 1])] == [12345]


def test_every_kind_of_wait() -> None:
    log = (b"t [7] LOG:  process 7 still waiting for AccessExclusiveLock on relation 16384 of "
           b"database 5 after 1.001 ms\n"
           b"t [8] LOG:  process 8 still waiting for ShareLock on tuple (0,1) of relation 1 "
           b"of database 5 after 1.2 ms\n"
           b"t [9] LOG:  process 9 still waiting for ExclusiveLock on advisory lock "
           b"[5,1,0,1] after 1.0 ms\n"
           b"t [7] DETAIL:  Processes holding the lock: 3, 4, 5. Wait queue: 7.\n")
    assert LockWaitParser().feed(log) == [7, 8, 9]


def test_lines_that_are_not_waits_are_ignored() -> None:
    log = (b"t [5] ERROR:  could not serialize access due to concurrent update\n"
           b"t [5] STATEMENT:  UPDATE t SET v = 1\n"
           b"t [6] LOG:  process 6 acquired ShareLock on transaction 1 after 3.1 ms\n"
           b"t [8] LOG:  process 9 still waiting for ShareLock on transaction 1 after 1 ms\n"
           b"\x00\xff garbage \xfe\n"
           b"t [x] LOG:  process x still waiting for ShareLock\n"
           b"t [99999999999] LOG:  process 99999999999 still waiting for ShareLock\n")
    assert LockWaitParser().feed(log) == []


def test_an_endless_line_is_dropped_and_the_parser_goes_on() -> None:
    parser = LockWaitParser()
    assert parser.feed(b"x" * (1 << 17)) == []
    assert parser.feed(b"y" * (1 << 17)) == []
    assert parser.feed(b"\n" + WAIT) == [12345]


def test_postgresql_logs_a_wait_as_the_parser_expects(dsql_local: LocalDSQL) -> None:
    # The real server the endpoint manages, its real log: a row lock wait is reported about
    # deadlock_timeout after it began.
    if dsql_local.postgres is None:
        pytest.skip("the endpoint does not manage its PostgreSQL")
    parser = LockWaitParser()
    seen: list[int] = []
    got = threading.Event()

    def listen(chunk: bytes) -> None:
        for pid in parser.feed(chunk):
            seen.append(pid)
            got.set()

    dsql_local.postgres.log_listeners.append(listen)
    try:
        with psycopg.connect(dsql_local.backend_dsn, autocommit=True) as a, \
                psycopg.connect(dsql_local.backend_dsn, autocommit=True) as b:
            a.execute("CREATE TABLE IF NOT EXISTS lockwait_probe (id int PRIMARY KEY)")
            a.execute("INSERT INTO lockwait_probe VALUES (1) ON CONFLICT DO NOTHING")
            holder = a.info.backend_pid
            waiter = b.info.backend_pid
            a.execute("BEGIN")
            a.execute("UPDATE lockwait_probe SET id = 1")
            b.execute("SET lock_timeout = '5s'")
            blocked = threading.Thread(
                target=lambda: _ignore_errors(b, "UPDATE lockwait_probe SET id = 1"))
            blocked.start()
            assert got.wait(10), "no lock wait reported in the server's log"
            a.execute("ROLLBACK")
            blocked.join(10)
            a.execute("DROP TABLE lockwait_probe")
    finally:
        dsql_local.postgres.log_listeners.remove(listen)
    assert waiter in seen and holder not in seen


def _ignore_errors(conn: psycopg.Connection[tuple[object, ...]], sql: str) -> None:
    try:
        conn.execute(sql)
    except psycopg.Error:
        pass


# -- the monitor's decisions -------------------------------------------------------------


@dataclass(eq=False)
class FakeSession:
    sid: int
    backend_pid: int | None
    idle: bool = True
    parks: list[int] = field(default_factory=list)

    def backend_idle(self) -> bool:
        return self.idle

    def park(self) -> None:
        self.parks.append(self.sid)


class ScriptedMonitor(LockMonitor):
    """The monitor, with PostgreSQL's answer to its question taken from ``truth``."""

    def __init__(self, engine: Engine, sessions: list[FakeSession]) -> None:
        super().__init__(engine, lambda: BackendAddress("/nowhere", 1, "nobody"),
                         lambda: sessions, delay=60.0)
        self.truth: list[Wait] = []
        self.asked: list[list[int]] = []
        self.answered = asyncio.Event()

    async def _ask(self, pids: list[int]) -> list[Wait]:
        self.asked.append(sorted(pids))
        self.answered.set()
        return [w for w in self.truth if w.pid in pids]

    async def poll_done(self) -> None:
        await asyncio.wait_for(self.answered.wait(), 5)
        self.answered.clear()
        await asyncio.sleep(0)  # the monitor acts on the answer


def _pair(*, holder_idle: bool) -> tuple[Engine, FakeSession, FakeSession]:
    engine = Engine()
    engine.begin(1)
    engine.begin(2)
    return engine, FakeSession(1, 101, idle=holder_idle), FakeSession(2, 102, idle=False)


async def _reported_wait(*, holder_idle: bool, real: bool = True
                         ) -> tuple[Engine, FakeSession, FakeSession, ScriptedMonitor]:
    """Session 2 waits, the log reports it, and the monitor has asked PostgreSQL, whose
    answer is a wait on session 1's row (``real``) or nothing (a forged report)."""
    engine, holder, waiter = _pair(holder_idle=holder_idle)
    monitor = ScriptedMonitor(engine, [holder, waiter])
    if real:
        monitor.truth = [Wait(102, WaitKind.ROW, (101,))]
    monitor.start()
    monitor.started_waiting(waiter)
    monitor.reported([102])
    await monitor.poll_done()
    return engine, holder, waiter, monitor


def test_a_reported_wait_is_checked_with_postgresql_then_the_idle_holder_parks() -> None:
    async def run() -> None:
        _, holder, _, monitor = await _reported_wait(holder_idle=True)
        assert monitor.asked == [[102]]  # at once, not after the 60 s poll delay
        assert holder.parks == [1]
        assert monitor.stats["waits_reported"] == 1
        await monitor.stop()
    asyncio.run(run())


def test_a_forged_report_parks_no_one() -> None:
    # A client's text in the log looks like a wait; PostgreSQL says otherwise.
    async def run() -> None:
        engine, holder, _, monitor = await _reported_wait(holder_idle=True, real=False)
        assert holder.parks == []
        assert engine.txn(1) is not None and not engine.txn(1).partners  # type: ignore[union-attr]
        await monitor.stop()
    asyncio.run(run())


def test_a_busy_holder_makes_way_when_it_becomes_idle() -> None:
    async def run() -> None:
        _, holder, _, monitor = await _reported_wait(holder_idle=False)
        assert holder.parks == []
        holder.idle = True
        monitor.became_idle(holder)
        assert holder.parks == [1]
        monitor.became_idle(holder)  # once only
        assert holder.parks == [1]
        await monitor.stop()
    asyncio.run(run())


def test_no_way_is_made_for_a_session_that_stopped_waiting() -> None:
    async def run() -> None:
        _, holder, waiter, monitor = await _reported_wait(holder_idle=False)
        monitor.stopped_waiting(waiter)  # its statement got its answer meanwhile
        holder.idle = True
        monitor.became_idle(holder)
        assert holder.parks == []
        await monitor.stop()
    asyncio.run(run())


def test_reports_of_sessions_not_waiting_or_unknown_ask_nothing() -> None:
    async def run() -> None:
        engine, holder, other = _pair(holder_idle=True)
        monitor = ScriptedMonitor(engine, [holder, other])
        monitor.start()
        # 102 is not waiting on the endpoint's side (a late log line); 999 is not a client's.
        monitor.reported([102, 999])
        assert monitor.stats["waits_reported"] == 0
        monitor.started_waiting(other)
        monitor.reported([102])
        await monitor.poll_done()
        assert monitor.asked == [[102]]
        await monitor.stop()
    asyncio.run(run())


def test_a_closed_session_is_forgotten() -> None:
    async def run() -> None:
        _, holder, waiter, monitor = await _reported_wait(holder_idle=False)
        monitor.forget(holder)
        monitor.forget(waiter)
        assert monitor.waiting == {}
        holder.idle = True
        monitor.became_idle(holder)
        assert holder.parks == []
        await monitor.stop()
    asyncio.run(run())


# -- the log reader -------------------------------------------------------------------------


@pytest.mark.parametrize("where", ["unopenable", "full"])
def test_the_log_is_drained_even_when_its_file_cannot_be_written(
        tmp_path: Path, where: str) -> None:
    # A pipe nobody reads blocks every PostgreSQL backend that logs: the reader must go on
    # draining it (and feeding the lock monitor) whatever happens to the file.
    path = tmp_path / "missing" / "postgres.log" if where == "unopenable" \
        else Path("/dev/full")
    if where == "full" and not Path("/dev/full").exists():
        pytest.skip("no /dev/full here")
    got: list[bytes] = []
    read_end, write_end = os.pipe()
    server_log = ServerLog(os.fdopen(read_end, "rb"), path, [got.append])
    server_log.start()
    payload = WAIT * 2000  # more than a pipe holds

    def write() -> None:
        with os.fdopen(write_end, "wb") as w:
            w.write(payload)

    writer = threading.Thread(target=write, daemon=True)
    writer.start()
    writer.join(10)
    assert not writer.is_alive(), "the log pipe is not drained"
    settles(lambda: server_log.closed, "the reader to see the pipe's end")
    assert b"".join(got) == payload


def test_the_log_moves_between_its_thread_and_a_loop_losing_nothing(tmp_path: Path) -> None:
    # Read by its thread, then by an event loop (attach), then by a thread again (detach):
    # every byte reaches the file and the listeners once, in order, and the pipe's end
    # closes it wherever it is read.
    path = tmp_path / "postgres.log"
    got: list[bytes] = []
    arrived = threading.Condition()

    def listen(chunk: bytes) -> None:
        with arrived:
            got.append(chunk)
            arrived.notify_all()

    def delivered(n: int) -> None:
        with arrived:
            assert arrived.wait_for(lambda: len(b"".join(got)) == n, 10), b"".join(got)

    read_end, write_end = os.pipe()
    server_log = ServerLog(os.fdopen(read_end, "rb"), path, [listen])
    server_log.start()
    parts = [b"thread %d\n" % i for i in range(3)]
    os.write(write_end, parts[0])
    delivered(len(parts[0]))

    async def on_loop() -> None:
        server_log.attach(asyncio.get_running_loop())
        server_log.attach(asyncio.get_running_loop())  # twice is once
        os.write(write_end, parts[1])
        deadline = time.monotonic() + 10
        while len(b"".join(got)) < len(parts[0] + parts[1]):
            assert time.monotonic() < deadline, b"".join(got)
            await asyncio.sleep(0)  # the loop itself reads: let it run
        server_log.detach()

    asyncio.run(on_loop())
    os.write(write_end, parts[2] + WAIT)
    delivered(len(b"".join(parts) + WAIT))
    os.close(write_end)
    settles(lambda: server_log.closed, "the reader to see the pipe's end")
    assert b"".join(got) == b"".join(parts) + WAIT
    assert path.read_bytes() == b"".join(parts) + WAIT
    assert LockWaitParser().feed(b"".join(got)) == [12345]


def test_a_closed_log_ignores_hand_overs(tmp_path: Path) -> None:
    read_end, write_end = os.pipe()
    server_log = ServerLog(os.fdopen(read_end, "rb"), tmp_path / "log", [])

    async def on_loop() -> None:
        server_log.attach(asyncio.get_running_loop())
        os.close(write_end)
        deadline = time.monotonic() + 10
        while not server_log.closed:
            assert time.monotonic() < deadline
            await asyncio.sleep(0)
        server_log.attach(asyncio.get_running_loop())
        server_log.detach()

    asyncio.run(on_loop())
    server_log.start()
    assert server_log.closed
