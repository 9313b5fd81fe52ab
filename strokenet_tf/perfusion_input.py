"""Cases whose perfusion maps are computed from the raw CT_4DPWI series (`perfusion.deconvolution`).

Used by predict when a case has CT + CT_4DPWI but not the maps the model reads (or always, with
--maps_from_4d), and by the export's `from_4d` serving signature: both build the network input with
`image_from_4d`, so they agree. Computed maps are in physical units (CBF mL/100g/min, CBV mL/100g, MTT and
Tmax s); the network's per-case percentile normalisation absorbs the difference from vendor scales.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Sequence

import numpy as np
import tensorflow as tf

from strokenet_tf.data import isles, time_series
from strokenet_tf.perfusion import deconvolution

MAP_KEYS = {isles.CBF: "cbf", isles.CBV: "cbv", isles.MTT: "mtt", isles.TMAX: "tmax"}
"""Channel name -> key of `deconvolution.perfusion_maps`."""


class NoArterialInputError(isles.IslesFormatError):
    """The series shows no arterial input; the message is one line naming the case and file."""


def supports(channels: Sequence[str]) -> bool:
    """Whether an image with these channels can be built from CT + CT_4DPWI alone."""
    return all(c in MAP_KEYS or c in (isles.CT, isles.PWI) for c in channels)


def image_from_4d(series_hu: tf.Tensor, ct_hu: tf.Tensor, frame_interval_s: tf.Tensor,
                  channels: Sequence[str]) -> tuple[tf.Tensor, tf.Tensor]:
    """Network input from a raw series (TensorFlow ops; traceable with unknown shapes).

    Args:
        series_hu: float32 [depth, height, width, time] in HU.
        ct_hu: float32 [depth, height, width] non-contrast CT in HU (used for a CT channel).
        frame_interval_s: float32 scalar, s.
        channels: the model's channel names (CT, CT_4DPWI (max over time, as the reader summarises it), maps).

    Returns:
        (image float32 [depth, height, width, channels], aif_found bool scalar).
    """
    maps = deconvolution.perfusion_maps(series_hu, frame_interval_s)
    planes = []
    for channel in channels:
        if channel == isles.CT:
            planes.append(ct_hu)
        elif channel == isles.PWI:
            planes.append(tf.reduce_max(series_hu, axis=-1))
        else:
            planes.append(maps[MAP_KEYS[channel]])
    return tf.stack(planes, axis=-1), maps["aif_found"]


_SERIES_SPEC = [tf.TensorSpec([None, None, None, None], tf.float32), tf.TensorSpec([None, None, None], tf.float32),
                tf.TensorSpec([], tf.float32)]
_GRAPHS: dict[tuple[str, ...], Callable] = {}


def _graph(channels: tuple[str, ...]) -> Callable:
    if channels not in _GRAPHS:
        _GRAPHS[channels] = tf.function(lambda s, c, dt: image_from_4d(s, c, dt, channels),
                                        input_signature=_SERIES_SPEC)
    return _GRAPHS[channels]


def wants_maps_from_4d(case_input, channels: Sequence[str]) -> bool:
    """True when the case must (flag `maps_from_4d` on the input) or can only (maps missing, CT_4DPWI there)
    get its maps from the series."""
    if not any(c in MAP_KEYS for c in channels):
        return False
    if getattr(case_input, "maps_from_4d", False):
        return True
    files = _files(case_input, channels, quiet=True)
    return isles.PWI in files and any(c in MAP_KEYS and c not in files for c in channels)


def _files(case_input, channels: Sequence[str], quiet: bool = False) -> dict:
    if case_input.files is not None:
        return dict(case_input.files)
    try:
        return dict(isles.find_modality_files(case_input.case_dir, modalities=() if quiet else (isles.PWI,)))
    except isles.IslesFormatError:
        if quiet:
            return {}
        raise


def read_input_from_4d(case_input, channels: Sequence[str],
                       warn: Callable[[str], None] = lambda message: None) -> isles.Case:
    """The case with its perfusion maps computed from CT_4DPWI (other channels and the label read as usual).

    Raises:
        isles.IslesFormatError: one line naming the case and file (missing CT or CT_4DPWI, a bad series,
            grids that differ); `NoArterialInputError` when the series shows no arterial input.
    """
    channels = tuple(channels)
    case_id = case_input.case_id
    if not supports(channels):
        raise isles.IslesFormatError(f"{case_id}: perfusion maps from CT_4DPWI need a model reading only "
                                     f"{isles.CT}, {isles.PWI} and the maps; it reads {', '.join(channels)}")
    files = _files(case_input, channels)
    needed = [m for m in (isles.PWI,) + ((isles.CT,) if isles.CT in channels else ()) if m not in files]
    if needed:
        raise isles.IslesFormatError(f"{case_id}: missing modality {', '.join(needed)} to compute perfusion maps "
                                     f"from the raw series; found {', '.join(sorted(files)) or 'nothing'}")
    pwi_path = files[isles.PWI]
    series = time_series.read_time_series(pwi_path, case_id)
    plain = [c for c in channels if c not in MAP_KEYS] or [isles.PWI]
    label_file = files.get(isles.LABEL) if case_input.files is None else None
    try:
        base = isles.read_modality_files({c: files[c] for c in plain}, case_id, label_file)
    except isles.LabelFormatError as error:
        warn(f"{error}; predicting without it (no outline in the montage)")
        base = isles.read_modality_files({c: files[c] for c in plain}, case_id)
    if base.nifti_shape != series.volume.shape or np.max(np.abs(base.affine - series.volume.affine)) > 1e-3:
        raise isles.IslesFormatError(f"{case_id}: {isles.PWI} file {pwi_path} is not on the voxel grid of "
                                     f"{plain[0]} file {files[plain[0]]}")
    ct = base.image[..., base.channels.index(isles.CT)] if isles.CT in base.channels else series.series[..., 0]
    image, found = _graph(channels)(tf.constant(series.series), tf.constant(ct, tf.float32),
                                    tf.constant(series.frame_interval_s, tf.float32))
    if not bool(found):
        raise NoArterialInputError(f"{case_id}: {isles.PWI} file {pwi_path}: no arterial input found (no early, "
                                   "high, narrow enhancement curve in the brain); cannot compute perfusion maps")
    sources = {c: base.source_files.get(c, f"{pwi_path} (deconvolved)") for c in channels}
    if isles.LABEL in base.source_files:
        sources[isles.LABEL] = base.source_files[isles.LABEL]
    return dataclasses.replace(base, image=np.ascontiguousarray(image.numpy(), np.float32), channels=channels,
                               source_files=sources)


def for_inputs(inputs: Sequence, maps_from_4d: bool) -> list:
    """`inputs` (prediction.CaseInput) with `maps_from_4d` set on each when asked."""
    return [dataclasses.replace(i, maps_from_4d=True) for i in inputs] if maps_from_4d else list(inputs)
