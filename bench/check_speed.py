"""``dsqlkit check`` on a ~3.6 MB pg_dump-like file: time per 1,000 statements.

The file is generated here (tables, sequences, constraints added after the tables, indexes,
functions, and COPY data, the bulk of a real dump's bytes). ``--before REV`` also times the
checker module of an earlier commit (``git show REV:src/dsqlkit/checker.py``) on the same file.

    .venv/bin/python bench/check_speed.py [--mb 3.6] [--before 7db9e86]
"""

from __future__ import annotations

import argparse
import importlib.util
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from dsqlkit.check import check_sql
from dsqlkit.check.script import split_script

ROOT = Path(__file__).resolve().parent.parent


def dump(megabytes: float) -> str:
    """A dump-shaped script of about ``megabytes`` MB."""
    parts = ["SET statement_timeout = 0;\nSET client_encoding = 'UTF8';\n"
             "SELECT pg_catalog.set_config('search_path', '', false);\n"]
    target = int(megabytes * 1_000_000)
    size = len(parts[0])
    table = 0
    while size < target:
        table += 1
        t = f"public.t{table}"
        block = [
            f"CREATE TABLE {t} (\n    id integer NOT NULL,\n    name text NOT NULL,\n"
            f"    tags text[],\n    note character varying(200),\n"
            f"    created_at timestamp with time zone DEFAULT now()\n);\n",
            f"ALTER TABLE {t} OWNER TO app;\n",
            f"CREATE SEQUENCE {t}_id_seq AS integer START WITH 1 INCREMENT BY 1 NO MINVALUE "
            f"NO MAXVALUE CACHE 1;\n",
            f"ALTER SEQUENCE {t}_id_seq OWNED BY {t}.id;\n",
            f"ALTER TABLE ONLY {t} ALTER COLUMN id SET DEFAULT nextval('{t}_id_seq'::regclass);\n",
            f"CREATE FUNCTION public.f{table}(x integer) RETURNS integer LANGUAGE sql AS $$ "
            f"SELECT x + {table} $$;\n",
            f"COPY {t} (id, name, tags, note, created_at) FROM stdin;\n",
        ]
        block += [f"{i}\tname {i}; it's row {i}\t{{a,b}}\t\\N\t2024-01-01 00:00:00+00\n"
                  for i in range(1, 200)]
        block += ["\\.\n\n",
                  f"SELECT pg_catalog.setval('{t}_id_seq', 199, true);\n",
                  f"ALTER TABLE ONLY {t}\n    ADD CONSTRAINT t{table}_pkey PRIMARY KEY (id);\n",
                  f"CREATE INDEX t{table}_name_idx ON {t} USING btree (name);\n",
                  f"COMMENT ON TABLE {t} IS 'table {table}';\n"]
        text = "".join(block)
        parts.append(text)
        size += len(text)
    return "".join(parts)


def timed(fn: Callable[[], Any], rounds: int) -> float:
    best = float("inf")
    for _ in range(rounds):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def load_before(rev: str) -> Any:
    source = subprocess.run(["git", "show", f"{rev}:src/dsqlkit/checker.py"], cwd=ROOT,
                            capture_output=True, text=True, check=True).stdout
    with tempfile.NamedTemporaryFile("w", suffix=".py", delete=False) as fh:
        fh.write(source)
    spec = importlib.util.spec_from_file_location("checker_before", fh.name)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["checker_before"] = module
    spec.loader.exec_module(module)
    return module


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=float, default=3.6)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--before", metavar="REV", help="also time the checker at REV")
    args = parser.parse_args()
    text = dump(args.mb)
    statements = len(split_script(text))
    findings = len(check_sql(text))
    now = timed(lambda: check_sql(text), args.rounds)
    print(f"input: {len(text) / 1e6:.2f} MB, {statements} statements, {findings} findings")
    print(f"dsqlkit check: {now * 1000:.0f} ms, {now * 1e6 / statements:.0f} ms per 1,000 "
          f"statements (target <= 300)")
    if args.before:
        before = load_before(args.before)
        then = timed(lambda: before.check_sql(text), 1)
        print(f"checker at {args.before}: {then * 1000:.0f} ms, {then * 1e6 / statements:.0f} ms "
              f"per 1,000 statements ({then / now:.1f}x the time)")
    return 0 if now * 1e6 / statements <= 300 else 1


if __name__ == "__main__":
    sys.exit(main())
