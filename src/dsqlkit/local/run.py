"""``dsqlkit local run [options] -- COMMAND …``: start an endpoint, run a command against it,
stop it, exit with the command's status.

The command gets everything a DSQL client reads from its environment (see
:meth:`LocalDSQL.env`), plus what makes code written for a real cluster find this one:

* the cluster's name reaches 127.0.0.1. With ``--etc-hosts`` the name is in the hosts file,
  for every client. Without it, when the name does not resolve here, libpq clients get
  ``PGHOSTADDR=127.0.0.1`` (libpq connects there and still checks the certificate and sends
  SNI for the name), and Python processes get a ``sitecustomize`` hook that answers the name
  with 127.0.0.1 in ``socket.getaddrinfo`` (asyncpg, and anything else that resolves in
  Python); other runtimes need ``--etc-hosts``;
* an ``aws`` first on the PATH that answers ``aws dsql generate-db-connect[-admin]-auth-token``
  (:mod:`dsqlkit.local.awscli`) and passes everything else to the real AWS CLI;
* ``PGPASSWORD``: an admin token valid for a week, so that ``psql`` and other libpq tools
  connect as they are;
* with ``--root-pem``, the endpoint's CA as ``./root.pem``, where DSQL's samples look for the
  CA (only when no such file exists; removed afterwards).

AWS settings that would sign tokens with other credentials (``AWS_PROFILE``, a stale
``AWS_SESSION_TOKEN``) are removed from the command's environment unless ``--profile`` is
given.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from dsqlkit.local.awscli import SHIM_DIR_ENV

if TYPE_CHECKING:
    from dsqlkit.local import LocalDSQL

# Environment variables that make AWS SDKs sign with something else than the endpoint's keys.
_FOREIGN_AWS = ("AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN")
HOSTS_ENV = "DSQLKIT_LOCAL_HOSTS"

# Imported by every Python process of the command (through PYTHONPATH): sends the names in
# DSQLKIT_LOCAL_HOSTS to the endpoint, then runs the sitecustomize it hides, if any.
SITECUSTOMIZE = '''\
"""dsqlkit local run: the cluster's name resolves to the local endpoint in Python."""
import os as _os
import socket as _socket

_names = frozenset(n for n in _os.environ.get("DSQLKIT_LOCAL_HOSTS", "").split(",") if n)
if _names:
    _getaddrinfo = _socket.getaddrinfo

    def _dsqlkit_getaddrinfo(host, *args, **kwargs):
        name = host.decode("idna") if isinstance(host, bytes) else host
        if isinstance(name, str) and name.lower().rstrip(".") in _names:
            host = "127.0.0.1"
        return _getaddrinfo(host, *args, **kwargs)

    _socket.getaddrinfo = _dsqlkit_getaddrinfo


def _chain():
    import importlib.machinery
    import importlib.util
    import sys

    here = _os.path.dirname(_os.path.abspath(__file__))
    rest = [p for p in sys.path if _os.path.abspath(p or ".") != here]
    spec = importlib.machinery.PathFinder.find_spec("sitecustomize", rest)
    if spec is not None and spec.loader is not None:
        module = importlib.util.module_from_spec(spec)
        sys.modules["sitecustomize"] = module
        spec.loader.exec_module(module)


_chain()
'''


def write_shims(directory: Path) -> None:
    """The ``aws`` shim and the ``sitecustomize`` hook, in ``directory``."""
    aws = directory / "aws"
    aws.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m dsqlkit.local.awscli "$@"\n')
    aws.chmod(aws.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    (directory / "sitecustomize.py").write_text(SITECUSTOMIZE)


def command_env(ep: LocalDSQL, shim_dir: Path, *, base: Mapping[str, str] | None = None,
                keep_profile: bool = False) -> dict[str, str]:
    """The command's environment: ``base`` (default: ours) with the endpoint's settings."""
    from dsqlkit.local.hosts import resolves_to_loopback

    env = dict(os.environ if base is None else base)
    if not keep_profile:
        for name in _FOREIGN_AWS:
            env.pop(name, None)
    env.update(ep.env())
    env["PGPASSWORD"] = ep.token("admin", expires_in=604_800, host=ep.hostname)
    env["PATH"] = os.pathsep.join(p for p in (str(shim_dir), env.get("PATH", "")) if p)
    env[SHIM_DIR_ENV] = str(shim_dir)
    if not resolves_to_loopback(ep.hostname):
        env["PGHOSTADDR"] = "127.0.0.1"
        env[HOSTS_ENV] = ep.hostname
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(shim_dir), env.get("PYTHONPATH", "")) if p)
    return env


@contextlib.contextmanager
def root_pem(ca_path: str, directory: Path) -> Iterator[Path | None]:
    """``directory/root.pem`` holding the endpoint's CA while the command runs, if there is
    no such file already; removed afterwards unless the command replaced it."""
    target = directory / "root.pem"
    if target.exists():
        print(f"dsqlkit local run: {target} exists; left as it is", file=sys.stderr)
        yield None
        return
    data = Path(ca_path).read_bytes()
    target.write_bytes(data)
    try:
        yield target
    finally:
        with contextlib.suppress(OSError):
            if target.read_bytes() == data:
                target.unlink()


def run_command(ep: LocalDSQL, command: Sequence[str], *, keep_profile: bool = False,
                write_root_pem: bool = False) -> int:
    """Run ``command`` against the started endpoint ``ep``; its exit status (128 + N when a
    signal N ended it, as shells report it)."""
    shim_dir = Path(tempfile.mkdtemp(prefix="dsqlkit-run-"))
    try:
        write_shims(shim_dir)
        env = command_env(ep, shim_dir, keep_profile=keep_profile)
        with contextlib.ExitStack() as stack:
            if write_root_pem:
                stack.enter_context(root_pem(ep.ca_path, Path.cwd()))
            return _spawn(command, env)
    finally:
        shutil.rmtree(shim_dir, ignore_errors=True)


def _spawn(command: Sequence[str], env: dict[str, str]) -> int:
    try:
        child = subprocess.Popen(list(command), env=env)
    except FileNotFoundError:
        print(f"dsqlkit local run: command not found: {command[0]}", file=sys.stderr)
        return 127
    except PermissionError:
        print(f"dsqlkit local run: cannot execute {command[0]}", file=sys.stderr)
        return 126

    # Ctrl-C reaches the whole foreground process group, the command included: let the
    # command decide what to do with it. A TERM sent to us alone is passed on.
    def forward(signum: int, frame: object) -> None:
        with contextlib.suppress(ProcessLookupError):
            child.send_signal(signum)

    previous = {s: signal.signal(s, forward) for s in (signal.SIGTERM, signal.SIGHUP)}
    old_int = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        rc = child.wait()
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        signal.signal(signal.SIGINT, old_int)
    return 128 - rc if rc < 0 else rc
