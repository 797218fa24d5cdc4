"""The confirmation's decision as stored on the search study: what it ran with, each candidate's result, and
the recommendation.

:class:`Decision` is the study's ``confirmation`` user attr (:func:`stored_decision` reads it back, including
one stored by an older lungct-nas); :func:`format_decision` is its console summary.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import optuna

from search.study.storage import schema

# Two candidates, each tested at alpha 0.05 / 2: on 2 CPU cores a third costs about 3 minutes of the
# half hour. Three folds train each run on two thirds of the non-test scans: on two folds (half of them)
# the seed baseline is data-starved and specs that do not profit from more scans (no normalisation)
# outranked it there and shipped worse (benchmarks/RESULTS.md).
DEFAULT_TOP_K = 2
DEFAULT_CONFIRM_FOLDS = 3
DEFAULT_ALPHA = 0.05
DEFAULT_RESAMPLES = 2000
# A shipped candidate may be worse than the seed baseline by at most this much AUC (at the rule's level).
DEFAULT_MARGIN = 0.02
# One trained model's AUC moves with its training seed by this SD: the fidelity audit's export-style runs,
# 7 specs trained with two seeds each (benchmarks/RESULTS.md). A paired difference of two runs carries it twice.
DEFAULT_SEED_SD = 0.031
# Bumped when what a run means changes, so a resumed study never mixes runs of two designs in one decision
# (2: batch-norm statistics recomputed before scoring, weights kept for export).
CONFIRM_VERSION = 2


@dataclass(frozen=True)
class ConfirmSettings:
    """How the confirmation runs.

    Attributes:
        epochs: Epochs per run (every candidate and the baseline alike).
        seed: Base of the training seeds (a fold's seed is shared by every candidate in it).
        folds: Folds per repeat of the fresh cross-validation.
        repeats: Repeats of it.
        fold_seed: Seed of the fresh fold assignment (not the search's).
        top_k: How many of the search's best distinct specs to confirm.
        alpha: Family-wise error rate of "not worse than the baseline by more than the margin".
        resamples: Bootstrap resamples for the paired difference.
        margin: How much worse (AUC) than the baseline a shipped candidate may be at that level.
        seed_sd: The least training-seed SD of one run's AUC the rule assumes.
        second_repeat: Whether the leader and the baseline get a second repeat of fresh folds before the
            decision (the rule decides on one repeat when False).
        speed_limit: Leave out a trunk whose search trial trained more than this many times slower per sample
            than the seed baseline's own trial, taking the next trunk in its place (None: no limit; a run with a
            time budget sets one, ``search.selection.budget.CONFIRM_SPEED_LIMIT``).
    """

    epochs: int
    seed: int
    folds: int = 2
    repeats: int = 1
    fold_seed: int = 1
    top_k: int = DEFAULT_TOP_K
    alpha: float = DEFAULT_ALPHA
    resamples: int = DEFAULT_RESAMPLES
    margin: float = DEFAULT_MARGIN
    seed_sd: float = DEFAULT_SEED_SD
    second_repeat: bool = True
    speed_limit: float | None = None

    def study_name(self, search_study: str) -> str:
        """The companion study that holds the runs; its name pins what they were run with."""
        return (f"{search_study}:confirm{CONFIRM_VERSION}-k{self.folds}r{self.repeats}-e{self.epochs}-s{self.seed}"
                f"-f{self.fold_seed}")

    def to_dict(self) -> dict:
        """JSON-ready dict (``speed_limit`` only when set, so a run without a budget stores what it always did)."""
        d = dataclasses.asdict(self)
        if d["speed_limit"] is None:
            del d["speed_limit"]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> ConfirmSettings:
        """Read :meth:`to_dict`'s output; unknown keys are ignored.

        Settings without a margin, stored by the one-look rule, read as the rule they ran: one look, a lower bound
        above 0, scan noise only.
        """
        if "margin" not in d:
            d = {**d, "margin": 0.0, "seed_sd": 0.0, "second_repeat": False}
        return cls(**{f.name: d[f.name] for f in dataclasses.fields(cls) if f.name in d})


def _to_json(value):
    """Tuples to lists, all the way down: the stored decision is plain JSON."""
    if isinstance(value, dict):
        return {k: _to_json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_to_json(v) for v in value]
    return value


# What a row or a recommendation stored by an older lungct-nas lacks, and what that means (a confirmation that
# kept no fold models stored no members).
OLDER_DECISIONS_LACK = {"members": None, "se": None, "verdict": None, "gflops": None, "params": None}

# Why a candidate may replace the seed baseline, in the words every output uses.
SIGNIFICANT = "significantly better"
BETTER = "better, and not worse by more than the margin"
CHEAPER = "as good and cheaper"


def _fields_from(cls, d: dict, older_lack: dict) -> dict:
    """``d``'s known fields, with what a decision stored by an older lungct-nas lacks filled in."""
    d = {**older_lack, **d}
    return {f.name: d[f.name] for f in dataclasses.fields(cls) if f.name in d}


@dataclass(frozen=True)
class CandidateResult:
    """One candidate's confirmation: its fold AUCs, its confirmed score and how it compares to the baseline.

    Attributes:
        key: ``baseline`` or ``trial<n>``.
        trial: The search trial it came from (None: the baseline had no trial).
        baseline: Whether it is the seed baseline.
        spec: ``ArchSpec.to_dict()`` of what was trained.
        train_spec: ``TrainSpec.to_dict()``.
        search_score: Its score in the search (None: no complete trial).
        search_se: That score's standard error.
        fold_aucs: Its AUC on each fresh fold, in fold order (None: that run is missing or diverged).
        confirmed: The mean of its fold AUCs (None: not every run finished).
        members: Artifact ids of its fold models' weights (None: not kept, or an older confirmation).
        difference: The mean over its runs of its AUC minus the baseline's on the same fold (None for the
            baseline, or when unscored).
        difference_low: The one-sided lower bound of that difference at the rule's level (scan and seed noise;
            scan noise only in decisions stored by the one-look rule).
        beats_baseline: Whether that lower bound is above 0 (significantly better).
        reason: Why it has no confirmed score (None when it has one).
        se: The standard error of ``difference`` (scan and seed noise).
        verdict: Why it may replace the baseline (``SIGNIFICANT``, ``BETTER``, ``CHEAPER``), None when it may
            not (or it is the baseline, or was decided by the one-look rule).
        gflops: Its cost per scan at the study's size.
        params: Its trainable parameters.
    """

    key: str
    trial: int | None
    baseline: bool
    spec: dict
    train_spec: dict
    search_score: float | None
    search_se: float | None
    fold_aucs: tuple[float | None, ...]
    confirmed: float | None
    members: tuple[str, ...] | None
    difference: float | None
    difference_low: float | None
    beats_baseline: bool
    reason: str | None
    se: float | None = None
    verdict: str | None = None
    gflops: float | None = None
    params: int | None = None

    @classmethod
    def from_dict(cls, d: dict) -> CandidateResult:
        """Read a stored row."""
        f = _fields_from(cls, d, OLDER_DECISIONS_LACK)
        f["fold_aucs"] = tuple(f["fold_aucs"])
        f["members"] = None if f["members"] is None else tuple(f["members"])
        return cls(**f)


@dataclass(frozen=True)
class Recommendation:
    """The candidate the rule recommends, and why."""

    key: str
    trial: int | None
    baseline: bool
    confirmed: float | None
    spec: dict
    train_spec: dict
    members: tuple[str, ...] | None
    why: str
    verdict: str | None = None

    @classmethod
    def from_dict(cls, d: dict) -> Recommendation:
        """Read a stored recommendation."""
        f = _fields_from(cls, d, OLDER_DECISIONS_LACK)
        f["members"] = None if f["members"] is None else tuple(f["members"])
        return cls(**f)


@dataclass(frozen=True)
class Decision:
    """The confirmation's result, stored on the search study as its ``confirmation`` user attr.

    Attributes:
        rule: The rule applied, in words.
        settings: What the confirmation ran with.
        folds: The (repeat, fold) pairs every candidate ran on.
        candidates: The baseline first, then the search's candidates.
        recommended: What the rule recommends.
        companion_study: The study that holds the runs (None until :func:`confirm` stores the decision).
        left_out: Search trials whose trunk ranked among the top but trained too slowly to confirm in the time
            budget (``ConfirmSettings.speed_limit``).
    """

    rule: str
    settings: ConfirmSettings
    folds: tuple[tuple[int, int], ...]
    candidates: tuple[CandidateResult, ...]
    recommended: Recommendation
    companion_study: str | None = None
    left_out: tuple[int, ...] = ()

    def to_dict(self) -> dict:
        """The stored, JSON-ready form: ``companion_study`` only once it is known, ``left_out`` only when a trunk was
        left out."""
        d = _to_json(dataclasses.asdict(self))
        d["settings"] = self.settings.to_dict()
        if d["companion_study"] is None:
            del d["companion_study"]
        if not d["left_out"]:
            del d["left_out"]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> Decision:
        """Read a stored decision, including one stored by an older lungct-nas."""
        return cls(rule=d["rule"], settings=ConfirmSettings.from_dict(d["settings"]),
                   folds=tuple((int(r), int(f)) for r, f in d["folds"]),
                   candidates=tuple(CandidateResult.from_dict(r) for r in d["candidates"]),
                   recommended=Recommendation.from_dict(d["recommended"]), companion_study=d.get("companion_study"),
                   left_out=tuple(int(n) for n in d.get("left_out", ())))

    def candidate(self, key: str) -> CandidateResult | None:
        """The row of candidate ``key``, if it was confirmed."""
        return next((r for r in self.candidates if r.key == key), None)


def stored_decision(study: optuna.Study) -> Decision | None:
    """The confirmation's decision stored on ``study``, or None when it has not been confirmed yet."""
    d = study.user_attrs.get(schema.STUDY_CONFIRMATION)
    return Decision.from_dict(d) if d else None


def format_decision(decision: Decision | dict) -> str:
    """The confirmation in a few lines, for the console (a stored dict is read first)."""
    if isinstance(decision, dict):
        decision = Decision.from_dict(decision)
    s = decision.settings
    looks = " (+ a second repeat for the leader)" if s.second_repeat else ""
    lines = [f"confirmation ({s.folds}-fold x {s.repeats}{looks} on fresh folds, {s.epochs} epochs, new seeds):"]
    lines.append(f"  {'candidate':<12} {'search':>7} {'confirmed':>9} {'vs baseline':>11} {'lower bound':>11} "
                 f"{'GFLOPs':>7}  verdict")
    for r in decision.candidates:
        search = f"{r.search_score:.3f}" if r.search_score is not None else "-"
        confirmed = f"{r.confirmed:.3f}" if r.confirmed is not None else "failed"
        diff = f"{r.difference:+.3f}" if r.difference is not None else "-"
        low = f"{r.difference_low:+.3f}" if r.difference_low is not None else "-"
        gflops = f"{r.gflops:.2f}" if r.gflops is not None else "-"
        verdict = "reference" if r.baseline else (r.verdict or "-")
        lines.append(f"  {r.key:<12} {search:>7} {confirmed:>9} {diff:>11} {low:>11} {gflops:>7}  {verdict}")
    rec = decision.recommended
    if decision.left_out:
        lines.append(f"left out for their training speed (--budget): trial{'s' * (len(decision.left_out) > 1)} "
                     f"{', '.join(str(n) for n in decision.left_out)}")
    lines.append(f"rule: {decision.rule}")
    lines.append(f"recommended: {rec.key} ({rec.why})")
    return "\n".join(lines)
