"""Synthetic chest-CT phantoms: the embedded data set that lets the whole tool run without real scans.

MosMedData cannot be downloaded everywhere and its licence forbids committing it, so this module draws
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
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import gzip
import io
import json
import os
import re
import signal
import sys
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy.ndimage import gaussian_filter1d
from tqdm import tqdm

from lungct.discover import REGISTRY_NAME
from lungct.errors import DataError, printable
from lungct.records import CATEGORIES

# Bump when the generator's output changes, so a saved set is known to be stale.
GENERATOR_VERSION = 1
MARKER_NAME = "phantoms.json"
REGISTRY_COLUMNS = ("study_id", "category", "study_file", "mask_file", "involvement")
MIN_MATRIX = 64
MAX_MATRIX = 1024

# Share of each category in a set. The course task is CT-0 against CT-2/CT-3, so both sides get most
# of the set; CT-1 and CT-4 stay present because MosMedData has them and the loader must exclude them.
CLASS_MIX = {"CT-0": 0.40, "CT-1": 0.20, "CT-2": 0.25, "CT-3": 0.12, "CT-4": 0.03}
# Which categories a small set keeps first when it cannot hold all five.
CLASS_PRIORITY = ("CT-0", "CT-2", "CT-3", "CT-1", "CT-4")
# Involvement drawn per category, a margin inside MosMedData's bounds so the exact voxel fraction
# (which the quantile threshold hits to within a voxel) never lands on the wrong side of a bound.
INVOLVEMENT_DRAW = {
    "CT-0": (0.0, 0.0),
    "CT-1": (0.04, 0.22),
    "CT-2": (0.27, 0.48),
    "CT-3": (0.52, 0.73),
    "CT-4": (0.77, 0.90),
}
INVOLVEMENT_BOUNDS = {"CT-0": (0.0, 0.0), "CT-1": (0.0, 0.25), "CT-2": (0.25, 0.5),
                      "CT-3": (0.5, 0.75), "CT-4": (0.75, 1.0)}

FOV_MM = (330.0, 380.0)
SLICE_SPACING_MM = (8.0, 10.0)
N_SLICES = (30, 45)
AIR_OUTSIDE_CIRCLE_HU = -1024
ORIENTATIONS = ("LPS", "LAS", "RAS")
# On noisy int16, level 4 is as small as gzip's default 6 (within 0.5%) and 2.5x faster.
GZIP_LEVEL = 4

_STUDY_FILE = re.compile(r"^study_\d{4,}\.nii\.gz$")
_TEMP_FILE = re.compile(r"^\.study_\d{4,}\.nii\.gz\.tmp\d*$")


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


@dataclass(frozen=True, eq=False)
class Phantom:
    """One rendered phantom in memory, before it is written.

    Arrays are (D, H, W) in nibabel's canonical RAS orientation (D inferior to superior, H posterior
    to anterior, W toward the patient's right), as :func:`lungct.nifti.read_scan` returns a scan.

    Attributes:
        volume_hu: int16 HU, exactly the voxels the file stores.
        lung_mask: The lungs (parenchyma, vessels and lesions inside them), without trachea and
            main bronchi.
        lesion_mask: Lung voxels with ground-glass opacity or consolidation.
        spacing_dhw: Millimetres per voxel along (D, H, W).
        affine: Voxel-to-world (RAS mm) affine of the file as stored.
        orientation: Axis codes of the file as stored, e.g. ``LPS``.
        category: ``CT-0``..``CT-4``.
        involvement: ``lesion_mask.sum() / lung_mask.sum()``.
    """

    volume_hu: np.ndarray
    lung_mask: np.ndarray
    lesion_mask: np.ndarray
    spacing_dhw: tuple[float, float, float]
    affine: np.ndarray
    orientation: str
    category: str
    involvement: float


def class_counts(n: int) -> dict[str, int]:
    """Exact number of phantoms per category for a set of ``n``, from :data:`CLASS_MIX`.

    Largest remainders, then every category that got none takes one from the largest, as long as
    ``n`` allows; below five phantoms the categories in :data:`CLASS_PRIORITY` come first.
    """
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    if n < len(CATEGORIES):
        return {c: int(c in CLASS_PRIORITY[:n]) for c in CATEGORIES}
    quotas = {c: n * CLASS_MIX[c] for c in CATEGORIES}
    counts = {c: int(q) for c, q in quotas.items()}
    by_remainder = sorted(CATEGORIES, key=lambda c: (-(quotas[c] - counts[c]), CLASS_PRIORITY.index(c)))
    for c in by_remainder[: n - sum(counts.values())]:
        counts[c] += 1
    for c in CLASS_PRIORITY:
        if counts[c] == 0:
            counts[max(counts, key=counts.get)] -= 1
            counts[c] = 1
    return counts


def assign_categories(n: int, seed: int) -> list[str]:
    """The category of each phantom ``0..n-1``: exact counts, in an order shuffled by ``seed``.

    Shuffled so that study ids carry no class information (a split by id range stays balanced).
    """
    categories = [c for c, k in class_counts(n).items() for _ in range(k)]
    order = np.random.default_rng([seed, n]).permutation(n)
    return [categories[j] for j in order]


# --------------------------------------------------------------------------------------------------
# Rendering
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Grid:
    """Voxel centres in patient millimetres, shaped to broadcast to (D, H, W).

    Patient axes: x toward the patient's right, y anterior, z superior, with x = y = 0 on the body's
    axis and z = 0 at the lowest point of the lungs.
    """

    z: np.ndarray  # (D, 1, 1)
    y: np.ndarray  # (1, H, 1)
    x: np.ndarray  # (1, 1, W)
    px: float
    dz: float

    @property
    def shape(self) -> tuple[int, int, int]:
        return self.z.shape[0], self.y.shape[1], self.x.shape[2]


def _smooth_field(rng: np.random.Generator, grid: _Grid, length_mm: float) -> np.ndarray:
    """Gaussian random field with unit variance and correlation length ``length_mm``, (D, H, W).

    A sum of Gaussian bumps on a coarse lattice, evaluated as three small matrix products, which
    costs a few milliseconds where filtering a full-size white-noise volume costs a second.
    """
    sigma = 0.75 * length_mm
    bases, scale = [], 1.0
    for coords in (grid.z.ravel(), grid.y.ravel(), grid.x.ravel()):
        nodes = np.arange(coords.min() - 2 * sigma, coords.max() + 2 * sigma + length_mm, length_mm)
        basis = np.exp(-0.5 * ((coords[:, None].astype(np.float64) - nodes[None, :]) / sigma) ** 2)
        # Cut the far tails: float32 denormals there slow the products tenfold and change nothing.
        basis[basis < 1e-6] = 0.0
        bases.append(basis.astype(np.float32))
        # Sum over a lattice of squared Gaussians: sigma * sqrt(pi) / spacing per axis.
        scale *= sigma * np.sqrt(np.pi) / length_mm
    bz, by, bx = bases
    coef = rng.standard_normal((bz.shape[1], by.shape[1], bx.shape[1])).astype(np.float32)
    field = np.tensordot(bz, coef, axes=(1, 0))  # (D, ny, nx)
    field = np.matmul(by, field)  # (D, H, nx)
    field = np.matmul(field, bx.T)  # (D, H, W)
    field *= np.float32(1.0 / np.sqrt(scale))
    return field


def _ellipse_radius(dx: np.ndarray, dy: np.ndarray, a, b, p: float = 2.0) -> np.ndarray:
    """Normalised superellipse radius: < 1 inside the curve |dx/a|^p + |dy/b|^p = 1."""
    if p == 2.0:
        return np.sqrt((dx / a) ** 2 + (dy / b) ** 2)
    return ((np.abs(dx) / a) ** p + (np.abs(dy) / b) ** p) ** (1.0 / p)


def _slab_overlap(z: np.ndarray, dz: float, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """Fraction of each slice [z - dz/2, z + dz/2] that lies inside [lo, hi]: thick-slice partial volume."""
    return np.clip((np.minimum(z + dz / 2, hi) - np.maximum(z - dz / 2, lo)) / dz, 0.0, 1.0)


def _periodic_overlap(phase_mm: np.ndarray, dz: float, height: float, pitch: float) -> np.ndarray:
    """:func:`_slab_overlap` for bands ``[k*pitch, k*pitch + height]``; ``phase_mm`` is the slice centre."""
    w = np.mod(phase_mm, pitch)
    total = np.zeros_like(w)
    for k in (-1, 0, 1):
        total += _slab_overlap(w, dz, np.float32(k * pitch), np.float32(k * pitch + height))
    return total


def _splat_tubes(grid: _Grid, starts: np.ndarray, ends: np.ndarray, radii: np.ndarray) -> np.ndarray:
    """Partial-volume occupancy (0..1) of straight tubes, rasterised into thick slices, (D, H, W).

    Each tube is sampled every ~0.7 mm; a sample adds an anti-aliased disc of its radius to the slice
    that holds it, weighted by the fraction of the slice thickness it covers. That conserves volume at
    any angle, so a tube along z fills its disc and one lying in the slice shows at 2r/dz contrast, as
    on a thick-slice scanner.
    """
    d, h, w = grid.shape
    lengths = np.linalg.norm(ends - starts, axis=1)
    n_pts = np.maximum(1, np.ceil(lengths / 0.7)).astype(int)
    seg = np.repeat(np.arange(len(starts)), n_pts)
    first = np.cumsum(n_pts) - n_pts
    frac = (np.arange(seg.size) - first[seg] + 0.5) / n_pts[seg]
    pts = starts[seg] + frac[:, None] * (ends - starts)[seg]
    weight = (lengths / n_pts)[seg] / grid.dz
    r_px = radii[seg] / grid.px
    # Continuous voxel coordinates of every sample.
    k = np.rint((pts[:, 2] - grid.z[0, 0, 0]) / grid.dz).astype(int)
    fj = (pts[:, 1] - grid.y[0, 0, 0]) / grid.px
    fi = (pts[:, 0] - grid.x[0, 0, 0]) / grid.px
    keep = (k >= 0) & (k < d)
    half = np.ceil(r_px + 0.5).astype(int)
    indices, weights = [], []
    for hsize in np.unique(half[keep]):
        sel = keep & (half == hsize)
        off = np.arange(-hsize, hsize + 1)
        oj, oi = np.meshgrid(off, off, indexing="ij")
        oj, oi = oj.ravel()[None, :], oi.ravel()[None, :]
        j0, i0 = np.rint(fj[sel]).astype(int)[:, None], np.rint(fi[sel]).astype(int)[:, None]
        jj, ii = j0 + oj, i0 + oi
        dist = np.hypot(jj - fj[sel][:, None], ii - fi[sel][:, None])
        wgt = np.clip(r_px[sel][:, None] - dist + 0.5, 0.0, 1.0) * weight[sel][:, None]
        inside = (jj >= 0) & (jj < h) & (ii >= 0) & (ii < w) & (wgt > 0)
        flat = (k[sel][:, None] * h + jj) * w + ii
        indices.append(flat[inside])
        weights.append(wgt[inside])
    if not indices:
        return np.zeros(grid.shape, dtype=np.float32)
    occupancy = np.bincount(np.concatenate(indices), np.concatenate(weights), minlength=d * h * w)
    return np.minimum(occupancy, 1.0).astype(np.float32).reshape(d, h, w)


def _vessel_tree(rng: np.random.Generator, root: np.ndarray, targets: np.ndarray, r_leaf: float,
                 r_root: float) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """A branching tree from ``root`` that reaches every target point, by recursive halving.

    Each node runs part of the way toward the centroid of the targets it serves, then splits them in
    two along their widest axis. Radii follow a Murray-like law in the number of targets served, so
    trunks near the hilum are thick and twigs at the periphery thin.

    Returns:
        Segment starts (n, 3), ends (n, 3), radii (n,) in mm, and each segment's depth (n,).
    """
    starts, ends, radii, depths = [], [], [], []
    n_all = len(targets)
    stack = [(root, targets, 0)]
    while stack:
        p, pts, depth = stack.pop()
        k = len(pts)
        r = r_leaf + (r_root - r_leaf) * (k / n_all) ** 0.55
        q = pts[0] if k == 1 else p + rng.uniform(0.35, 0.6) * (pts.mean(axis=0) - p)
        starts.append(p)
        ends.append(q)
        radii.append(r)
        depths.append(depth)
        if k == 1:
            continue
        axis = int(np.argmax(pts.var(axis=0)))
        order = np.argsort(pts[:, axis], kind="stable")
        cut = k // 2 + int(rng.integers(-(k // 6), k // 6 + 1)) if k >= 6 else k // 2
        stack.append((q, pts[order[:cut]], depth + 1))
        stack.append((q, pts[order[cut:]], depth + 1))
    return np.array(starts), np.array(ends), np.array(radii), np.array(depths)


def _soft_blob(grid: _Grid, center: np.ndarray, radius: float, bbox_mm: float
               ) -> tuple[tuple[slice, slice, slice], np.ndarray]:
    """Partial-volume occupancy of a sphere, on the small box of voxels around it.

    Returns:
        The box as a tuple of slices into (D, H, W), and the occupancy inside it.
    """
    _, h, w = grid.shape
    zc = grid.z.ravel()
    ks = np.flatnonzero(np.abs(zc - center[2]) < radius + grid.dz)
    j0 = max(0, int((center[1] - bbox_mm - grid.y[0, 0, 0]) / grid.px))
    j1 = min(h, int((center[1] + bbox_mm - grid.y[0, 0, 0]) / grid.px) + 2)
    i0 = max(0, int((center[0] - bbox_mm - grid.x[0, 0, 0]) / grid.px))
    i1 = min(w, int((center[0] + bbox_mm - grid.x[0, 0, 0]) / grid.px) + 2)
    if ks.size == 0 or j1 <= j0 or i1 <= i0:
        return (slice(0, 0), slice(0, 0), slice(0, 0)), np.zeros((0, 0, 0), np.float32)
    box = (slice(ks[0], ks[-1] + 1), slice(j0, j1), slice(i0, i1))
    z, y, x = grid.z[box[0]], grid.y[:, box[1]], grid.x[:, :, box[2]]
    rho2 = (x - center[0]) ** 2 + (y - center[1]) ** 2
    half_chord = np.sqrt(np.maximum(radius**2 - rho2, 0.0))
    occ = _slab_overlap(z, grid.dz, center[2] - half_chord, center[2] + half_chord)
    return box, occ.astype(np.float32)


@dataclass(frozen=True)
class _Body:
    """Per-phantom anatomy parameters, all in mm or HU."""

    lung_height: float
    base_hu: float
    half_width: float
    half_ant: float
    half_post: float
    body_power: float
    fat_mm: float
    wall_lat: float
    wall_ant: float
    wall_post: float
    muscle_hu: float
    fat_hu: float


def render_phantom(seed: int, index: int, category: str, *, matrix: int = 256) -> Phantom:
    """Draw phantom ``index`` of the set with ``seed``; the same arguments give the same voxels.

    Args:
        seed: Seed of the whole set.
        index: 0-based position in the set (study id ``index + 1``).
        category: ``CT-0``..``CT-4``; it decides the lesions only, not the anatomy.
        matrix: In-plane voxels per side.
    """
    if category not in INVOLVEMENT_DRAW:
        raise ValueError(f"category must be one of {', '.join(CATEGORIES)}, got {category!r}")
    if matrix < MIN_MATRIX:
        raise ValueError(f"matrix must be at least {MIN_MATRIX}, got {matrix}")
    # Separate streams, so the category changes the lesions but not the anatomy or the noise.
    rng = np.random.default_rng([seed, index, 0])
    lesion_rng = np.random.default_rng([seed, index, 1])
    noise_rng = np.random.default_rng([seed, index, 2])

    insp = rng.uniform(0.0, 1.0)  # 0: shallow breath (dense, short lungs), 1: full inspiration
    half_width = rng.uniform(132.0, 182.0)
    size = (half_width - 132.0) / 50.0
    half_ant = half_width * rng.uniform(0.66, 0.8)
    body = _Body(
        lung_height=rng.uniform(195.0, 245.0) + 45.0 * insp,
        base_hu=-752.0 - 140.0 * insp + rng.uniform(-8.0, 8.0),
        half_width=half_width,
        half_ant=half_ant,
        half_post=half_ant * rng.uniform(0.88, 1.0),
        body_power=rng.uniform(2.2, 2.9),
        fat_mm=rng.uniform(3.0, 10.0) + rng.uniform(0.0, 22.0) * size,
        wall_lat=rng.uniform(16.0, 28.0),
        wall_ant=rng.uniform(14.0, 26.0),
        wall_post=rng.uniform(28.0, 40.0),
        muscle_hu=rng.uniform(38.0, 55.0),
        fat_hu=rng.uniform(-115.0, -85.0),
    )
    fov = rng.uniform(*FOV_MM)
    # A body wider than the field of view would be cut off; real protocols widen the FOV instead.
    fov = max(fov, 2 * body.half_width + 16.0)
    px = fov / matrix
    dz = float(np.round(rng.uniform(*SLICE_SPACING_MM) * 4) / 4)
    margin_top, margin_bottom = rng.uniform(15.0, 70.0), rng.uniform(20.0, 75.0)
    n_slices = int(np.clip(round((body.lung_height + margin_top + margin_bottom) / dz), *N_SLICES))
    extent = n_slices * dz
    spare = extent - body.lung_height
    z_first = -spare * margin_bottom / (margin_top + margin_bottom) + dz / 2
    # The patient lies a little off the scanner's isocentre, which sits at the image centre.
    off_x, off_y = rng.uniform(-12.0, 12.0), rng.uniform(-20.0, 10.0)
    centres = (np.arange(matrix) - (matrix - 1) / 2) * px
    grid = _Grid(
        z=(z_first + np.arange(n_slices) * dz).astype(np.float32)[:, None, None],
        y=(centres - off_y).astype(np.float32)[None, :, None],
        x=(centres - off_x).astype(np.float32)[None, None, :],
        px=float(px),
        dz=dz,
    )

    hu, lung, parts = _draw_anatomy(rng, grid, body)
    lesion = np.zeros_like(lung)
    if category != "CT-0":
        lesion = _draw_lesions(lesion_rng, grid, hu, lung, parts, category)
    _draw_vessels_and_airways(rng, grid, hu, lung, parts)
    # Bigger patients absorb more photons: noisier images.
    noise_sd = rng.uniform(3.0, 8.0) * (0.85 + 0.3 * size)
    volume = _add_noise_and_calibrate(noise_rng, rng, grid, hu, parts["body"], noise_sd)

    orientation = ORIENTATIONS[int(rng.integers(len(ORIENTATIONS)))]
    table_z = rng.uniform(-420.0, -120.0)
    affine = _affine(orientation, grid, centres, table_z)
    n_lung = int(lung.sum())
    involvement = float(lesion.sum()) / n_lung if n_lung else 0.0
    return Phantom(volume_hu=volume, lung_mask=lung, lesion_mask=lesion, spacing_dhw=(dz, px, px),
                   affine=affine, orientation=orientation, category=category, involvement=involvement)


def _draw_anatomy(rng: np.random.Generator, grid: _Grid, b: _Body) -> tuple[np.ndarray, np.ndarray, dict]:
    """Body, chest wall, spine, ribs, mediastinum, heart, abdomen and lung parenchyma, in HU.

    Returns:
        The HU volume (float32), the lung mask, and named parts the later stages need.
    """
    z, y, x = grid.z, grid.y, grid.x
    t = z / np.float32(b.lung_height)  # 0 at the lung bases, 1 at the apices
    # Shoulders widen and flatten the top of the scan; the upper abdomen narrows the bottom a little.
    top = np.clip((t - 0.8) / 0.5, 0.0, 1.0)
    bottom = np.clip(-t / 0.3, 0.0, 1.0)
    a = b.half_width * (1.0 + 0.1 * top - 0.04 * bottom)
    b_ant = b.half_ant * (1.0 - 0.18 * top + 0.03 * bottom)
    b_post = b.half_post * (1.0 - 0.1 * top)
    b_y = np.where(y > 0, b_ant, b_post)
    body = _ellipse_radius(x, y, a, b_y, b.body_power) < 1.0
    muscle = _ellipse_radius(x, y, a - b.fat_mm, b_y - b.fat_mm, b.body_power) < 1.0
    c_a = a - b.fat_mm - b.wall_lat
    c_ant, c_post = b_ant - b.fat_mm - b.wall_ant, b_post - b.fat_mm - b.wall_post
    rho_cav = _ellipse_radius(x, y, c_a, np.where(y > 0, c_ant, c_post), 2.4)
    cavity = rho_cav < 1.0

    hu = np.full(grid.shape, -1000.0, dtype=np.float32)
    hu[body] = b.fat_hu
    hu[muscle] = b.muscle_hu
    contrast = rng.random() < 0.3
    blood_hu = rng.uniform(160.0, 300.0) if contrast else rng.uniform(35.0, 50.0)
    mediastinal_hu = rng.uniform(25.0, 45.0)
    hu[cavity] = mediastinal_hu

    # Spine: vertebral bodies with discs between them, canal, posterior elements.
    hp, hb = float(np.mean(c_post)), float(np.mean(c_a))
    r_v = rng.uniform(14.0, 19.0)
    y_v = -hp + 0.6 * r_v
    rho_v = _ellipse_radius(x, y - y_v, 1.15 * r_v, r_v)
    pitch = rng.uniform(24.0, 30.0)
    disc = _periodic_overlap(z + rng.uniform(0.0, pitch), grid.dz, rng.uniform(6.0, 9.0), pitch)
    cancellous = rng.uniform(140.0, 280.0)
    cortical = rng.uniform(650.0, 950.0)
    bone_v = np.where(rho_v > 1.0 - 2.0 / r_v, cortical, cancellous)
    vert = rho_v < 1.0
    # The spine's masks are the same on every slice: index with the 2D mask, broadcast over slices.
    hu[:, vert[0]] = bone_v[vert][None, :] * (1.0 - disc[:, 0]) + 80.0 * disc[:, 0]
    y_canal, r_canal = y_v - r_v - 8.0, rng.uniform(6.5, 8.5)
    d_canal = np.hypot(x, y - y_canal)
    arch = (d_canal < r_canal + 5.0) | ((np.abs(x) < 4.0) & (y < y_canal) & (y > y_canal - 32.0))
    arch |= (np.abs(y - y_canal) < 4.0) & (np.abs(x) < 28.0)
    post_bone = rng.uniform(350.0, 650.0)
    arch_hu = np.broadcast_to(post_bone * (1.0 - 0.5 * disc) + b.muscle_hu * 0.5 * disc, grid.shape)
    arch = arch & muscle
    hu[arch] = arch_hu[arch]
    hu[:, d_canal[0] < r_canal] = 15.0

    # Ribs: bands sloping down toward the front, so one slice cuts several of them as arcs.
    rib_band = (rho_cav > 1.0) & (rho_cav < 1.0 + 9.0 / hb) & muscle & (t < 1.08)
    kk, jj, ii = np.nonzero(rib_band)  # the band is thin: work on its voxels only
    xr, yr, zr = x.ravel()[ii], y.ravel()[jj], z.ravel()[kk]
    u = np.arctan2(np.abs(xr), -yr)  # 0 at the spine, pi at the sternum
    rib_pitch, rib_slope = rng.uniform(24.0, 30.0), rng.uniform(28.0, 40.0)
    phase = zr + rib_slope * u + np.where(xr > 0, 0.0, rng.uniform(-3.0, 3.0)) + rng.uniform(0.0, rib_pitch)
    rib_occ = _periodic_overlap(phase, grid.dz, rng.uniform(9.0, 13.0), rib_pitch)
    rib_hu = np.where(u > 2.4, rng.uniform(90.0, 160.0), rng.uniform(380.0, 650.0))  # cartilage in front
    hu[kk, jj, ii] += (rib_hu - hu[kk, jj, ii]) * rib_occ
    sternum = (np.abs(x) < 14.0) & (y > c_ant + 2.0) & (y < c_ant + 14.0) & (t > 0.05) & (t < 0.85)
    hu[sternum] = rng.uniform(250.0, 450.0)

    # Mediastinum: a central band around trachea and great vessels, the spine, the aorta, the heart.
    x_m = -rng.uniform(0.0, 10.0)
    r_t = rng.uniform(7.0, 10.0)
    y_t = y_v + r_v + 6.0 + r_t
    w_mid = r_t + rng.uniform(9.0, 16.0)
    w_ant = rng.uniform(6.0, 14.0)
    narrowing = np.clip(1.0 - (y - y_t - 15.0) / 30.0, 0.0, 1.0)
    w_m = np.where(y < y_t + 15.0, w_mid, w_ant + (w_mid - w_ant) * narrowing)
    band = np.abs(x - x_m) < w_m
    r_a = rng.uniform(10.0, 14.0)
    x_a, y_a = x_m - r_v - 0.5 * r_a, y_v + 0.6 * r_v
    aorta_desc = np.hypot(x - x_a, y - y_a) < r_a
    z_carina = b.lung_height * rng.uniform(0.55, 0.65)
    asc_top = z_carina + rng.uniform(20.0, 40.0)
    r_asc = rng.uniform(13.0, 17.0)
    aorta_asc = (np.hypot(x - (x_m + 12.0), y - (y_t + 30.0)) < r_asc) & (z < asc_top)
    trunk = (np.hypot(x - (x_m - 18.0), y - (y_t + 34.0)) < r_asc * 0.85) & (z < z_carina + 10.0)

    dome_r = rng.uniform(45.0, 75.0)
    dome_l = dome_r - rng.uniform(10.0, 25.0)
    h_a, h_b, h_c = rng.uniform(46.0, 60.0), rng.uniform(38.0, 50.0), rng.uniform(48.0, 62.0)
    h_x, h_y = x_m - rng.uniform(12.0, 30.0), rng.uniform(0.1, 0.3) * float(np.mean(c_ant))
    h_z = dome_l + rng.uniform(0.25, 0.45) * h_c
    rho_h = np.sqrt(((x - h_x) / h_a) ** 2 + ((y - h_y) / h_b) ** 2 + ((z - h_z) / h_c) ** 2)
    heart = rho_h < 1.0
    mediastinum = band | (rho_v < 1.0 + 4.0 / r_v) | aorta_desc | heart | aorta_asc | trunk

    # Lungs: one ellipse per side, shrinking toward a posterior apex, cut by the cavity, the
    # mediastinum and a diaphragm dome that is higher on the right (the liver) and lowest at the back.
    lung = np.zeros(grid.shape, dtype=bool)
    below = np.zeros(grid.shape, dtype=bool)
    apex_power = rng.uniform(2.5, 4.0)
    g = np.sqrt(np.clip(1.0 - np.clip(t, 0.0, 1.0) ** apex_power, 0.0, 1.0))
    cy = (float(np.mean(c_ant)) - hp) / 2.0
    ay = (float(np.mean(c_ant)) + hp) / 2.0 * 1.2
    ant_raise = rng.uniform(15.0, 35.0)
    for sign, dome in ((1.0, dome_r), (-1.0, dome_l)):
        inner = x_m + sign * w_mid
        cx = (inner + sign * hb) / 2.0
        ax = abs(sign * hb - inner) / 2.0 * 1.25
        side = (x - x_m) * sign > 0
        apex_cy = cy - 0.25 * ay
        rho_l = _ellipse_radius(x - cx, y - (apex_cy + (cy - apex_cy) * g), ax * g + 1e-3, ay * g + 1e-3)
        rho_flat = np.minimum(_ellipse_radius(x - cx, y - cy, ax, ay), 1.0)
        front = np.clip((y - cy) / ay, 0.0, 1.0)
        z_dia = dome * (1.0 - rho_flat**2) + ant_raise * front
        lung |= side & (rho_l < 1.0) & (z > z_dia) & (t < 1.0)
        below |= side & (z <= z_dia)
    lung &= cavity & ~mediastinum

    hu[heart] = rng.uniform(35.0, 50.0)  # myocardium
    hu[heart & (rho_h <= 1.0 - 7.0 / h_a)] = blood_hu
    hu[aorta_desc | aorta_asc | trunk] = blood_hu
    # Mediastinal fat in front of the great vessels and around the heart.
    med_fat = band & ~heart & ~aorta_asc & ~trunk & (y > y_t + 12.0) & cavity
    hu[med_fat] = b.fat_hu + 20.0
    liver_hu = rng.uniform(50.0, 65.0) + (rng.uniform(40.0, 60.0) if contrast else 0.0)
    abdomen = cavity & below & ~heart & ~lung & ~vert
    hu[abdomen] = 40.0
    hu[abdomen & (x > x_m - 25.0)] = liver_hu
    if rng.random() < 0.5:
        g_c = np.array([x_m - 0.55 * hb, 0.2 * float(np.mean(c_ant)), dome_l - rng.uniform(20.0, 35.0)])
        gas = ((x - g_c[0]) / 35.0) ** 2 + ((y - g_c[1]) / 28.0) ** 2 + ((z - g_c[2]) / 14.0) ** 2 < 1.0
        hu[gas & abdomen] = -1000.0
    trachea = (np.hypot(x - x_m, y - y_t) < r_t) & (z > z_carina)
    hu[trachea] = -1000.0

    # Lung parenchyma: baseline density from inspiration, denser toward the back (gravity, supine),
    # with a faint smooth texture.
    dep_grad = rng.uniform(10.0, 100.0)
    posterior = np.clip((cy - y) / ay + 0.3, 0.0, 1.0)
    texture = _smooth_field(rng, grid, 18.0)
    parenchyma = b.base_hu + dep_grad * posterior + 10.0 * texture
    parts = {
        "body": body, "cavity": cavity, "rho_cav": rho_cav, "t": t, "posterior": posterior,
        "x_m": x_m, "y_t": y_t, "r_t": r_t, "z_carina": z_carina, "w_mid": w_mid, "blood_hu": blood_hu,
    }
    _draw_confounders(rng, grid, parenchyma, lung, parts)
    hu[lung] = parenchyma[lung]
    return hu, lung, parts


def _draw_confounders(rng: np.random.Generator, grid: _Grid, parenchyma: np.ndarray, lung: np.ndarray,
                      parts: dict) -> None:
    """Benign findings every category gets alike: dependent density, plate atelectasis, nodules.

    They raise the lung density of some normal scans where COVID-19 lesions would, so mean lung HU
    alone cannot tell the categories apart.
    """
    t, rho_cav, posterior = parts["t"], parts["rho_cav"], parts["posterior"]
    if rng.random() < 0.55:
        depth = rng.uniform(0.1, 0.3)
        amp = rng.uniform(150.0, 350.0)
        w = np.clip((rho_cav - (1.0 - depth)) / depth, 0.0, 1.0)
        w *= np.clip((posterior - 0.45) / 0.35, 0.0, 1.0)
        w *= np.clip((0.7 - t) / 0.4, 0.0, 1.0)
        parenchyma += amp * w
    lung_idx = np.flatnonzero(lung & (t < 0.5))
    if lung_idx.size == 0:
        return
    coords = _voxel_points(grid, lung_idx)
    if rng.random() < 0.35:
        for _ in range(int(rng.integers(1, 3))):
            p0 = coords[rng.integers(len(coords))]
            normal = np.array([rng.normal(), rng.normal(), 0.4 * rng.normal()])
            normal /= np.linalg.norm(normal)
            radius, thick = rng.uniform(18.0, 40.0), rng.uniform(3.0, 6.0)
            box, _ = _soft_blob(grid, p0, radius, radius)
            z, y, x = grid.z[box[0]], grid.y[:, box[1]], grid.x[:, :, box[2]]
            dist = (x - p0[0]) * normal[0] + (y - p0[1]) * normal[1] + (z - p0[2]) * normal[2]
            reach = np.sqrt((x - p0[0]) ** 2 + (y - p0[1]) ** 2 + (z - p0[2]) ** 2)
            occ = np.clip((thick / 2 - np.abs(dist)) / (grid.dz * abs(normal[2]) + grid.px) + 0.5, 0.0, 1.0)
            occ = occ * np.clip((radius - reach) / 8.0, 0.0, 1.0)
            target = rng.uniform(-150.0, 20.0)
            sub = parenchyma[box]
            sub += (target - sub) * occ.astype(np.float32)
    if rng.random() < 0.35:
        all_idx = np.flatnonzero(lung)
        for _ in range(int(rng.integers(1, 4))):
            c = _voxel_points(grid, all_idx[rng.integers(all_idx.size)][None])[0]
            box, occ = _soft_blob(grid, c, rng.uniform(2.5, 6.0), 8.0)
            sub = parenchyma[box]
            sub += (rng.uniform(10.0, 60.0) - sub) * occ


def _voxel_points(grid: _Grid, flat_idx: np.ndarray) -> np.ndarray:
    """Patient coordinates (x, y, z) in mm of voxels given by flat (D, H, W) indices, (n, 3)."""
    k, j, i = np.unravel_index(flat_idx, grid.shape)
    return np.stack([grid.x.ravel()[i], grid.y.ravel()[j], grid.z.ravel()[k]], axis=1).astype(np.float64)


def _draw_lesions(rng: np.random.Generator, grid: _Grid, hu: np.ndarray, lung: np.ndarray, parts: dict,
                  category: str) -> np.ndarray:
    """Ground-glass opacities (and consolidations in CT-3/CT-4) covering a drawn fraction of the lungs.

    A smooth random field plus a peripheral, posterior and basal bias is thresholded at the quantile
    that leaves exactly the drawn fraction of lung voxels above it: the patches are blobby, mostly
    subpleural, and their total is the involvement. Lesions only add density (``max``).

    Returns:
        The lesion mask.
    """
    target = rng.uniform(*INVOLVEMENT_DRAW[category])
    idx = np.flatnonzero(lung)
    t = parts["t"]
    coarse = _smooth_field(rng, grid, rng.uniform(22.0, 36.0)).ravel()[idx]
    fine = _smooth_field(rng, grid, 9.0).ravel()[idx]
    periphery = np.broadcast_to(parts["rho_cav"], grid.shape).ravel()[idx]
    posterior = np.broadcast_to(parts["posterior"], grid.shape).ravel()[idx]
    low = np.broadcast_to(np.clip(1.0 - t, 0.0, 1.0), grid.shape).ravel()[idx]
    side = np.broadcast_to(np.sign(grid.x - parts["x_m"]), grid.shape).ravel()[idx]
    field = (coarse + 0.45 * fine + rng.uniform(1.5, 3.5) * periphery**3 + rng.uniform(0.4, 1.4) * posterior
             + rng.uniform(0.2, 1.0) * low + rng.uniform(-0.4, 0.4) * side)
    n_lesion = round(target * idx.size)
    order = np.argsort(field, kind="stable")
    chosen = order[idx.size - n_lesion:]
    thr = field[chosen[0]] if n_lesion else np.inf
    # Density rises from a faint haze at a patch's rim to the patient's core GGO value inside it.
    core_hu = rng.uniform(-700.0, -540.0)
    rim_hu = core_hu - rng.uniform(80.0, 170.0)
    ramp = rng.uniform(0.5, 1.0)
    strength = np.clip((field[chosen] - thr) / ramp, 0.0, 1.0)
    lesion_hu = rim_hu + (core_hu - rim_hu) * strength + 25.0 * fine[chosen]
    if category in ("CT-3", "CT-4"):
        share = rng.uniform(0.12, 0.3) if category == "CT-3" else rng.uniform(0.2, 0.45)
        thr_c = np.quantile(field[chosen], 1.0 - share)
        solid = np.clip((field[chosen] - thr_c) / (0.3 * ramp) + 0.3, 0.0, 1.0)
        lesion_hu += (rng.uniform(-90.0, 40.0) - lesion_hu) * solid
    flat = hu.reshape(-1)
    where = idx[chosen]
    flat[where] = np.maximum(flat[where], lesion_hu.astype(np.float32))
    lesion = np.zeros(lung.size, dtype=bool)
    lesion[where] = True
    return lesion.reshape(lung.shape)


def _draw_vessels_and_airways(rng: np.random.Generator, grid: _Grid, hu: np.ndarray, lung: np.ndarray,
                              parts: dict) -> None:
    """Arterial and venous trees from each hilum, and bronchi beside the arteries' trunks."""
    x_m, y_t, z_c, w_mid = parts["x_m"], parts["y_t"], parts["z_carina"], parts["w_mid"]
    idx = np.flatnonzero(lung)
    pts = _voxel_points(grid, idx)
    jitter = rng.uniform(-0.5, 0.5, pts.shape) * np.array([grid.px, grid.px, grid.dz])
    pts = pts + jitter
    n_targets = int(rng.integers(90, 140))
    starts, ends, radii = [], [], []
    bronchi = []
    for sign in (1.0, -1.0):
        side_pts = pts[(pts[:, 0] - x_m) * sign > 0]
        if len(side_pts) < 2:
            continue
        hilum_z = z_c - rng.uniform(10.0, 25.0)
        artery = np.array([x_m + sign * (w_mid + 4.0), y_t - rng.uniform(0.0, 10.0), hilum_z])
        vein = np.array([x_m + sign * (w_mid + 2.0), y_t + rng.uniform(10.0, 25.0),
                         hilum_z - rng.uniform(15.0, 30.0)])
        for root, r_root in ((artery, rng.uniform(6.0, 9.0)), (vein, rng.uniform(5.0, 7.5))):
            k = min(n_targets, len(side_pts))
            targets = side_pts[rng.choice(len(side_pts), size=k, replace=False)]
            s, e, r, depth = _vessel_tree(rng, root, targets, rng.uniform(0.6, 0.9), r_root)
            starts.append(s)
            ends.append(e)
            radii.append(r)
            if root is artery:
                trunk = depth <= 3
                # Bronchi run beside the arteries, a little behind them.
                shift = np.array([0.0, -1.6, 0.0]) * r[trunk, None]
                bronchi.append((s[trunk] + shift, e[trunk] + shift, 0.7 * r[trunk]))
                carina = np.array([x_m, y_t, z_c])
                bronchi.append((carina[None], (artery + np.array([0, -6.0, 0]))[None],
                                np.array([parts["r_t"] * 0.7])))
    if not starts:
        return
    vessels = _splat_tubes(grid, np.concatenate(starts), np.concatenate(ends), np.concatenate(radii))
    vessels *= lung
    vessel_hu = parts["blood_hu"] if parts["blood_hu"] > 100 else 40.0
    hu += (vessel_hu - hu) * vessels
    b_start = np.concatenate([b[0] for b in bronchi])
    b_end = np.concatenate([b[1] for b in bronchi])
    b_r = np.concatenate([b[2] for b in bronchi])
    wall = _splat_tubes(grid, b_start, b_end, b_r + 1.3) * parts["cavity"]
    lumen = _splat_tubes(grid, b_start, b_end, b_r) * parts["cavity"]
    hu += (30.0 - hu) * wall
    hu += (-1000.0 - hu) * lumen


def _add_noise_and_calibrate(noise_rng: np.random.Generator, rng: np.random.Generator, grid: _Grid,
                             hu: np.ndarray, body: np.ndarray, noise_sd: float) -> np.ndarray:
    """Correlated Gaussian noise, HU gain and offset, int16, and the constant outside the scan circle.

    Air around the patient is stored without noise, as after a scanner's air clamp: its noise was a
    third of each file's size and carries nothing a model could use.
    """
    matrix = grid.shape[2]
    white = noise_rng.standard_normal(grid.shape, dtype=np.float32)
    # A reconstruction kernel correlates neighbouring pixels over about 0.8 mm.
    corr = 0.6 * matrix / 256
    white = gaussian_filter1d(gaussian_filter1d(white, corr, axis=1), corr, axis=2)
    white *= np.float32(noise_sd / (white[:4].std() + 1e-6))
    white *= body
    gain, offset = rng.uniform(0.97, 1.03), rng.uniform(-15.0, 15.0)
    out = (hu + white) * np.float32(gain) + np.float32(offset)
    out = np.clip(np.rint(out), AIR_OUTSIDE_CIRCLE_HU, 3071).astype(np.int16)
    centres = np.arange(matrix) - (matrix - 1) / 2
    outside = np.hypot(centres[:, None], centres[None, :]) > matrix / 2
    out[:, outside] = AIR_OUTSIDE_CIRCLE_HU
    return out


def _affine(orientation: str, grid: _Grid, centres: np.ndarray, table_z: float) -> np.ndarray:
    """Voxel-to-RAS affine of the file as stored in ``orientation``, with the isocentre at x = y = 0."""
    d, h, w = grid.shape
    spacing = {"x": grid.px, "y": grid.px, "z": grid.dz}
    first = {"x": centres[0], "y": centres[0], "z": table_z}
    count = {"x": w, "y": h, "z": d}
    affine = np.eye(4)
    for col, (code, axis) in enumerate(zip(orientation, "xyz", strict=True)):
        flip = code in "LPI"
        row = "xyz".index(axis)
        affine[row, col] = -spacing[axis] if flip else spacing[axis]
        affine[row, 3] = first[axis] + (count[axis] - 1) * spacing[axis] if flip else first[axis]
    return affine


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


# --------------------------------------------------------------------------------------------------
# Writing a set
# --------------------------------------------------------------------------------------------------


def _write_atomic(path: Path, data: bytes) -> None:
    """Write bytes to ``path`` through a hidden temporary name in the same folder, then rename."""
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _study_id(index: int) -> str:
    return f"study_{index + 1:04d}"


def write_phantom(out_dir: Path, seed: int, index: int, category: str, matrix: int) -> PhantomInfo:
    """Render phantom ``index`` and write it to ``out_dir/studies/<category>/study_NNNN.nii.gz``."""
    phantom = render_phantom(seed, index, category, matrix=matrix)
    image = phantom_to_nifti(phantom)
    rel = f"studies/{category}/{_study_id(index)}.nii.gz"
    # gzip by hand with mtime 0 and no file name in the header, so the bytes depend on the voxels only.
    _write_atomic(out_dir / rel, gzip.compress(image.to_bytes(), compresslevel=GZIP_LEVEL, mtime=0))
    zooms = tuple(round(float(v), 6) for v in image.header.get_zooms()[:3])
    return PhantomInfo(study_id=_study_id(index), category=category, study_file=rel,
                       involvement=phantom.involvement, shape=tuple(int(s) for s in image.shape),
                       spacing=zooms)


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
    # Ctrl-C goes to the whole process group; only the parent should handle it and cancel the rest.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
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
    _write_atomic(out_dir / MARKER_NAME, _marker(n, seed, matrix, complete=False))
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
    _write_atomic(out_dir / MARKER_NAME, _marker(n, seed, matrix, complete=True))
    _write_atomic(out_dir / REGISTRY_NAME, _registry_bytes(infos))
    return infos


def _registry_bytes(infos: Sequence[PhantomInfo]) -> bytes:
    """The registry as MosMedData ships it: CSV, UTF-8 with a byte-order mark."""
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(REGISTRY_COLUMNS)
    for p in infos:
        writer.writerow([p.study_id, p.category, p.study_file, "", f"{p.involvement:.6f}"])
    return buf.getvalue().encode("utf-8-sig")


# --------------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    mix = ", ".join(f"{c} {round(100 * f)}%" for c, f in CLASS_MIX.items())
    parser = argparse.ArgumentParser(
        prog="python -m lungct.phantom",
        description=(
            "Write synthetic chest-CT phantoms in the MosMedData layout: OUT/studies/CT-0..CT-4/"
            "study_NNNN.nii.gz (int16 HU) and OUT/dataset_registry.csv (UTF-8 with BOM; columns "
            f"{','.join(REGISTRY_COLUMNS)}). Class mix: {mix}. Slices are 8-10 mm apart (30-45 slices) "
            "and the field of view 330-380 mm, as in MosMedData."
        ),
        epilog=(
            "Size trade-off: real scans are 512x512 at ~0.7 mm, but scanner noise does not compress and "
            "200 such phantoms take over a gigabyte. The default --matrix 256 (about 1.3-1.5 mm pixels) "
            "keeps 200 phantoms under 300 MB and loses nothing at the loader's ~128-pixel input; "
            "--matrix 512 gives ~0.7 mm pixels and about 4x the size and time. An existing --out must be "
            "empty or hold an earlier phantom set, which is replaced."
        ),
    )
    parser.add_argument("--out", type=Path, required=True, help="folder to write the set into (required)")
    parser.add_argument("--n", type=int, default=200, help="number of phantoms (default: 200)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the set (default: 0)")
    parser.add_argument("--matrix", type=int, default=256,
                        help=f"in-plane voxels per side, {MIN_MATRIX}..{MAX_MATRIX} (default: 256)")
    parser.add_argument("--workers", type=int, default=None,
                        help=f"processes (default: all CPU cores, {os.cpu_count()} here)")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar (default: shown)")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; returns the exit status."""
    parser = _parser()
    args = parser.parse_args(argv)
    problem = None
    if args.n < 1:
        problem = f"--n must be at least 1, got {args.n}"
    elif not MIN_MATRIX <= args.matrix <= MAX_MATRIX:
        problem = f"--matrix must be in {MIN_MATRIX}..{MAX_MATRIX}, got {args.matrix}"
    elif args.workers is not None and args.workers < 1:
        problem = f"--workers must be at least 1, got {args.workers}"
    if problem:
        print(f"{parser.prog}: error: {problem}", file=sys.stderr)
        return 2
    try:
        infos = generate_phantoms(args.out, args.n, args.seed, matrix=args.matrix, workers=args.workers,
                                  progress=not args.no_progress)
    except DataError as e:
        print(f"{parser.prog}: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        print(f"{parser.prog}: error: {printable(str(e.strerror or e))} ({printable(str(e.filename or args.out))})",
              file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{parser.prog}: interrupted; no registry was written", file=sys.stderr)
        return 130
    counts = ", ".join(f"{c} {k}" for c, k in class_counts(args.n).items() if k)
    print(f"wrote {len(infos)} phantoms to {printable(str(args.out))} ({counts})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
