"""Baseline, bolus arrival and brain mask of a raw CT perfusion series, in TensorFlow ops only.

The rules follow common CTP practice (e.g. Konstas et al. 2009, AJNR 30:662-668 and 885-892): the baseline is
the mean of the frames before the bolus reaches the brain; the brain is soft tissue inside the skull on the
baseline image. Chosen here:
  - bolus arrival: a curve arrives at the first frame exceeding `ARRIVAL_FRACTION` of its peak enhancement;
    the series' arrival is that of the mean curve of the earliest-peaking among the most enhancing
    `VESSEL_FRACTION` of the rough brain (the arteries); baseline = frames [0, arrival - 1), at least
    `constants.MIN_BASELINE_FRAMES`, at most half the series.
  - brain mask: baseline smoothed 3x3 in-plane within [`CSF_MAX_HU`, `BONE_MIN_HU`] (excludes CSF, bone and
    air) and inside the skull: bone (> `BONE_MIN_HU`) seen in at least 3 of the 4 in-plane directions
    (slices without bone count as inside).
All tensors are [depth, height, width(, time)] with every size unknown until run time.
"""

from __future__ import annotations

import tensorflow as tf

from strokenet_tf.perfusion import constants

CSF_MAX_HU = 15.0
BONE_MIN_HU = 100.0
ARRIVAL_FRACTION = 0.1
# Share of the rough brain whose mean curve dates the arterial arrival (the most enhancing voxels).
VESSEL_FRACTION = 0.01


def smooth_in_plane(image: tf.Tensor) -> tf.Tensor:
    """3x3 in-plane box mean of a [depth, height, width] image (edges average the voxels that exist)."""
    pooled = tf.nn.avg_pool2d(image[..., None], ksize=3, strides=1, padding="SAME")
    return pooled[..., 0]


def inside_skull(bone: tf.Tensor) -> tf.Tensor:
    """Voxels with bone in at least 3 of the 4 in-plane directions; slices without bone are all inside.

    Args:
        bone: bool [depth, height, width].

    Returns:
        bool [depth, height, width].
    """
    bone_f = tf.cast(bone, tf.float32)
    seen = [
        tf.math.cumsum(bone_f, axis=axis, reverse=reverse) > 0 for axis in (1, 2) for reverse in (False, True)
    ]
    count = tf.add_n([tf.cast(s, tf.int32) for s in seen])
    slice_has_bone = tf.reduce_any(bone, axis=[1, 2], keepdims=True)
    return tf.logical_or(count >= 3, tf.logical_not(slice_has_bone))


def tissue_mask(image_hu: tf.Tensor) -> tf.Tensor:
    """Brain soft tissue on a non-enhanced image: smoothed HU in [CSF_MAX_HU, BONE_MIN_HU] inside the skull.

    Args:
        image_hu: float32 [depth, height, width] in HU.

    Returns:
        bool [depth, height, width].
    """
    smoothed = smooth_in_plane(image_hu)
    soft = tf.logical_and(smoothed >= CSF_MAX_HU, smoothed <= BONE_MIN_HU)
    return tf.logical_and(soft, inside_skull(image_hu > BONE_MIN_HU))


def bolus_arrival(curves: tf.Tensor) -> tf.Tensor:
    """Arrival frame of curves [voxels, time] (int32 [voxels]): the first frame whose enhancement above the
    mean of the first MIN_BASELINE_FRAMES frames exceeds ARRIVAL_FRACTION of the peak enhancement."""
    first = tf.reduce_mean(curves[:, : constants.MIN_BASELINE_FRAMES], axis=1, keepdims=True)
    enhancement = curves - first
    above = enhancement > ARRIVAL_FRACTION * tf.reduce_max(enhancement, axis=1, keepdims=True)
    return tf.cast(tf.argmax(tf.cast(above, tf.int32), axis=1), tf.int32)


def baseline_frames(mean_curve: tf.Tensor) -> tf.Tensor:
    """Number of pre-bolus frames (int32 scalar) for a curve [time] arriving at `bolus_arrival`: the
    baseline ends one frame before the arrival, keeps at least MIN_BASELINE_FRAMES and at most half the series.
    """
    return _baseline_count(bolus_arrival(mean_curve[None])[0], tf.shape(mean_curve)[0])


def _baseline_count(arrival: tf.Tensor, frames: tf.Tensor) -> tf.Tensor:
    most = tf.maximum(frames // 2, constants.MIN_BASELINE_FRAMES)
    return tf.clip_by_value(arrival - 1, constants.MIN_BASELINE_FRAMES, most)


def arterial_arrival(series_hu: tf.Tensor, mask: tf.Tensor) -> tf.Tensor:
    """Arrival frame of the earliest large vessels (int32 scalar). Among the most enhancing voxels of `mask`
    (VESSEL_FRACTION of them, at least 20) the arteries peak first: the voxels peaking no later than one frame
    after the 2nd percentile of their peak times are averaged, and that low-noise curve's `bolus_arrival` is
    returned. Veins and tissue, as bright but later and more numerous, do not date the baseline; single noisy
    voxels do not either."""
    curves = tf.boolean_mask(series_hu, mask)
    enhancement = tf.reduce_max(curves, axis=1) - tf.reduce_mean(curves[:, : constants.MIN_BASELINE_FRAMES], axis=1)
    count = tf.shape(curves)[0]
    k = tf.minimum(tf.maximum(tf.cast(tf.cast(count, tf.float32) * VESSEL_FRACTION, tf.int32), 20), count)
    _, top = tf.math.top_k(enhancement, k=k)
    vessels = tf.gather(curves, top)
    peak_frames = tf.cast(tf.argmax(vessels, axis=1), tf.int32)
    early = tf.gather(tf.concat([tf.sort(peak_frames), [0]], axis=0), k // 50)
    arteries = tf.boolean_mask(vessels, peak_frames <= early + 1)
    mean = tf.reduce_sum(arteries, axis=0) / tf.maximum(tf.cast(tf.shape(arteries)[0], tf.float32), 1.0)
    return bolus_arrival(mean[None])[0]


def baseline_and_mask(series_hu: tf.Tensor, brain_mask: tf.Tensor | None = None):
    """Baseline image, number of baseline frames and brain mask of a series [depth, height, width, time].

    The baseline ends before the arterial arrival (`arterial_arrival`): a baseline that ran into the arterial
    upslope would be subtracted from every frame and cut the AIF's area (hence raise CBV and CBF).

    Args:
        series_hu: float32 [depth, height, width, time] in HU.
        brain_mask: optional bool [depth, height, width]; when given it is used as is.

    Returns:
        (baseline_hu float32 [depth, height, width], baseline frame count int32 scalar,
         brain_mask bool [depth, height, width]).
    """
    first = tf.reduce_mean(series_hu[..., : constants.MIN_BASELINE_FRAMES], axis=-1)
    rough = tissue_mask(first) if brain_mask is None else tf.cast(brain_mask, tf.bool)
    count = _baseline_count(arterial_arrival(series_hu, rough), tf.shape(series_hu)[3])
    baseline = tf.reduce_mean(series_hu[..., :count], axis=-1)
    mask = tissue_mask(baseline) if brain_mask is None else tf.cast(brain_mask, tf.bool)
    return baseline, count, mask


def gaussian_in_plane(series: tf.Tensor, mask: tf.Tensor, sigma_voxels: float) -> tf.Tensor:
    """In-plane Gaussian smoothing of a series [depth, height, width, time] within `mask` (normalised
    convolution: voxels outside the mask neither contribute nor change). sigma_voxels <= 0 returns it as is.
    """
    if sigma_voxels <= 0:
        return series
    radius = max(1, int(round(2.5 * sigma_voxels)))
    taps = tf.exp(-0.5 * (tf.range(-radius, radius + 1, dtype=tf.float32) / sigma_voxels) ** 2)
    taps /= tf.reduce_sum(taps)
    weight = tf.cast(mask, tf.float32)[..., None]
    stacked = tf.concat([series * weight, weight], axis=-1)
    # Depthwise (per-frame) separable convolution: channels = frames + 1, any number of them.
    channels = tf.shape(stacked)[3]
    rows = tf.tile(tf.reshape(taps, [-1, 1, 1, 1]), [1, 1, channels, 1])
    columns = tf.tile(tf.reshape(taps, [1, -1, 1, 1]), [1, 1, channels, 1])
    smoothed = tf.nn.depthwise_conv2d(stacked, rows, [1, 1, 1, 1], "SAME")
    smoothed = tf.nn.depthwise_conv2d(smoothed, columns, [1, 1, 1, 1], "SAME")
    values, total = smoothed[..., :-1], smoothed[..., -1:]
    return tf.where(mask[..., None], values / tf.maximum(total, 1e-6), series)
