"""Writing a phantom set: the NIfTI encoding of a phantom, its study file, and the set around them
(the output folder, the ``phantoms.json`` marker, the registry, worker processes).
"""

from __future__ import annotations

import contextlib
import csv
import gzip
import io
import json
import os
import re
import signal
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
from tqdm.auto import tqdm

from lungct.discover import REGISTRY_NAME
from lungct.errors import DataError
from lungct.files import atomic_write_bytes
from lungct.phantom.categories import assign_categories
from lungct.phantom.render import MAX_MATRIX, MIN_MATRIX, Phantom, render_phantom
from lungct.records import CATEGORIES

# Bump when the generator's output changes, so a saved set is known to be stale.
GENERATOR_VERSION = 1
MARKER_NAME = "phantoms.json"
REGISTRY_COLUMNS = ("study_id", "category", "study_file", "mask_file", "involvement")
# On noisy int16, level 4 is as small as gzip's default 6 (within 0.5%) and 2.5x faster.
GZIP_LEVEL = 4

_STUDY_FILE = re.compile(r"^study_\d{4,}\.nii\.gz$")
# Temporary names of study files: lungct.files' (".study_0001.nii.gz.<random>.tmp"), and those this
# module wrote before it used lungct.files (".study_0001.nii.gz.tmp<pid>"), which a set may still hold.
_TEMP_FILE = re.compile(r"^\.study_\d{4,}\.nii\.gz\.(?:tmp\d*|[a-z0-9_]+\.tmp)$")


@dataclass(frozen=True)
class PhantomInfo:
    """One written phantom, as the registry lists it.

    Attributes:
        study_id: ``study_NNNN``, unique over the set, 1-based.
        category: ``CT-0``..``CT-4``.
        study_file: Path relative to the set's folder, with forward slashes.
        involvement: True fraction of lung voxels with lesions (0 for CT-0).
        shape: Voxels in the file's own axis order (i, j, k), as ``nib.load(path).shape`` gives.
        spacing: Millimetres per voxel along (i, j, k); k is the slice spacing.
    """

    study_id: str
    category: str
    study_file: str
    involvement: float
    shape: tuple[int, int, int]
    spacing: tuple[float, float, float]


def _stored_array(phantom: Phantom) -> np.ndarray:
    """The canonical (D, H, W) volume in the file's (i, j, k) order for its orientation."""
    data = phantom.volume_hu.transpose(2, 1, 0)  # (W, H, D) = RAS (i, j, k)
    flips = tuple(slice(None, None, -1) if code in "LPI" else slice(None) for code in phantom.orientation)
    return np.ascontiguousarray(data[flips])


def phantom_to_nifti(phantom: Phantom) -> nib.Nifti1Image:
    """The NIfTI image of a phantom as a scanner export would store it (int16 HU, scanner qform/sform)."""
    image = nib.Nifti1Image(_stored_array(phantom), phantom.affine)
    header = image.header
    header.set_data_dtype(np.int16)
    header.set_xyzt_units("mm", "sec")
    image.set_qform(phantom.affine, code=1)
    image.set_sform(phantom.affine, code=1)
    header["descrip"] = f"lungct phantom v{GENERATOR_VERSION} {phantom.category}".encode()
    return image


def _study_id(index: int) -> str:
    return f"study_{index + 1:04d}"


def write_phantom(out_dir: Path, seed: int, index: int, category: str, matrix: int) -> PhantomInfo:
    """Render phantom ``index`` and write it to ``out_dir/studies/<category>/study_NNNN.nii.gz``."""
    phantom = render_phantom(seed, index, category, matrix=matrix)
    image = phantom_to_nifti(phantom)
    rel = f"studies/{category}/{_study_id(index)}.nii.gz"
    # gzip by hand with mtime 0 and no file name in the header, so the bytes depend on the voxels only.
    atomic_write_bytes(out_dir / rel, gzip.compress(image.to_bytes(), compresslevel=GZIP_LEVEL, mtime=0))
    zi, zj, zk = (round(float(v), 6) for v in image.header.get_zooms()[:3])
    ni, nj, nk = (int(s) for s in image.shape)
    return PhantomInfo(study_id=_study_id(index), category=category, study_file=rel,
                       involvement=phantom.involvement, shape=(ni, nj, nk), spacing=(zi, zj, zk))


def _one_blas_thread() -> contextlib.AbstractContextManager:
    """Limit BLAS to one thread from now on, or until the returned context exits.

    With a pool already using every core, OpenBLAS's own threads spin and doubled the CPU time of a
    set (measured: 28 s against 14 s of CPU for 40 phantoms on 2 cores). The serial path takes the same
    limit, so serial and parallel runs sum in the same order and write the same bytes.
    """
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # scikit-learn brings it; without it a set is only slower
        return contextlib.nullcontext()
    return threadpool_limits(limits=1)


def _worker_init() -> None:
    # Ctrl-C goes to the whole process group, and so does the SIGTERM of ``timeout`` or a scheduler: only the
    # parent handles them and cancels the rest; a worker finishes the phantom in hand, so none is half-written.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    _one_blas_thread()


def _prepare_out_dir(out_dir: Path) -> None:
    """Make ``out_dir`` ready: new, empty, or a previous phantom set whose files are removed.

    Raises:
        DataError: ``out_dir`` is a file, or a non-empty folder that is not a phantom set.
    """
    if out_dir.exists() and not out_dir.is_dir():
        raise DataError(f"output folder {out_dir} is a file")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not (out_dir / MARKER_NAME).is_file():
        raise DataError(f"output folder {out_dir} is not empty and holds no phantom set ({MARKER_NAME} "
                        "missing); choose a new or empty folder")
    out_dir.mkdir(parents=True, exist_ok=True)
    # The registry goes first, so no moment exists where it lists files that are being replaced.
    (out_dir / REGISTRY_NAME).unlink(missing_ok=True)
    for category in CATEGORIES:
        folder = out_dir / "studies" / category
        if folder.is_dir():
            for f in folder.iterdir():
                # Only our own names: anything else a user put there stays.
                if _STUDY_FILE.match(f.name) or _TEMP_FILE.match(f.name):
                    f.unlink()
        folder.mkdir(parents=True, exist_ok=True)


def _marker(n: int, seed: int, matrix: int, complete: bool) -> bytes:
    record = {"generator": "lungct.phantom", "version": GENERATOR_VERSION, "n": n, "seed": seed,
              "matrix": matrix, "complete": complete}
    return (json.dumps(record, indent=2) + "\n").encode()


def phantom_set_is_current(out_dir: Path, *, n: int, seed: int, matrix: int = 256) -> bool:
    """Whether ``out_dir`` already holds a complete phantom set made with these arguments by this version."""
    try:
        record = json.loads((Path(out_dir) / MARKER_NAME).read_text())
    except (OSError, ValueError):
        return False
    wanted = json.loads(_marker(n, seed, matrix, True))
    return record == wanted and (Path(out_dir) / REGISTRY_NAME).is_file()


def generate_phantoms(out_dir: Path, n: int = 200, seed: int = 0, *, matrix: int = 256,
                      workers: int | None = None, progress: bool = True) -> list[PhantomInfo]:
    """Write a set of ``n`` phantoms in the MosMedData layout under ``out_dir``.

    Files are written atomically, one by one; the registry is written last, so an interrupted run
    never leaves a registry that lists missing or half-written files. A folder holding an earlier
    phantom set is overwritten (its study files are removed first); any other non-empty folder is
    refused.

    Args:
        out_dir: Folder of the set; created if missing.
        n: Number of phantoms.
        seed: Seed of the set; phantom ``i`` depends only on ``(seed, i)`` and its category.
        matrix: In-plane voxels per side (>= 64); the field of view stays 330-380 mm.
        workers: Processes; default ``os.cpu_count()``. 1 renders in this process.
        progress: Show a tqdm progress bar with an ETA.

    Returns:
        One record per phantom, by study id.

    Raises:
        ValueError: ``n``, ``matrix`` or ``workers`` out of range.
        DataError: ``out_dir`` is a file or a folder holding something other than a phantom set.
    """
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    if not MIN_MATRIX <= matrix <= MAX_MATRIX:
        raise ValueError(f"matrix must be in {MIN_MATRIX}..{MAX_MATRIX}, got {matrix}")
    workers = (os.cpu_count() or 1) if workers is None else workers
    if workers < 1:
        raise ValueError(f"workers must be at least 1, got {workers}")
    out_dir = Path(out_dir)
    _prepare_out_dir(out_dir)
    atomic_write_bytes(out_dir / MARKER_NAME, _marker(n, seed, matrix, complete=False))
    categories = assign_categories(n, seed)
    bar = tqdm(total=n, unit="phantom", desc="phantoms", disable=not progress, dynamic_ncols=True)
    infos: list[PhantomInfo] = []
    try:
        if min(workers, n) == 1:
            with _one_blas_thread():
                for i, category in enumerate(categories):
                    infos.append(write_phantom(out_dir, seed, i, category, matrix))
                    bar.update()
        else:
            with ProcessPoolExecutor(max_workers=min(workers, n), initializer=_worker_init) as pool:
                futures = [pool.submit(write_phantom, out_dir, seed, i, c, matrix)
                           for i, c in enumerate(categories)]
                try:
                    for future in as_completed(futures):
                        infos.append(future.result())
                        bar.update()
                except BaseException:
                    for future in futures:
                        future.cancel()
                    raise
    finally:
        bar.close()
    infos.sort(key=lambda p: int(p.study_id.removeprefix("study_")))  # study_10000 after study_9999
    atomic_write_bytes(out_dir / MARKER_NAME, _marker(n, seed, matrix, complete=True))
    atomic_write_bytes(out_dir / REGISTRY_NAME, _registry_bytes(infos))
    return infos


def _registry_bytes(infos: Sequence[PhantomInfo]) -> bytes:
    """The registry as MosMedData ships it: CSV, UTF-8 with a byte-order mark."""
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(REGISTRY_COLUMNS)
    for p in infos:
        writer.writerow([p.study_id, p.category, p.study_file, "", f"{p.involvement:.6f}"])
    return buf.getvalue().encode("utf-8-sig")

