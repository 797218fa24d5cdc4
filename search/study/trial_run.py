"""One trial run: how a trained trial's failures become its Optuna state, for every runner alike.

The search's objective, the confirmation's (candidate, fold) runs and the ablation's (variant, fold) runs
each train inside :func:`trial_run`, which

- records the worker on the trial (``search.study.recovery.record_worker``), so a trial whose process died can
  be told from one still running and recovered;
- turns a :class:`search.training.unit.TrainingFailed` into the trial's state with its reason: running out
  of memory fails the trial (:class:`KnownFailure`, which every runner passes to ``study.optimize(catch=...)``
  so the study goes on) and a non-finite loss prunes it (the same seed would diverge again, so a resumed
  confirmation or ablation does not redo it);
- marks a trial stopped by Ctrl-C or SIGTERM (``lungct.signals.Terminated`` is a ``KeyboardInterrupt``)
  as interrupted, naming which of the two, before the interrupt propagates; the runner's caller then
  fails it. A ``--jobs`` worker's trial says Ctrl-C for either: its parent relays both as one SIGTERM.

A runner that has partial results to store first, or a place to name in the prune reason, says so on
the :class:`TrialRun` it is handed.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import NoReturn

import optuna

from lungct.signals import stopped_by_sigterm
from search.study import schema
from search.study.recovery import INTERRUPTED, record_worker
from search.training.unit import OUT_OF_MEMORY, TrainingFailed

TERMINATED = "interrupted (SIGTERM)"  # a scheduler's time limit, timeout, kill; Ctrl-C's is recovery.INTERRUPTED


class KnownFailure(Exception):
    """A trial failed for a known reason, recorded as its ``fail_reason``; the study goes on."""


@dataclass
class TrialRun:
    """What a runner tells :func:`trial_run` while it trains.

    Attributes:
        trial: The trial being run.
        where: Prefixed to a non-finite loss's prune reason (``"fold 2"`` gives ``"fold 2: non-finite ..."``).
        on_failure: Called with a training failure before it is mapped, e.g. to store the epochs that ran.
    """

    trial: optuna.Trial
    where: str | None = None
    on_failure: Callable[[TrainingFailed], None] | None = None

    def set(self, attrs: dict) -> None:
        """Set each of ``attrs`` (schema names to JSON values) as a user attr of the trial."""
        for key, value in attrs.items():
            self.trial.set_user_attr(key, value)

    def prune(self, reason: str) -> NoReturn:
        """Record ``reason`` as the trial's ``prune_reason`` and prune it."""
        self.trial.set_user_attr(schema.PRUNE_REASON, reason)
        raise optuna.TrialPruned(reason)


@contextmanager
def trial_run(trial: optuna.Trial) -> Iterator[TrialRun]:
    """Run a training trial; map its known failures to its state (module docstring)."""
    run = TrialRun(trial)
    record_worker(trial)
    try:
        yield run
    except TrainingFailed as e:
        if run.on_failure is not None:
            run.on_failure(e)
        if e.kind == OUT_OF_MEMORY:
            trial.set_user_attr(schema.FAIL_REASON, str(e))
            raise KnownFailure(str(e)) from None
        reason = f"{run.where}: {e}" if run.where else str(e)
        trial.set_user_attr(schema.PRUNE_REASON, reason)
        raise optuna.TrialPruned(reason) from None  # from None: the reason says it all, no traceback to chain
    except KeyboardInterrupt as e:
        trial.set_user_attr(schema.FAIL_REASON, TERMINATED if stopped_by_sigterm(e) else INTERRUPTED)
        raise
