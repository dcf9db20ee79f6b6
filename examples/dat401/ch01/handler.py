"""Chapter 01: the smallest useful Lambda function.

``{"name": "reinvent"}`` -> ``{"greeting": "hello reinvent"}``. No database yet: this chapter
is about the handler contract (an event in, a JSON-serialisable value out, an exception for
an error) and deploying and invoking a function.
"""

from __future__ import annotations

from typing import Any


def handler(event: Any, context: Any) -> dict[str, str]:
    name = event.get("name") if isinstance(event, dict) else None
    if not isinstance(name, str):
        # Becomes a function error: {"errorType": "ValueError", "errorMessage": ...}.
        raise ValueError("The request must be a JSON object with a string field name")
    return {"greeting": f"hello {name}"}
