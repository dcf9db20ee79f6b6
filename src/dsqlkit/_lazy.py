"""Lazy package attributes: ``import dsqlkit`` stays cheap, ``dsqlkit.connect`` still works.

In a package ``__init__``::

    from dsqlkit._lazy import lazy_exports

    __getattr__, __dir__ = lazy_exports(__name__, {
        "connect": "dsqlkit.psycopg:connect",
        "DsqlConfig": "dsqlkit.config:DsqlConfig",
    })

The first access to ``dsqlkit.connect`` imports ``dsqlkit.psycopg`` (and so psycopg) and
caches the attribute in the package namespace; later accesses are plain attribute lookups.
Keep static imports of the same names under ``if TYPE_CHECKING:`` for type checkers.
"""

from __future__ import annotations

import sys

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Mapping
    from typing import Any


def lazy_exports(
    package: str, exports: Mapping[str, str]
) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """Return the ``(__getattr__, __dir__)`` pair for ``package``.

    ``exports`` maps an attribute name to ``"module:attribute"`` (or ``"module"`` for a
    submodule).
    """
    table = dict(exports)
    for name, target in table.items():
        module, _, attr = target.partition(":")
        if not module or (":" in target and not attr):
            raise ValueError(f"lazy export {name!r}: expected 'module:attribute', got {target!r}")

    def __getattr__(name: str) -> Any:
        target = table.get(name)
        if target is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        import importlib

        module_name, _, attr = target.partition(":")
        module = importlib.import_module(module_name)
        value = getattr(module, attr) if attr else module
        setattr(sys.modules[package], name, value)
        return value

    def __dir__() -> list[str]:
        return sorted(set(vars(sys.modules[package])) | set(table))

    return __getattr__, __dir__


__all__ = ["lazy_exports"]
