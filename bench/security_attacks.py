"""Security inside the database (issue 14, full run): the CI suite's attacks, then generated
ones, each by an IAM-mapped role and by admin, each checked as in tests/security (refused,
and the backend's state, the attacker's session, files and signalled sessions unchanged).

    python bench/security_attacks.py                      # every family, seed 14
    python bench/security_attacks.py --settings 3000 --variants 2000 --seed 7

Generated families:

* settings: every PostgreSQL parameter DSQL lets no session set (all of pg_settings but the
  allowed ones, plus the endpoint's own), each with a value PostgreSQL would accept, through a
  randomly chosen spelling of 20 (SET, SET LOCAL, RESET, set_config in its forms, SQL function
  bodies and SET clauses, ALTER ROLE ... SET, UPDATE pg_settings, query_to_xml, views, startup
  options); the refusal must be DSQL's settings answer and the parameter's value unchanged;
* functions: every pg_catalog function PUBLIC may not execute, called with NULL arguments;
* catalogs: DELETE and INSERT on every pg_catalog table;
* attributes: CREATE ROLE and ALTER ROLE self with random sets of SUPERUSER, REPLICATION,
  BYPASSRLS and CREATEDB;
* signals: pg_terminate_backend and pg_cancel_backend of every other role's session;
* variants: the suite's attacks respelled (letter case, comments, whitespace).

Then a second pass sends the suite's attacks through an endpoint without the dialect
(``rules=False``) to the same backend and lists those only the dialect refuses. Exits 1 if any
attempt of the first part was let through or changed anything.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "security"))
import psycopg
from pglast import parser
from security_attacks import (
    ATTACKS,
    ROLES,
    Attack,
    Lab,
    Outcome,
    by_family,
    report,
    run_attacks,
    sqlstates,
)

from dsqlkit.local import LocalDSQL
from dsqlkit.local.dialect import ALLOWED_SETTINGS

_SPELLINGS: list[tuple[str, str, bool]] = [
    # (template, kind, in a block); {n} the parameter, {v} a literal value
    ('SET "{n}" = {v}', "sql", False),
    ('SET SESSION "{n}" TO {v}', "sql", False),
    ('SET LOCAL "{n}" = {v}', "sql", True),
    ('RESET "{n}"', "sql", False),
    ('SET "{n}" TO DEFAULT', "sql", False),
    ("SELECT set_config('{n}', {v}, false)", "sql", False),
    ("SELECT set_config('{n}', {v}, true)", "sql", True),
    ("SELECT pg_catalog.set_config('{n}', {v}, false)", "sql", False),
    ("WITH x AS (SELECT set_config('{n}', {v}, false)) SELECT * FROM x", "sql", False),
    ("SELECT * FROM set_config('{n}', {v}, false)", "sql", False),
    ("SELECT set_config(setting_name => '{n}', new_value => {v}, is_local => false)", "sql",
     False),
    ("SELECT set_config(%s, %s, false)", "params", False),
    ("CREATE FUNCTION {schema}.evil() RETURNS text LANGUAGE sql AS "
     "$q$ SELECT set_config('{n}', {v}, false) $q$", "sql", False),
    ('CREATE FUNCTION {schema}.evil() RETURNS int LANGUAGE sql SET "{n}" = {v} AS \'SELECT 1\'',
     "sql", False),
    ('ALTER FUNCTION {own_func} SET "{n}" = {v}', "sql", False),
    ('ALTER ROLE {me} SET "{n}" = {v}', "sql", False),
    ("UPDATE pg_settings SET setting = {v} WHERE name = '{n}'", "sql", False),
    ("SELECT query_to_xml('SELECT set_config(''{n}'', ' || quote_literal({v}) || ', false)', "
     "true, false, '')", "sql", False),
    ("CREATE VIEW {schema}.evil AS SELECT set_config('{n}', {v}, false)", "sql", False),
    ("-c {n}={raw}", "connect", False),
]


def _literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _other_value(row: tuple[str, str, str, str | None, str | None, list[str] | None]) -> str:
    """A value PostgreSQL accepts for the parameter, other than its current one."""
    _, vartype, setting, min_val, max_val, enumvals = row
    if vartype == "bool":
        return "off" if setting == "on" else "on"
    if vartype == "enum" and enumvals:
        others = [e for e in enumvals if e != setting]
        return others[0] if others else setting
    if vartype in ("integer", "real"):
        for candidate in (max_val, min_val):
            if candidate is not None and candidate != setting:
                return candidate
        return setting
    return "x"


def settings_attacks(lab: Lab, n: int, rng: random.Random) -> list[tuple[Attack, str]]:
    rows = lab.su.execute(
        "SELECT name, vartype, setting, min_val, max_val, enumvals FROM pg_settings "
        "ORDER BY name").fetchall()
    params = [(r[0], _other_value(r)) for r in rows if r[0].lower() not in ALLOWED_SETTINGS]
    params += [("dsqlkit.limits", "0:-100000:0:f"), ("dsqlkit.inline_index_builds", "off")]
    out = []
    for i in range(n):
        name, value = params[i % len(params)] if i < len(params) else rng.choice(params)
        template, kind, block = rng.choice(_SPELLINGS)
        if kind == "connect" and rng.random() > 0.2:  # each costs a TLS handshake
            template, kind, block = _SPELLINGS[5]
        raw = value.replace("\\", "\\\\").replace(" ", "\\ ")
        sql = (template.replace("{n}", name).replace("{v}", _literal(value))
               .replace("{raw}", raw))
        out.append((Attack(f"{name} ({template[:24]})", "settings sweep", sql, block=block,
                           params=(name, value) if kind == "params" else None,
                           kind="connect" if kind == "connect" else "sql"), name))
    return out


def function_attacks(lab: Lab) -> list[Attack]:
    rows = lab.su.execute(
        "SELECT p.proname, p.proretset, array(SELECT format_type(t, NULL) "
        "FROM unnest(p.proargtypes) t) FROM pg_proc p "
        "WHERE p.pronamespace = 'pg_catalog'::regnamespace AND p.prokind = 'f' "
        "AND NOT has_function_privilege('public', p.oid, 'EXECUTE') "
        "AND NOT EXISTS (SELECT FROM unnest(p.proargtypes) t JOIN pg_type y ON y.oid = t "
        "                WHERE y.typtype = 'p') ORDER BY 1").fetchall()
    out = []
    for name, retset, types in rows:
        # A sub-select, not a constant: PostgreSQL folds a strict function of a NULL constant
        # to NULL while planning, without running it (or checking the privilege to).
        args = ", ".join(f"(SELECT NULL::{t})" for t in types)
        call = f'pg_catalog."{name}"({args})'
        sql = f"SELECT * FROM {call}" if retset else f"SELECT {call}"
        out.append(Attack(f"{name}({', '.join(types)})", "functions", sql))
    return out


def catalog_attacks(lab: Lab) -> list[Attack]:
    tables = [r[0] for r in lab.su.execute(
        "SELECT oid::regclass::text FROM pg_class WHERE relnamespace = 'pg_catalog'::regnamespace "
        "AND relkind = 'r' ORDER BY 1").fetchall()]
    out = []
    for t in tables:
        out.append(Attack(f"DELETE {t}", "catalogs", f"DELETE FROM pg_catalog.{t} WHERE true"))
        out.append(Attack(f"INSERT {t}", "catalogs",
                          f"INSERT INTO pg_catalog.{t} SELECT * FROM pg_catalog.{t} LIMIT 1"))
    return out


def attribute_attacks(n: int, rng: random.Random) -> list[Attack]:
    powers = ["SUPERUSER", "REPLICATION", "BYPASSRLS", "CREATEDB"]
    extras = ["LOGIN", "NOINHERIT", "CONNECTION LIMIT 3", "VALID UNTIL 'infinity'", "CREATEROLE"]
    out = []
    for i in range(n):
        chosen = rng.sample(powers, rng.randint(1, len(powers)))
        chosen += rng.sample(extras, rng.randint(0, 2))
        rng.shuffle(chosen)
        if i % 2:
            out.append(Attack(f"ALTER ROLE self {' '.join(chosen)}", "attributes",
                              f"ALTER ROLE {{me}} {' '.join(chosen)}"))
        else:
            out.append(Attack(f"CREATE ROLE {' '.join(chosen)}", "attributes",
                              f"CREATE ROLE evil{i} {' '.join(chosen)}"))
    return out


def signal_attacks(lab: Lab, role: str) -> list[Attack]:
    pids = [r[0] for r in lab.su.execute(
        "SELECT pid FROM pg_stat_activity WHERE backend_type = 'client backend' "
        "AND usename IS NOT NULL AND usename <> %s ORDER BY pid", [role]).fetchall()]
    return [Attack(f"{fn} of pid {pid}", "signals", f"SELECT {fn}({pid})", roles=(role,))
            for pid in pids for fn in ("pg_terminate_backend", "pg_cancel_backend")]


def respell(rng: random.Random) -> Callable[[str], str]:
    """Random letter case for keywords and unquoted names, comments and spaces between
    tokens: the same statement to PostgreSQL, another text to the endpoint."""
    def apply(text: str) -> str:
        try:
            tokens = list(parser.scan(text))
        except parser.ParseError:
            return text
        out, pos = [], 0
        for tok in tokens:
            gap = text[pos:tok.start]
            if gap and not gap.strip():
                gap = rng.choice([gap, " /* x */ ", "\n  ", "\t"])
            word = text[tok.start:tok.end + 1]
            if tok.name != "SCONST" and tok.name != "Op" and not word.startswith(('"', "$")) \
                    and word.isascii() and word.replace("_", "").isalnum():
                word = "".join(c.upper() if rng.random() < 0.5 else c.lower() for c in word)
            out.append(gap + word)
            pos = tok.end + 1
        out.append(text[pos:])
        return rng.choice(["", "-- respelled\n", "/* a */ "]) + "".join(out)
    return apply


def _current(lab: Lab, role: str, name: str) -> str | None:
    """The parameter's value in the attacker's session (some only privileged roles read)."""
    try:
        row = lab.sessions[role].execute("SELECT current_setting(%s, true)", [name]).fetchone()
    except psycopg.errors.InsufficientPrivilege:
        return "(unreadable)"
    return None if row is None else row[0]


def backend_only_pass() -> tuple[list[str], int, int]:
    """The suite's attacks through an endpoint without the dialect, on a backend of their
    own: those the backend lets through, re-baselining after each."""
    let_through: list[str] = []
    total = refused = 0
    with LocalDSQL(ephemeral=True, port=0) as ep, \
            LocalDSQL(ep.data_dir, backend_url=ep.backend_url, port=0, rules=False) as raw, \
            Lab(ep, attack_ep=raw) as lab:
        for attack in ATTACKS:
            if attack.kind != "sql":
                continue  # the startup and login checks do not depend on the dialect
            for role in attack.roles:
                total += 1
                outcome = lab.attempt(role, attack)
                if outcome.ok:
                    refused += 1
                    continue
                what = ", ".join(outcome.changed) or "accepted"
                let_through.append(f"{role}: {attack.name} ({what})")
                lab.rebaseline()
    return let_through, refused, total


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seed", type=int, default=14)
    ap.add_argument("--settings", type=int, default=1500, help="settings attempts per role")
    ap.add_argument("--attributes", type=int, default=60, help="role attribute attempts")
    ap.add_argument("--variants", type=int, default=600, help="respelled suite attempts per role")
    ap.add_argument("--no-backend-pass", action="store_true")
    args = ap.parse_args()
    rng = random.Random(args.seed)
    problems: list[Outcome] = []
    all_outcomes: list[Outcome] = []
    started = time.monotonic()
    with LocalDSQL(ephemeral=True, port=0) as ep:
        with Lab(ep) as lab:
            def keep(o: Outcome) -> None:
                all_outcomes.append(o)
                if not o.ok:
                    problems.append(o)

            print("== the suite's attacks")
            t0 = time.monotonic()
            suite = run_attacks(lab, ATTACKS, keep)
            print("\n".join(report(suite, time.monotonic() - t0)))

            print("== settings: every parameter DSQL refuses, random spellings")
            t0 = time.monotonic()
            swept = []
            for attack, name in settings_attacks(lab, args.settings, rng):
                for role in ROLES:
                    before = _current(lab, role, name)
                    o = lab.attempt(role, attack)
                    after = _current(lab, role, name)
                    if before != after:
                        o.changed.append(f"{name} in the session")
                    if o.refused and "not supported" not in o.error:
                        o.changed.append(f"not DSQL's answer: {o.error}")
                    keep(o)
                    swept.append(o)
            print("\n".join(report(swept, time.monotonic() - t0)))

            print("== functions PUBLIC may not run, catalog writes, role attributes, signals")
            t0 = time.monotonic()
            generated = function_attacks(lab) + catalog_attacks(lab) + attribute_attacks(
                args.attributes, rng)
            more = run_attacks(lab, generated, keep)
            for role in ROLES:
                more += run_attacks(lab, signal_attacks(lab, role), keep)
            print("\n".join(report(more, time.monotonic() - t0)))

            print("== the suite's attacks respelled")
            t0 = time.monotonic()
            spelled = []
            texts = [a for a in ATTACKS if a.kind == "sql" and a.params is None]
            for _ in range(args.variants):
                attack = rng.choice(texts)
                for role in attack.roles:
                    o = lab.attempt(role, attack, respell(rng))
                    keep(o)
                    spelled.append(o)
            print("\n".join(report(spelled, time.monotonic() - t0)))

        families = by_family(all_outcomes)
        print("== all: attempts by family")
        for family, counts in families.items():
            print(f"  {family:<16} " + "  ".join(f"{r} {n:>5}" for r, n in counts.items()))
        per_role = {r: sum(1 for o in all_outcomes if o.role == r) for r in ROLES}
        print(f"  total            {', '.join(f'{r} {n:,}' for r, n in per_role.items())}; "
              f"refused with nothing changed: {len(all_outcomes) - len(problems):,} of "
              f"{len(all_outcomes):,} ({time.monotonic() - started:.0f} s)")
        print(f"  answers (SQLSTATE): {dict(sqlstates(all_outcomes))}")

        if not args.no_backend_pass:
            print("== the backend alone (the suite's SQL attacks, no dialect)")
            let_through, refused, total = backend_only_pass()
            print(f"  refused by the backend itself: {refused} of {total}; only the dialect "
                  f"refuses {len(let_through)}:")
            for line in let_through:
                print(f"    {line}")

    for o in problems:
        print(f"FAILED {o.role}: {o.attack.family}: {o.attack.name}: {o.error or 'accepted'} "
              f"changed={o.changed}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
