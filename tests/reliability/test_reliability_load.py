"""Connection load, bounded for CI: 200 connections held at once (the endpoint's configured
maximum; one more gets 53300), then a storm of 400 new connections above the configured rate
(20/s, burst 230): refusals are 53400 and nothing else, a pool keeps working through it, and
a pool opened in the middle of it fills once it is over. ``bench/load.py`` holds 1,000.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from reliability_load import connection_storm, hold_connections

from dsqlkit.local import LocalDSQL

HELD = 200


@pytest.fixture(scope="module")
def quota_endpoint() -> Iterator[LocalDSQL]:
    with LocalDSQL(ephemeral=True, port=0, max_connections=HELD, connection_rate=20,
                   connection_burst=HELD + 30) as ep:
        yield ep


def test_held_connections_then_a_storm(quota_endpoint: LocalDSQL) -> None:
    ep = quota_endpoint
    held = hold_connections(ep, HELD, threads=16)
    print("\n" + "\n".join(held.lines()))
    assert held.opened == HELD and not held.failures
    assert held.answered == HELD
    # Each session has its own backend session; PostgreSQL was started with room for them.
    assert held.backend_sessions >= HELD
    assert held.max_connections_setting > HELD
    assert held.over_the_limit == "53300 too many connections"

    storm = connection_storm(ep, 2 * HELD, threads=32, stats=lambda: dict(ep.server.stats))
    print("\n".join(storm.lines()))
    # Above the rate: refused with 53400, and with nothing else.
    assert set(storm.outcomes) == {"connected", "53400 rate exceeded"}
    assert storm.endpoint_stats["refused_rate"] >= storm.outcomes["53400 rate exceeded"]
    # The quota held: no more got in than a full burst plus 20/s for as long as it lasted.
    assert storm.outcomes["connected"] <= HELD + 30 + 20 * storm.seconds
    # Nothing else broke: the pool that was open kept moving money without an error...
    assert storm.background_errors == [] and storm.background_transfers > 0
    # ... and the pool opened mid-storm (refused at first) filled by itself afterwards.
    assert storm.recovering_pool_ready_after is not None
    assert storm.fresh_connection_after == "accepted"
