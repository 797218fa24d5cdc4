"""The confirmation stage: retrain the search's best specs and the seed baseline on fresh folds, then decide.

A search's best score is the maximum of many noisy estimates, so it is optimistic by construction. After
the trials, the top-k distinct specs and the seed baseline are trained again on fresh cross-validation
folds of the non-test scans (another fold assignment, new training seeds, the same seeds for every
candidate within a fold so the comparison is paired) and scored at the final epoch.

This module runs the stage and :func:`confirm` is its entry. What it retrains is
``search.selection.candidates``, the rule that decides is ``search.selection.rule`` and the decision it stores
is ``search.selection.decision``; their names are importable from here too.

Each run's model gets its batch-norm statistics recomputed over its training scans before it is scored
(``search.training.loop.recalibrate_batchnorm``): with the running averages as training left them, the seed
baseline confirmed 0.07-0.16 AUC below what its refit scored on fresh phantoms and candidates replaced it that
were no better (benchmarks/RESULTS.md). Its weights are kept as an artifact of its run, so
``search.export --ensemble`` can ship the recommended spec's fold models, the exact models scored here.

Each (candidate, fold) run is one trial of a companion study in the same storage, so the
stage resumes after Ctrl-C and the runs show in optuna-dashboard; the decision is stored on the search
study as the ``confirmation`` user attr, which ``search.export``, ``search.report`` and the run's
summary read.
"""

from __future__ import annotations

import dataclasses
import functools
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import optuna
import torch
from optuna.artifacts import upload_artifact
from optuna.trial import FrozenTrial, TrialState
from safetensors.torch import save_file
from tqdm.auto import tqdm

from lungct.errors import UsageError
from search.selection.candidates import BASELINE_KEY, Candidate, SlowTrunk, select_candidates
from search.selection.decision import (
    BETTER,
    CHEAPER,
    DEFAULT_CONFIRM_FOLDS,
    DEFAULT_TOP_K,
    SIGNIFICANT,
    ConfirmSettings,
    Decision,
    format_decision,
    stored_decision,
)
from search.selection.rule import RULE_RATES, NoRecommendation, RunResult, decide, leader, paired_se, rule_text
from search.stats.metrics import severity_score, task_metrics
from search.study.artifacts import AtomicArtifactStore
from search.study.recovery import describe_worker, recover_trials
from search.study.storage import fail_running, schema
from search.study.trial_run import KnownFailure, trial_run
from search.training.data import Tensors
from search.training.loop import EpochResult, device_name, recalibrate_batchnorm
from search.training.unit import Trained, predict_finite, train_model

# This module's public names and those of its parts, which other modules import from here.
__all__ = [
    "BASELINE_KEY", "BETTER", "CHEAPER", "DEFAULT_CONFIRM_FOLDS", "DEFAULT_TOP_K", "RULE_RATES",
    "SECOND_REPEAT_FOLD_SEED", "SIGNIFICANT", "Candidate", "ConfirmFold", "ConfirmRunner", "ConfirmSettings",
    "Decision", "NoRecommendation", "RunResult", "TrainFn", "TrialCallback", "confirm", "decide", "finished_runs",
    "format_decision", "leader", "paired_se", "rule_text", "run_seed", "select_candidates", "stored_decision",
]

TrialCallback = Callable[[optuna.Study, FrozenTrial], None]  # what study.optimize(callbacks=...) calls

CONFIRM_SEED_OFFSET = 500_000  # training seeds of the confirmation: far from every search trial's seeds
# The second look's folds: another assignment than the first repeat's (fold_seed) and the search's.
SECOND_REPEAT_FOLD_SEED = 1000


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


TrainFn = Callable[..., Trained]


class ConfirmRunner:
    """Trains every (candidate, fold) pair not yet finished, one trial of the companion study each.

    Args:
        folds: The fresh folds.
        settings: Epochs, seeds, rule.
        device: Where to train.
        amp: bf16 autocast allowed.
        train_fn: The training unit (``search.training.unit.train_model``); tests pass a controlled one.
        progress: Show a bar (None: when stderr is a terminal).
        artifacts: Folder of the artifact store that keeps each run's weights (None: weights not kept).
    """

    def __init__(self, folds: Sequence[ConfirmFold], settings: ConfirmSettings, device, amp: bool = False,
                 train_fn: TrainFn = train_model, progress: bool | None = None,
                 artifacts: str | Path | None = None):
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
        self.running: int | None = None

    def run(self, companion: optuna.Study, candidates: Sequence[Candidate],
            callbacks: Sequence[TrialCallback] = (),
            folds: Sequence[ConfirmFold] | None = None) -> dict[tuple[str, int, int], RunResult]:
        """Train what is missing; return every finished run. Ctrl-C fails the running trial and propagates.

        ``callbacks`` are Optuna trial callbacks, called after each finished run (e.g. a database backup);
        ``folds`` are the folds to train on (None: the runner's).
        """
        done = finished_runs(companion)
        todo = [(f, c) for f in (self.folds if folds is None else folds) for c in candidates
                if (c.key, f.repeat, f.fold) not in done]
        bar = tqdm(total=len(todo), desc="confirmation", unit="run", disable=not self.interactive,
                   dynamic_ncols=True)
        try:
            for i, (fold, candidate) in enumerate(todo, start=1):
                bar.set_description(f"confirm {candidate.key} r{fold.repeat}f{fold.fold}")
                companion.optimize(functools.partial(self._objective, candidate=candidate, fold=fold, bar=bar),
                                   n_trials=1, catch=(KnownFailure,), callbacks=list(callbacks))
                assert self.running is not None  # _objective set it: optimize ran the trial
                trial = companion.get_trials(deepcopy=False)[self.running]
                self.running = None
                line = _run_line(trial, candidate, fold)
                if self.interactive:
                    bar.write(line)
                    bar.update()
                else:
                    print(f"[confirm {i}/{len(todo)}] {line}", flush=True)
        finally:
            bar.close()
            fail_running(companion, self.running)
        return finished_runs(companion)

    def _objective(self, trial: optuna.Trial, candidate: Candidate, fold: ConfirmFold, bar) -> float:
        self.running = trial.number
        seed = run_seed(self.settings, fold.repeat, fold.fold)

        def on_epoch(result: EpochResult) -> None:
            bar.set_postfix(epoch=f"{result.epoch}/{self.settings.epochs}", loss=f"{result.train_loss:.3f}")

        with trial_run(trial) as run:
            run.set({schema.CANDIDATE: candidate.key, schema.SEARCH_TRIAL: candidate.trial, schema.REPEAT: fold.repeat,
                     schema.FOLD: fold.fold, schema.SEED: seed, schema.SPEC: candidate.spec.to_dict(),
                     schema.TRAIN_SPEC: candidate.train_spec.to_dict(), schema.DEVICE: device_name(self.device),
                     schema.N_TRAIN: len(fold.train), schema.N_VAL: len(fold.val)})
            trained = self.train_fn(candidate.spec, candidate.train_spec, fold.train, None,
                                    epochs=self.settings.epochs, device=self.device, seed=seed, amp=self.amp,
                                    on_epoch=on_epoch)
            recomputed = recalibrate_batchnorm(trained.model, fold.train, self.device, candidate.train_spec.batch_size)
            probs = predict_finite(trained, fold.val.volumes, self.device, amp=self.amp)
        labels = fold.val.labels.cpu().numpy().astype(int)
        auc = task_metrics(labels, probs).auc
        # One score per scan: P(label 1), or an ordinal model's expected grade, which ranks as every "grade >= k".
        run.set({schema.AUC: auc, schema.LABELS: labels.tolist(),
                 schema.PROBS: [round(float(p), 6) for p in severity_score(probs)],
                 schema.TRAIN_SECONDS: round(trained.fitted.train_seconds, 2),
                 schema.TRAIN_LOSS: [round(e.train_loss, 5) for e in trained.fitted.history],
                 schema.BN_RECOMPUTED: recomputed})
        if self.store is not None:
            trial.set_user_attr(schema.WEIGHTS_ARTIFACT, self._keep_weights(self.store, trial, trained.model))
        return auc

    def _keep_weights(self, store: AtomicArtifactStore, trial: optuna.Trial, model: torch.nn.Module) -> str:
        """Upload the run's final weights (batch-norm statistics recomputed) to its trial; the artifact id."""
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / f"confirm-{trial.number}.safetensors"
            save_file({k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}, str(path))
            return upload_artifact(artifact_store=store, file_path=str(path), study_or_trial=trial)


def _run_line(trial: FrozenTrial, candidate: Candidate, fold: ConfirmFold) -> str:
    where = f"{candidate.key} repeat {fold.repeat} fold {fold.fold}"
    if trial.state == TrialState.COMPLETE:
        graded = max(trial.user_attrs.get(schema.LABELS) or [0]) > 1  # an ordinal task's fold holds grades above 1
        metric = "mean grade>=k AUC" if graded else "AUC"
        return f"{where}: {metric} {trial.values[0]:.3f}, {trial.user_attrs.get(schema.TRAIN_SECONDS, 0):.0f} s"
    reason = trial.user_attrs.get(schema.PRUNE_REASON) or trial.user_attrs.get(schema.FAIL_REASON) or "see dashboard"
    return f"{where}: {trial.state.name.lower()} ({reason})"


def confirm(study: optuna.Study, storage: optuna.storages.BaseStorage, folds: Sequence[ConfirmFold],
            settings: ConfirmSettings, size: tuple[int, int, int], device, amp: bool = False,
            train_fn: TrainFn = train_model, progress: bool | None = None,
            artifacts: str | Path | None = None,
            callbacks: Sequence[TrialCallback] = (),
            second_folds: Callable[[], Sequence[ConfirmFold]] | None = None) -> Decision:
    """Run (or resume) the confirmation of ``study`` and store the decision on it.

    ``callbacks`` are Optuna trial callbacks, called after each finished confirmation run.

    ``artifacts`` is the artifact store's folder where each run's weights are kept (see
    :class:`ConfirmRunner`); the decision lists the artifact ids of every candidate's fold models.

    ``second_folds`` makes the second look's folds (another fresh assignment, repeat 1), called only when
    ``settings.second_repeat`` and a candidate leads after the first look.

    Returns:
        The decision (see :func:`decide`), also stored as the study's ``confirmation`` user attr.
    """
    slow: list[SlowTrunk] = []
    candidates = select_candidates(study, size, settings.top_k, settings.speed_limit, slow)
    for trunk in slow:
        print(f"confirmation: {trunk.line(settings.speed_limit or 0.0)}", flush=True)
    companion = optuna.create_study(study_name=settings.study_name(study.study_name), storage=storage,
                                    load_if_exists=True, direction="maximize",
                                    sampler=optuna.samplers.RandomSampler(seed=settings.seed))
    for line in recover_trials(companion):  # a run whose process died: the runner trains that pair again
        print(f"confirmation: {line}", file=sys.stderr)
    busy = companion.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    if busy:  # a live worker's run (recover_trials failed the dead ones): one confirmation per study at a time
        raise UsageError(f"study {study.study_name!r}: {describe_worker(busy[0].user_attrs.get(schema.WORKER))} is "
                         "running its confirmation now; let it finish (what it trains is kept), then "
                         "--confirm-only reads its decision or resumes it")
    runner = ConfirmRunner(folds, settings, device, amp, train_fn, progress, artifacts)
    runs = runner.run(companion, candidates, callbacks)
    first = [(f.repeat, f.fold) for f in folds]
    second: list[tuple[int, int]] = []
    lead = leader(candidates, runs, first) if settings.second_repeat else None
    if lead is not None:
        if second_folds is None:
            raise ValueError("confirm: settings.second_repeat needs second_folds")
        more = list(second_folds())
        print(f"second look: {lead.key} leads the seed baseline after the first repeat; both train on a second "
              f"repeat of {len(more)} fresh folds before the decision", flush=True)
        runs = runner.run(companion, [candidates[0], lead], callbacks, folds=more)
        second = [(f.repeat, f.fold) for f in more]
    decision = dataclasses.replace(decide(candidates, runs, first, settings, second),
                                   companion_study=companion.study_name, left_out=tuple(t.trial for t in slow))
    study.set_user_attr(schema.STUDY_CONFIRMATION, decision.to_dict())
    return decision
