"""The official projects' own test suites, run against ``dsqlkit local`` as a user would.

AWS runs these suites green against real Aurora DSQL clusters in its CI; here each one runs,
unchanged, through ``dsqlkit local run`` on a default endpoint:

* aurora-dsql-python-connector 0.2.7, ``tests/integration`` (psycopg, psycopg2, asyncpg);
* aurora-dsql-sqlalchemy 1.3.0, its test suite with the psycopg driver;
* aurora-dsql-django 0.7.0, its unit and integration tests (the connector's psycopg extra).

Each suite is installed from its PyPI sdist (pinned) into its own virtual environment under
``--workdir`` (default ``~/.cache/dsqlkit/compat``), with the versions of pytest, the
drivers, boto3, SQLAlchemy and Django that the suite's own ``uv.lock`` pins. The script
prints each suite's counts and exits non-zero if any test failed. Tests that need AWS beyond
a cluster endpoint (control-plane API calls, say) would be deselected by name in DESELECTED
below, with the reason; none of these three suites has one. Needs Python >= 3.10, pip, and
PyPI.

Usage: python bench/compat_suites.py [--workdir DIR] [--suite connector|sqlalchemy|django]...
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

CONNECTOR = ("aurora-dsql-python-connector", "0.2.7")


@dataclass(frozen=True)
class Suite:
    key: str
    package: str
    version: str
    # What to install: the suite's own sdist with these extras (plus the connector's sdist
    # with its extras, for the ORM adapters), then these packages at the versions the suite's
    # uv.lock pins (the connector's uv.lock when the suite's has no pin).
    extras: str
    connector_extras: str
    pinned: tuple[str, ...]
    # pytest runs, each (arguments, extra environment), from the unpacked sdist.
    runs: tuple[tuple[tuple[str, ...], dict[str, str]], ...]


SUITES = {
    s.key: s for s in (
        Suite(
            "connector", *CONNECTOR, extras="psycopg,psycopg2,asyncpg", connector_extras="",
            pinned=("pytest", "pytest-asyncio", "python-dotenv", "boto3", "botocore",
                    "psycopg", "psycopg-binary", "psycopg-pool", "psycopg2-binary",
                    "asyncpg"),
            runs=((("tests/integration",), {}),),
        ),
        Suite(
            "sqlalchemy", "aurora-dsql-sqlalchemy", "1.3.0", extras="psycopg",
            connector_extras="psycopg",
            pinned=("pytest", "python-dotenv", "boto3", "botocore", "sqlalchemy", "greenlet",
                    "psycopg", "psycopg-binary", "psycopg-pool"),
            runs=((("test",), {"DRIVER": "psycopg"}),),
        ),
        Suite(
            "django", "aurora-dsql-django", "0.7.0", extras="", connector_extras="psycopg",
            pinned=("pytest", "django", "boto3", "botocore", "psycopg", "psycopg-binary",
                    "psycopg-pool", "psycopg2-binary"),
            # As its README runs them: the unit tests, then the integration tests with the
            # suite's settings module (the unit tests leave Django configured otherwise).
            runs=((("aurora_dsql_django/tests/unit",), {}),
                  (("aurora_dsql_django/tests/integration",),
                   {"DJANGO_SETTINGS_MODULE": "aurora_dsql_django.tests.test_settings"})),
        ),
    )
}

# Deselected tests, by suite: node id -> why it cannot run against a local endpoint.
# Only tests that need AWS beyond a cluster endpoint belong here. (None does today.)
DESELECTED: dict[str, dict[str, str]] = {"connector": {}, "sqlalchemy": {}, "django": {}}


@dataclass
class Counts:
    passed: int = 0
    failed: int = 0
    errors: int = 0
    skipped: int = 0
    deselected: int = 0
    seconds: float = 0.0

    def add(self, other: Counts) -> None:
        for name in ("passed", "failed", "errors", "skipped", "deselected", "seconds"):
            setattr(self, name, getattr(self, name) + getattr(other, name))


def sh(cmd: list[str], **kw: object) -> None:
    subprocess.run(cmd, check=True, **kw)  # type: ignore[call-overload]


def sdist(workdir: Path, package: str, version: str) -> tuple[Path, Path]:
    """The package's sdist from PyPI, downloaded once, and the directory it unpacks to."""
    downloads = workdir / "sdists"
    downloads.mkdir(parents=True, exist_ok=True)
    stem = f"{package.replace('-', '_')}-{version}"
    archive = downloads / f"{stem}.tar.gz"
    if not archive.exists():
        sh([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--no-binary", ":all:",
            "-d", str(downloads), f"{package}=={version}"])
    source = workdir / "src" / stem
    if not source.exists():
        source.parent.mkdir(parents=True, exist_ok=True)
        with tarfile.open(archive) as tar:
            try:
                tar.extractall(source.parent, filter="data")
            except TypeError:  # Python without extraction filters (< 3.10.12, 3.11.4)
                tar.extractall(source.parent)
    return archive, source


def lock_versions(*sources: Path) -> dict[str, str]:
    """name -> version from the uv.lock files in ``sources`` (the first one wins)."""
    versions: dict[str, str] = {}
    for source in sources:
        lock = source / "uv.lock"
        if not lock.exists():
            continue
        for name, version in re.findall(
                r'^\[\[package\]\]\nname = "([^"]+)"\nversion = "([^"]+)"', lock.read_text(),
                flags=re.MULTILINE):
            versions.setdefault(name.lower(), version)
    if "psycopg" in versions:  # the binary wheel is released in step with psycopg
        versions["psycopg-binary"] = versions["psycopg"]
    return versions


def install(workdir: Path, suite: Suite) -> tuple[Path, Path]:
    """The suite's virtual environment (made once) and its unpacked sources."""
    archive, source = sdist(workdir, suite.package, suite.version)
    conn_archive, conn_source = sdist(workdir, *CONNECTOR)
    venv = workdir / f"venv-{suite.key}"
    python = venv / "bin" / "python"
    marker = venv / ".installed"
    versions = lock_versions(source, conn_source)
    missing = [p for p in suite.pinned if p not in versions]
    if missing:
        raise SystemExit(f"compat: no pinned version for {missing} in {suite.package}'s uv.lock")
    requirements = [f"{archive}[{suite.extras}]" if suite.extras else str(archive)]
    if suite.package != CONNECTOR[0]:
        requirements.append(
            f"{conn_archive}[{suite.connector_extras}]" if suite.connector_extras
            else str(conn_archive))
    requirements += [f"{p}=={versions[p]}" for p in suite.pinned]
    wanted = "\n".join(requirements) + "\n"
    if python.exists() and marker.exists() and marker.read_text() == wanted:
        return python, source  # installed by an earlier run
    shutil.rmtree(venv, ignore_errors=True)
    sh([sys.executable, "-m", "venv", str(venv)])
    sh([str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check",
        *requirements])
    marker.write_text(wanted)
    return python, source


def junit_counts(path: Path) -> Counts:
    counts = Counts()
    root = ET.parse(path).getroot()
    for suite in [root] if root.tag == "testsuite" else root.iter("testsuite"):
        tests = int(suite.get("tests", 0))
        counts.failed += int(suite.get("failures", 0))
        counts.errors += int(suite.get("errors", 0))
        counts.skipped += int(suite.get("skipped", 0))
        counts.passed += tests - int(suite.get("failures", 0)) - int(suite.get("errors", 0)) \
            - int(suite.get("skipped", 0))
    return counts


def run_suite(workdir: Path, suite: Suite, state: Path) -> Counts:
    python, source = install(workdir, suite)
    total = Counts()
    for i, (paths, extra_env) in enumerate(suite.runs):
        report = workdir / f"{suite.key}-{i}.xml"
        report.unlink(missing_ok=True)
        deselect = [f"--deselect={node}" for node in DESELECTED[suite.key]
                    if node.split("::")[0].startswith(paths)]
        env = {**os.environ, **extra_env, "XDG_STATE_HOME": str(state)}
        # The suite's own configuration (pytest.ini, pyproject) applies; live logging and
        # verbosity off, so that the log shows failures, not every line.
        cmd = [sys.executable, "-m", "dsqlkit", "local", "run", "--",
               str(python), "-m", "pytest", *paths, f"--rootdir={source}", "-q", "-rfE",
               "-p", "no:cacheprovider", "-o", "log_cli=false", "-o", "addopts=",
               f"--junitxml={report}", *deselect]
        started = time.monotonic()
        subprocess.run(cmd, cwd=source, env=env, check=False)
        elapsed = time.monotonic() - started
        if not report.exists():
            print(f"compat: {suite.package}: pytest wrote no report", flush=True)
            total.errors += 1
            continue
        counts = junit_counts(report)
        counts.deselected = len(deselect)
        counts.seconds = elapsed
        total.add(counts)
    return total


def default_workdir() -> Path:
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(cache) / "dsqlkit" / "compat"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", type=Path, default=default_workdir(),
                        help="where the sdists and virtual environments go, kept for reuse "
                             "(default: $XDG_CACHE_HOME/dsqlkit/compat); outside any project, "
                             "so that pytest finds no configuration but the suite's own")
    parser.add_argument("--suite", action="append", choices=sorted(SUITES),
                        help="run only this suite (repeatable; default: all)")
    args = parser.parse_args(argv)
    workdir: Path = args.workdir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    results: dict[str, Counts] = {}
    for key in args.suite or list(SUITES):
        suite = SUITES[key]
        print(f"compat: {suite.package} {suite.version} ...", flush=True)
        # A default endpoint (default data directory, port 5432 when free), fresh per suite.
        with tempfile.TemporaryDirectory(prefix="dsqlkit-compat-state-") as state:
            results[key] = run_suite(workdir, suite, Path(state))
    print("\ncompat: the official suites against dsqlkit local", flush=True)
    bad = False
    for key, c in results.items():
        suite = SUITES[key]
        bad = bad or c.failed + c.errors > 0 or c.passed == 0
        print(f"  {suite.package} {suite.version}: {c.passed} passed, {c.failed} failed, "
              f"{c.errors} errors, {c.skipped} skipped, {c.deselected} deselected "
              f"({c.seconds:.0f} s)", flush=True)
        for node, why in DESELECTED[key].items():
            print(f"    deselected {node}: {why}", flush=True)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
