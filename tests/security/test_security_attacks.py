"""Inside dsqlkit local, no role gets more than DSQL gives it: an IAM-mapped role and admin
each try every escalation and escape path in security_attacks.ATTACKS, through the endpoint,
and each attempt must be refused with nothing changed (see security_attacks for what is
checked after every attempt). The longer run is bench/security_attacks.py; the figures are in
docs/reliability.md."""

from __future__ import annotations

from pathlib import Path

import psycopg
import pytest
from security_attacks import ATTACKS, ISO, ROLES, Attack, Lab, report, run_attacks, timed


def test_every_attack_is_refused_and_changes_nothing(lab: Lab) -> None:
    outcomes, elapsed = timed(lambda: run_attacks(lab, ATTACKS))
    print("\n" + "\n".join(report(outcomes, elapsed)))
    per_role = {r: sum(1 for o in outcomes if o.role == r) for r in ROLES}
    assert min(per_role.values()) >= 40
    assert [f"{o.role}: {o.attack.name}: {o.error or 'accepted'} {o.changed}"
            for o in outcomes if not o.ok] == []
    families = {o.attack.family for o in outcomes}
    assert families >= {"internals", "roles", "settings", "files", "code", "sessions", "data",
                        "server"}


def test_settings_never_leave_repeatable_read(lab: Lab) -> None:
    """Done when: set_config and every other spelling leave the isolation level REPEATABLE
    READ (the session check after each attempt reads it by default and inside a block)."""
    settings = [a for a in ATTACKS if a.family == "settings"]
    assert len(settings) >= 30
    for outcome in run_attacks(lab, settings):
        assert outcome.ok, (outcome.role, outcome.attack.name, outcome.error, outcome.changed)
    for role in ROLES:
        state = lab.session_state(role)
        assert state[2] == "repeatable read" and state[-1] == "repeatable read"


# -- the checks can fail: a change, an accepted attempt, a written file are all reported


def test_a_change_of_state_is_seen(lab: Lab) -> None:
    lab.su.execute("ALTER ROLE app CREATEDB")
    try:
        outcome = lab.attempt("app", Attack("noop", "test", "SELECT 1/0"))
    finally:
        lab.su.execute("ALTER ROLE app NOCREATEDB")
    assert outcome.refused and outcome.changed == ["roles"]
    assert lab.attempt("app", Attack("noop", "test", "SELECT 1/0")).ok


def test_an_accepted_attempt_is_seen(lab: Lab) -> None:
    outcome = lab.attempt("admin", Attack("harmless", "test", "SELECT 1"))
    assert not outcome.refused and not outcome.ok and outcome.changed == []


def test_a_session_change_and_a_file_are_seen(lab: Lab) -> None:
    conn = lab.sessions["app"]
    conn.execute("SET search_path = app_s")
    try:
        assert lab.attempt("app", Attack("x", "test", "SELECT 1/0")).changed == [
            "the attacker's session"]
    finally:
        conn.execute("RESET search_path")
    marker = Path(lab.files) / "left-behind"
    marker.touch()
    try:
        assert lab.attempt("app", Attack("x", "test", "SELECT 1/0")).changed == ["files"]
    finally:
        marker.unlink()


# -- a non-admin role's ordinary work still works


def test_dml_on_granted_tables(lab: Lab) -> None:
    with lab._connect("app") as app, app.transaction():
        assert app.execute("SELECT count(*) FROM admin_t").fetchone() == (2,)
        app.execute("INSERT INTO admin_t VALUES (3, 3)")
        assert app.execute("UPDATE admin_t SET v = v + 1 WHERE id = 3").rowcount == 1
        assert app.execute("DELETE FROM admin_t WHERE id = 3").rowcount == 1


def test_async_index_on_own_table_and_reading_sys_jobs(lab: Lab) -> None:
    with lab._connect("app") as app:
        app.execute("CREATE TABLE app_s.work (id int PRIMARY KEY, v int, w text)")
        try:
            app.execute("INSERT INTO app_s.work SELECT g, g, 'x' FROM generate_series(1, 50) g")
            # An expression that a text substitution over the statement would have broken
            # open: the build runs the statement as written, nothing else.
            job = app.execute(
                "CREATE INDEX ASYNC work_w ON app_s.work "
                "((w || $concurrently$ x $$; ALTER ROLE app SUPERUSER; -- $concurrently$))"
            ).fetchone()
            assert job is not None
            assert app.execute("CALL sys.wait_for_job(%s)", [job[0]]).fetchone() == (True,)
            assert app.execute("SELECT status, job_type FROM sys.jobs WHERE job_id = %s",
                               [job[0]]).fetchone() == ("completed", "INDEX_BUILD")
            assert app.execute("SELECT indisvalid FROM pg_index WHERE indexrelid = "
                               "'app_s.work_w'::regclass").fetchone() == (True,)
            assert app.execute("SELECT rolsuper FROM pg_roles WHERE rolname = 'app'"
                               ).fetchone() == (False,)
            # A build the job runs itself (left to it by a duplicate), as the role.
            app.execute("INSERT INTO app_s.work VALUES (51, 1, 'x')")
            job = app.execute("CREATE UNIQUE INDEX ASYNC work_v ON app_s.work (v)").fetchone()
            assert job is not None
            assert app.execute("CALL sys.wait_for_job(%s)", [job[0]]).fetchone() == (False,)
        finally:
            app.execute("DROP TABLE app_s.work")


def test_settings_dsql_allows_still_work(lab: Lab) -> None:
    with lab._connect("app") as app:
        assert app.execute("SELECT set_config('search_path', 'app_s, public', false)"
                           ).fetchone() == ("app_s, public",)
        assert app.execute("SELECT count(*) FROM app_t").fetchone() == (2,)
        with app.transaction():
            app.execute("SET LOCAL search_path = public")
            assert app.execute("SHOW transaction_isolation").fetchone() == ("repeatable read",)
        with pytest.raises(psycopg.errors.FeatureNotSupported):
            app.execute(f"SELECT set_config('{ISO}', 'read committed', false)")


def test_admin_keeps_dsqls_admin_powers(lab: Lab) -> None:
    arn = "arn:aws:iam::123456789012:role/helper"
    with lab._connect("admin") as admin:
        admin.execute("CREATE ROLE helper WITH LOGIN")
        try:
            admin.execute(f"AWS IAM GRANT helper TO '{arn}'")
            admin.execute("CREATE SCHEMA helper_s")
            admin.execute("GRANT USAGE ON SCHEMA helper_s TO helper")
            admin.execute("CREATE TABLE helper_s.t (id int PRIMARY KEY)")
            admin.execute("GRANT SELECT ON helper_s.t TO helper")
            with lab._connect("helper") as helper:
                assert helper.execute("SELECT count(*) FROM helper_s.t").fetchone() == (0,)
            admin.execute(f"AWS IAM REVOKE helper FROM '{arn}'")
            with pytest.raises(psycopg.OperationalError, match="has no IAM mapping"):
                lab._connect("helper").close()
        finally:
            admin.execute("DROP SCHEMA IF EXISTS helper_s CASCADE")
            admin.execute("DROP ROLE helper")
        assert admin.execute("SELECT rolsuper FROM pg_roles WHERE rolname = current_user"
                             ).fetchone() == (False,)
