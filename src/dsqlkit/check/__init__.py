"""``dsqlkit check``: report, offline, the statements Aurora DSQL would refuse; ``--fix`` rewrites
them; ``--verify`` runs the result on an ephemeral ``dsqlkit local``.

The checker runs a SQL file the way a migration runner sends it (``--mode``), through the same
rules the local endpoint applies (:func:`dsqlkit.local.dialect.analyze` and
:class:`~dsqlkit.local.dialect.TransactionRules`), plus what the rest of the script decides (a
type or role it never creates). It needs no database, so what depends on data or on objects made
elsewhere is left to ``--verify``. docs/check.md has the rules, labels, JSON schema and exit codes.

>>> [f.message for f in check_sql("TRUNCATE accounts;")]
['unsupported statement: Truncate']
"""

from __future__ import annotations

from dsqlkit.check.engine import MODES, Mode
from dsqlkit.check.engine import check_text as check_sql
from dsqlkit.check.findings import FIXABLE, NEEDS_REVIEW, RULES, UNFIXABLE, Finding, Label

__all__ = ["FIXABLE", "MODES", "NEEDS_REVIEW", "RULES", "UNFIXABLE", "Finding", "Label", "Mode",
           "check_sql"]
