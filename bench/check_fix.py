"""How many statements DSQL still refuses after ``--fix``: dsqlkit check vs dsql-lint.

For each fixture (tests/data/check: a pg_dump of a small app, and a set of ORM-style
migrations applied in order), the original, ``dsqlkit check --fix`` and (when installed,
``pip install dsql-lint``) ``dsql-lint --fix`` outputs are each run on a fresh ephemeral
``dsqlkit local`` by ``dsqlkit check --verify``'s runner, and the refusals counted.

    .venv/bin/python bench/check_fix.py [--mode statement|query|file]
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from dsqlkit.check.engine import run_rules
from dsqlkit.check.fix import fix_checked
from dsqlkit.check.script import split_script
from dsqlkit.check.verify import RunError, local_endpoint, verify_text

DATA = Path(__file__).resolve().parent.parent / "tests" / "data" / "check"
FIXTURES: dict[str, list[Path]] = {
    "pg_dump (app_dump.sql)": [DATA / "app_dump.sql"],
    "ORM migrations (orm/*.sql)": sorted((DATA / "orm").glob("*.sql")),
}


def ours(texts: list[str], mode: str) -> list[str]:
    return [fix_checked(t, run_rules(split_script(t), mode), mode).text  # type: ignore[arg-type]
            for t in texts]


def dsql_lint(paths: list[Path]) -> list[str] | None:
    exe = shutil.which("dsql-lint") or str(Path(sys.executable).with_name("dsql-lint"))
    if not Path(exe).exists():
        return None
    out: list[str] = []
    with tempfile.TemporaryDirectory() as tmp:
        for path in paths:
            target = Path(tmp) / path.name
            # Exit 1/3 mean unfixable errors / warnings remain; the output is written either way.
            subprocess.run([exe, "--fix", str(path), "-o", str(target)], capture_output=True,
                           check=False, timeout=120)
            out.append(target.read_text() if target.exists() else path.read_text())
    return out


def refusals(texts: list[str], mode: str) -> list[RunError]:
    errors: list[RunError] = []
    with local_endpoint() as dsn:
        for text in texts:
            errors.extend(verify_text(text, dsn, mode))  # type: ignore[arg-type]
    return errors


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mode", choices=("statement", "query", "file"), default="statement")
    parser.add_argument("--show", action="store_true", help="list what each output leaves")
    args = parser.parse_args()
    print(f"refusals left at run time on dsqlkit local (--verify, mode {args.mode})")
    print(f"{'fixture':30} {'original':>9} {'dsqlkit --fix':>14} {'dsql-lint --fix':>16}")
    worse = False
    for name, paths in FIXTURES.items():
        originals = [p.read_text() for p in paths]
        base = refusals(originals, args.mode)
        mine = refusals(ours(originals, args.mode), args.mode)
        lint_texts = dsql_lint(paths)
        lint = refusals(lint_texts, args.mode) if lint_texts is not None else None
        shown = "not installed" if lint is None else str(len(lint))
        print(f"{name:30} {len(base):>9} {len(mine):>14} {shown:>16}")
        if args.show:
            for label, errors in (("dsqlkit", mine), ("dsql-lint", lint or [])):
                for e in errors:
                    print(f"    {label}: line {e.line}: {e.sqlstate} {e.message[:90]}")
        if lint is not None and len(mine) >= len(lint) and len(lint) > 0:
            worse = True
    return 1 if worse else 0


if __name__ == "__main__":
    sys.exit(main())
