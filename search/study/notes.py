"""What optuna-dashboard shows beside the numbers: the objectives' names, and a note on every trial.

Without these the dashboard labels every axis "Objective 0" and leaves its notes empty. The study's
objectives are named when it is made (or first resumed by this version): ``CV AUC`` for the search's
score, ``GFLOPs``/``parameters`` for a cost objective. Each finished trial gets a markdown note
(optuna-dashboard's ``save_note``): its architecture in words, its score, its cost, and why it was
pruned or failed. The study's own note (the confirmation's decision, the export's test AUC) is written
by ``search.selection.dashboard``, which knows the decision's record.
"""

from __future__ import annotations

import math
import warnings

import optuna
from optuna.trial import FrozenTrial, TrialState
from optuna_dashboard import save_note

from search.study import schema
from space import describe_spec

METRIC_NAMES = {"auc": "CV AUC (search score)", "gflops": "GFLOPs", "params": "parameters"}


def name_objectives(study: optuna.Study, objectives: tuple[str, ...]) -> None:
    """Name the study's objectives for the dashboard, unless they are named already."""
    if study.metric_names is None:
        with warnings.catch_warnings():  # experimental since Optuna 3.2, and what optuna-dashboard reads
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study.set_metric_names([METRIC_NAMES.get(o, o) for o in objectives])


def trial_note(trial: FrozenTrial) -> str:
    """A finished trial in a few markdown lines: what it trained, how it scored, what it cost, why it stopped."""
    attrs = trial.user_attrs
    role = " (the seed baseline)" if attrs.get(schema.BASELINE) else ""
    lines = [f"**Trial {trial.number}{role}**: {describe_spec(attrs.get(schema.SPEC))}", ""]
    score, se = attrs.get(schema.SCORE), attrs.get(schema.SCORE_SE)
    if isinstance(score, (int, float)) and math.isfinite(score):
        spread = f" ± {se:.3f}" if isinstance(se, (int, float)) and math.isfinite(se) else ""
        lines.append(f"- score: CV AUC {score:.3f}{spread} (mean final-epoch validation AUC over the folds)")
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
    """An Optuna callback (``study.optimize(callbacks=[...])``) that writes :func:`trial_note` for each trial."""

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        """Save the finished trial's note (optuna-dashboard keeps notes in the study, so a finished trial takes one)."""
        save_note(optuna.Trial(study, trial._trial_id), trial_note(trial))


def save_study_note(study: optuna.Study, body: str) -> None:
    """Replace the study's note (markdown) with ``body``."""
    save_note(study, body)
