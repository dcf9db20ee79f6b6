"""pytest fixtures for testing DSQL applications against ``dsqlkit local``.

Installed with dsqlkit (entry point ``pytest11``), so a test suite only has to ask for them::

    def test_transfer(dsql_local):
        conn = dsqlkit.connect(dsql_local.url(), credentials=dsql_local.credentials)

``dsql_local`` is one ephemeral endpoint for the whole test session; it starts on first use.
Its exports (``AWS_ACCESS_KEY_ID``…) are not put in ``os.environ``: use ``dsql_local.env()``.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest


@pytest.fixture(scope="session")
def dsql_local() -> Iterator[object]:
    try:
        from dsqlkit.local import LocalDSQL
    except ImportError as exc:  # pragma: no cover - only without the 'local' extra
        pytest.skip(f"dsqlkit local is not installed: {exc}")
    with LocalDSQL(ephemeral=True, port=0) as ep:
        yield ep
