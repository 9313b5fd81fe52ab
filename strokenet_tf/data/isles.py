"""Reads the ISLES 2018 challenge layout into typed case records.

Layout (ISLES 2018, SMIR export):
    ROOT/{TRAINING,TESTING}/case_N/SMIR.Brain.XX.O.<MOD>.<ID>/SMIR.Brain.XX.O.<MOD>.<ID>.nii
with MOD in CT, CT_4DPWI, CT_CBF, CT_CBV, CT_MTT, CT_Tmax, OT (OT only in TRAINING).

Axis convention used everywhere in this package: NIfTI arrays are indexed (i, j, k) = (x, y, z);
the network sees [depth, height, width, channels] = (k, j, i, c). `nifti_to_network` and
`network_to_nifti` are the only place that conversion is written.
"""

from __future__ import annotations

import dataclasses
from typing import Mapping

import numpy as np

CT = "CT"
CBF = "CT_CBF"
CBV = "CT_CBV"
MTT = "CT_MTT"
TMAX = "CT_Tmax"
PWI = "CT_4DPWI"
LABEL = "OT"

# Default network channel order.
DEFAULT_CHANNELS: tuple[str, ...] = (CT, CBF, CBV, MTT, TMAX)
PERFUSION_MAPS: tuple[str, ...] = (CBF, CBV, MTT, TMAX)
ALL_MODALITIES: tuple[str, ...] = (CT, PWI, CBF, CBV, MTT, TMAX, LABEL)


class IslesFormatError(ValueError):
    """Bad input in an ISLES-style case; the message is one line naming the case and file."""


@dataclasses.dataclass(frozen=True)
class Case:
    """One ISLES case, in network axis order.

    Attributes:
        case_id: folder name, e.g. "case_12".
        image: float32 [depth, height, width, channels], values as stored (physical units or vendor scale),
            non-finite voxels replaced by 0.
        channels: modality name of each channel, e.g. DEFAULT_CHANNELS.
        label: uint8 [depth, height, width] in {0, 1}, or None when the case has no OT.
        affine: float64 [4, 4] voxel-to-world matrix of the source NIfTI files.
        spacing_mm: voxel size (depth, height, width) in mm, read from the header.
        source_files: modality name -> path of the file it was read from.
        nonfinite_voxels: modality name -> number of NaN/Inf voxels that were replaced.
    """

    case_id: str
    image: np.ndarray
    channels: tuple[str, ...]
    label: np.ndarray | None
    affine: np.ndarray
    spacing_mm: tuple[float, float, float]
    source_files: Mapping[str, str]
    nonfinite_voxels: Mapping[str, int] = dataclasses.field(default_factory=dict)

    @property
    def nifti_shape(self) -> tuple[int, int, int]:
        """Shape (x, y, z) of the source NIfTI volumes."""
        depth, height, width = self.image.shape[:3]
        return (width, height, depth)


def nifti_to_network(volume: np.ndarray) -> np.ndarray:
    """(x, y, z[, ...]) NIfTI voxel order -> (depth, height, width[, ...]) network order."""
    axes = (2, 1, 0) + tuple(range(3, volume.ndim))
    return np.transpose(volume, axes)


def network_to_nifti(volume: np.ndarray) -> np.ndarray:
    """(depth, height, width[, ...]) network order -> (x, y, z[, ...]) NIfTI voxel order."""
    return nifti_to_network(volume)


def spacing_to_network(zooms_xyz) -> tuple[float, float, float]:
    """NIfTI header zooms (x, y, z) -> spacing (depth, height, width) in mm."""
    sx, sy, sz = (float(z) for z in tuple(zooms_xyz)[:3])
    return (sz, sy, sx)
