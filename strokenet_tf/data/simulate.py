"""One synthetic ISLES 2018-like case: brain anatomy, stroke, 4D CT perfusion and the maps a scanner makes.

The steps, each in its own module:
    anatomy    a real brain template (MNI ICBM152), posed and warped, cut into a 256 x 256 x Z slab
    pathology  lesions in vascular territories, the later-DWI label, unlabelled look-alikes
    scanner    physiology -> 4D series (HU, 1 s frames) and non-contrast CT, with a centre's noise
    perfusion  CBF, CBV, MTT and Tmax deconvolved from that series (`strokenet_tf.perfusion`), then the
               centre's smoothing and vendor scale, as the archives hold them
The true maps (before acquisition and deconvolution) come along for checks, never as network input.
"""

from __future__ import annotations

import functools
from typing import Sequence

import numpy as np
from scipy import ndimage

from strokenet_tf.data import anatomy, isles, pathology, scanner

DEFAULT_DEPTHS: tuple[int, ...] = (2, 4, 8, 16, 22)
# ISLES 2018 depth mix is unpublished per case; thick slabs dominate clinical CTP (8 and 16 most often).
DEPTH_WEIGHTS = {2: 0.12, 4: 0.16, 8: 0.28, 16: 0.32, 22: 0.12}
LABEL_VOLUME_RANGE_ML = (0.2, 200.0)
MAX_PATHOLOGY_TRIES = 12


def _draw_depth(rng: np.random.Generator, depths: Sequence[int]) -> int:
    weights = np.array([DEPTH_WEIGHTS.get(int(d), 0.1) for d in depths], np.float64)
    return int(rng.choice(np.asarray(depths), p=weights / weights.sum()))


def _sample_fields(pathology_case: dict, head: dict, slab: anatomy.Slab, shift_mm: np.ndarray) -> tuple[dict, np.ndarray]:
    """The pathology channels on the slab (brain voxels only), and the label sampled in the shifted DWI pose."""
    where = (head["gm"] + head["wm"] + head["csf"]) > 0.02
    points = head["points"][where]
    values = anatomy.trilinear(pathology_case["stack"], pathology_case["affine"], points,
                               outside=(0.0,) * len(pathology.CHANNELS))
    fields = {}
    for c, name in enumerate(pathology.CHANNELS):
        volume = np.zeros(slab.shape, np.float32)
        volume[where] = values[:, c]
        fields[name] = volume
    shifted = points + (slab.linear @ shift_mm).astype(np.float32)
    label = np.zeros(slab.shape, bool)
    label[where] = anatomy.trilinear(pathology_case["label"], pathology_case["affine"], shifted, outside=(0.0,))[:, 0] > 0.5
    return fields, label


@functools.lru_cache(maxsize=1)
def _deconvolve_graph():
    """`perfusion_maps` as one traced graph for any slab and frame count (faster than eager).

    The vendor filter is applied before (in mm, per centre), so the library's own smoothing is off; the true
    arterial input, at a typical partial volume, stands in when no artery is found (tiny test slabs), as an
    operator picks an AIF by hand.
    """
    import tensorflow as tf

    from strokenet_tf.perfusion import deconvolution

    def maps(series, fallback_aif):
        return deconvolution.perfusion_maps(series, smoothing_sigma_voxels=0.0, fallback_aif_hu=fallback_aif)

    # No Python control flow depends on a tensor in `perfusion_maps`, so AutoGraph (whose source conversion
    # cost ~6 s per process) is off: the traced ops, hence the maps, are the same.
    return tf.function(maps, reduce_retracing=True, autograph=False, input_signature=[
        tf.TensorSpec([None, None, None, None], tf.float32), tf.TensorSpec([None], tf.float32)])


def vendor_maps(series: np.ndarray, aif: np.ndarray, slab: anatomy.Slab, centre: scanner.Centre,
                overwrite: bool = False) -> dict:
    """CBF, CBV, MTT, Tmax as a scanner makes them: the vendor's in-plane filter on the series, deconvolution
    (`strokenet_tf.perfusion.deconvolution`), the vendor's map smoothing, 0 outside the brain mask.

    With `overwrite`, the filtered series replaces `series` (no second full-size array).
    """
    inplane = [centre.series_smoothing_mm / slab.spacing_mm[1], centre.series_smoothing_mm / slab.spacing_mm[2]]
    filtered = series if overwrite else np.empty_like(series)
    plane = np.empty(series.shape[1:], series.dtype)
    for depth in range(series.shape[0]):  # slice by slice: the same lines filtered as filtering the whole series
        ndimage.gaussian_filter1d(series[depth], inplane[0], axis=0, truncate=2.5, output=plane)
        ndimage.gaussian_filter1d(plane, inplane[1], axis=1, truncate=2.5, output=filtered[depth])
    del plane
    graph = _deconvolve_graph()
    import tensorflow as tf  # loaded by _deconvolve_graph

    # TensorFlow copies the array; with `overwrite` the caller may hold no other reference to it, so it is freed
    # before the deconvolution's own tensors are made (~250 MB less at the peak of a 22-slice case).
    filtered = tf.convert_to_tensor(filtered, tf.float32)
    del series
    result = graph(filtered, (aif * 0.6).astype(np.float32))
    del filtered
    maps = {key: np.asarray(result[key], np.float32) for key in ("cbf", "cbv", "mtt", "tmax")}
    mask = np.asarray(result["brain_mask"], bool)
    if centre.map_smoothing_mm > 0:
        sigma = [0.0, centre.map_smoothing_mm / slab.spacing_mm[1], centre.map_smoothing_mm / slab.spacing_mm[2]]
        weight = ndimage.gaussian_filter(mask.astype(np.float32), sigma)
        maps = {k: ndimage.gaussian_filter(v * mask, sigma) / np.maximum(weight, 1e-3) for k, v in maps.items()}
    limits = {"cbf": 1000.0, "cbv": 100.0, "mtt": 40.0, "tmax": 40.0}
    maps = {k: (np.clip(v, 0.0, limits[k]) * mask).astype(np.float32) for k, v in maps.items()}
    maps["manual_aif"] = bool(result["aif_manual"])
    return maps


def _stored_series(series: np.ndarray) -> np.ndarray:
    """The series as CT_4DPWI holds it: HU rounded, clipped to [-1024, 3071], int16 (a slice at a time)."""
    stored = np.empty(series.shape, np.int16)
    plane = np.empty(series.shape[1:], series.dtype)
    for depth in range(series.shape[0]):
        np.rint(series[depth], out=plane)
        np.clip(plane, -1024, 3071, out=plane)
        stored[depth] = plane
    return stored


def simulate_case(
    rng: np.random.Generator,
    size: int = 256,
    depths: Sequence[int] = DEFAULT_DEPTHS,
    with_pwi: bool = True,
    centre: scanner.Centre | None = None,
    lesion_types: Sequence[str] | None = None,
) -> dict:
    """One case in physical units.

    Args:
        rng: the case's generator; everything is drawn from it, in a fixed order.
        size: in-plane size; the field of view stays ~205-256 mm, so smaller sizes have coarser voxels.
        depths: slice counts to choose from (weighted by `DEPTH_WEIGHTS`).
        with_pwi: also return the 4D series for writing (the maps are made from it either way).
        centre: the acquiring centre; drawn from `scanner.CENTRES` when None.
        lesion_types: restrict the main lesion's type (`pathology.LESION_TYPE_NAMES`).

    Returns:
        dict with "maps" (modality -> array in NIfTI (x, y, z[, t]) order: float32 HU for CT, the four maps
        in physical units, int16 HU for CT_4DPWI, uint8 OT), "truth" (true cbf, cbv, mtt, tmax, delay, the
        CT-time core and the large-vessel fraction, NIfTI order; vessels are not in the true maps), "affine", "zooms_mm", "codes", "ids", "vendor_scale",
        "lesion_volume_ml", "params", and bool NIfTI-order masks "tissue" (summed maps > 0, the ISLES brain
        mask), "core" (CT-time core) and "territory" (hypoperfused tissue).
    """
    ids = rng.choice(np.arange(100000, 1000000), size=len(isles.ALL_MODALITIES), replace=False)
    ids = {m: str(i) for m, i in zip(isles.ALL_MODALITIES, ids)}
    centre = centre or scanner.CENTRES[int(rng.integers(len(scanner.CENTRES)))]
    depth = _draw_depth(rng, depths)
    slab = anatomy.make_slab(rng, size, (depth,))
    head = anatomy.make_head(rng, slab)
    voxel_ml = float(np.prod(slab.spacing_mm)) / 1000.0
    step = pathology.FINE_STEP_MM if slab.spacing_mm[1] < 2.5 else pathology.COARSE_STEP_MM
    # DWI-to-CT misregistration: 1-3 mm in-plane, up to 1 mm across slices.
    angle = rng.uniform(0, 2 * np.pi)
    shift_mm = np.array([np.cos(angle), np.sin(angle), 0.0]) * rng.uniform(1.0, 3.0) + [0.0, 0.0, rng.uniform(-1, 1)]
    for _ in range(MAX_PATHOLOGY_TRIES):  # lesions wholly outside the slab are drawn again, as ISLES has none
        lesion = pathology.make_pathology(rng, lesion_types, step)
        fields, label = _sample_fields(lesion, head, slab, shift_mm)
        volume_ml = float(label.sum()) * voxel_ml
        if LABEL_VOLUME_RANGE_ML[0] <= volume_ml <= LABEL_VOLUME_RANGE_ML[1]:
            break
    acquisition = scanner.acquire(rng, head, fields, centre, lesion["params"])
    pwi = _stored_series(acquisition["series"]) if with_pwi else None  # before the vendor filter overwrites it
    maps = vendor_maps(acquisition.pop("series"), acquisition["aif"], slab, centre, overwrite=True)
    vendor_scale = {isles.CBF: float(centre.vendor_scale[0] * rng.uniform(0.9, 1.1)),
                    isles.CBV: float(centre.vendor_scale[1] * rng.uniform(0.9, 1.1))}
    to_nifti = isles.network_to_nifti
    out = {isles.CT: acquisition["ct"], isles.CBF: maps["cbf"], isles.CBV: maps["cbv"], isles.MTT: maps["mtt"],
           isles.TMAX: maps["tmax"], isles.LABEL: label.astype(np.uint8)}
    out = {m: to_nifti(v) for m, v in out.items()}
    if pwi is not None:
        out[isles.PWI] = np.transpose(pwi, (2, 1, 0, 3))
    truth = dict(acquisition["truth"])
    truth["core"] = (fields["core"] > pathology.CORE_SEVERITY).astype(np.uint8)
    truth["vessel"] = np.clip(fields["artery"] + fields["vein"], 0, 1).astype(np.float32)  # hot spots in the maps
    params = {**slab.params, **lesion["params"], **acquisition["params"],
              "dwi_shift_mm": [round(float(v), 2) for v in shift_mm],
              "core_volume_ml": round(float(truth["core"].sum()) * voxel_ml, 3), "manual_aif": maps["manual_aif"]}
    return {
        "maps": out,
        "truth": {k: to_nifti(v) for k, v in truth.items()},
        "affine": slab.affine,
        "zooms_mm": tuple(reversed(slab.spacing_mm)),
        "codes": slab.codes,
        "ids": ids,
        "vendor_scale": vendor_scale,
        "lesion_volume_ml": volume_ml,
        "params": params,
        "tissue": to_nifti(sum(maps[k] for k in ("cbf", "cbv", "mtt", "tmax")) > 0),  # the ISLES brain mask
        "core": to_nifti(truth["core"] > 0),
        "territory": to_nifti(fields["hypo"] > 0.2),
    }

