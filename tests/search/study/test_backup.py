"""search.study.backup: a consistent copy of a live SQLite study in a second folder, and its restore."""

from __future__ import annotations

import contextlib
import os
import sqlite3

import optuna
import pytest

from lungct.errors import UsageError
from search.study import backup as backup_module
from search.study.backup import BackupAfterEachRun, backup, check_folder, restore_if_missing, sqlite_file


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


def _damage(path, page=2):
    """Overwrite the head of one B-tree page: the file still opens as a database, quick_check finds the damage."""
    with contextlib.closing(sqlite3.connect(path)) as db:
        page_size = db.execute("PRAGMA page_size").fetchone()[0]
    with open(path, "r+b") as f:
        f.seek((page - 1) * page_size)
        f.write(b"\xff" * 16)


def test_restore_if_missing_refuses_a_damaged_copy_naming_it_and_restores_nothing(tmp_path):
    db = tmp_path / "local" / "lungct.db"
    db.parent.mkdir()
    _study(db, 4)
    folder = tmp_path / "drive"
    copy = backup(db, folder)
    db.unlink()
    _damage(copy)
    with pytest.raises(UsageError, match=r"^--backup-to: .*drive/lungct.db is not a usable SQLite database "
                                         r"\(quick_check: Page 2: ") as e:
        restore_if_missing(db, folder)
    assert "\n" not in str(e.value) and "not restored" in str(e.value)
    assert not db.exists()


def _link(link, target):
    link.symlink_to(target)
    return link


@pytest.mark.parametrize("spelling", [
    lambda studies: studies,
    lambda studies: studies / ".." / "studies",
    lambda studies: _link(studies.parent / "drive", studies),  # a link to the study's own folder
    lambda studies: _link(studies.parent / "drive", "studies"),  # a relative link to it
])
def test_check_folder_refuses_the_study_own_folder_however_it_is_named(tmp_path, spelling):
    studies = tmp_path / "studies"
    db = studies / "lungct.db"
    studies.mkdir()
    _study(db, 1)
    folder = spelling(studies)
    with pytest.raises(UsageError, match=r"^--backup-to: .* is the folder that holds the study's database") as e:
        check_folder(db, folder)
    assert "\n" not in str(e.value)
    assert _trials(db) == 1 and sorted(p.name for p in studies.iterdir()) == ["lungct.db"]


def test_check_folder_refuses_the_study_own_folder_before_the_study_exists(tmp_path):
    with pytest.raises(UsageError, match="is the folder that holds the study's database"):
        check_folder(tmp_path / "studies" / "lungct.db", tmp_path / "studies")


def test_check_folder_refuses_the_study_own_folder_reached_by_a_bind_mount(tmp_path, monkeypatch):
    studies = tmp_path / "studies"
    studies.mkdir()
    other = tmp_path / "mnt"
    other.mkdir()
    real_samefile = os.path.samefile
    # A bind mount: another path, no link to resolve, the same folder on disk.
    monkeypatch.setattr(os.path, "samefile", lambda a, b: {str(a), str(b)} == {str(other), str(studies)}
                        or real_samefile(a, b))
    with pytest.raises(UsageError, match="is the folder that holds the study's database"):
        check_folder(studies / "lungct.db", other)


@pytest.mark.parametrize("through_a_link", [False, True])
def test_check_folder_refuses_the_study_database_itself(tmp_path, through_a_link):
    db = tmp_path / "lungct.db"
    _study(db, 1)
    folder = _link(tmp_path / "drive", db) if through_a_link else db
    with pytest.raises(UsageError, match=r"^--backup-to: .* is the study's database itself"):
        check_folder(db, folder)
    assert _trials(db) == 1


def test_check_folder_refuses_a_file(tmp_path):
    (tmp_path / "notes.txt").write_text("")
    with pytest.raises(UsageError, match=r"^--backup-to: .*notes.txt is a file, not a folder"):
        check_folder(tmp_path / "studies" / "lungct.db", tmp_path / "notes.txt")


def test_check_folder_refuses_a_symbolic_link_loop(tmp_path):
    loop = tmp_path / "drive"
    loop.symlink_to(loop)
    with pytest.raises(UsageError, match=r"^--backup-to: .*drive is a symbolic link that leads nowhere"):
        check_folder(tmp_path / "studies" / "lungct.db", loop)


def test_check_folder_refuses_a_folder_inside_a_symbolic_link_loop(tmp_path):
    loop = tmp_path / "drive"
    loop.symlink_to(loop)
    with pytest.raises(UsageError, match=r"^--backup-to: cannot write into .*drive/lungct: .*symbolic links"):
        check_folder(tmp_path / "studies" / "lungct.db", loop / "lungct")


def test_check_folder_refuses_a_folder_that_cannot_be_made(tmp_path):
    (tmp_path / "not-a-folder").write_text("")
    with pytest.raises(UsageError, match=r"^--backup-to: cannot write into .*not-a-folder/studies: Not a directory"):
        check_folder(tmp_path / "lungct.db", tmp_path / "not-a-folder" / "studies")


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into a read-only folder")
def test_check_folder_refuses_a_folder_that_cannot_be_written(tmp_path):
    folder = tmp_path / "drive"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        with pytest.raises(UsageError, match=r"^--backup-to: cannot write into .*drive: Permission denied"):
            check_folder(tmp_path / "lungct.db", folder)
    finally:
        folder.chmod(0o755)


def test_check_folder_refuses_a_folder_whose_writes_fail(tmp_path, monkeypatch):
    def read_only(*args, **kwargs):
        raise OSError(30, "Read-only file system")

    monkeypatch.setattr(backup_module.tempfile, "NamedTemporaryFile", read_only)
    with pytest.raises(UsageError, match=r"^--backup-to: cannot write into .*drive: Read-only file system"):
        check_folder(tmp_path / "lungct.db", tmp_path / "drive")


def test_check_folder_makes_a_missing_folder_and_leaves_nothing_in_it(tmp_path):
    folder = tmp_path / "drive" / "lungct"
    check_folder(tmp_path / "studies" / "lungct.db", folder)
    assert folder.is_dir() and not list(folder.iterdir())
    check_folder(tmp_path / "studies" / "lungct.db", tmp_path / "studies" / "backups")  # a folder inside: fine
