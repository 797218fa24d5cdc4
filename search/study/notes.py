"""What people read beside the numbers: the score's name, the objectives' names, and a note on every trial.

The score is named once here (:class:`ScoreName`, :func:`score_name`) for every page, table, console
line and note: the ROC AUC of a binary task, the mean of the K-1 "grade >= k" ROC AUCs of an ordinal one
(``search.stats.metrics.task_metrics``), which is the same number at K = 2, so a binary study reads as
it always did. Without names the dashboard labels every axis "Objective 0" and leaves its notes empty.
The study's objectives are named when it is made (or first resumed by this version): ``CV AUC`` for the
search's score (``CV mean AUC of grade >= k ...`` for an ordinal task), ``GFLOPs``/``parameters`` for a
cost objective. Each finished trial gets a markdown note (optuna-dashboard's ``save_note``): its
architecture in words, its score, its cost, and why it was pruned or failed. The study's own note (the
confirmation's decision, the export's test AUC) is written by ``search.selection.dashboard``, which
knows the decision's record.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import optuna
from optuna.trial import FrozenTrial, TrialState
from optuna_dashboard import save_note

from lungct.records import get_task
from search.study import schema
from space import describe_spec

METRIC_NAMES = {"auc": "CV AUC (search score)", "gflops": "GFLOPs", "params": "parameters"}


@dataclass(frozen=True)
class ScoreName:
    """What a task's score is called for people.

    Attributes:
        short: The score in a table heading or an axis: ``AUC``, or ``grade>=k AUC`` for an ordinal task;
            the search's cross-validated score is ``CV`` and this (:attr:`cv`).
        metric: One AUC on an axis of its own: ``ROC AUC``, or ``mean grade>=k AUC``.
        long: The score spelled out: ``ROC AUC``, or ``mean AUC of grade >= k (k = 1..3)``.
        ordinal: Whether the task is an ordinal grading (K > 2 grades).
        grades: K, the task's number of labels.
    """

    short: str
    metric: str
    long: str
    ordinal: bool = False
    grades: int = 2

    @property
    def cv(self) -> str:
        """The search's score: ``CV AUC``, or ``CV grade>=k AUC``."""
        return f"CV {self.short}"

    @property
    def meaning(self) -> str:
        """How the AUC of an ordinal task is made, in a phrase; empty for a binary task (the ROC AUC)."""
        if not self.ordinal:
            return ""
        return ('the ROC AUC of "grade >= k" against "grade < k" for each cut k, averaged (at 2 grades it is the '
                "binary ROC AUC)")

    @property
    def definition(self) -> str:
        """A sentence saying what the AUC of an ordinal task is; empty for a binary task."""
        if not self.ordinal:
            return ""
        return f"The task has {self.grades} ordered grades, so its AUC is the {self.long}: {self.meaning}."


BINARY_SCORE = ScoreName(short="AUC", metric="ROC AUC", long="ROC AUC")


def score_name(task: str | None) -> ScoreName:
    """The name of the score of the task called ``task`` (``lungct.records.TASKS``); a binary task's, or an
    unknown task's (one that a newer version stored), is :data:`BINARY_SCORE`."""
    try:
        found = get_task(task) if task else None
    except ValueError:
        found = None
    if found is None or not found.ordinal:
        return BINARY_SCORE
    top = found.n_grades - 1
    return ScoreName(short="grade>=k AUC", metric="mean grade>=k AUC",
                     long=f"mean AUC of grade >= k (k = 1..{top})", ordinal=True, grades=found.n_grades)


def study_task(study: optuna.Study) -> str | None:
    """The task in the study's stored settings (a search study's, or an ablation's), None when it stores none."""
    settings = study.user_attrs.get(schema.STUDY_SETTINGS)
    return settings.get("task") if isinstance(settings, dict) else None


def study_score_name(study: optuna.Study) -> ScoreName:
    """The name of the score of the study's task (:func:`score_name` of :func:`study_task`)."""
    return score_name(study_task(study))


def objective_names(objectives: Sequence[str], score: ScoreName = BINARY_SCORE) -> list[str]:
    """The dashboard's names of ``objectives``: the search score's named for its task, the costs as they are."""
    names = dict(METRIC_NAMES)
    if score.ordinal:
        names["auc"] = f"CV {score.long} (search score)"
    return [names.get(o, o) for o in objectives]


def name_objectives(study: optuna.Study, objectives: Sequence[str], score: ScoreName | None = None) -> None:
    """Name the study's objectives for the dashboard, unless they are named already.

    ``score`` defaults to the name of the study's stored task. A new study is named before its settings
    are stored, so an ordinal study first gets the binary names; those (and only those: names a user
    set stay) are replaced by the ordinal ones when this runs again with the task known (on the study's
    next load, and after each of its trials: :class:`TrialNote`).
    """
    score = score or study_score_name(study)
    current = study.metric_names
    wanted = objective_names(objectives, score)
    if current is None or (current != wanted and current == objective_names(objectives)):
        with warnings.catch_warnings():  # experimental since Optuna 3.2, and what optuna-dashboard reads
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study.set_metric_names(wanted)


def trial_note(trial: FrozenTrial, score: ScoreName = BINARY_SCORE) -> str:
    """A finished trial in a few markdown lines: what it trained, how it scored, what it cost, why it stopped."""
    attrs = trial.user_attrs
    role = " (the seed baseline)" if attrs.get(schema.BASELINE) else ""
    lines = [f"**Trial {trial.number}{role}**: {describe_spec(attrs.get(schema.SPEC))}", ""]
    value, se = attrs.get(schema.SCORE), attrs.get(schema.SCORE_SE)
    if isinstance(value, (int, float)) and math.isfinite(value):
        spread = f" ± {se:.3f}" if isinstance(se, (int, float)) and math.isfinite(se) else ""
        lines.append(f"- score: {score.cv} {value:.3f}{spread} (mean final-epoch validation {score.short} over the "
                     "folds" + (f"; {score.long}" if score.ordinal else "") + ")")
    if attrs.get(schema.PARAMS) is not None:
        lines.append(f"- cost: {attrs[schema.PARAMS]:,} parameters, {attrs.get(schema.GFLOPS, math.nan):.2f} GFLOPs")
    for key in (schema.COST_FALLBACK, schema.PADDING_FALLBACK):
        if attrs.get(key):
            lines.append(f"- fitted: {attrs[key]}")
    if trial.state == TrialState.PRUNED:
        lines.append(f"- pruned: {attrs.get(schema.PRUNE_REASON) or 'below the median of earlier trials'}")
    elif trial.state == TrialState.FAIL:
        lines.append(f"- failed: {attrs.get(schema.FAIL_REASON) or 'no reason recorded'}")
    return "\n".join(lines)


class TrialNote:
    """An Optuna callback (``study.optimize(callbacks=[...])``) that writes :func:`trial_note` for each trial.

    It also names the study's objectives for its task (:func:`name_objectives`): a new ordinal study was
    named before its settings were stored, and its first trial corrects that.
    """

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        """Save the finished trial's note (optuna-dashboard keeps notes in the study, so a finished trial takes one)."""
        score = study_score_name(study)
        if score.ordinal:
            name_objectives(study, study.user_attrs.get(schema.STUDY_OBJECTIVES, ("auc",)), score)
        save_note(optuna.Trial(study, trial._trial_id), trial_note(trial, score))


def save_study_note(study: optuna.Study, body: str) -> None:
    """Replace the study's note (markdown) with ``body``."""
    save_note(study, body)
