"""Finding scans: the MosMedData layout, the Keras tutorial's category folders, or a CSV manifest.

Discovery reads folder listings and CSV files only, never image data; reading and validating the
images is :mod:`lungct.nifti`'s job. Every file it passes over is reported, with the reason.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path

from lungct.errors import DataError
from lungct.records import CATEGORIES, POOLED_CATEGORIES, ScanRecord, Skipped, Task, get_task

NIFTI_SUFFIXES = (".nii", ".nii.gz")
REGISTRY_NAME = "dataset_registry.csv"
KNOWN_CATEGORIES = CATEGORIES + tuple(POOLED_CATEGORIES)
ACCEPTED_LAYOUTS = (
    "MosMedData (ROOT/studies/CT-0..CT-4/*.nii.gz, optional ROOT/dataset_registry.csv); "
    "category folders as in the Keras tutorial archives (ROOT/CT-0/*.nii.gz, ROOT/CT-23/*.nii.gz); "
    "or a CSV manifest file with columns path,category or path,label"
)


@dataclass
class Discovery:
    """What discovery found under a root.

    Attributes:
        root: The folder (or the manifest file) discovered.
        layout: ``mosmeddata``, ``folders`` or ``manifest``.
        task: The task that labelled the records.
        records: Scans the task uses (label 0 or 1), sorted by study id.
        excluded: Scans whose category the task excludes (e.g. CT-1 under the course task).
        skipped: Files passed over before reading any image data, with the reason.
    """

    root: Path
    layout: str
    task: Task
    records: list[ScanRecord] = field(default_factory=list)
    excluded: list[ScanRecord] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)


def is_nifti(path: Path) -> bool:
    """Whether a file name has a NIfTI suffix (.nii or .nii.gz)."""
    return path.name.lower().endswith(NIFTI_SUFFIXES)


def study_id_of(path: Path) -> str:
    """The file name without its NIfTI suffix: ``study_0001.nii.gz`` -> ``study_0001``."""
    name = path.name
    for suffix in (".nii.gz", ".nii"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


def discover(root: str | Path, task: Task | str = "course") -> Discovery:
    """Find every scan under ``root`` and label it under ``task``.

    Args:
        root: A data folder in one of the accepted layouts, or a CSV manifest file.
        task: A :class:`Task` or the name of one in :data:`lungct.records.TASKS`.

    Returns:
        The records the task uses, the ones it excludes, and the files skipped, with reasons.

    Raises:
        DataError: The root is missing or empty, or its layout is not one of the accepted ones.
    """
    task = get_task(task) if isinstance(task, str) else task
    root = Path(root).expanduser()
    if not root.exists():
        raise DataError(f"{root}: no such file or folder (accepted layouts: {ACCEPTED_LAYOUTS})")
    if root.is_file():
        if root.suffix.lower() != ".csv":
            raise DataError(f"{root}: a file that is not a CSV manifest (accepted layouts: {ACCEPTED_LAYOUTS})")
        found, skipped = _discover_manifest(root)
        layout = "manifest"
    elif (root / "studies").is_dir() and _category_dirs(root / "studies"):
        found, skipped = _discover_mosmeddata(root)
        layout = "mosmeddata"
    elif _category_dirs(root):
        found, skipped = _discover_folders(root)
        layout = "folders"
    elif not any(root.iterdir()):
        raise DataError(f"{root}: empty folder (accepted layouts: {ACCEPTED_LAYOUTS})")
    else:
        raise DataError(f"{root}: unknown layout (accepted layouts: {ACCEPTED_LAYOUTS})")

    result = Discovery(root=root, layout=layout, task=task, skipped=skipped)
    seen: dict[str, str] = {}
    for study_id, path, category, label in sorted(found, key=lambda f: (f[0], f[1])):
        if study_id in seen:
            result.skipped.append(Skipped(path, f"duplicate study id {study_id!r} (also {seen[study_id]})"))
            continue
        seen[study_id] = path
        if label is None:
            label = task.label(category)
        record = ScanRecord(study_id=study_id, path=path, category=category, label=label)
        (result.records if label is not None else result.excluded).append(record)
    if not result.records and not result.excluded:
        detail = f"; {len(result.skipped)} files skipped, first: {result.skipped[0].reason}" if result.skipped else ""
        raise DataError(f"{root}: no NIfTI scans found{detail} (accepted layouts: {ACCEPTED_LAYOUTS})")
    return result


# A found scan before labelling: (study_id, absolute path, category, explicit label or None).
_Found = tuple[str, str, str, "int | None"]


def _category_dirs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and p.name.upper() in KNOWN_CATEGORIES)


def _scan_folder(folder: Path, category: str) -> tuple[list[_Found], list[Skipped]]:
    found, skipped = [], []
    for path in sorted(folder.iterdir()):
        if path.name.startswith("."):
            continue
        if path.is_file() and is_nifti(path):
            found.append((study_id_of(path), str(path.resolve()), category, None))
        else:
            skipped.append(Skipped(str(path), "not a .nii or .nii.gz file"))
    return found, skipped


def _discover_folders(root: Path) -> tuple[list[_Found], list[Skipped]]:
    found, skipped = [], []
    for folder in _category_dirs(root):
        f, s = _scan_folder(folder, folder.name.upper())
        found += f
        skipped += s
    return found, skipped


def _discover_mosmeddata(root: Path) -> tuple[list[_Found], list[Skipped]]:
    found, skipped = _discover_folders(root / "studies")
    registry = root / REGISTRY_NAME
    if not registry.is_file():
        return found, skipped
    # The registry is the authority on categories; the folder a file sits in must agree with it.
    by_path = {f[1]: f for f in found}
    listed: list[_Found] = []
    with registry.open(newline="", encoding="utf-8-sig") as fh:
        reader = csv.DictReader(fh)
        missing = {"study_file", "category"} - set(reader.fieldnames or ())
        if missing:
            raise DataError(f"{registry}: missing column(s) {', '.join(sorted(missing))} "
                            "(expected study_id,category,study_file,mask_file)")
        for line, row in enumerate(reader, start=2):
            study_file = (row.get("study_file") or "").strip()
            category = (row.get("category") or "").strip().upper()
            if not study_file:
                skipped.append(Skipped(f"{registry}:{line}", "empty study_file"))
                continue
            path = (root / study_file.lstrip("/\\")).resolve()
            if category not in KNOWN_CATEGORIES:
                skipped.append(Skipped(str(path), f"unknown category {row.get('category')!r} in {registry.name}"))
                by_path.pop(str(path), None)
                continue
            on_disk = by_path.pop(str(path), None)
            if on_disk is None:
                skipped.append(Skipped(str(path), f"listed in {registry.name} but not found"))
                continue
            if on_disk[2] != category:
                skipped.append(Skipped(str(path), f"{registry.name} says {category} but it is in {on_disk[2]}/"))
                continue
            # Ids come from file names in every layout, so a split file means the same thing in each.
            listed.append((on_disk[0], str(path), category, None))
    # Files on disk that the registry does not list keep their folder's category.
    return listed + list(by_path.values()), skipped


def _discover_manifest(manifest: Path) -> tuple[list[_Found], list[Skipped]]:
    found, skipped = [], []
    with manifest.open(newline="", encoding="utf-8-sig") as fh:
        reader = csv.DictReader(fh)
        columns = {c.strip().lower() for c in reader.fieldnames or ()}
        if "path" not in columns or not columns & {"category", "label"}:
            raise DataError(f"{manifest}: a manifest needs columns path,category or path,label "
                            f"(found: {', '.join(sorted(columns)) or 'none'})")
        for line, raw in enumerate(reader, start=2):
            row = {k.strip().lower(): (v or "").strip() for k, v in raw.items() if k}
            where = f"{manifest}:{line}"
            if not row.get("path"):
                skipped.append(Skipped(where, "empty path"))
                continue
            path = Path(row["path"]).expanduser()
            path = (path if path.is_absolute() else manifest.parent / path).resolve()
            if not path.is_file():
                skipped.append(Skipped(str(path), "file not found"))
                continue
            category = row.get("category", "").upper()
            if category and category not in KNOWN_CATEGORIES:
                skipped.append(Skipped(str(path), f"unknown category {row['category']!r} (line {line})"))
                continue
            label: int | None = None
            if row.get("label", ""):
                if row["label"] not in ("0", "1"):
                    skipped.append(Skipped(str(path), f"label must be 0 or 1, got {row['label']!r} (line {line})"))
                    continue
                label = int(row["label"])
            elif not category:
                skipped.append(Skipped(str(path), f"neither category nor label given (line {line})"))
                continue
            found.append((row.get("study_id") or study_id_of(path), str(path), category, label))
    return found, skipped
