"""Stroke pathology for synthetic slabs, drawn in template (MNI) space at 2 mm and sampled in the case's pose.

A case holds one or more acute lesions in a vascular territory (MCA most often, then PCA, ACA, deep lacunes,
embolic showers of small lesions), on either side. Each has two fields in [0, 1]: `hypo`, the hypoperfused
region (delay and dispersion of the bolus, mild CBF fall: Tmax > 6 s near 0.45), and `core`, a focus inside
its worst part where CBF and CBV collapse (core > `CORE_SEVERITY` is the ischaemic core at CT time). Keeping
them apart is what makes the real task hard: Tmax outlines the hypoperfused region, not the lesion. Per
patient, collaterals scale the delay and the depth of the CBF fall.
The label is what a DWI drawn 30-60 min later shows: the core grown into the hypoperfused tissue by a random
amount (more where Tmax is longer), or, after early reperfusion, smaller than the CT core; it is sampled
in a pose shifted by 1-3 mm (DWI-to-CT misregistration). Unlabelled look-alikes: old infarcts (hypodense,
low CBF and CBV, normal Tmax), periventricular leukoaraiosis (mildly low CBF, slightly late), contralateral
oligaemia (late, near-normal CBF); CSF and vessels come from the anatomy.

Territories follow the usual MNI atlas outline (Tatu et al. 1998, Neurology 50:1699): ACA paramedian frontal
and parietal, PCA occipital and medial temporal, MCA the lateral hemisphere with insula and basal ganglia.
"""

from __future__ import annotations

import functools
from typing import Sequence

import numpy as np
from scipy import ndimage

from strokenet_tf.data import anatomy

FINE_STEP_MM, COARSE_STEP_MM = 2, 4  # pathology grids: 2 mm for real slabs, 4 mm for tiny test slabs
CORE_SEVERITY = 0.65
PENUMBRA_SEVERITY = 0.3  # the lesion profile's outer level (see `_lesion`)
CHANNELS = ("core", "hypo", "old", "leuko", "contra", "artery", "vein")
LESION_TYPES = ("mca", "mca", "mca", "mca", "mca", "pca", "pca", "aca", "lacune", "lacune", "shower")  # frequencies
LESION_TYPE_NAMES = ("mca", "aca", "pca", "lacune", "shower")
# Core severity -> physiology, piecewise linear (relative to normal tissue; extra delay in s).
_S = np.array([0.0, 0.3, 0.5, 0.65, 0.8, 1.0], np.float32)
_CBF = np.array([1.0, 0.8, 0.6, 0.33, 0.2, 0.08], np.float32)
_CBV = np.array([1.0, 1.0, 0.95, 0.75, 0.5, 0.3], np.float32)
_CORE_DELAY = np.array([0.0, 0.5, 1.0, 2.0, 3.0, 4.0], np.float32)
# Hypoperfusion (oligaemia and penumbra) -> physiology; Tmax 6 s near hypo 0.45 (before collateral scaling).
_H = np.array([0.0, 0.2, 0.45, 0.7, 1.0], np.float32)
_H_DELAY = np.array([0.4, 3.0, 6.0, 9.0, 12.0], np.float32)
_H_CBF = np.array([1.0, 0.97, 0.88, 0.78, 0.7], np.float32)
_H_CBV = np.array([1.0, 1.05, 1.12, 1.12, 1.05], np.float32)


@functools.lru_cache(maxsize=2)
def coarse_anatomy(step: int = FINE_STEP_MM) -> dict:
    """Template tissue, territories and vessel masks on a `step` mm grid (cached; about a second)."""
    template = anatomy.load_template()
    stack = template.stack[::step, ::step, ::step]
    affine = template.affine.copy()
    affine[:3, :3] *= step
    x, y, z = _grid(affine, stack.shape[:3])
    gm, wm, csf, outside = (stack[..., c] for c in range(4))
    tissue = gm + wm
    deep_csf = (csf > 0.5) & (ndimage.distance_transform_edt(outside <= 0) * step > 14)
    near_ventricle = ndimage.gaussian_filter((ndimage.distance_transform_edt(~deep_csf) * step < 12).astype(np.float32),
                                             4.0 / step)
    aca = (np.abs(x) < 20) & (y > -45) & (z > -8)
    pca = (y < -62) | ((z < 4) & (y < -22) & (np.abs(x) < 42))
    mca = ~aca & ~pca & (z > -30) & (z < 75)
    territories = {name: ndimage.gaussian_filter((mask & (tissue > 0.3)).astype(np.float32), 3.0 / step)
                   for name, mask in (("aca", aca), ("pca", pca), ("mca", mca))}
    deep = ((np.abs(x) > 12) & (np.abs(x) < 32) & (np.abs(y + 2) < 22) & (z > -6) & (z < 18)) | (
        (np.abs(x) > 14) & (np.abs(x) < 30) & (np.abs(y + 10) < 30) & (z > 20) & (z < 35) & (wm > 0.6))
    # The superior sagittal sinus: just outside the envelope at the midline.
    vein = ((np.abs(x) < 5) & (outside > 0.0) & (outside < 3.5) & (z > -20)).astype(np.float32)
    atlas = {"affine": affine, "x": x, "y": y, "z": z, "gm": gm, "wm": wm, "tissue": tissue, "step": step,
             "territories": territories, "deep": deep & (tissue > 0.5), "near_ventricle": near_ventricle * wm,
             "vein": vein, "shape": stack.shape[:3]}
    atlas["artery"] = _arteries(atlas)
    return atlas


def _grid(affine, shape):
    axes = [affine[a, a] * np.arange(n) + affine[a, 3] for a, n in enumerate(shape)]
    return (axes[0].reshape(-1, 1, 1).astype(np.float32), axes[1].reshape(1, -1, 1).astype(np.float32),
            axes[2].reshape(1, 1, -1).astype(np.float32))


def _field(rng: np.random.Generator, atlas: dict, sigma_mm: float) -> np.ndarray:
    """Smooth unit-std Gaussian random field on the atlas grid, drawn coarse and zoomed (cheap for any sigma)."""
    shape, sigma_vox = atlas["shape"], sigma_mm / atlas["step"]
    factor = max(1.0, sigma_vox / 2.0)
    coarse = tuple(max(2, int(np.ceil(n / factor)) + 1) for n in shape)
    noise = ndimage.gaussian_filter(rng.standard_normal(coarse).astype(np.float32), sigma_vox / factor)
    field = ndimage.zoom(noise, [n / c for n, c in zip(shape, coarse)], order=1)[: shape[0], : shape[1], : shape[2]]
    return (field - field.mean()) / max(float(field.std()), 1e-6)


def _pick_voxel(rng: np.random.Generator, weight: np.ndarray) -> np.ndarray:
    flat = weight.ravel().astype(np.float64)
    flat = flat / flat.sum()
    return np.array(np.unravel_index(rng.choice(flat.size, p=flat), weight.shape))


def _lesion(rng, atlas, weight, core_radius_mm, penumbra_ratio, roughness) -> np.ndarray:
    """Severity of one lesion: a rough ellipsoid whose profile crosses CORE_SEVERITY at the core radius."""
    centre = _pick_voxel(rng, weight)
    cx, cy, cz = (float(atlas[a].ravel()[centre[k]]) for k, a in enumerate("xyz"))
    radii = core_radius_mm * rng.uniform(0.7, 1.4, 3)
    distance = np.sqrt(((atlas["x"] - cx) / radii[0]) ** 2 + ((atlas["y"] - cy) / radii[1]) ** 2
                       + ((atlas["z"] - cz) / radii[2]) ** 2)
    distance = distance * (1.0 + roughness * np.clip(_field(rng, atlas, 6.0 + core_radius_mm / 3), -2, 2))
    # s(1) = CORE_SEVERITY and s(penumbra_ratio) = PENUMBRA_SEVERITY for s = exp(-(d / L)^p).
    p = np.log(np.log(PENUMBRA_SEVERITY) / np.log(CORE_SEVERITY)) / np.log(penumbra_ratio)
    scale = 1.0 / (-np.log(CORE_SEVERITY)) ** (1.0 / p)
    return np.exp(-((distance / scale) ** p)).astype(np.float32)


def make_pathology(rng: np.random.Generator, lesion_types: Sequence[str] | None = None,
                   step: int = FINE_STEP_MM) -> dict:
    """Draws the case's lesions and look-alikes on the 2 mm template grid.

    `lesion_types` restricts the main lesion to those types (keeping their relative frequencies); `step` is the
    grid in mm (`COARSE_STEP_MM` serves slabs whose voxels are that coarse).

    Returns dict with "stack" [x, y, z, len(CHANNELS)], "label" [x, y, z, 1] (the later DWI lesion, soft),
    "affine" (2 mm grid -> MNI mm) and "params" (lesion type, side, growth, reperfusion).
    """
    atlas = coarse_anatomy(step)
    shape = atlas["shape"]
    side = 1.0 if rng.random() < 0.5 else -1.0
    hemisphere = (atlas["x"] * side > 3).astype(np.float32)
    choices = [t for t in LESION_TYPES if not lesion_types or t in lesion_types]
    kind = str(rng.choice(choices))
    tissue = np.clip(atlas["tissue"], 0, 1)
    hypo = np.zeros(shape, np.float32)
    core = np.zeros(shape, np.float32)

    def add(weight, core_mm, hypo_ratio, core_ratio, roughness, clip=None):
        """A hypoperfused region around the territory seed, and a core somewhere inside its worst part."""
        nonlocal hypo, core
        region = _lesion(rng, atlas, weight, core_mm * hypo_ratio, 1.8, roughness)
        inside = (region > 0.6) * tissue
        seed_weight = inside if inside.sum() > 0 else weight
        focus = _lesion(rng, atlas, seed_weight, core_mm, core_ratio, roughness + 0.1)
        if clip is not None:
            region, focus = region * clip, focus * clip
        # The core is hypoperfused too, though not always the latest part of the territory.
        hypo, core = np.maximum(hypo, np.maximum(region, 0.55 * focus)), np.maximum(core, focus)

    if kind in ("mca", "aca", "pca"):
        territory = atlas["territories"][kind] * hemisphere
        clip = np.clip(territory * 1.5, 0, 1) * (territory > 0.2)
        add(territory * tissue, float(np.exp(rng.normal(np.log(26.0), 0.45))), rng.uniform(1.5, 3.0),
            rng.uniform(1.3, 2.0), 0.3, clip)
    elif kind == "lacune":
        add(atlas["deep"] * hemisphere, rng.uniform(5.0, 12.0), rng.uniform(1.0, 1.6), rng.uniform(1.2, 1.6), 0.2)
    else:  # embolic shower: 2-5 small lesions in one hemisphere's MCA territory
        territory = atlas["territories"]["mca"] * hemisphere
        clip = np.clip(territory * 1.5, 0, 1)
        for _ in range(int(rng.integers(2, 6))):
            add(territory * atlas["gm"], rng.uniform(5.0, 13.0), rng.uniform(1.2, 2.0), rng.uniform(1.3, 2.0), 0.25, clip)
    if rng.random() < 0.12:  # a second, independent lesion elsewhere
        other = atlas["territories"][str(rng.choice(["mca", "pca", "aca"]))] * (1 - hemisphere if rng.random() < 0.5 else hemisphere)
        add(other * tissue, rng.uniform(4, 12), rng.uniform(1.2, 2.2), rng.uniform(1.3, 2.0), 0.3, other > 0.2)
    texture = 1.0 + 0.08 * _field(rng, atlas, 3.0)
    hypo = np.clip(hypo * np.clip(tissue * 2.0, 0, 1) * texture, 0, 1)
    core = np.clip(core * np.clip(tissue * 2.0, 0, 1) * texture, 0, 1)

    # The DWI label: the core grown into the hypoperfused tissue (more where Tmax is longer), or after early
    # reperfusion smaller than the CT core.
    reperfused = rng.random() < 0.3
    if reperfused:
        growth = -rng.uniform(0.04, 0.2) * np.ones(shape, np.float32)
    else:
        growth = rng.uniform(0.0, 0.4) * hypo * (1.0 + 0.5 * _field(rng, atlas, 8.0))
    label = (core + growth) - CORE_SEVERITY
    label = 1.0 / (1.0 + np.exp(-label / 0.03)) * (tissue > 0.35)
    old = np.zeros(shape, np.float32)
    for _ in range(int(rng.random() < 0.35) + int(rng.random() < 0.1)):
        hemi = (atlas["x"] * (side if rng.random() < 0.5 else -side) > 3).astype(np.float32)
        terr = atlas["territories"][str(rng.choice(["mca", "pca", "aca"]))] * hemi
        old = np.maximum(old, (_lesion(rng, atlas, terr * tissue, rng.uniform(4, 14), 1.3, 0.35) > 0.5).astype(np.float32))
    old = ndimage.gaussian_filter(old, 1.4 / atlas["step"]) * (hypo < 0.2)
    leuko = atlas["near_ventricle"] * float(rng.uniform(0.4, 1.0)) * (rng.random() < 0.4)
    leuko = np.clip(leuko * (1 + 0.5 * _field(rng, atlas, 6.0)), 0, 1)
    contra = np.zeros(shape, np.float32)
    if rng.random() < 0.15:
        contra_territory = atlas["territories"]["mca"] * (1 - hemisphere)
        contra = 0.45 * _lesion(rng, atlas, contra_territory * tissue, rng.uniform(15, 30), 1.5, 0.3)
    artery = atlas["artery"]
    stack = np.stack([core, hypo, old, leuko, contra, artery, atlas["vein"]], axis=-1).astype(np.float32)
    # Collaterals: how long the bolus is delayed in the hypoperfused tissue, and how deep the core's CBF falls;
    # both vary between patients, so no single Tmax or CBF cut-off fits every case.
    params = {"collateral_delay": round(float(rng.uniform(0.6, 1.8)), 3),
              "cbf_power": round(float(rng.uniform(0.6, 1.5)), 3), "lesion_type": kind, "side": "left" if side < 0 else "right", "reperfused": bool(reperfused),
              "growth": round(float(growth.max()), 3), "old_infarct": bool(old.max() > 0.5),
              "leukoaraiosis": bool(leuko.max() > 0.1), "contralateral_oligaemia": bool(contra.max() > 0.05)}
    return {"stack": stack, "label": label[..., None].astype(np.float32), "affine": atlas["affine"], "params": params}


_ARTERY_PATHS = (  # MNI mm control points, right side (x > 0); mirrored for the left.
    ((4, 2, -18), (14, 4, -16), (28, 6, -12), (38, 8, -6), (44, 2, 4), (48, -10, 16)),  # ICA-M1-M2
    ((38, 8, -6), (42, 18, 6), (46, 24, 22)),  # M2 anterior
    ((3, 2, -16), (4, 18, -8), (4, 30, 6), (5, 26, 24), (5, 8, 38), (5, -14, 48)),  # A1-A2 pericallosal
    ((3, -18, -16), (12, -30, -12), (20, -48, -6), (14, -70, 2), (8, -86, 6)),  # P1-P2-calcarine
)


def _arteries(atlas: dict) -> np.ndarray:
    """Partial-volume fraction of large arteries (~4-5 mm across: ICA, M1-M2, A1-A2, P1-P2) along MNI paths."""
    points = []
    for path in _ARTERY_PATHS:
        for sign in (1.0, -1.0):
            path_mm = np.asarray(path, np.float32) * np.array([sign, 1, 1], np.float32)
            for a, b in zip(path_mm[:-1], path_mm[1:]):
                for t in np.linspace(0, 1, 8, endpoint=False):
                    points.append(a + t * (b - a))
    points = np.asarray(points, np.float32)
    affine = atlas["affine"]
    index = np.rint((points - affine[:3, 3]) / np.diag(affine)[:3]).astype(int)
    seed = np.zeros(atlas["shape"], bool)
    valid = np.all((index >= 0) & (index < np.asarray(atlas["shape"])), axis=1)
    seed[tuple(index[valid].T)] = True
    distance = ndimage.distance_transform_edt(~seed) * atlas["step"]
    return np.clip((2.5 - distance) / 1.5, 0, 1).astype(np.float32)


def physiology(fields: dict, collateral_delay: float = 1.0, cbf_power: float = 1.0):
    """Relative CBF, relative CBV, delay (s) and dispersion (s) from the pathology channels (slab arrays).

    collateral_delay scales the delay of the hypoperfused tissue; cbf_power deepens (> 1) or softens the core's
    CBF fall.
    """
    core, hypo, contra, leuko, old = (fields[k] for k in ("core", "hypo", "contra", "leuko", "old"))
    cbf_rel = (np.interp(core, _S, _CBF) ** cbf_power * np.interp(hypo, _H, _H_CBF) * (1 - 0.1 * contra)
               * (1 - 0.3 * leuko) * (1 - 0.8 * old))
    cbv_rel = np.interp(core, _S, _CBV) * np.interp(hypo, _H, _H_CBV) * (1 - 0.15 * leuko) * (1 - 0.75 * old)
    delay = (_H_DELAY[0] + (np.interp(np.maximum(hypo, contra), _H, _H_DELAY) - _H_DELAY[0]) * collateral_delay
             + np.interp(core, _S, _CORE_DELAY) + 1.0 * leuko)
    dispersion = 0.6 + 2.5 * np.maximum(hypo, contra)
    return (cbf_rel.astype(np.float32), cbv_rel.astype(np.float32), delay.astype(np.float32),
            dispersion.astype(np.float32))
