"""search.study.recovery: a dead worker's trial is failed with its reason and queued again, once, by one run."""

import os
import subprocess
import sys
import threading
import time
import uuid

import optuna
import pytest
from optuna.distributions import IntDistribution
from optuna.trial import TrialState

from search.study.recovery import (
    MAX_RETRIES,
    dead_local_worker,
    recover_trials,
    requeue_lost_baseline,
    worker_identity,
)
from search.study.storage import open_storage, schema


@pytest.fixture
def url(storage_kind, tmp_path, request):
    if storage_kind == "sqlite":
        return f"sqlite:///{tmp_path}/recovery.db"
    return request.getfixturevalue("postgres_server")


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def _running_trial(study: optuna.Study, worker: dict, baseline: bool = False) -> optuna.Trial:
    trial = study.ask()
    trial.suggest_int("n_levels", 1, 5)
    trial.set_user_attr(schema.WORKER, worker)
    if baseline:
        trial.set_user_attr(schema.BASELINE, True)
    return trial


def _race(n: int, url: str, study: optuna.Study, act) -> None:
    """``act(study)`` in ``n`` threads at once, each with its own storage connection, as separate runs would."""
    start = threading.Barrier(n, timeout=30)
    errors = []

    def run():
        try:
            mine = optuna.load_study(study_name=study.study_name, storage=open_storage(url))
            start.wait()
            act(mine)
        except Exception as e:  # the test reports what a racing run raised
            errors.append(e)

    threads = [threading.Thread(target=run) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors


def _study(url: str) -> optuna.Study:
    return optuna.create_study(study_name=f"r-{uuid.uuid4().hex[:8]}", storage=open_storage(url))


def test_recover_trials_fails_a_dead_local_workers_trial_with_its_reason_and_queues_it_again(url):
    study = _study(url)
    trial = _running_trial(study, worker_identity() | {"pid": _dead_pid()}, baseline=True)
    (line,) = recover_trials(study)
    assert f"recovered trial {trial.number}" in line and "queued again as trial 1" in line
    failed, retry = study.get_trials()
    assert failed.state == TrialState.FAIL and "is gone: killed or crashed" in failed.user_attrs["fail_reason"]
    assert retry.state == TrialState.WAITING and retry.params == failed.params
    assert retry.user_attrs[schema.RETRY_OF] == 0 and retry.user_attrs[schema.BASELINE] is True
    assert schema.WORKER not in retry.user_attrs  # nothing of the dead run is carried over but the mark
    assert optuna.storages.RetryHeartbeatStaleTrialCallback.retried_trial_number(retry) == 0


def test_recover_trials_leaves_a_live_workers_trial_alone(url):
    study = _study(url)
    _running_trial(study, worker_identity() | {"pid": os.getppid()})
    assert recover_trials(study) == []
    assert [t.state for t in study.get_trials()] == [TrialState.RUNNING]


def test_dead_local_worker_never_judges_another_machines_process():
    other = worker_identity() | {"boot_id": "another-machine", "pid": _dead_pid()}
    assert not dead_local_worker(other)
    assert dead_local_worker(worker_identity() | {"pid": _dead_pid()})
    assert not dead_local_worker(None) and not dead_local_worker({"pid": "x"})


def test_recover_trials_fails_a_silent_heartbeat_on_any_machine(storage_kind, tmp_path, request):
    url = (f"sqlite:///{tmp_path}/hb.db" if storage_kind == "sqlite" else request.getfixturevalue("postgres_server"))
    storage = optuna.storages.RDBStorage(url, heartbeat_interval=1, grace_period=1)
    study = optuna.create_study(study_name=f"hb-{uuid.uuid4().hex[:8]}", storage=storage)
    trial = _running_trial(study, worker_identity() | {"boot_id": "another-machine", "pid": 1})
    storage.record_heartbeat(trial._trial_id)
    time.sleep(2.5)
    (line,) = recover_trials(study)
    assert "sent no heartbeat for over 1 s" in line
    assert [t.state for t in study.get_trials()] == [TrialState.FAIL, TrialState.WAITING]


def test_recover_trials_racing_runs_queue_one_retry(url):
    study = _study(url)
    _running_trial(study, worker_identity() | {"pid": _dead_pid()})
    lines = []
    _race(3, url, study, lambda mine: lines.extend(recover_trials(mine)))
    assert len(lines) == 1
    assert [t.state for t in study.get_trials()] == [TrialState.FAIL, TrialState.WAITING]


def test_recover_trials_stops_queueing_after_max_retries(tmp_path):
    study = _study(f"sqlite:///{tmp_path}/retries.db")
    for attempt in range(MAX_RETRIES + 1):
        trial = study.ask()  # takes the waiting retry after the first round
        assert trial.suggest_int("n_levels", 1, 5) == study.trials[0].params["n_levels"]
        trial.set_user_attr(schema.WORKER, worker_identity() | {"pid": _dead_pid()})
        (line,) = recover_trials(study)
        assert ("queued again as trial" in line) == (attempt < MAX_RETRIES), line
    assert [t.state for t in study.trials] == [TrialState.FAIL] * (MAX_RETRIES + 1)


def test_requeue_lost_baseline_queues_an_interrupted_baseline_once(tmp_path):
    study = _study(f"sqlite:///{tmp_path}/base.db")
    study.add_trial(optuna.trial.create_trial(
        state=TrialState.FAIL, params={"n_levels": 4}, distributions={"n_levels": IntDistribution(1, 5)},
        user_attrs={schema.BASELINE: True, schema.FAIL_REASON: "interrupted (Ctrl-C)"}))
    line = requeue_lost_baseline(study)
    assert line and "interrupted (Ctrl-C)" in line and "queued again as trial 1" in line
    assert requeue_lost_baseline(study) is None  # a baseline now waits: nothing more to queue
    waiting = study.trials[1]
    assert waiting.state == TrialState.WAITING and waiting.user_attrs[schema.BASELINE] is True
    assert waiting.params == {"n_levels": 4}


def test_open_storage_two_workers_never_take_the_same_waiting_trial(url):
    """The seed baseline waits as trial 0 of a new study: of two workers asking at once, one takes it."""
    study = _study(url)
    for _ in range(5):
        study.enqueue_trial({"n_levels": 4})
        taken = []
        _race(2, url, study, lambda mine, taken=taken: taken.append(mine.ask().number))
        assert len(set(taken)) == 2, taken
