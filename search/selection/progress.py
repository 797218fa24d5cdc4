"""Console output of a search: a bar over trials (best score, ETA), a bar over epochs, a summary table.

On a terminal the bars redraw in place; elsewhere (a log file, CI) each finished trial prints one
line instead, so logs stay readable. Nothing prints per batch.
"""

from __future__ import annotations

import math
import sys

import optuna
from optuna.trial import FrozenTrial, TrialState
from tqdm.auto import tqdm

from search.study import schema
from search.study.notes import BINARY_SCORE, ScoreName, study_score_name
from search.training.loop import EpochResult
from space import describe_spec


def trial_line(trial: FrozenTrial, total: int | None = None, score: ScoreName = BINARY_SCORE) -> str:
    """One line about a finished trial, its score named for the study's task (``CV AUC``, ``CV grade>=k AUC``)."""
    of = f"/{total}" if total else ""
    attrs = trial.user_attrs
    tag = " [baseline]" if attrs.get(schema.BASELINE) else ""
    cost = ""
    if "params" in attrs:
        cost = f", {attrs['params'] / 1e6:.2f}M params, {attrs['gflops']:.2f} GFLOPs"
    epochs = ""
    if "epochs_run" in attrs:
        epochs = f", {attrs['epochs_run']} epochs, {attrs.get('wall_seconds', 0):.0f} s"
    if trial.state == TrialState.COMPLETE:
        value = trial.values[0]
        se = attrs.get(schema.SCORE_SE)
        head = f"{score.cv} {value:.3f}" + (f" +- {se:.3f}" if se is not None else "")
    elif trial.state == TrialState.PRUNED:
        head = f"pruned ({attrs.get(schema.PRUNE_REASON, 'by the pruner')})"
    else:
        head = f"{trial.state.name.lower()} ({attrs.get(schema.FAIL_REASON, 'see optuna-dashboard')})"
    return f"trial {trial.number}{of}{tag}: {head}{cost}{epochs}"


class SearchProgress:
    """Bars (or lines) for a run of ``n_trials`` trials of at most ``epochs`` epochs each.

    Several trials may run at once (``search.run --jobs N``): each running trial has its own epoch bar.
    """

    def __init__(self, n_trials: int, epochs: int, enabled: bool | None = None):
        self.interactive = sys.stderr.isatty() if enabled is None else enabled
        self.n_trials = n_trials
        self.epochs = epochs
        self.done = 0
        self.trials_bar = tqdm(total=n_trials, desc="trials", unit="trial", position=0,
                               disable=not self.interactive, dynamic_ncols=True)
        self.epoch_bars: dict[int, tqdm] = {}

    def on_epoch(self, trial: optuna.Trial, result: EpochResult) -> None:
        """Advance the epoch bar of ``trial``."""
        self.epoch_done(trial.number, result.train_loss)

    def epoch_done(self, number: int, train_loss: float) -> None:
        """Advance the epoch bar of trial ``number``, opening it on the trial's first epoch."""
        if not self.interactive:
            return
        bar = self.epoch_bars.get(number)
        if bar is None:
            taken = {abs(b.pos) for b in self.epoch_bars.values()}  # tqdm keeps a given position negated
            position = next(p for p in range(1, len(taken) + 2) if p not in taken)
            bar = self.epoch_bars[number] = tqdm(total=self.epochs, desc=f"  trial {number}", unit="epoch",
                                                 position=position, leave=False, dynamic_ncols=True)
        bar.set_postfix(loss=f"{train_loss:.3f}")
        bar.update()

    def on_trial_end(self, study: optuna.Study, trial: FrozenTrial) -> None:
        """Optuna callback: print the trial's line, advance the bar, show the best AUC so far."""
        self._close_epoch_bar(trial.number)
        self.done += 1
        score = study_score_name(study)
        line = trial_line(trial, None, score)
        if self.interactive:
            self.trials_bar.write(line)
            best = best_auc(study)
            if best is not None:
                key = "best_cv_grade_auc" if score.ordinal else "best_cv_auc"
                self.trials_bar.set_postfix({key: f"{best:.3f}"})
            self.trials_bar.update()
        else:
            print(f"[{self.done}/{self.n_trials}] {line}", flush=True)

    def note(self, line: str) -> None:
        """A line that is not a trial's (a recovered worker), above the bars."""
        if self.interactive:
            self.trials_bar.write(line)
        else:
            print(line, flush=True)

    def close(self) -> None:
        """Close the bars."""
        for number in list(self.epoch_bars):
            self._close_epoch_bar(number)
        self.trials_bar.close()

    def _close_epoch_bar(self, number: int) -> None:
        bar = self.epoch_bars.pop(number, None)
        if bar is not None:
            bar.close()


def best_auc(study: optuna.Study) -> float | None:
    """The best validation AUC among complete trials (first objective), or None."""
    values = [t.values[0] for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))]
    return max(values) if values else None


def summary_table(study: optuna.Study, top: int = 5) -> str:
    """The top trials by validation AUC, with costs and key choices, and the study's state counts.

    The score is named for the study's task: ``CV AUC``, or ``CV grade>=k AUC`` for an ordinal one.
    """
    score = study_score_name(study)
    trials = study.get_trials(deepcopy=False)
    complete = sorted((t for t in trials if t.state == TrialState.COMPLETE), key=lambda t: -t.values[0])
    counts = {state.name.lower(): sum(t.state == state for t in trials) for state in TrialState}
    header = (f"study {study.study_name!r}: {len(trials)} trials ("
              + ", ".join(f"{n} {k}" for k, n in counts.items() if n) + ")")
    if not complete:
        return header + "\nno complete trial yet"
    width = max(7, len(score.cv))
    rows = [f"{'rank':>4} {'trial':>5} {score.cv:>{width}} {'+- SE':>6} {'params':>8} {'GFLOPs':>7}  architecture"]
    for rank, t in enumerate(complete[:top], start=1):
        a = t.user_attrs
        tag = " (seed baseline)" if a.get(schema.BASELINE) else ""
        se = a.get(schema.SCORE_SE)
        rows.append(f"{rank:>4} {t.number:>5} {t.values[0]:>{width}.3f} {se if se is not None else math.nan:>6.3f} "
                    f"{a.get(schema.PARAMS, 0) / 1e6:>7.2f}M {a.get(schema.GFLOPS, math.nan):>7.2f}  "
                    f"{describe_spec(a.get(schema.SPEC))}{tag}")
    baseline = next((t for t in complete if t.user_attrs.get(schema.BASELINE)), None)
    if baseline is not None and baseline not in complete[:top]:
        rank = complete.index(baseline) + 1
        rows.append(f"seed baseline: rank {rank}, trial {baseline.number}, {score.cv} {baseline.values[0]:.3f}")
    what = f" ({score.long})" if score.ordinal else ""
    rows.append(f"{score.cv}: mean final-epoch validation {score.short}{what} over the folds of the non-test scans; "
                "the confirmation stage, not this ranking, picks the recommended model")
    return "\n".join([header, *rows])
