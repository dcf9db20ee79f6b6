"""Aurora DSQL's SQL dialect: what it refuses, what it rewrites, and its transaction rules.

One rule set, two front ends. The local endpoint calls :func:`analyze` for every statement text a
client sends and drives one :class:`TransactionRules` per session; ``dsqlkit check``
(:mod:`dsqlkit.checker`) runs the same two over SQL files.

:func:`analyze` parses with libpg_query (pglast), never with regular expressions, and caches its
answer by statement text: the transfer workload sends three texts millions of times, so the hot
path is one dict lookup. The answer is immutable. For each statement it says

* what DSQL refuses regardless of session state (``refusal``: DSQL's SQLSTATE and exact message),
* what the transaction rules need (``kind``, ``writes_rows``, ``tcl_action``, ``isolation``, ...),
* what PostgreSQL must run instead (``rewritten``) or what the proxy answers itself
  (``local_answer``, ``job``, ``iam``, ``wait_for_job``),
* what only the catalog can decide (``drop_columns``, ``adopt_indexes``, ``index_columns``,
  ``waiver``), which the proxy checks against its backend.

Messages come from a live cluster (../shared/conformance, recorded 2026-09) wherever one was
recorded; the few that were not are marked "inferred" next to the rule, with the documented style
they follow. Syntax errors are never invented: such statements are ``unparsed`` and PostgreSQL
reports its own error.

The package: :mod:`.model` (the vocabulary and DSQL's fixed facts), :mod:`.analyze` (split,
parse, cache), :mod:`.queries`, :mod:`.ddl` and :mod:`.expressions` (the rules, by area), and
:mod:`.transaction` (the per-session transaction rules).
"""

from dsqlkit.local.dialect.analyze import (
    CacheStats,
    analyze,
    analyze_uncached,
    cache_clear,
    cache_stats,
)
from dsqlkit.local.dialect.model import (
    ABORTED,
    AGE_LIMIT_EXCEEDED,
    ALLOWED_SETTINGS,
    DDL_AND_DML,
    DSQL_ONLY_SETTINGS,
    MULTIPLE_DDL,
    ROW_LIMIT,
    ROW_LIMIT_EXCEEDED,
    SERVER_VERSION,
    SERVER_VERSION_NUM,
    SETTING_RULES,
    TRANSACTION_AGE_LIMIT,
    VERSION_STRING,
    Analysis,
    AsyncJob,
    IamMapping,
    Kind,
    LocalAnswer,
    Refusal,
    Relation,
    Statement,
    WaitForJob,
    setting_refusal,
)
from dsqlkit.local.dialect.transaction import ALLOW, TransactionRules, Verdict

__all__ = [
    "ABORTED",
    "AGE_LIMIT_EXCEEDED",
    "ALLOW",
    "ALLOWED_SETTINGS",
    "DDL_AND_DML",
    "DSQL_ONLY_SETTINGS",
    "MULTIPLE_DDL",
    "ROW_LIMIT",
    "ROW_LIMIT_EXCEEDED",
    "SERVER_VERSION",
    "SERVER_VERSION_NUM",
    "SETTING_RULES",
    "TRANSACTION_AGE_LIMIT",
    "VERSION_STRING",
    "Analysis",
    "AsyncJob",
    "CacheStats",
    "IamMapping",
    "Kind",
    "LocalAnswer",
    "Refusal",
    "Relation",
    "Statement",
    "TransactionRules",
    "Verdict",
    "WaitForJob",
    "analyze",
    "analyze_uncached",
    "cache_clear",
    "cache_stats",
    "setting_refusal",
]

