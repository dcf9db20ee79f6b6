"""A local AWS Lambda Invoke API for Python handlers: ``dsqlkit lambda serve``.

>>> from dsqlkit.lambda_local import LambdaServer               # doctest: +SKIP
>>> with LambdaServer("examples/dat401", env=endpoint_env, concurrency=4) as srv:
...     client = boto3.client("lambda", endpoint_url=srv.endpoint_url)
...     client.invoke(FunctionName="ch04", Payload=b'{"payer_id": 1, ...}')

boto3's ``lambda`` client (``endpoint_url=``) and ``aws lambda invoke --endpoint-url`` work
unchanged. Each concurrent invocation runs in its own execution environment -- a process with
its own module state, frozen between invocations and reused while warm, as on Lambda -- up to
``concurrency`` environments per function. See :mod:`dsqlkit.lambda_local.server` for the API
surface and :mod:`dsqlkit.lambda_local.environment` for the environment model.

The package's ``__init__`` stays import-light: every execution environment imports it (for
the runtime module) before the function's own code, so it is part of each cold start.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from dsqlkit.lambda_local.functions import FunctionSpec, discover, parse_spec
    from dsqlkit.lambda_local.server import LambdaServer

__all__ = ["FunctionSpec", "LambdaServer", "discover", "parse_spec"]


def __getattr__(name: str) -> Any:
    if name == "LambdaServer":
        from dsqlkit.lambda_local.server import LambdaServer

        return LambdaServer
    if name in ("FunctionSpec", "discover", "parse_spec"):
        from dsqlkit.lambda_local import functions

        return getattr(functions, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
