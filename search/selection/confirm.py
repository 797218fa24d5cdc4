"""The confirmation stage: re-evaluate the search's best specs against the seed baseline before choosing.

A search's best score is the maximum of many noisy estimates, so it is optimistic by construction. After
the trials, the top-k distinct specs and the seed baseline are trained again on fresh cross-validation
folds of the non-test scans (another fold assignment, new training seeds, the same seeds for every
candidate within a fold so the comparison is paired) and scored at the final epoch.

The rule that picks the recommended model (explained in docs/explanation/choosing.md; audited in
``benchmarks/bench_decision.py``):

- a candidate's confirmed score is the mean of its fold AUCs; its *difference* is the mean over its runs of
  its AUC minus the baseline's on the same fold (paired: the same scans, the same training seed);
- first look: the top-k candidates and the baseline on one repeat of fresh folds. The *leader* is the
  candidate with the largest difference; if no difference is above 0, the baseline stays;
- second look: the leader and the baseline on a second repeat of fresh folds (another assignment, new
  seeds). The leader replaces the baseline when it is **not worse by more than the margin** (0.02 AUC):
  the one-sided lower bound of its difference at level ``alpha / k`` (Bonferroni over the k candidates it
  was picked from) is above -0.02, where the standard error carries both noises a confirmation has: the
  scans' (a stratified bootstrap over each fold's validation scans, the same resamples for both models;
  repeats re-score the same scans, so they do not shrink it) and the training seed's (each run of each
  model adds ``seed_sd``, 0.031 AUC as measured on export-style runs, or more where this confirmation's
  runs disagree more) — and it is either ahead on the difference or cheaper than the baseline;
- the shipped model is then *significantly better* (the lower bound is above 0), *better and not worse by
  more than the margin* (ahead, lower bound above -0.02), or *as good and cheaper* (not ahead, but not worse
  by more than the margin, at fewer GFLOPs).

Measured on simulated confirmations from the measured noise at the default data (130 non-test scans, k = 2):
a candidate truly +0.05 better ships 71% of the time (the one-look rule before it: 61%), +0.03 better 46%
(39%), one truly 0.02 worse 4.5% (4.4%), 0.05 worse 0.5%; the second look trains 6 more runs, only when a
candidate leads (``RULE_RATES``).

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
from scipy import stats
from tqdm.auto import tqdm

from lungct.errors import UsageError
from search.stats.intervals import grade_auc_rows, stratified_resamples
from search.stats.metrics import severity_score, task_metrics
from search.study.artifacts import AtomicArtifactStore
from search.study.recovery import describe_worker, recover_trials
from search.study.storage import fail_running, schema
from search.study.trial_run import KnownFailure, trial_run
from search.study.trials import ranked_trials
from search.training.data import Tensors
from search.training.loop import EpochResult, device_name, recalibrate_batchnorm
from search.training.unit import Trained, predict_finite, train_model
from space import ArchSpec, TrainSpec, baseline, baseline_train, cost, fit_to_size

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
# A shipped candidate may be worse than the seed baseline by at most this much AUC (at the rule's level).
DEFAULT_MARGIN = 0.02
# One trained model's AUC moves with its training seed by this SD: the fidelity audit's export-style runs,
# 7 specs trained with two seeds each (benchmarks/RESULTS.md). A paired difference of two runs carries it twice.
DEFAULT_SEED_SD = 0.031
# The second look's folds: another assignment than the first repeat's (fold_seed) and the search's.
SECOND_REPEAT_FOLD_SEED = 1000
# What benchmarks/bench_decision.py measured for the default rule at the default data (stated where users meet it).
RULE_RATES = ("measured on simulated confirmations from the measured scan and seed noise at the default data "
              "(130 non-test scans, 2 candidates; benchmarks/bench_decision.py): a candidate truly +0.05 AUC better "
              "ships 71% of the time, +0.03 better 46%, one truly 0.02 worse 4.5%")
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
    gflops: float | None = None
    params: int | None = None


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
        alpha: Family-wise error rate of "not worse than the baseline by more than the margin".
        resamples: Bootstrap resamples for the paired difference.
        margin: How much worse (AUC) than the baseline a shipped candidate may be at that level.
        seed_sd: The least training-seed SD of one run's AUC the rule assumes.
        second_repeat: Whether the leader and the baseline get a second repeat of fresh folds before the
            decision (the rule decides on one repeat when False).
        speed_limit: Leave out a trunk whose search trial trained more than this many times slower per sample
            than the seed baseline's own trial, taking the next trunk in its place (None: no limit; a run with a
            time budget sets one, ``search.selection.budget.CONFIRM_SPEED_LIMIT``).
    """

    epochs: int
    seed: int
    folds: int = 2
    repeats: int = 1
    fold_seed: int = 1
    top_k: int = DEFAULT_TOP_K
    alpha: float = DEFAULT_ALPHA
    resamples: int = DEFAULT_RESAMPLES
    margin: float = DEFAULT_MARGIN
    seed_sd: float = DEFAULT_SEED_SD
    second_repeat: bool = True
    speed_limit: float | None = None

    def study_name(self, search_study: str) -> str:
        """The companion study that holds the runs; its name pins what they were run with."""
        return (f"{search_study}:confirm{CONFIRM_VERSION}-k{self.folds}r{self.repeats}-e{self.epochs}-s{self.seed}"
                f"-f{self.fold_seed}")

    def to_dict(self) -> dict:
        """JSON-ready dict (``speed_limit`` only when set, so a run without a budget stores what it always did)."""
        d = dataclasses.asdict(self)
        if d["speed_limit"] is None:
            del d["speed_limit"]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> ConfirmSettings:
        """Read :meth:`to_dict`'s output; unknown keys are ignored.

        Settings stored before the margin rule read as the rule they ran: one look, a lower bound above 0,
        scan noise only.
        """
        if "margin" not in d:
            d = {**d, "margin": 0.0, "seed_sd": 0.0, "second_repeat": False}
        return cls(**{f.name: d[f.name] for f in dataclasses.fields(cls) if f.name in d})


def run_seed(settings: ConfirmSettings, repeat: int, fold: int) -> int:
    """The training seed of every candidate in one fold (paired: common random numbers)."""
    return settings.seed + CONFIRM_SEED_OFFSET + 1000 * repeat + fold


def _identity(spec: dict, train: dict) -> tuple[str, str]:
    return repr(sorted(spec.items())), repr(sorted(train.items()))


# What a trial's architecture is, for confirmation: its convolutional trunk. The dense head, dropout and
# optimiser settings are left out on purpose (see select_candidates).
TRUNK_FIELDS = ("levels", "activation", "pooling", "norm", "padding")


def trunk_key(spec: dict) -> str:
    """The convolutional trunk of a stored spec (:data:`TRUNK_FIELDS`), as a comparable key."""
    return repr([(k, spec.get(k)) for k in TRUNK_FIELDS])


@dataclass(frozen=True)
class SlowTrunk:
    """A trunk left out of the confirmation for its speed: its best trial and how much slower it trained."""

    trial: int
    samples_per_s: float
    times_slower: float

    def line(self, limit: float) -> str:
        return (f"trial {self.trial} left out of the confirmation: it trained {self.times_slower:.1f}x slower per "
                f"sample than the seed baseline ({self.samples_per_s:g} samples/s), above the budget's limit of "
                f"{limit:g}x, so its runs would not fit; the next trunk takes its place (--budget none confirms it; "
                f"search.export --trial {self.trial} ships it unconfirmed)")


def select_candidates(study: optuna.Study, size: tuple[int, int, int], top_k: int,
                      speed_limit: float | None = None, left_out: list[SlowTrunk] | None = None) -> list[Candidate]:
    """The seed baseline first, then the best complete trials of the ``top_k`` best distinct trunks.

    Distinct means another convolutional trunk (levels, blocks, filters, activation, pooling, norm,
    padding): each trunk is represented by its best-scoring trial. Trials that differ only in the dense
    head, dropout or optimiser settings score within the search's noise of each other (a trial's standard
    error is about 0.04), and TPE samples such near-copies of its best trial often; confirming two of them
    spends a slot on one architecture (a CPU study's top 2 were two 32-32-32 residual nets while the
    64-64-128 family came third). Trials that trained the baseline's own spec and training settings are
    not candidates (the baseline is there anyway).

    With ``speed_limit``, a trunk whose best trial trained more than that many times slower per sample than
    the baseline's own trial is skipped (appended to ``left_out``) and the next trunk is taken: under a time
    budget, one slow trunk at the top (a residual-inception net trained 5x slower than the baseline at half its
    GFLOPs) would otherwise price the confirmation past the deadline and stop the search early.
    """
    base_spec, _ = fit_to_size(baseline(), size)
    base_train = baseline_train()
    base_trial = next((t for t in study.get_trials(deepcopy=False) if t.user_attrs.get(schema.BASELINE)), None)
    base_identity = _identity(base_spec.to_dict(), base_train.to_dict())
    base_rate = base_trial.user_attrs.get(schema.SAMPLES_PER_S) if base_trial is not None else None
    seen: set[str] = set()
    candidates = [Candidate(BASELINE_KEY, base_trial.number if base_trial else None, base_spec, base_train,
                            _value(base_trial), _se(base_trial), *_cost(base_spec, size))]
    for t in ranked_trials(study):
        if len(candidates) > top_k:
            break
        a = t.user_attrs
        if schema.SPEC not in a or schema.TRAIN_SPEC not in a:
            continue
        trunk = trunk_key(a[schema.SPEC])
        if trunk in seen or _identity(a[schema.SPEC], a[schema.TRAIN_SPEC]) == base_identity:
            continue
        seen.add(trunk)
        rate = a.get(schema.SAMPLES_PER_S)
        if speed_limit is not None and base_rate and rate and base_rate / rate > speed_limit:
            if left_out is not None:
                left_out.append(SlowTrunk(t.number, rate, round(base_rate / rate, 2)))
            continue
        spec = ArchSpec.from_dict(a[schema.SPEC])
        candidates.append(Candidate(f"trial{t.number}", t.number, spec, TrainSpec.from_dict(a[schema.TRAIN_SPEC]),
                                    _value(t), _se(t), *_cost(spec, size)))
    return candidates


def _cost(spec: ArchSpec, size: tuple[int, int, int]) -> tuple[float, int]:
    c = cost(spec, size)
    return round(c.gflops, 4), c.params


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


def paired_se(mine: Sequence[RunResult], base: Sequence[RunResult], settings: ConfirmSettings) -> float:
    """The standard error of a candidate's mean paired difference to the baseline: scan and seed noise.

    - Scans: the bootstrap variance of one repeat's mean over folds, averaged over the repeats (a repeat
      re-scores the same scans, so repeats do not shrink it).
    - Seeds: each run of each model adds a training-seed variance ``sd ** 2``, so the mean over n paired runs
      carries ``2 sd ** 2 / n``; ``sd`` is ``settings.seed_sd`` (measured) or, where these runs disagree more
      than their scans explain, what they say.
    """
    by_repeat: dict[int, list[int]] = {}
    for i, run in enumerate(mine):
        by_repeat.setdefault(run.repeat, []).append(i)
    scan_vars, fold_vars = [], []
    for r, rows in sorted(by_repeat.items()):
        reps = _paired_bootstrap([mine[i] for i in rows], [base[i] for i in rows], settings.resamples,
                                 settings.seed + 7919 * r)
        reps = reps[np.isfinite(reps)]
        if reps.size > 1:
            scan_vars.append(float(np.var(reps, ddof=1)))
            fold_vars.append(scan_vars[-1] * len(rows))  # one fold's share: the mean over folds divides it
    scan_var = float(np.mean(scan_vars)) if scan_vars else 0.0
    diffs = np.array([a.auc - b.auc for a, b in zip(mine, base, strict=True)])
    seed_var = settings.seed_sd ** 2
    if diffs.size > 2 and fold_vars:  # runs that disagree more than their scans explain: more seed noise
        seed_var = max(seed_var, (float(np.var(diffs, ddof=1)) - float(np.mean(fold_vars))) / 2)
    return math.sqrt(scan_var + 2 * seed_var / max(diffs.size, 1))


def _to_json(value):
    """Tuples to lists, all the way down: the stored decision is plain JSON."""
    if isinstance(value, dict):
        return {k: _to_json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_to_json(v) for v in value]
    return value


# What a row or a recommendation stored by an older lungct-nas lacks, and what that means (before 912791f
# the confirmation kept no fold models).
OLDER_DECISIONS_LACK = {"members": None, "se": None, "verdict": None, "gflops": None, "params": None}

# Why a candidate may replace the seed baseline, in the words every output uses.
SIGNIFICANT = "significantly better"
BETTER = "better, and not worse by more than the margin"
CHEAPER = "as good and cheaper"


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
        difference: The mean over its runs of its AUC minus the baseline's on the same fold (None for the
            baseline, or when unscored).
        difference_low: The one-sided lower bound of that difference at the rule's level (scan and seed noise;
            scan noise only in decisions stored before the margin rule).
        beats_baseline: Whether that lower bound is above 0 (significantly better).
        reason: Why it has no confirmed score (None when it has one).
        se: The standard error of ``difference`` (scan and seed noise).
        verdict: Why it may replace the baseline (``SIGNIFICANT``, ``BETTER``, ``CHEAPER``), None when it may
            not (or it is the baseline, or was decided by the rule before the margin).
        gflops: Its cost per scan at the study's size.
        params: Its trainable parameters.
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
    se: float | None = None
    verdict: str | None = None
    gflops: float | None = None
    params: int | None = None

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
    verdict: str | None = None

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
        left_out: Search trials whose trunk ranked among the top but trained too slowly to confirm in the time
            budget (``ConfirmSettings.speed_limit``).
    """

    rule: str
    settings: ConfirmSettings
    folds: tuple[tuple[int, int], ...]
    candidates: tuple[CandidateResult, ...]
    recommended: Recommendation
    companion_study: str | None = None
    left_out: tuple[int, ...] = ()

    def to_dict(self) -> dict:
        """The stored, JSON-ready form (``companion_study`` once known, ``left_out`` when a trunk was left out)."""
        d = _to_json(dataclasses.asdict(self))
        d["settings"] = self.settings.to_dict()
        if d["companion_study"] is None:
            del d["companion_study"]
        if not d["left_out"]:
            del d["left_out"]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> Decision:
        """Read a stored decision, including one stored by an older lungct-nas."""
        return cls(rule=d["rule"], settings=ConfirmSettings.from_dict(d["settings"]),
                   folds=tuple((int(r), int(f)) for r, f in d["folds"]),
                   candidates=tuple(CandidateResult.from_dict(r) for r in d["candidates"]),
                   recommended=Recommendation.from_dict(d["recommended"]), companion_study=d.get("companion_study"),
                   left_out=tuple(int(n) for n in d.get("left_out", ())))

    def candidate(self, key: str) -> CandidateResult | None:
        """The row of candidate ``key``, if it was confirmed."""
        return next((r for r in self.candidates if r.key == key), None)


def stored_decision(study: optuna.Study) -> Decision | None:
    """The confirmation's decision stored on ``study``, or None when it has not been confirmed yet."""
    d = study.user_attrs.get(schema.STUDY_CONFIRMATION)
    return Decision.from_dict(d) if d else None


def leader(candidates: Sequence[Candidate], runs: dict[tuple[str, int, int], RunResult],
           folds: Sequence[tuple[int, int]]) -> Candidate | None:
    """The candidate the second look confirms: the largest mean paired difference to the baseline on ``folds``,
    if it is above 0 and every run of it and of the baseline finished; else None (the baseline stays)."""
    base = [runs.get((BASELINE_KEY, r, f)) for r, f in folds]
    if not all(run is not None and math.isfinite(run.auc) for run in base):
        return None
    best, best_diff = None, 0.0
    for c in candidates:
        mine = [runs.get((c.key, r, f)) for r, f in folds]
        if c.key == BASELINE_KEY or not all(run is not None and math.isfinite(run.auc) for run in mine):
            continue
        # Every run finished (checked above); the test tells the type checker so.
        diff = float(np.mean([a.auc - b.auc for a, b in zip(mine, base, strict=True)
                              if a is not None and b is not None]))
        if diff > best_diff:
            best, best_diff = c, diff
    return best


def _cost_words(row: CandidateResult, base: CandidateResult) -> str:
    if row.gflops is None or base.gflops is None or not base.gflops:
        return ""
    params = (f"{row.params:,} parameters against the baseline's {base.params:,}, "
              if row.params is not None and base.params else "")
    return f"; {params}{row.gflops:.2f} GFLOPs per scan against {base.gflops:.2f} ({row.gflops / base.gflops:.2f}x)"


def decide(candidates: Sequence[Candidate], runs: dict[tuple[str, int, int], RunResult],
           folds: Sequence[tuple[int, int]], settings: ConfirmSettings,
           second: Sequence[tuple[int, int]] = ()) -> Decision:
    """Apply the rule (module docstring) to finished runs.

    Args:
        candidates: The baseline first, then the search's candidates.
        runs: Finished runs keyed by (candidate, repeat, fold).
        folds: The (repeat, fold) pairs of the first look, which every candidate should have run.
        settings: The rule's alpha, margin, seed noise and resamples.
        second: The (repeat, fold) pairs of the second look (the leader and the baseline). With
            ``settings.second_repeat`` a candidate may replace the baseline only with runs on all of them.

    Raises:
        NoRecommendation: No candidate finished all its runs.
    """
    k = max(len(candidates) - 1, 1)
    level = settings.alpha / k
    z = float(stats.norm.ppf(1 - level))
    rows: list[CandidateResult] = []
    need_second = settings.second_repeat
    base_runs = [runs.get((BASELINE_KEY, r, f)) for r, f in folds]
    base_ok = all(run is not None and math.isfinite(run.auc) for run in base_runs)
    for c in candidates:
        mine = [runs.get((c.key, r, f)) for r, f in folds]
        ok = all(run is not None and math.isfinite(run.auc) for run in mine)
        pairs = list(zip(mine, base_runs, strict=True))
        extra = [(runs.get((c.key, r, f)), runs.get((BASELINE_KEY, r, f))) for r, f in second]
        looked_twice = bool(second) and all(a is not None and b is not None and math.isfinite(a.auc)
                                            and math.isfinite(b.auc) for a, b in extra)
        if ok and looked_twice:
            pairs += extra
        scored = [a for a, _ in pairs]
        # With ok (and base_ok) no run in these is None: the `is not None` tests tell the type checker so.
        confirmed = float(np.mean([run.auc for run in scored if run is not None])) if ok else None
        difference = difference_low = se = None
        verdict = None
        if ok and base_ok and c.key != BASELINE_KEY:
            done = [(a, b) for a, b in pairs if a is not None and b is not None]
            a_runs, b_runs = [a for a, _ in done], [b for _, b in done]
            difference = float(np.mean([a.auc - b.auc for a, b in done]))
            se = paired_se(a_runs, b_runs, settings)
            difference_low = difference - z * se
            cheaper = c.gflops is not None and candidates[0].gflops is not None and c.gflops < candidates[0].gflops
            if difference_low > -settings.margin and (difference > 0 or cheaper) and (looked_twice or not need_second):
                verdict = SIGNIFICANT if difference_low > 0 else BETTER if difference > 0 else CHEAPER
        weights = [run.weights for run in mine if run is not None]
        rows.append(CandidateResult(
            key=c.key, trial=c.trial, baseline=c.key == BASELINE_KEY, spec=c.spec.to_dict(),
            train_spec=c.train_spec.to_dict(), search_score=c.search_score, search_se=c.search_se,
            fold_aucs=tuple(None if run is None else _finite(run.auc) for run in scored), confirmed=confirmed,
            members=tuple(w for w in weights if w) if ok and all(weights) else None,
            difference=difference, difference_low=difference_low,
            beats_baseline=difference_low is not None and difference_low > 0.0,
            reason=None if ok else next((run.reason for run in mine if run is not None and run.reason),
                                        "runs missing or diverged"),
            se=se, verdict=verdict, gflops=c.gflops, params=c.params))
    base_row = rows[0]
    bound = f"one-sided {100 * (1 - level):.1f}% lower bound"
    winners = [r for r in rows if r.verdict is not None]
    if winners:
        # Accuracy first; among candidates that are only as good, the cheapest.
        # A winner has a difference, and one not ahead is cheaper, so has a cost.
        ahead = [r for r in winners if r.difference is not None and r.difference > 0]
        chosen = (max(ahead, key=lambda r: -math.inf if r.difference is None else r.difference) if ahead
                  else min(winners, key=lambda r: math.inf if r.gflops is None else r.gflops))
        n = sum(a is not None for a in chosen.fold_aucs)
        assert chosen.verdict is not None  # a winner
        head = {SIGNIFICANT: f"{chosen.key} is significantly better than the seed baseline",
                BETTER: f"{chosen.key} is better than the seed baseline and not worse by more than "
                        f"{settings.margin:.2f} AUC",
                CHEAPER: f"{chosen.key} is as good as the seed baseline and cheaper"}[chosen.verdict]
        why = (f"{head}: {chosen.difference:+.3f} AUC over {n} paired runs, {bound} {chosen.difference_low:+.3f} "
               f"(scan and seed noise, SE {chosen.se:.3f}){_cost_words(chosen, base_row)}")
    elif base_ok:
        chosen = base_row
        tried = [r for r in rows[1:] if r.difference is not None]
        # The leader is the one the second look was for (it led on the first repeat), not whichever candidate is
        # furthest ahead over all runs: one without a second look may be ahead of it by then.
        looked = [r for r in tried if any(a is not None for a in r.fold_aucs[len(folds):])]
        lead = (max(looked or tried, key=lambda r: -math.inf if r.difference is None else r.difference) if tried
                else None)
        if lead is not None and looked and lead.difference is not None and lead.difference <= 0:
            why = (f"the leader {lead.key} fell back on its second look ({lead.difference:+.3f} AUC over both "
                   "repeats), so the baseline stays")
        elif lead is None or lead.difference is None or lead.difference <= 0:
            why = "no candidate is ahead of the seed baseline on fresh folds, so the baseline stays"
        elif need_second and not any(a is not None for a in lead.fold_aucs[len(folds):]):
            why = (f"the leader {lead.key} ({lead.difference:+.3f}) has no second look yet, so the baseline stays "
                   "for now")
        else:
            why = (f"{lead.key} is {lead.difference:+.3f} AUC ahead, but its {bound} ({lead.difference_low:+.3f}, SE "
                   f"{lead.se:.3f}) does not rule out being worse than the seed baseline by more than "
                   f"{settings.margin:.2f}, so the baseline stays")
    else:
        finished = [r for r in rows if r.confirmed is not None]
        if not finished:
            raise NoRecommendation("confirmation: no candidate finished its runs; nothing can be recommended")
        chosen = max(finished, key=lambda r: -math.inf if r.confirmed is None else r.confirmed)
        why = "the seed baseline's runs diverged or are missing; the best confirmed candidate is recommended"
    recommended = Recommendation(key=chosen.key, trial=chosen.trial, baseline=chosen.baseline,
                                 confirmed=chosen.confirmed, spec=chosen.spec, train_spec=chosen.train_spec,
                                 members=chosen.members, why=why, verdict=chosen.verdict)
    return Decision(rule=rule_text(settings, k), settings=settings,
                    folds=tuple((int(r), int(f)) for r, f in (*folds, *second)),
                    candidates=tuple(rows), recommended=recommended)


def rule_text(settings: ConfirmSettings, k: int) -> str:
    """The rule in words, with its measured error rates where they were measured (the default rule)."""
    level = settings.alpha / k
    look = ("the leader (the candidate furthest ahead of the seed baseline on the first repeat of fresh folds) "
            "and the baseline get a second repeat; the leader ships" if settings.second_repeat else
            "the best-confirmed candidate ships")
    text = (f"{look} when it is not worse than the seed baseline by more than {settings.margin:.2f} AUC: the "
            f"one-sided {100 * (1 - level):.1f}% lower bound of its paired difference (alpha {settings.alpha:g} "
            f"over {k} candidate{'s' * (k != 1)}, Bonferroni; scan noise by bootstrap, training-seed noise at least "
            f"{settings.seed_sd:.3f} per run) is above {-settings.margin:+.2f}, and it is ahead of the baseline or "
            "cheaper; else the seed baseline stays")
    defaults = ConfirmSettings(epochs=settings.epochs, seed=settings.seed, folds=DEFAULT_CONFIRM_FOLDS)
    same = all(getattr(settings, f) == getattr(defaults, f)
               for f in ("folds", "repeats", "alpha", "margin", "seed_sd", "second_repeat"))
    return f"{text}; {RULE_RATES}" if same and k == DEFAULT_TOP_K else text


def _finite(value: float) -> float | None:
    return float(value) if math.isfinite(value) else None


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


def format_decision(decision: Decision | dict) -> str:
    """The confirmation in a few lines, for the console (a stored dict is read first)."""
    if isinstance(decision, dict):
        decision = Decision.from_dict(decision)
    s = decision.settings
    looks = " (+ a second repeat for the leader)" if s.second_repeat else ""
    lines = [f"confirmation ({s.folds}-fold x {s.repeats}{looks} on fresh folds, {s.epochs} epochs, new seeds):"]
    lines.append(f"  {'candidate':<12} {'search':>7} {'confirmed':>9} {'vs baseline':>11} {'lower bound':>11} "
                 f"{'GFLOPs':>7}  verdict")
    for r in decision.candidates:
        search = f"{r.search_score:.3f}" if r.search_score is not None else "-"
        confirmed = f"{r.confirmed:.3f}" if r.confirmed is not None else "failed"
        diff = f"{r.difference:+.3f}" if r.difference is not None else "-"
        low = f"{r.difference_low:+.3f}" if r.difference_low is not None else "-"
        gflops = f"{r.gflops:.2f}" if r.gflops is not None else "-"
        verdict = "reference" if r.baseline else (r.verdict or "-")
        lines.append(f"  {r.key:<12} {search:>7} {confirmed:>9} {diff:>11} {low:>11} {gflops:>7}  {verdict}")
    rec = decision.recommended
    if decision.left_out:
        lines.append(f"left out for their training speed (--budget): trial{'s' * (len(decision.left_out) > 1)} "
                     f"{', '.join(str(n) for n in decision.left_out)}")
    lines.append(f"rule: {decision.rule}")
    lines.append(f"recommended: {rec.key} ({rec.why})")
    return "\n".join(lines)
