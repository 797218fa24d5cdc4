"""Rendering one phantom: :func:`render_phantom` draws the acquisition (field of view, slices, patient
position, stored orientation), the anatomy, the lesions its category asks for, and the scanner's noise
and calibration, and returns a :class:`Phantom` in memory.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.ndimage import gaussian_filter1d

from lungct.phantom.anatomy import Body, draw_anatomy, draw_vessels_and_airways
from lungct.phantom.categories import INVOLVEMENT_DRAW
from lungct.phantom.geometry import Grid, smooth_field, stored_affine
from lungct.records import CATEGORIES

MIN_MATRIX = 64
MAX_MATRIX = 1024

FOV_MM = (330.0, 380.0)
SLICE_SPACING_MM = (8.0, 10.0)
N_SLICES = (30, 45)
AIR_OUTSIDE_CIRCLE_HU = -1024
ORIENTATIONS = ("LPS", "LAS", "RAS")


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
    body = Body(
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
    grid = Grid(
        z=(z_first + np.arange(n_slices) * dz).astype(np.float32)[:, None, None],
        y=(centres - off_y).astype(np.float32)[None, :, None],
        x=(centres - off_x).astype(np.float32)[None, None, :],
        px=float(px),
        dz=dz,
    )

    hu, lung, parts = draw_anatomy(rng, grid, body)
    lesion = np.zeros_like(lung)
    if category != "CT-0":
        lesion = _draw_lesions(lesion_rng, grid, hu, lung, parts, category)
    draw_vessels_and_airways(rng, grid, hu, lung, parts)
    # Bigger patients absorb more photons: noisier images.
    noise_sd = rng.uniform(3.0, 8.0) * (0.85 + 0.3 * size)
    volume = _add_noise_and_calibrate(noise_rng, rng, grid, hu, parts["body"], noise_sd)

    orientation = ORIENTATIONS[int(rng.integers(len(ORIENTATIONS)))]
    table_z = rng.uniform(-420.0, -120.0)
    affine = stored_affine(orientation, grid, centres, table_z)
    n_lung = int(lung.sum())
    involvement = float(lesion.sum()) / n_lung if n_lung else 0.0
    return Phantom(volume_hu=volume, lung_mask=lung, lesion_mask=lesion, spacing_dhw=(dz, px, px),
                   affine=affine, orientation=orientation, category=category, involvement=involvement)


def _draw_lesions(rng: np.random.Generator, grid: Grid, hu: np.ndarray, lung: np.ndarray, parts: dict,
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
    coarse = smooth_field(rng, grid, rng.uniform(22.0, 36.0)).ravel()[idx]
    fine = smooth_field(rng, grid, 9.0).ravel()[idx]
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


def _add_noise_and_calibrate(noise_rng: np.random.Generator, rng: np.random.Generator, grid: Grid,
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

