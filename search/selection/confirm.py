"""The confirmation stage: re-evaluate the search's best specs against the seed baseline before choosing.

A search's best score is the maximum of many noisy estimates, so it is optimistic by construction. After
the trials, the top-k distinct specs and the seed baseline are trained again on fresh cross-validation
folds of the non-test scans (another fold assignment, new training seeds, the same seeds for every
candidate within a fold so the comparison is paired) and scored at the final epoch.

The rule that picks the recommended model (stated in the README too):

- a candidate's confirmed score is the mean of its fold AUCs;
- it *beats the baseline* when the one-sided lower bound of the paired difference (candidate minus
  baseline, mean over folds, stratified bootstrap over each fold's validation scans with the same
  resamples for both models) at level ``alpha / k`` (Bonferroni over the k candidates) is above 0;
- the recommended model is, among the candidates that beat the baseline, the one with the best confirmed
  score; if none does, the seed baseline stays recommended.

Each run's model gets its batch-norm statistics recomputed over its training scans before it is scored
(``search.training.loop.recalibrate_batchnorm``): with the running averages as training left them, the seed
baseline confirmed 0.07-0.16 AUC below what its refit scored on fresh phantoms and candidates replaced it that
were no better (benchmarks/RESULTS.md). Its weights are kept as an artifact of its run, so
``search.export --ensemble`` can ship the recommended spec's fold models, the exact models scored here.

So a candidate that is only as good as the baseline, give or take the noise of a few dozen scans, does
not replace it. Each (candidate, fold) run is one trial of a companion study in the same storage, so the
stage resumes after Ctrl-C and the runs show in optuna-dashboard; the decision is stored on the search
study as the ``confirmation`` user attr, which ``search.export``, ``search.report`` and the run's
summary read.
"""

from __future__ import annotations

import dataclasses
import math
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import optuna
import torch
from optuna.artifacts import upload_artifact
from optuna.trial import FrozenTrial, TrialState
from safetensors.torch import save_file
from tqdm.auto import tqdm

from search.stats.intervals import grade_auc_rows, stratified_resamples
from search.stats.metrics import severity_score, task_metrics
from search.study.artifacts import AtomicArtifactStore
from search.study.recovery import recover_trials
from search.study.storage import fail_running, schema
from search.study.trial_run import KnownFailure, trial_run
from search.study.trials import ranked_trials
from search.training.data import Tensors
from search.training.loop import EpochResult, device_name, recalibrate_batchnorm
from search.training.unit import Trained, predict_finite, train_model
from space import ArchSpec, TrainSpec, baseline, baseline_train, fit_to_size

TrialCallback = Callable[[optuna.Study, FrozenTrial], None]  # what study.optimize(callbacks=...) calls


class NoRecommendation(ValueError):
    """The confirmation finished without a candidate whose runs all finished: nothing can be recommended.

    Not a bug: every run of every candidate diverged or ran out of memory (each failure is recorded on
    its run); the search's trials are kept and the confirmation can be resumed with other settings.
    ``search.run`` says so in one line; a ``ValueError`` as the plain one raised before it was.
    """


BASELINE_KEY = "baseline"
CONFIRM_SEED_OFFSET = 500_000  # training seeds of the confirmation: far from every search trial's seeds
# Two candidates, each tested at alpha 0.05 / 2: on 2 CPU cores a third costs about 3 minutes of the
# half hour. Three folds train each run on two thirds of the non-test scans: on two folds (half of them)
# the seed baseline is data-starved and specs that do not profit from more scans (no normalisation)
# outranked it there and shipped worse (benchmarks/RESULTS.md).
DEFAULT_TOP_K = 2
DEFAULT_CONFIRM_FOLDS = 3
DEFAULT_ALPHA = 0.05
DEFAULT_RESAMPLES = 2000
# Bumped when what a run means changes, so a resumed study never mixes runs of two designs in one decision
# (2: batch-norm statistics recomputed before scoring, weights kept for export).
CONFIRM_VERSION = 2


@dataclass(frozen=True)
class Candidate:
    """A spec to confirm: the baseline, or one of the search's best trials."""

    key: str
    trial: int | None
    spec: ArchSpec
    train_spec: TrainSpec
    search_score: float | None = None
    search_se: float | None = None


@dataclass(frozen=True)
class ConfirmFold:
    """One fresh fold: training and validation tensors of the non-test scans."""

    repeat: int
    fold: int
    train: Tensors
    val: Tensors


@dataclass(frozen=True)
class ConfirmSettings:
    """How the confirmation runs.

    Attributes:
        epochs: Epochs per run (every candidate and the baseline alike).
        seed: Base of the training seeds (a fold's seed is shared by every candidate in it).
        folds: Folds per repeat of the fresh cross-validation.
        repeats: Repeats of it.
        fold_seed: Seed of the fresh fold assignment (not the search's).
        top_k: How many of the search's best distinct specs to confirm.
        alpha: Family-wise error rate of "beats the baseline".
        resamples: Bootstrap resamples for the paired difference.
    """

    epochs: int
    seed: int
    folds: int = 2
    repeats: int = 1
    fold_seed: int = 1
    top_k: int = DEFAULT_TOP_K
    alpha: float = DEFAULT_ALPHA
    resamples: int = DEFAULT_RESAMPLES

    def study_name(self, search_study: str) -> str:
        """The companion study that holds the runs; its name pins what they were run with."""
        return (f"{search_study}:confirm{CONFIRM_VERSION}-k{self.folds}r{self.repeats}-e{self.epochs}-s{self.seed}"
                f"-f{self.fold_seed}")

    def to_dict(self) -> dict:
        """JSON-ready dict."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> ConfirmSettings:
        """Read :meth:`to_dict`'s output; unknown keys are ignored."""
        return cls(**{f.name: d[f.name] for f in dataclasses.fields(cls) if f.name in d})


def run_seed(settings: ConfirmSettings, repeat: int, fold: int) -> int:
    """The training seed of every candidate in one fold (paired: common random numbers)."""
    return settings.seed + CONFIRM_SEED_OFFSET + 1000 * repeat + fold


def _identity(spec: dict, train: dict) -> tuple[str, str]:
    return repr(sorted(spec.items())), repr(sorted(train.items()))


# What a trial's architecture is, for confirmation: its convolutional trunk. The dense head, dropout and
# optimiser settings are left out on purpose (see select_candidates).
TRUNK_FIELDS = ("levels", "activation", "pooling", "norm", "padding")


def _trunk(spec: dict) -> str:
    return repr([(k, spec.get(k)) for k in TRUNK_FIELDS])


def select_candidates(study: optuna.Study, size: tuple[int, int, int], top_k: int) -> list[Candidate]:
    """The seed baseline first, then the best complete trials of the ``top_k`` best distinct trunks.

    Distinct means another convolutional trunk (levels, blocks, filters, activation, pooling, norm,
    padding): each trunk is represented by its best-scoring trial. Trials that differ only in the dense
    head, dropout or optimiser settings score within the search's noise of each other (a trial's standard
    error is about 0.04), and TPE samples such near-copies of its best trial often; confirming two of them
    spends a slot on one architecture (a CPU study's top 2 were two 32-32-32 residual nets while the
    64-64-128 family came third). Trials that trained the baseline's own spec and training settings are
    not candidates (the baseline is there anyway).
    """
    base_spec, _ = fit_to_size(baseline(), size)
    base_train = baseline_train()
    base_trial = next((t for t in study.get_trials(deepcopy=False) if t.user_attrs.get(schema.BASELINE)), None)
    base_identity = _identity(base_spec.to_dict(), base_train.to_dict())
    seen: set[str] = set()
    candidates = [Candidate(BASELINE_KEY, base_trial.number if base_trial else None, base_spec, base_train,
                            _value(base_trial), _se(base_trial))]
    for t in ranked_trials(study):
        if len(candidates) > top_k:
            break
        a = t.user_attrs
        if schema.SPEC not in a or schema.TRAIN_SPEC not in a:
            continue
        trunk = _trunk(a[schema.SPEC])
        if trunk in seen or _identity(a[schema.SPEC], a[schema.TRAIN_SPEC]) == base_identity:
            continue
        seen.add(trunk)
        candidates.append(Candidate(f"trial{t.number}", t.number, ArchSpec.from_dict(a[schema.SPEC]),
                                    TrainSpec.from_dict(a[schema.TRAIN_SPEC]), _value(t), _se(t)))
    return candidates


def _value(trial: FrozenTrial | None) -> float | None:
    if trial is None or trial.state != TrialState.COMPLETE or not trial.values:
        return None
    return float(trial.values[0])


def _se(trial: FrozenTrial | None) -> float | None:
    return None if trial is None else trial.user_attrs.get(schema.SCORE_SE)


@dataclass(frozen=True)
class RunResult:
    """One candidate trained and scored on one fold."""

    key: str
    repeat: int
    fold: int
    auc: float
    labels: tuple[int, ...]
    probs: tuple[float, ...]
    reason: str | None = None
    weights: str | None = None

    @classmethod
    def from_trial(cls, t: FrozenTrial) -> RunResult:
        """Read a finished companion-study trial."""
        a = t.user_attrs
        auc = float(a[schema.AUC]) if a.get(schema.AUC) is not None else math.nan
        return cls(a[schema.CANDIDATE], int(a[schema.REPEAT]), int(a[schema.FOLD]), auc,
                   tuple(a.get(schema.LABELS, ())), tuple(a.get(schema.PROBS, ())), a.get(schema.PRUNE_REASON),
                   a.get(schema.WEIGHTS_ARTIFACT))


def finished_runs(study: optuna.Study) -> dict[tuple[str, int, int], RunResult]:
    """Complete runs (and runs pruned for a non-finite loss) keyed by (candidate, repeat, fold)."""
    done = {}
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
            callbacks: Sequence[TrialCallback] = ()) -> dict[tuple[str, int, int], RunResult]:
        """Train what is missing; return every finished run. Ctrl-C fails the running trial and propagates.

        ``callbacks`` are Optuna trial callbacks, called after each finished run (e.g. a database backup).
        """
        done = finished_runs(companion)
        todo = [(f, c) for f in self.folds for c in candidates if (c.key, f.repeat, f.fold) not in done]
        bar = tqdm(total=len(todo), desc="confirmation", unit="run", disable=not self.interactive,
                   dynamic_ncols=True)
        try:
            for i, (fold, candidate) in enumerate(todo, start=1):
                bar.set_description(f"confirm {candidate.key} r{fold.repeat}f{fold.fold}")
                companion.optimize(lambda trial, f=fold, c=candidate: self._objective(trial, c, f, bar),
                                   n_trials=1, catch=(KnownFailure,), callbacks=list(callbacks))
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
            trial.set_user_attr(schema.WEIGHTS_ARTIFACT, self._keep_weights(trial, trained.model))
        return auc

    def _keep_weights(self, trial: optuna.Trial, model: torch.nn.Module) -> str:
        """Upload the run's final weights (batch-norm statistics recomputed) to its trial; the artifact id."""
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / f"confirm-{trial.number}.safetensors"
            save_file({k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}, str(path))
            return upload_artifact(artifact_store=self.store, file_path=str(path), study_or_trial=trial)


def _run_line(trial: FrozenTrial, candidate: Candidate, fold: ConfirmFold) -> str:
    where = f"{candidate.key} repeat {fold.repeat} fold {fold.fold}"
    if trial.state == TrialState.COMPLETE:
        graded = max(trial.user_attrs.get(schema.LABELS) or [0]) > 1  # an ordinal task's fold holds grades above 1
        metric = "mean grade>=k AUC" if graded else "AUC"
        return f"{where}: {metric} {trial.values[0]:.3f}, {trial.user_attrs.get(schema.TRAIN_SECONDS, 0):.0f} s"
    reason = trial.user_attrs.get(schema.PRUNE_REASON) or trial.user_attrs.get(schema.FAIL_REASON) or "see dashboard"
    return f"{where}: {trial.state.name.lower()} ({reason})"


def _paired_bootstrap(runs_a: Sequence[RunResult], runs_b: Sequence[RunResult], n_resamples: int,
                      seed: int) -> np.ndarray:
    """Bootstrap replicates of mean-over-folds (AUC a - AUC b), resampling each fold's scans, paired.

    For ordinal grades the AUC is the mean "grade >= k" AUC of each run's stored expected grades.
    """
    total = np.zeros(n_resamples)
    for f, (a, b) in enumerate(zip(runs_a, runs_b, strict=True)):
        labels = np.asarray(a.labels, dtype=int)
        rows = stratified_resamples(labels, n_resamples, seed + f)
        pa, pb = np.asarray(a.probs)[rows], np.asarray(b.probs)[rows]
        total += grade_auc_rows(labels[rows], pa) - grade_auc_rows(labels[rows], pb)
    return total / max(len(runs_a), 1)


def _to_json(value):
    """Tuples to lists, all the way down: the stored decision is plain JSON."""
    if isinstance(value, dict):
        return {k: _to_json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_to_json(v) for v in value]
    return value


# What a row or a recommendation stored by an older lungct-nas lacks, and what that means (before 912791f
# the confirmation kept no fold models).
OLDER_DECISIONS_LACK = {"members": None}


def _fields_from(cls, d: dict, older_lack: dict) -> dict:
    """``d``'s known fields, with what a decision stored by an older lungct-nas lacks filled in."""
    d = {**older_lack, **d}
    return {f.name: d[f.name] for f in dataclasses.fields(cls) if f.name in d}


@dataclass(frozen=True)
class CandidateResult:
    """One candidate's confirmation: its fold AUCs, its confirmed score and how it compares to the baseline.

    Attributes:
        key: ``baseline`` or ``trial<n>``.
        trial: The search trial it came from (None: the baseline had no trial).
        baseline: Whether it is the seed baseline.
        spec: ``ArchSpec.to_dict()`` of what was trained.
        train_spec: ``TrainSpec.to_dict()``.
        search_score: Its score in the search (None: no complete trial).
        search_se: That score's standard error.
        fold_aucs: Its AUC on each fresh fold, in fold order (None: that run is missing or diverged).
        confirmed: The mean of its fold AUCs (None: not every run finished).
        members: Artifact ids of its fold models' weights (None: not kept, or an older confirmation).
        difference: Its confirmed score minus the baseline's (None for the baseline, or when unscored).
        difference_low: The one-sided lower bound of the paired difference.
        beats_baseline: Whether that lower bound is above 0.
        reason: Why it has no confirmed score (None when it has one).
    """

    key: str
    trial: int | None
    baseline: bool
    spec: dict
    train_spec: dict
    search_score: float | None
    search_se: float | None
    fold_aucs: tuple[float | None, ...]
    confirmed: float | None
    members: tuple[str, ...] | None
    difference: float | None
    difference_low: float | None
    beats_baseline: bool
    reason: str | None

    @classmethod
    def from_dict(cls, d: dict) -> CandidateResult:
        """Read a stored row."""
        f = _fields_from(cls, d, OLDER_DECISIONS_LACK)
        f["fold_aucs"] = tuple(f["fold_aucs"])
        f["members"] = None if f["members"] is None else tuple(f["members"])
        return cls(**f)


@dataclass(frozen=True)
class Recommendation:
    """The candidate the rule recommends, and why."""

    key: str
    trial: int | None
    baseline: bool
    confirmed: float | None
    spec: dict
    train_spec: dict
    members: tuple[str, ...] | None
    why: str

    @classmethod
    def from_dict(cls, d: dict) -> Recommendation:
        """Read a stored recommendation."""
        f = _fields_from(cls, d, OLDER_DECISIONS_LACK)
        f["members"] = None if f["members"] is None else tuple(f["members"])
        return cls(**f)


@dataclass(frozen=True)
class Decision:
    """The confirmation's result, stored on the search study as its ``confirmation`` user attr.

    Attributes:
        rule: The rule applied, in words.
        settings: What the confirmation ran with.
        folds: The (repeat, fold) pairs every candidate ran on.
        candidates: The baseline first, then the search's candidates.
        recommended: What the rule recommends.
        companion_study: The study that holds the runs (None until :func:`confirm` stores the decision).
    """

    rule: str
    settings: ConfirmSettings
    folds: tuple[tuple[int, int], ...]
    candidates: tuple[CandidateResult, ...]
    recommended: Recommendation
    companion_study: str | None = None

    def to_dict(self) -> dict:
        """The stored, JSON-ready form (``companion_study`` only once it is known)."""
        d = _to_json(dataclasses.asdict(self))
        if d["companion_study"] is None:
            del d["companion_study"]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> Decision:
        """Read a stored decision, including one stored by an older lungct-nas."""
        return cls(rule=d["rule"], settings=ConfirmSettings.from_dict(d["settings"]),
                   folds=tuple((int(r), int(f)) for r, f in d["folds"]),
                   candidates=tuple(CandidateResult.from_dict(r) for r in d["candidates"]),
                   recommended=Recommendation.from_dict(d["recommended"]), companion_study=d.get("companion_study"))

    def candidate(self, key: str) -> CandidateResult | None:
        """The row of candidate ``key``, if it was confirmed."""
        return next((r for r in self.candidates if r.key == key), None)


def stored_decision(study: optuna.Study) -> Decision | None:
    """The confirmation's decision stored on ``study``, or None when it has not been confirmed yet."""
    d = study.user_attrs.get(schema.STUDY_CONFIRMATION)
    return Decision.from_dict(d) if d else None


def decide(candidates: Sequence[Candidate], runs: dict[tuple[str, int, int], RunResult],
           folds: Sequence[tuple[int, int]], settings: ConfirmSettings) -> Decision:
    """Apply the rule (module docstring) to finished runs.

    Args:
        candidates: The baseline first, then the search's candidates.
        runs: Finished runs keyed by (candidate, repeat, fold).
        folds: The (repeat, fold) pairs that every candidate should have run.
        settings: The rule's alpha and resamples.

    Raises:
        NoRecommendation: No candidate finished all its runs.
    """
    k = max(len(candidates) - 1, 1)
    level = settings.alpha / k
    rows: list[CandidateResult] = []
    base_runs = [runs.get((BASELINE_KEY, r, f)) for r, f in folds]
    base_ok = all(run is not None and math.isfinite(run.auc) for run in base_runs)
    for c in candidates:
        mine = [runs.get((c.key, r, f)) for r, f in folds]
        ok = all(run is not None and math.isfinite(run.auc) for run in mine)
        confirmed = float(np.mean([run.auc for run in mine])) if ok else None
        difference = difference_low = None
        if ok and base_ok and c.key != BASELINE_KEY:
            replicates = _paired_bootstrap(mine, base_runs, settings.resamples, settings.seed)
            replicates = replicates[np.isfinite(replicates)]
            difference = confirmed - float(np.mean([run.auc for run in base_runs]))
            difference_low = float(np.quantile(replicates, level)) if replicates.size else None
        rows.append(CandidateResult(
            key=c.key, trial=c.trial, baseline=c.key == BASELINE_KEY, spec=c.spec.to_dict(),
            train_spec=c.train_spec.to_dict(), search_score=c.search_score, search_se=c.search_se,
            fold_aucs=tuple(None if run is None else _finite(run.auc) for run in mine), confirmed=confirmed,
            members=tuple(run.weights for run in mine) if ok and all(run.weights for run in mine) else None,
            difference=difference, difference_low=difference_low,
            beats_baseline=difference_low is not None and difference_low > 0.0,
            reason=None if ok else next((run.reason for run in mine if run is not None and run.reason),
                                        "runs missing or diverged")))
    winners = [r for r in rows if r.beats_baseline]
    if winners:
        chosen = max(winners, key=lambda r: r.confirmed)
        why = (f"{chosen.key} beats the seed baseline by {chosen.difference:+.3f} AUC; its one-sided "
               f"{100 * (1 - level):.1f}% lower bound ({chosen.difference_low:+.3f}) is above 0")
    elif base_ok:
        chosen = rows[0]
        why = ("no candidate beats the seed baseline by more than the paired noise (one-sided "
               f"{100 * (1 - level):.1f}% lower bound of the difference above 0), so the baseline stays")
    else:
        scored = [r for r in rows if r.confirmed is not None]
        if not scored:
            raise NoRecommendation("confirmation: no candidate finished its runs; nothing can be recommended")
        chosen = max(scored, key=lambda r: r.confirmed)
        why = "the seed baseline's runs diverged or are missing; the best confirmed candidate is recommended"
    rule = (f"recommend the best-confirmed candidate whose paired AUC difference to the seed baseline has "
            f"a one-sided {100 * (1 - level):.1f}% lower bound above 0 (alpha {settings.alpha} over {k} "
            "candidates, Bonferroni); else the seed baseline")
    recommended = Recommendation(key=chosen.key, trial=chosen.trial, baseline=chosen.baseline,
                                 confirmed=chosen.confirmed, spec=chosen.spec, train_spec=chosen.train_spec,
                                 members=chosen.members, why=why)
    return Decision(rule=rule, settings=settings, folds=tuple((int(r), int(f)) for r, f in folds),
                    candidates=tuple(rows), recommended=recommended)


def _finite(value: float) -> float | None:
    return float(value) if math.isfinite(value) else None


def confirm(study: optuna.Study, storage: optuna.storages.BaseStorage, folds: Sequence[ConfirmFold],
            settings: ConfirmSettings, size: tuple[int, int, int], device, amp: bool = False,
            train_fn: TrainFn = train_model, progress: bool | None = None,
            artifacts: str | Path | None = None,
            callbacks: Sequence[TrialCallback] = ()) -> Decision:
    """Run (or resume) the confirmation of ``study`` and store the decision on it.

    ``callbacks`` are Optuna trial callbacks, called after each finished confirmation run.

    ``artifacts`` is the artifact store's folder where each run's weights are kept (see
    :class:`ConfirmRunner`); the decision lists the artifact ids of every candidate's fold models.

    Returns:
        The decision (see :func:`decide`), also stored as the study's ``confirmation`` user attr.
    """
    candidates = select_candidates(study, size, settings.top_k)
    companion = optuna.create_study(study_name=settings.study_name(study.study_name), storage=storage,
                                    load_if_exists=True, direction="maximize",
                                    sampler=optuna.samplers.RandomSampler(seed=settings.seed))
    for line in recover_trials(companion):  # a run whose process died: the runner trains that pair again
        print(f"confirmation: {line}", file=sys.stderr)
    runner = ConfirmRunner(folds, settings, device, amp, train_fn, progress, artifacts)
    runs = runner.run(companion, candidates, callbacks)
    decision = dataclasses.replace(decide(candidates, runs, [(f.repeat, f.fold) for f in folds], settings),
                                   companion_study=companion.study_name)
    study.set_user_attr(schema.STUDY_CONFIRMATION, decision.to_dict())
    return decision


def format_decision(decision: Decision | dict) -> str:
    """The confirmation in a few lines, for the console (a stored dict is read first)."""
    if isinstance(decision, dict):
        decision = Decision.from_dict(decision)
    s = decision.settings
    lines = [f"confirmation ({s.folds}-fold x {s.repeats} on fresh folds, {s.epochs} epochs, new seeds):"]
    lines.append(f"  {'candidate':<12} {'search':>7} {'confirmed':>9} {'vs baseline':>11} {'lower bound':>11}")
    for r in decision.candidates:
        search = f"{r.search_score:.3f}" if r.search_score is not None else "-"
        confirmed = f"{r.confirmed:.3f}" if r.confirmed is not None else "failed"
        diff = f"{r.difference:+.3f}" if r.difference is not None else "-"
        low = f"{r.difference_low:+.3f}" if r.difference_low is not None else "-"
        lines.append(f"  {r.key:<12} {search:>7} {confirmed:>9} {diff:>11} {low:>11}")
    rec = decision.recommended
    lines.append(f"recommended: {rec.key} ({rec.why})")
    return "\n".join(lines)
