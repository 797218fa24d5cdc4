"""Storage faults: a damaged database, a full disk, a read-only location, told apart and said in one line.

Optuna reports every database error as ``StorageInternalError`` ("... e.g. exceeding max length"), and
a failed write at the end of a trial as ``AssertionError: Should not reach.``; the real cause sits in the
exception's chain (an ``sqlite3.Error``, a PostgreSQL SQLSTATE, an ``OSError`` or a Rust "os error N"
from safetensors). :func:`storage_fault` finds it there and turns it into a :class:`StorageError` whose
message names the file and says what to do; anything else is not a storage fault and is left alone
(a bug stays a traceback). ``search.study.storage.open_storage`` raises these from the engine itself, with the
database's file name, and ``search.cli.exit_code`` maps them to exit 2.
"""

from __future__ import annotations

import errno
import re
import sqlite3
from collections.abc import Iterator
from pathlib import Path

from lungct.errors import printable

# SQLite's primary result codes (the low byte of sqlite3.Error.sqlite_errorcode, Python 3.11+).
_SQLITE_READONLY, _SQLITE_IOERR, _SQLITE_CORRUPT, _SQLITE_FULL, _SQLITE_CANTOPEN, _SQLITE_NOTADB = 8, 10, 11, 13, 14, 26
# The same faults by message, for Python 3.10 whose sqlite3 errors carry no code.
_SQLITE_TEXT = {"database disk image is malformed": _SQLITE_CORRUPT, "file is not a database": _SQLITE_NOTADB,
                "database or disk is full": _SQLITE_FULL, "attempt to write a readonly database": _SQLITE_READONLY,
                "disk i/o error": _SQLITE_IOERR}
_FULL_ERRNOS = {errno.ENOSPC, errno.EDQUOT}
_READ_ONLY_ERRNOS = {errno.EROFS, errno.EACCES}
_RUST_OS_ERROR = re.compile(r"\(os error (\d+)\)")  # safetensors: "I/O error: No space left on device (os error 28)"

MAX_REASON = 160  # characters of the driver's own words kept (a damaged cell's text is quoted in full there)
DAMAGED = "damaged"
FULL = "full"
READ_ONLY = "read-only"
IO_ERROR = "io-error"
_ADVICE = {
    DAMAGED: "the database is damaged; restore it from a backup, or move it aside and start the study again "
             "(sqlite3's .recover command may save what is still readable)",
    FULL: "the disk that holds it is full; free some space and run the same command again",
    READ_ONLY: "it cannot be written here (a read-only location, or no permission); make it writable, or choose "
               "another --studies-dir / --storage / --out",
    IO_ERROR: "the disk failed to read or write it; check the disk, then run the same command again",
}


class StorageError(Exception):
    """A storage location cannot be used: ``str()`` is one printable line naming it and what to do.

    Attributes:
        kind: :data:`DAMAGED`, :data:`FULL`, :data:`READ_ONLY` or :data:`IO_ERROR`.
        where: The file, folder or (password-masked) storage URL at fault.
    """

    def __init__(self, kind: str, where: str | Path | None, reason: str = ""):
        reason = reason if len(reason) <= MAX_REASON else reason[:MAX_REASON - 3] + "..."
        self.kind, self.where, self.reason = kind, str(where) if where is not None else None, reason
        place = f"{self.where}: " if self.where else ""
        detail = f" ({reason})" if reason else ""
        super().__init__(f"storage: {place}{_ADVICE[kind]}{detail}")

    def __str__(self) -> str:
        return printable(super().__str__())


def _chain(error: BaseException) -> Iterator[BaseException]:
    """``error`` and every exception behind it: causes, contexts and a SQLAlchemy error's ``orig``."""
    todo: list[BaseException | None] = [error]
    seen: set[int] = set()
    while todo:
        e = todo.pop(0)
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        yield e
        todo += [getattr(e, "orig", None), e.__cause__, e.__context__]


def _sqlite_kind(e: sqlite3.Error) -> str | None:
    if str(e).lower().startswith("could not decode to utf-8"):  # Python's sqlite3: a text cell holds random bytes
        return DAMAGED
    code = getattr(e, "sqlite_errorcode", None)
    primary = code & 0xFF if isinstance(code, int) else _SQLITE_TEXT.get(str(e).strip().lower())
    if primary is None:
        return None
    return {_SQLITE_CORRUPT: DAMAGED, _SQLITE_NOTADB: DAMAGED, _SQLITE_FULL: FULL, _SQLITE_READONLY: READ_ONLY,
            _SQLITE_IOERR: IO_ERROR}.get(primary)


def _sqlstate_kind(e: BaseException) -> str | None:
    """A PostgreSQL driver's SQLSTATE (psycopg2's ``pgcode``, psycopg's ``sqlstate``) as a fault kind."""
    state = getattr(e, "pgcode", None) or getattr(e, "sqlstate", None)
    if not isinstance(state, str):
        return None
    if state.startswith("53"):  # insufficient resources: disk full, out of memory, too many connections
        return FULL if state == "53100" else None
    return {"25006": READ_ONLY, "XX001": DAMAGED, "XX002": DAMAGED}.get(state)


def _errno_kind(number: int | None) -> str | None:
    if number in _FULL_ERRNOS:
        return FULL
    if number in _READ_ONLY_ERRNOS:
        return READ_ONLY
    return IO_ERROR if number == errno.EIO else None


def classify(error: BaseException, where: str | Path | None = None) -> StorageError | None:
    """``error`` itself (not what is behind it) as a :class:`StorageError`, or None when it is no storage fault."""
    if isinstance(error, sqlite3.Error) and (kind := _sqlite_kind(error)):
        return StorageError(kind, where, str(error).strip())
    if (kind := _sqlstate_kind(error)) is not None:
        return StorageError(kind, where, next(iter(str(error).strip().splitlines()), ""))
    if isinstance(error, OSError) and (kind := _errno_kind(error.errno)):
        return StorageError(kind, error.filename or where, error.strerror or str(error))
    match = _RUST_OS_ERROR.search(str(error)) if type(error).__name__ == "SafetensorError" else None
    if match and (kind := _errno_kind(int(match.group(1)))):
        return StorageError(kind, where, str(error).strip())
    return None


def storage_fault(error: BaseException, where: str | Path | None = None) -> StorageError | None:
    """The storage fault behind ``error``, as a :class:`StorageError`; None when it is not one.

    A :class:`StorageError` in the chain is returned as it is: show it, never raise it again (raising an
    exception already in the chain of the one being handled cuts that chain).

    Args:
        error: Whatever was raised (an Optuna, SQLAlchemy, driver, OS or safetensors error).
        where: The file or storage it concerns; an ``OSError``'s own file name is used when it has one.
    """
    for e in _chain(error):
        if isinstance(e, StorageError):
            return e
    for e in _chain(error):
        if (fault := classify(e, where)) is not None:
            return fault
    return None
