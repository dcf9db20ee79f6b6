"""The cluster's host name in a hosts file (``dsqlkit local --etc-hosts``).

A real cluster is reached by its name, ``<cluster-id>.dsql.<region>.on.aws``, and code and
test suites written for DSQL connect to that name (and check the certificate against it). The
local endpoint's certificate carries the name too; what is missing is a way for the name to
reach 127.0.0.1. The only way every client shares (libpq, asyncpg, Node, Go, the JVM) is the
system's hosts file, so with ``--etc-hosts`` the endpoint adds a line there while it runs::

    127.0.0.1 abcdefghijklmnopqrstuvwxyz.dsql.us-east-1.on.aws  # dsqlkit-local pid=4242

The comment marks the line as ours and names the process that added it. The endpoint removes
its line when it stops; a line whose process is gone (the endpoint was killed) is removed by
the next endpoint that edits the file. Lines without the mark are never touched.

The file is rewritten in place, not replaced: in a container ``/etc/hosts`` is a bind mount
that cannot be renamed over.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path

from dsqlkit.errors import LocalEndpointError

MARK = "# dsqlkit-local pid="
DEFAULT_PATH = "/etc/hosts"


def line_for(hostname: str, address: str = "127.0.0.1", pid: int | None = None) -> str:
    """The hosts line for ``hostname``, marked with the pid of the process that owns it."""
    return f"{address} {hostname}  {MARK}{os.getpid() if pid is None else pid}"


def _owner(line: str) -> int | None:
    _, mark, pid = line.partition(MARK)
    if not mark or not pid.strip().isdigit():
        return None
    return int(pid.strip())


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process: alive
    return True


def _edit(path: Path, *, add: str | None = None, drop_own: bool = False) -> None:
    """Rewrite ``path`` in place: drop marked lines of dead processes (and ours when
    ``drop_own``), then append ``add``."""
    try:
        f = open(path, "r+", encoding="utf-8")  # noqa: SIM115 - closed below
    except OSError as exc:
        raise LocalEndpointError(
            f"cannot edit {path} ({exc.strerror or exc}): run as a user who may write it, "
            f"or add this line yourself: {add}" if add else
            f"cannot edit {path}: {exc.strerror or exc}") from None
    with f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        lines = f.read().splitlines()
        out = []
        for line in lines:
            pid = _owner(line)
            if pid is not None and (not _alive(pid) or (drop_own and pid == os.getpid())):
                continue
            out.append(line)
        if add is not None and add not in out:
            out.append(add)
        if out != lines:
            f.seek(0)
            f.write("".join(line + "\n" for line in out))
            f.truncate()


class HostsEntry:
    """Adds the endpoint's line to a hosts file on :meth:`add`, removes it on :meth:`remove`."""

    def __init__(self, hostname: str, path: str | os.PathLike[str] = DEFAULT_PATH) -> None:
        self.hostname = hostname
        self.path = Path(path)
        self.line = line_for(hostname)
        self.added = False

    def add(self) -> None:
        _edit(self.path, add=self.line)
        self.added = True

    def remove(self) -> None:
        if not self.added:
            return
        self.added = False
        with contextlib.suppress(OSError, LocalEndpointError):
            _edit(self.path, drop_own=True)


def resolves_to_loopback(hostname: str) -> bool:
    """Whether the system resolver sends ``hostname`` to this machine."""
    import ipaddress
    import socket

    try:
        infos = socket.getaddrinfo(hostname, None, proto=socket.IPPROTO_TCP)
    except OSError:
        return False
    return bool(infos) and all(
        ipaddress.ip_address(str(info[4][0]).split("%")[0]).is_loopback for info in infos)
