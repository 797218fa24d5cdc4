"""Where a phantom's lungs and lesions are: its masks, rendered again from the set's seed and its index.

A phantom set stores the scans only (as MosMedData does). The generator is deterministic, so the
masks of ``study_NNNN`` are those of ``render_phantom(seed, NNNN - 1, category)``, the seed and matrix
coming from the set's ``phantoms.json`` and the category from :func:`lungct.phantom.assign_categories`.
The rendered volume is compared with the file before its masks are trusted: a set written by another
generator version, or a file changed since, is refused instead of paired with the wrong masks.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lungct.errors import DataError
from lungct.nifti import read_scan
from lungct.phantom import GENERATOR_VERSION, MARKER_NAME, assign_categories, render_phantom

MAX_HU_DIFFERENCE = 1.0
_STUDY_ID = re.compile(r"^study_(\d{4,})$")


@dataclass(frozen=True, eq=False)
class PhantomMasks:
    """The masks of one phantom, (D, H, W) booleans in canonical RAS, as ``read_scan`` orients its scan.

    Attributes:
        study_id: ``study_NNNN``.
        category: ``CT-0``..``CT-4``.
        lung: The lungs (parenchyma, vessels and lesions inside them).
        lesion: Lung voxels with ground-glass opacity or consolidation (empty for CT-0).
    """

    study_id: str
    category: str
    lung: np.ndarray
    lesion: np.ndarray


def load_phantom_masks(root: str | Path, study_id: str, volume_hu: np.ndarray | None = None) -> PhantomMasks:
    """Render the masks of phantom ``study_id`` of the set in ``root`` and check them against its file.

    Args:
        root: The phantom set's folder.
        study_id: ``study_NNNN``.
        volume_hu: The scan as ``read_scan`` returned it, when the caller has read it already.

    Raises:
        DataError: ``root`` holds no complete phantom set of this generator version, ``study_id`` is not
            one of its phantoms, or the file's voxels differ from the rendered ones.
    """
    root = Path(root)
    try:
        marker = json.loads((root / MARKER_NAME).read_text())
        seed, n, matrix = int(marker["seed"]), int(marker["n"]), int(marker["matrix"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise DataError(f"{root}: not a phantom set ({MARKER_NAME} unreadable: {type(e).__name__})") from None
    if marker.get("version") != GENERATOR_VERSION or not marker.get("complete"):
        raise DataError(f"{root}: phantom set of generator version {marker.get('version')!r} "
                        f"(complete: {marker.get('complete')!r}); this generator is version {GENERATOR_VERSION}")
    match = _STUDY_ID.match(study_id)
    if not match or not 1 <= int(match.group(1)) <= n:
        raise DataError(f"{study_id!r}: not a phantom of the set in {root} (study_0001..study_{n:04d})")
    index = int(match.group(1)) - 1
    category = assign_categories(n, seed)[index]
    phantom = render_phantom(seed, index, category, matrix=matrix)
    path = root / "studies" / category / f"{study_id}.nii.gz"
    stored = read_scan(str(path))[0] if volume_hu is None else volume_hu
    # Within 1 HU: the generator's float sums round differently with the BLAS threads it runs on (one voxel in
    # a few million of a set written by worker processes came out 1 HU apart from a render in this one).
    if stored.shape != phantom.volume_hu.shape or np.max(np.abs(stored - phantom.volume_hu)) > MAX_HU_DIFFERENCE:
        raise DataError(f"{path}: its voxels are not those the generator renders for seed {seed}, index {index}; "
                        "the masks would not belong to it")
    return PhantomMasks(study_id, category, phantom.lung_mask, phantom.lesion_mask)
