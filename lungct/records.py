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
        label: The label under the task (0 or 1; a grade 0..K-1 under an ordinal task), or None when the task
            excludes the category.
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
    """Which categories each label holds: a binary task (labels 0 and 1) or an ordinal grading (0 < 1 < ... < K-1).

    Categories in no grade are excluded from the task and reported as excluded.

    Attributes:
        name: The task's name (``--task``).
        grades: The categories of label 0, label 1, ... in order; two for a binary task, more for an
            ordinal one, whose labels are ordered grades.
        description: One line for consoles and model cards.
    """

    name: str
    grades: tuple[tuple[str, ...], ...]
    description: str = ""

    def __post_init__(self) -> None:
        grades = tuple(tuple(g) for g in self.grades)
        if len(grades) < 2 or not all(grades):
            raise ValueError(f"task {self.name!r}: needs at least two non-empty grades, got {self.grades!r}")
        flat = [c for g in grades for c in g]
        if len(flat) != len(set(flat)):
            raise ValueError(f"task {self.name!r}: a category is in two grades: {self.grades!r}")
        object.__setattr__(self, "grades", grades)

    @property
    def n_grades(self) -> int:
        """K, the number of labels (2 for a binary task)."""
        return len(self.grades)

    @property
    def ordinal(self) -> bool:
        """Whether the labels are K > 2 ordered grades (trained with an ordinal head)."""
        return self.n_grades > 2

    @property
    def negative(self) -> tuple[str, ...]:
        """Categories of label 0."""
        return self.grades[0]

    @property
    def positive(self) -> tuple[str, ...]:
        """Categories of label 1 of a binary task (every grade above 0 for an ordinal one)."""
        return tuple(c for g in self.grades[1:] for c in g)

    def label(self, category: str) -> int | None:
        """The label of a category under this task, or None if the task excludes it.

        A pooled folder (``CT-23``) takes a label only when all its grades share one.
        """
        for k, grade in enumerate(self.grades):
            if category in grade:
                return k
        pooled = POOLED_CATEGORIES.get(category)
        if pooled:
            labels = {self.label(c) for c in pooled}
            if len(labels) == 1:
                return labels.pop()
        return None

    def splits_pooled(self, category: str) -> bool:
        """Whether ``category`` is a pooled folder whose grades this task labels apart (CT-23 under severity)."""
        pooled = POOLED_CATEGORIES.get(category)
        return pooled is not None and len({self.label(c) for c in pooled} - {None}) > 1


# The severity grading pools CT-4 with CT-3: MosMedData holds 2 CT-4 studies among 1110, too few for a
# stratified fold, a test part or a per-grade AUC, so a model could not learn CT-4 nor be checked on it.
# Both grades route to immediate admission, so the pooled grade lists both decisions.
TASKS = {
    "course": Task("course", (("CT-0",), ("CT-2", "CT-3")), "CT-0 (normal) vs CT-2/CT-3 (25-75% involvement)"),
    "any": Task("any", (("CT-0",), ("CT-1", "CT-2", "CT-3", "CT-4")), "CT-0 (normal) vs any COVID-19 finding"),
    "severe": Task("severe", (("CT-0", "CT-1"), ("CT-3", "CT-4")), "CT-0/CT-1 vs CT-3/CT-4 (>= 50%)"),
    "severity": Task("severity", (("CT-0",), ("CT-1",), ("CT-2",), ("CT-3", "CT-4")),
                     "severity grades CT-0 < CT-1 < CT-2 < CT-3/CT-4 (CT-4 pooled with CT-3: 2 of 1110 MosMedData "
                     "studies)"),
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
