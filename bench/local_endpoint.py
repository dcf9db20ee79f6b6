"""dsqlkit local vs the same clients straight to the backend PostgreSQL, in one run.

    python bench/local_endpoint.py [--quick]

Targets (issue 2): SELECT 1 round trip through the endpoint ≤ 1.5x the client straight to
the backend; new connection (TLS + token verification + backend session) median ≤ 15 ms;
16 concurrent clients running short transactions ≥ 50 % of the direct throughput; endpoint
RSS with 200 idle sessions ≤ 150 MB; ready in < 5 s.

The endpoint runs in its own process (``dsqlkit local``). The backend is one PostgreSQL
(the system's binaries: the pgserver build has no OpenSSL) with TLS on a TCP port as well as
its Unix socket, so there are two baselines: the backend over its Unix socket (no TLS: the
cheapest possible path) and over TCP with TLS (what a client pays for a real, TLS-only
server such as DSQL). A third line is a floor: ``_tls_relay.py``, a proxy process that
terminates TLS and copies bytes to the same Unix socket and does nothing else.

The targets are measured in interleaved rounds and each ratio is the median of the
per-round ratios, with the lowest and highest: on a small virtual machine the speed of the
whole machine drifts by tens of percent within a minute, which a ratio of two separately
measured medians would take for a difference between the targets.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

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


def start_relay(workdir: Path, backend_socket: str) -> tuple[subprocess.Popen[str], str]:
    """The byte-copying TLS relay (bench/_tls_relay.py) in front of the backend."""
    tls = ensure_tls(workdir / "tls", ["localhost", "127.0.0.1"])
    proc = subprocess.Popen(
        [sys.executable, str(Path(__file__).parent / "_tls_relay.py"), str(tls.server_cert),
         str(tls.server_key), backend_socket], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    port = int(proc.stdout.readline())
    return proc, (f"host=localhost port={port} user=postgres dbname=postgres "
                  f"sslmode=verify-full sslrootcert={tls.ca_cert}")


def interleaved(targets: dict[str, str], measure: Callable[[str], float],
                rounds: int) -> dict[str, list[float]]:
    """``measure`` each target once per round, in turn: a machine that speeds up or slows
    down during the run affects every target of a round alike."""
    results: dict[str, list[float]] = {name: [] for name in targets}
    for _ in range(rounds):
        for name, dsn in targets.items():
            results[name].append(measure(dsn))
    return results


def ratio(results: dict[str, list[float]], name: str, base: str) -> tuple[float, float, float]:
    """Median, lowest and highest of the per-round ratios ``name / base``."""
    ratios = [x / b for x, b in zip(results[name], results[base], strict=True)]
    return statistics.median(ratios), min(ratios), max(ratios)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer rounds")
    ap.add_argument("--json", help="write results to this file")
    ap.add_argument("--cpu", type=int, metavar="N",
                    help="run everything (benchmark, PostgreSQL, endpoint, relay) on CPU N "
                    "only: no cross-CPU wake-ups, so the ratios show CPU cost alone")
    args = ap.parse_args()
    if args.cpu is not None:
        os.sched_setaffinity(0, {args.cpu})  # inherited by every process started below
    n_rt = 1500
    rt_rounds = 5 if args.quick else 15
    tp_rounds = 3 if args.quick else 7
    seconds = 1.0 if args.quick else 2.0
    results: dict[str, Any] = {}

    with tempfile.TemporaryDirectory() as tmp:
        # Cold start of the real command: new data directory, initdb, PostgreSQL, TLS, listen.
        t = time.perf_counter()
        with endpoint():
            results["startup_s"] = time.perf_counter() - t

        pg, unix_dsn, tls_dsn = start_tls_backend(Path(tmp))
        relay, relay_dsn = start_relay(Path(tmp), pg.address.socket_path)
        try:
            with endpoint("--backend-url", pg.address_url()) as ep:
                targets = {"endpoint": ep.dsn(), "relay": relay_dsn, "unix": unix_dsn,
                           "tls": tls_dsn}
                rt = interleaved(targets, lambda dsn: select1_roundtrip_us(dsn, n_rt), rt_rounds)
                results["rt_us"] = {k: statistics.median(v) for k, v in rt.items()}
                results["rt_ratio"] = {f"{a}/{b}": ratio(rt, a, b) for a in ("endpoint", "relay")
                                       for b in ("tls", "unix")}

                n_conn = 50 if args.quick else 200
                results["connect_endpoint_ms"] = connect_ms(ep.dsn, n_conn)
                results["connect_direct_tls_ms"] = connect_ms(lambda: tls_dsn, n_conn)

                tp = interleaved(targets, lambda dsn: throughput(dsn, 16, seconds), tp_rounds)
                results["tps"] = {k: statistics.median(v) for k, v in tp.items()}
                results["tps_ratio"] = {f"{a}/{b}": ratio(tp, a, b) for a in ("endpoint", "relay")
                                        for b in ("tls", "unix")}

                base = rss_mb(ep.pid)
                conns = [psycopg.connect(ep.dsn()) for _ in range(200)]
                time.sleep(0.5)
                results["rss_idle_200_mb"] = rss_mb(ep.pid)
                results["rss_base_mb"] = base
                for c in conns:
                    c.close()
        finally:
            relay.terminate()
            relay.wait()
            pg.stop()

    r = results

    def times(key: str, a: str, b: str) -> str:
        m, lo, hi = r[key][f"{a}/{b}"]
        return f"{m:.2f}x ({lo:.2f}-{hi:.2f})"

    def percent(a: str, b: str) -> str:
        m, lo, hi = r["tps_ratio"][f"{a}/{b}"]
        return f"{100 * m:.0f} % ({100 * lo:.0f}-{100 * hi:.0f})"

    rows = [
        ("ready after start (cold, new data dir)", f"{r['startup_s']:.2f} s", "< 5 s", ""),
        ("SELECT 1 round trip: endpoint", f"{r['rt_us']['endpoint']:.0f} µs", "", ""),
        ("  vs straight to backend, TCP + TLS", f"{r['rt_us']['tls']:.0f} µs", "≤ 1.5x",
         times("rt_ratio", "endpoint", "tls")),
        ("  vs straight to backend, Unix socket", f"{r['rt_us']['unix']:.0f} µs", "≤ 1.5x",
         times("rt_ratio", "endpoint", "unix")),
        ("  floor: byte-copying TLS relay, vs TLS", f"{r['rt_us']['relay']:.0f} µs", "",
         times("rt_ratio", "relay", "tls")),
        ("new connection (TLS+token+backend), median", f"{r['connect_endpoint_ms']:.2f} ms",
         "≤ 15 ms", ""),
        ("  straight to backend, TCP + TLS", f"{r['connect_direct_tls_ms']:.2f} ms", "", ""),
        ("16 clients, short transactions: endpoint", f"{r['tps']['endpoint']:.0f} tx/s", "", ""),
        ("  vs straight to backend, TCP + TLS", f"{r['tps']['tls']:.0f} tx/s", "≥ 50 %",
         percent("endpoint", "tls")),
        ("  vs straight to backend, Unix socket", f"{r['tps']['unix']:.0f} tx/s", "≥ 50 %",
         percent("endpoint", "unix")),
        ("  floor: byte-copying TLS relay, vs TLS", f"{r['tps']['relay']:.0f} tx/s", "",
         percent("relay", "tls")),
        ("endpoint RSS, 200 idle sessions", f"{r['rss_idle_200_mb']:.0f} MB", "≤ 150 MB",
         f"(idle endpoint {r['rss_base_mb']:.0f} MB)"),
    ]
    print(f"ratios: median of {rt_rounds} (round trip) and {tp_rounds} (throughput) interleaved "
          "rounds, lowest-highest in brackets")
    width = max(len(x[0]) for x in rows)
    for name, value, target, shown in rows:
        print(f"{name:<{width}}  {value:>12}  {target:>8}  {shown}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
