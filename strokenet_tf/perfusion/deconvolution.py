"""CBF, CBV, MTT and Tmax from a raw CT perfusion series by delay-insensitive deconvolution (TensorFlow ops).

Method: block-circulant SVD with oscillation-index adaptive truncation (oSVD; Wu et al. 2003, Magn Reson
Med 50:164-174). A circulant matrix is diagonalised by the DFT, so its singular values are the magnitudes of
the AIF's spectrum and truncated-SVD deconvolution is a filter in the frequency domain: exact, and fast for
every brain voxel at once. The AIF matrix uses the linear (Volterra) discretisation, AIF smoothed
[1, 4, 1] / 6 (Sourbron et al. 2004, Magn Reson Med 52:209-213), and series are zero-padded to 2T.
For each truncation threshold P (fraction of the largest singular value) the residue k(t) is computed; per
voxel the smallest P whose oscillation index OI = sum |k_j - 2 k_{j-1} + k_{j-2}| / (L max k) is below the
limit is kept (the largest P when none is), found by bisection over the sorted thresholds (OI falls as P
rises), i.e. log2(n) + 1 passes rather than n. `method="tikhonov"` uses the filter conj(A)/(|A|^2 + (P A_max)^2)
with the same selection. Maps (indicator dilution, Østergaard et al. 1996, Magn Reson Med 36:715-725):
    CBF = CBF_SCALE * max k  [mL/100g/min],  CBV = CBV_SCALE * ∫C / ∫AIF  [mL/100g],
    MTT = 60 * CBV / CBF  [s],  Tmax = argmax k  [s], parabolic sub-frame refinement.
"""

from __future__ import annotations

import math
from typing import Sequence

import tensorflow as tf

from strokenet_tf.perfusion import arterial, constants, masking

THRESHOLDS = (0.02, 0.05, 0.1, 0.15, 0.2, 0.3, 0.45, 0.6)
# OI limit for 1 s frames (the DSC-MRI toolbox default of Peruzzo/Castellaro). A residue's OI grows with the
# square of the sampling interval (second differences ~ k'' dt^2 over L = duration / dt samples), so the limit
# used is OI_LIMIT * (frame_interval_s / 1 s)^2.
OI_LIMIT = 0.035
OI_NONE = 1e3
# MTT where CBF is below this (mL/100g/min) is set to 0; MTT is clipped to the acquisition length.
MIN_CBF_FOR_MTT = 1.0
# Per-voxel CTP noise (~5-15 HU a frame) swamps grey-matter enhancement (~10-30 HU); vendors smooth in plane.
SMOOTHING_SIGMA_VOXELS = 1.0
# Normal grey matter (MTT, dispersion, delay in s) for the optional Tmax bias correction.
REFERENCE_RESIDUE = (4.0, 1.0, 1.0)


def _aif_spectrum(aif: tf.Tensor, dt: tf.Tensor, length: tf.Tensor) -> tf.Tensor:
    """DFT (rfft, zero-padded to `length`) of the first column of the circulant AIF matrix, times dt."""
    bins = tf.cast(tf.range(length // 2 + 1), tf.float32)
    omega = 2.0 * math.pi * bins / tf.cast(length, tf.float32)
    volterra = (4.0 + 2.0 * tf.cos(omega)) / 6.0
    spectrum = tf.signal.rfft(tf.pad(aif, [[0, length - tf.shape(aif)[0]]]))
    return spectrum * tf.cast(volterra * dt, tf.complex64)


def _filters(spectrum: tf.Tensor, thresholds: Sequence[float], method: str) -> list[tf.Tensor]:
    magnitude = tf.abs(spectrum)
    largest = tf.reduce_max(magnitude)
    safe = tf.where(magnitude > 0, spectrum, tf.ones_like(spectrum))
    filters = []
    for threshold in thresholds:
        if method == "osvd":
            keep = magnitude >= threshold * largest
            filters.append(tf.where(keep, 1.0 / safe, tf.zeros_like(spectrum)))
        else:
            damping = tf.cast(magnitude**2 + (threshold * largest) ** 2, tf.complex64)
            filters.append(tf.math.conj(spectrum) / damping)
    return filters


def _oscillation_index(residue: tf.Tensor, peak: tf.Tensor) -> tf.Tensor:
    """OI of residues [voxels, L] (Wu et al. 2003); OI_NONE where the peak is not positive (never passes)."""
    second = residue[:, 2:] - 2.0 * residue[:, 1:-1] + residue[:, :-2]
    total = tf.reduce_sum(tf.abs(second), axis=1)
    length = tf.cast(tf.shape(residue)[1], tf.float32)
    return tf.where(peak > 0, total / (length * tf.maximum(peak, 1e-30)), OI_NONE)


def _residue_features(residue: tf.Tensor, frames: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    """Peak, sub-frame argmax (frames; 0 for a peak in the wrapped half) and OI of residues [voxels, L]."""
    length = tf.shape(residue)[1]
    peak = tf.reduce_max(residue, axis=1)
    index = tf.cast(tf.argmax(residue, axis=1), tf.int32)
    before = tf.gather(residue, (index - 1) % length, batch_dims=1)
    after = tf.gather(residue, (index + 1) % length, batch_dims=1)
    curvature = before - 2.0 * peak + after
    offset = tf.where(curvature < 0, 0.5 * (before - after) / tf.minimum(curvature, -1e-12), 0.0)
    position = tf.cast(index, tf.float32) + tf.clip_by_value(offset, -0.5, 0.5)
    position = tf.where(index < frames, tf.maximum(position, 0.0), 0.0)
    return peak, position, _oscillation_index(residue, peak)


def _tmax_bias(spectrum: tf.Tensor, filters: tf.Tensor, frames: tf.Tensor, dt: tf.Tensor) -> tf.Tensor:
    """Tmax excess (s) of each filter on a reference residue through this AIF: [thresholds].

    Truncation acts as a symmetric low-pass on an asymmetric residue (fast rise, slow fall), so the peak
    of the regularised residue comes late, the more so the larger the threshold. The reference is the
    normal-tissue residue of `REFERENCE_RESIDUE` (MTT, dispersion, delay in s), whose true Tmax is known.
    """
    mtt, beta, delay = REFERENCE_RESIDUE
    times = tf.cast(tf.range(2 * frames), tf.float32) * dt - delay
    later = tf.maximum(times, 0.0)
    residue = tf.where(times >= 0, mtt / (mtt - beta) * (tf.exp(-later / mtt) - tf.exp(-later / beta)), 0.0)
    estimated = tf.signal.irfft(spectrum[None] * tf.signal.rfft(residue)[None] * filters, fft_length=[2 * frames])
    _, position, _ = _residue_features(estimated, frames)
    return position * dt - (delay + math.log(mtt / beta) * mtt * beta / (mtt - beta))


def deconvolve(curves: tf.Tensor, aif: tf.Tensor, frame_interval_s=1.0, thresholds: Sequence[float] = THRESHOLDS,
               oi_limit: float = OI_LIMIT, method: str = "osvd", tmax_bias_correction: bool = False) -> dict:
    """Residue peak, Tmax, OI and chosen threshold of each voxel by adaptive block-circulant deconvolution.

    Args:
        curves: float32 [voxels, time] tissue enhancement in HU.
        aif: float32 [time] arterial enhancement in HU.
        frame_interval_s: time between frames in s.
        thresholds: truncation thresholds P (fractions of the largest singular value), any order.
        oi_limit: oscillation-index limit for 1 s frames (scaled by frame_interval_s^2).
        method: "osvd" (truncated SVD) or "tikhonov".
        tmax_bias_correction: subtract from each voxel's Tmax the excess its threshold gives a reference
            normal-tissue residue through the same AIF (`_tmax_bias`; clipped at 0). Off by default: Tmax is
            then the argmax of the residue, as vendors report it.

    Returns:
        dict of [voxels] float32: residue_peak (1/s, = (RHO/K_H) CBF/6000), tmax_s, oscillation_index,
        threshold.
    """
    if method not in ("osvd", "tikhonov"):
        raise ValueError(f"deconvolve: method must be 'osvd' or 'tikhonov', got {method!r}")
    if not thresholds or min(thresholds) <= 0:
        raise ValueError(f"deconvolve: thresholds must be a non-empty list of values > 0, got {thresholds!r}")
    curves = tf.convert_to_tensor(curves, tf.float32)
    dt = tf.cast(frame_interval_s, tf.float32)
    frames = tf.shape(curves)[1]
    length = 2 * frames
    spectrum = _aif_spectrum(tf.convert_to_tensor(aif, tf.float32), dt, length)
    ordered = sorted(thresholds)
    filters = tf.stack(_filters(spectrum, ordered, method))
    # Zero-padded explicitly (rfft's own padding refuses an empty batch in eager mode).
    curve_spectrum = tf.signal.rfft(tf.pad(curves, [[0, 0], [0, length - frames]]))

    def residues(choice):
        return tf.signal.irfft(curve_spectrum * tf.gather(filters, choice), fft_length=length[None])

    # Bisection for the smallest threshold whose OI passes (OI falls as the threshold rises): log2(n) + 1
    # passes over the voxels instead of n; the largest threshold is kept when none passes.
    low = tf.zeros([tf.shape(curves)[0]], tf.int32)
    high = tf.fill(tf.shape(low), len(ordered) - 1)
    for _ in range(math.ceil(math.log2(len(ordered)))):
        middle = (low + high) // 2
        residue = residues(middle)
        passed = _oscillation_index(residue, tf.reduce_max(residue, axis=1)) < oi_limit * dt * dt
        high = tf.where(passed, middle, high)
        low = tf.where(passed, low, tf.minimum(middle + 1, high))
    peak, position, oscillation = _residue_features(residues(high), frames)
    threshold = tf.gather(tf.constant(ordered, tf.float32), high)
    tmax = position * dt
    if tmax_bias_correction:
        tmax = tf.maximum(tmax - tf.gather(_tmax_bias(spectrum, filters, frames, dt), high), 0.0)
    return {"residue_peak": peak, "tmax_s": tmax, "oscillation_index": oscillation, "threshold": threshold}


def perfusion_maps(series_hu, frame_interval_s=1.0, brain_mask=None, *, thresholds: Sequence[float] = THRESHOLDS,
                   oi_limit: float = OI_LIMIT, method: str = "osvd", aif_count: int = 20, vof_count: int = 10,
                   min_aif_peak_hu: float = 30.0, smoothing_sigma_voxels: float = SMOOTHING_SIGMA_VOXELS,
                   fallback_aif_hu=None, tmax_bias_correction: bool = False) -> dict:
    """Perfusion maps of a raw 4D CT perfusion series.

    Steps: baseline and brain mask (masking.py), enhancement above baseline, AIF and VOF (arterial.py),
    in-plane Gaussian smoothing of the tissue curves within the mask (the AIF and VOF are chosen unsmoothed),
    adaptive deconvolution of the brain voxels only (gathered, then scattered back).

    Args:
        series_hu: float32 [depth, height, width, time] in HU (any sizes, time >= MIN_FRAMES advised).
        frame_interval_s: time between frames in s (scalar, may be a tensor).
        brain_mask: optional bool [depth, height, width]; default from the baseline image.
        thresholds, oi_limit, method, tmax_bias_correction: see `deconvolve`.
        aif_count, vof_count, min_aif_peak_hu: see `arterial.select_input_functions`.
        smoothing_sigma_voxels: in-plane Gaussian sigma for the tissue curves (0: none).
        fallback_aif_hu: optional float32 [time] arterial input (HU above baseline) used when the automatic
            selection finds none, as an operator picks one by hand; "aif_manual" then says so.

    Returns:
        dict: cbf [mL/100g/min], cbv [mL/100g], mtt [s], tmax [s] (float32 [depth, height, width], 0 outside
        the brain mask and everywhere when no AIF is found), brain_mask (bool), aif_mask / vof_mask (bool,
        voxels used), oscillation_index and threshold ([depth, height, width]), aif / vof / aif_raw
        (float32 [time], HU), aif_voxels / vof_voxels / baseline_frames (int32), aif_found / vof_found
        (bool), aif_scale (float32).
    """
    series = tf.convert_to_tensor(series_hu, tf.float32)
    dt = tf.cast(frame_interval_s, tf.float32)
    baseline, baseline_count, mask = masking.baseline_and_mask(series, brain_mask)
    indices = tf.where(mask)
    curves = tf.gather_nd(series, indices) - tf.gather_nd(baseline, indices)[:, None]
    voxels = tf.cast(tf.shape(curves)[0], tf.float32)
    tissue_peak = tf.reduce_max(tf.reduce_sum(curves, axis=0) / tf.maximum(voxels, 1.0))
    chosen = arterial.select_input_functions(curves, dt, tissue_peak, min_aif_peak_hu, aif_count, vof_count)
    found = chosen["aif_found"]
    aif = tf.where(found, chosen["aif"], tf.zeros_like(chosen["aif"]))
    manual = tf.constant(False)
    if fallback_aif_hu is not None:
        manual = tf.logical_not(found)
        aif = tf.where(found, aif, tf.convert_to_tensor(fallback_aif_hu, tf.float32))
        found = tf.constant(True)
    aif_used = tf.where(found, aif, tf.one_hot(0, tf.shape(aif)[0]))
    if smoothing_sigma_voxels > 0:
        enhancement = masking.gaussian_in_plane(series - baseline[..., None], mask, smoothing_sigma_voxels)
        curves = tf.gather_nd(enhancement, indices)
    result = deconvolve(curves, aif_used, dt, thresholds, oi_limit, method, tmax_bias_correction)
    cbf = tf.maximum(constants.CBF_SCALE * result["residue_peak"], 0.0)
    cbv = constants.CBV_SCALE * tf.reduce_sum(curves, axis=1) / tf.maximum(tf.reduce_sum(aif_used), 1e-6)
    cbv = tf.maximum(cbv, 0.0)
    duration = tf.cast(tf.shape(series)[3], tf.float32) * dt
    mtt = tf.where(cbf >= MIN_CBF_FOR_MTT, tf.clip_by_value(60.0 * cbv / tf.maximum(cbf, 1e-6), 0.0, duration), 0.0)
    shape = tf.shape(mask, out_type=tf.int64)

    def scatter(values):
        values = tf.where(found, values, tf.zeros_like(values))
        return tf.scatter_nd(indices, values, shape)

    def voxel_mask(chosen_indices):
        picked = tf.gather(indices, chosen_indices)
        return tf.scatter_nd(picked, tf.ones(tf.shape(chosen_indices), tf.int32), shape) > 0

    return {
        "cbf": scatter(cbf), "cbv": scatter(cbv), "mtt": scatter(mtt), "tmax": scatter(result["tmax_s"]),
        "oscillation_index": scatter(result["oscillation_index"]), "threshold": scatter(result["threshold"]),
        "brain_mask": mask, "aif_mask": voxel_mask(chosen["aif_indices"]),
        "vof_mask": voxel_mask(chosen["vof_indices"]),
        "aif": aif, "aif_raw": chosen["aif_raw"], "vof": chosen["vof"], "aif_scale": chosen["aif_scale"],
        "aif_voxels": tf.shape(chosen["aif_indices"])[0], "vof_voxels": tf.shape(chosen["vof_indices"])[0],
        "aif_found": chosen["aif_found"], "aif_manual": manual, "vof_found": chosen["vof_found"],
        "baseline_frames": baseline_count,
    }
