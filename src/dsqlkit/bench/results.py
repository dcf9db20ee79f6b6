"""One benchmark run as data, and its JSON form (``dsqlkit bench transfer --json FILE``).

The JSON document (schema ``dsqlkit-bench-transfer/1``; :data:`JSON_SCHEMA` is the same as a
JSON Schema, and :func:`validate` checks a document against it)::

    {
      "schema": "dsqlkit-bench-transfer/1",
      "dsqlkit_version": "0.1.0",
      "label": "ch05 (retry)",               # free text, shown in reports
      "started_at": "2026-01-01T12:00:00Z",  # UTC, when the workers started
      "interrupted": false,                  # true if Ctrl-C ended the run early
      "config": {
        "target": "direct",                  # direct | lambda | noop
        "target_description": "admin@localhost:5432/postgres",   # never a secret
        "retry": true,                       # direct: OCC retry on; lambda/noop: null
        "retry_policy": {                    # null without retry; OCCRetryConfig fields
          "preset": "high_contention", "max_attempts": 20, "base_delay": 0.1,
          "max_delay": 0.1, "jitter_factor": 0.25, "deadline": 30.0
        },
        "iterations": 1000,                  # null when the run was bounded by duration
        "duration_seconds": null,            # null when the run was bounded by iterations
        "threads": 10, "processes": 1, "accounts": 10, "seed": 42
      },
      "summary": {
        "transfers": 1000, "successes": 990, "failures": 10,   # successes + failures = transfers
        "failures_by_class": {"OC000": 0, "OC001": 0, "40001": 0,
                              "insufficient_balance": 10, "other": 0},
        "failure_examples": {"insufficient_balance": ["Insufficient balance: -1.23"]},
        "conflicts_seen": {"OC000": 240, "OC001": 0, "40001": 0},  # every conflict, retried
                                                                   # or final
        "attempts": {
          "retries": 240, "max": 6, "mean": 1.24,
          "retried_transfers": 180, "retried_share": 0.18,
          "histogram": {"1": 820, "2": 130, "3": 40}            # attempts -> transfers
        },
        "latency_ms": {"count": 1000, "min": 1.2, "mean": 5.1, "p50": 3.9, "p90": 9.7,
                       "p99": 31.0, "max": 80.2},               # null if nothing finished
        "server_latency_ms": null,           # lambda: the handlers' transaction_time
        "elapsed_seconds": 2.5,
        "throughput_per_second": 400.0       # transfers (all outcomes) per second
      },
      "balances": {                          # direct target only, else null
        "before": "1000", "after": "1000", "accounts": 1000, "conserved": true
      },
      "timeline": {                          # per-second buckets from the start of the run
        "bucket_seconds": 1,
        "successes": [380, 410, 200], "failures": [3, 5, 2], "conflicts": [90, 100, 50]
      },
      "histograms": {                        # HdrHistogram V2, compressed, base64
        "latency_us": "HISTFAAAA...", "server_latency_us": null
      }
    }

Decimal amounts are strings so that no float rounding creeps in. A document carries
everything needed to rebuild the run (``RunResult.from_dict``): ``dsqlkit bench report``
renders HTML from saved documents, and runs from different machines can be compared.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from dsqlkit import __version__

from .outcomes import CONFLICTS, FAILURES
from .stats import RunStats, Summary

__all__ = ["JSON_SCHEMA", "SCHEMA_ID", "Balances", "RunConfig", "RunResult", "validate"]

SCHEMA_ID = "dsqlkit-bench-transfer/1"


@dataclass(frozen=True)
class RunConfig:
    target: str
    target_description: str
    retry: bool | None
    retry_policy: Mapping[str, Any] | None
    iterations: int | None
    duration: float | None
    threads: int
    processes: int
    accounts: int
    seed: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "target": self.target,
            "target_description": self.target_description,
            "retry": self.retry,
            "retry_policy": None if self.retry_policy is None else dict(self.retry_policy),
            "iterations": self.iterations,
            "duration_seconds": self.duration,
            "threads": self.threads,
            "processes": self.processes,
            "accounts": self.accounts,
            "seed": self.seed,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> RunConfig:
        return cls(
            target=d["target"],
            target_description=d["target_description"],
            retry=d["retry"],
            retry_policy=d["retry_policy"],
            iterations=d["iterations"],
            duration=d["duration_seconds"],
            threads=d["threads"],
            processes=d["processes"],
            accounts=d["accounts"],
            seed=d["seed"],
        )


@dataclass(frozen=True)
class Balances:
    before: Decimal
    after: Decimal
    accounts: int

    @property
    def conserved(self) -> bool:
        return self.before == self.after


@dataclass
class RunResult:
    label: str
    config: RunConfig
    started_at: str
    elapsed: float
    stats: RunStats = field(default_factory=RunStats)
    balances: Balances | None = None
    interrupted: bool = False

    @functools.cached_property
    def summary(self) -> Summary:
        # Cached: a result is finished data, and the report asks for its summary often.
        return Summary.of(self.stats, self.elapsed)

    def to_dict(self) -> dict[str, Any]:
        s = self.summary
        raw = self.stats.to_dict()
        return {
            "schema": SCHEMA_ID,
            "dsqlkit_version": __version__,
            "label": self.label,
            "started_at": self.started_at,
            "interrupted": self.interrupted,
            "config": self.config.to_dict(),
            "summary": {
                "transfers": s.transfers,
                "successes": s.successes,
                "failures": s.failures,
                "failures_by_class": {o.value: s.failures_by_class[o] for o in FAILURES},
                "failure_examples": raw["examples"],
                "conflicts_seen": {o.value: s.conflicts_seen[o] for o in CONFLICTS},
                "attempts": {
                    "retries": s.retries,
                    "max": s.max_attempts,
                    "mean": round(s.mean_attempts, 4),
                    "retried_transfers": s.retried_transfers,
                    "retried_share": round(s.retried_share, 4),
                    "histogram": raw["attempts"],
                },
                "latency_ms": None if s.latency is None else s.latency.to_dict(),
                "server_latency_ms": None if s.server_latency is None
                else s.server_latency.to_dict(),
                "elapsed_seconds": self.elapsed,
                "throughput_per_second": round(s.throughput, 2),
            },
            "balances": None if self.balances is None else {
                "before": str(self.balances.before),
                "after": str(self.balances.after),
                "accounts": self.balances.accounts,
                "conserved": self.balances.conserved,
            },
            "timeline": {"bucket_seconds": 1, **raw["timeline"]},
            "histograms": {
                "latency_us": raw["latency"],
                "server_latency_us": raw["server_latency"],
            },
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> RunResult:
        errors = validate(d)
        if errors:
            raise ValueError("not a dsqlkit bench result: " + "; ".join(errors[:5]))
        s = d["summary"]
        counts = {"success": s["successes"], **s["failures_by_class"]}
        stats = RunStats.from_dict({
            "counts": counts,
            "conflicts": s["conflicts_seen"],
            "attempts": s["attempts"]["histogram"],
            "examples": s["failure_examples"],
            "latency": d["histograms"]["latency_us"],
            "server_latency": d["histograms"]["server_latency_us"],
            "timeline": d["timeline"],
        })
        b = d["balances"]
        return cls(
            label=d["label"],
            config=RunConfig.from_dict(d["config"]),
            started_at=d["started_at"],
            elapsed=float(s["elapsed_seconds"]),
            stats=stats,
            balances=None if b is None else Balances(
                Decimal(b["before"]), Decimal(b["after"]), b["accounts"]
            ),
            interrupted=d["interrupted"],
        )


# -- the schema --------------------------------------------------------------------------

_INT = {"type": "integer", "minimum": 0}
_NUM = {"type": "number", "minimum": 0}


def _obj(props: Mapping[str, Any], *, extra: bool = False) -> dict[str, Any]:
    return {"type": "object", "properties": dict(props), "required": list(props),
            "additionalProperties": extra}


def _counts(keys: Any) -> dict[str, Any]:
    return _obj({k: _INT for k in keys})


_LATENCY = {"anyOf": [{"type": "null"}, _obj({k: _NUM for k in (
    "count", "min", "mean", "p50", "p90", "p99", "max")})]}
_SERIES = {"type": "array", "items": _INT}

JSON_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "$id": SCHEMA_ID,
    **_obj({
        "schema": {"const": SCHEMA_ID},
        "dsqlkit_version": {"type": "string"},
        "label": {"type": "string"},
        "started_at": {"type": "string"},
        "interrupted": {"type": "boolean"},
        "config": _obj({
            "target": {"enum": ["direct", "lambda", "noop"]},
            "target_description": {"type": "string"},
            "retry": {"type": ["boolean", "null"]},
            "retry_policy": {"anyOf": [{"type": "null"}, {
                "type": "object",
                "required": ["max_attempts", "base_delay", "max_delay", "jitter_factor",
                             "deadline"],
            }]},
            "iterations": {"type": ["integer", "null"], "minimum": 0},
            "duration_seconds": {"type": ["number", "null"], "minimum": 0},
            "threads": {"type": "integer", "minimum": 1},
            "processes": {"type": "integer", "minimum": 1},
            "accounts": {"type": "integer", "minimum": 2},
            "seed": {"type": "integer"},
        }),
        "summary": _obj({
            "transfers": _INT,
            "successes": _INT,
            "failures": _INT,
            "failures_by_class": _counts(o.value for o in FAILURES),
            "failure_examples": {
                "type": "object",
                "propertyNames": {"enum": [o.value for o in FAILURES]},
                "additionalProperties": {"type": "array", "items": {"type": "string"},
                                         "maxItems": 3},
            },
            "conflicts_seen": _counts(o.value for o in CONFLICTS),
            "attempts": _obj({
                "retries": _INT,
                "max": _INT,
                "mean": _NUM,
                "retried_transfers": _INT,
                "retried_share": {"type": "number", "minimum": 0, "maximum": 1},
                "histogram": {
                    "type": "object",
                    "propertyNames": {"pattern": "^[1-9][0-9]*$"},
                    "additionalProperties": _INT,
                },
            }),
            "latency_ms": _LATENCY,
            "server_latency_ms": _LATENCY,
            "elapsed_seconds": _NUM,
            "throughput_per_second": _NUM,
        }),
        "balances": {"anyOf": [{"type": "null"}, _obj({
            "before": {"type": "string", "pattern": r"^-?[0-9]+(\.[0-9]+)?$"},
            "after": {"type": "string", "pattern": r"^-?[0-9]+(\.[0-9]+)?$"},
            "accounts": _INT,
            "conserved": {"type": "boolean"},
        })]},
        "timeline": _obj({
            "bucket_seconds": {"const": 1},
            "successes": _SERIES,
            "failures": _SERIES,
            "conflicts": _SERIES,
        }),
        "histograms": _obj({
            "latency_us": {"type": "string"},
            "server_latency_us": {"type": ["string", "null"]},
        }),
    }),
}


# -- a validator for the subset of JSON Schema used above ----------------------------------
# A dependency on the jsonschema package for one fixed schema would be a poor trade; the
# keywords used are few, and the semantic checks that follow matter more than the shapes.

_TYPES: dict[str, Any] = {
    "object": dict, "array": list, "string": str, "boolean": bool, "null": type(None),
}


def _type_ok(value: Any, name: str) -> bool:
    if name == "integer":
        return isinstance(value, int) and not isinstance(value, bool)
    if name == "number":
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    return isinstance(value, _TYPES[name])


def _check(value: Any, schema: Mapping[str, Any], path: str, errors: list[str]) -> None:
    import re

    if "anyOf" in schema:
        if not any(not _errors_of(value, s, path) for s in schema["anyOf"]):
            errors.append(f"{path}: matches none of the allowed shapes")
        return
    if "const" in schema and value != schema["const"]:
        errors.append(f"{path}: expected {schema['const']!r}, got {value!r}")
    if "enum" in schema and value not in schema["enum"]:
        errors.append(f"{path}: {value!r} is not one of {schema['enum']}")
    if "type" in schema:
        names = schema["type"] if isinstance(schema["type"], list) else [schema["type"]]
        if not any(_type_ok(value, n) for n in names):
            errors.append(f"{path}: expected {' or '.join(names)}, got {type(value).__name__}")
            return
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if "minimum" in schema and value < schema["minimum"]:
            errors.append(f"{path}: {value} is below {schema['minimum']}")
        if "maximum" in schema and value > schema["maximum"]:
            errors.append(f"{path}: {value} is above {schema['maximum']}")
    if isinstance(value, str) and "pattern" in schema and not re.search(
        schema["pattern"], value
    ):
        errors.append(f"{path}: {value!r} does not match {schema['pattern']}")
    if isinstance(value, list):
        if "maxItems" in schema and len(value) > schema["maxItems"]:
            errors.append(f"{path}: more than {schema['maxItems']} items")
        if "items" in schema:
            for i, item in enumerate(value):
                _check(item, schema["items"], f"{path}[{i}]", errors)
    if isinstance(value, dict):
        props: Mapping[str, Any] = schema.get("properties", {})
        for key in schema.get("required", []):
            if key not in value:
                errors.append(f"{path}: missing {key!r}")
        extra = schema.get("additionalProperties", True)
        for key, item in value.items():
            if "propertyNames" in schema:
                _check(key, schema["propertyNames"], f"{path} key", errors)
            if key in props:
                _check(item, props[key], f"{path}.{key}", errors)
            elif extra is False:
                errors.append(f"{path}: unexpected key {key!r}")
            elif isinstance(extra, dict):
                _check(item, extra, f"{path}.{key}", errors)


def _errors_of(value: Any, schema: Mapping[str, Any], path: str) -> list[str]:
    errors: list[str] = []
    _check(value, schema, path, errors)
    return errors


def validate(doc: Any) -> list[str]:
    """Problems with ``doc`` as a bench result: the schema, then the sums it promises.

    An empty list means valid.
    """
    errors = _errors_of(doc, JSON_SCHEMA, "$")
    if errors:
        return errors
    s = doc["summary"]
    if s["successes"] + s["failures"] != s["transfers"]:
        errors.append("summary: successes + failures != transfers")
    if sum(s["failures_by_class"].values()) != s["failures"]:
        errors.append("summary: failures_by_class does not add up to failures")
    if sum(s["attempts"]["histogram"].values()) != s["transfers"]:
        errors.append("summary: the attempts histogram does not add up to transfers")
    timeline = doc["timeline"]
    if sum(timeline["successes"]) != s["successes"] or sum(timeline["failures"]) != s["failures"]:
        errors.append("timeline: buckets do not add up to the summary's counts")
    if sum(timeline["conflicts"]) != sum(s["conflicts_seen"].values()):
        errors.append("timeline: conflict buckets do not add up to conflicts_seen")
    latency = s["latency_ms"]
    if latency is not None and latency["count"] != s["transfers"]:
        errors.append("summary: latency_ms.count != transfers")
    b = doc["balances"]
    if b is not None and b["conserved"] != (Decimal(b["before"]) == Decimal(b["after"])):
        errors.append("balances: 'conserved' contradicts before/after")
    return errors
