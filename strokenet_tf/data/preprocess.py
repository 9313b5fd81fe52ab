"""Preprocessing shared by training, prediction and export: brain mask, normalisation, padding, spacing.

Every function here is made of TensorFlow ops, so the same code runs eagerly on numpy arrays (training
data preparation), inside `tf.data` and inside the exported SavedModel (serving signature with dynamic
depth, height and width). The constants that define the network input live in this module only
(`PERCENTILES`, `CLIP_RANGE`, ...) and `normalization_constants()` returns them for export to record.

Normalisation (per case and per channel, inside the brain mask):

    x' = clip((x - p_low) / (p_high - p_low), CLIP_RANGE),   0 outside the brain mask,

with p_low, p_high the 1st and 99th percentiles of the channel's brain voxels. Why this scheme:
- ISLES 2018 stores CBF and CBV in an undocumented vendor scale (uint16, up to ~6300 and ~740), so no fixed
  physiological range applies; a ratio of percentiles cancels any unknown linear factor (x*10, x*100 give
  the same input up to float rounding).
- Subtracting p_low also cancels an unknown offset. For the perfusion maps p_low is typically ~0 (the mask holds
  CSF and core voxels with near-zero flow), so the map's ratio semantics are kept; for CT it makes the input
  the same whether the file holds HU or HU + 1024 (raw scanner values without the intercept applied).
- Percentiles, not min/max or mean/std, so that the few extreme voxels (vessels in CBF/CBV, bone at the
  mask edge in CT) neither set the scale nor vanish: they are clipped to `CLIP_RANGE` (bounded input).
It is close to nnU-Net's CT scheme (Isensee et al. 2021: clip to the 0.5/99.5 foreground percentiles, then
z-score with dataset-wide statistics) but per case, because here the scale itself differs per case; a
percentile min-max rather than a z-score puts the background (0) at the low end of the tissue values.

Brain mask: the ISLES 2018 convention, voxels where the sum of the perfusion maps is > 0.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Sequence

import numpy as np
import tensorflow as tf

from strokenet_tf.data import isles

# --- Normalisation constants: the one place they are defined (export records `normalization_constants()`).
# Lower and upper percentile (in %) of the brain voxels that map to 0 and 1.
PERCENTILES: tuple[float, float] = (1.0, 99.0)
# Normalised values are clipped to this range (bounded network input; extremes keep their side).
CLIP_RANGE: tuple[float, float] = (-0.5, 1.5)
# Percentiles are estimated on at most this many brain voxels per channel (an even stride through them).
MAX_PERCENTILE_SAMPLES: int = 131072
# Fallback brain mask when no perfusion map is among the channels: CT above this value (HU; excludes air).
CT_MASK_THRESHOLD_HU: float = -100.0

INTERPOLATIONS = ("bilinear", "nearest", "area", "bicubic")


def normalization_constants() -> dict:
    """The constants that define the network input, for export metadata and config records."""
    return {
        "scheme": "per-case per-channel percentile min-max inside the brain mask",
        "percentiles": list(PERCENTILES),
        "clip_range": list(CLIP_RANGE),
        "max_percentile_samples": MAX_PERCENTILE_SAMPLES,
        "brain_mask": "sum of perfusion maps > 0; else CT > ct_mask_threshold_hu; else any channel != 0",
        "ct_mask_threshold_hu": CT_MASK_THRESHOLD_HU,
        "perfusion_maps": list(isles.PERFUSION_MAPS),
    }


@dataclasses.dataclass(frozen=True)
class PreparedCase:
    """A case ready for the network.

    Attributes:
        case_id: e.g. "case_12".
        image: float32 [depth, height, width, channels], normalised by `normalize_image`.
        label: uint8 [depth, height, width] in {0, 1}, or None (TESTING cases).
        spacing_mm: voxel size (depth, height, width) in mm.
    """

    case_id: str
    image: np.ndarray
    label: np.ndarray | None
    spacing_mm: tuple[float, float, float]


def _check_rank(x: tf.Tensor, where: str) -> int:
    rank = x.shape.rank
    if rank not in (4, 5):
        raise ValueError(f"{where}: expected [depth, height, width, channels] or a batch of them, got shape {x.shape}")
    return rank


def _check_channels(image: tf.Tensor, channels: Sequence[str], where: str) -> tuple[str, ...]:
    channels = tuple(channels)
    count = image.shape[-1]
    if count is not None and count != len(channels):
        raise ValueError(f"{where}: image has {count} channel(s) but channels names {len(channels)}: {channels}")
    return channels


def _finite(image: tf.Tensor) -> tf.Tensor:
    return tf.where(tf.math.is_finite(image), image, tf.zeros_like(image))


def brain_mask(image, channels: Sequence[str]) -> tf.Tensor:
    """Brain voxels: the summed perfusion maps are > 0 (ISLES 2018 convention).

    Without a perfusion map among `channels`, falls back to CT > `CT_MASK_THRESHOLD_HU`, and without CT
    to "any channel is non-zero". Non-finite values count as 0.

    Args:
        image: [depth, height, width, channels] or [batch, depth, height, width, channels].
        channels: modality name of each channel (`isles` constants).

    Returns:
        bool [depth, height, width] (or [batch, depth, height, width]).
    """
    image = _finite(tf.convert_to_tensor(image, tf.float32))
    _check_rank(image, "brain_mask")
    return _brain_mask_of_finite(image, _check_channels(image, channels, "brain_mask"))


def _brain_mask_of_finite(image: tf.Tensor, channels: tuple[str, ...]) -> tf.Tensor:
    perfusion = [i for i, name in enumerate(channels) if name in isles.PERFUSION_MAPS]
    if perfusion:
        # Adding channel slices is ~3x faster on CPU than gathering them along the last axis first.
        return tf.add_n([image[..., i] for i in perfusion]) > 0.0
    if isles.CT in channels:
        return image[..., channels.index(isles.CT)] > CT_MASK_THRESHOLD_HU
    return tf.reduce_any(tf.not_equal(image, 0.0), axis=-1)


def masked_percentiles(values: tf.Tensor, mask: tf.Tensor, percentiles: Sequence[float]) -> tf.Tensor:
    """Per-channel percentiles of the masked voxels (linear interpolation, as `np.percentile`).

    Uses an even stride through the masked voxels when there are more than `MAX_PERCENTILE_SAMPLES`.
    With an empty mask every percentile is 0.

    Args:
        values: float32 [depth, height, width, channels].
        mask: bool [depth, height, width].
        percentiles: in [0, 100].

    Returns:
        float32 [len(percentiles), channels].
    """
    selected = tf.boolean_mask(values, mask)  # [n, channels]
    count = tf.shape(selected, out_type=tf.int32)[0]
    stride = tf.maximum(1, (count + MAX_PERCENTILE_SAMPLES - 1) // MAX_PERCENTILE_SAMPLES)
    columns = tf.transpose(selected[::stride])  # [channels, n]
    count = tf.shape(columns, out_type=tf.int32)[1]
    last_index = tf.maximum(count - 1, 0)
    positions = tf.constant([float(p) / 100.0 for p in percentiles], tf.float32) * tf.cast(last_index, tf.float32)
    lower = tf.floor(positions)
    weight = positions - lower
    lower_index = tf.cast(lower, tf.int32)
    upper_index = tf.minimum(lower_index + 1, last_index)
    # The order statistics at lower_index and upper_index, without sorting every voxel: the k smallest values
    # (for percentiles <= 50) and the k largest (above 50) come from top_k, which is several times faster
    # than a full sort for the 1st/99th percentiles and gives the same values.
    is_low = tf.constant([float(p) <= 50.0 for p in percentiles])
    low_k = tf.minimum(count, tf.reduce_max(tf.where(is_low, upper_index + 1, 0)))
    high_k = tf.minimum(count, tf.reduce_max(tf.where(is_low, 0, count - lower_index)))
    # A trailing zero column makes an empty mask read 0 without a branch; it is never indexed when n > 0.
    smallest = tf.pad(-tf.math.top_k(-columns, k=low_k, sorted=True).values, [[0, 0], [0, 1]])  # ascending
    largest = tf.pad(tf.math.top_k(columns, k=high_k, sorted=True).values, [[0, 0], [0, 1]])  # descending

    def order_statistic(index):  # [len(percentiles)] ascending ranks -> [channels, len(percentiles)]
        from_low = tf.gather(smallest, tf.where(is_low, index, 0), axis=-1)
        from_high = tf.gather(largest, tf.where(is_low, 0, tf.maximum(count - 1 - index, 0)), axis=-1)
        return tf.where(is_low, from_low, from_high)

    below, above = order_statistic(lower_index), order_statistic(upper_index)
    return tf.transpose(below + (above - below) * weight)


def _normalize_case(image: tf.Tensor, channels: tuple[str, ...]) -> tf.Tensor:
    mask = _brain_mask_of_finite(image, channels)  # `normalize_image` has replaced non-finite values
    minimum, low, high, maximum = tf.unstack(
        masked_percentiles(image, mask, (0.0,) + tuple(PERCENTILES) + (100.0,)), axis=0
    )  # [channels] each
    extent = high - low
    # A channel that is constant on 98% of the brain has no percentile scale: use its full range instead,
    # and 1 when it is constant everywhere (its output is then 0).
    full_extent = maximum - minimum
    extent = tf.where(extent > 0.0, extent, tf.where(full_extent > 0.0, full_extent, tf.ones_like(extent)))
    normalised = tf.clip_by_value((image - low) / extent, CLIP_RANGE[0], CLIP_RANGE[1])
    return tf.where(mask[..., tf.newaxis], normalised, tf.zeros_like(normalised))


def normalize_image(image, channels: Sequence[str]) -> tf.Tensor:
    """Per-case, per-channel robust scaling of raw maps to the network input (see the module docstring).

    Invariant to any positive linear map a*x + b of a channel (up to float rounding): CBF in a vendor scale,
    CT in HU or HU + 1024 give the same input. NaN/Inf become 0 first; voxels outside `brain_mask` are 0;
    an empty mask gives all zeros.

    Args:
        image: [depth, height, width, channels] or [batch, depth, height, width, channels], any real dtype;
            depth/height/width may be dynamic (traceable in `tf.function` and SavedModel signatures).
        channels: modality name of each channel, e.g. `isles.DEFAULT_CHANNELS`.

    Returns:
        float32, same shape, values in `CLIP_RANGE`.
    """
    image = _finite(tf.cast(tf.convert_to_tensor(image), tf.float32))
    rank = _check_rank(image, "normalize_image")
    channels = _check_channels(image, channels, "normalize_image")
    if rank == 4:
        return _normalize_case(image, channels)
    return tf.map_fn(
        lambda case: _normalize_case(case, channels),
        image,
        fn_output_signature=tf.TensorSpec(image.shape[1:], tf.float32),
    )


def _spatial_axes(x: tf.Tensor, where: str) -> int:
    """Index of the depth axis of a rank-4 [d, h, w, c] or rank-5 [b, d, h, w, c] tensor."""
    return _check_rank(x, where) - 4


def pad_to_multiple(x, multiples: Sequence[int]) -> tuple[tf.Tensor, tf.Tensor]:
    """Zero-pads the spatial axes at their END up to the next multiple of `multiples`.

    The one owner of padding (pipeline, training, validation, predict and export use it); `crop_to_shape`
    is its exact inverse.

    Args:
        x: [depth, height, width, channels] or [batch, depth, height, width, channels]; dynamic sizes allowed.
        multiples: (depth, height, width) multiples, e.g. `ModelConfig.required_multiples`.

    Returns:
        (padded, original_spatial_shape): padded has each spatial size rounded up to its multiple;
        original_spatial_shape is int32 [3] (depth, height, width) for `crop_to_shape`.
    """
    x = tf.convert_to_tensor(x)
    first = _spatial_axes(x, "pad_to_multiple")
    multiples = tuple(int(m) for m in multiples)
    if len(multiples) != 3 or min(multiples) < 1:
        raise ValueError(
            f"pad_to_multiple: multiples must be three positive ints (depth, height, width), got {multiples}"
        )
    spatial = tf.shape(x, out_type=tf.int32)[first:first + 3]
    multiple = tf.constant(multiples, tf.int32)
    after = (multiple - spatial % multiple) % multiple
    paddings = tf.concat([tf.zeros([first, 2], tf.int32), tf.stack([tf.zeros_like(after), after], axis=1),
                          tf.zeros([1, 2], tf.int32)], axis=0)
    padded = tf.pad(x, paddings)
    static = x.shape.as_list()
    for axis, m in enumerate(multiples):
        size = static[first + axis]
        if size is not None:
            static[first + axis] = -(-size // m) * m
    padded.set_shape(static)
    return padded, spatial


def crop_to_shape(x, spatial_shape) -> tf.Tensor:
    """Inverse of `pad_to_multiple`: keeps the first depth x height x width voxels.

    Args:
        x: [depth, height, width, channels] or [batch, depth, height, width, channels].
        spatial_shape: (depth, height, width), Python ints or an int tensor [3].
    """
    x = tf.convert_to_tensor(x)
    first = _spatial_axes(x, "crop_to_shape")
    size = tf.cast(tf.convert_to_tensor(spatial_shape), tf.int32)
    sizes = tf.concat([tf.fill([first], -1), size, [-1]], axis=0)
    cropped = tf.slice(x, tf.zeros([x.shape.rank], tf.int32), sizes)
    if isinstance(spatial_shape, (tuple, list)) or (isinstance(spatial_shape, np.ndarray)):
        static = x.shape.as_list()
        static[first:first + 3] = [int(s) for s in spatial_shape]
        cropped.set_shape(static)
    return cropped


HEAD_BOX_MARGIN: int = 8
"""In-plane voxels kept around the brain by `head_box` (context for the network's group statistics)."""


def _axis_span(occupied: tf.Tensor, size: tf.Tensor, multiple: int, margin: int) -> tuple[tf.Tensor, tf.Tensor]:
    """(start, length) along one axis: the occupied run plus `margin`, grown to a multiple of `multiple`
    (the whole axis when that does not fit or nothing is occupied)."""
    where = tf.cast(tf.where(occupied)[:, 0], tf.int32)
    empty = tf.equal(tf.size(where), 0)
    first = tf.maximum(tf.reduce_min(tf.concat([where, [size]], 0)) - margin, 0)
    last = tf.minimum(tf.reduce_max(tf.concat([where, [0]], 0)) + 1 + margin, size)
    length = -(-(last - first) // multiple) * multiple
    whole = empty | (length >= size)
    start = tf.where(whole, 0, tf.clip_by_value(first - (length - (last - first)) // 2, 0, size - length))
    return start, tf.where(whole, size, length)


def head_box(normalised, multiples: Sequence[int], margin: int = HEAD_BOX_MARGIN) -> tf.Tensor:
    """The in-plane box of a normalised batch that holds every brain voxel (non-zero in any channel, of any case
    and slice) plus `margin`, its sides grown to the (height, width) `multiples`: int32 [4] (row, column, height,
    width). The whole plane when the box would not be smaller or the batch has no brain.

    Cropping to it before the network and `uncrop_box` after (what nnU-Net calls cropping to the non-zero
    region) skips the empty air around the head; 256 x 256 CTP slabs are ~40-55 % air.
    """
    normalised = tf.convert_to_tensor(normalised)
    if normalised.shape.rank != 5:
        raise ValueError(f"head_box: expected [batch, depth, height, width, channels], got rank {normalised.shape.rank}")
    occupied = tf.not_equal(normalised, 0.0)
    rows = tf.reduce_any(occupied, axis=[0, 1, 3, 4])
    columns = tf.reduce_any(occupied, axis=[0, 1, 2, 4])
    shape = tf.shape(normalised, out_type=tf.int32)
    row, height = _axis_span(rows, shape[2], int(multiples[1]), margin)
    column, width = _axis_span(columns, shape[3], int(multiples[2]), margin)
    return tf.stack([row, column, height, width])


def crop_box(x: tf.Tensor, box: tf.Tensor) -> tf.Tensor:
    """[b, d, h, w, ...] -> the in-plane `box` of `head_box`."""
    return x[:, :, box[0]:box[0] + box[2], box[1]:box[1] + box[3]]


def uncrop_box(x: tf.Tensor, box: tf.Tensor, height_width: tf.Tensor) -> tf.Tensor:
    """Inverse of `crop_box` for [b, d, h, w] maps: zeros outside the box, back to `height_width`."""
    paddings = [[0, 0], [0, 0], [box[0], height_width[0] - box[0] - box[2]],
                [box[1], height_width[1] - box[1] - box[3]]]
    return tf.pad(x, paddings)


def within_head_box(normalised, multiples: Sequence[int], probabilities_of):
    """`probabilities_of` run on the `head_box` crop of a normalised batch [b, d, h, w, c], its [b, d, h', w']
    result (or list of them) put back on the whole plane with 0 outside the box: the one owner of the crop
    that inference and training validation share."""
    normalised = tf.convert_to_tensor(normalised)
    box = head_box(normalised, multiples)
    plane = tf.shape(normalised)[2:4]
    result = probabilities_of(crop_box(normalised, box))
    if isinstance(result, (list, tuple)):
        return [uncrop_box(r, box, plane) for r in result]
    return uncrop_box(result, box, plane)


def _resize(x, height_width, method: str) -> tf.Tensor:
    if method not in INTERPOLATIONS:
        raise ValueError(f"in-plane resampling: method must be one of {', '.join(INTERPOLATIONS)}, got {method!r}")
    x = tf.convert_to_tensor(x)
    if x.shape.rank == 3:  # a label [depth, height, width]
        return _resize(x[..., tf.newaxis], height_width, method)[..., 0]
    if x.shape.rank != 4:
        raise ValueError(f"in-plane resampling: expected [depth, height, width(, channels)], got shape {x.shape}")
    # Depth is the batch of tf.image.resize: only height and width change.
    resized = tf.image.resize(x, height_width, method=method)
    if method != "nearest" and x.dtype.is_floating:
        resized = tf.cast(resized, x.dtype)
    return resized


def resample_inplane(x, spacing_mm: Sequence[float], target_inplane_mm: float, method: str = "bilinear") -> tf.Tensor:
    """Resamples height and width to `target_inplane_mm` voxels; depth is left alone. Optional, off by default.

    The network handles anisotropic ISLES voxels (~1 x 1 x 5 mm) itself (in-plane strides first), so training
    and prediction do not resample; this is for experiments that want a common in-plane spacing. Undo it with
    `resize_inplane_to_shape(y, original (height, width), method)`.

    Args:
        x: [depth, height, width, channels] image or [depth, height, width] label.
        spacing_mm: (depth, height, width) voxel size in mm.
        target_inplane_mm: wanted height/width voxel size in mm.
        method: "bilinear" for images, "nearest" for labels (keeps them binary and their dtype).

    Returns:
        [depth, round(height * dy / target), round(width * dx / target)(, channels)].
    """
    if target_inplane_mm <= 0:
        raise ValueError(f"resample_inplane: target_inplane_mm must be > 0, got {target_inplane_mm}")
    x = tf.convert_to_tensor(x)
    shape = tf.cast(tf.shape(x)[1:3], tf.float64)
    factors = tf.constant([float(spacing_mm[1]), float(spacing_mm[2])], tf.float64) / float(target_inplane_mm)
    height_width = tf.maximum(tf.cast(tf.round(shape * factors), tf.int32), 1)
    return _resize(x, height_width, method)


def resize_inplane_to_shape(x, height_width, method: str = "bilinear") -> tf.Tensor:
    """Resizes height and width to exactly `height_width` (the inverse of `resample_inplane`)."""
    return _resize(x, tf.cast(tf.convert_to_tensor(height_width), tf.int32), method)


def resampled_spacing_mm(
    spacing_mm: Sequence[float], shape: Sequence[int], new_shape: Sequence[int]
) -> tuple[float, ...]:
    """Voxel size after resizing `shape` (depth, height, width) to `new_shape`: the extent in mm is kept."""
    return tuple(float(s) * int(n) / int(m) for s, n, m in zip(spacing_mm, shape, new_shape))


def select_channels(case: isles.Case, channels: Sequence[str] | None) -> np.ndarray:
    """The case's image with `channels` in that order (all of them when None)."""
    if channels is None or tuple(channels) == tuple(case.channels):
        return case.image
    missing = [name for name in channels if name not in case.channels]
    if missing:
        raise ValueError(
            f"{case.case_id}: channels {', '.join(missing)} were not read; the case has {', '.join(case.channels)}"
        )
    return case.image[..., [case.channels.index(name) for name in channels]]


def prepare_case(case: isles.Case, channels: Sequence[str] | None = None) -> PreparedCase:
    """Normalises one case for the network (numpy in, numpy out; the TF ops run eagerly).

    Args:
        case: from `isles.read_case` / `isles.load_cases`.
        channels: channel names in network order; None keeps `case.channels`.

    Returns:
        PreparedCase with a float32 normalised image and a uint8 label (or None).
    """
    channels = tuple(case.channels if channels is None else channels)
    image = select_channels(case, channels)
    normalised = normalize_image(image, channels).numpy()
    label = None if case.label is None else np.ascontiguousarray(case.label, dtype=np.uint8)
    if label is not None and label.shape != image.shape[:3]:
        raise ValueError(f"{case.case_id}: label shape {label.shape} differs from image shape {image.shape[:3]}")
    return PreparedCase(
        case_id=case.case_id,
        image=np.ascontiguousarray(normalised, dtype=np.float32),
        label=label,
        spacing_mm=tuple(float(s) for s in case.spacing_mm),
    )


def padded_size(size: int, multiple: int) -> int:
    """`size` rounded up to a multiple of `multiple` (what `pad_to_multiple` gives one axis)."""
    return int(math.ceil(size / multiple) * multiple)
