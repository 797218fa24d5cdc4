"""Which specs the confirmation retrains: the seed baseline, then the best trial of each top distinct trunk.

A trunk (:data:`TRUNK_FIELDS`) stands for one architecture, so the confirmation's few slots go to different
ones; under a time budget a trunk that trained too slowly per sample is left out (:class:`SlowTrunk`) and the
next one takes its place.
"""

from __future__ import annotations

from dataclasses import dataclass

import optuna
from optuna.trial import FrozenTrial, TrialState

from search.study.storage import schema
from search.study.trials import ranked_trials
from space import ArchSpec, TrainSpec, baseline, baseline_train, cost, fit_to_size

BASELINE_KEY = "baseline"


@dataclass(frozen=True)
class Candidate:
    """A spec to confirm: the baseline, or one of the search's best trials."""

    key: str
    trial: int | None
    spec: ArchSpec
    train_spec: TrainSpec
    search_score: float | None = None
    search_se: float | None = None
    gflops: float | None = None
    params: int | None = None


def _identity(spec: dict, train: dict) -> tuple[str, str]:
    return repr(sorted(spec.items())), repr(sorted(train.items()))


# What a trial's architecture is, for confirmation: its convolutional trunk. The dense head, dropout and
# optimiser settings are left out on purpose (see select_candidates).
TRUNK_FIELDS = ("levels", "activation", "pooling", "norm", "padding")


def trunk_key(spec: dict) -> str:
    """The convolutional trunk of a stored spec (:data:`TRUNK_FIELDS`), as a comparable key."""
    return repr([(k, spec.get(k)) for k in TRUNK_FIELDS])


@dataclass(frozen=True)
class SlowTrunk:
    """A trunk left out of the confirmation for its speed: its best trial and how much slower it trained."""

    trial: int
    samples_per_s: float
    times_slower: float

    def line(self, limit: float) -> str:
        return (f"trial {self.trial} left out of the confirmation: it trained {self.times_slower:.1f}x slower per "
                f"sample than the seed baseline ({self.samples_per_s:g} samples/s), above the budget's limit of "
                f"{limit:g}x, so its runs would not fit; the next trunk takes its place (--budget none confirms it; "
                f"search.export --trial {self.trial} ships it unconfirmed)")


def select_candidates(study: optuna.Study, size: tuple[int, int, int], top_k: int,
                      speed_limit: float | None = None, left_out: list[SlowTrunk] | None = None) -> list[Candidate]:
    """The seed baseline first, then the best complete trials of the ``top_k`` best distinct trunks.

    Distinct means another convolutional trunk (levels, blocks, filters, activation, pooling, norm,
    padding): each trunk is represented by its best-scoring trial. Trials that differ only in the dense
    head, dropout or optimiser settings score within the search's noise of each other (a trial's standard
    error is about 0.04), and TPE samples such near-copies of its best trial often; confirming two of them
    spends a slot on one architecture (a CPU study's top 2 were two 32-32-32 residual nets while the
    64-64-128 family came third). Trials that trained the baseline's own spec and training settings are
    not candidates (the baseline is there anyway).

    With ``speed_limit``, a trunk whose best trial trained more than that many times slower per sample than
    the baseline's own trial is skipped (appended to ``left_out``) and the next trunk is taken: under a time
    budget, one slow trunk at the top (a residual-inception net trained 5x slower than the baseline at half its
    GFLOPs) would otherwise price the confirmation past the deadline and stop the search early.
    """
    base_spec, _ = fit_to_size(baseline(), size)
    base_train = baseline_train()
    base_trial = next((t for t in study.get_trials(deepcopy=False) if t.user_attrs.get(schema.BASELINE)), None)
    base_identity = _identity(base_spec.to_dict(), base_train.to_dict())
    base_rate = base_trial.user_attrs.get(schema.SAMPLES_PER_S) if base_trial is not None else None
    seen: set[str] = set()
    candidates = [Candidate(BASELINE_KEY, base_trial.number if base_trial else None, base_spec, base_train,
                            _value(base_trial), _se(base_trial), *_cost(base_spec, size))]
    for t in ranked_trials(study):
        if len(candidates) > top_k:
            break
        a = t.user_attrs
        if schema.SPEC not in a or schema.TRAIN_SPEC not in a:
            continue
        trunk = trunk_key(a[schema.SPEC])
        if trunk in seen or _identity(a[schema.SPEC], a[schema.TRAIN_SPEC]) == base_identity:
            continue
        seen.add(trunk)
        rate = a.get(schema.SAMPLES_PER_S)
        if speed_limit is not None and base_rate and rate and base_rate / rate > speed_limit:
            if left_out is not None:
                left_out.append(SlowTrunk(t.number, rate, round(base_rate / rate, 2)))
            continue
        spec = ArchSpec.from_dict(a[schema.SPEC])
        candidates.append(Candidate(f"trial{t.number}", t.number, spec, TrainSpec.from_dict(a[schema.TRAIN_SPEC]),
                                    _value(t), _se(t), *_cost(spec, size)))
    return candidates


def _cost(spec: ArchSpec, size: tuple[int, int, int]) -> tuple[float, int]:
    c = cost(spec, size)
    return round(c.gflops, 4), c.params


def _value(trial: FrozenTrial | None) -> float | None:
    if trial is None or trial.state != TrialState.COMPLETE or not trial.values:
        return None
    return float(trial.values[0])


def _se(trial: FrozenTrial | None) -> float | None:
    return None if trial is None else trial.user_attrs.get(schema.SCORE_SE)
