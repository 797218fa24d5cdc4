"""The study report as one self-contained HTML page: its sections in page order, from the tables and plots.

:func:`render_report` is what ``python -m search.report`` writes; :func:`build_sections` gives its parts.
"""

from __future__ import annotations

import html
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import optuna
from optuna.importance import FanovaImportanceEvaluator, PedAnovaImportanceEvaluator

from search.pages.html import page
from search.pages.plots import (
    MAX_PARALLEL_PARAMS,
    StudyView,
    plot_curves,
    plot_history,
    plot_importance,
    plot_optuna_pareto,
    plot_parallel,
    plot_pareto,
)
from search.pages.tables import summary_section, top_trials_table
from search.pages.validation import confirmation_section, validation_section
from search.study.notes import study_score_name
from search.study.trials import COSTS

TOP_N = 10
MODEL_DIR = "model"  # python -m search.export's default folder, under <studies-dir>/<study>/


@dataclass(frozen=True)
class Section:
    """One part of the page: an anchor id, a heading, a short explanation, and figures or tables (HTML)."""

    id: str
    title: str
    intro: str
    body: str


def build_sections(study: optuna.Study, storage_url: str, studies_dir: str = "studies",
                   top: int = TOP_N, model_dir: Path | None = None) -> list[Section]:
    """Every section of the report, in page order; ``model_dir`` defaults to export's folder for the study."""
    s = StudyView(study)
    model_dir = Path(model_dir) if model_dir is not None else Path(studies_dir) / study.study_name / MODEL_DIR
    ped, _ = plot_importance(s, "PED-ANOVA", PedAnovaImportanceEvaluator())
    fanova, ranking = plot_importance(s, "fANOVA", FanovaImportanceEvaluator(seed=0))
    pareto = '<div class="row">' + "".join(f'<div class="col">{plot_pareto(s, c)}</div>' for c in COSTS) + "</div>"
    if s.multi:
        pareto += "<h3>Optuna's Pareto-front plot (the study's own objectives)</h3>" + plot_optuna_pareto(s)
    n_complete = len(s.complete)
    auc, cv = s.score.short, s.score.cv
    return [
        Section("summary", "Study, data, task and split", "", summary_section(s, storage_url, studies_dir)),
        Section("confirmation", "Confirmation and recommendation", "The search's best distinct specs and the "
                "seed baseline, trained again on fresh folds with new seeds at the confirmation's epochs. The "
                "recommended model is what python -m search.export ships.", confirmation_section(s.study)),
        Section("validation", "Validation against the locked test part", "The exported model and the seed "
                f"baseline at each stage: the search's cross-validated {auc} of their trial (with its standard "
                f"error), the confirmation's score on fresh folds, and the {auc} that python -m search.export "
                "measured once on the test part, which nothing else reads (with its 95% bootstrap CI). How far "
                f"the confirmed score falls to the test {auc} is the optimism of validation.",
                validation_section(s.study, model_dir, studies_dir)),
        Section("top", "Top trials", f"Complete trials by {cv}: the mean over the folds of the validation "
                f"{auc} at each fold's final epoch, with its standard error (the fewer parameters first on ties); "
                "trial 0 is the course's seed model. The best of many noisy scores is optimistic: the "
                "confirmation above, not this ranking, picks the model.", top_trials_table(s, top)),
        Section("history", "Optimisation history", f"{cv} of each complete trial, in trial order, "
                "and the best so far.", plot_history(s)),
        Section("curves", "Scores after each fold", f"The running mean {auc} after each cross-validation fold, one "
                "line per trial: what the pruner saw; pruned trials are the lines that stop early.", plot_curves(s)),
        Section("importance", "Which choices matter", f"Parameter importances for {cv} over the "
                f"{n_complete} complete trials (pruned trials are left out), by two methods: PED-ANOVA "
                "(what separates the best 10% of trials from the rest) and fANOVA (how much of the "
                f"{auc}'s "
                "variance a random-forest model attributes to each parameter, seed 0). With fewer than about "
                "20 complete trials both are noisy; where they agree, believe them more.",
                f'<div class="row"><div class="col"><h3>PED-ANOVA</h3>{ped}</div>'
                f'<div class="col"><h3>fANOVA</h3>{fanova}</div></div>'),
        Section("pareto", "What accuracy costs: Pareto fronts", "Each point is a trial. Red points are the "
                f"Pareto front: complete trials that no other complete trial beats on both validation {auc} and "
                "cost. Blue points are dominated complete trials; grey crosses are pruned trials at the last "
                f"validation {auc} they reported (they never finished, so they cannot be on the front); the star "
                "is the seed baseline. Costs are at the study's input size.", pareto),
        Section("parallel", "Parallel coordinates", f"Complete trials across the (at most "
                f"{MAX_PARALLEL_PARAMS}) parameters that vary and matter most by fANOVA, in alphabetical order; "
                f"colour is {cv}.", plot_parallel(s, ranking)),
    ]


def render_report(study: optuna.Study, storage_url: str, studies_dir: str = "studies", top: int = TOP_N,
                  model_dir: Path | None = None) -> str:
    """The whole page as one HTML string, plotly.js embedded once in the head."""
    sections = build_sections(study, storage_url, studies_dir, top, model_dir)
    created = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    title = f"lungct-nas search report: {study.study_name}"
    score = study_score_name(study)
    nav = "".join(f'<a href="#{x.id}">{html.escape(x.title)}</a>' for x in sections)
    body = [
        f"<h1>{html.escape(title)}</h1>",
        f'<p class="sub">Generated {created} by python -m search.report. Validation {html.escape(score.short)} is '
        f"what the search optimised; it is optimistic for the chosen model. The unbiased figure is the locked-test "
        f"{html.escape(score.short)} that python -m search.export reports."
        f"{' ' + html.escape(score.definition) if score.ordinal else ''}</p>",
        f"<nav>{nav}</nav>",
    ]
    for x in sections:
        intro = f"<p>{html.escape(x.intro)}</p>" if x.intro else ""
        body.append(f'<section id="{x.id}"><h2>{html.escape(x.title)}</h2>{intro}{x.body}</section>')
    return page(title, body)
