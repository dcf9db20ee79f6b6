"""``dsqlkit check`` (kept importable here; the checker lives in :mod:`dsqlkit.check`).

>>> [f.message for f in check_sql("TRUNCATE accounts;")]
['unsupported statement: Truncate']
"""

from __future__ import annotations

from dsqlkit.check import Finding, check_sql
from dsqlkit.check.cli import configure, run

__all__ = ["Finding", "check_sql", "configure", "run"]
