"""The rule that picks the recommended model from the confirmation's runs (:func:`decide`), and its statistics.

Explained in docs/explanation/choosing.md; audited in ``benchmarks/bench_decision.py``:

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

Measured on simulated confirmations from the measured noise at the default data (130 non-test scans, k = 2;
benchmarks/RESULTS.md): a candidate truly +0.05 better ships 71% of the time (with one look alone: 61%), +0.03
better 46% (39%), one truly 0.02 worse 4.5% (4.4%), 0.05 worse 0.5%; the second look trains 6 more runs, only
when a candidate leads (``RULE_RATES``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from optuna.trial import FrozenTrial
from scipy import stats

from search.selection.candidates import BASELINE_KEY, Candidate
from search.selection.decision import (
    BETTER,
    CHEAPER,
    DEFAULT_CONFIRM_FOLDS,
    DEFAULT_TOP_K,
    SIGNIFICANT,
    CandidateResult,
    ConfirmSettings,
    Decision,
    Recommendation,
)
from search.stats.intervals import grade_auc_rows, stratified_resamples
from search.study.storage import schema


class NoRecommendation(ValueError):
    """The confirmation finished without a candidate whose runs all finished: nothing can be recommended.

    Not a bug: every run of every candidate diverged or ran out of memory (each failure is recorded on
    its run); the search's trials are kept and the confirmation can be resumed with other settings.
    ``search.run`` says so in one line; a ``ValueError``, so callers that catch ValueError still do.
    """


# What benchmarks/bench_decision.py measured for the default rule at the default data (stated where users meet it).
RULE_RATES = ("measured on simulated confirmations from the measured scan and seed noise at the default data "
              "(130 non-test scans, 2 candidates; benchmarks/bench_decision.py): a candidate truly +0.05 AUC better "
              "ships 71% of the time, +0.03 better 46%, one truly 0.02 worse 4.5%")


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
