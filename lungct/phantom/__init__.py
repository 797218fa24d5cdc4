"""Synthetic chest-CT phantoms: the embedded data set that lets the whole tool run without real scans.

MosMedData cannot be downloaded everywhere and its licence forbids committing it, so this package draws
chest-CT-like volumes in its layout: ``OUT/studies/CT-0..CT-4/study_NNNN.nii.gz`` (int16 HU, gzip) and
``OUT/dataset_registry.csv`` (UTF-8 with a BOM, like the original), plus ``OUT/phantoms.json``, which
marks the folder as a phantom set that a later run may overwrite.

What a phantom holds: a body whose elliptical cross-section varies along z (muscle, subcutaneous fat),
spine (vertebral bodies, discs, posterior elements), ribs and sternum, a heart, aortae and liver, two
lungs with a diaphragm dome and an apex, branching vessel trees that are thick near the hila, a trachea
and bronchi, and correlated scanner noise. Categories follow MosMedData: CT-0 is clean, CT-1..CT-4
have ground-glass opacities covering <25%, 25-50%, 50-75% and >=75% of the lung volume, patchy and
peripheral with a posterior and basal predominance, and CT-3/CT-4 add consolidations. The fraction of
lung voxels affected is the registry's ``involvement``.

Hardness is deliberate: body size, lung volume, inspiration level (baseline lung density -900..-750
HU), noise level, calibration (HU offset and gain) and intravenous contrast vary between phantoms, and
every category gets the same benign confounders (dependent density at the posterior bases, plate
atelectasis, small nodules), so no single global statistic (mean lung HU, mean or std of body HU,
fraction of voxels in [-750, -300] HU) separates CT-0 from CT-2/CT-3; the spatial pattern does.
``benchmarks/bench_phantoms.py`` measures this.

Size trade-off: real MosMedData slices are 512 x 512 at about 0.7 mm, but scanner noise does not
compress (gzip spends about a byte per noisy int16 voxel), and 200 such volumes take well over a
gigabyte. So the in-plane matrix is a parameter (``matrix``, default 256) and the pixel spacing is
chosen so the field of view stays realistic (330-380 mm: about 1.3-1.5 mm at 256, 0.65-0.75 mm at
512); the loader resamples to about 128 pixels in-plane anyway, so 256 loses nothing the model sees.
For the same reason the noise is that of a soft-kernel thick-slice reconstruction (standard deviation
about 3-9 HU, slightly correlated), not of a sharp lung kernel, and the air around the patient is
stored noise-free; air outside the reconstruction circle is a constant -1024 HU, as scanners store
it. The default set (200 phantoms) then takes about 245 MB and under a minute on two cores. Slices are
8-10 mm apart (30-45 slices), as in MosMedData.

Determinism: phantom ``i`` of a set depends only on ``(seed, i)`` and its category, and the categories
only on ``(seed, n)``, so parallel and serial runs write the same bytes.

Modules, in the order a phantom is made: ``categories`` (the class mix and which phantom gets which
category), ``geometry`` (the voxel grid, random fields, partial-volume shapes, the stored orientation's
affine), ``anatomy`` (body, bones, mediastinum, lungs, confounders, vessels and airways), ``render``
(acquisition, lesions, noise: :func:`render_phantom`), ``writing`` (NIfTI encoding, the set's files,
registry and marker: :func:`generate_phantoms`) and ``cli`` (``python -m lungct.phantom``). Import the
names below from here, ``lungct.phantom``, not from the module that defines them.
"""

from lungct.discover import REGISTRY_NAME
from lungct.phantom.categories import (
    CLASS_MIX,
    CLASS_PRIORITY,
    INVOLVEMENT_BOUNDS,
    INVOLVEMENT_DRAW,
    assign_categories,
    class_counts,
)
from lungct.phantom.cli import main
from lungct.phantom.render import (
    AIR_OUTSIDE_CIRCLE_HU,
    FOV_MM,
    MAX_MATRIX,
    MIN_MATRIX,
    N_SLICES,
    ORIENTATIONS,
    SLICE_SPACING_MM,
    Phantom,
    render_phantom,
)
from lungct.phantom.writing import (
    GENERATOR_VERSION,
    GZIP_LEVEL,
    MARKER_NAME,
    REGISTRY_COLUMNS,
    PhantomInfo,
    generate_phantoms,
    phantom_set_is_current,
    phantom_to_nifti,
    write_phantom,
)

__all__ = [
    "AIR_OUTSIDE_CIRCLE_HU",
    "CLASS_MIX",
    "CLASS_PRIORITY",
    "FOV_MM",
    "GENERATOR_VERSION",
    "GZIP_LEVEL",
    "INVOLVEMENT_BOUNDS",
    "INVOLVEMENT_DRAW",
    "MARKER_NAME",
    "MAX_MATRIX",
    "MIN_MATRIX",
    "N_SLICES",
    "ORIENTATIONS",
    "REGISTRY_COLUMNS",
    "REGISTRY_NAME",
    "SLICE_SPACING_MM",
    "Phantom",
    "PhantomInfo",
    "assign_categories",
    "class_counts",
    "generate_phantoms",
    "main",
    "phantom_set_is_current",
    "phantom_to_nifti",
    "render_phantom",
    "write_phantom",
]
