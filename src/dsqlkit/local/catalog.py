"""Objects the endpoint keeps in the backend database: the ``admin`` role and DSQL's ``sys``
schema. Created idempotently at every start, so an old data directory is upgraded in place.
"""

from __future__ import annotations

import logging

import psycopg

from dsqlkit.errors import LocalEndpointError
from dsqlkit.local.backend import BackendAddress

log = logging.getLogger(__name__)

BOOTSTRAP = [
    # DSQL's built-in admin role; every session of user admin runs as it.
    """DO $$ BEGIN
         IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'admin') THEN
           CREATE ROLE admin SUPERUSER LOGIN;
         END IF;
       END $$""",
    "CREATE SCHEMA IF NOT EXISTS sys AUTHORIZATION admin",
]


def bootstrap(address: BackendAddress) -> None:
    try:
        with psycopg.connect(address.dsn(), autocommit=True, connect_timeout=10) as conn:
            for sql in BOOTSTRAP:
                conn.execute(sql.encode())
    except psycopg.Error as exc:
        raise LocalEndpointError(f"could not prepare the backend database: {exc}") from exc
