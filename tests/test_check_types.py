"""The built-in type names the dialect knows are PostgreSQL 16's own (read from a live backend)."""

from __future__ import annotations

import psycopg

from dsqlkit.local import LocalDSQL
from dsqlkit.local.dialect.builtin_types import PG_CATALOG_TYPES


def test_builtin_types_match_the_backend() -> None:
    with LocalDSQL(ephemeral=True, port=0) as ep, psycopg.connect(ep.dsn()) as conn:
        rows = conn.execute(
            "SELECT typname FROM pg_type WHERE typnamespace = 'pg_catalog'::regnamespace "
            "AND typname NOT LIKE '\\_%'").fetchall()
    assert {r[0] for r in rows} == PG_CATALOG_TYPES
