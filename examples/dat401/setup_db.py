"""Create the accounts table and fill it: 1,000 accounts with a balance of 100.

    python examples/dat401/setup_db.py            # accounts, ids 1-1000
    python examples/dat401/setup_db.py --uuid     # accounts_uuid, random UUID keys
    python examples/dat401/setup_db.py --uuid --ids-out uuids.txt

Connects as the handlers do (``CLUSTER_ENDPOINT``, ``CLUSTER_USER``, ``AWS_REGION``, and for
a local endpoint ``CLUSTER_PORT`` and ``DSQL_SSLROOTCERT``), with your AWS credentials, and
runs ``sql/schema*.sql`` then ``sql/setup*.sql``, one statement per transaction.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import bank
import psycopg

from dsqlkit.psycopg import connect

SQL = Path(__file__).resolve().parent / "sql"


def statements(text: str) -> list[str]:
    """The statements of one of our SQL files (no semicolons inside literals there)."""
    lines = [line.split("--", 1)[0] for line in text.splitlines()]
    return [s.strip() for s in "\n".join(lines).split(";") if s.strip()]


def run_files(conn: psycopg.Connection[Any], *names: str) -> int:
    count = 0
    for name in names:
        for statement in statements((SQL / name).read_text()):
            conn.execute(statement)
            count += 1
    return count


def table_exists(conn: psycopg.Connection[Any], table: str) -> bool:
    row = conn.execute("SELECT count(*) FROM information_schema.tables "
                       "WHERE table_schema = 'public' AND table_name = %s", (table,)).fetchone()
    return row is not None and row[0] > 0


def setup(conn: psycopg.Connection[Any], *, uuid: bool = False) -> tuple[int, str]:
    """Create the table if missing and fill it; returns (accounts, total balance as text)."""
    suffix = "_uuid" if uuid else ""
    table = f"accounts{suffix}"
    # Skip the DDL when the table exists: on DSQL any DDL, even a CREATE ... IF NOT EXISTS
    # that does nothing, may fail other sessions' next transaction with OC001 (schema
    # updated), including the warm connections of deployed functions.
    if not table_exists(conn, table):
        run_files(conn, f"schema{suffix}.sql")
    run_files(conn, f"setup{suffix}.sql")
    row = conn.execute(f"SELECT count(*), sum(balance) FROM {table}").fetchone()
    assert row is not None
    return int(row[0]), bank.text(row[1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--uuid", action="store_true", help="the UUID-keyed table instead")
    parser.add_argument("--ids-out", metavar="FILE",
                        help="write the account ids, one per line (for load tests)")
    args = parser.parse_args(argv)
    try:
        params = bank.connection_params()
    except bank.ConfigurationError as exc:
        print(f"setup_db: {exc}", file=sys.stderr)
        return 2
    with connect("", autocommit=True, **params) as conn:
        accounts, total = setup(conn, uuid=args.uuid)
        table = "accounts_uuid" if args.uuid else "accounts"
        print(f"{table}: {accounts} accounts, total balance {total}")
        if args.ids_out:
            ids = [str(r[0]) for r in conn.execute(f"SELECT id FROM {table} ORDER BY id")]
            Path(args.ids_out).write_text("\n".join(ids) + "\n")
            print(f"wrote {len(ids)} ids to {args.ids_out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
