"""Reads a CT_4DPWI file as a whole time series, with its frame interval, for perfusion maps from raw 4D CTP.

`nifti_volume.read_volume` checks the file (readable, real voxels, sane geometry); this module adds what a
deconvolution needs, each refused with one line naming the case and file: a time axis, at least
`constants.MIN_FRAMES` frames, and finite values in every frame. The frame interval is pixdim[4] in the
header's time unit (xyzt_units: s, ms or us; "unknown" is read as s). A pixdim[4] of 0 (or negative, NaN)
is read as `constants.DEFAULT_FRAME_INTERVAL_S` with a one-line warning (ISLES 2018 frames are 1 s apart).
"""

from __future__ import annotations

import dataclasses
import pathlib

import numpy as np
from absl import logging
from nibabel.openers import ImageOpener

from strokenet_tf.data.nifti_volume import IslesFormatError, Volume, read_volume
from strokenet_tf.perfusion import constants

PWI = "CT_4DPWI"
_SECONDS_PER_UNIT = {"sec": 1.0, "msec": 1e-3, "usec": 1e-6, "unknown": 1.0}


@dataclasses.dataclass(frozen=True)
class TimeSeries:
    """A CT_4DPWI series in network axis order.

    Attributes:
        series: float32 [depth, height, width, time] in HU.
        frame_interval_s: time between frames in s.
        volume: the file's `Volume` (its `data` is the 4D (x, y, z, t) array, `shape` the spatial shape), for
            grid checks against the case's other files.
    """

    series: np.ndarray
    frame_interval_s: float
    volume: Volume


def frame_interval_s(header, path: pathlib.Path, where: str) -> float:
    """pixdim[4] in s (time unit from xyzt_units); 0, negative or NaN -> DEFAULT_FRAME_INTERVAL_S, warned."""
    try:
        with ImageOpener(str(path)) as handle:
            stored = float(type(header).from_fileobj(handle, check=False)["pixdim"][4])
    except Exception:  # read_volume already read this header; fall back to nibabel's view of it
        stored = float(header["pixdim"][4])
    unit = header.get_xyzt_units()[1]
    if not np.isfinite(stored) or stored <= 0:
        logging.warning("%s has no frame interval (pixdim[4] = %g); assuming %g s", where, stored,
                        constants.DEFAULT_FRAME_INTERVAL_S)
        return constants.DEFAULT_FRAME_INTERVAL_S
    if unit not in _SECONDS_PER_UNIT:
        logging.warning("%s has time unit %r in xyzt_units; reading pixdim[4] = %g as seconds", where, unit, stored)
        return stored
    return stored * _SECONDS_PER_UNIT[unit]


def read_time_series(path, case_id: str, modality: str = PWI) -> TimeSeries:
    """Reads and checks one 4D perfusion file.

    Args:
        path: the CT_4DPWI .nii or .nii.gz file.
        case_id, modality: name the file in error messages.

    Raises:
        IslesFormatError: one line naming the case and file: unreadable or damaged (see `read_volume`), no
            time axis, fewer than MIN_FRAMES frames, or NaN/Inf values in some frames.
    """
    path = pathlib.Path(path)
    where = f"{case_id}: {modality} file {path}"
    volume = read_volume(path, case_id, modality, 4, pwi_summary="series")
    data = volume.data
    if data.ndim != 4:
        raise IslesFormatError(f"{where} has shape {tuple(data.shape)} with no time axis; expected (x, y, z, t) "
                               f"with at least {constants.MIN_FRAMES} frames")
    frames = data.shape[3]
    if frames < constants.MIN_FRAMES:
        raise IslesFormatError(f"{where} has {frames} frames; expected at least {constants.MIN_FRAMES} (a baseline, "
                               "the bolus and its wash-out)")
    bad_frames = np.flatnonzero(~np.all(np.isfinite(data), axis=(0, 1, 2)))
    if bad_frames.size:
        raise IslesFormatError(f"{where} has NaN/Inf values in {bad_frames.size} of {frames} frames (first: frame "
                               f"{int(bad_frames[0])}); expected finite HU in every frame")
    interval = frame_interval_s(volume.header, path, where)
    series = np.ascontiguousarray(np.transpose(data, (2, 1, 0, 3)), dtype=np.float32)
    return TimeSeries(series=series, frame_interval_s=interval,
                      volume=dataclasses.replace(volume, shape=tuple(data.shape[:3])))
