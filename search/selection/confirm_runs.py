"""The confirmation's runs: each (candidate, fold) pair trained, scored and recorded as one companion trial.

:class:`ConfirmRunner` trains the pairs not yet finished, in this process (``jobs=1``: one run at a time on every
CPU thread, or on the GPU) or in ``jobs`` spawned processes that each train one run at a time on ``threads`` CPU
threads. The runs are independent and seeded (:func:`run_seed`), and a run's numbers depend only on its seed, its
data and its thread count, not on which process trains it or what that process trained before: at one thread
count a confirmation reproduces exactly whatever the number of processes (tested). This process keeps the
companion study in both cases: it creates each run's trial, and records its result or its failure
(``search.study.trial_run``) when the run ends.
"""

from __future__ import annotations

import functools
import multiprocessing as mp
import queue
import signal
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import optuna
import torch
from optuna.artifacts import upload_artifact
from optuna.storages._heartbeat import is_heartbeat_enabled
from optuna.trial import FrozenTrial, TrialState
from safetensors.torch import save_file
from tqdm.auto import tqdm

from lungct.signals import stopped_by_sigterm
from search.selection.candidates import Candidate
from search.selection.decision import ConfirmSettings
from search.selection.rule import RunResult
from search.stats.metrics import severity_score, task_metrics
from search.study.artifacts import AtomicArtifactStore
from search.study.recovery import INTERRUPTED, record_worker
from search.study.storage import fail_running, schema
from search.study.trial_run import TERMINATED, KnownFailure, trial_run
from search.training.data import Tensors
from search.training.loop import EpochResult, device_name, recalibrate_batchnorm
from search.training.unit import Trained, predict_finite, train_model

TrialCallback = Callable[[optuna.Study, FrozenTrial], None]  # what study.optimize(callbacks=...) calls
TrainFn = Callable[..., Trained]

CONFIRM_SEED_OFFSET = 500_000  # training seeds of the confirmation: far from every search trial's seeds
POLL_S = 0.5  # how often the parallel runner looks for Ctrl-C between finished runs
BEAT_S = 20.0  # how often it records its running trials' heartbeats (search.study.storage: every 30 s, stale at 120)


@dataclass(frozen=True)
class ConfirmFold:
    """One fresh fold: training and validation tensors of the non-test scans."""

    repeat: int
    fold: int
    train: Tensors
    val: Tensors


def run_seed(settings: ConfirmSettings, repeat: int, fold: int) -> int:
    """The training seed of every candidate in one fold (paired: common random numbers)."""
    return settings.seed + CONFIRM_SEED_OFFSET + 1000 * repeat + fold


def finished_runs(study: optuna.Study) -> dict[tuple[str, int, int], RunResult]:
    """Complete runs (and runs pruned for a non-finite loss) keyed by (candidate, repeat, fold)."""
    done: dict[tuple[str, int, int], RunResult] = {}
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)):
        a = t.user_attrs
        if {schema.CANDIDATE, schema.REPEAT, schema.FOLD} <= a.keys():
            done.setdefault((a[schema.CANDIDATE], int(a[schema.REPEAT]), int(a[schema.FOLD])), RunResult.from_trial(t))
    return done


@dataclass(frozen=True)
class RunOutput:
    """What one run produced: its score, the attrs stored on its trial, and its weights when they are kept."""

    auc: float
    attrs: dict
    weights: dict[str, torch.Tensor] | None


def train_run(candidate: Candidate, fold: ConfirmFold, *, epochs: int, seed: int, device, amp: bool,
              train_fn: TrainFn, keep_weights: bool,
              on_epoch: Callable[[EpochResult], None] | None = None) -> RunOutput:
    """Train ``candidate`` on ``fold``'s training scans, recompute its batch-norm statistics over them and score it
    on the fold's validation scans. Raises ``search.training.unit.TrainingFailed`` as training does."""
    trained = train_fn(candidate.spec, candidate.train_spec, fold.train, None, epochs=epochs, device=device,
                       seed=seed, amp=amp, on_epoch=on_epoch)
    recomputed = recalibrate_batchnorm(trained.model, fold.train, device, candidate.train_spec.batch_size)
    probs = predict_finite(trained, fold.val.volumes, device, amp=amp)
    labels = fold.val.labels.cpu().numpy().astype(int)
    auc = task_metrics(labels, probs).auc
    # One score per scan: P(label 1), or an ordinal model's expected grade, which ranks as every "grade >= k".
    attrs = {schema.AUC: auc, schema.LABELS: labels.tolist(),
             schema.PROBS: [round(float(p), 6) for p in severity_score(probs)],
             schema.TRAIN_SECONDS: round(trained.fitted.train_seconds, 2),
             schema.TRAIN_LOSS: [round(e.train_loss, 5) for e in trained.fitted.history],
             schema.BN_RECOMPUTED: recomputed}
    weights = ({k: v.detach().to("cpu").contiguous() for k, v in trained.model.state_dict().items()}
               if keep_weights else None)
    return RunOutput(auc, attrs, weights)


class ConfirmRunner:
    """Trains every (candidate, fold) pair not yet finished, one trial of the companion study each.

    Args:
        folds: The fresh folds.
        settings: Epochs, seeds, rule.
        device: Where to train.
        amp: bf16 autocast allowed.
        train_fn: The training unit (``search.training.unit.train_model``); tests pass a controlled one. With
            ``jobs > 1`` it must be picklable (a module-level function or a ``functools.partial`` of one).
        progress: Show a bar (None: when stderr is a terminal).
        artifacts: Folder of the artifact store that keeps each run's weights (None: weights not kept).
        jobs: Runs trained at once, each in a spawned process (1: in this process, one at a time).
        threads: CPU threads of each of those processes (ignored when ``jobs`` is 1).
    """

    def __init__(self, folds: Sequence[ConfirmFold], settings: ConfirmSettings, device, amp: bool = False,
                 train_fn: TrainFn = train_model, progress: bool | None = None,
                 artifacts: str | Path | None = None, jobs: int = 1, threads: int = 1):
        self.folds = list(folds)
        self.store = None
        if artifacts is not None:
            Path(artifacts).mkdir(parents=True, exist_ok=True)
            self.store = AtomicArtifactStore(str(artifacts))
        self.settings = settings
        self.device = device
        self.amp = amp
        self.train_fn = train_fn
        self.interactive = sys.stderr.isatty() if progress is None else progress
        self.jobs = jobs
        self.threads = threads
        self.running: int | None = None

    def run(self, companion: optuna.Study, candidates: Sequence[Candidate],
            callbacks: Sequence[TrialCallback] = (),
            folds: Sequence[ConfirmFold] | None = None) -> dict[tuple[str, int, int], RunResult]:
        """Train what is missing; return every finished run. Ctrl-C fails the running trials and propagates.

        ``callbacks`` are Optuna trial callbacks, called after each finished run (e.g. a database backup);
        ``folds`` are the folds to train on (None: the runner's).
        """
        done = finished_runs(companion)
        todo = [(f, c) for f in (self.folds if folds is None else folds) for c in candidates
                if (c.key, f.repeat, f.fold) not in done]
        bar = tqdm(total=len(todo), desc="confirmation", unit="run", disable=not self.interactive,
                   dynamic_ncols=True)
        try:
            if self.jobs > 1 and len(todo) > 1:
                self._run_parallel(companion, todo, callbacks, bar)
            else:
                for i, (fold, candidate) in enumerate(todo, start=1):
                    bar.set_description(f"confirm {candidate.key} r{fold.repeat}f{fold.fold}")
                    companion.optimize(functools.partial(self._objective, candidate=candidate, fold=fold, bar=bar),
                                       n_trials=1, catch=(KnownFailure,), callbacks=list(callbacks))
                    assert self.running is not None  # _objective set it: optimize ran the trial
                    trial = companion.get_trials(deepcopy=False)[self.running]
                    self.running = None
                    self._say(bar, i, len(todo), _run_line(trial, candidate, fold))
        finally:
            bar.close()
            fail_running(companion, self.running)
        return finished_runs(companion)

    def _say(self, bar, i: int, n: int, line: str) -> None:
        if self.interactive:
            bar.write(line)
            bar.update()
        else:
            print(f"[confirm {i}/{n}] {line}", flush=True)

    def _start(self, trial: optuna.Trial, candidate: Candidate, fold: ConfirmFold) -> dict:
        return {schema.CANDIDATE: candidate.key, schema.SEARCH_TRIAL: candidate.trial, schema.REPEAT: fold.repeat,
                schema.FOLD: fold.fold, schema.SEED: run_seed(self.settings, fold.repeat, fold.fold),
                schema.SPEC: candidate.spec.to_dict(), schema.TRAIN_SPEC: candidate.train_spec.to_dict(),
                schema.DEVICE: device_name(self.device), schema.N_TRAIN: len(fold.train),
                schema.N_VAL: len(fold.val)}

    def _objective(self, trial: optuna.Trial, candidate: Candidate, fold: ConfirmFold, bar) -> float:
        self.running = trial.number

        def on_epoch(result: EpochResult) -> None:
            bar.set_postfix(epoch=f"{result.epoch}/{self.settings.epochs}", loss=f"{result.train_loss:.3f}")

        with trial_run(trial) as run:
            run.set(self._start(trial, candidate, fold))
            out = train_run(candidate, fold, epochs=self.settings.epochs,
                            seed=run_seed(self.settings, fold.repeat, fold.fold), device=self.device, amp=self.amp,
                            train_fn=self.train_fn, keep_weights=self.store is not None, on_epoch=on_epoch)
        self._record(trial, out)
        return out.auc

    def _record(self, trial: optuna.Trial, out: RunOutput) -> None:
        for key, value in out.attrs.items():
            trial.set_user_attr(key, value)
        if self.store is not None and out.weights is not None:
            trial.set_user_attr(schema.WEIGHTS_ARTIFACT, self._keep_weights(self.store, trial, out.weights))

    def _keep_weights(self, store: AtomicArtifactStore, trial: optuna.Trial, weights: dict[str, torch.Tensor]) -> str:
        """Upload the run's final weights (batch-norm statistics recomputed) to its trial; the artifact id."""
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / f"confirm-{trial.number}.safetensors"
            save_file(weights, str(path))
            return upload_artifact(artifact_store=store, file_path=str(path), study_or_trial=trial)

    def _run_parallel(self, companion: optuna.Study, todo: list[tuple[ConfirmFold, Candidate]],
                      callbacks: Sequence[TrialCallback], bar) -> None:
        """Train ``todo`` on ``self.jobs`` spawned processes; this process keeps the study."""
        folds = {(f.repeat, f.fold): f for f, _ in todo}
        finished: queue.Queue = queue.Queue()
        in_flight: dict[int, tuple[optuna.Trial, Candidate, ConfirmFold]] = {}
        pending = list(todo)
        jobs = min(self.jobs, len(todo))
        bar.set_description(f"confirmation ({jobs} at a time)")
        # spawn, not fork: a forked torch thread pool can deadlock; the folds go to each process once.
        pool = mp.get_context("spawn").Pool(jobs, initializer=_start_process,
                                            initargs=(self.threads, {k: _portable(f) for k, f in folds.items()}))
        try:
            count, beaten = 0, time.monotonic()
            while pending or in_flight:
                if time.monotonic() - beaten >= BEAT_S:
                    _beat(companion, [t for t, _, _ in in_flight.values()])
                    beaten = time.monotonic()
                while pending and len(in_flight) < jobs:
                    fold, candidate = pending.pop(0)
                    with warnings.catch_warnings():  # the heartbeats are this loop's (_beat), not optimize's
                        warnings.filterwarnings("ignore", message="Heartbeat of storage")
                        trial = companion.ask()
                    record_worker(trial)
                    for key, value in self._start(trial, candidate, fold).items():
                        trial.set_user_attr(key, value)
                    in_flight[trial.number] = (trial, candidate, fold)
                    _beat(companion, [trial])
                    task = functools.partial(train_run_in_process, candidate, (fold.repeat, fold.fold),
                                             epochs=self.settings.epochs,
                                             seed=run_seed(self.settings, fold.repeat, fold.fold),
                                             device=self.device, amp=self.amp, train_fn=self.train_fn,
                                             keep_weights=self.store is not None)
                    number = trial.number
                    pool.apply_async(task, callback=functools.partial(_done, finished, number),
                                     error_callback=functools.partial(_failed, finished, number))
                try:
                    number, out, error = finished.get(timeout=POLL_S)
                except queue.Empty:
                    continue
                trial, candidate, fold = in_flight.pop(number)
                self._finish(companion, trial, out, error)
                frozen = companion.get_trials(deepcopy=False)[number]
                for callback in callbacks:
                    callback(companion, frozen)
                count += 1
                self._say(bar, count, len(todo), _run_line(frozen, candidate, fold))
        except KeyboardInterrupt as e:
            pool.terminate()
            for trial, _, _ in in_flight.values():  # as trial_run names it in one process; run() then fails them
                trial.set_user_attr(schema.FAIL_REASON, TERMINATED if stopped_by_sigterm(e) else INTERRUPTED)
            raise
        finally:
            pool.terminate()
            pool.join()

    def _finish(self, companion: optuna.Study, trial: optuna.Trial, out: RunOutput | None,
                error: BaseException | None) -> None:
        """Record a finished run on its trial: its result, or its failure mapped as in one process."""
        try:
            with trial_run(trial):
                if error is not None:
                    raise error
            assert out is not None
            self._record(trial, out)
        except optuna.TrialPruned:
            companion.tell(trial, state=TrialState.PRUNED)
        except KnownFailure:
            companion.tell(trial, state=TrialState.FAIL)
        else:
            companion.tell(trial, out.auc)


def _beat(study: optuna.Study, trials: Sequence[optuna.Trial]) -> None:
    """Record a heartbeat for each running trial, as ``study.optimize`` does for its own, so another process's
    stale-trial check (``search.study.storage``) sees them alive; storages without heartbeats ignore it."""
    storage = study._storage
    if trials and is_heartbeat_enabled(storage):
        for trial in trials:
            storage.record_heartbeat(trial._trial_id)  # type: ignore[attr-defined]


def _done(finished: queue.Queue, number: int, out: RunOutput) -> None:
    finished.put((number, out, None))


def _failed(finished: queue.Queue, number: int, error: BaseException) -> None:
    finished.put((number, None, error))


# The folds of this process (a parallel runner's worker), set once when it starts.
_FOLDS: dict[tuple[int, int], ConfirmFold] = {}


def _portable(fold: ConfirmFold) -> tuple:
    """A fold as numpy arrays: pickled by value through the pool's pipe, not through shared memory (a container's
    /dev/shm is often too small for a fold)."""
    return (fold.repeat, fold.fold, fold.train.volumes.numpy(), fold.train.labels.numpy(), fold.val.volumes.numpy(),
            fold.val.labels.numpy())


def _start_process(threads: int, folds: dict[tuple[int, int], tuple]) -> None:
    """A worker's start: its thread count, no Ctrl-C of its own (the parent stops it), its folds."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    torch.set_num_threads(threads)
    for key, (repeat, fold, tv, tl, vv, vl) in folds.items():
        _FOLDS[key] = ConfirmFold(repeat, fold, Tensors(torch.from_numpy(tv), torch.from_numpy(tl)),
                                  Tensors(torch.from_numpy(vv), torch.from_numpy(vl)))


def train_run_in_process(candidate: Candidate, fold: tuple[int, int], **kwargs) -> RunOutput:
    """:func:`train_run` on one of this worker's folds."""
    return train_run(candidate, _FOLDS[fold], **kwargs)


def _run_line(trial: FrozenTrial, candidate: Candidate, fold: ConfirmFold) -> str:
    where = f"{candidate.key} repeat {fold.repeat} fold {fold.fold}"
    if trial.state == TrialState.COMPLETE:
        graded = max(trial.user_attrs.get(schema.LABELS) or [0]) > 1  # an ordinal task's fold holds grades above 1
        metric = "mean grade>=k AUC" if graded else "AUC"
        return f"{where}: {metric} {trial.values[0]:.3f}, {trial.user_attrs.get(schema.TRAIN_SECONDS, 0):.0f} s"
    reason = trial.user_attrs.get(schema.PRUNE_REASON) or trial.user_attrs.get(schema.FAIL_REASON) or "see dashboard"
    return f"{where}: {trial.state.name.lower()} ({reason})"
