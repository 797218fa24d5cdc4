"""Seeded, stratified splits by study id: train/val/test once per data set and seed, and k-fold.

A split is saved as JSON listing study ids, under a name that fingerprints the data set (its ids and
labels) and the seed. It is made once and reused, so every study on that data set and seed sees the
same test split, and the search, which only ever loads train and val, never touches it.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from sklearn.model_selection import RepeatedStratifiedKFold, train_test_split

from lungct.errors import DataError
from lungct.files import atomic_write_bytes
from lungct.records import ScanRecord

SPLIT_VERSION = 1


@dataclass(frozen=True)
class Split:
    """Study ids of the train, validation and test parts."""

    train: tuple[str, ...]
    val: tuple[str, ...]
    test: tuple[str, ...]
    seed: int
    fingerprint: str

    def to_dict(self) -> dict:
        """JSON-ready dict."""
        return {"version": SPLIT_VERSION, "seed": self.seed, "fingerprint": self.fingerprint,
                "train": list(self.train), "val": list(self.val), "test": list(self.test)}

    @classmethod
    def from_dict(cls, d: dict) -> Split:
        """Inverse of :meth:`to_dict`.

        Raises:
            KeyError, TypeError, ValueError: A field is missing or invalid, a part lists an id twice, or two
                parts share an id (a test scan in train would be trained on, then "held out").
        """
        parts = check_parts({"train": d["train"], "val": d["val"], "test": d["test"]})
        return cls(parts["train"], parts["val"], parts["test"], int(d["seed"]), str(d["fingerprint"]))


@dataclass(frozen=True)
class Fold:
    """One fold of repeated stratified k-fold cross-validation."""

    repeat: int
    fold: int
    train: tuple[str, ...]
    val: tuple[str, ...]


def _few(ids: list[str], most: int = 3) -> str:
    return ", ".join(ids[:most]) + (f" and {len(ids) - most} more" if len(ids) > most else "")


def check_parts(parts: dict[str, object]) -> dict[str, tuple[str, ...]]:
    """The parts of a split or fold as tuples of study ids, each id in one part only, and once.

    Raises:
        ValueError: A part is not a list of ids, lists an id twice, or shares an id with another part; the
            message names the part.
    """
    checked: dict[str, tuple[str, ...]] = {}
    for name, ids in parts.items():
        if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
            raise ValueError(f"{name}: expected a list of study ids, got {type(ids).__name__}")
        twice = sorted(i for i, n in Counter(ids).items() if n > 1)
        if twice:
            raise ValueError(f"the {name} part lists {_few(twice)} twice")
        for other, other_ids in checked.items():
            shared = sorted(set(ids) & set(other_ids))
            if shared:
                raise ValueError(f"the {name} part shares {len(shared)} id{'s' * (len(shared) > 1)} with {other} "
                                 f"({_few(shared)}); the parts must be disjoint")
        checked[name] = tuple(ids)
    return checked


def fingerprint(records: list[ScanRecord]) -> str:
    """A short hash of a data set's study ids and labels: a split belongs to exactly one data set."""
    lines = sorted(f"{r.study_id}:{r.label}" for r in records)
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()[:12]


def _check_class_sizes(records: list[ScanRecord], smallest_fraction: float, what: str) -> None:
    counts = Counter(r.label for r in records)
    need = max(2, math.ceil(1.0 / smallest_fraction))
    # 0 and 1, and every grade up to the highest one present (records here are labelled: none is None)
    labels = range(max([1, *(k for k in counts if k is not None)]) + 1)
    for label in labels:
        if counts.get(label, 0) < need:
            every = ", ".join(f"label {k} = {counts.get(k, 0)}" for k in labels)
            raise DataError(
                f"too few scans: label {label} has {counts.get(label, 0)} usable scans, {what} needs at least "
                f"{need} per class (counts: {every})"
            )


def make_split(records: list[ScanRecord], val_fraction: float = 0.15, test_fraction: float = 0.15,
               seed: int = 0) -> Split:
    """A stratified train/val/test split by label, reproducible from ``seed``.

    Raises:
        DataError: A class is too small for every part to hold at least one of its scans.
    """
    if not (0 < val_fraction < 1 and 0 < test_fraction < 1 and val_fraction + test_fraction < 1):
        raise ValueError(f"val_fraction, test_fraction: need two fractions in (0, 1) summing below 1, "
                         f"got {val_fraction} and {test_fraction}")
    pct = f"{round(100 * (1 - val_fraction - test_fraction))}/{round(100 * val_fraction)}/{round(100 * test_fraction)}"
    _check_class_sizes(records, min(val_fraction, test_fraction), f"a {pct} train/val/test split")
    records = sorted(records, key=lambda r: r.study_id)
    ids = [r.study_id for r in records]
    labels = [r.label for r in records]
    rest, test, rest_labels, _ = train_test_split(ids, labels, test_size=test_fraction, stratify=labels,
                                                  random_state=seed)
    train, val = train_test_split(rest, test_size=val_fraction / (1 - test_fraction), stratify=rest_labels,
                                  random_state=seed)
    return Split(tuple(sorted(train)), tuple(sorted(val)), tuple(sorted(test)), seed, fingerprint(records))


def load_or_make_split(records: list[ScanRecord], split_dir: str | Path = "studies/splits",
                       val_fraction: float = 0.15, test_fraction: float = 0.15, seed: int = 0) -> tuple[Split, Path]:
    """The saved split for this data set and seed, made and saved first if there is none.

    Returns:
        The split and the JSON file it is saved in.
    """
    fp = fingerprint(records)
    tag = f"v{round(100 * val_fraction)}-t{round(100 * test_fraction)}"
    path = Path(split_dir) / f"split-{fp}-{tag}-seed{seed}.json"
    if path.is_file():
        try:
            split = Split.from_dict(json.loads(path.read_text()))
        except (ValueError, KeyError, TypeError) as e:
            raise DataError(f"{path}: invalid split file: {e}; delete it to make a new split") from None
        if split.fingerprint != fp or set(split.train + split.val + split.test) != {r.study_id for r in records}:
            raise DataError(f"{path}: the saved split does not match this data set; delete it to make a new one")
        return split, path
    split = make_split(records, val_fraction, test_fraction, seed)
    atomic_write_bytes(path, (json.dumps(split.to_dict(), indent=1) + "\n").encode())
    return split, path


def kfold(records: list[ScanRecord], k: int = 5, repeats: int = 1, seed: int = 0) -> list[Fold]:
    """Repeated stratified k-fold over ``records`` (pass train + val only, never the test part)."""
    if k < 2:
        raise ValueError(f"k: need at least 2 folds, got {k}")
    _check_class_sizes(records, 1.0 / k, f"{k}-fold cross-validation")
    records = sorted(records, key=lambda r: r.study_id)
    ids = [r.study_id for r in records]
    labels = [r.label for r in records]
    splitter = RepeatedStratifiedKFold(n_splits=k, n_repeats=repeats, random_state=seed)
    folds = []
    for n, (train_idx, val_idx) in enumerate(splitter.split(ids, labels)):
        folds.append(Fold(n // k, n % k, tuple(sorted(ids[i] for i in train_idx)),
                          tuple(sorted(ids[i] for i in val_idx))))
    return folds


def _fold_from_dict(d: dict) -> Fold:
    """One saved fold, its train and validation parts checked to be disjoint."""
    try:
        parts = check_parts({"train": d["train"], "val": d["val"]})
    except ValueError as e:
        raise ValueError(f"fold {int(d['fold']) + 1} of repeat {int(d['repeat']) + 1}: {e}") from None
    return Fold(int(d["repeat"]), int(d["fold"]), parts["train"], parts["val"])


def load_or_make_folds(records: list[ScanRecord], split_dir: str | Path = "studies/splits", k: int = 5,
                       repeats: int = 1, seed: int = 0) -> tuple[list[Fold], Path]:
    """The saved k-fold assignment for this data set, k, repeats and seed, made and saved first if absent."""
    fp = fingerprint(records)
    path = Path(split_dir) / f"folds-{fp}-k{k}-r{repeats}-seed{seed}.json"
    if path.is_file():
        try:
            saved = json.loads(path.read_text())
            folds = [_fold_from_dict(f) for f in saved["folds"]]
        except (ValueError, KeyError, TypeError) as e:
            raise DataError(f"{path}: invalid folds file: {e}; delete it to make new folds") from None
        if saved.get("fingerprint") != fp:
            raise DataError(f"{path}: the saved folds do not match this data set; delete it to make new ones")
        return folds, path
    folds = kfold(records, k, repeats, seed)
    payload = {"version": SPLIT_VERSION, "seed": seed, "k": k, "repeats": repeats, "fingerprint": fp,
               "folds": [{"repeat": f.repeat, "fold": f.fold, "train": list(f.train), "val": list(f.val)}
                         for f in folds]}
    atomic_write_bytes(path, (json.dumps(payload, indent=1) + "\n").encode())
    return folds, path
