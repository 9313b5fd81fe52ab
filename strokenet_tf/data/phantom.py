"""Synthetic head, stroke lesion and CT perfusion maps in physical units (used by `synthesize`).

All arrays are in network order [depth, height, width]; anatomy is evaluated in world coordinates (mm)
from the affine, so a flipped affine flips the stored voxels but not the head. Every random draw comes
from the caller's generator, in a fixed order, so a case is reproducible from its generator alone.

Physiology (typical adult values; ISLES 2018 maps are in this range after vendor scaling):
    grey matter  CBF ~60 mL/100g/min, CBV ~4 mL/100g, MTT = 60 CBV / CBF ~4 s, Tmax ~1 s, CT ~40 HU
    white matter CBF ~25, CBV ~2, MTT ~5 s, Tmax ~1 s, CT ~25 HU
    penumbra     Tmax 6-12 s, CBF mildly lowered, CBV normal or raised
    core         CBF and CBV strongly lowered, Tmax high
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
from scipy import ndimage, special


# ----------------------------------------------------------------------------------------- fields


def _resize_linear(volume: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """Separable linear resize of a small grid to `shape` (corners aligned)."""
    for axis, size in enumerate(shape):
        coarse = volume.shape[axis]
        if coarse == size:
            continue
        if coarse == 1:
            volume = np.repeat(volume, size, axis=axis)
            continue
        position = np.linspace(0.0, coarse - 1.0, size, dtype=np.float32)
        lower = np.minimum(position.astype(np.int64), coarse - 2)
        weight_shape = [1] * volume.ndim
        weight_shape[axis] = size
        weight = (position - lower).reshape(weight_shape)
        volume = np.take(volume, lower, axis=axis) * (1 - weight) + np.take(volume, lower + 1, axis=axis) * weight
    return volume.astype(np.float32, copy=False)


def smooth_field(rng: np.random.Generator, shape, spacing_mm, sigma_mm: float) -> np.ndarray:
    """Gaussian random field with correlation length ~`sigma_mm`, zero mean and unit std.

    Drawn on a coarse grid (step sigma/2) and resized, so its cost does not grow with sigma.
    """
    step_mm = sigma_mm / 2.0
    coarse = tuple(
        max(1, min(n, int(np.ceil(n * s / step_mm)) + 1)) for n, s in zip(shape, spacing_mm)
    )
    coarse_step = [n * s / max(c - 1, 1) if c < n else s for n, s, c in zip(shape, spacing_mm, coarse)]
    noise = rng.standard_normal(coarse, dtype=np.float32)
    noise = ndimage.gaussian_filter(noise, [sigma_mm / st for st in coarse_step], mode="reflect")
    noise = (noise - noise.mean()) / max(float(noise.std()), 1e-6)
    return _resize_linear(noise, shape)


def _lerp(a, b, weight):
    return a + weight * (b - a)


def _ellipsoid_weight(grid, rng, center, radii_mm, edge_mm, roughness) -> np.ndarray:
    """Soft blob in [0, 1]: ~1 inside an ellipsoid whose boundary is bent by a smooth random field.

    The field's correlation length follows the radius, so the boundary grows lobes, not far islands.
    """
    x, y, z = grid["x"], grid["y"], grid["z"]
    distance = np.sqrt(
        ((x - center[0]) / radii_mm[0]) ** 2 + ((y - center[1]) / radii_mm[1]) ** 2 + ((z - center[2]) / radii_mm[2]) ** 2
    )
    field = smooth_field(rng, grid["shape"], grid["spacing"], max(3.0, 0.6 * float(np.mean(radii_mm))))
    distance = distance * (1.0 + roughness * np.clip(field, -1.5, 1.5))
    return special.expit((1.0 - distance) * float(np.mean(radii_mm)) / edge_mm).astype(np.float32)


# --------------------------------------------------------------------------------------- geometry


def make_grid(rng: np.random.Generator, size: int, depths: Sequence[int]) -> dict:
    """Voxel grid, affine and world coordinates (mm) broadcastable over [depth, height, width]."""
    depth = int(rng.choice(np.asarray(depths)))
    inplane_mm = float(rng.uniform(0.8, 1.0)) * 256.0 / size  # constant field of view at any --size
    slice_mm = 5.0 if rng.random() < 0.4 else round(float(rng.uniform(4.0, 6.0)), 1)
    signs = (-1.0 if rng.random() < 0.5 else 1.0, -1.0 if rng.random() < 0.25 else 1.0, 1.0)
    center_mm = (rng.uniform(-5, 5), rng.uniform(-5, 5), rng.uniform(-5, 15))
    nifti_shape = (size, size, depth)
    affine = np.eye(4)
    for axis, (n, step, sign) in enumerate(zip(nifti_shape, (inplane_mm, inplane_mm, slice_mm), signs)):
        affine[axis, axis] = sign * step
        affine[axis, 3] = center_mm[axis] - sign * step * (n - 1) / 2.0
    world = [affine[a, a] * np.arange(n, dtype=np.float32) + affine[a, 3] for a, n in enumerate(nifti_shape)]
    qform_code, sform_code = (1, 0) if rng.random() < 0.2 else (1, 1)
    return {
        "shape": (depth, size, size),
        "spacing": (slice_mm, inplane_mm, inplane_mm),
        "affine": affine,
        "x": world[0].astype(np.float32).reshape(1, 1, size),
        "y": world[1].astype(np.float32).reshape(1, size, 1),
        "z": world[2].astype(np.float32).reshape(depth, 1, 1),
        "codes": (qform_code, sform_code),
    }


def make_head(rng: np.random.Generator, grid: dict) -> dict:
    """Skull, CSF, ventricles and grey-matter weight; all [depth, height, width]."""
    shape, spacing = grid["shape"], grid["spacing"]
    x, y, z = grid["x"], grid["y"], grid["z"]
    fov_mm = shape[2] * spacing[2]
    a = min(float(rng.uniform(68, 78)), 0.43 * fov_mm)
    b = min(float(rng.uniform(86, 98)), 0.45 * fov_mm)
    c = float(rng.uniform(75, 90))
    radius_mm = (a + b) / 2.0
    rho = np.sqrt((x / a) ** 2 + (y / b) ** 2 + np.abs(z / c) ** 2.5)
    rho = rho * (1.0 + 0.012 * smooth_field(rng, shape, spacing, 25.0))
    depth_mm = (1.0 - rho) * radius_mm  # approximate distance inside the outer skull surface
    skull_mm, csf_mm = float(rng.uniform(5, 8)), float(rng.uniform(1.5, 3.0))
    head = depth_mm > -4.0
    skull = (depth_mm > 0) & (depth_mm <= skull_mm)
    inside = depth_mm > skull_mm + csf_mm
    brain_depth_mm = depth_mm - skull_mm - csf_mm

    ventricles = np.zeros(shape, bool)
    for side in (-1.0, 1.0):
        center = (side * rng.uniform(4, 8), rng.uniform(-5, 10), rng.uniform(5, 15))
        radii = (rng.uniform(4, 7), rng.uniform(18, 28), rng.uniform(8, 14))
        ventricles |= _ellipsoid_weight(grid, rng, center, radii, 1.0, 0.15) > 0.5
    fissure = (np.abs(x) < 1.0) & (brain_depth_mm < 0.45 * radius_mm)
    tissue = inside & ~ventricles & ~fissure

    cortex = special.expit((3.0 + 1.5 * smooth_field(rng, shape, spacing, 6.0) - brain_depth_mm) / 0.8)
    islands = special.expit((smooth_field(rng, shape, spacing, 5.0) - 1.2) * 3.0)
    nuclei = np.zeros(shape, np.float32)
    for side in (-1.0, 1.0):
        center = (side * rng.uniform(17, 24), rng.uniform(-5, 10), rng.uniform(-5, 5))
        nuclei = np.maximum(nuclei, _ellipsoid_weight(grid, rng, center, (7, 13, 10), 2.0, 0.2))
    grey = np.clip(np.maximum(np.maximum(cortex, islands), nuclei), 0, 1).astype(np.float32)
    return {
        "head": head, "skull": skull, "inside": inside, "tissue": tissue, "grey": grey,
        "bone_hu": (1250 + 250 * smooth_field(rng, shape, spacing, 10.0)).astype(np.float32),
    }


# ----------------------------------------------------------------------------------------- lesion


def make_lesion(rng: np.random.Generator, grid: dict, tissue: np.ndarray, radius_mm: float) -> dict:
    """Soft weights of core, penumbra territory and oligaemic rim, plus the perturbed ground truth."""
    x, y = grid["x"], grid["y"]
    side = -1.0 if rng.random() < 0.5 else 1.0
    candidates = np.argwhere(tissue & (side * x > 15.0))
    if len(candidates) == 0:
        candidates = np.argwhere(tissue)
    k, j, i = candidates[rng.integers(len(candidates))]
    core_center = np.array([grid["x"][0, 0, i], grid["y"][0, j, 0], grid["z"][k, 0, 0]], np.float32)
    core_radii = radius_mm * rng.uniform(0.7, 1.3, 3)
    core_radii[2] *= rng.uniform(0.6, 1.1)
    spread = rng.uniform(1.9, 3.0)
    territory_center = core_center + rng.normal(0, 0.2, 3) * core_radii * spread
    midline = special.expit(side * x / 1.5)

    core = _ellipsoid_weight(grid, rng, core_center, core_radii, 2.0, 0.25) * midline
    territory = _ellipsoid_weight(grid, rng, territory_center, core_radii * spread, 3.0, 0.25) * midline
    territory = np.maximum(territory, core)
    rim = _ellipsoid_weight(grid, rng, territory_center, core_radii * spread * rng.uniform(1.2, 1.5), 4.0, 0.2)
    rim = np.maximum(rim * midline, territory)

    # Ground truth: the core blended with a rescaled, differently bent blob (erosion or growth into the
    # penumbra by the time of the DWI), a noisy boundary, and never outside the hypoperfused territory.
    later = _ellipsoid_weight(grid, rng, core_center, core_radii * rng.uniform(0.7, 1.25), 2.0, 0.3) * midline
    boundary = rng.uniform(0.05, 0.2) * smooth_field(rng, grid["shape"], grid["spacing"], 2.5)
    mix = rng.uniform(0.3, 0.7)
    label = ((mix * core + (1 - mix) * later + boundary) > rng.uniform(0.4, 0.6)) & (territory > 0.3) & tissue
    return {"core": core, "territory": territory, "rim": rim, "label": label, "side": side}


def _add_old_infarcts(rng, grid, tissue, maps) -> None:
    """Chronic infarcts: low CBF and CBV but normal Tmax and a hypodense CT; never in the ground truth."""
    for _ in range(int(rng.integers(1, 4))):
        voxels = np.argwhere(tissue)
        k, j, i = voxels[rng.integers(len(voxels))]
        center = (grid["x"][0, 0, i], grid["y"][0, j, 0], grid["z"][k, 0, 0])
        weight = _ellipsoid_weight(grid, rng, center, rng.uniform(5, 15, 3), 2.0, 0.3)
        maps["cbf"] *= _lerp(1.0, rng.uniform(0.15, 0.45), weight)
        maps["cbv"] *= _lerp(1.0, rng.uniform(0.15, 0.45), weight)
        maps["ct"] -= rng.uniform(8, 18) * weight


# ------------------------------------------------------------------------------------------- case


def make_perfusion(rng, grid, head, lesion) -> dict:
    """Physical maps [depth, height, width]: CBF mL/100g/min, CBV mL/100g, MTT s, Tmax s, CT HU."""
    shape, spacing = grid["shape"], grid["spacing"]
    grey, tissue = head["grey"], head["tissue"]
    noise = float(rng.uniform(0.15, 0.35))
    shared = smooth_field(rng, shape, spacing, 2.5)
    white = rng.standard_normal(shape, dtype=np.float32)
    cbf_noise = 0.7 * shared + 0.5 * smooth_field(rng, shape, spacing, 2.5) + 0.4 * white
    cbf = (25 + 35 * grey) * (1 + noise * cbf_noise)
    cbv_noise = 0.7 * shared + 0.5 * smooth_field(rng, shape, spacing, 2.5) + 0.4 * white
    cbv = (2 + 2 * grey) * (1 + noise * cbv_noise)
    # Slow inhomogeneity of the deconvolved maps (vessels, arterial input, beam hardening).
    drift = smooth_field(rng, shape, spacing, 15.0)
    cbf *= np.exp(rng.uniform(0.1, 0.25) * drift)
    cbv *= np.exp(rng.uniform(0.1, 0.25) * (0.7 * drift + 0.7 * smooth_field(rng, shape, spacing, 15.0)))
    tmax = 0.6 + 0.5 * np.abs(smooth_field(rng, shape, spacing, 4.0)) + 0.3 * rng.standard_normal(shape, dtype=np.float32)

    core, territory, rim = lesion["core"], lesion["territory"], lesion["rim"]
    variation = smooth_field(rng, shape, spacing, 6.0)
    cbf_factor = _lerp(1.0, rng.uniform(0.35, 0.8) + 0.15 * variation, territory)
    cbf_factor = _lerp(cbf_factor, np.clip(rng.uniform(0.1, 0.45) + 0.1 * variation, 0.03, 1), core)
    cbv_factor = _lerp(1.0, rng.uniform(0.95, 1.4) + 0.1 * variation, territory)
    cbv_factor = _lerp(cbv_factor, np.clip(rng.uniform(0.2, 0.6) + 0.1 * variation, 0.05, 1), core)
    cbf, cbv = cbf * cbf_factor, cbv * cbv_factor
    tmax_field = smooth_field(rng, shape, spacing, 8.0)
    tmax = _lerp(tmax, rng.uniform(3.0, 5.5) + 0.7 * tmax_field, rim - territory)
    penumbra_tmax = rng.uniform(6.0, 11.0) + 2.0 * tmax_field
    tmax = _lerp(tmax, penumbra_tmax, territory - core)
    tmax = _lerp(tmax, penumbra_tmax + rng.uniform(-1.0, 3.0), core)

    ct = np.full(shape, -1000.0, np.float32)
    ct[head["head"]] = 30.0
    ct[head["skull"]] = head["bone_hu"][head["skull"]]
    ct[head["inside"]] = 5.0
    ct = np.where(tissue, 25 + 15 * grey + 2 * smooth_field(rng, shape, spacing, 8.0), ct)
    ct -= rng.uniform(0, 4) * core * tissue
    maps = {"cbf": cbf, "cbv": cbv, "tmax": tmax, "ct": ct}
    _add_old_infarcts(rng, grid, tissue, maps)
    maps["ct"] += rng.uniform(2, 6) * rng.standard_normal(shape, dtype=np.float32)

    # CTP software smooths in-plane: the brain edge blurs into the zero outside and looks hypoperfused.
    sigma = [0.0, *(rng.uniform(1.0, 2.0) / s for s in spacing[1:])]
    for name in ("cbf", "cbv", "tmax"):
        maps[name] = np.where(tissue, ndimage.gaussian_filter(maps[name] * tissue, sigma), 0.0)
    maps["cbf"] = np.where(tissue, np.maximum(maps["cbf"], 0.3), 0.0)
    maps["cbv"] = np.where(tissue, np.maximum(maps["cbv"], 0.05), 0.0)
    maps["tmax"] = np.where(tissue, np.clip(maps["tmax"], 0.0, 40.0), 0.0)
    maps["mtt"] = np.where(tissue, np.clip(60.0 * maps["cbv"] / np.maximum(maps["cbf"], 0.3), 0.0, 40.0), 0.0)
    return {k: v.astype(np.float32) for k, v in maps.items()}


def make_pwi(rng, grid, head, maps) -> np.ndarray:
    """CT_4DPWI in HU, int16 [time, depth, height, width]: gamma-variate bolus per tissue voxel."""
    frames = int(rng.integers(43, 50))
    tissue = head["tissue"]
    arrival = rng.uniform(3.0, 7.0) + 0.8 * maps["tmax"][tissue]
    beta = np.clip(maps["mtt"][tissue] / 4.0, 0.5, 6.0)
    # Area under the curve ~ CBV (indicator dilution); grey matter (CBV 4, beta 1 s) peaks near grey_peak_hu.
    grey_peak_hu = rng.uniform(20, 40)
    amplitude = grey_peak_hu / 0.9 * maps["cbv"][tissue] / (6.0 * beta**4)
    baseline = np.clip(maps["ct"], -1024, 3071)
    noise_hu = rng.uniform(4, 10)
    pwi = np.empty((frames, *grid["shape"]), np.int16)
    for t in range(frames):
        elapsed = np.maximum(t - arrival, 0.0)
        frame = baseline + noise_hu * rng.standard_normal(grid["shape"], dtype=np.float32)
        frame[tissue] += amplitude * elapsed**3 * np.exp(-elapsed / beta)
        pwi[t] = np.clip(np.rint(frame), -1024, 3071)
    return pwi


def make_lesion_of_volume(
    rng: np.random.Generator, grid: dict, tissue: np.ndarray, volume_range_ml: tuple[float, float]
) -> tuple[dict, float]:
    """A lesion whose ground truth volume lies in `volume_range_ml`, drawn near a log-uniform target.

    Returns:
        (lesion from `make_lesion`, ground truth volume in mL).
    """
    voxel_ml = float(np.prod(grid["spacing"])) / 1000.0
    low, high = volume_range_ml
    slab_mm = grid["shape"][0] * grid["spacing"][0]
    # ISLES 2018 median is ~15 mL; a thin slab cannot hold a large lesion.
    target_ml = float(np.exp(rng.uniform(np.log(2.0 * low), np.log(max(2.0 * low, min(0.8 * high, 2.0 * slab_mm))))))
    radius_mm = (3.0 * 1000.0 * target_ml / (4.0 * np.pi)) ** (1.0 / 3.0)
    best = None
    for _ in range(8):
        lesion = make_lesion(rng, grid, tissue, radius_mm)
        volume_ml = float(lesion["label"].sum()) * voxel_ml
        error = abs(np.log(max(volume_ml, 1e-3) / target_ml))
        if best is None or (low <= volume_ml <= high, -error) > (low <= best[1] <= high, -best[2]):
            best = (lesion, volume_ml, error, radius_mm)
        if low <= volume_ml <= high and error < np.log(1.5):
            break
        radius_mm = float(np.clip(radius_mm * np.clip((target_ml / max(volume_ml, 1e-3)) ** (1 / 3), 0.6, 1.6), 3.0, 45.0))
    lesion, volume_ml, _, radius_mm = best
    lesion["radius_mm"] = radius_mm
    return lesion, volume_ml
