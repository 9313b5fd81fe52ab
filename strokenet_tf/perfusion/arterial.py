"""Automatic arterial input (AIF) and venous output (VOF) function selection, in TensorFlow ops only.

Follows the criteria of automatic AIF detection (Mouridsen et al. 2006, Magn Reson Med 55:524-531;
Peruzzo et al. 2011, Comput Methods Programs Biomed 104:e148-e157): arterial curves arrive early, peak high
and are narrow; venous curves arrive late and have the largest area (superior sagittal sinus). The venous
area corrects the arterial partial-volume loss (Knutsson et al. 2010, Magn Reson Imaging 28:1-13).

Chosen here (curves lightly smoothed [1, 2, 1] / 4 in time for the features):
  - rejected as arterial: peak below `min_peak_hu`, peak in the last 4 frames or a tail (mean of the last 3
    frames) above half the peak (truncated), mean |second difference| above 0.3 x peak (noisy), a dip
    below -0.2 x peak.
  - AIF: of the `5 * count` highest peaks, the `count` best scores peak / (FWHM_s * (arrival_s + dt)),
    keeping those within half of the best score and peaking at most one frame after the best-scoring
    voxel; the AIF is their mean curve. Found when at least one voxel is kept, its peak is
    >= `min_peak_hu` and >= 3 x the whole-brain mean peak.
  - VOF: non-noisy voxels peaking >= 2 frames after the AIF, with peak >= `min_peak_hu` and at most
    30% of their peak when the AIF peaks (not artery and vein in one voxel); the `count` largest areas within
    half of the largest. The AIF is scaled by area(VOF) / area(AIF), clipped to [1, 3]
    (partial volume only lowers the arterial area; a truncated VOF must not shrink it).
"""

from __future__ import annotations

import tensorflow as tf

ROUGHNESS_MAX = 0.3
DIP_MIN = -0.2
TAIL_MAX = 0.5
TISSUE_PEAK_RATIO = 3.0
PV_SCALE_RANGE = (1.0, 3.0)
VENOUS_AT_ARTERIAL_PEAK = 0.3


def smooth_in_time(curves: tf.Tensor) -> tf.Tensor:
    """[1, 2, 1] / 4 smoothing of curves [voxels, time], edge frames repeated."""
    padded = tf.concat([curves[:, :1], curves, curves[:, -1:]], axis=1)
    return 0.25 * padded[:, :-2] + 0.5 * padded[:, 1:-1] + 0.25 * padded[:, 2:]


def curve_features(curves: tf.Tensor, frame_interval_s) -> dict:
    """Peak, time to peak, FWHM, arrival, area and quality flags of enhancement curves [voxels, time]."""
    smooth = smooth_in_time(curves)
    frames = tf.shape(curves)[1]
    dt = tf.cast(frame_interval_s, tf.float32)
    peak = tf.reduce_max(smooth, axis=1)
    safe_peak = tf.maximum(peak, 1e-6)
    ttp = tf.cast(tf.argmax(smooth, axis=1), tf.int32)
    fwhm_s = tf.maximum(tf.reduce_sum(tf.cast(smooth > 0.5 * peak[:, None], tf.float32), axis=1), 1.0) * dt
    arrival_s = tf.cast(tf.argmax(tf.cast(smooth > 0.2 * peak[:, None], tf.int32), axis=1), tf.float32) * dt
    second = curves[:, 2:] - 2.0 * curves[:, 1:-1] + curves[:, :-2]
    roughness = tf.reduce_mean(tf.abs(second), axis=1) / safe_peak
    tail = tf.reduce_mean(smooth[:, -3:], axis=1) / safe_peak
    dip = tf.reduce_min(smooth, axis=1) / safe_peak
    return {
        "peak": peak, "ttp": ttp, "fwhm_s": fwhm_s, "arrival_s": arrival_s,
        "area": tf.reduce_sum(smooth, axis=1) * dt,
        "clean": tf.logical_and(roughness < ROUGHNESS_MAX, dip > DIP_MIN),
        "complete": tf.logical_and(ttp <= frames - 5, tail < TAIL_MAX),
    }


def _best(score: tf.Tensor, eligible: tf.Tensor, count: int, fraction: float = 0.5) -> tf.Tensor:
    """Indices of at most `count` eligible entries with the highest score, within `fraction` of the best."""
    masked = tf.where(eligible, score, tf.fill(tf.shape(score), -1.0))
    k = tf.minimum(count, tf.shape(score)[0])
    values, indices = tf.math.top_k(masked, k=k)
    best = tf.reduce_max(tf.concat([values, [-1.0]], axis=0))
    keep = tf.logical_and(values > 0, values >= fraction * best)
    return tf.boolean_mask(indices, keep)


def _mean_curve(curves: tf.Tensor, indices: tf.Tensor) -> tf.Tensor:
    chosen = tf.gather(curves, indices)
    return tf.reduce_sum(chosen, axis=0) / tf.maximum(tf.cast(tf.shape(indices)[0], tf.float32), 1.0)


def select_input_functions(curves: tf.Tensor, frame_interval_s, tissue_peak_hu, min_peak_hu: float = 30.0,
                           count: int = 20, venous_count: int = 10) -> dict:
    """Chooses the arterial and venous voxels among candidate enhancement curves.

    Args:
        curves: float32 [voxels, time] enhancement in HU above baseline (candidate voxels, e.g. the brain).
        frame_interval_s: time between frames in s (scalar).
        tissue_peak_hu: peak of the whole-brain mean enhancement curve (scalar, HU).
        min_peak_hu: lowest acceptable arterial and venous peak enhancement, HU.
        count: most arterial voxels averaged.
        venous_count: most venous voxels averaged.

    Returns:
        dict with aif [time] (partial-volume corrected when a VOF is found), aif_raw [time], vof [time],
        aif_indices / vof_indices (int32 indices into `curves`), aif_found / vof_found (bool scalars),
        aif_scale (scalar applied to aif_raw).
    """
    curves = tf.convert_to_tensor(curves, tf.float32)
    features = curve_features(curves, frame_interval_s)
    peak = features["peak"]
    strong = peak >= min_peak_hu
    arterial = tf.logical_and(tf.logical_and(strong, features["clean"]), features["complete"])
    dt = tf.cast(frame_interval_s, tf.float32)
    high = tf.zeros_like(arterial)
    top_peaks = _best(peak, arterial, 5 * count, fraction=0.0)
    high = tf.tensor_scatter_nd_update(high, top_peaks[:, None], tf.ones_like(top_peaks, tf.bool))
    score = peak / (features["fwhm_s"] * (features["arrival_s"] + dt))
    eligible = tf.logical_and(arterial, high)
    # Arteries peak together: the VOF can outscore partial-volume arteries but peaks later.
    # (padded with one entry so that an empty brain has a leader too)
    padded = tf.concat([tf.where(eligible, score, tf.fill(tf.shape(score), -1.0)), [-1.0]], axis=0)
    leader_ttp = tf.gather(tf.concat([features["ttp"], [0]], axis=0), tf.argmax(padded, output_type=tf.int32))
    eligible = tf.logical_and(eligible, features["ttp"] <= leader_ttp + 1)
    aif_indices = _best(score, eligible, count)
    aif_raw = _mean_curve(curves, aif_indices)
    aif_peak = tf.reduce_max(smooth_in_time(aif_raw[None])[0])
    aif_found = tf.logical_and(tf.shape(aif_indices)[0] > 0, aif_peak >= min_peak_hu)
    aif_found = tf.logical_and(aif_found, aif_peak >= TISSUE_PEAK_RATIO * tf.cast(tissue_peak_hu, tf.float32))

    aif_ttp = tf.cast(tf.argmax(smooth_in_time(aif_raw[None])[0]), tf.int32)
    venous = tf.logical_and(tf.logical_and(strong, features["clean"]), features["ttp"] >= aif_ttp + 2)
    # A vein is still low when the arteries peak; a voxel holding artery and vein (area of both) is not.
    at_arterial_peak = tf.gather(smooth_in_time(curves), tf.fill([tf.shape(curves)[0]], aif_ttp), batch_dims=1)
    venous = tf.logical_and(venous, at_arterial_peak <= VENOUS_AT_ARTERIAL_PEAK * peak)
    vof_indices = _best(features["area"], venous, venous_count)
    vof = _mean_curve(curves, vof_indices)
    vof_found = tf.logical_and(aif_found, tf.shape(vof_indices)[0] > 0)
    aif_area = tf.reduce_sum(aif_raw) * dt
    vof_area = tf.reduce_sum(vof) * dt
    scale = tf.clip_by_value(vof_area / tf.maximum(aif_area, 1e-6), *PV_SCALE_RANGE)
    scale = tf.where(vof_found, scale, 1.0)
    return {
        "aif": aif_raw * scale, "aif_raw": aif_raw, "vof": vof, "aif_indices": aif_indices,
        "vof_indices": vof_indices, "aif_found": aif_found, "vof_found": vof_found, "aif_scale": scale,
    }
