"""The study report's plots: Optuna's own plots of a study, and the Pareto fronts of its score against its costs.

:class:`StudyView` reads what they need from a study once; each ``plot_*`` returns an HTML fragment, a
plotly figure (``search.pages.html.figure``) or a note saying why there is none yet.
"""

from __future__ import annotations

import html
import warnings

import optuna
import plotly.graph_objects as go
from optuna.importance import PedAnovaImportanceEvaluator

from search.pages.html import figure, note
from search.study import schema
from search.study.notes import ScoreName, study_score_name
from search.study.trials import COSTS, TrialPoint, non_dominated, ranked_trials, trial_points
from space import describe_spec

MAX_PARALLEL_PARAMS = 8
BAR_LABEL_HEADROOM = 0.25  # of the longest bar, added to the value axis for the label past the bar's end


class StudyView:
    """What the report needs from a study, read once: single or multi-objective, trials, costs, the score's name."""

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


def plot_history(s: StudyView) -> str:
    """Optuna's optimisation history of validation AUC."""
    if not s.complete:
        return note("No complete trial yet: nothing to plot.")
    fig = optuna.visualization.plot_optimization_history(s.study, target=s.target(), target_name=s.score.cv)
    return figure(fig, "fig-history")


def _curves_from_attrs(s: StudyView) -> go.Figure:
    """Learning curves from the ``val_auc`` trial attr (multi-objective studies report no intermediate values)."""
    fig = go.Figure()
    for t in s.trials:
        curve = t.user_attrs.get(schema.VAL_AUC)
        if curve:
            fig.add_trace(go.Scatter(x=list(range(1, len(curve) + 1)), y=curve, mode="lines+markers",
                                     name=f"Trial{t.number}"))
    fig.update_layout(title="Intermediate Values Plot", xaxis_title="epoch", yaxis_title=s.score.cv)
    return fig


def plot_curves(s: StudyView) -> str:
    """Validation AUC per epoch for every trial that trained: Optuna's intermediate values plot."""
    if any(t.intermediate_values for t in s.trials):
        fig = optuna.visualization.plot_intermediate_values(s.study)
        fig.update_layout(xaxis_title="folds scored", yaxis_title=s.score.cv)
    elif any(t.user_attrs.get(schema.VAL_AUC) for t in s.trials):
        fig = _curves_from_attrs(s)
    else:
        return note("No trial has finished an epoch yet: nothing to plot.")
    return figure(fig, "fig-intermediate")


def varying_params(s: StudyView) -> list[str]:
    """Parameters that all complete trials have and that take more than one value among them."""
    if not s.complete:
        return []
    names = set.intersection(*(set(t.params) for t in s.complete))
    return sorted(n for n in names if len({repr(t.params[n]) for t in s.complete}) > 1)


def plot_importance(s: StudyView, name: str, evaluator) -> tuple[str, list[str]]:
    """Optuna's importance plot with one evaluator, or a note saying why there is none; and the ranking."""
    if len(s.complete) < 2 or not varying_params(s):
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


def plot_pareto(s: StudyView, cost: str) -> str:
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


def plot_optuna_pareto(s: StudyView) -> str:
    """Optuna's own Pareto-front plot, for a multi-objective study."""
    names = [s.score.cv, COSTS["params" if "params" in s.objectives else "gflops"]]
    fig = optuna.visualization.plot_pareto_front(s.study, target_names=names[:len(s.study.directions)])
    return figure(fig, "fig-pareto-optuna")


def plot_parallel(s: StudyView, ranking: list[str]) -> str:
    """Optuna's parallel coordinates over the most important parameters that vary (it orders them by name)."""
    varying = varying_params(s)
    if not varying:
        return note("Needs complete trials whose parameters differ: nothing to plot yet.")
    ordered = [n for n in ranking if n in varying] + [n for n in varying if n not in ranking]
    fig = optuna.visualization.plot_parallel_coordinate(s.study, params=ordered[:MAX_PARALLEL_PARAMS],
                                                        target=s.target(), target_name=s.score.cv)
    return figure(fig, "fig-parallel", height=520)
