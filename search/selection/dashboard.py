"""The study's note in optuna-dashboard: what the tool recommends, which is not the dashboard's "Best Trial".

The dashboard badges the trial with the best search score as "Best Trial"; the tool recommends what
survives the confirmation against the seed baseline, and export tests that once on the locked test
part. The study note (markdown, optuna-dashboard's ``save_note``) says both, rewritten by ``search.run``
after the confirmation and by ``search.export`` after its test (from the study's stored attrs, so either
command writes the whole note). A study of an ordinal task (severity) says which AUC its scores are, and
its objectives get the task's names here too, should the study have been named before its task was known.
"""

from __future__ import annotations

import optuna
from optuna.trial import TrialState

from search.selection.confirm import format_decision, stored_decision
from search.stats.intervals import Interval
from search.study import schema
from search.study.notes import name_objectives, save_study_note, study_score_name
from space import describe_spec


def study_note(study: optuna.Study) -> str:
    """The note: the search in one line, the confirmation's decision, the export's test AUC once exported."""
    score = study_score_name(study)
    states = [t.state for t in study.get_trials(deepcopy=False)]
    counts = ", ".join(f"{states.count(s)} {s.name.lower()}" for s in (TrialState.COMPLETE, TrialState.PRUNED,
                                                                        TrialState.FAIL) if states.count(s))
    lines = [f"## {study.study_name}: what lungct-nas recommends", "",
             f"- Search: {len(states)} trials ({counts or 'none finished'}). The dashboard's *Best Trial* is the "
             "best search score (cheap cross-validation); the recommendation is what the confirmation ships over "
             "the seed baseline when both are retrained on fresh folds: a candidate significantly better, better "
             "and not worse by more than the margin, or as good and cheaper.", ""]
    if score.ordinal:
        lines[-1:] = [f"- Score: every AUC here (the search's, the confirmation's, the test's) is the {score.long}: "
                      f"{score.meaning}.", ""]
    decision = stored_decision(study)
    if decision is None:
        lines += ["### Confirmation", "", "Not run yet: `python -m search.run --confirm-only` runs it.", ""]
    else:
        rec = decision.recommended
        what = "the seed baseline" if rec.baseline else f"trial {rec.trial}"
        verdict = f" ({rec.verdict})" if rec.verdict else ""
        lines += ["### Confirmation", "", "```", format_decision(decision), "```", "",
                  f"**Recommended: {what}**{verdict}: {describe_spec(rec.spec)}.", ""]
    exported = study.user_attrs.get(schema.STUDY_EXPORTED)
    if exported:
        test = exported["test"]
        shipped = "the seed baseline" if exported["baseline"] else f"trial {exported['trial']}"
        line = (f"Exported {shipped}; locked test part ({test['n']} scans, evaluated once): {score.short} "
                f"{Interval(**test['model']['auc']).text()}")
        if test.get("baseline") and not test.get("baseline_is_model"):
            line += f"; seed baseline {Interval(**test['baseline']['auc']).text()}"
        if test.get("auc_difference"):
            line += f"; difference {Interval(**test['auc_difference']).text()}"
        lines += ["### Export", "", line + ".", ""]
    return "\n".join(lines)


def write_study_note(study: optuna.Study) -> None:
    """Rewrite the study's dashboard note from what the study holds now (and name its objectives for its task)."""
    score = study_score_name(study)
    if score.ordinal:
        name_objectives(study, study.user_attrs.get(schema.STUDY_OBJECTIVES, ("auc",)), score)
    save_study_note(study, study_note(study))
