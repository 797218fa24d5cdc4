"""The patient, in HU on a :class:`~lungct.phantom.geometry.Grid`: body, chest wall, spine, ribs,
mediastinum, heart, abdomen and lungs; the benign confounders every category gets alike; and the vessel
trees and airways. Lesions and scanner noise are :mod:`lungct.phantom.render`'s.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from lungct.phantom.geometry import (
    Grid,
    ellipse_radius,
    periodic_overlap,
    smooth_field,
    soft_blob,
    splat_tubes,
    voxel_points,
)


@dataclass(frozen=True)
class Body:
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


def draw_anatomy(rng: np.random.Generator, grid: Grid, b: Body) -> tuple[np.ndarray, np.ndarray, dict]:
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
    body = ellipse_radius(x, y, a, b_y, b.body_power) < 1.0
    muscle = ellipse_radius(x, y, a - b.fat_mm, b_y - b.fat_mm, b.body_power) < 1.0
    c_a = a - b.fat_mm - b.wall_lat
    c_ant, c_post = b_ant - b.fat_mm - b.wall_ant, b_post - b.fat_mm - b.wall_post
    rho_cav = ellipse_radius(x, y, c_a, np.where(y > 0, c_ant, c_post), 2.4)
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
    rho_v = ellipse_radius(x, y - y_v, 1.15 * r_v, r_v)
    pitch = rng.uniform(24.0, 30.0)
    disc = periodic_overlap(z + rng.uniform(0.0, pitch), grid.dz, rng.uniform(6.0, 9.0), pitch)
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
    rib_occ = periodic_overlap(phase, grid.dz, rng.uniform(9.0, 13.0), rib_pitch)
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
        rho_l = ellipse_radius(x - cx, y - (apex_cy + (cy - apex_cy) * g), ax * g + 1e-3, ay * g + 1e-3)
        rho_flat = np.minimum(ellipse_radius(x - cx, y - cy, ax, ay), 1.0)
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
    texture = smooth_field(rng, grid, 18.0)
    parenchyma = b.base_hu + dep_grad * posterior + 10.0 * texture
    parts = {
        "body": body, "cavity": cavity, "rho_cav": rho_cav, "t": t, "posterior": posterior,
        "x_m": x_m, "y_t": y_t, "r_t": r_t, "z_carina": z_carina, "w_mid": w_mid, "blood_hu": blood_hu,
    }
    _draw_confounders(rng, grid, parenchyma, lung, parts)
    hu[lung] = parenchyma[lung]
    return hu, lung, parts


def _draw_confounders(rng: np.random.Generator, grid: Grid, parenchyma: np.ndarray, lung: np.ndarray,
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
    coords = voxel_points(grid, lung_idx)
    if rng.random() < 0.35:
        for _ in range(int(rng.integers(1, 3))):
            p0 = coords[rng.integers(len(coords))]
            normal = np.array([rng.normal(), rng.normal(), 0.4 * rng.normal()])
            normal /= np.linalg.norm(normal)
            radius, thick = rng.uniform(18.0, 40.0), rng.uniform(3.0, 6.0)
            box, _ = soft_blob(grid, p0, radius, radius)
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
            c = voxel_points(grid, all_idx[rng.integers(all_idx.size)][None])[0]
            box, occ = soft_blob(grid, c, rng.uniform(2.5, 6.0), 8.0)
            sub = parenchyma[box]
            sub += (rng.uniform(10.0, 60.0) - sub) * occ


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


def draw_vessels_and_airways(rng: np.random.Generator, grid: Grid, hu: np.ndarray, lung: np.ndarray,
                              parts: dict) -> None:
    """Arterial and venous trees from each hilum, and bronchi beside the arteries' trunks."""
    x_m, y_t, z_c, w_mid = parts["x_m"], parts["y_t"], parts["z_carina"], parts["w_mid"]
    idx = np.flatnonzero(lung)
    pts = voxel_points(grid, idx)
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
    vessels = splat_tubes(grid, np.concatenate(starts), np.concatenate(ends), np.concatenate(radii))
    vessels *= lung
    vessel_hu = parts["blood_hu"] if parts["blood_hu"] > 100 else 40.0
    hu += (vessel_hu - hu) * vessels
    b_start = np.concatenate([b[0] for b in bronchi])
    b_end = np.concatenate([b[1] for b in bronchi])
    b_r = np.concatenate([b[2] for b in bronchi])
    wall = splat_tubes(grid, b_start, b_end, b_r + 1.3) * parts["cavity"]
    lumen = splat_tubes(grid, b_start, b_end, b_r) * parts["cavity"]
    hu += (30.0 - hu) * wall
    hu += (-1000.0 - hu) * lumen

