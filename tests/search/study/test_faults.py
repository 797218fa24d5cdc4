"""search.study.faults: each storage fault told apart by its cause, found behind wrappers, and said in one line.

tests/search/commands/test_hostile_storage.py covers Optuna's wrapper around a damaged SQLite file, a PostgreSQL
SQLSTATE, a safetensors "os error 28" and a long, control-character-laden message; these cover the rest.
"""

import errno
import os
import sqlite3

import pytest

from search.study.faults import (
    DAMAGED,
    FULL,
    IO_ERROR,
    MAX_REASON,
    READ_ONLY,
    StorageError,
    classify,
    storage_fault,
)


@pytest.mark.parametrize("message, kind", [
    ("database disk image is malformed", DAMAGED), ("file is not a database", DAMAGED),
    ("database or disk is full", FULL), ("attempt to write a readonly database", READ_ONLY),
    ("disk I/O error", IO_ERROR), ("Could not decode to UTF-8 column 'value_json'", DAMAGED),
])
def test_classify_reads_a_sqlite_error_by_its_message(message, kind):
    assert classify(sqlite3.DatabaseError(message), "x.db").kind == kind


@pytest.mark.parametrize("code, kind", [(11, DAMAGED), (26, DAMAGED), (13, FULL), (8, READ_ONLY), (10, IO_ERROR),
                                        (10 | (3 << 8), IO_ERROR)])
def test_classify_reads_a_sqlite_error_by_its_primary_code_over_its_message(code, kind):
    error = sqlite3.OperationalError("some other words")
    error.sqlite_errorcode = code  # an extended code keeps the primary one in its low byte
    assert classify(error, "x.db").kind == kind


def test_classify_leaves_an_unrelated_sqlite_error_alone():
    assert classify(sqlite3.OperationalError("no such table: trials"), "x.db") is None


@pytest.mark.parametrize("number, kind", [(errno.ENOSPC, FULL), (errno.EDQUOT, FULL), (errno.EROFS, READ_ONLY),
                                          (errno.EACCES, READ_ONLY), (errno.EIO, IO_ERROR)])
def test_classify_reads_an_os_error_by_its_errno(number, kind):
    fault = classify(OSError(number, os.strerror(number)), "/somewhere")
    assert fault.kind == kind and fault.where == "/somewhere" and fault.reason == os.strerror(number)


def test_classify_prefers_the_os_errors_own_file_name():
    fault = classify(OSError(errno.ENOSPC, "No space left on device", "/disk/a.tmp"), "/disk")
    assert fault.where == "/disk/a.tmp"


def test_classify_leaves_an_os_error_that_is_no_storage_fault_alone():
    assert classify(FileNotFoundError(errno.ENOENT, "No such file or directory", "x")) is None


@pytest.mark.parametrize("state, kind", [("XX001", DAMAGED), ("XX002", DAMAGED), ("53100", FULL)])
def test_classify_reads_the_remaining_postgresql_sqlstates(state, kind):
    error = type("PgError", (Exception,), {"pgcode": state})("ERROR:  first line\nDETAIL:  second line")
    fault = classify(error, "postgresql://db")
    assert fault.kind == kind and fault.reason == "ERROR:  first line"


def test_classify_reads_an_os_error_number_only_from_a_safetensors_error():
    other = RuntimeError("I/O error: No space left on device (os error 28)")
    assert classify(other) is None


def test_storage_fault_follows_cause_context_and_orig_through_wrappers():
    driver = sqlite3.DatabaseError("database or disk is full")
    wrapped = type("DBAPIError", (Exception,), {})("wrapped")
    wrapped.orig = driver
    outer = AssertionError("Should not reach.")
    outer.__context__ = wrapped  # raised while handling it: the context, not the cause
    assert storage_fault(outer, "x.db").kind == FULL


def test_storage_fault_returns_a_storage_error_in_the_chain_as_it_is():
    inner = StorageError(READ_ONLY, "/ro/x.db")
    outer = RuntimeError("wrapper")
    outer.__cause__ = inner
    assert storage_fault(outer, "/elsewhere") is inner


def test_storage_fault_survives_a_cyclic_chain():
    a, b = RuntimeError("a"), RuntimeError("b")
    a.__context__, b.__context__ = b, a
    assert storage_fault(a) is None


def test_storage_error_message_names_the_place_the_advice_and_the_reason():
    error = StorageError(FULL, "/d/x.db", "No space left on device")
    assert str(error) == ("storage: /d/x.db: the disk that holds it is full; free some space and run the same "
                          "command again (No space left on device)")
    assert (error.kind, error.where, error.reason) == (FULL, "/d/x.db", "No space left on device")


def test_storage_error_without_a_place_or_reason_says_only_the_advice():
    error = StorageError(DAMAGED, None)
    assert error.where is None and str(error).startswith("storage: the database is damaged;")
    assert str(StorageError(DAMAGED, None, "r")) == f"{error} (r)"


def test_storage_error_keeps_at_most_max_reason_characters_of_the_reason():
    error = StorageError(IO_ERROR, "x", "y" * (MAX_REASON + 50))
    assert len(error.reason) == MAX_REASON and error.reason.endswith("...")
    assert StorageError(IO_ERROR, "x", "y" * MAX_REASON).reason == "y" * MAX_REASON

