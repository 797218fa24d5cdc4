"""Plain records shared by discovery, loading and splitting: scans, tasks and preprocessing parameters."""

from __future__ import annotations

import difflib
from dataclasses import asdict, dataclass

from lungct.errors import printable

CATEGORIES = ("CT-0", "CT-1", "CT-2", "CT-3", "CT-4")
# The Keras tutorial's archives pool CT-2 and CT-3 into one folder.
POOLED_CATEGORIES = {"CT-23": ("CT-2", "CT-3")}


@dataclass(frozen=True)
class ScanRecord:
    """One scan on disk and what we know of it before reading it.

    Attributes:
        study_id: Unique within a data set (e.g. ``study_0001``); splits are lists of these.
        path: Absolute path of the NIfTI file.
        category: ``CT-0``..``CT-4``, ``CT-23`` (the Keras archives' pooled CT-2/CT-3), or ``""`` where a
            manifest gives only a label.
        label: The label under the task (0 or 1), or None when the task excludes the category.
    """

    study_id: str
    path: str
    category: str
    label: int | None


@dataclass(frozen=True)
class Skipped:
    """A file that was not used, and why."""

    path: str
    reason: str

    def __str__(self) -> str:
        """``path: reason`` as one printable line (control characters in a file name escaped)."""
        return f"{printable(self.path)}: {printable(self.reason)}"


@dataclass(frozen=True)
class Task:
    """A binary task: which categories are negative (label 0) and which positive (label 1).

    Categories in neither tuple are excluded from the task and reported as excluded.
    """

    name: str
    negative: tuple[str, ...]
    positive: tuple[str, ...]
    description: str = ""

    def label(self, category: str) -> int | None:
        """The label of a category under this task, or None if the task excludes it."""
        if category in self.negative:
            return 0
        if category in self.positive:
            return 1
        pooled = POOLED_CATEGORIES.get(category)
        if pooled and all(c in self.positive for c in pooled):
            return 1
        if pooled and all(c in self.negative for c in pooled):
            return 0
        return None


TASKS = {
    "course": Task("course", ("CT-0",), ("CT-2", "CT-3"), "CT-0 (normal) vs CT-2/CT-3 (25-75% involvement)"),
    "any": Task("any", ("CT-0",), ("CT-1", "CT-2", "CT-3", "CT-4"), "CT-0 (normal) vs any COVID-19 finding"),
    "severe": Task("severe", ("CT-0", "CT-1"), ("CT-3", "CT-4"), "CT-0/CT-1 vs CT-3/CT-4 (>= 50%)"),
}


def get_task(name: str) -> Task:
    """The task of that name; an unknown name raises ValueError naming the nearest task."""
    if name not in TASKS:
        near = difflib.get_close_matches(name, TASKS, n=1)
        hint = f"; did you mean {near[0]!r}?" if near else ""
        raise ValueError(f"task: unknown task {name!r} (choose from {', '.join(TASKS)}){hint}")
    return TASKS[name]


@dataclass(frozen=True)
class PreprocessConfig:
    """Everything that turns a scan in HU into a training tensor; the cache key includes all of it.

    Attributes:
        size: Output (D, H, W) in voxels: slices, then rows, then columns. The seed's 128x128x64 input
            is (64, 128, 128) here.
        hu_min: Lower end of the HU window (air and lung parenchyma at about -1000..-850).
        hu_max: Upper end of the HU window; bone above it saturates.
    """

    size: tuple[int, int, int] = (64, 128, 128)
    hu_min: float = -1000.0
    hu_max: float = 400.0

    def __post_init__(self) -> None:
        size = tuple(int(s) for s in self.size)
        if len(size) != 3 or min(size) < 1:
            raise ValueError(f"size: expected three positive voxel counts (D, H, W), got {self.size!r}")
        object.__setattr__(self, "size", size)
        if not self.hu_max > self.hu_min:
            raise ValueError(f"hu_max: must exceed hu_min, got window [{self.hu_min}, {self.hu_max}]")

    def to_dict(self) -> dict:
        """Plain JSON-ready dict (the size as a list)."""
        d = asdict(self)
        d["size"] = list(self.size)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> PreprocessConfig:
        """Inverse of :meth:`to_dict`."""
        return cls(size=tuple(d["size"]), hu_min=float(d["hu_min"]), hu_max=float(d["hu_max"]))
