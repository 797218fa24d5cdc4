"""``search.run``'s flags at their limits: --budget, --jobs and --backup-to refused in one line, exit 2.

Every refusal here comes before the study is opened or any data is loaded: ``--data`` names a folder that
does not exist, so a check that let the flag through would end in another error, not in a trial.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3

import optuna
import pytest
import torch

import search.run
from lungct.errors import UsageError
from search.run import budget_minutes, build_parser, main, parse_flags
from search.selection.settings import RunJob


def _run(tmp_path, *flags: str) -> int:
    return main(["--studies-dir", str(tmp_path / "studies"), "--data", str(tmp_path / "nope"), "--trials", "1",
                 *flags])


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    return err.strip()


def _cores(monkeypatch, n: int) -> None:
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(n)), raising=False)


def _study(path, n_trials=2) -> None:
    study = optuna.create_study(study_name="lungct", storage=f"sqlite:///{path}")
    for i in range(n_trials):
        study.add_trial(optuna.trial.create_trial(value=float(i), params={}, distributions={}))


@pytest.mark.parametrize("budget", ["1e308", "1e9", "10081"])
def test_run_budget_beyond_a_week_is_a_one_line_error_before_the_study_opens(tmp_path, capsys, budget):
    assert _run(tmp_path, "--budget", budget) == 2
    err = _one_line_error(capsys)
    assert err.startswith(f"error: --budget: expected at most 10080 minutes (a week), got '{budget}'")
    assert not (tmp_path / "studies" / "lungct.db").exists()


def test_run_budget_of_a_week_is_accepted():
    cpu = torch.device("cpu")
    assert budget_minutes("10080", cpu) == search.run.MAX_BUDGET_MIN == 10080.0


def test_run_jobs_beyond_the_cores_is_a_one_line_error_naming_them(tmp_path, capsys, monkeypatch):
    _cores(monkeypatch, 2)
    assert _run(tmp_path, "--jobs", "64") == 2
    err = _one_line_error(capsys)
    assert err.startswith("error: --jobs: this machine has 2 CPU cores for this run") and "got 64" in err
    assert not (tmp_path / "studies" / "lungct.db").exists()


def test_run_jobs_cap_counts_the_cores_this_process_may_use(monkeypatch):
    # A container or a scheduler's job may give this process fewer cores than the machine has.
    _cores(monkeypatch, 1)
    monkeypatch.setattr(os, "cpu_count", lambda: 64)
    with pytest.raises(UsageError, match=r"^--jobs: this machine has 1 CPU core for this run; "
                                                    r"expected at most 1 worker process, got 2$"):
        parse_flags(build_parser().parse_args(["--jobs", "2"]))


def test_run_jobs_cap_falls_back_to_the_cpu_count_without_an_affinity_mask(monkeypatch):
    monkeypatch.delattr(os, "sched_getaffinity", raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: 3)
    assert parse_flags(build_parser().parse_args(["--jobs", "3"]))[1].jobs == 3
    with pytest.raises(UsageError, match="has 3 CPU cores"):
        parse_flags(build_parser().parse_args(["--jobs", "4"]))


@pytest.mark.parametrize(("flags", "message"), [
    (["--confirm-jobs", "0"], "error: --confirm-jobs: expected a positive count of processes, got 0"),
    (["--confirm-jobs", "3"], "error: --confirm-jobs: this machine has 2 CPU cores for this run; expected at most 2, "
                              "got 3"),
])
def test_run_confirm_jobs_out_of_range_is_a_one_line_error(tmp_path, capsys, monkeypatch, flags, message):
    _cores(monkeypatch, 2)
    assert _run(tmp_path, *flags) == 2
    assert _one_line_error(capsys) == message
    assert not (tmp_path / "studies" / "lungct.db").exists()


def test_run_confirm_jobs_on_a_gpu_is_refused_in_one_line(monkeypatch):
    _cores(monkeypatch, 2)
    monkeypatch.setattr(search.run.cli, "device_flag", lambda value: torch.device("cuda"))
    with pytest.raises(UsageError, match=r"^--confirm-jobs: runs train one at a time on a GPU"):
        parse_flags(build_parser().parse_args(["--confirm-jobs", "2"]))


@pytest.mark.parametrize(("device", "flag", "cores", "expected"), [
    ("cpu", None, 2, (1, 2)),  # the default: one at a time, on every thread
    ("cpu", 2, 2, (2, 1)),  # one single-threaded process per core
    ("cpu", 16, 16, (16, 1)),
    ("cpu", 2, 8, (2, 4)),
    ("cuda", None, 8, (1, 8)),  # a GPU trains one run at a time
])
def test_run_confirm_jobs_default_and_threads_per_run(device, flag, cores, expected):
    job = RunJob(device=torch.device(device), confirm_jobs=flag)
    assert job.confirm_processes(cores) == expected


def test_run_help_says_the_budget_and_jobs_caps(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "at most 10080 (a week)" in text
    assert "at most one per CPU core this process may use" in text
    assert "never the study's own folder" in text


@pytest.mark.parametrize("where", ["studies", "studies/../studies", "link"])
def test_run_backup_to_the_study_own_folder_is_a_one_line_error_before_the_study_opens(tmp_path, capsys, where):
    (tmp_path / "studies").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "studies")
    assert _run(tmp_path, "--backup-to", str(tmp_path / where)) == 2
    err = _one_line_error(capsys)
    assert err.startswith("error: --backup-to: ") and "is the folder that holds the study's database" in err
    assert not (tmp_path / "studies" / "lungct.db").exists()


def test_run_backup_to_the_study_database_is_a_one_line_error_and_leaves_it_whole(tmp_path, capsys):
    db = tmp_path / "studies" / "lungct.db"
    db.parent.mkdir()
    _study(db)
    assert _run(tmp_path, "--backup-to", str(db)) == 2
    assert "is the study's database itself" in _one_line_error(capsys)
    assert len(optuna.load_study(study_name="lungct", storage=f"sqlite:///{db}").trials) == 2


@pytest.mark.parametrize("kind, message", [
    ("file", "is a file, not a folder"),
    ("loop", "is a symbolic link that leads nowhere"),
    ("under a file", "cannot write into"),
])
def test_run_backup_to_a_folder_it_cannot_use_is_a_one_line_error_at_start(tmp_path, capsys, kind, message):
    (tmp_path / "notes.txt").write_text("")
    (tmp_path / "loop").symlink_to(tmp_path / "loop")
    folder = {"file": tmp_path / "notes.txt", "loop": tmp_path / "loop",
              "under a file": tmp_path / "notes.txt" / "drive"}[kind]
    assert _run(tmp_path, "--backup-to", str(folder)) == 2
    err = _one_line_error(capsys)
    assert err.startswith("error: --backup-to: ") and message in err and "File exists" not in err
    assert not (tmp_path / "studies" / "lungct.db").exists()


def test_run_backup_to_a_damaged_copy_is_refused_naming_the_copy_and_restores_nothing(tmp_path, capsys):
    copy = tmp_path / "drive" / "lungct.db"
    copy.parent.mkdir()
    _study(copy)
    with contextlib.closing(sqlite3.connect(copy)) as db:
        page_size = db.execute("PRAGMA page_size").fetchone()[0]
    with open(copy, "r+b") as f:  # one B-tree page's head overwritten: it opens, quick_check finds the damage
        f.seek(page_size)
        f.write(b"\xff" * 16)
    assert _run(tmp_path, "--backup-to", str(copy.parent)) == 2
    err = _one_line_error(capsys)
    assert err.startswith(f"error: --backup-to: {copy} is not a usable SQLite database (quick_check: ")
    assert not (tmp_path / "studies" / "lungct.db").exists()
