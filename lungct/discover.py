"""Finding scans: the MosMedData layout, the Keras tutorial's category folders, or a CSV manifest.

Discovery reads folder listings and CSV files only, never image data; reading and validating the
images is :mod:`lungct.nifti`'s job. Every file it passes over is reported, with the reason. Where a
manifest row gives both a category and a label, the category decides under the task, and a label
that contradicts it skips the row: training and ``lungct.inspect`` both use these records, so what
inspect counts is what training uses.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
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
        records: Scans the task uses (label 0 or 1, or a grade 0..K-1 under an ordinal task), sorted by study id.
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
        DataError: The root is missing or empty, or its layout is not one of the accepted ones, or it holds a
            pooled folder (the Keras archives' CT-23) whose grades an ordinal task labels apart.
    """
    task = get_task(task) if isinstance(task, str) else task
    root = Path(root).expanduser()
    if not root.exists():
        raise DataError(f"{root}: no such file or folder (accepted layouts: {ACCEPTED_LAYOUTS})")
    try:
        layout, found, skipped = _find(root)
    except OSError as e:  # an unreadable folder or file
        raise DataError(f"{root}: cannot read ({e.strerror or e})") from None

    result = Discovery(root=root, layout=layout, task=task, skipped=skipped)
    seen: dict[str, str] = {}
    for study_id, path, category, label in sorted(found, key=lambda f: (f[0], f[1])):
        if study_id in seen:
            result.skipped.append(Skipped(path, f"duplicate study id {study_id!r} (also {seen[study_id]})"))
            continue
        if category and task.splits_pooled(category):
            pooled = POOLED_CATEGORIES[category]
            raise DataError(f"{Path(path).parent}: {category} pools {' and '.join(pooled)}, which task {task.name} "
                            f"grades apart; give each grade its own folder (the full MosMedData layout "
                            f"studies/CT-0..CT-4) or choose a binary task")
        if not category and task.ordinal:
            result.skipped.append(Skipped(path, f"task {task.name} grades by category (CT-0..CT-4); a 0/1 label "
                                                f"alone does not give the grade"))
            continue
        if category:
            # The category decides under the task; an explicit label that contradicts it is a data error.
            by_category = task.label(category)
            if label is not None and by_category is not None and label != by_category:
                result.skipped.append(Skipped(path, f"the manifest gives category {category} and label {label}, but "
                                                    f"{category} is label {by_category} under task {task.name}"))
                continue
            label = by_category
        seen[study_id] = path
        record = ScanRecord(study_id=study_id, path=path, category=category, label=label)
        (result.records if label is not None else result.excluded).append(record)
    if not result.records and not result.excluded:
        detail = f"; {len(result.skipped)} files skipped, first: {result.skipped[0].reason}" if result.skipped else ""
        raise DataError(f"{root}: no NIfTI scans found{detail} (accepted layouts: {ACCEPTED_LAYOUTS})")
    return result


# A found scan before labelling: (study_id, absolute path, category, explicit label or None).
_Found = tuple[str, str, str, "int | None"]


def _find(root: Path) -> tuple[str, list[_Found], list[Skipped]]:
    """The layout of ``root``, the scans found there, and the files passed over."""
    if root.is_file():
        if root.suffix.lower() != ".csv":
            raise DataError(f"{root}: a file that is not a CSV manifest (accepted layouts: {ACCEPTED_LAYOUTS})")
        return "manifest", *_discover_manifest(root)
    if (root / "studies").is_dir() and _category_dirs(root / "studies"):
        return "mosmeddata", *_discover_mosmeddata(root)
    if _category_dirs(root):
        return "folders", *_discover_folders(root)
    if not any(root.iterdir()):
        raise DataError(f"{root}: empty folder (accepted layouts: {ACCEPTED_LAYOUTS})")
    raise DataError(f"{root}: unknown layout (accepted layouts: {ACCEPTED_LAYOUTS})")


def _category_dirs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and p.name.upper() in KNOWN_CATEGORIES)


def _scan_folder(folder: Path, category: str) -> tuple[list[_Found], list[Skipped]]:
    found: list[_Found] = []
    skipped: list[Skipped] = []
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
    reader = csv.DictReader(io.StringIO(_read_text(registry), newline=""))
    missing = {"study_file", "category"} - set(reader.fieldnames or ())
    if missing:
        raise DataError(f"{registry}: missing column(s) {', '.join(sorted(missing))} "
                        "(expected study_id,category,study_file,mask_file)")
    for line, row in _rows(reader, registry):
        study_file = (row.get("study_file") or "").strip()
        category = (row.get("category") or "").strip().upper()
        if not study_file:
            skipped.append(Skipped(f"{registry}:{line}", "empty study_file"))
            continue
        try:
            path = _resolve(root / study_file.lstrip("/\\"))
        except ValueError as e:
            skipped.append(Skipped(f"{registry}:{line}", f"unusable study_file {study_file!r}: {e}"))
            continue
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
    """Rows of a CSV manifest (path, and category or label); a row giving both is checked in :func:`discover`."""
    found, skipped = [], []
    reader = csv.DictReader(io.StringIO(_read_text(manifest), newline=""))
    columns = {c.strip().lower() for c in reader.fieldnames or ()}
    if "path" not in columns or not columns & {"category", "label"}:
        raise DataError(f"{manifest}: a manifest needs columns path,category or path,label "
                        f"(found: {', '.join(sorted(columns)) or 'none'})")
    for line, raw in _rows(reader, manifest):
        row = {k.strip().lower(): (v or "").strip() for k, v in raw.items() if k}
        where = f"{manifest}:{line}"
        if not row.get("path"):
            skipped.append(Skipped(where, "empty path"))
            continue
        try:
            path = Path(row["path"]).expanduser()
            path = _resolve(path if path.is_absolute() else manifest.parent / path)
        except (ValueError, RuntimeError) as e:  # RuntimeError: ~user with no such user
            skipped.append(Skipped(where, f"unusable path {row['path']!r}: {e}"))
            continue
        if not _is_file(path):
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


def _read_text(path: Path) -> str:
    """A CSV file's text (UTF-8, with or without a BOM); anything else is a one-line error naming the spot."""
    try:
        data = path.read_bytes()
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e.strerror or e})") from None
    try:
        # Not "utf-8-sig": its error offsets would not count the BOM.
        return data.decode("utf-8").removeprefix("\ufeff")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise DataError(f"{path}: not UTF-8 text (byte 0x{data[e.start]:02x} at offset {e.start}, line {line}); "
                        "save it as UTF-8") from None


def _rows(reader: csv.DictReader, path: Path) -> Iterator[tuple[int, dict]]:
    """(line number, row) for each row of a CSV file; a malformed file is a one-line error naming the line."""
    try:
        for row in reader:
            yield reader.line_num, row
    except csv.Error as e:
        raise DataError(f"{path}: malformed CSV at line {reader.line_num} ({e})") from None


def _resolve(path: Path) -> Path:
    """``path.resolve()``; a path that no file system can hold (a NUL byte, a name too long) is a ValueError."""
    try:
        return path.resolve()
    except OSError as e:
        raise ValueError(e.strerror or str(e)) from None


def _is_file(path: Path) -> bool:
    """``path.is_file()``, False where the name is too long to look up."""
    try:
        return path.is_file()
    except OSError:
        return False
