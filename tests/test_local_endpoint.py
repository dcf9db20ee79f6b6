"""dsqlkit local, end to end with real clients: TLS, token verification, protocol features."""

from __future__ import annotations

import asyncio
import datetime as dt
import shutil
import socket
import ssl
import subprocess
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from unittest import mock

import asyncpg
import botocore.auth
import botocore.session
import psycopg
import pytest

from clock_support import settles
from dsqlkit.auth import sigv4
from dsqlkit.local import LocalDSQL, wire

ACCESS_DENIED = "unable to accept connection, access denied"


def connect_error(ep: LocalDSQL, **kw: str | int) -> str:
    with pytest.raises(psycopg.OperationalError) as info:
        psycopg.connect(ep.dsn(**kw), connect_timeout=10).close()
    return str(info.value)


# ---------------------------------------------------------------- clients and TLS modes


@pytest.mark.parametrize("negotiation", ["postgres", "direct"])
def test_psycopg_verify_full(dsql_local: LocalDSQL, negotiation: str) -> None:
    with psycopg.connect(dsql_local.dsn(sslnegotiation=negotiation)) as conn:
        assert conn.pgconn.ssl_in_use
        assert conn.info.parameter_status("server_version") == "16.15"
        row = conn.execute(
            "SELECT current_user, current_database(), current_setting('transaction_isolation')"
        ).fetchone()
        assert row == ("admin", "postgres", "repeatable read")


def test_dsql_style_hostname_via_hostaddr(dsql_local: LocalDSQL) -> None:
    """Connecting as to a real cluster: TLS name and token host are the DSQL endpoint name."""
    token = dsql_local.token(host=dsql_local.hostname)
    dsn = dsql_local.dsn(host=dsql_local.hostname, hostaddr="127.0.0.1", password=token)
    with psycopg.connect(dsn) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)


def _asyncpg_ssl(ep: LocalDSQL) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=ep.ca_path)
    ctx.set_alpn_protocols(["postgresql"])
    return ctx


@pytest.mark.parametrize("direct", [False, True])
async def test_asyncpg(dsql_local: LocalDSQL, direct: bool) -> None:
    conn = await asyncpg.connect(
        host="localhost", port=dsql_local.port, user="admin", database="postgres",
        password=dsql_local.token(), ssl=_asyncpg_ssl(dsql_local), direct_tls=direct,
    )
    try:
        stmt = await conn.prepare("SELECT $1::int + 1")
        assert await stmt.fetchval(41) == 42
        async with conn.transaction():
            assert await conn.fetchval("SELECT current_setting('transaction_isolation')") == (
                "repeatable read"
            )
    finally:
        await conn.close()


def _psql() -> str | None:
    for candidate in sorted(Path("/usr/lib/postgresql").glob("*/bin/psql"), reverse=True):
        return str(candidate)
    return shutil.which("psql")


def test_psql(dsql_local: LocalDSQL) -> None:
    psql = _psql()
    if psql is None:
        pytest.skip("no psql binary on this machine")
    conninfo = (f"host=localhost port={dsql_local.port} user=admin dbname=postgres "
                f"sslmode=verify-full sslrootcert={dsql_local.ca_path}")
    res = subprocess.run(
        [psql, conninfo, "-XAtc", "SELECT 40 + 2"],
        env={"PGPASSWORD": dsql_local.token(), "PATH": "/usr/bin:/bin"},
        capture_output=True, text=True, timeout=30,
    )
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "42"


# ---------------------------------------------------------------- tokens


def _botocore_token(ep: LocalDSQL, *, admin: bool, host: str = "localhost",
                    region: str | None = None, when: dt.datetime | None = None,
                    expires: int = 900) -> str:
    session = botocore.session.get_session()
    creds = ep.credentials
    session.set_credentials(creds.access_key, creds.secret_key, creds.session_token)
    client = session.create_client("dsql", region_name=region or ep.region)
    method = (client.generate_db_connect_admin_auth_token if admin
              else client.generate_db_connect_auth_token)
    if when is None:
        return str(method(host, region or ep.region, expires))
    with mock.patch.object(botocore.auth, "get_current_datetime",
                           return_value=when.replace(tzinfo=None)):
        return str(method(host, region or ep.region, expires))


def test_botocore_token_accepted(dsql_local: LocalDSQL) -> None:
    token = _botocore_token(dsql_local, admin=True)
    with psycopg.connect(dsql_local.dsn(password=token)) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)
    # A token may be reused for new connections until it expires.
    with psycopg.connect(dsql_local.dsn(password=token)) as conn:
        assert conn.execute("SELECT 2").fetchone() == (2,)


def _tamper_signature(token: str) -> str:
    head, sig = token.rsplit("X-Amz-Signature=", 1)
    return head + "X-Amz-Signature=" + ("0" if sig[0] != "0" else "1") + sig[1:]


def _drop_param(token: str, name: str) -> str:
    host, query = token.split("/?", 1)
    kept = [p for p in query.split("&") if not p.startswith(name + "=")]
    return host + "/?" + "&".join(kept)


@pytest.mark.parametrize(
    ("case", "hint"),
    [
        ("tampered", "signature we calculated does not match"),
        ("expired", "Signature expired"),
        ("wrong_region", "scoped to a valid region: 'us-east-1', not 'us-west-2'"),
        ("wrong_service", "scoped to correct service: 'dsql', not 'rds'"),
        ("wrong_host", "signed for another host: db.example.com"),
        ("wrong_action", "Wrong user to action mapping. user: admin, action: DbConnect"),
        ("missing_date", "missing parameter X-Amz-Date"),
        ("missing_signature", "missing parameter X-Amz-Signature"),
        ("garbage", "malformed token"),
        ("unknown_key", "security token included in the request is invalid"),
        # The official connector's suite (green on DSQL) expects these words.
        ("too_long_expiry", "X-Amz-Expires must be less than a week (in seconds)"),
    ],
)
def test_bad_tokens_rejected(dsql_local: LocalDSQL, case: str, hint: str) -> None:
    ep = dsql_local
    now = dt.datetime.now(dt.timezone.utc)
    tokens = {
        "tampered": lambda: _tamper_signature(_botocore_token(ep, admin=True)),
        "expired": lambda: _botocore_token(ep, admin=True, when=now - dt.timedelta(hours=1),
                                           expires=60),
        "wrong_region": lambda: _botocore_token(ep, admin=True, region="us-west-2"),
        "wrong_service": lambda: _botocore_token(ep, admin=True).replace("%2Fdsql%2F", "%2Frds%2F"),
        "wrong_host": lambda: _botocore_token(ep, admin=True, host="db.example.com"),
        "wrong_action": lambda: _botocore_token(ep, admin=False),
        "missing_date": lambda: _drop_param(_botocore_token(ep, admin=True), "X-Amz-Date"),
        "missing_signature": lambda: _drop_param(_botocore_token(ep, admin=True),
                                                 "X-Amz-Signature"),
        "garbage": lambda: "\u00e9t\u00e9 not a token at all ' \\",
        "unknown_key": lambda: sigv4.presign_token(
            "localhost", ep.region, sigv4.Credentials("AKIAUNKNOWN000000000", "s3cr3t"),
            action="DbConnectAdmin"),
        "too_long_expiry": lambda: _botocore_token(ep, admin=True, expires=604_801),
    }
    message = connect_error(ep, password=tokens[case]())
    assert ACCESS_DENIED in message
    assert hint in message
    assert ep.credentials.secret_key not in message


async def test_rejection_sqlstate_is_08006(dsql_local: LocalDSQL) -> None:
    with pytest.raises(asyncpg.PostgresError) as info:
        await asyncpg.connect(
            host="localhost", port=dsql_local.port, user="admin", database="postgres",
            password=dsql_local.token(user="someone"), ssl=_asyncpg_ssl(dsql_local),
        )
    assert info.value.sqlstate == "08006"
    assert info.value.args[0] == ACCESS_DENIED
    assert info.value.hint == "Wrong user to action mapping. user: admin, action: DbConnect"


# ---------------------------------------------------------------- transport refusals


def test_plaintext_refused(dsql_local: LocalDSQL) -> None:
    """libpq's sslmode=disable: 08P01 with "SSL is mandatory", as the official connector's
    suite (green on DSQL) expects."""
    assert "unable to accept connection, SSL is mandatory" in connect_error(
        dsql_local, sslmode="disable")
    # libpq does not report a startup failure's SQLSTATE: read the answer off the wire.
    with socket.create_connection(("127.0.0.1", dsql_local.port), timeout=10) as sock:
        sock.sendall(wire.startup_message({"user": "admin", "database": "postgres"}))
        data = b""
        while chunk := sock.recv(4096):
            data += chunk
    assert data[:1] == b"E"
    fields = wire.parse_fields(data)
    assert (fields["S"], fields["C"]) == ("FATAL", "08P01")


async def test_plaintext_refused_asyncpg(dsql_local: LocalDSQL) -> None:
    """asyncpg's ssl=False: a ProtocolViolationError whose message says SSL is mandatory."""
    with pytest.raises(asyncpg.ProtocolViolationError) as info:
        await asyncpg.connect(
            host="localhost", port=dsql_local.port, user="admin", database="postgres",
            password=dsql_local.token(), ssl=False,
        )
    assert "SSL is mandatory" in info.value.args[0]


async def test_unknown_role_is_a_protocol_violation(dsql_local: LocalDSQL) -> None:
    """An unknown role: 08P01 (asyncpg's ProtocolViolationError), DSQL's hint kept."""
    with pytest.raises(asyncpg.ProtocolViolationError) as info:
        await asyncpg.connect(
            host="localhost", port=dsql_local.port, user="nonexistent_user",
            database="postgres", password=dsql_local.token(user="nonexistent_user"),
            ssl=_asyncpg_ssl(dsql_local),
        )
    assert info.value.sqlstate == "08P01"
    assert info.value.hint == "Role nonexistent_user does not exist"


def test_missing_sni_refused(dsql_local: LocalDSQL) -> None:
    # libpq sends no SNI when the host is an IP address.
    assert "unable to accept connection, sni was not received" in connect_error(
        dsql_local, host="127.0.0.1")


def test_direct_tls_requires_alpn(raw_client: type) -> None:
    c = raw_client(direct=True, alpn=False)
    err = c.error()
    assert err["C"] == "08P01"
    assert "ALPN" in err["M"]


def test_unsupported_startup_parameter(dsql_local: LocalDSQL) -> None:
    msg = connect_error(dsql_local, options="-c statement_timeout=1000")
    assert 'setting configuration parameter "statement_timeout" not supported' in msg


def test_allowed_startup_parameter(dsql_local: LocalDSQL) -> None:
    with psycopg.connect(dsql_local.dsn(options="-c search_path=pg_catalog,public")) as conn:
        assert conn.execute("SHOW search_path").fetchone() == ("pg_catalog,public",)


def test_only_database_postgres(dsql_local: LocalDSQL) -> None:
    assert 'database "other" does not exist' in connect_error(dsql_local, dbname="other")


# ---------------------------------------------------------------- protocol features


def test_prepared_statements_and_pipeline(dsql_local: LocalDSQL) -> None:
    with psycopg.connect(dsql_local.dsn(), prepare_threshold=0) as conn:
        for i in range(5):
            assert conn.execute("SELECT %s::int * 2", [i]).fetchone() == (i * 2,)
        with conn.pipeline():
            curs = [conn.execute("SELECT %s::text", [str(i)]) for i in range(20)]
        assert [c.fetchone() for c in curs] == [(str(i),) for i in range(20)]


def test_copy_in_and_out(dsql_local: LocalDSQL) -> None:
    with psycopg.connect(dsql_local.dsn(), autocommit=True) as conn:
        conn.execute("DROP TABLE IF EXISTS t_copy")
        conn.execute("CREATE TABLE t_copy (id int primary key, name text)")
        with conn.cursor() as cur:
            with cur.copy("COPY t_copy (id, name) FROM STDIN") as copy:
                for i in range(500):
                    copy.write_row((i, f"name {i}"))
            assert conn.execute("SELECT count(*) FROM t_copy").fetchone() == (500,)
            rows = []
            with cur.copy("COPY (SELECT id FROM t_copy ORDER BY id) TO STDOUT") as copy:
                rows = [r for r in copy.rows()]
            assert len(rows) == 500
        conn.execute("DROP TABLE t_copy")


def _running(ep: LocalDSQL, marker: str) -> Callable[[], bool]:
    """Whether a statement whose text ends with ``marker`` is running on the backend."""
    def check() -> bool:
        with psycopg.connect(ep.backend_dsn, autocommit=True) as admin:
            return admin.execute(
                "SELECT 1 FROM pg_stat_activity WHERE state = 'active' AND query LIKE %s "
                "AND pid <> pg_backend_pid()", [f"%{marker}"]).fetchone() is not None
    return check


def _in_thread(conn: psycopg.Connection[Any], sql: str) -> tuple[threading.Thread,
                                                                  list[object]]:
    """Run ``sql`` on ``conn`` in a thread; the list gets its rows or its exception."""
    outcome: list[object] = []

    def run() -> None:
        try:
            outcome.append(conn.execute(sql).fetchall())
        except Exception as exc:
            outcome.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    return thread, outcome


def test_cancel_reaches_the_right_backend(dsql_local: LocalDSQL) -> None:
    with psycopg.connect(dsql_local.dsn()) as victim, psycopg.connect(dsql_local.dsn()) as other:
        # The cancel is sent once the statement runs (a minute, unless cancelled).
        thread, outcome = _in_thread(victim, "SELECT pg_sleep(60) AS cancel_me")
        settles(_running(dsql_local, "cancel_me"), "the statement to run")
        victim.cancel_safe()
        thread.join(30)
        assert len(outcome) == 1 and isinstance(outcome[0], psycopg.errors.QueryCanceled)
        victim.rollback()
        assert other.execute("SELECT 1").fetchone() == (1,)
        assert victim.execute("SELECT 2").fetchone() == (2,)


def test_cancel_with_wrong_secret_is_ignored(dsql_local: LocalDSQL) -> None:
    with psycopg.connect(dsql_local.dsn()) as conn:
        pid = conn.info.backend_pid
        # The wrong-key cancel arrives while a statement runs, and the endpoint has handled
        # it (it closes a cancel connection when done) before the statement ends.
        thread, outcome = _in_thread(conn, "SELECT pg_sleep(0.5), 1 AS wrong_secret")
        settles(_running(dsql_local, "wrong_secret"), "the statement to run")
        s = socket.create_connection(("127.0.0.1", dsql_local.port), timeout=10)
        s.sendall(wire.cancel_request(pid, 12345))
        assert s.recv(1) == b""
        s.close()
        thread.join(30)
        assert outcome == [[("", 1)]]


def test_concurrent_sessions(dsql_local: LocalDSQL) -> None:
    errors: list[BaseException] = []

    def work(n: int) -> None:
        try:
            with psycopg.connect(dsql_local.dsn()) as conn:
                for i in range(20):
                    assert conn.execute("SELECT %s::int", [n * 100 + i]).fetchone() == (
                        n * 100 + i,)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors


def test_errors_and_transactions_pass_through(dsql_local: LocalDSQL) -> None:
    with psycopg.connect(dsql_local.dsn()) as conn:
        with pytest.raises(psycopg.errors.UndefinedTable):
            conn.execute("SELECT * FROM no_such_table")
        conn.rollback()
        assert conn.execute("SELECT 1").fetchone() == (1,)


def test_sessions_waiting_on_the_backend_are_counted(raw_client: type,
                                                    dsql_local: LocalDSQL) -> None:
    # The count decides how answers are forwarded (see Session._on_backend_frames); it
    # must come back to zero however sessions end.
    server = dsql_local.server

    def settles_at(n: int) -> bool:
        settles(lambda: server.sessions_waiting == n, f"{n} sessions waiting")
        return True

    assert settles_at(0)
    slow = raw_client()
    slow.login(dsql_local)
    # Busy for a minute: still waiting whatever the rest of the test takes.
    slow.send(wire.query("SELECT pg_sleep(60) AS waiting_probe"))
    assert settles_at(1)
    with psycopg.connect(dsql_local.dsn(), autocommit=True) as conn:
        for _ in range(20):
            conn.execute("SELECT 1")
        with conn.transaction():
            conn.execute("SELECT 1")
        with pytest.raises(psycopg.errors.DivisionByZero):
            conn.execute("SELECT 1/0")
    assert server.sessions_waiting == 1
    slow.close()  # the client goes away while the backend still works for it
    assert settles_at(0)
    with psycopg.connect(dsql_local.backend_dsn, autocommit=True) as admin:
        admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                      "WHERE query LIKE '%waiting_probe' AND pid <> pg_backend_pid()")


# ---------------------------------------------------------------- lifecycle


def test_connection_age_cap(dsql_local: LocalDSQL) -> None:
    now = [1000.0]
    with LocalDSQL(dsql_local.data_dir, backend_url=dsql_local.backend_url, port=0,
                   max_connection_age=60.0, clock=lambda: now[0]) as ep, \
            psycopg.connect(ep.dsn(), autocommit=True) as idle, \
            psycopg.connect(ep.dsn()) as busy:
        idle.execute("SELECT 1")
        busy.execute("SELECT 1")  # a transaction is open when the cap passes
        ep.check_ages()
        idle.execute("SELECT 1")  # not yet
        now[0] += 61
        ep.check_ages()
        with pytest.raises(psycopg.OperationalError, match="connection age limit of 60s exceeded"):
            idle.execute("SELECT 1")
        # The transaction is allowed to finish; then the session ends.
        assert busy.execute("SELECT 2").fetchone() == (2,)
        busy.commit()
        with pytest.raises(psycopg.OperationalError):
            busy.execute("SELECT 1")


def test_max_connections_quota(dsql_local: LocalDSQL) -> None:
    with LocalDSQL(dsql_local.data_dir, backend_url=dsql_local.backend_url, port=0,
                   max_connections=2) as ep:
        a = psycopg.connect(ep.dsn())
        b = psycopg.connect(ep.dsn())
        try:
            msg = connect_error(ep)
            assert "Unable to accept connection, too many open connections." in msg
        finally:
            a.close()
            b.close()
        # The slots come back when the endpoint has seen both sessions end.
        settles(lambda: ep.server.open_connections == 0, "the sessions to end")
        psycopg.connect(ep.dsn()).close()


def test_connection_rate_quota(dsql_local: LocalDSQL) -> None:
    # The token bucket refills on the endpoint's injected clock: the test moves it.
    now = [1000.0]
    with LocalDSQL(dsql_local.data_dir, backend_url=dsql_local.backend_url, port=0,
                   connection_rate=1.0, connection_burst=2, clock=lambda: now[0]) as ep:
        psycopg.connect(ep.dsn()).close()
        psycopg.connect(ep.dsn()).close()
        assert "Unable to accept connection, rate exceeded." in connect_error(ep)
        now[0] += 0.5  # half a token
        assert "Unable to accept connection, rate exceeded." in connect_error(ep)
        now[0] += 0.5  # one token
        psycopg.connect(ep.dsn()).close()
        assert "Unable to accept connection, rate exceeded." in connect_error(ep)
        now[0] += 10  # the bucket holds no more than the burst
        psycopg.connect(ep.dsn()).close()
        psycopg.connect(ep.dsn()).close()
        assert "Unable to accept connection, rate exceeded." in connect_error(ep)


@pytest.fixture
def state_dir() -> Iterator[Path]:
    """A data directory outside pytest's tmp_path: pytest keeps its base directory private
    (0700), which the unprivileged account PostgreSQL runs as under root cannot traverse."""
    path = Path(tempfile.mkdtemp(prefix="dsqlkit-test-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_data_dir_persists_identity_and_data(state_dir: Path) -> None:
    tmp_path = state_dir
    with LocalDSQL(tmp_path / "ep", port=0) as ep:
        first = (ep.cluster_id, ep.credentials.access_key)
        ca = Path(ep.ca_path).read_bytes()
        with psycopg.connect(ep.dsn(), autocommit=True) as conn:
            conn.execute("CREATE TABLE kept (id int primary key)")
            conn.execute("INSERT INTO kept VALUES (7)")
    with LocalDSQL(tmp_path / "ep", port=0) as ep:
        assert (ep.cluster_id, ep.credentials.access_key) == first
        assert Path(ep.ca_path).read_bytes() == ca
        with psycopg.connect(ep.dsn()) as conn:
            assert conn.execute("SELECT id FROM kept").fetchone() == (7,)


def test_second_instance_on_same_data_dir_refused(state_dir: Path) -> None:
    tmp_path = state_dir
    from dsqlkit.errors import LocalEndpointError

    with LocalDSQL(tmp_path / "ep", port=0), pytest.raises(
        LocalEndpointError, match="another dsqlkit local is running"
    ):
        LocalDSQL(tmp_path / "ep", port=0).start()


def test_cli_local_smoke(tmp_path: Path) -> None:
    import json
    import os
    import signal
    import sys

    proc = subprocess.Popen(
        [sys.executable, "-m", "dsqlkit", "local", "--ephemeral", "--port", "0", "--json"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        assert proc.stdout is not None
        info = json.loads(proc.stdout.readline())
        assert info["hosts_line"] == f"127.0.0.1 {info['hostname']}"
        env = {**os.environ, **info["env"]}
        creds = sigv4.Credentials(env["AWS_ACCESS_KEY_ID"], env["AWS_SECRET_ACCESS_KEY"])
        token = sigv4.presign_token("localhost", info["region"], creds, action="DbConnectAdmin")
        dsn = (f"host=localhost port={info['port']} user=admin dbname=postgres "
               f"sslmode=verify-full sslrootcert={info['ca_path']} password={token}")
        with psycopg.connect(dsn) as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    assert not Path(info["data_dir"]).exists()


def test_asyncio_many_sessions(dsql_local: LocalDSQL) -> None:
    async def main() -> None:
        async def one(i: int) -> int:
            conn = await asyncpg.connect(
                host="localhost", port=dsql_local.port, user="admin", database="postgres",
                password=dsql_local.token(), ssl=_asyncpg_ssl(dsql_local))
            try:
                return int(await conn.fetchval("SELECT $1::int", i))
            finally:
                await conn.close()

        assert await asyncio.gather(*(one(i) for i in range(30))) == list(range(30))

    asyncio.run(main())


def test_profile_keys_are_the_trusted_ones(
    dsql_local: LocalDSQL, state_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    creds_file = state_dir / "credentials"
    creds_file.write_text("[dev]\naws_access_key_id = AKIAPROFILEEXAMPLE01\n"
                          "aws_secret_access_key = profile/secret+key\n")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(creds_file))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(state_dir / "config"))
    with LocalDSQL(dsql_local.data_dir, backend_url=dsql_local.backend_url, port=0,
                   profile="dev") as ep:
        assert ep.credentials.access_key == "AKIAPROFILEEXAMPLE01"
        with psycopg.connect(ep.dsn()) as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)
        # The data directory's own key pair is not trusted when a profile is.
        other = sigv4.presign_token("localhost", ep.region, dsql_local.credentials,
                                    action="DbConnectAdmin")
        assert "security token included in the request is invalid" in connect_error(
            ep, password=other)


@pytest.mark.skipif(not any(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
                    and shutil.which("initdb") is None, reason="no system PostgreSQL")
def test_system_postgresql_backend() -> None:
    with LocalDSQL(ephemeral=True, port=0, backend="system") as ep:
        assert "pgserver" not in str(ep.postgres.bin_dir)
        with psycopg.connect(ep.dsn()) as conn:
            assert conn.info.parameter_status("server_version") == "16.15"
            assert conn.execute("SHOW server_version").fetchone() == ("16.15",)


def test_cli_defaults_match_the_python_api() -> None:
    import inspect

    from dsqlkit.cli import build_parser

    args = build_parser().parse_args(["local"])
    api = inspect.signature(LocalDSQL).parameters
    assert args.lock_timeout == api["lock_timeout"].default
    assert args.max_connections == api["max_connections"].default
    assert args.connection_rate == api["connection_rate"].default
    assert args.connection_burst == api["connection_burst"].default
    assert args.max_connection_age == api["max_connection_age"].default
    assert args.occ == api["occ_mode"].default
    assert args.region == api["region"].default
