"""dsqlkit local vs the same clients straight to the backend PostgreSQL, in one run.

    python bench/local_endpoint.py [--quick]

Targets (issue 2): SELECT 1 round trip through the endpoint ≤ 1.5x the client straight to
the backend; new connection (TLS + token verification + backend session) median ≤ 15 ms;
16 concurrent clients running short transactions ≥ 50 % of the direct throughput; endpoint
RSS with 200 idle sessions ≤ 150 MB; ready in < 5 s.

The endpoint runs in its own process (``dsqlkit local``). The backend is a PostgreSQL 16
started here with TLS on a TCP port as well as its Unix socket, so there are two baselines:
the backend over its Unix socket (no TLS: the cheapest possible path) and over TCP with TLS
(what a client pays for a real, remote, TLS-only server such as DSQL).
"""

from __future__ import annotations

import argparse
import json
import socket
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import psycopg

sys.path.insert(0, str(Path(__file__).parent))
from _endpoint import endpoint, select1_roundtrip_us

from dsqlkit.local.backend import ManagedPostgres
from dsqlkit.local.tls import ensure_tls


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_tls_backend(workdir: Path) -> tuple[ManagedPostgres, str, str]:
    tls = ensure_tls(workdir / "tls", ["localhost", "127.0.0.1"])
    pgtls = workdir / "pgtls"
    pgtls.mkdir()
    for src in (tls.server_cert, tls.server_key):
        (pgtls / src.name).write_bytes(src.read_bytes())
    port = free_port()
    # The pgserver build has no OpenSSL: the TLS baseline needs the system binaries.
    pg = ManagedPostgres(workdir / "pgdata", kind="system", durable=False, port=port, settings={
        "listen_addresses": "127.0.0.1", "ssl": "on",
        "ssl_cert_file": str(pgtls / "server.pem"), "ssl_key_file": str(pgtls / "server.key"),
    })
    pg.init()
    if pg.user is not None:
        import os

        for f in pgtls.iterdir():
            os.chown(f, pg.user.pw_uid, pg.user.pw_gid)
        os.chown(pgtls, pg.user.pw_uid, pg.user.pw_gid)
        (pgtls / "server.key").chmod(0o600)
    address = pg.start()
    unix_dsn = address.dsn()
    tcp_tls_dsn = (f"host=localhost port={port} user=postgres dbname=postgres "
                   f"sslmode=verify-full sslrootcert={tls.ca_cert}")
    return pg, unix_dsn, tcp_tls_dsn


def connect_ms(make_dsn, n: int) -> float:  # type: ignore[no-untyped-def]
    times = []
    for _ in range(n):
        dsn = make_dsn()
        t = time.perf_counter()
        psycopg.connect(dsn).close()
        times.append(time.perf_counter() - t)
    return statistics.median(times) * 1000


def throughput(dsn: str, clients: int, seconds: float) -> float:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("DROP TABLE IF EXISTS bench_counters")
        conn.execute("CREATE TABLE bench_counters (id int PRIMARY KEY, n bigint NOT NULL)")
        conn.execute("INSERT INTO bench_counters SELECT g, 0 FROM generate_series(1, %s) g",
                     [clients])
    done = [0] * clients
    stop = threading.Event()
    start = threading.Barrier(clients + 1)

    def work(i: int) -> None:
        with psycopg.connect(dsn) as conn:
            start.wait()
            while not stop.is_set():
                with conn.transaction():
                    conn.execute("SELECT n FROM bench_counters WHERE id = %s", [i + 1])
                    conn.execute("UPDATE bench_counters SET n = n + 1 WHERE id = %s", [i + 1])
                done[i] += 1

    threads = [threading.Thread(target=work, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    start.wait()
    t0 = time.perf_counter()
    time.sleep(seconds)
    stop.set()
    for t in threads:
        t.join()
    return sum(done) / (time.perf_counter() - t0)


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer iterations")
    ap.add_argument("--json", help="write results to this file")
    args = ap.parse_args()
    n_rt = 1000 if args.quick else 5000
    rounds = 3 if args.quick else 5
    seconds = 2.0 if args.quick else 5.0
    results: dict[str, float] = {}

    with tempfile.TemporaryDirectory() as tmp:
        # Cold start of the real command: new data directory, initdb, PostgreSQL, TLS, listen.
        t = time.perf_counter()
        with endpoint():
            results["startup_s"] = time.perf_counter() - t

        pg, unix_dsn, tls_dsn = start_tls_backend(Path(tmp))
        try:
            with endpoint("--backend-url", pg.address_url()) as ep:
                proxy, unix, tcp = [], [], []
                for _ in range(rounds):
                    proxy.append(select1_roundtrip_us(ep.dsn(), n_rt))
                    unix.append(select1_roundtrip_us(unix_dsn, n_rt))
                    tcp.append(select1_roundtrip_us(tls_dsn, n_rt))
                results["rt_endpoint_us"] = statistics.median(proxy)
                results["rt_direct_unix_us"] = statistics.median(unix)
                results["rt_direct_tls_us"] = statistics.median(tcp)

                n_conn = 50 if args.quick else 200
                results["connect_endpoint_ms"] = connect_ms(ep.dsn, n_conn)
                results["connect_direct_tls_ms"] = connect_ms(lambda: tls_dsn, n_conn)

                results["tps_endpoint"] = throughput(ep.dsn(), 16, seconds)
                results["tps_direct_unix"] = throughput(unix_dsn, 16, seconds)
                results["tps_direct_tls"] = throughput(tls_dsn, 16, seconds)

                base = rss_mb(ep.pid)
                conns = [psycopg.connect(ep.dsn()) for _ in range(200)]
                time.sleep(0.5)
                results["rss_idle_200_mb"] = rss_mb(ep.pid)
                results["rss_base_mb"] = base
                for c in conns:
                    c.close()
        finally:
            pg.stop()

    r = results
    rows = [
        ("ready after start (cold, new data dir)", f"{r['startup_s']:.2f} s", "< 5 s", ""),
        ("SELECT 1 round trip: endpoint", f"{r['rt_endpoint_us']:.0f} µs", "", ""),
        ("  straight to backend, Unix socket", f"{r['rt_direct_unix_us']:.0f} µs",
         "≤ 1.5x", f"{r['rt_endpoint_us'] / r['rt_direct_unix_us']:.2f}x"),
        ("  straight to backend, TCP + TLS", f"{r['rt_direct_tls_us']:.0f} µs",
         "≤ 1.5x", f"{r['rt_endpoint_us'] / r['rt_direct_tls_us']:.2f}x"),
        ("new connection (TLS+token+backend), median", f"{r['connect_endpoint_ms']:.2f} ms",
         "≤ 15 ms", ""),
        ("  straight to backend, TCP + TLS", f"{r['connect_direct_tls_ms']:.2f} ms", "", ""),
        ("16 clients, short transactions: endpoint", f"{r['tps_endpoint']:.0f} tx/s", "", ""),
        ("  straight to backend, Unix socket", f"{r['tps_direct_unix']:.0f} tx/s", "≥ 50 %",
         f"{100 * r['tps_endpoint'] / r['tps_direct_unix']:.0f} %"),
        ("  straight to backend, TCP + TLS", f"{r['tps_direct_tls']:.0f} tx/s", "≥ 50 %",
         f"{100 * r['tps_endpoint'] / r['tps_direct_tls']:.0f} %"),
        ("endpoint RSS, 200 idle sessions", f"{r['rss_idle_200_mb']:.0f} MB", "≤ 150 MB",
         f"(idle endpoint {r['rss_base_mb']:.0f} MB)"),
    ]
    width = max(len(x[0]) for x in rows)
    for name, value, target, ratio in rows:
        print(f"{name:<{width}}  {value:>12}  {target:>8}  {ratio}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
