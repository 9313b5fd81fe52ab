"""The CT perfusion acquisition of a synthetic slab: tissue physiology, the 4D series and the non-contrast CT.

Physiology (typical adult values, drawn per case): grey matter CBF 45-65 mL/100g/min and CBV 3.6-4.6 mL/100g,
white matter CBF 18-26 and CBV 1.7-2.3, so MTT = 60 CBV / CBF is ~4 s in grey and ~5.5 s in white matter;
each voxel mixes them by its tissue fractions (CSF carries no tracer). The pathology (see `pathology`) lowers
CBF and CBV, delays and disperses the bolus. Each voxel's enhancement is CBF times the tracer kernel of
`strokenet_tf.perfusion.tracer` for its (MTT, delay, dispersion), read from a table of that forward model
(delay interpolated, MTT and dispersion on fine grids whose values become the voxel's truth), plus the
arterial input itself in partial-volumed arteries and a venous output (delayed, dispersed, same area) in the
sinuses. Frames are 1 s apart; each carries centre-specific noise with a centre-specific grain.

A centre fixes what differs between the four ISLES 2018 sites: frame noise and its grain, map smoothing,
the vendor scale of CBF and CBV, the number of frames.
"""

from __future__ import annotations

import dataclasses
import functools

import numpy as np
from scipy import ndimage

from strokenet_tf.data import pathology
from strokenet_tf.perfusion import constants, tracer


@dataclasses.dataclass(frozen=True)
class Centre:
    name: str
    frame_noise_hu: tuple[float, float]  # per-frame noise std range (HU) of the raw series
    grain_px: float  # in-plane correlation of that noise (Gaussian sigma, voxels)
    series_smoothing_mm: float  # in-plane Gaussian sigma of the vendor's filter before deconvolution
    map_smoothing_mm: float  # Gaussian sigma the vendor software applies to the maps
    vendor_scale: tuple[float, float]  # CBF and CBV factors of the uint16 archive values
    frames: tuple[int, int]  # inclusive range of the number of frames


CENTRES: tuple[Centre, ...] = (
    Centre("centre_1", (4.0, 7.0), 0.7, 2.0, 1.0, (45.0, 80.0), (45, 49)),
    Centre("centre_2", (6.0, 9.0), 0.5, 2.0, 1.0, (60.0, 100.0), (43, 46)),
    Centre("centre_3", (7.0, 10.0), 0.9, 3.0, 1.0, (40.0, 70.0), (44, 48)),
    Centre("centre_4", (4.0, 6.0), 1.1, 1.5, 0.0, (55.0, 110.0), (43, 49)),
)
CENTRE_NAMES = tuple(c.name for c in CENTRES)

_MTT_GRID = np.geomspace(1.0, 40.0, 56).astype(np.float32)
_DISPERSION_GRID = np.linspace(0.0, 4.0, 9).astype(np.float32)
_DELAY_STEP_S = 0.5
_MAX_DELAY_S = 24.0


@functools.lru_cache(maxsize=8)
def _kernel_table(aif_key: tuple, frames: int) -> np.ndarray:
    """Tracer kernels K[mtt, dispersion, delay, t] for CBF = 1 (so a voxel's curve is CBF * K)."""
    aif = np.asarray(aif_key, np.float32)
    delays = np.arange(0.0, _MAX_DELAY_S + _DELAY_STEP_S, _DELAY_STEP_S, dtype=np.float32)
    m, d, t = np.meshgrid(_MTT_GRID, _DISPERSION_GRID, delays, indexing="ij")
    curves = tracer.tissue_curves(aif, 1.0, np.ones(m.size, np.float32), m.ravel(), t.ravel(), d.ravel())
    return curves.reshape(m.shape + (frames,)).astype(np.float32)


_VOXEL_CHUNK = 32768  # voxels per block when adding the kernels into the series ([chunk, T] float32: a few MB)


def _kernels(aif: np.ndarray, mtt: np.ndarray, dispersion: np.ndarray, delay: np.ndarray):
    """Per-voxel kernels and the MTT and dispersion they stand for (grid values when read from the table).

    The kernels come as a function of a slice of the voxels ([n, T] float32), so a caller can take them a
    block at a time (`_add_kernels`). Fewer voxels than table entries (tiny test slabs) are computed directly.
    """
    if mtt.size < _MTT_GRID.size * _DISPERSION_GRID.size * (_MAX_DELAY_S / _DELAY_STEP_S + 1):
        direct = tracer.tissue_curves(aif, 1.0, np.ones(mtt.size, np.float32), mtt, delay, dispersion)
        direct = direct.astype(np.float32)
        return (lambda part: direct[part]), mtt.astype(np.float32), dispersion.astype(np.float32)
    table = _kernel_table(tuple(np.round(aif, 4).tolist()), aif.size)
    mi = np.clip(np.rint(np.interp(np.log(mtt), np.log(_MTT_GRID), np.arange(_MTT_GRID.size))), 0, _MTT_GRID.size - 1)
    di = np.clip(np.rint(dispersion / _DISPERSION_GRID[1]), 0, _DISPERSION_GRID.size - 1)
    position = np.clip(delay / _DELAY_STEP_S, 0, table.shape[2] - 1.001)
    low = position.astype(np.int64)
    weight = (position - low)[:, None].astype(np.float32)
    mi, di = mi.astype(np.int64), di.astype(np.int64)
    rows = table.reshape(-1, table.shape[3])  # table[m, d, k] is row (m * dispersions + d) * delays + k
    first = (mi * table.shape[1] + di) * table.shape[2] + low

    def kernels(part: slice) -> np.ndarray:  # linear in the delay between its two table neighbours
        w = weight[part]
        return rows[first[part]] * (1 - w) + rows[first[part] + 1] * w

    return kernels, _MTT_GRID[mi], _DISPERSION_GRID[di]


def _add_kernels(series: np.ndarray, voxels: np.ndarray, kernels, cbf: np.ndarray) -> None:
    """series[v] += kernel * CBF for the distinct flat voxel indices `voxels` of series [..., T], in blocks."""
    rows = series.reshape(-1, series.shape[-1])
    for start in range(0, voxels.size, _VOXEL_CHUNK):
        part = slice(start, start + _VOXEL_CHUNK)
        rows[voxels[part]] += kernels(part) * cbf[part][:, None]


def _grainy_noise(rng: np.random.Generator, shape, std: float, grain_px: float) -> np.ndarray:
    """Gaussian noise of the given std, correlated in-plane (axes 1 and 2) by a 3-tap kernel of width grain_px.

    Drawn and filtered in place one slice (axis 0) at a time: the same numbers as drawing the whole array at
    once and filtering it whole, without full-size temporaries.
    """
    noise = np.empty(shape, np.float32)
    side = np.float32(np.exp(-0.5 / grain_px**2)) if grain_px > 0.2 else None
    if side is not None:
        work, term = np.empty(shape[1:], np.float32), np.empty(shape[1:], np.float32)
        unit = np.float32(1.0 / (1.0 + 2.0 * side * side))  # unit variance again (per axis: 1 + 2 side^2)
    for layer in noise:
        rng.standard_normal(dtype=np.float32, out=layer)
        if side is not None:
            for axis in (0, 1):  # axes 1 and 2 of the volume
                _three_taps(layer, side, axis, work, term)
            layer *= unit
        layer *= np.float32(std)
    return noise


def _three_taps(values: np.ndarray, side: np.float32, axis: int, work: np.ndarray, term: np.ndarray) -> None:
    """In place along `axis`: v[i] <- (v[i] + side v[i-1]) + side v[i+1] (a missing neighbour is left out)."""
    def along(part: slice) -> tuple:
        return (slice(None),) * axis + (part,)

    low, high, first, last = along(slice(0, -1)), along(slice(1, None)), along(slice(0, 1)), along(slice(-1, None))
    np.multiply(values[low], side, out=term[high])
    np.add(values[high], term[high], out=work[high])
    work[first] = values[first]
    np.multiply(values[high], side, out=term[low])
    np.add(work[low], term[low], out=values[low])
    values[last] = work[last]


def acquire(rng: np.random.Generator, head: dict, fields: dict, centre: Centre, patient: dict | None = None) -> dict:
    """Truth maps, the 4D series and the non-contrast CT of a slab.

    Args:
        head: `anatomy.make_head` output ([depth, height, width] fractions).
        fields: the pathology channels sampled on the slab (`pathology.CHANNELS` names -> arrays).
        centre: the acquiring centre.
        patient: `pathology.make_pathology` params (collateral_delay, cbf_power); defaults when None.

    Returns:
        dict with "series" float32 [depth, height, width, time] HU, "ct" float32 HU, "truth" (cbf, cbv, mtt,
        tmax, delay: float32 maps, 0 where no tissue), "perfused" (bool: tissue carrying tracer), "aif"
        ([T] HU above baseline) and "params".
    """
    gm, wm = head["gm"], head["wm"]
    shape = gm.shape
    frames = int(rng.integers(centre.frames[0], centre.frames[1] + 1))
    times = np.arange(frames, dtype=np.float32)
    arrival = float(rng.uniform(3.0, 8.0))
    aif = tracer.gamma_variate(times, arrival, float(rng.uniform(250, 550)), float(rng.uniform(2.5, 4.5)),
                               float(rng.uniform(1.0, 1.8)))
    aif = aif + tracer.gamma_variate(times, arrival + rng.uniform(12, 18), 0.12 * aif.max(), 3.0, 2.5)
    aif = np.round(aif.astype(np.float32), 3)

    old = fields["old"]
    tissue_frac = np.clip((gm + wm) * (1 - 0.6 * old), 0, 1)
    cbf_gm, cbf_wm = rng.uniform(45, 65), rng.uniform(18, 26)
    cbv_gm, cbv_wm = rng.uniform(3.6, 4.6), rng.uniform(1.7, 2.3)
    variation = 1.0 + 0.08 * _smooth(rng, shape)
    patient = patient or {}
    cbf_rel, cbv_rel, delay, dispersion = pathology.physiology(
        fields, patient.get("collateral_delay", 1.0), patient.get("cbf_power", 1.0))
    cbf = (gm * cbf_gm + wm * cbf_wm) * (1 - 0.6 * old) * variation * cbf_rel
    cbv = (gm * cbv_gm + wm * cbv_wm) * (1 - 0.6 * old) * variation * cbv_rel
    perfused = (tissue_frac > 0.05) & (cbf > 0.5)
    mtt = np.where(perfused, 60.0 * cbv / np.maximum(cbf, 1e-3), 0.0)

    index = np.nonzero(perfused)
    kernels, mtt_grid, dispersion_grid = _kernels(aif, np.clip(mtt[index], 1.0, 40.0), dispersion[index],
                                                   np.clip(delay[index], 0.0, _MAX_DELAY_S))
    noise_std = float(rng.uniform(*centre.frame_noise_hu))
    series = _grainy_noise(rng, shape + (frames,), noise_std, centre.grain_px)
    _add_kernels(series, np.flatnonzero(perfused), kernels, cbf[index])
    truth = {"cbf": cbf * perfused, "mtt": np.zeros(shape, np.float32), "delay": delay * perfused,
             "tmax": np.zeros(shape, np.float32)}
    truth["mtt"][index] = mtt_grid
    truth["cbv"] = truth["cbf"] * truth["mtt"] / 60.0
    truth["tmax"][index] = tracer.true_tmax_s(mtt_grid, np.clip(delay[index], 0, _MAX_DELAY_S), dispersion_grid)
    truth = {k: v.astype(np.float32) for k, v in truth.items()}

    # Large vessels: arteries carry the AIF (partial volume), sinuses a delayed, dispersed venous output.
    artery, vein = fields["artery"], fields["vein"] * (head["outside_mm"] < 8)
    # MTT 1 s and CBF = CBF_SCALE keep the AIF's area: the venous output carries all the tracer.
    vof = tracer.tissue_curves(aif, 1.0, constants.CBF_SCALE, 1.0, rng.uniform(4.0, 7.0), rng.uniform(1.5, 3.0))[0]
    vof = vof * rng.uniform(0.7, 1.0)
    for fraction, curve in ((artery, aif), (vein, vof)):
        vessel = np.nonzero(fraction > 0.01)
        series[vessel] += fraction[vessel][:, None] * curve
    baseline = _baseline_hu(rng, head, fields)
    series += baseline[..., None]
    ct = baseline + _grainy_noise(rng, shape + (1,), float(rng.uniform(2.5, 4.5)), 0.7)[..., 0]
    params = {"centre": centre.name, "frames": frames, "frame_noise_hu": round(noise_std, 2),
              "aif_arrival_s": round(arrival, 2), "aif_peak_hu": round(float(aif.max()), 1)}
    return {"series": series, "ct": ct, "truth": truth, "perfused": perfused, "aif": aif, "params": params}


def _smooth(rng: np.random.Generator, shape) -> np.ndarray:
    coarse = rng.standard_normal((max(2, shape[0] // 3 + 2), 8, 8)).astype(np.float32)
    field = ndimage.zoom(coarse, [s / c for s, c in zip(shape, coarse.shape)], order=1)[: shape[0], : shape[1], : shape[2]]
    return (field - field.mean()) / max(float(field.std()), 1e-6)


def _baseline_hu(rng: np.random.Generator, head: dict, fields: dict) -> np.ndarray:
    """Unenhanced attenuation: grey ~38, white ~28, CSF ~7, bone ~1100, scalp ~35, air -1000 HU."""
    gm, wm, csf, bone, scalp = (head[k] for k in ("gm", "wm", "csf", "bone", "scalp"))
    grey_hu, white_hu = rng.uniform(35, 41), rng.uniform(25, 30)
    old, leuko = fields["old"], fields["leuko"]
    tissue_hu = (gm * grey_hu + wm * white_hu) * (1 - 0.6 * old) + (gm + wm) * 0.6 * old * 8.0
    tissue_hu -= 5.0 * leuko * wm
    tissue_hu -= 2.0 * (fields["core"] > pathology.CORE_SEVERITY) * (gm + wm)  # early ischaemic hypodensity
    air = np.clip(1.0 - gm - wm - csf - bone - scalp, 0, 1)
    vessels = np.clip(fields["artery"] + fields["vein"], 0, 1) * 45.0
    hu = tissue_hu + csf * rng.uniform(4, 10) + bone * rng.uniform(900, 1400) + scalp * 35.0 - 1000.0 * air + vessels
    return (hu + 2.0 * _smooth(rng, gm.shape) * (air < 0.5)).astype(np.float32)
