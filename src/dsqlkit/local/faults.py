"""Fault injection for testing applications against ``dsqlkit local``.

``--inject occ=0.05,oc001=0.01,disconnect=0.01,auth-outage=0.02 --seed 7`` makes the endpoint
fail that share of the matching events with the errors DSQL sends:

* ``occ``: a COMMIT fails with ``40001 change conflicts with another transaction (OC000)``;
* ``oc001``: a statement fails with ``40001 schema has been updated by another transaction
  (OC001)``;
* ``disconnect``: the connection is dropped in the middle of a transaction;
* ``auth-outage``: a new connection is refused with ``unable to accept connection, waking up
  cluster, please retry later``.

One seeded generator per endpoint, so a single client sees the same faults on every run.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Mapping

from dsqlkit.errors import ConfigError

KINDS = ("occ", "oc001", "disconnect", "auth-outage")


def parse_spec(spec: str) -> dict[str, float]:
    """``"occ=0.05,disconnect=0.01"`` → ``{"occ": 0.05, "disconnect": 0.01}``."""
    rates: dict[str, float] = {}
    for part in filter(None, (p.strip() for p in spec.split(","))):
        name, eq, value = part.partition("=")
        name = name.strip().lower().replace("_", "-")
        if not eq:
            raise ConfigError(f"--inject {part!r}: expected NAME=PROBABILITY, e.g. occ=0.05")
        if name not in KINDS:
            raise ConfigError(
                f"--inject: unknown fault {name!r}; choose from {', '.join(KINDS)}")
        try:
            rate = float(value)
        except ValueError:
            raise ConfigError(f"--inject {name}: {value!r} is not a number") from None
        if not 0.0 <= rate <= 1.0:
            raise ConfigError(f"--inject {name}: probability must be between 0 and 1")
        rates[name] = rate
    return rates


class Faults:
    def __init__(self, rates: Mapping[str, float] | None = None, seed: int | None = None) -> None:
        self.rates = dict(rates or {})
        for name, rate in self.rates.items():
            if name not in KINDS or not 0.0 <= rate <= 1.0:
                raise ConfigError(f"invalid fault {name}={rate}; kinds: {', '.join(KINDS)}")
        self.enabled = any(self.rates.values())
        self.rng = random.Random(seed)
        self.injected: Counter[str] = Counter()

    def roll(self, kind: str) -> bool:
        """Whether to inject a fault of ``kind`` at this event."""
        if not self.enabled:
            return False
        rate = self.rates.get(kind, 0.0)
        if rate and self.rng.random() < rate:
            self.injected[kind] += 1
            return True
        return False
