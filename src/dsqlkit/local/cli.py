"""``dsqlkit local``: run a local DSQL endpoint in the foreground."""

from __future__ import annotations

import argparse
import shlex
import signal
import sys
import time

from dsqlkit.errors import ConfigError, LocalEndpointError

RUN_HELP = ("start the endpoint, run COMMAND with everything a DSQL client reads in its "
            "environment, stop the endpoint, exit with COMMAND's status")


def configure(p: argparse.ArgumentParser) -> None:
    _endpoint_options(p)
    p.add_argument(
        "--json",
        action="store_true",
        help="print the connection details as one JSON line (for scripts)",
    )
    p.add_argument(
        "--smoke",
        action="store_true",
        help="start, connect over TLS with an IAM token, run a query, stop",
    )
    sub = p.add_subparsers(dest="local_action", metavar="ACTION")
    r = sub.add_parser("run", help=RUN_HELP, description=RUN_HELP + ". Example: dsqlkit "
                       "local run --cluster-id abcdefghijklmnopqrstuvwxyz -- pytest tests/")
    # The endpoint's options may come before or after 'run'; after it they only override.
    _endpoint_options(r, suppress=True)
    r.add_argument("--root-pem", action="store_true",
                   help="put the endpoint's CA in ./root.pem (where DSQL's samples look for "
                        "it) while COMMAND runs, unless that file exists")
    r.add_argument("command", nargs=argparse.REMAINDER, metavar="-- COMMAND ...",
                   help="the command to run, after --")


def _endpoint_options(p: argparse.ArgumentParser, *, suppress: bool = False) -> None:
    """The endpoint's options; with ``suppress``, an option not given sets nothing (so that
    ``dsqlkit local --port 0 run -- …`` keeps the port given before ``run``)."""
    known = len(p._actions)
    _add_endpoint_options(p)
    if suppress:
        for action in p._actions[known:]:
            action.default = argparse.SUPPRESS


def _add_endpoint_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--cluster-id",
        default=None,
        metavar="ID",
        help="the cluster id in the endpoint's name <ID>.dsql.<region>.on.aws (26 characters "
             "of a-z0-9; default: the data directory's, random for --ephemeral)",
    )
    p.add_argument(
        "--etc-hosts",
        nargs="?",
        const="/etc/hosts",
        default=None,
        metavar="PATH",
        help="add '127.0.0.1 <cluster name>' to the hosts file (default /etc/hosts) while the "
             "endpoint runs, so that every client resolves the cluster's name",
    )
    p.add_argument(
        "--port",
        type=int,
        default=None,
        help="TCP port (default 5432 when free, else a free port, which is printed)",
    )
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--region", default="us-east-1", help="the endpoint's AWS region")
    g = p.add_mutually_exclusive_group()
    g.add_argument(
        "--data-dir",
        default=None,
        help="keep data, CA and key pair here (default: a per-user state directory)",
    )
    g.add_argument(
        "--ephemeral", action="store_true", help="use a temporary data directory, removed on exit"
    )
    p.add_argument(
        "--backend",
        choices=["auto", "pgserver", "system"],
        default="auto",
        help="PostgreSQL to run: the embedded pgserver build or the system's",
    )
    p.add_argument(
        "--backend-url",
        default=None,
        help="front an existing PostgreSQL (postgresql://user:pw@host:port/db)",
    )
    p.add_argument(
        "--profile",
        default=None,
        help="trust this AWS profile's keys instead of the generated key pair",
    )
    p.add_argument(
        "--max-connections",
        type=int,
        default=1000,
        help="open connections before 53300 (default 1000)",
    )
    p.add_argument(
        "--connection-rate",
        type=float,
        default=100.0,
        help="new connections per second before 53400 (default 100)",
    )
    p.add_argument(
        "--connection-burst", type=int, default=1000, help="burst of new connections (default 1000)"
    )
    p.add_argument(
        "--max-connection-age",
        type=float,
        default=3600.0,
        help="seconds before a session is closed, as DSQL does after 60 min",
    )
    p.add_argument(
        "--occ",
        choices=["commit", "statement", "off"],
        default="commit",
        help="report OCC conflicts at COMMIT as DSQL does (default), at the "
        "statement, or not emulate them (PostgreSQL's behaviour)",
    )
    p.add_argument(
        "--lock-timeout",
        type=float,
        default=0.001,
        help="how long, in seconds, a statement waits on another transaction's lock before "
        "the endpoint makes way for it (DSQL never waits; default 0.001, PostgreSQL's "
        "shortest deadlock_timeout); with --occ statement, the lock timeout after which the "
        "statement fails",
    )
    p.add_argument(
        "--schema-conflicts",
        choices=["relation", "strict", "off"],
        default="relation",
        help="OC001 after another session's DDL: when a table the session used was changed "
        "(relation, DSQL's rule, the default), after any DDL (strict), or never (off)",
    )
    p.add_argument(
        "--no-schema-conflicts",
        action="store_true",
        help="the same as --schema-conflicts off",
    )
    p.add_argument(
        "--inject",
        default=None,
        metavar="SPEC",
        help="inject faults, e.g. occ=0.05,oc001=0.01,disconnect=0.01,auth-outage=0.02",
    )
    p.add_argument("--seed", type=int, default=None, help="seed for --inject")
    p.add_argument("--passthrough", action="store_true",
                   help="relay statements untouched (no DSQL dialect, rules or OCC): only "
                        "for measuring what they cost")


def banner(ep: object) -> str:
    from dsqlkit.local import LocalDSQL

    assert isinstance(ep, LocalDSQL)
    env = ep.env()
    exports = "\n".join(f"  export {k}={shlex.quote(v)}" for k, v in env.items())
    conninfo = (
        f"host={ep.host} port={ep.port} user=admin dbname=postgres "
        f"sslmode=verify-full sslrootcert={ep.ca_path}"
    )
    return f"""dsqlkit local: Aurora DSQL endpoint ready
  endpoint          {ep.host}:{ep.port}  (cluster {ep.hostname})
  region            {ep.region}
  data directory    {ep.data_dir}
  CA certificate    {ep.ca_path}
  connection string {ep.url()}
  cluster name      {name_resolution(ep)}

Environment for clients (AWS SDKs, dsqlkit, psql):
{exports}

psql (after the exports above):
  PGPASSWORD="$(dsqlkit token --hostname {ep.host} --region {ep.region} --admin)" \\
    psql "{conninfo}"

Press Ctrl-C to stop."""


def run(args: argparse.Namespace) -> int:
    import json

    from dsqlkit.local import LocalDSQL

    try:
        ep = LocalDSQL(
            args.data_dir,
            ephemeral=args.ephemeral,
            port=args.port,
            host=args.host,
            region=args.region,
            backend=args.backend,
            backend_url=args.backend_url,
            profile=args.profile,
            max_connections=args.max_connections,
            connection_rate=args.connection_rate,
            connection_burst=args.connection_burst,
            max_connection_age=args.max_connection_age,
            occ_mode=args.occ,
            lock_timeout=args.lock_timeout,
            schema_conflicts="off" if args.no_schema_conflicts else args.schema_conflicts,
            inject=args.inject,
            seed=args.seed,
            rules=not args.passthrough,
            cluster_id=args.cluster_id,
            etc_hosts=args.etc_hosts,
        )
    except (ConfigError, LocalEndpointError) as exc:
        print(f"dsqlkit local: {exc}", file=sys.stderr)
        return 2
    action = getattr(args, "local_action", None)
    command = list(getattr(args, "command", None) or [])
    if command[:1] == ["--"]:
        command = command[1:]
    if action == "run" and not command:
        print("dsqlkit local run: give the command to run after --, e.g. "
              "dsqlkit local run -- pytest tests/", file=sys.stderr)
        return 2
    started = time.monotonic()
    try:
        ep.start()
    except (LocalEndpointError, ConfigError) as exc:
        print(f"dsqlkit local: {exc}", file=sys.stderr)
        return 1
    elapsed = time.monotonic() - started

    if action == "run":
        return _run(ep, command, args, elapsed)
    if args.smoke:
        return _smoke(ep, elapsed)

    def stop(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    if args.json:
        print(
            json.dumps(
                {
                    "host": ep.host,
                    "port": ep.port,
                    "region": ep.region,
                    "hostname": ep.hostname,
                    "cluster_id": ep.cluster_id,
                    "hosts_line": ep.hosts_line,
                    "ca_path": ep.ca_path,
                    "url": ep.url(),
                    "data_dir": str(ep.data_dir),
                    "backend_url": ep.backend_url,
                    "env": ep.env(),
                }
            ),
            flush=True,
        )
    else:
        print(banner(ep), flush=True)
        print(f"(started in {elapsed:.2f} s)", flush=True)
    try:
        ep.run_forever()
    except KeyboardInterrupt:
        pass
    finally:
        ep.stop()
    return 0


def name_resolution(ep: object) -> str:
    """How the cluster's name reaches the endpoint, in one line."""
    from dsqlkit.local import LocalDSQL
    from dsqlkit.local.hosts import resolves_to_loopback

    assert isinstance(ep, LocalDSQL)
    if ep.etc_hosts is not None:
        return f"{ep.hostname} -> 127.0.0.1 (line added to {ep.etc_hosts} until stop)"
    if resolves_to_loopback(ep.hostname):
        return f"{ep.hostname} -> 127.0.0.1 (already in the system's resolver)"
    return (f"{ep.hostname} does not resolve here: add the line '{ep.hosts_line}' to "
            "/etc/hosts, or start with --etc-hosts")


def _run(ep: object, command: list[str], args: argparse.Namespace, elapsed: float) -> int:
    from dsqlkit.local import LocalDSQL
    from dsqlkit.local.run import run_command

    assert isinstance(ep, LocalDSQL)

    def stop(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    try:
        print(f"dsqlkit local run: endpoint {ep.host}:{ep.port}, cluster {ep.hostname}, "
              f"started in {elapsed:.2f} s", file=sys.stderr, flush=True)
        print(f"dsqlkit local run: {name_resolution(ep)}", file=sys.stderr, flush=True)
        rc = run_command(ep, command, keep_profile=args.profile is not None,
                         write_root_pem=getattr(args, "root_pem", False))
        # Stopping may take a moment (the backend shuts down): a TERM now stops us too.
        signal.signal(signal.SIGTERM, stop)
    except KeyboardInterrupt:
        rc = 130
    finally:
        ep.stop()
    return rc


def _smoke(ep: object, elapsed: float) -> int:
    import psycopg

    from dsqlkit.local import LocalDSQL

    assert isinstance(ep, LocalDSQL)
    try:
        with psycopg.connect(ep.dsn()) as conn:
            row = conn.execute(
                "SELECT current_user, current_setting('server_version'), "
                "current_setting('transaction_isolation')"
            ).fetchone()
            assert row is not None
            print(
                f"dsqlkit local: ready in {elapsed:.2f} s on {ep.host}:{ep.port}; "
                f"connected over TLS (verify-full) with an IAM token as {row[0]}, "
                f"server_version {conn.info.parameter_status('server_version')}, "
                f"isolation {row[2]}"
            )
    finally:
        ep.stop()
    return 0
