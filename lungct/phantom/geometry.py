"""Geometry every part of a phantom is drawn with: the voxel grid in patient millimetres, smooth random
fields, partial-volume shapes (superellipses, thick-slice slabs, tubes, spheres), and the affine of the
orientation a file is stored in.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Grid:
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


def smooth_field(rng: np.random.Generator, grid: Grid, length_mm: float) -> np.ndarray:
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


def ellipse_radius(dx: np.ndarray, dy: np.ndarray, a, b, p: float = 2.0) -> np.ndarray:
    """Normalised superellipse radius: < 1 inside the curve |dx/a|^p + |dy/b|^p = 1."""
    if p == 2.0:
        return np.sqrt((dx / a) ** 2 + (dy / b) ** 2)
    return ((np.abs(dx) / a) ** p + (np.abs(dy) / b) ** p) ** (1.0 / p)


def slab_overlap(z: np.ndarray, dz: float, lo: np.ndarray | np.floating, hi: np.ndarray | np.floating) -> np.ndarray:
    """Fraction of each slice [z - dz/2, z + dz/2] that lies inside [lo, hi]: thick-slice partial volume."""
    return np.clip((np.minimum(z + dz / 2, hi) - np.maximum(z - dz / 2, lo)) / dz, 0.0, 1.0)


def periodic_overlap(phase_mm: np.ndarray, dz: float, height: float, pitch: float) -> np.ndarray:
    """:func:`slab_overlap` for bands ``[k*pitch, k*pitch + height]``; ``phase_mm`` is the slice centre."""
    w = np.mod(phase_mm, pitch)
    total = np.zeros_like(w)
    for k in (-1, 0, 1):
        total += slab_overlap(w, dz, np.float32(k * pitch), np.float32(k * pitch + height))
    return total


def splat_tubes(grid: Grid, starts: np.ndarray, ends: np.ndarray, radii: np.ndarray) -> np.ndarray:
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


def soft_blob(grid: Grid, center: np.ndarray, radius: float, bbox_mm: float
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
    occ = slab_overlap(z, grid.dz, center[2] - half_chord, center[2] + half_chord)
    return box, occ.astype(np.float32)


def voxel_points(grid: Grid, flat_idx: np.ndarray) -> np.ndarray:
    """Patient coordinates (x, y, z) in mm of voxels given by flat (D, H, W) indices, (n, 3)."""
    k, j, i = np.unravel_index(flat_idx, grid.shape)
    return np.stack([grid.x.ravel()[i], grid.y.ravel()[j], grid.z.ravel()[k]], axis=1).astype(np.float64)


def stored_affine(orientation: str, grid: Grid, centres: np.ndarray, table_z: float) -> np.ndarray:
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

