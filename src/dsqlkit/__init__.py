"""dsqlkit: the Python toolkit for Amazon Aurora DSQL.

Connect in one line (IAM token, TLS verify-full and token refresh handled inside)::

    import dsqlkit

    with dsqlkit.connect("postgres://admin@<cluster>.dsql.us-east-1.on.aws/postgres") as conn:
        conn.execute("SELECT 1")

    pool = dsqlkit.create_pool("postgres://admin@<cluster>.dsql.us-east-1.on.aws/postgres")

Survive optimistic-concurrency conflicts by re-running the whole transaction::

    dsqlkit.run_transaction(pool, transfer, dsqlkit.OCCRetryConfig.high_contention())

Other drivers: :mod:`dsqlkit.asyncpg`, :mod:`dsqlkit.psycopg2`, :mod:`dsqlkit.sqlalchemy`.
A local DSQL endpoint for development and tests: :mod:`dsqlkit.local`.

Everything here is imported on first use, so ``import dsqlkit`` stays cheap.
"""

from dsqlkit._lazy import lazy_exports
from dsqlkit.errors import (
    AuthenticationError,
    ConfigError,
    CredentialsError,
    DsqlError,
    OCCRetryExhausted,
    PoolTimeout,
    TokenError,
)

__version__ = "0.1.0"

TYPE_CHECKING = False
if TYPE_CHECKING:
    from dsqlkit.auth.sigv4 import Credentials
    from dsqlkit.auth.tokens import TokenProvider, generate_token
    from dsqlkit.config import DsqlConfig
    from dsqlkit.occ import (
        OCCMetrics,
        OCCRetryConfig,
        OCCType,
        classify_occ,
        default_metrics,
        is_occ_error,
        occ_attempts,
        occ_attempts_async,
        occ_retry,
        retry_on_occ,
        retry_on_occ_async,
        run_transaction,
        run_transaction_async,
    )
    from dsqlkit.psycopg import connect, connect_async, create_async_pool, create_pool

__getattr__, __dir__ = lazy_exports(__name__, {
    "connect": "dsqlkit.psycopg:connect",
    "connect_async": "dsqlkit.psycopg:connect_async",
    "create_pool": "dsqlkit.psycopg:create_pool",
    "create_async_pool": "dsqlkit.psycopg:create_async_pool",
    "DsqlConfig": "dsqlkit.config:DsqlConfig",
    "Credentials": "dsqlkit.auth.sigv4:Credentials",
    "TokenProvider": "dsqlkit.auth.tokens:TokenProvider",
    "generate_token": "dsqlkit.auth.tokens:generate_token",
    "OCCRetryConfig": "dsqlkit.occ:OCCRetryConfig",
    "OCCType": "dsqlkit.occ:OCCType",
    "OCCMetrics": "dsqlkit.occ:OCCMetrics",
    "default_metrics": "dsqlkit.occ:default_metrics",
    "is_occ_error": "dsqlkit.occ:is_occ_error",
    "classify_occ": "dsqlkit.occ:classify_occ",
    "retry_on_occ": "dsqlkit.occ:retry_on_occ",
    "retry_on_occ_async": "dsqlkit.occ:retry_on_occ_async",
    "run_transaction": "dsqlkit.occ:run_transaction",
    "run_transaction_async": "dsqlkit.occ:run_transaction_async",
    "occ_retry": "dsqlkit.occ:occ_retry",
    "occ_attempts": "dsqlkit.occ:occ_attempts",
    "occ_attempts_async": "dsqlkit.occ:occ_attempts_async",
})

__all__ = [
    "AuthenticationError",
    "ConfigError",
    "Credentials",
    "CredentialsError",
    "DsqlConfig",
    "DsqlError",
    "OCCMetrics",
    "OCCRetryConfig",
    "OCCRetryExhausted",
    "OCCType",
    "PoolTimeout",
    "TokenError",
    "TokenProvider",
    "__version__",
    "classify_occ",
    "connect",
    "connect_async",
    "create_async_pool",
    "create_pool",
    "default_metrics",
    "generate_token",
    "is_occ_error",
    "occ_attempts",
    "occ_attempts_async",
    "occ_retry",
    "retry_on_occ",
    "retry_on_occ_async",
    "run_transaction",
    "run_transaction_async",
]
