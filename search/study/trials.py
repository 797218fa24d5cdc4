"""What a finished study's trials say: the ranking by validation AUC, and AUC against cost for Pareto views.

Read by ``search.report`` (the top-trials table and the Pareto plots) and ``search.export`` (which trial
to export). Only trials that recorded a spec and its cost take part; the first objective is always
validation AUC, in single- and multi-objective studies alike.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import optuna
from optuna.trial import FrozenTrial, TrialState

from lungct.errors import UsageError
from search.study.storage import BASELINE_ATTR, schema

COSTS = {"params": "parameters", "gflops": "GFLOPs"}


def ranked_trials(study: optuna.Study) -> list[FrozenTrial]:
    """Complete trials, best validation AUC first; equal AUCs put the smaller model (fewer params) first."""
    complete = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
                if t.values and math.isfinite(t.values[0])]
    return sorted(complete, key=lambda t: (-t.values[0], t.user_attrs.get(schema.PARAMS, math.inf), t.number))


def best_trial(study: optuna.Study) -> FrozenTrial:
    """The trial to export: the first of :func:`ranked_trials`.

    Raises:
        ValueError: The study has no complete trial.
    """
    ranked = ranked_trials(study)
    if not ranked:
        raise UsageError(f"study: {study.study_name!r} has no complete trial yet (run python -m search.run)")
    return ranked[0]


def baseline_trial(study: optuna.Study) -> FrozenTrial | None:
    """The seed baseline's trial (trial 0 of a study made by ``search.run``), whatever its state."""
    return next((t for t in study.get_trials(deepcopy=False) if t.user_attrs.get(BASELINE_ATTR)), None)


@dataclass(frozen=True)
class TrialPoint:
    """One trial in AUC-against-cost space.

    Attributes:
        number: Trial number.
        auc: Best validation AUC of a complete trial; for a pruned one, the last AUC it reported.
        params: Trainable parameters.
        gflops: Forward GFLOPs per scan.
        complete: Whether the trial completed (only complete trials can be on the Pareto front).
        baseline: Whether it is the seed baseline.
        spec: The trial's ArchSpec dict.
    """

    number: int
    auc: float
    params: int
    gflops: float
    complete: bool
    baseline: bool
    spec: dict | None

    def cost(self, name: str) -> float:
        """The cost named ``params`` or ``gflops``."""
        return float(self.params if name == "params" else self.gflops)


def _last_reported_auc(trial: FrozenTrial) -> float:
    if trial.intermediate_values:
        return float(trial.intermediate_values[max(trial.intermediate_values)])
    curve = trial.user_attrs.get(schema.VAL_AUC) or []
    return float(curve[-1]) if curve else math.nan


def trial_points(study: optuna.Study) -> list[TrialPoint]:
    """Complete trials, and pruned trials that trained at least one epoch, with their AUC and costs."""
    points = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)):
        attrs = t.user_attrs
        if "params" not in attrs or "gflops" not in attrs:
            continue  # pruned before training (a spec that cannot run at the input size)
        complete = t.state == TrialState.COMPLETE
        auc = float(t.values[0]) if complete and t.values else _last_reported_auc(t)
        if not math.isfinite(auc):
            continue
        points.append(TrialPoint(t.number, auc, int(attrs["params"]), float(attrs["gflops"]), complete,
                                 bool(attrs.get(BASELINE_ATTR)), attrs.get("spec")))
    return points


def non_dominated(points: list[TrialPoint], cost: str) -> set[int]:
    """Numbers of the complete trials that no other complete trial beats on both AUC and ``cost``.

    A trial is dominated when another has at least its AUC at no more cost, and is strictly better in
    one of the two. Trials with identical AUC and cost are all kept.
    """
    complete = [p for p in points if p.complete]
    front = set()
    for p in complete:
        dominated = any(q.auc >= p.auc and q.cost(cost) <= p.cost(cost)
                        and (q.auc > p.auc or q.cost(cost) < p.cost(cost)) for q in complete)
        if not dominated:
            front.add(p.number)
    return front
