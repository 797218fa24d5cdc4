"""A study's SQLite database kept safe in a second folder: a consistent copy after every run, restored when lost.

Colab runtimes drop and lose their local disk; an SQLite database on the Google Drive mount itself is a
known source of "database is locked" (a network file system under SQLite's locks). So the study stays on
local disk and ``search.run --backup-to DIR`` copies it into ``DIR`` after every finished trial and
confirmation run, and once more when the run ends or is interrupted, with SQLite's online backup API
(:meth:`sqlite3.Connection.backup`): a consistent snapshot of a live database, which a file copy is not.
The copy goes to a temporary name in ``DIR`` and is renamed over the previous one, so ``DIR`` always
holds a whole database, the previous one until the new one is complete. A run whose local database is
missing and whose ``DIR`` holds one restores it first, the same way once SQLite's quick check finds the
copy whole, and resumes the study. ``DIR`` is checked when the run starts, before any trial: never the
study's own folder or database (a copy renamed over the live database under the run's open connections),
and a folder the run can make and write.

Only the database is copied: it holds every trial, setting and the confirmation's decision, all that a
resume, ``search.report`` and ``search.export`` need. The dashboard's artifacts (learning curves,
checkpoints, the confirmation's kept weights) stay under ``studies/``.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import sys
import tempfile
from pathlib import Path

from sqlalchemy.engine import make_url

from lungct.errors import UsageError, printable


def sqlite_file(storage_url: str) -> Path | None:
    """The database file of an ``sqlite:///`` storage URL; None for any other storage or an in-memory one."""
    url = make_url(storage_url)
    if url.get_backend_name() != "sqlite" or not url.database or url.database == ":memory:":
        return None
    return Path(url.database)


def _copy(source: Path, target: Path) -> None:
    """SQLite's online backup of ``source`` into ``target``, through a temporary file and a rename."""
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    try:
        with contextlib.closing(sqlite3.connect(f"{source.resolve().as_uri()}?mode=ro", uri=True)) as src, \
                contextlib.closing(sqlite3.connect(tmp)) as out:
            src.backup(out)
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


def _same(a: Path, b: Path) -> bool:
    """Whether ``a`` and ``b`` name one file or folder: the same path once symbolic links are resolved, or the
    same file on disk (a bind mount, a hard link), where both exist."""
    if os.path.realpath(a) == os.path.realpath(b):
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:  # one is missing (a study not made yet), or a link loop: not the same
        return False


def check_folder(database: Path, folder: Path) -> None:
    """Refuse, when the run starts, a ``--backup-to`` folder that cannot hold copies of ``database``.

    Makes the folder if it is missing and writes a probe file into it (removed at once), as the first copy
    would after the first trial, so that a folder that cannot take one is said before any trial runs.

    Raises:
        UsageError: ``folder`` is, or leads to (a symbolic link, another path to it), the study's database
            or the folder that holds it, where each copy would be renamed over the live database under the
            connections the run holds open; or it is a file, a symbolic link that leads nowhere (a loop, a
            missing target), or a folder that cannot be made or written.
    """
    name = printable(str(folder))
    if _same(folder, database):
        raise UsageError(f"--backup-to: {name} is the study's database itself; name a folder elsewhere "
                         "(e.g. on another disk) to hold its copy")
    if _same(folder, database.parent):
        raise UsageError(f"--backup-to: {name} is the folder that holds the study's database "
                         f"{printable(str(database))}, which each copy would replace; name another folder")
    try:
        if folder.is_symlink() and not folder.exists():
            raise UsageError(f"--backup-to: {name} is a symbolic link that leads nowhere (a loop, or a missing "
                             "target); name a folder")
        if folder.exists() and not folder.is_dir():
            raise UsageError(f"--backup-to: {name} is a file, not a folder; name a folder")
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=f".{database.name}.probe-"):
            pass
    except OSError as e:
        raise UsageError(f"--backup-to: cannot write into {name}: {e.strerror or e}") from None


def backup(database: Path, folder: Path) -> Path:
    """Copy ``database`` into ``folder`` (made if missing) under its own name; returns the copy's path.

    Raises:
        OSError, sqlite3.Error: The folder cannot be written (full, read-only, unmounted) or the database read.
    """
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / database.name
    _copy(database, target)
    return target


def restore_if_missing(database: Path, folder: Path) -> Path | None:
    """Restore ``database`` from its copy in ``folder`` when the database is missing; returns the copy used.

    Raises:
        UsageError: The copy in ``folder`` is not an SQLite database (a partial upload, another file), or
            SQLite's quick check finds it damaged; nothing is restored.
    """
    copy = folder / database.name
    if database.exists() or not copy.is_file():
        return None
    try:
        # The online backup copies pages as they are: a damaged copy would be restored as a damaged study.
        _check(copy)
        database.parent.mkdir(parents=True, exist_ok=True)
        _copy(copy, database)
    except sqlite3.DatabaseError as e:
        raise UsageError(f"--backup-to: {printable(str(copy))} is not a usable SQLite database ({e}); "
                         "it was not restored: move it away to start a new study") from None
    return copy


def _check(database: Path) -> None:
    """SQLite's ``PRAGMA quick_check`` of ``database``, opened read-only.

    Raises:
        sqlite3.DatabaseError: The file is not an SQLite database, or the check found damage (its first finding).
    """
    with contextlib.closing(sqlite3.connect(f"{database.resolve().as_uri()}?mode=ro", uri=True)) as db:
        (finding,) = db.execute("PRAGMA quick_check(1)").fetchone()
    if finding != "ok":  # e.g. "*** in database main ***\nPage 2: btreeInitPage() returns error code 11"
        finding = " ".join(finding.replace("*** in database main ***", "").split())
        raise sqlite3.DatabaseError(f"quick_check: {finding}")


class BackupAfterEachRun:
    """An Optuna callback (``study.optimize(callbacks=[...])``) that backs the database up after every trial.

    A failed copy (the Drive unmounted, a full disk) is a one-line warning and the run goes on: the study
    itself, on local disk, is intact; the next trial tries again.
    """

    def __init__(self, database: Path, folder: Path):
        self.database = database
        self.folder = folder

    def __call__(self, *_) -> None:
        """Back up now (Optuna passes the study and the finished trial; neither is needed)."""
        try:
            backup(self.database, self.folder)
        except (OSError, sqlite3.Error) as e:
            print(f"warning: --backup-to: could not copy {printable(str(self.database))} to "
                  f"{printable(str(self.folder))}: {e}; the study is intact, the next run tries again",
                  file=sys.stderr)
