"""Preparing data for a command: discover, split once, load the parts the command may see.

The search and the ablation load only train and validation scans; the test part is decoded by
``search.export`` alone. Every command loads its data here, once per process.
"""

from __future__ import annotations

import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import torch

from lungct.dataset import LoadedScans, load_scans
from lungct.default_data import DEFAULT_N, DEFAULT_SEED, default_phantom_root
from lungct.discover import Discovery, discover
from lungct.errors import DataError
from lungct.records import PreprocessConfig
from lungct.splits import Split, load_or_make_folds, load_or_make_split


@dataclass(frozen=True)
class Tensors:
    """A labelled set held in memory: (N, 1, D, H, W) float16 volumes and (N,) float32 labels (0/1, or grades)."""

    volumes: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return int(self.labels.shape[0])


@dataclass
class PreparedData:
    """Data ready for training.

    Attributes:
        found: What discovery found (records, excluded, skipped).
        split: The saved train/val/test split (study ids).
        split_path: The JSON file holding it.
        loaded: The scans loaded into memory (only the parts asked for).
        parts: Which parts were loaded ("train", "val", and "test" for export only).
    """

    found: Discovery
    split: Split
    split_path: Path
    loaded: LoadedScans
    parts: tuple[str, ...]

    def tensors(self, *parts: str) -> Tensors:
        """The loaded scans of the given parts, concatenated in that order."""
        missing = set(parts) - set(self.parts)
        if missing:
            raise ValueError(f"parts: {sorted(missing)} were not loaded (loaded: {list(self.parts)})")
        ids = [sid for part in parts for sid in getattr(self.split, part)]
        volumes, labels = self.loaded.select(ids)
        return Tensors(volumes, labels)

    def counts(self, part: str) -> Counter:
        """Loaded scans per label in one part."""
        return Counter(int(v) for v in self.tensors(part).labels.tolist())

    def summary(self) -> dict:
        """A JSON-ready description of data, task and split (for trial/study attrs, reports, model cards)."""
        return {
            "root": str(self.found.root),
            "layout": self.found.layout,
            "task": self.found.task.name,
            "task_description": self.found.task.description,
            "size": list(self.loaded.config.size),
            "hu_window": [self.loaded.config.hu_min, self.loaded.config.hu_max],
            "split_file": str(self.split_path),
            "split_seed": self.split.seed,
            "n_train": len(self.split.train), "n_val": len(self.split.val), "n_test": len(self.split.test),
            "loaded": {part: dict(sorted(self.counts(part).items())) for part in self.parts},
            "excluded": len(self.found.excluded),
            "skipped": len(self.found.skipped) + len(self.loaded.skipped),
        }


def cv_records(prepared: PreparedData) -> list:
    """The loaded scans of the train and validation parts: what cross-validation may use (never test)."""
    allowed = set(prepared.split.train) | set(prepared.split.val)
    return [r for r in prepared.loaded.records if r.study_id in allowed]


def search_folds(prepared: PreparedData, k: int, studies_dir: str | Path, fold_seed: int) -> list:
    """Stratified k-fold over the loaded non-test scans (saved beside the split): (fold, train, val) per fold."""
    folds, _ = load_or_make_folds(cv_records(prepared), Path(studies_dir) / "splits", k=k, repeats=1, seed=fold_seed)
    return [(f, Tensors(*prepared.loaded.select(f.train)), Tensors(*prepared.loaded.select(f.val))) for f in folds]


def resolve_data_root(data: str | None, studies_dir: str | Path = "studies", n_phantoms: int = DEFAULT_N,
                      phantom_seed: int = DEFAULT_SEED) -> Path:
    """``--data`` as given, or the default phantom set (generated under ``studies/`` once)."""
    if data:
        return Path(data)
    return default_phantom_root(studies_dir, n_phantoms, phantom_seed, progress=sys.stderr.isatty())


def prepare_data(
    root: str | Path,
    config: PreprocessConfig,
    *,
    parts: tuple[str, ...] = ("train", "val"),
    task: str = "course",
    seed: int = 0,
    studies_dir: str | Path = "studies",
    workers: int | None = None,
    progress: bool = True,
) -> PreparedData:
    """Discover ``root``, make or reuse its split, and load the scans of ``parts``.

    Args:
        root: Data folder or manifest.
        config: Preprocessing (window, size); also the cache key.
        parts: Which split parts to load; the search never asks for "test".
        task: Task name (which categories each label holds; ``lungct.records.TASKS``).
        seed: Split seed.
        studies_dir: Where the cache and split files live.
        workers: Decoding processes.
        progress: Progress bar while loading.

    Raises:
        DataError: Unusable root, or too few usable scans in a class.
    """
    found = discover(root, task)
    records = found.records
    split, split_path = load_or_make_split(records, Path(studies_dir) / "splits", seed=seed)
    wanted = {sid for part in parts for sid in getattr(split, part)}
    loaded = load_scans([r for r in records if r.study_id in wanted], config, Path(studies_dir) / "cache",
                        workers=workers, progress=progress)
    prepared = PreparedData(found, split, split_path, loaded, parts)
    task_labels = range(found.task.n_grades)
    for part in parts:
        counts = prepared.counts(part)
        if min(counts.get(k, 0) for k in task_labels) < 1:
            held = " and ".join(f"{counts.get(k, 0)} of label {k}" for k in task_labels)
            every = "both labels are" if len(task_labels) == 2 else "every grade is"
            raise DataError(f"too few usable scans: the {part} part holds {held} after skipping "
                            f"{len(loaded.skipped)} unreadable scans; {every} needed")
    return prepared


def describe(prepared: PreparedData) -> str:
    """One line on what was loaded, for the console."""
    s = prepared.summary()
    skipped = f", {s['skipped']} skipped (see python -m lungct.inspect)" if s["skipped"] else ""
    labels = range(prepared.found.task.n_grades)
    loaded = "; ".join(f"{part} {sum(c.values())} ({'/'.join(str(c.get(k, 0)) for k in labels)})"
                       for part, c in s["loaded"].items())
    return (f"data: {s['root']} [{s['layout']}], task {s['task']}, {'x'.join(map(str, s['size']))} voxels; "
            f"loaded {loaded} (label {'/'.join(map(str, labels))}){skipped}; test part ({s['n_test']}) held out")


