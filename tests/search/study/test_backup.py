"""search.study.backup: a consistent copy of a live SQLite study in a second folder, and its restore."""

from __future__ import annotations

import sqlite3

import optuna
import pytest

from lungct.errors import UsageError
from search.study import backup as backup_module
from search.study.backup import BackupAfterEachRun, backup, restore_if_missing, sqlite_file


def _study(path, n_trials=3):
    study = optuna.create_study(study_name="s", storage=f"sqlite:///{path}")
    for i in range(n_trials):
        study.add_trial(optuna.trial.create_trial(value=float(i), params={}, distributions={}))
    return study


def _trials(path):
    return len(optuna.load_study(study_name="s", storage=f"sqlite:///{path}").trials)


def test_sqlite_file_reads_only_sqlite_files(tmp_path):
    assert sqlite_file(f"sqlite:///{tmp_path}/a.db") == tmp_path / "a.db"
    assert sqlite_file("sqlite:///studies/lungct.db").as_posix() == "studies/lungct.db"
    assert sqlite_file("sqlite://") is None and sqlite_file("sqlite:///:memory:") is None
    assert sqlite_file("postgresql://u:p@host/db") is None


def test_backup_copies_a_live_database_whole_under_its_own_name(tmp_path):
    db = tmp_path / "local" / "lungct.db"
    db.parent.mkdir()
    _study(db)
    holder = sqlite3.connect(db)  # another connection holding the database open, as a running search does
    try:
        copy = backup(db, tmp_path / "drive" / "studies")
    finally:
        holder.close()
    assert copy == tmp_path / "drive" / "studies" / "lungct.db" and _trials(copy) == 3
    assert sorted(p.name for p in copy.parent.iterdir()) == ["lungct.db"]  # no temporary left


def test_backup_failure_keeps_the_previous_copy_and_leaves_no_temporary(tmp_path, monkeypatch):
    db = tmp_path / "lungct.db"
    study = _study(db, 2)
    folder = tmp_path / "drive"
    backup(db, folder)
    study.add_trial(optuna.trial.create_trial(value=9.0, params={}, distributions={}))

    def full_disk(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(backup_module.os, "replace", full_disk)  # the copy is written, the rename fails
    with pytest.raises(OSError):
        backup(db, folder)
    monkeypatch.undo()
    assert sorted(p.name for p in folder.iterdir()) == ["lungct.db"]  # the temporary is gone
    assert _trials(folder / "lungct.db") == 2  # the previous whole copy, untouched


def test_restore_if_missing_restores_only_a_missing_database(tmp_path):
    db = tmp_path / "local" / "lungct.db"
    db.parent.mkdir()
    _study(db, 4)
    folder = tmp_path / "drive"
    backup(db, folder)
    assert restore_if_missing(db, folder) is None  # the local study wins while it exists
    db.unlink()
    assert restore_if_missing(db, folder) == folder / "lungct.db"
    assert _trials(db) == 4
    assert restore_if_missing(tmp_path / "other.db", folder) is None  # nothing to restore from


def test_restore_if_missing_refuses_a_copy_that_is_not_a_database_in_one_line(tmp_path):
    folder = tmp_path / "drive"
    folder.mkdir()
    (folder / "lungct.db").write_bytes(b"half an upload")
    with pytest.raises(UsageError, match=r"^--backup-to: .*lungct.db is not a usable SQLite database") as e:
        restore_if_missing(tmp_path / "lungct.db", folder)
    assert "\n" not in str(e.value)
    assert not (tmp_path / "lungct.db").exists()


def test_backup_after_each_run_warns_and_goes_on_when_the_folder_cannot_be_written(tmp_path, capsys):
    db = tmp_path / "lungct.db"
    _study(db, 1)
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    BackupAfterEachRun(db, blocker / "studies")(None, None)
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("warning: --backup-to: could not copy") and "the study is intact" in line
