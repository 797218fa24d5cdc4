"""Many workers on one study: search.run --jobs N, runs on one PostgreSQL study, kill -9 and Ctrl-C recovered.

Each test runs against the local default (SQLite) and a real PostgreSQL server (tests/conftest.py).
Workers are real processes: spawned by --jobs, or started as separate commands as on separate machines.
"""

import contextlib
import os
import signal
import sqlite3
import subprocess
import sys
import time
import uuid
from pathlib import Path

import optuna
import pytest
import sqlalchemy
import torch
from optuna.trial import TrialState

import search.training.unit
from search.run import main
from search.selection.parallel import threads_per_worker, worker_devices
from search.selection.progress import SearchProgress
from search.study import schema
from tests.search.commands.test_run import SMALL

ROOT = Path(__file__).resolve().parents[3]
# Seconds a trial for the seed baseline at 16x16x32 on 2 cores, so a test can kill or interrupt it mid-trial
# (the poll that finds it running takes ~0.3 s); sized with margin for CPUs faster than this one.
SLOW = ["--size", "16", "16", "32", "--epochs", "40", "--workers", "1", "--no-confirm", "--pruner", "none"]


@pytest.fixture
def study_at(storage_kind, tmp_path, request):
    """(storage URL, study name) for this test: a file under tmp_path, or a fresh study on the server."""
    name = f"t-{uuid.uuid4().hex[:8]}"
    if storage_kind == "sqlite":
        return f"sqlite:///{tmp_path}/{name}.db", name
    return request.getfixturevalue("postgres_server"), name


def _flags(data, studies_dir, url, name, *extra):
    return ["--data", str(data), "--studies-dir", str(studies_dir), "--storage", url, "--study", name, *extra]


def _trials(url, name, storage=None):
    if storage is None and url.startswith("sqlite:///") and not _has_optunas_tables(Path(url.removeprefix("sqlite:///"))):
        raise KeyError(name)  # opened now, Optuna would make its tables while the run under test makes them too
    return optuna.load_study(study_name=name, storage=storage or url).get_trials()


def _has_optunas_tables(path: Path) -> bool:
    try:
        with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as db:
            return bool(db.execute("SELECT version_num FROM alembic_version").fetchall())
    except sqlite3.Error:  # no file yet, or no table yet
        return False


def _command(flags):
    return subprocess.Popen([sys.executable, "-m", "search.run", *flags], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)


def _wait_for(predicate, url, name, timeout_s=120.0):
    """The study's trials once ``predicate`` holds for them, looked at every 0.1 s through one storage: opening it
    anew at every look (an engine, Optuna's schema checks) took seconds with both cores busy, long enough to miss
    a whole short trial."""
    start = time.monotonic()
    storage = None
    seen: dict[str, float] = {}  # what each look saw, first seen after how many seconds: said on a timeout
    while time.monotonic() < start + timeout_s:
        try:
            if storage is None:
                _trials(url, name)  # raises until the run has made the tables and the study
                storage = optuna.storages.RDBStorage(url)
            trials = _trials(url, name, storage)
        except KeyError:  # the study does not exist yet
            trials = []
        except sqlalchemy.exc.IntegrityError:  # this look and the run both made Optuna's tables in a new database
            trials = []
        if predicate(trials):
            return trials
        look = str([(t.number, t.state.name, schema.SPEC in t.user_attrs) for t in trials])
        seen.setdefault(look, round(time.monotonic() - start, 1))
        time.sleep(0.1)
    raise AssertionError(f"timed out; trials (number, state, has its spec) as seen, and when: {seen}")


@pytest.mark.slow
@pytest.mark.usefixtures("all_cores")
def test_run_jobs_two_workers_add_exactly_the_trials_asked_for(tiny_data, tmp_path, study_at, capsys):
    url, name = study_at
    assert main(_flags(tiny_data, tmp_path, url, name, *SMALL, "--trials", "5", "--jobs", "2")) == 0
    trials = _trials(url, name)
    assert [t.number for t in trials] == [0, 1, 2, 3, 4]  # none lost, none twice
    assert all(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials)
    assert sum(bool(t.user_attrs.get(schema.BASELINE)) for t in trials) == 1
    assert len({t.user_attrs[schema.WORKER]["pid"] for t in trials}) == 2  # both workers ran trials
    out = capsys.readouterr().out
    assert "2 workers on cpu, 1 CPU thread each" in out
    assert out.count("[5/5]") == 1 and "study '" in out and "5 trials (" in out


@pytest.mark.slow
@pytest.mark.usefixtures("all_cores")  # under -n: the run, and this test's looks, not on one shared core
def test_run_kill_9_mid_trial_is_recovered_and_its_parameters_run_again(tiny_data, tmp_path, study_at, capsys):
    url, name = study_at
    first = _command(_flags(tiny_data, tmp_path, url, name, *SLOW, "--trials", "1"))
    try:
        _wait_for(lambda ts: ts and ts[0].state == TrialState.RUNNING and schema.SPEC in ts[0].user_attrs,
                  url, name)
        first.kill()  # SIGKILL: no cleanup of any kind
        first.wait(30)
    finally:
        first.kill()
    (killed,) = _trials(url, name)
    assert killed.state == TrialState.RUNNING and killed.user_attrs[schema.BASELINE]

    assert main(_flags(tiny_data, tmp_path, url, name, *SLOW, "--trials", "1")) == 0
    failed, rerun = _trials(url, name)
    assert failed.state == TrialState.FAIL and "is gone: killed or crashed" in failed.user_attrs["fail_reason"]
    assert rerun.state == TrialState.COMPLETE and rerun.params == failed.params
    assert rerun.user_attrs[schema.RETRY_OF] == 0 and rerun.user_attrs[schema.BASELINE] is True
    assert "recovered trial 0" in capsys.readouterr().out


@pytest.mark.slow
def test_run_two_machines_share_one_study(tiny_data, tmp_path, study_at):
    """Two runs with their own working folders (as on two machines) join one study, and one with other
    settings is refused with one line."""
    url, name = study_at
    runs = [_command(_flags(tiny_data, tmp_path / f"machine{i}", url, name, *SMALL, "--trials", "2"))
            for i in (1, 2)]
    outputs = [r.communicate(timeout=300)[0] for r in runs]
    assert [r.returncode for r in runs] == [0, 0], outputs
    trials = _trials(url, name)
    assert [t.number for t in trials] == [0, 1, 2, 3]
    assert all(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials)
    assert sum(bool(t.user_attrs.get(schema.BASELINE)) for t in trials) == 1
    assert len({t.user_attrs[schema.WORKER]["pid"] for t in trials}) == 2
    assert sorted("(new)" in out for out in outputs) == [False, True]  # one created it, the other joined

    other = subprocess.run([sys.executable, "-m", "search.run",
                            *_flags(tiny_data, tmp_path / "machine3", url, name, *SMALL, "--epochs", "3")],
                           cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert other.returncode == 2 and len(other.stderr.strip().splitlines()) == 1
    assert "this study was run with epochs=2" in other.stderr


@pytest.mark.slow
@pytest.mark.usefixtures("all_cores")
def test_run_jobs_ctrl_c_stops_every_worker_and_leaves_no_running_trial(tiny_data, tmp_path, study_at):
    url, name = study_at
    # Epochs no trial finishes in the test's time: a small spec at SLOW's 40 epochs can finish (or be pruned
    # for its cost) between the last look at the study and the Ctrl-C, and its worker then stops between trials.
    run = _command(_flags(tiny_data, tmp_path, url, name, *SLOW, "--epochs", "2000", "--trials", "6", "--jobs", "2"))
    try:
        running = _wait_for_two_running(url, name)
        os.killpg(run.pid, signal.SIGINT)  # what a terminal's Ctrl-C sends: the whole process group
        out = run.communicate(timeout=120)[0]
    finally:
        run.kill()
    assert run.returncode == 130, out
    trials = _trials(url, name)
    states = [(t.number, t.state.name, t.user_attrs.get("fail_reason")) for t in trials]
    assert not [t for t in trials if t.state == TrialState.RUNNING], states
    interrupted = [t for t in trials if t.state == TrialState.FAIL]
    assert [t.number for t in interrupted] == running, states
    assert all(t.user_attrs["fail_reason"] == "interrupted (Ctrl-C)" for t in interrupted), states
    # The baseline was one of them: it waits to be run first on resume, so the study keeps its reference.
    (waiting,) = [t for t in trials if t.state == TrialState.WAITING]
    assert waiting.user_attrs[schema.BASELINE] and waiting.user_attrs[schema.RETRY_OF] == 0
    assert "Resume with:" in out and "Traceback" not in out


def _wait_for_two_running(url, name) -> list[int]:
    """The numbers of two trials seen training (running with their spec) at two looks a second apart."""
    def two(trials):
        return sorted(t.number for t in trials if t.state == TrialState.RUNNING and schema.SPEC in t.user_attrs)

    for _ in range(20):
        first = two(_wait_for(lambda ts: len(two(ts)) == 2, url, name))
        time.sleep(1.0)
        if two(_trials(url, name)) == first:
            return first
    raise AssertionError(f"no two trials kept training for a second; trials: {two(_trials(url, name))}")


def test_run_ctrl_c_during_the_baseline_queues_it_again_and_resume_runs_it(tiny_data, tmp_path, monkeypatch):
    url = f"sqlite:///{tmp_path}/lungct.db"
    real_fit = search.training.unit.fit

    def interrupting_fit(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(search.training.unit, "fit", interrupting_fit)
    assert main(_flags(tiny_data, tmp_path, url, "lungct", *SMALL, "--trials", "3")) == 130
    monkeypatch.setattr(search.training.unit, "fit", real_fit)
    assert main(_flags(tiny_data, tmp_path, url, "lungct", *SMALL, "--trials", "1")) == 0
    interrupted, rerun = _trials(url, "lungct")
    assert interrupted.state == TrialState.FAIL and rerun.state == TrialState.COMPLETE
    assert rerun.user_attrs[schema.BASELINE] and rerun.params == interrupted.params


def test_search_progress_keeps_one_epoch_bar_per_running_trial():
    progress = SearchProgress(4, 3, enabled=True)
    progress.epoch_done(3, 0.7)
    progress.epoch_done(5, 0.6)
    progress.epoch_done(3, 0.5)
    assert sorted(progress.epoch_bars) == [3, 5]
    assert progress.epoch_bars[3].n == 2 and progress.epoch_bars[5].n == 1
    assert {abs(b.pos) for b in progress.epoch_bars.values()} == {1, 2}
    progress.close()
    assert progress.epoch_bars == {}


def test_worker_devices_give_each_worker_its_own_gpu_in_turn(monkeypatch):
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert [str(d) for d in worker_devices(torch.device("cuda"), 3)] == ["cuda:0", "cuda:1", "cuda:0"]
    assert worker_devices(torch.device("cuda", 1), 2) == [torch.device("cuda", 1)] * 2  # a GPU the user named
    assert worker_devices(torch.device("cpu"), 2) == [torch.device("cpu")] * 2


def test_threads_per_worker_divides_the_cores_and_keeps_one_each(monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(16)))
    assert threads_per_worker(4) == 4 and threads_per_worker(3) == 5 and threads_per_worker(32) == 1


def test_run_parallel_a_worker_that_cannot_start_is_a_one_line_error(tmp_path, capfd):
    from search.selection.objective import SearchSettings
    from search.selection.parallel import WorkerPlan, run_parallel

    study = optuna.create_study(storage=f"sqlite:///{tmp_path}/ok.db")
    plan = WorkerPlan(study=study.study_name, storage_url=f"sqlite:///{tmp_path}/missing/folder/x.db",
                      studies_dir=str(tmp_path), data_root=str(tmp_path), task="course", split_seed=0, folds=2,
                      sampler="tpe", pruner="median", search=SearchSettings(size=(16, 16, 32), epochs=1,
                                                                            device=torch.device("cpu")), threads=1)
    progress = SearchProgress(2, 2, enabled=False)
    result = run_parallel(plan, [torch.device("cpu")], study, 2, progress)
    assert not result.interrupted and result.trials_done == 0
    (error,) = result.errors
    assert error.startswith("worker 0: storage: cannot open sqlite:///") and len(error.splitlines()) == 1
    assert "Traceback" not in capfd.readouterr().err  # the worker's own stderr included
