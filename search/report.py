"""``python -m search.report``: one self-contained HTML page about a finished (or running) search.

Writes one HTML page about a study: a summary of the study, its data, task and split; the
confirmation stage's table and a figure of each candidate's search score against its confirmed fold
AUCs; the exported model's and the seed baseline's AUC from search to confirmation to the locked test
part, side by side, so the optimism of validation shows at a glance (read from the metrics.json of the
model folder, ``--model``); the top trials with their architecture in words; the optimisation history;
the learning curves (pruned trials visible); the parameter importances by PED-ANOVA and fANOVA side by
side; the Pareto front of validation AUC against parameters and against GFLOPs, computed from the
trials (so a pruned single-objective study gets one too), plus Optuna's own Pareto plot for a
multi-objective study; and parallel coordinates. plotly.js is embedded once, so the file opens offline
and can be mailed or handed in as it is. Every figure takes its panel's width and grows its margins
around its labels, so nothing is cut in a 1400-pixel-wide window. Every AUC is named for the study's
task: a severity study's score is the mean AUC of "grade >= k" over its cuts (``search.study.notes.ScoreName``),
and its labels are listed by grade.
"""

from __future__ import annotations

import argparse
import html
import warnings
from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import optuna
import plotly.graph_objects as go
from optuna.importance import FanovaImportanceEvaluator, PedAnovaImportanceEvaluator
from optuna.trial import FrozenTrial, TrialState

from lungct.errors import UsageError
from lungct.files import atomic_write_text
from lungct.records import get_task
from search.cli import add_studies_dir_flag, add_study_flags, command_parser, exit_code, positive
from search.pages.html import figure, fmt, note, page, table
from search.pages.validation import confirmation_section, export_command, validation_section
from search.study.artifacts import artifact_dir
from search.study.faults import StorageError, storage_fault
from search.study.notes import ScoreName, study_score_name, study_task
from search.study.storage import default_storage, load_existing_study, redact, schema
from search.study.trials import COSTS, TrialPoint, non_dominated, ranked_trials, trial_points
from space import describe_spec

TOP_N = 10
MAX_PARALLEL_PARAMS = 8
BAR_LABEL_HEADROOM = 0.25  # of the longest bar, added to the value axis for the label past the bar's end
MODEL_DIR = "model"  # python -m search.export's default folder, under <studies-dir>/<study>/


def build_parser() -> argparse.ArgumentParser:
    """The command line of ``python -m search.report``."""
    p = command_parser("search.report", __doc__, epilog="Exit code: 0 written, 2 bad input (flags, study, --out), "
                       "130 interrupted (nothing written).")
    add_study_flags(p)
    add_studies_dir_flag(p, "where studies live and reports go")
    p.add_argument("--out", metavar="FILE", help="HTML file to write (default: studies/<study>/report.html)")
    p.add_argument("--top", type=int, default=TOP_N, metavar="N",
                   help=f"trials in the top-trials table (default: {TOP_N})")
    p.add_argument("--model", metavar="DIR", help="model folder written by python -m search.export whose "
                   f"metrics.json gives the locked-test figures (default: <studies-dir>/<study>/{MODEL_DIR} when "
                   "it exists; otherwise the page says how to export one)")
    return p


@dataclass(frozen=True)
class Section:
    """One part of the page: an anchor id, a heading, a short explanation, and figures or tables (HTML)."""

    id: str
    title: str
    intro: str
    body: str


class _Study:
    """What the plots need from a study, read once: single or multi-objective, trials, costs, the score's name."""

    def __init__(self, study: optuna.Study):
        self.study = study
        self.score = study_score_name(study)
        self.trials = study.get_trials(deepcopy=False)
        self.objectives = list(study.user_attrs.get(schema.STUDY_OBJECTIVES, ["auc"]))
        self.multi = len(study.directions) > 1
        self.complete = ranked_trials(study)
        self.points = trial_points(study)
        self.fronts = {cost: non_dominated(self.points, cost) for cost in COSTS}

    def target(self, minimised: bool = False):
        """The ``target`` argument of Optuna's plots: the first objective where there are several.

        Args:
            minimised: For evaluators that rank by low target values (PED-ANOVA): negate the AUC.
        """
        if not self.multi:
            return None
        return (lambda t: -t.values[0]) if minimised else (lambda t: t.values[0])


def fit_bar_labels(fig: go.Figure) -> go.Figure:
    """Room on the value axis for the labels that Optuna's importance plot writes past each bar's end.

    Drawn outside the bars, the longest bar's label would otherwise end in the right margin or beyond
    the panel's edge; with the headroom it ends inside the plot, and ``cliponaxis=False`` keeps it whole.
    """
    lengths = [float(v) for t in fig.data if t.type == "bar" for v in (t.x or ()) if v is not None]
    fig.update_traces(cliponaxis=False, textposition="outside", selector={"type": "bar"})
    if lengths and max(lengths) > 0:
        fig.update_xaxes(range=[0, max(lengths) * (1 + BAR_LABEL_HEADROOM)])
    return fig


def plot_history(s: _Study) -> str:
    """Optuna's optimisation history of validation AUC."""
    if not s.complete:
        return note("No complete trial yet: nothing to plot.")
    fig = optuna.visualization.plot_optimization_history(s.study, target=s.target(), target_name=s.score.cv)
    return figure(fig, "fig-history")


def _curves_from_attrs(s: _Study) -> go.Figure:
    """Learning curves from the ``val_auc`` trial attr (multi-objective studies report no intermediate values)."""
    fig = go.Figure()
    for t in s.trials:
        curve = t.user_attrs.get(schema.VAL_AUC)
        if curve:
            fig.add_trace(go.Scatter(x=list(range(1, len(curve) + 1)), y=curve, mode="lines+markers",
                                     name=f"Trial{t.number}"))
    fig.update_layout(title="Intermediate Values Plot", xaxis_title="epoch", yaxis_title=s.score.cv)
    return fig


def plot_curves(s: _Study) -> str:
    """Validation AUC per epoch for every trial that trained: Optuna's intermediate values plot."""
    if any(t.intermediate_values for t in s.trials):
        fig = optuna.visualization.plot_intermediate_values(s.study)
        fig.update_layout(xaxis_title="folds scored", yaxis_title=s.score.cv)
    elif any(t.user_attrs.get(schema.VAL_AUC) for t in s.trials):
        fig = _curves_from_attrs(s)
    else:
        return note("No trial has finished an epoch yet: nothing to plot.")
    return figure(fig, "fig-intermediate")


def _varying_params(s: _Study) -> list[str]:
    """Parameters that all complete trials have and that take more than one value among them."""
    if not s.complete:
        return []
    names = set.intersection(*(set(t.params) for t in s.complete))
    return sorted(n for n in names if len({repr(t.params[n]) for t in s.complete}) > 1)


def plot_importance(s: _Study, name: str, evaluator) -> tuple[str, list[str]]:
    """Optuna's importance plot with one evaluator, or a note saying why there is none; and the ranking."""
    if len(s.complete) < 2 or not _varying_params(s):
        return note(f"{name}: needs at least 2 complete trials whose parameters differ "
                    f"(this study has {len(s.complete)} complete)."), []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            # With a target (multi-objective studies) PED-ANOVA looks for low values, so it gets -AUC there.
            target = s.target(minimised=isinstance(evaluator, PedAnovaImportanceEvaluator))
            fig = optuna.visualization.plot_param_importances(s.study, evaluator=evaluator, target=target,
                                                              target_name=s.score.cv)
        except (RuntimeError, ValueError) as e:
            return note(f"{name}: not computed ({e})."), []
    messages = sorted({str(w.message) for w in caught if not issubclass(
        w.category, DeprecationWarning | FutureWarning | optuna.exceptions.ExperimentalWarning)
        and "achieve low `target` values" not in str(w.message)})  # handled: PED-ANOVA gets -AUC
    if any("will be equal" in m for m in messages):
        # PED-ANOVA compares the top quantile of trials with all of them; with few trials they coincide.
        return note(f"{name}: too few complete trials ({len(s.complete)}) to separate the best trials from the "
                    "rest; every parameter would get the same importance. Run more trials."), []
    ranking = list(reversed(fig.data[0].y)) if fig.data else []
    fit_bar_labels(fig).update_layout(title=f"Hyperparameter Importances ({name})")
    body = figure(fig, f"fig-importance-{name.lower().replace('-', '')}", height=max(360, 28 * len(ranking) + 120))
    return body + "".join(note(m) for m in messages), ranking


def _hover(p: TrialPoint, score: ScoreName) -> str:
    tag = " (seed baseline)" if p.baseline else ""
    state = "" if p.complete else f" (pruned: last reported {score.short})"
    return (f"trial {p.number}{tag}<br>{score.cv} {p.auc:.3f}{state}<br>{p.params:,} params<br>"
            f"{p.gflops:.3f} GFLOPs<br>{html.escape(describe_spec(p.spec))}")


def plot_pareto(s: _Study, cost: str) -> str:
    """Validation AUC against a cost: complete trials, the non-dominated ones joined, pruned ones faded."""
    label = COSTS[cost]
    if not any(p.complete for p in s.points):
        return note(f"No complete trial with a recorded cost yet: no Pareto front against {label}.")
    front = s.fronts[cost]
    groups = [
        (f"pruned (last reported {s.score.short})", [p for p in s.points if not p.complete],
         {"color": "#9aa5b1", "symbol": "x", "size": 7, "opacity": 0.45}),
        ("dominated", [p for p in s.points if p.complete and p.number not in front],
         {"color": "#4c78a8", "size": 9, "opacity": 0.6}),
        ("Pareto front (non-dominated)", sorted((p for p in s.points if p.number in front), key=lambda p: p.cost(cost)),
         {"color": "#e45756", "size": 12, "line": {"width": 1, "color": "#222"}}),
    ]
    fig = go.Figure()
    for name, pts, marker in groups:
        if not pts:
            continue
        is_front = name.startswith("Pareto")
        fig.add_trace(go.Scatter(
            x=[p.cost(cost) for p in pts], y=[p.auc for p in pts], name=name, marker=marker,
            mode="lines+markers" if is_front else "markers", line={"shape": "hv", "color": "#e45756"} if is_front
            else None, text=[_hover(p, s.score) for p in pts], hovertemplate="%{text}<extra></extra>"))
    for p in (p for p in s.points if p.baseline):
        fig.add_trace(go.Scatter(x=[p.cost(cost)], y=[p.auc], name="seed baseline", mode="markers+text",
                                 marker={"symbol": "star", "size": 20, "color": "#f2b701",
                                         "line": {"width": 1, "color": "#222"}},
                                 text=["seed baseline"], textposition="top center",
                                 hovertext=[_hover(p, s.score)], hovertemplate="%{hovertext}<extra></extra>"))
    fig.update_layout(title=f"Pareto front: {s.score.cv} against {label}", xaxis_title=f"{label} (log scale)",
                      yaxis_title=s.score.cv, xaxis_type="log", legend={"orientation": "h", "y": -0.2})
    return figure(fig, f"fig-pareto-{cost}")


def plot_optuna_pareto(s: _Study) -> str:
    """Optuna's own Pareto-front plot, for a multi-objective study."""
    names = [s.score.cv, COSTS["params" if "params" in s.objectives else "gflops"]]
    fig = optuna.visualization.plot_pareto_front(s.study, target_names=names[:len(s.study.directions)])
    return figure(fig, "fig-pareto-optuna")


def plot_parallel(s: _Study, ranking: list[str]) -> str:
    """Optuna's parallel coordinates over the most important parameters that vary (it orders them by name)."""
    varying = _varying_params(s)
    if not varying:
        return note("Needs complete trials whose parameters differ: nothing to plot yet.")
    ordered = [n for n in ranking if n in varying] + [n for n in varying if n not in ranking]
    fig = optuna.visualization.plot_parallel_coordinate(s.study, params=ordered[:MAX_PARALLEL_PARAMS],
                                                        target=s.target(), target_name=s.score.cv)
    return figure(fig, "fig-parallel", height=520)


def top_trials_table(s: _Study, top: int) -> str:
    """The best complete trials: AUC, costs, epochs, validation rates, training settings, architecture."""
    if not s.complete:
        return note("No complete trial yet.")
    rows = []
    for rank, t in enumerate(s.complete[:top], start=1):
        a = t.user_attrs
        tags = [tag for tag, on in (("seed baseline", a.get("baseline")),
                                    ("Pareto: params", t.number in s.fronts["params"]),
                                    ("Pareto: GFLOPs", t.number in s.fronts["gflops"])) if on]
        train = a.get("train_spec") or {}
        rows.append([
            str(rank), str(t.number), f"<b>{t.values[0]:.3f}</b>", fmt(a.get(schema.SCORE_SE)),
            f"{a.get(schema.PARAMS, 0):,}", fmt(a.get(schema.GFLOPS)),
            " / ".join(fmt(v) for v in a.get(schema.FOLD_AUCS) or []) or "-",
            html.escape(f"{train.get('optimizer', '-')}, lr {fmt(train.get('lr'), '.2g')}, "
                        f"batch {train.get('batch_size', '-')}"),
            html.escape(describe_spec(a.get("spec"))), html.escape(", ".join(tags)),
        ])
    cells_table = table(["rank", "trial", s.score.cv, "+- SE", "params", "GFLOPs",
                         f"fold {s.score.short}s (final epoch)", "training", "architecture", "notes"], rows,
                        "top-trials")
    base = next((t for t in s.trials if t.user_attrs.get(schema.BASELINE)), None)
    if base is None:
        line = "The seed baseline is not in this study."
    elif base.state != TrialState.COMPLETE:
        line = f"The seed baseline (trial {base.number}) did not complete: {base.state.name.lower()}."
    else:
        rank = [t.number for t in s.complete].index(base.number) + 1
        line = (f"The seed baseline (trial {base.number}) ranks {rank} of {len(s.complete)} complete trials, "
                f"{s.score.cv} {base.values[0]:.3f}.")
    return cells_table + note(line)


def _reason_kind(trial: FrozenTrial, score: ScoreName) -> str:
    reason = trial.user_attrs.get(schema.PRUNE_REASON) or trial.user_attrs.get(schema.FAIL_REASON) or ""
    if trial.state == TrialState.PRUNED:
        if reason.startswith("too costly"):
            return "pruned before training: above the GFLOPs cap (--max-gflops)"
        if "non-finite" in reason:
            return "pruned: non-finite training loss"
        return f"pruned by the pruner (mean fold {score.short} behind other trials after the same fold)"
    if trial.state == TrialState.FAIL:
        return f"failed: {reason.split(' (')[0] or 'see optuna-dashboard'}"
    return trial.state.name.lower()


def _window(window: list | None) -> str:
    return f"{window[0]:g} to {window[1]:g} HU" if window else "-"


def _grade_names(task: str | None) -> list[str]:
    """The categories of each grade of an ordinal task, ``CT-3/CT-4`` where a grade pools two."""
    try:
        return ["/".join(grade) for grade in get_task(task or "").grades]
    except ValueError:
        return []


def _label(key: str, grades: list[str]) -> str:
    """``label 1`` of a binary task; ``grade 1 (CT-1)`` of an ordinal one."""
    if not grades:
        return f"label {key}"
    k = int(key) if str(key).isdigit() else None
    return f"grade {key} ({grades[k]})" if k is not None and k < len(grades) else f"grade {key}"


def summary_section(s: _Study, storage_url: str, studies_dir: str) -> str:
    """Study, data, task and split as key-value tables, what happened to the trials, and the next commands."""
    settings = s.study.user_attrs.get(schema.STUDY_SETTINGS) or {}
    data = s.study.user_attrs.get(schema.STUDY_DATA_SUMMARY) or {}
    states = Counter(t.state.name.lower() for t in s.trials)
    starts = [t.datetime_start for t in s.trials if t.datetime_start]
    train_s = sum(t.user_attrs.get(schema.WALL_SECONDS, 0) for t in s.trials)
    devices = sorted({t.user_attrs[schema.DEVICE] for t in s.trials if "device" in t.user_attrs})
    size = "x".join(map(str, settings.get("size", []))) or "-"
    data_root = settings.get("data") or f"default synthetic phantom set ({settings.get('n_phantoms', '?')} phantoms)"
    loaded = data.get("loaded", {})
    grades = _grade_names(study_task(s.study)) if s.score.ordinal else []
    rows = [
        ("study", f"{s.study.study_name} in {redact(storage_url)}"),
        ("objectives", ", ".join(s.objectives) + (" (multi-objective: no pruning)" if s.multi else "")),
        ("trials", f"{len(s.trials)}: " + ", ".join(f"{n} {k}" for k, n in states.most_common())),
        ("run", (f"{min(starts):%Y-%m-%d %H:%M} to {max(starts):%Y-%m-%d %H:%M}, " if starts else "")
         + f"{train_s / 60:.1f} min of training on {', '.join(devices) or '-'}"),
        ("data", f"{data_root}" + (f" ({data['layout']} layout)" if "layout" in data else "")),
        ("task", f"{settings.get('task', '-')}: {data.get('task_description', '')}"),
        ("input", f"{size} voxels (D x H x W), HU window {_window(data.get('hu_window'))}"),
        ("score", f"{settings.get('folds', '-')}-fold cross-validation over the non-test scans, "
                  f"{settings.get('epochs', '-')} epochs per fold, scored at the last epoch"
                  + (f" by the {s.score.long}" if s.score.ordinal else "")),
        ("cost cap", f"{settings['max_gflops']:g} GFLOPs per scan (--max-gflops)" if settings.get("max_gflops")
         else "none"),
        ("seed", str(settings.get("seed", "-"))),
        ("split", f"{data.get('n_train', '-')} train / {data.get('n_val', '-')} validation / "
                  f"{data.get('n_test', '-')} test scans (seed {data.get('split_seed', '-')}); the test part is "
                  "held out: only python -m search.export reads it"),
        ("labels loaded", "; ".join(f"{part}: " + ", ".join(f"{_label(k, grades)}: {v}" for k, v in counts.items())
                                    for part, counts in loaded.items()) or "-"),
        ("excluded / skipped", f"{data.get('excluded', '-')} scans outside the task, "
                               f"{data.get('skipped', '-')} unreadable"),
        ("split file", str(data.get("split_file", "-"))),
    ]
    facts = table(["", ""], [[html.escape(k), html.escape(str(v))] for k, v in rows], "summary")
    kinds = Counter(_reason_kind(t, s.score) for t in s.trials if t.state != TrialState.COMPLETE)
    outcome = table(["what happened", "trials"], [[html.escape(k), str(n)] for k, n in kinds.most_common()]) \
        if kinds else ""
    artifacts = artifact_dir(studies_dir, s.study.study_name)
    commands = [export_command(s.study.study_name, studies_dir),
                f"optuna-dashboard {redact(storage_url)} --artifact-dir {artifacts}"]
    nxt = "<p>Next:</p><pre>" + html.escape("\n".join(commands)) + "</pre>"
    return facts + outcome + nxt


def build_sections(study: optuna.Study, storage_url: str, studies_dir: str = "studies",
                   top: int = TOP_N, model_dir: Path | None = None) -> list[Section]:
    """Every section of the report, in page order; ``model_dir`` defaults to export's folder for the study."""
    s = _Study(study)
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


def write_page(study: optuna.Study, storage: str, studies_dir: str, top: int, model: Path | None, out: Path) -> int:
    """Render the page and write it atomically; returns its size in bytes.

    Raises:
        UsageError: ``out`` cannot be written.
    """
    text = render_report(study, storage, studies_dir, top, model)
    try:
        atomic_write_text(out, text)
    except OSError as e:
        fault = storage_fault(e, out)
        if fault is not None:  # a full disk, a read-only folder: the line says what to do
            raise StorageError(fault.kind, out, fault.reason) from None
        raise UsageError(f"--out: cannot write {out}: {e.strerror or e}") from None
    return len(text.encode())


def main(argv: list[str] | None = None) -> int:
    """Write the report. Returns the exit code: 0 written, 2 bad input, 130 interrupted."""
    args = build_parser().parse_args(argv)
    optuna.logging.set_verbosity(optuna.logging.ERROR)

    def body() -> None:
        positive("--top", args.top)
        if args.model is not None and not Path(args.model).is_dir():
            raise UsageError(f"--model: {args.model} is not a folder; pass the folder python -m search.export wrote")
        storage = args.storage or default_storage(args.study, args.studies_dir)
        study = load_existing_study(args.study, storage)
        out = Path(args.out) if args.out else Path(args.studies_dir) / args.study / "report.html"
        size = write_page(study, storage, args.studies_dir, args.top, args.model and Path(args.model), out)
        print(f"wrote {out} ({size / 1e6:.1f} MB, works offline); open it in a browser:\n  {out.resolve().as_uri()}")

    return exit_code(body, interrupted="interrupted: nothing was written")


if __name__ == "__main__":
    raise SystemExit(main())
