"""A ``dsqlkit local`` endpoint in its own process, for benchmarks.

In its own process so that the endpoint's work (TLS, proxying) does not compete for the
benchmark's GIL.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from dsqlkit.auth import sigv4

BASELINE_PYTHON = os.environ.get("DSQLKIT_BASELINE_PYTHON", "/work/venv-baseline/bin/python")
BASELINE_HINT = (
    "the official connector is not installed; for the comparison run:\n"
    "  python -m venv /work/venv-baseline && "
    "/work/venv-baseline/bin/pip install 'aurora-dsql-python-connector[psycopg]'"
)


def baseline_available() -> bool:
    if not os.path.exists(BASELINE_PYTHON):
        return False
    probe = subprocess.run([BASELINE_PYTHON, "-c", "import aurora_dsql_psycopg"],
                           capture_output=True)
    return probe.returncode == 0


def child_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """A clean environment: no AWS settings from the caller, bytecode caching on."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("AWS_", "PG")) and k != "PYTHONDONTWRITEBYTECODE"}
    env["AWS_EC2_METADATA_DISABLED"] = "true"
    env.update(extra or {})
    return env


@contextmanager
def local_endpoint(*args: str) -> Iterator[dict[str, Any]]:
    """Start ``dsqlkit local --ephemeral --port 0 --json``; yield its JSON description."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "dsqlkit", "local", "--ephemeral", "--port", "0", "--json",
         *args],
        stdout=subprocess.PIPE, text=True, env=child_env(),
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if not line:
            raise RuntimeError("dsqlkit local did not start")
        info = json.loads(line)
        info["pid"] = proc.pid
        yield info
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()


class Endpoint:
    """Connection helpers over the JSON description of a running ``dsqlkit local``."""

    def __init__(self, info: dict[str, Any]) -> None:
        env = info["env"]
        self.info = info
        self.pid: int = info["pid"]
        self.port: int = info["port"]
        self.region: str = info["region"]
        self.ca_path: str = info["ca_path"]
        self.backend_url: str = info["backend_url"]
        self.credentials = sigv4.Credentials(env["AWS_ACCESS_KEY_ID"],
                                             env["AWS_SECRET_ACCESS_KEY"])

    def token(self, user: str = "admin") -> str:
        return sigv4.presign_token("localhost", self.region, self.credentials,
                                   action=sigv4.action_for_user(user))

    def dsn(self, user: str = "admin", **extra: object) -> str:
        params: dict[str, object] = {
            "host": "localhost", "port": self.port, "user": user, "dbname": "postgres",
            "sslmode": "verify-full", "sslrootcert": self.ca_path, "password": self.token(user)}
        params.update(extra)
        return " ".join(f"{k}={v}" for k, v in params.items())

    def backend_dsn(self) -> str:
        return self.backend_url


@contextmanager
def endpoint(*args: str) -> Iterator[Endpoint]:
    """Like :func:`local_endpoint`, yielding an :class:`Endpoint`."""
    with local_endpoint(*args) as info:
        yield Endpoint(info)


def select1_roundtrip_us(dsn: str, n: int) -> float:
    """Mean SELECT 1 round trip in µs over ``n`` queries, after 200 warm-up queries."""
    import time

    import psycopg

    with psycopg.connect(dsn, autocommit=True) as conn:
        for _ in range(200):
            conn.execute("SELECT 1")
        t = time.perf_counter()
        for _ in range(n):
            conn.execute("SELECT 1").fetchone()
        return (time.perf_counter() - t) / n * 1e6


def fmt_us(seconds: float) -> str:
    us = seconds * 1e6
    if us >= 10_000:
        return f"{us / 1000:8.1f} ms"
    return f"{us:8.2f} µs"
