"""OCC classification against the real exception classes of every supported driver."""

from __future__ import annotations

import asyncpg.exceptions
import psycopg.errors
import psycopg2.errors
import pytest
import sqlalchemy.exc

from dsqlkit.occ import OCCType, classify_occ, is_occ_error, sqlstate_of

CURRENT_DATA = "change conflicts with another transaction (OC000)"
OLDER_DATA = "change conflicts with another transaction, please retry: (OC000)"
OLDEST_DATA = "mutation conflicts with another transaction, retry as needed (OC000)"
SCHEMA = "schema has been updated by another transaction (OC001)"
OLDER_SCHEMA = "schema has been updated by another transaction, please retry: (OC001)"
POSTGRES = "could not serialize access due to concurrent update"


def psycopg2_error(sqlstate: str, message: str) -> BaseException:
    cls = psycopg2.errors.lookup(sqlstate)
    exc: BaseException = cls(message)
    return exc


@pytest.mark.parametrize(
    ("message", "expected"),
    [
        (CURRENT_DATA, OCCType.DATA),
        (OLDER_DATA, OCCType.DATA),
        (OLDEST_DATA, OCCType.DATA),
        (SCHEMA, OCCType.SCHEMA),
        (OLDER_SCHEMA, OCCType.SCHEMA),
        (POSTGRES, OCCType.UNKNOWN),
    ],
)
@pytest.mark.parametrize(
    "make",
    [
        pytest.param(psycopg.errors.SerializationFailure, id="psycopg"),
        pytest.param(asyncpg.exceptions.SerializationError, id="asyncpg"),
        pytest.param(lambda m: psycopg2_error("40001", m), id="psycopg2"),
        pytest.param(
            lambda m: sqlalchemy.exc.OperationalError(
                "COMMIT", None, psycopg.errors.SerializationFailure(m)
            ),
            id="sqlalchemy-psycopg",
        ),
        pytest.param(
            lambda m: sqlalchemy.exc.DBAPIError(
                "UPDATE t SET v = 1", {}, asyncpg.exceptions.SerializationError(m)
            ),
            id="sqlalchemy-asyncpg",
        ),
    ],
)
def test_each_driver_error_is_classified(
    make: type[BaseException], message: str, expected: OCCType
) -> None:
    exc = make(message)
    assert classify_occ(exc) is expected
    assert is_occ_error(exc)


def test_the_drivers_expose_the_sqlstate_differently() -> None:
    assert sqlstate_of(psycopg.errors.SerializationFailure("x")) == "40001"
    assert sqlstate_of(asyncpg.exceptions.SerializationError("x")) == "40001"
    # psycopg2 only sets pgcode on server errors; the class still maps to its SQLSTATE.
    built = psycopg2_error("40001", "x")
    assert getattr(built, "pgcode", None) is None
    assert sqlstate_of(built) == "40001"
    assert sqlstate_of(asyncpg.exceptions.InterfaceError("x")) is None
    assert sqlstate_of(ValueError("x")) is None


def test_a_server_psycopg2_error_reads_pgcode() -> None:
    class FakeServerError(Exception):
        pgcode = "40001"

    assert classify_occ(FakeServerError(CURRENT_DATA)) is OCCType.DATA


@pytest.mark.parametrize(("code", "expected"), [("OC000", OCCType.DATA), ("OC001", OCCType.SCHEMA)])
@pytest.mark.parametrize("attr", ["sqlstate", "pgcode"])
def test_dsql_codes_as_the_sqlstate_itself(attr: str, code: str, expected: OCCType) -> None:
    exc = type("DriverError", (Exception,), {attr: code})("conflict")
    assert classify_occ(exc) is expected


@pytest.mark.parametrize(
    "exc",
    [
        pytest.param(
            psycopg.errors.ProgramLimitExceeded("transaction row limit exceeded"), id="54000"
        ),
        pytest.param(
            psycopg.errors.FeatureNotSupported("Unsupported isolation level: SERIALIZABLE"),
            id="0A000",
        ),
        pytest.param(psycopg.errors.UniqueViolation("duplicate key value"), id="23505"),
        pytest.param(psycopg.errors.SyntaxError('syntax error at or near "SELEC"'), id="42601"),
        pytest.param(psycopg.errors.UndefinedTable('relation "nope" does not exist'), id="42P01"),
        pytest.param(psycopg.errors.DeadlockDetected("deadlock detected"), id="40P01"),
        pytest.param(
            psycopg.errors.InFailedSqlTransaction("current transaction is aborted"), id="25P02"
        ),
        pytest.param(asyncpg.exceptions.UniqueViolationError("duplicate key"), id="asyncpg-23505"),
        pytest.param(asyncpg.exceptions.PostgresSyntaxError("syntax error"), id="asyncpg-42601"),
        pytest.param(
            psycopg2_error("54000", "transaction size limit 10mb exceeded"), id="pg2-54000"
        ),
        pytest.param(psycopg2_error("0A000", "ddl and dml are not supported"), id="pg2-0A000"),
        pytest.param(
            sqlalchemy.exc.IntegrityError("INSERT", {}, psycopg.errors.UniqueViolation("dup")),
            id="sqlalchemy-23505",
        ),
        pytest.param(psycopg.OperationalError("server closed the connection"), id="no-sqlstate"),
        pytest.param(ValueError("nothing to do with a database"), id="plain"),
    ],
)
def test_non_retryable_errors(exc: BaseException) -> None:
    assert classify_occ(exc) is None
    assert not is_occ_error(exc)


def test_code_text_inside_a_non_40001_error_is_not_a_conflict() -> None:
    # psycopg2 puts the DETAIL into str(); a key value may well be "OC000".
    exc = psycopg2_error("23505", "duplicate key\nDETAIL:  Key (code)=(OC000) already exists.")
    assert "(OC000)" in str(exc)
    assert classify_occ(exc) is None


def test_explicitly_wrapped_error_is_found_through_cause() -> None:
    class RepositoryError(Exception):
        pass

    with pytest.raises(RepositoryError) as info:
        try:
            raise psycopg.errors.SerializationFailure(SCHEMA)
        except psycopg.Error as exc:
            raise RepositoryError("saving the order failed") from exc
    assert classify_occ(info.value) is OCCType.SCHEMA


def test_implicitly_chained_error_is_found_through_context() -> None:
    with pytest.raises(KeyError) as info:
        try:
            raise asyncpg.exceptions.SerializationError(CURRENT_DATA)
        except asyncpg.PostgresError:
            raise KeyError("handler failed while handling the conflict")
    assert info.value.__cause__ is None
    assert classify_occ(info.value) is OCCType.DATA


def test_several_layers_of_wrapping() -> None:
    inner = psycopg2_error("40001", OLDER_DATA)
    orm = sqlalchemy.exc.OperationalError("COMMIT", None, inner)
    app: BaseException = RuntimeError("checkout")
    app.__cause__ = orm
    outer = ConnectionError("request failed")
    outer.__context__ = app
    assert classify_occ(outer) is OCCType.DATA


def test_the_first_sqlstate_in_the_chain_decides() -> None:
    # A constraint violation raised while handling a conflict is the error that matters now.
    unique = psycopg.errors.UniqueViolation("dup")
    unique.__context__ = psycopg.errors.SerializationFailure(CURRENT_DATA)
    assert classify_occ(unique) is None


def test_message_is_the_fallback_when_no_sqlstate_survived() -> None:
    flattened = RuntimeError(f"TransactionManagementError: {CURRENT_DATA}")
    assert classify_occ(flattened) is OCCType.DATA
    wrapped = RuntimeError("outer")
    wrapped.__cause__ = Exception(f"asyncpg said: {SCHEMA}")
    assert classify_occ(wrapped) is OCCType.SCHEMA
    # Without DSQL's code, text alone is not enough to call it a conflict.
    assert classify_occ(RuntimeError(POSTGRES)) is None


def test_cycles_terminate() -> None:
    a = RuntimeError("a")
    b = RuntimeError("b")
    a.__context__ = b
    b.__context__ = a
    a.__cause__ = a
    assert classify_occ(a) is None
    b.__cause__ = psycopg.errors.SerializationFailure(CURRENT_DATA)
    assert classify_occ(a) is OCCType.DATA


def chain(depth: int, bottom: BaseException) -> BaseException:
    exc = bottom
    for i in range(depth):
        outer = RuntimeError(f"layer {i}")
        outer.__cause__ = exc
        exc = outer
    return exc


def test_depth_limit() -> None:
    occ = psycopg.errors.SerializationFailure(CURRENT_DATA)
    assert classify_occ(chain(20, occ)) is OCCType.DATA
    assert classify_occ(chain(200, occ)) is None


def test_a_broken_str_does_not_crash_classification() -> None:
    class Unprintable(Exception):
        def __str__(self) -> str:
            raise RuntimeError("no")

    assert classify_occ(Unprintable()) is None


def test_occ_type_values_are_the_codes() -> None:
    assert [t.value for t in OCCType] == ["OC000", "OC001", "40001"]
