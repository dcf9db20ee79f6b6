"""Fixtures for the reliability suite (issue 8): a child-process endpoint for wire fuzzing.

The bounded versions of the fuzz, chaos, load and secrets runs live here; ``bench/fuzz.py``,
``bench/chaos.py`` and ``bench/load.py`` run the full versions with the same code.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from reliability_endpoint import EndpointInfo, child_endpoint
from reliability_tokens import TEMPORARY


@pytest.fixture(scope="session")
def wire_endpoint() -> Iterator[EndpointInfo]:
    """An endpoint in its own process (its memory is measured apart from the tests'), with
    no connection-rate quota to speak of and a trusted key pair with a session token."""
    with child_endpoint(trust={TEMPORARY.access_key: TEMPORARY}, connection_rate=1e6,
                        connection_burst=1_000_000) as info:
        yield info
