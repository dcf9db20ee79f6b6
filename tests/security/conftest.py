"""Fixtures for the security suite: an endpoint of its own, prepared for the attacks."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from security_attacks import Lab, lab_endpoint

from dsqlkit.local import LocalDSQL


@pytest.fixture(scope="module")
def lab_ep() -> Iterator[LocalDSQL]:
    yield from lab_endpoint()


@pytest.fixture(scope="module")
def lab(lab_ep: LocalDSQL) -> Iterator[Lab]:
    with Lab(lab_ep) as prepared:
        yield prepared
