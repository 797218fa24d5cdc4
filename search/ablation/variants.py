"""Which architectures an ablation runs: the seed model, its six modifications, and a search study's best.

Each variant is fitted to the input size before anything trains (a spec that cannot run fails here,
with the variant named), and carries a key, a hash of its spec and training settings, so a stored run
counts only for the spec it trained.
"""

from __future__ import annotations

import difflib
import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass

from lungct.errors import UsageError
from search.selection.confirm import stored_decision
from search.study.notes import score_name
from search.study.storage import load_existing_study, schema
from search.study.trials import ranked_trials
from space import ArchSpec, SpecInputError, TrainSpec, baseline, baseline_train, fit_to_size, variants

BASELINE = "baseline"
STUDY_BEST = "study_best"
SEED_PADDING = baseline().padding


@dataclass(frozen=True)
class Variant:
    """One architecture to cross-validate.

    Attributes:
        name: ``baseline``, a modification's name, or ``study_best``.
        spec: The architecture as trained (after fitting it to the input size).
        train_spec: Optimiser settings.
        padding_note: Why 'same' padding replaced the spec's own, or None.
        origin: Where the spec comes from, in words.
    """

    name: str
    spec: ArchSpec
    train_spec: TrainSpec
    padding_note: str | None
    origin: str

    @property
    def key(self) -> str:
        """A hash of spec and training settings: a stored run counts only for the spec it trained."""
        text = json.dumps({"spec": self.spec.to_dict(), "train": self.train_spec.to_dict()}, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:12]

    @property
    def padding(self) -> str:
        """The padding, and whether it differs from the seed's."""
        if self.spec.padding == SEED_PADDING:
            return self.spec.padding
        return f"{self.spec.padding} (the seed's is {SEED_PADDING})"


def parse_variants(text: str) -> tuple[list[str], bool]:
    """``all`` or a comma-separated list -> the names in the course's order, baseline first.

    Returns:
        The names, and whether the baseline was added because the list lacked it.

    Raises:
        ValueError: An unknown name (the nearest valid one is suggested), or an empty list.
    """
    known = list(variants())
    names = [n.strip() for n in text.split(",") if n.strip()]
    if names == ["all"]:
        return known, False
    for name in names:
        if name in known:
            continue
        if name == STUDY_BEST:
            raise UsageError(f"--variants: {STUDY_BEST} is added by --study NAME (the search study whose best "
                             "trial to cross-validate), not by --variants")
        close = difflib.get_close_matches(name, [*known, "all"], n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise UsageError(f"--variants: unknown variant {name!r}{hint} (choose from all, {', '.join(known)})")
    if not names:
        raise UsageError(f"--variants: expected all or a list of {', '.join(known)}, got {text!r}")
    added = BASELINE not in names
    return [n for n in known if n in names or n == BASELINE], added


@dataclass(frozen=True)
class StudyBest:
    """A search study's best complete trial, as the ``study_best`` variant needs it.

    Attributes:
        spec: Its architecture.
        train_spec: Its optimiser settings.
        origin: Where it comes from, in words.
        split_seed: The seed of the study's train/val/test split (None if the study does not say), so
            that the ablation keeps that study's test part locked too.
        task: The study's task (None if it does not say), which the ablation must share for the same reason.
    """

    spec: ArchSpec
    train_spec: TrainSpec
    origin: str
    split_seed: int | None
    task: str | None = None


def load_study_best(name: str, storage_url: str) -> StudyBest:
    """The spec and training settings of a search study's recommended (else best complete) trial, and its origin.

    Raises:
        ValueError: No such study, no complete trial with a spec, or a stored spec that no longer parses.
    """
    study = load_existing_study(name, storage_url)
    stored = study.user_attrs.get(schema.STUDY_SETTINGS) or {}
    # A study made before tasks were stored ran the course task (search.selection.settings.OLDER_STUDIES).
    task = stored.get("task", "course") if stored else None
    score = score_name(task)
    decision = stored_decision(study)
    if decision and not decision.recommended.baseline:
        # What search.export ships: the confirmation's recommendation.
        rec = decision.recommended
        spec, train_spec = ArchSpec.from_dict(rec.spec), TrainSpec.from_dict(rec.train_spec)
        origin = f"recommended trial ({rec.trial}) of study {name!r}, confirmed {score.short} {rec.confirmed:.3f}"
    else:
        # No confirmation yet, or it kept the baseline: the search's best-scored trial is the candidate.
        complete = [t for t in ranked_trials(study) if {schema.SPEC, schema.TRAIN_SPEC} <= t.user_attrs.keys()]
        if not complete:
            raise UsageError(f"--study: study {name!r} has no complete trial yet (run python -m search.run first)")
        best = complete[0]
        try:
            spec = ArchSpec.from_dict(best.user_attrs[schema.SPEC])
            train_spec = TrainSpec.from_dict(best.user_attrs[schema.TRAIN_SPEC])
        except ValueError as e:
            raise UsageError(f"--study: trial {best.number} of study {name!r} holds a spec that does not parse: "
                             f"{e}") from None
        origin = f"best trial ({best.number}) of study {name!r}, search {score.cv} {best.values[0]:.3f}"
    seed = stored.get("split_seed", stored.get("seed"))
    return StudyBest(spec, train_spec, origin, int(seed) if seed is not None else None, task)


def make_variants(names: Sequence[str], size: tuple[int, int, int],
                  study_best: StudyBest | None = None) -> list[Variant]:
    """The variants to run, each fitted to ``size``; all but ``study_best`` train with the seed's settings.

    Raises:
        ValueError: A variant cannot run at ``size`` even with 'same' padding.
    """
    specs = variants()
    todo = [(n, specs[n], baseline_train(), "the seed model" if n == BASELINE else f"the seed with {n}")
            for n in names]
    if study_best is not None:
        todo.append((STUDY_BEST, study_best.spec, study_best.train_spec, study_best.origin))
    out = []
    for name, spec, train_spec, origin in todo:
        try:
            fitted, note = fit_to_size(spec, size)
        except SpecInputError as e:
            raise UsageError(f"--size: variant {name} cannot run at {'x'.join(map(str, size))} voxels: {e}") \
                from None
        out.append(Variant(name, fitted, train_spec, note, origin))
    return out


def padding_lines(variant_list: Sequence[Variant]) -> list[str]:
    """One line per reason the 'same' padding replaced a spec's own, naming the variants it applies to."""
    notes = dict.fromkeys(v.padding_note for v in variant_list if v.padding_note)
    return [f"padding: {', '.join(v.name for v in variant_list if v.padding_note == note)} use {note}"
            for note in notes]


def training_text(train_spec: TrainSpec) -> str:
    """``adam lr 0.0001, weight decay 0, batch 2``."""
    t = train_spec
    return f"{t.optimizer} lr {t.lr:g}, weight decay {t.weight_decay:g}, batch {t.batch_size}"
