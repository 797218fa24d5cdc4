"""The confirmation stage: retrain the search's best specs and the seed baseline on fresh folds, then decide.

A search's best score is the maximum of many noisy estimates, so it is optimistic by construction. After
the trials, the top-k distinct specs and the seed baseline are trained again on fresh cross-validation
folds of the non-test scans (another fold assignment, new training seeds, the same seeds for every
candidate within a fold so the comparison is paired) and scored at the final epoch.

This module runs the stage and :func:`confirm` is its entry. What it retrains is
``search.selection.candidates``, the rule that decides is ``search.selection.rule`` and the decision it stores
is ``search.selection.decision``; their names are importable from here too.

Each run's model gets its batch-norm statistics recomputed over its training scans before it is scored
(``search.training.loop.recalibrate_batchnorm``): with the running averages as training left them, the seed
baseline confirmed 0.07-0.16 AUC below what its refit scored on fresh phantoms and candidates replaced it that
were no better (benchmarks/RESULTS.md). Its weights are kept as an artifact of its run, so
``search.export --ensemble`` can ship the recommended spec's fold models, the exact models scored here.

Each (candidate, fold) run is one trial of a companion study in the same storage (``search.selection.confirm_runs``
trains them, several at a time in their own processes on the CPU), so the stage resumes after Ctrl-C and the runs
show in optuna-dashboard; the decision is stored on the search
study as the ``confirmation`` user attr, which ``search.export``, ``search.report`` and the run's
summary read.
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import optuna
from optuna.trial import TrialState

from lungct.errors import UsageError
from search.selection.candidates import BASELINE_KEY, Candidate, SlowTrunk, select_candidates
from search.selection.confirm_runs import (
    ConfirmFold,
    ConfirmRunner,
    TrainFn,
    TrialCallback,
    finished_runs,
    run_seed,
)
from search.selection.decision import (
    BETTER,
    CHEAPER,
    DEFAULT_CONFIRM_FOLDS,
    DEFAULT_TOP_K,
    SIGNIFICANT,
    ConfirmSettings,
    Decision,
    format_decision,
    stored_decision,
)
from search.selection.rule import RULE_RATES, NoRecommendation, RunResult, decide, leader, paired_se, rule_text
from search.study.recovery import describe_worker, recover_trials
from search.study.storage import schema
from search.training.unit import train_model

# This module's public names and those of its parts, which other modules import from here.
__all__ = [
    "BASELINE_KEY", "BETTER", "CHEAPER", "DEFAULT_CONFIRM_FOLDS", "DEFAULT_TOP_K", "RULE_RATES",
    "SECOND_REPEAT_FOLD_SEED", "SIGNIFICANT", "Candidate", "ConfirmFold", "ConfirmRunner", "ConfirmSettings",
    "Decision", "NoRecommendation", "RunResult", "TrainFn", "TrialCallback", "confirm", "decide", "finished_runs",
    "format_decision", "leader", "paired_se", "rule_text", "run_seed", "select_candidates", "stored_decision",
]

# The second look's folds: another assignment than the first repeat's (fold_seed) and the search's.
SECOND_REPEAT_FOLD_SEED = 1000


def confirm(study: optuna.Study, storage: optuna.storages.BaseStorage, folds: Sequence[ConfirmFold],
            settings: ConfirmSettings, size: tuple[int, int, int], device, amp: bool = False,
            train_fn: TrainFn = train_model, progress: bool | None = None,
            artifacts: str | Path | None = None,
            callbacks: Sequence[TrialCallback] = (),
            second_folds: Callable[[], Sequence[ConfirmFold]] | None = None, jobs: int = 1,
            threads: int = 1) -> Decision:
    """Run (or resume) the confirmation of ``study`` and store the decision on it.

    ``callbacks`` are Optuna trial callbacks, called after each finished confirmation run.

    ``artifacts`` is the artifact store's folder where each run's weights are kept (see
    :class:`ConfirmRunner`); the decision lists the artifact ids of every candidate's fold models.

    ``jobs`` runs train at once, each in a process of ``threads`` CPU threads (1: in this process; see
    :class:`ConfirmRunner`).

    ``second_folds`` makes the second look's folds (another fresh assignment, repeat 1), called only when
    ``settings.second_repeat`` and a candidate leads after the first look.

    Returns:
        The decision (see :func:`decide`), also stored as the study's ``confirmation`` user attr.
    """
    slow: list[SlowTrunk] = []
    candidates = select_candidates(study, size, settings.top_k, settings.speed_limit, slow)
    for trunk in slow:
        print(f"confirmation: {trunk.line(settings.speed_limit or 0.0)}", flush=True)
    companion = optuna.create_study(study_name=settings.study_name(study.study_name), storage=storage,
                                    load_if_exists=True, direction="maximize",
                                    sampler=optuna.samplers.RandomSampler(seed=settings.seed))
    for line in recover_trials(companion):  # a run whose process died: the runner trains that pair again
        print(f"confirmation: {line}", file=sys.stderr)
    busy = companion.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    if busy:  # a live worker's run (recover_trials failed the dead ones): one confirmation per study at a time
        raise UsageError(f"study {study.study_name!r}: {describe_worker(busy[0].user_attrs.get(schema.WORKER))} is "
                         "running its confirmation now; let it finish (what it trains is kept), then "
                         "--confirm-only reads its decision or resumes it")
    runner = ConfirmRunner(folds, settings, device, amp, train_fn, progress, artifacts, jobs, threads)
    runs = runner.run(companion, candidates, callbacks)
    first = [(f.repeat, f.fold) for f in folds]
    second: list[tuple[int, int]] = []
    lead = leader(candidates, runs, first) if settings.second_repeat else None
    if lead is not None:
        if second_folds is None:
            raise ValueError("confirm: settings.second_repeat needs second_folds")
        more = list(second_folds())
        print(f"second look: {lead.key} leads the seed baseline after the first repeat; both train on a second "
              f"repeat of {len(more)} fresh folds before the decision", flush=True)
        runs = runner.run(companion, [candidates[0], lead], callbacks, folds=more)
        second = [(f.repeat, f.fold) for f in more]
    decision = dataclasses.replace(decide(candidates, runs, first, settings, second),
                                   companion_study=companion.study_name, left_out=tuple(t.trial for t in slow))
    study.set_user_attr(schema.STUDY_CONFIRMATION, decision.to_dict())
    return decision
