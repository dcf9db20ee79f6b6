"""Start ``dsqlkit local`` in its own process for benchmarks, so that the endpoint and the
load generator do not share one interpreter (and one GIL)."""

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


class Endpoint:
    def __init__(self, info: dict[str, Any], proc: subprocess.Popen[str]) -> None:
        self.info = info
        self.proc = proc
        env = info["env"]
        self.credentials = sigv4.Credentials(env["AWS_ACCESS_KEY_ID"], env["AWS_SECRET_ACCESS_KEY"])
        self.port = info["port"]
        self.region = info["region"]
        self.ca_path = info["ca_path"]
        self.backend_url = info["backend_url"]
        self.pid = proc.pid

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
    proc = subprocess.Popen(
        [sys.executable, "-m", "dsqlkit", "local", "--ephemeral", "--port", "0", "--json", *args],
        stdout=subprocess.PIPE, text=True, env={**os.environ},
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if not line:
            raise RuntimeError("dsqlkit local did not start")
        yield Endpoint(json.loads(line), proc)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
