"""The report's sections on what became of the search's result: its confirmation, and the locked test.

``confirmation_section`` shows the confirmation stage (search.selection.confirm): each candidate's search score
against its AUCs on fresh folds, and the recommendation. ``validation_section`` shows the exported model
and the seed baseline at each stage, from the search's cross-validated AUC to the confirmation and to the
locked test part that python -m search.export scored once (read from the model folder's metrics.json), so
the optimism of validation shows at a glance; or a note saying what to run when there is no export.
Every AUC is named for the study's task (``search.study.notes.ScoreName``): the ROC AUC of a binary task,
the mean "grade >= k" AUC of an ordinal one.
"""

from __future__ import annotations

import html
import math
import os
from dataclasses import dataclass
from pathlib import Path

import optuna
import plotly.graph_objects as go

from search.model.folder import MAX_METRICS_BYTES, METRICS, ModelDirError, read_json
from search.pages.html import figure, fmt, note, table
from search.selection.confirm import Decision, stored_decision
from search.stats.intervals import Interval
from search.study.notes import BINARY_SCORE, ScoreName, study_score_name
from space import describe_spec

AUC_NAME = BINARY_SCORE.cv  # a binary study's name for the mean final-epoch validation AUC over the non-test folds
MODEL_COLOUR, BASELINE_COLOUR = "#e45756", "#f2b701"  # as the Pareto front and the seed baseline's star


def _number(value) -> float | None:
    """A finite number as a float, else None (a gap in a figure, '-' in a table)."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    return float(value)


def confirmation_figure(decision: Decision, score: ScoreName = BINARY_SCORE) -> go.Figure:
    """Each candidate's search score (+- SE) beside its confirmed fold AUCs and their mean.

    A candidate's search score was the best of many noisy trials, so it tends to sit above what fresh
    folds confirm. The seed baseline's column is shaded and its confirmed mean drawn across for reference
    (the rule asks more of a candidate than to clear it: the leader's second look, and a paired lower bound,
    with scan and seed noise, above minus the margin), and the recommended candidate's name is marked.
    """
    rows = decision.candidates
    recommended = decision.recommended.key
    fig = go.Figure()
    fig.add_trace(go.Scatter(
        x=[i - 0.18 for i in range(len(rows))], y=[_number(r.search_score) for r in rows],
        error_y={"type": "data", "array": [_number(r.search_se) for r in rows], "width": 6},
        mode="markers", name=f"{score.cv} in the search, +- SE", marker={"symbol": "diamond-open", "size": 11,
                                                                          "color": "#52606d"}))
    folds_x, folds_y = [], []
    for i, r in enumerate(rows):
        aucs = [v for v in map(_number, r.fold_aucs) if v is not None]
        folds_x += [i + 0.12 + 0.1 * (j / max(len(aucs) - 1, 1) - 0.5) for j in range(len(aucs))]
        folds_y += aucs
    fig.add_trace(go.Scatter(x=folds_x, y=folds_y, mode="markers", name="confirmed: one fresh fold each",
                             marker={"color": "#4c78a8", "size": 7, "opacity": 0.7}))
    fig.add_trace(go.Scatter(
        x=[i + 0.12 for i in range(len(rows))], y=[_number(r.confirmed) for r in rows], mode="markers",
        name="confirmed: mean", marker={"symbol": "line-ew", "size": 30, "color": "#1f4e79",
                                        "line": {"width": 3, "color": "#1f4e79"}}))
    for i, r in enumerate(rows):
        if r.baseline:
            fig.add_vrect(x0=i - 0.45, x1=i + 0.45, fillcolor=BASELINE_COLOUR, opacity=0.15, line_width=0,
                          layer="below")
            if _number(r.confirmed) is not None:
                fig.add_hline(y=r.confirmed, line={"dash": "dash", "color": BASELINE_COLOUR, "width": 1})
    names = [("seed baseline" if r.baseline else r.key) + ("<br><b>recommended</b>" if r.key == recommended else "")
             for r in rows]
    fig.update_layout(title="Confirmation on fresh folds", yaxis_title=score.metric,
                      legend={"orientation": "h", "y": -0.2},
                      xaxis={"tickmode": "array", "tickvals": list(range(len(rows))), "ticktext": names,
                             "range": [-0.5, len(rows) - 0.5]})
    return fig


def confirmation_section(study: optuna.Study) -> str:
    """The confirmation stage's figure, decision and table, or why there is none."""
    decision = stored_decision(study)
    if not decision:
        return note("No confirmation yet: run python -m search.run --confirm-only (export needs it).")
    score = study_score_name(study)
    rows = []
    for r in decision.candidates:
        rows.append([html.escape(r.key), fmt(r.search_score), fmt(r.search_se),
                     " / ".join(fmt(v) for v in r.fold_aucs), fmt(r.confirmed), fmt(r.difference, "+.3f"),
                     fmt(r.se), fmt(r.difference_low, "+.3f"), fmt(r.gflops, ".2f"),
                     "reference" if r.baseline else html.escape(r.verdict or ("yes" if r.beats_baseline else "no")),
                     html.escape(describe_spec(r.spec))])
    cells_table = table(["candidate", score.cv + " (search)", "+- SE", f"fold {score.short}s (fresh folds)",
                         "confirmed", "minus baseline", "+- SE (scan and seed)", "lower bound", "GFLOPs",
                         "may replace the baseline", "architecture"], rows, "confirmation-table")
    rec = decision.recommended
    words = (f"<p><b>Recommended: {html.escape(rec.key)}</b>: {html.escape(rec.why)}.</p>"
             + note(f"Rule: {decision.rule}. Settings: {decision.settings.to_dict()}. Runs are trials of the study "
                    f"{decision.companion_study or '-'!r} in the same storage (see optuna-dashboard)."))
    if score.ordinal:
        words += note(f"Every AUC here, the paired difference too, is the {score.long}: {score.meaning}.")
    plot = figure(confirmation_figure(decision, score), "fig-confirmation")
    return f'<div class="row"><div class="col">{plot}</div><div class="col">{words}</div></div>{cells_table}'


class NoExport(Exception):
    """No metrics.json of this study to show; the message says why, and what to run."""


def export_command(study_name: str, studies_dir: str) -> str:
    """The export command line for this study, flags as the report was given them."""
    return f"python -m search.export --study {study_name}" + (
        f" --studies-dir {studies_dir}" if studies_dir != "studies" else "")


def load_export_metrics(model_dir: Path, study_name: str, command: str) -> dict:
    """The metrics.json of an export of this study from ``model_dir``.

    Raises:
        NoExport: No folder, no file, a file that is not JSON, or an export of another study.
    """
    path = model_dir / METRICS
    if not model_dir.is_dir():
        raise NoExport(f"No exported model in {model_dir} yet, so no locked-test figures: run {command}, "
                       "then this report again (or pass --model DIR).")
    if not os.path.lexists(path):
        raise NoExport(f"{model_dir} holds no {METRICS}, so it is not a folder written by python -m search.export; "
                       f"run {command} (or pass --model DIR).")
    try:  # a shared folder is untrusted: no link out of it, no FIFO or device, a size cap, bounded nesting
        metrics = read_json(path, MAX_METRICS_BYTES)
    except ModelDirError as e:
        raise NoExport(f"Cannot read {e}; export again: {command}") from None
    study = metrics.get("study") if isinstance(metrics, dict) else None
    name = study.get("name") if isinstance(study, dict) else None
    if name != study_name:
        raise NoExport(f"{path} is the export of study {name!r}, not of {study_name!r}, so it is not shown; "
                       f"pass --model with this study's folder, or run {command}.")
    return metrics


@dataclass(frozen=True)
class Scores:
    """One model's AUC at each stage, from the search to the locked test part."""

    label: str
    is_baseline: bool
    search: float | None
    search_se: float | None
    confirmed: float | None
    test: float | None
    test_low: float | None
    test_high: float | None

    @property
    def optimism(self) -> float | None:
        """How far the confirmed score overstated the test AUC: positive when validation was optimistic."""
        if self.confirmed is None or self.test is None:
            return None
        return self.confirmed - self.test


def _scores(label: str, is_baseline: bool, entry: dict, confirmed, tested: dict | None) -> Scores:
    auc = tested["auc"] if tested is not None else {}
    return Scores(label, is_baseline, _number(entry.get("search_cv_auc")), _number(entry.get("search_cv_se")),
                  _number(confirmed), _number(auc.get("estimate")), _number(auc.get("low")), _number(auc.get("high")))


def export_scores(metrics: dict) -> list[Scores]:
    """The exported model's scores, then the seed baseline's unless the model is the baseline.

    Raises:
        KeyError, TypeError, AttributeError: The file lacks a field that search.export writes.
    """
    test, selection = metrics["test"], metrics["selection"]
    if test["baseline_is_model"]:
        return [_scores("exported model (the seed baseline)", True, metrics["model"], selection["confirmed_score"],
                        test["model"])]
    return [_scores("exported model", False, metrics["model"], selection["confirmed_score"], test["model"]),
            _scores("seed baseline", True, metrics.get("baseline") or {}, selection["baseline_confirmed_score"],
                    test["baseline"])]


def stages(score: ScoreName = BINARY_SCORE) -> tuple[str, str, str]:
    """The validation figure's three stages, their score named for the task."""
    return (f"search<br>{score.cv} +- SE", "confirmation<br>fresh folds", f"locked test part<br>{score.short}, 95% CI")


STAGES = stages()


def _below(value: float | None, bound: float | None) -> float | None:
    return None if value is None or bound is None else value - bound


def validation_figure(rows: list[Scores], score: ScoreName = BINARY_SCORE) -> go.Figure:
    """Each model's AUC at the three stages, joined by a dotted line: its fall to the test AUC is the optimism."""
    fig = go.Figure()
    names = stages(score)
    for i, r in enumerate(rows):
        shift = 0.1 * (2 * i - len(rows) + 1)  # model left of the stage, baseline right: their bars stay apart
        colour = BASELINE_COLOUR if r.is_baseline else MODEL_COLOUR
        y = [r.search, r.confirmed, r.test]
        fig.add_trace(go.Scatter(
            x=[stage + shift for stage in range(len(names))], y=y, name=r.label, mode="lines+markers+text",
            line={"color": colour, "dash": "dot"}, cliponaxis=False,
            marker={"color": colour, "size": 14 if r.is_baseline else 10, "line": {"width": 1, "color": "#222"},
                    "symbol": "star" if r.is_baseline else "circle"},
            error_y={"type": "data", "symmetric": False, "width": 6, "color": colour,
                     "array": [r.search_se, None, _below(r.test_high, r.test)],
                     "arrayminus": [r.search_se, None, _below(r.test, r.test_low)]},
            text=[fmt(v) if v is not None else "" for v in y],
            textposition="middle left" if i == 0 else "middle right",
            hovertemplate=f"{html.escape(r.label)}: %{{y:.3f}}<extra></extra>"))
    fig.add_hline(y=0.5, line={"dash": "dash", "color": "#9aa5b1", "width": 1}, annotation_text="chance",
                  annotation_position="bottom right")
    fig.update_layout(title=f"{score.metric} from search to locked test", yaxis_title=score.metric, showlegend=True,
                      legend={"orientation": "h", "y": -0.2},
                      xaxis={"tickmode": "array", "tickvals": list(range(len(names))), "ticktext": list(names),
                             "range": [-0.5, len(names) - 0.5]})
    return fig


def _validation_table(rows: list[Scores], score: ScoreName = BINARY_SCORE) -> str:
    cells = [[html.escape(r.label), f"{fmt(r.search)} +- {fmt(r.search_se)}", fmt(r.confirmed),
              f"<b>{fmt(r.test)}</b> ({fmt(r.test_low)} to {fmt(r.test_high)})", fmt(r.optimism, "+.3f")]
             for r in rows]
    return table(["", f"{score.cv} (search) +- SE", "confirmed", f"test {score.short} (95% CI)",
                  "optimism (confirmed - test)"],
                 cells, "validation-table")


def _test_counts(test: dict, classes: list) -> str:
    """`` (3 CT-0, 2 CT-2 or CT-3)`` for a binary test part; the scans per grade where the file gives them."""
    if len(classes) <= 2:
        return f" ({test['n_negative']} {classes[0]}, {test['n_positive']} {classes[1]})"
    per_grade = test.get("n_per_grade")  # an ordinal export's counts, with its grades' names
    names = test.get("grades") or classes
    if isinstance(per_grade, list) and isinstance(names, list) and len(per_grade) == len(names):
        return " (" + ", ".join(f"{n} {name}" for n, name in zip(per_grade, names, strict=True)) + ")"
    return ""


def _test_part_lines(metrics: dict, n_trials: int, score: ScoreName = BINARY_SCORE) -> str:
    """The test part's size, the model-minus-baseline AUC difference, and whether the export is stale."""
    test = metrics["test"]
    classes = (metrics.get("task") or {}).get("classes") or ["negative", "positive"]
    lines = [f"Locked test part: {test['n']} scans{_test_counts(test, classes)}, scored once by python -m "
             f"search.export ({metrics.get('created', 'date not recorded')})."]
    diff = test.get("auc_difference")
    if test["baseline_is_model"]:
        lines.append(f"The exported model is the seed baseline itself: there is no difference in {score.short} "
                     "to show.")
    elif diff:
        interval = Interval(**diff)
        spans = interval.low <= 0 <= interval.high
        lines.append(f"Difference in test {score.short}, model minus seed baseline: {interval.text()}"
                     + ("; the interval holds 0, so this test part cannot tell the two apart." if spans else "."))
    else:
        reason = (metrics.get("baseline") or {}).get("note") or "the seed baseline was not tested"
        lines.append(f"No difference in {score.short}: {reason}.")
    exported_with = (metrics.get("study") or {}).get("n_trials")
    if exported_with is not None and exported_with != n_trials:
        lines.append(f"Exported when the study had {exported_with} trials; it has {n_trials} now, so the "
                     "recommendation may have changed: export again.")
    return "".join(f"<p>{html.escape(line)}</p>" for line in lines)


def validation_section(study: optuna.Study, model_dir: Path, studies_dir: str) -> str:
    """The export's scores as a figure and a table, with the test part's size; or a note saying why not."""
    command = export_command(study.study_name, studies_dir)
    score = study_score_name(study)
    try:
        metrics = load_export_metrics(model_dir, study.study_name, command)
        rows = export_scores(metrics)
        lines = _test_part_lines(metrics, len(study.trials), score)
    except NoExport as e:
        return note(str(e))
    except (KeyError, TypeError, AttributeError, ValueError) as e:
        return note(f"{model_dir / METRICS} lacks what this section needs ({type(e).__name__}: {e}); export "
                    f"again: {command}")
    plot = figure(validation_figure(rows, score), "fig-validation")
    return (f'<div class="row"><div class="col">{plot}</div><div class="col">{_validation_table(rows, score)}{lines}'
            f"{note(f'From {model_dir / METRICS}.')}</div></div>")
