"""Packaging: optional drivers are optional, imports stay light, lazy exports work."""

from __future__ import annotations

import subprocess
import sys
import types

import pytest

from dsqlkit._lazy import lazy_exports

BLOCK = """
import sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in {'asyncpg', 'psycopg2', 'sqlalchemy'}:
            raise ImportError(f'No module named {name!r} (blocked by the test)')
        return None
sys.meta_path.insert(0, Block())
"""


def _run(code: str) -> str:
    return subprocess.run([sys.executable, "-c", BLOCK + code], capture_output=True,
                          text=True, check=True).stdout


def test_dsqlkit_works_without_the_optional_drivers() -> None:
    out = _run(
        "import dsqlkit, dsqlkit.config, dsqlkit.auth.tokens, dsqlkit.psycopg, dsqlkit.cli\n"
        "from dsqlkit.config import DsqlConfig\n"
        "DsqlConfig.from_connection_string('abcdefghijklmnopqrstuvwxyz', region='us-east-1')\n"
        "for name in ('asyncpg', 'psycopg2', 'sqlalchemy'):\n"
        "    try:\n"
        "        __import__('dsqlkit.' + name)\n"
        "    except ImportError as exc:\n"
        "        print(exc)\n"
    )
    assert "pip install 'dsqlkit[asyncpg]'" in out
    assert "pip install 'dsqlkit[psycopg2]'" in out
    assert "pip install 'dsqlkit[sqlalchemy]'" in out


def test_importing_the_token_path_skips_drivers_and_botocore() -> None:
    out = _run(
        "import dsqlkit.auth.tokens, dsqlkit.config\n"
        "print(sorted(m for m in ('psycopg', 'psycopg_pool', 'botocore', 'asyncio', 'ssl')\n"
        "             if m in sys.modules))\n"
    )
    assert out.strip() == "[]"


def test_lazy_exports() -> None:
    package = types.ModuleType("fakepkg")
    sys.modules["fakepkg"] = package
    try:
        getattr_, dir_ = lazy_exports("fakepkg", {
            "DsqlConfig": "dsqlkit.config:DsqlConfig",
            "sigv4": "dsqlkit.auth.sigv4",
        })
        package.__getattr__ = getattr_  # type: ignore[attr-defined]
        from dsqlkit.auth import sigv4
        from dsqlkit.config import DsqlConfig

        assert package.DsqlConfig is DsqlConfig
        assert vars(package)["DsqlConfig"] is DsqlConfig  # cached after the first access
        assert package.sigv4 is sigv4
        assert "DsqlConfig" in dir_() and "sigv4" in dir_()
        with pytest.raises(AttributeError, match="no attribute 'nope'"):
            package.nope  # noqa: B018
    finally:
        del sys.modules["fakepkg"]
    with pytest.raises(ValueError, match="module:attribute"):
        lazy_exports("x", {"a": "mod:"})


def test_a_plain_install_pulls_no_binary_wheel_and_no_aws_tooling() -> None:
    from importlib.metadata import requires

    core = [r for r in requires("dsqlkit") or [] if "extra ==" not in r]
    assert sorted(r.split(">")[0] for r in core) == ["botocore", "psycopg", "psycopg-pool"]

    def extra(name: str) -> list[str]:
        return [r.split(";")[0] for r in requires("dsqlkit") or []
                if f"extra == '{name}'" in r or f'extra == "{name}"' in r]

    assert extra("binary") == ["psycopg[binary]>=3.2"]
    assert extra("psycopg2") == ["psycopg2>=2.9"]
    assert extra("psycopg2-binary") == ["psycopg2-binary>=2.9"]
    # The README's commands install [all]: the binary wheels, so they work without a libpq.
    assert {"psycopg[binary]>=3.2", "psycopg2-binary>=2.9"} <= set(extra("all"))
    assert not any(r.startswith(("aws-cdk-lib", "awscli")) for r in extra("test"))
    assert {r.split(">")[0] for r in extra("aws")} == {"aws-cdk-lib", "constructs", "awscli"}
