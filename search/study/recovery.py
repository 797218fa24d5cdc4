"""Trials whose worker is gone: who runs a trial, and how a dead worker's trial is failed and run again.

Every trial records its worker (host, boot id, process id). A trial left RUNNING by a worker that died
(kill -9, out-of-memory killer, power cut, a lost machine) is recovered by any run of the study:

- on the same machine, at once: its process no longer exists (the boot id tells a reboot or another
  machine with the same host name apart);
- anywhere, after its heartbeat has been silent for the storage's grace period (Optuna's heartbeat).

Recovering a trial records the reason on it, marks it FAIL, and queues its parameters again as a WAITING
trial (Optuna's ``failed_trial``/``retry_history`` system attrs, so ``RetryHeartbeatStaleTrialCallback``'s
helpers read it), at most :data:`MAX_RETRIES` times: a spec that kills its worker every time (the kernel's
out-of-memory killer) is not retried forever. The seed baseline keeps its mark when it is run again, and
a baseline stopped by Ctrl-C is queued again too, so a study never loses its reference point.

The storage decides races: the state change to FAIL succeeds for exactly one of several runs that try,
and only that run queues the retry.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

import optuna
from optuna.exceptions import UpdateFinishedTrialError
from optuna.trial import FrozenTrial, TrialState

from search.study import schema

MAX_RETRIES = 2
# Optuna's names (optuna.storages.RetryHeartbeatStaleTrialCallback).
FAILED_TRIAL = "failed_trial"
RETRY_HISTORY = "retry_history"
INTERRUPTED = "interrupted (Ctrl-C)"


def _boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def worker_identity() -> dict:
    """This process as recorded on the trials it runs."""
    return {"host": socket.gethostname(), "boot_id": _boot_id(), "pid": os.getpid()}


def record_worker(trial: optuna.Trial) -> None:
    """Mark ``trial`` as run by this process."""
    trial.set_user_attr(schema.WORKER, worker_identity())


def _process_gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # exists, another user's
        return False
    try:  # a killed child its parent has not reaped yet still answers kill(0)
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except (OSError, IndexError):
        return False


def dead_local_worker(worker: dict | None) -> bool:
    """Whether ``worker`` (a trial's :data:`schema.WORKER`) was a process of this machine that no longer runs."""
    if not isinstance(worker, dict) or not isinstance(worker.get("pid"), int):
        return False
    me = worker_identity()
    if not me["boot_id"] or (worker.get("host"), worker.get("boot_id")) != (me["host"], me["boot_id"]):
        return False
    return worker["pid"] != me["pid"] and _process_gone(worker["pid"])


def requeue(study: optuna.Study, failed: FrozenTrial, reason: str) -> int | None:
    """Queue ``failed``'s parameters again as a WAITING trial; its number, or None past :data:`MAX_RETRIES`.

    Only the baseline mark is carried over: what the failed run recorded (its spec, epochs, losses) is not
    the new run's.
    """
    if not failed.params and not failed.user_attrs.get(schema.BASELINE):
        return None  # nothing was sampled yet: a new trial samples afresh anyway
    history = [*failed.system_attrs.get(RETRY_HISTORY, []), failed.number]
    if len(history) > MAX_RETRIES:
        return None
    user_attrs = {schema.RETRY_OF: failed.number, schema.RETRY_REASON: reason}
    if failed.user_attrs.get(schema.BASELINE):
        user_attrs[schema.BASELINE] = True
    system_attrs = {FAILED_TRIAL: history[0], RETRY_HISTORY: history}
    if "fixed_params" in failed.system_attrs:  # an enqueued trial (the baseline) that died before sampling all
        system_attrs["fixed_params"] = failed.system_attrs["fixed_params"]
    template = optuna.trial.create_trial(state=TrialState.WAITING, params=failed.params,
                                         distributions=failed.distributions, user_attrs=user_attrs,
                                         system_attrs=system_attrs)
    # What study.add_trial does, keeping the id: another worker may add a trial at the same moment.
    trial_id = study._storage.create_new_trial(study._study_id, template_trial=template)
    return study._storage.get_trial_number_from_id(trial_id)


def describe_worker(worker: dict | None) -> str:
    """Who ran a trial, for a message: "its worker (pid P on HOST)"."""
    if not isinstance(worker, dict):
        return "its worker"
    return f"its worker (pid {worker.get('pid')} on {worker.get('host')})"


def recover_trials(study: optuna.Study) -> list[str]:
    """Fail, with the reason, every RUNNING trial whose worker is gone, and queue each again.

    Returns:
        One line per recovered trial, for the console.
    """
    storage = study._storage
    stale: set[int] = set()
    # A study wraps its RDB storage in a cache; both speak Optuna's heartbeat protocol (BaseHeartbeat).
    grace = getattr(getattr(storage, "_backend", storage), "grace_period", None)
    if getattr(storage, "get_heartbeat_interval", lambda: None)():
        # The protocol's own query (optuna.storages.fail_stale_trials uses it); the public function fails
        # stale trials without a way to record why.
        # BaseStorage does not declare the heartbeat protocol's method that this storage has.
        stale = set(storage._get_stale_trial_ids(study._study_id))  # type: ignore[attr-defined]
    lines = []
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        worker = trial.user_attrs.get(schema.WORKER)
        if dead_local_worker(worker):
            reason = f"{describe_worker(worker)} is gone: killed or crashed mid-trial"
        elif trial._trial_id in stale:
            reason = f"{describe_worker(worker)} sent no heartbeat for over {grace} s: it died or lost the database"
        else:
            continue
        try:
            storage.set_trial_user_attr(trial._trial_id, schema.FAIL_REASON, reason)
            if not storage.set_trial_state_values(trial._trial_id, state=TrialState.FAIL):
                continue
        except UpdateFinishedTrialError:
            continue  # it finished, or another run recovered it first
        failed = storage.get_trial(trial._trial_id)
        retry = requeue(study, failed, reason)
        if retry is not None:
            again = f"queued again as trial {retry}"
        elif failed.params:
            again = f"not queued again: its parameters failed {MAX_RETRIES + 1} times"
        else:
            again = "nothing to queue again (it had sampled nothing)"
        lines.append(f"recovered trial {trial.number}: {reason}; failed, {again}")
    return lines


def requeue_stale_trial(study: optuna.Study, trial: FrozenTrial) -> None:
    """Optuna's heartbeat callback: a stale trial that Optuna itself failed is queued again too."""
    requeue(study, trial, f"{describe_worker(trial.user_attrs.get(schema.WORKER))} sent no heartbeat: it died or "
                          "lost the database")


def _requeue_baseline(study: optuna.Study, trial: FrozenTrial) -> str | None:
    """Queue the failed seed baseline ``trial`` again; a line for the console, or None past the retries."""
    reason = trial.user_attrs.get(schema.FAIL_REASON) or "it failed"
    retry = requeue(study, trial, f"the seed baseline (trial {trial.number}) never finished: {reason}")
    if retry is None:
        return None
    return f"the seed baseline (trial {trial.number}) never finished ({reason}): queued again as trial {retry}"


def requeue_interrupted_baseline(study: optuna.Study, number: int | None) -> str | None:
    """After Ctrl-C: queue trial ``number`` again if it is the seed baseline (this process ran and failed it).

    Only the run that interrupted the baseline queues it, so two workers stopped at once queue it once.

    Returns:
        A line for the console when it was queued again.
    """
    if number is None:
        return None
    trial = study.get_trials(deepcopy=False)[number]
    if trial.state != TrialState.FAIL or not trial.user_attrs.get(schema.BASELINE):
        return None
    return _requeue_baseline(study, trial)


def requeue_lost_baseline(study: optuna.Study) -> str | None:
    """Queue the seed baseline again when no run of it finished, runs or waits (a study whose baseline was
    stopped before this module queued it again; a run calls this when it starts).

    Returns:
        A line for the console when it was queued again.
    """
    baselines = [t for t in study.get_trials(deepcopy=False) if t.user_attrs.get(schema.BASELINE)]
    if not baselines or any(t.state != TrialState.FAIL for t in baselines):
        return None
    return _requeue_baseline(study, baselines[-1])
