"""One NIfTI file read and checked: the low-level half of the ISLES reader (`isles` reads whole cases).

`read_volume` loads one map or label as float32 in physical units and refuses, with one line naming the case
and file, everything that is not a plausible CT perfusion volume: unreadable, truncated or gzip-damaged files,
non-real voxel types, wrong dimensionality, empty or absurdly large shapes, absurd voxel sizes and
non-finite or singular affines. NaN/Inf voxels are replaced by 0 and counted. `check_same_grid` refuses maps
of one case that do not share a voxel grid. The error types live here so both modules raise the same ones;
`isles` re-exports them.
"""

from __future__ import annotations

import dataclasses
import gzip
import pathlib
from typing import Any

import nibabel as nib
import numpy as np
from absl import logging
from nibabel.openers import ImageOpener


class IslesFormatError(ValueError):
    """Bad input in an ISLES-style case; the message is one line naming the case and file."""


class LabelFormatError(IslesFormatError):
    """The case's ground truth (OT) file is bad; its maps may still be usable (e.g. to predict)."""


# Largest difference between the affines of one case's files that still counts as the same grid.
AFFINE_TOLERANCE_MM = 1e-3
# Voxel sizes outside this range (mm) come from a broken header, not a CT scanner; volumes in mL would be nonsense.
VOXEL_SIZE_RANGE_MM = (0.01, 100.0)
# More voxels than this in one file (4 GiB as float32) is a damaged header; refused before anything is allocated.
MAX_VOXELS = 2**30


def one_line_error(error: BaseException, path: pathlib.Path | None = None) -> str:
    """`Type: message` of an exception on one line of at most 200 characters, naming `path` by its file name."""
    text = " ".join(str(error).split())
    if path is not None:  # the message already names the file; don't repeat its folder
        text = text.replace(str(path), path.name)
    text = f"{type(error).__name__}: {text}" if text else type(error).__name__
    return text if len(text) <= 200 else text[:197] + "..."


@dataclasses.dataclass(frozen=True)
class Volume:
    """One NIfTI file read by `read_volume`: its voxels, grid and where it came from."""

    data: np.ndarray  # float32 (x, y, z)
    shape: tuple[int, ...]  # spatial shape (x, y, z)
    affine: np.ndarray
    zooms: tuple[float, float, float]
    header: Any
    path: pathlib.Path
    modality: str
    nonfinite: int


def check_gzip_stream(path: pathlib.Path) -> None:
    """Reads a .gz file to its end, so that gzip checks its CRC32 and length trailer.

    nibabel stops reading once it has the voxels it needs, so damage that deflate cannot notice by itself
    (incompressible data travels in stored blocks, copied byte for byte) would otherwise come back as voxels.

    Raises:
        gzip.BadGzipFile, EOFError, zlib.error: the stream is damaged or cut short.
    """
    with gzip.open(path, "rb") as stream:
        while stream.read(1 << 22):
            pass


def read_volume(path, case_id: str, modality: str, expected_ndim: int, pwi_summary: str = "max") -> Volume:
    """Reads one file as float32 (x, y, z) in physical units (scl_slope/scl_inter applied).

    Args:
        path: the .nii or .nii.gz file.
        case_id, modality: name the file in error messages ("case_3: CT_CBF file ...").
        expected_ndim: 3 for a map or label; 4 for a time series, summarised over time by `pwi_summary`
            ("max" or "mean"; "series" keeps the 4D data and leaves NaN/Inf in place for
            `time_series.read_time_series` to judge). Trailing singleton axes beyond it are dropped.

    Raises:
        IslesFormatError: one line naming the case and file (see `isles` for what is refused).
    """
    path = pathlib.Path(path)
    where = f"{case_id}: {modality} file {path}"
    if not path.is_file():
        raise IslesFormatError(f"{where} does not exist")
    try:
        with nib.imageglobals.LoggingOutputSuppressor():  # nibabel logs header problems; the error below says it
            image = nib.load(str(path))
    except Exception as error:  # nibabel raises many types for damaged headers.
        raise IslesFormatError(f"{where} is not a readable NIfTI file ({one_line_error(error, path)})") from error
    if not isinstance(image, nib.Nifti1Pair):
        raise IslesFormatError(f"{where} is a {type(image).__name__}; expected a NIfTI-1 or NIfTI-2 image")

    full_shape = tuple(int(n) for n in image.shape)
    if any(n < 1 for n in full_shape):
        raise IslesFormatError(f"{where} has shape {full_shape}, with an empty dimension; expected at least one voxel "
                               "along each axis")
    if np.prod(full_shape, dtype=np.float64) > MAX_VOXELS:
        raise IslesFormatError(f"{where} has shape {full_shape} in its header ({np.prod(full_shape, dtype=np.float64):.3g} "
                               f"voxels); more than {MAX_VOXELS} voxels is not a CT perfusion map")
    ndim = len(full_shape)
    while ndim > expected_ndim and full_shape[ndim - 1] == 1:
        ndim -= 1
    if ndim < 3 or ndim > expected_ndim:
        expected = "a 4D time series (x, y, z, t)" if expected_ndim == 4 else "a 3D volume (x, y, z)"
        raise IslesFormatError(f"{where} has shape {full_shape} ({ndim}D); expected {expected}")

    # nibabel silently replaces zero or negative pixdim by its fix-ups on load: check the stored values.
    try:
        with ImageOpener(str(path)) as handle:
            stored = type(image.header).from_fileobj(handle, check=False)["pixdim"][1:4]
    except Exception as error:
        raise IslesFormatError(f"{where} has an unreadable header ({one_line_error(error, path)})") from error
    if not all(np.isfinite(z) and z > 0 for z in stored):
        shown = tuple(round(float(z), 6) for z in stored)
        raise IslesFormatError(f"{where} has voxel size {shown} mm in its header; expected positive finite sizes")
    low, high = VOXEL_SIZE_RANGE_MM
    if not all(low <= z <= high for z in stored):
        shown = tuple(float(f"{float(z):.6g}") for z in stored)
        raise IslesFormatError(f"{where} has voxel size {shown} mm in its header; expected sizes between {low:g} "
                               f"and {high:g} mm")
    zooms = tuple(float(z) for z in image.header.get_zooms()[:3])
    affine = np.asarray(image.affine, dtype=np.float64)
    if not np.all(np.isfinite(affine)):
        raise IslesFormatError(f"{where} has a non-finite affine (NaN or Inf in qform/sform)")
    if abs(np.linalg.det(affine[:3, :3])) < 1e-9:
        raise IslesFormatError(f"{where} has a singular affine; expected a voxel-to-world transform")
    affine_mm = np.linalg.norm(affine[:3, :3], axis=0)
    if not np.allclose(affine_mm, zooms, rtol=1e-3, atol=1e-4):
        logging.warning(
            "%s: voxel size in the header %s mm differs from the affine's %s mm; spacing uses the header",
            where, tuple(round(z, 4) for z in zooms), tuple(round(float(z), 4) for z in affine_mm),
        )

    try:
        proxy = image.dataobj
        raw = np.asanyarray(proxy.get_unscaled()).reshape(full_shape[:ndim])
        slope, inter = float(proxy.slope), float(proxy.inter)
        if path.name.lower().endswith(".gz"):
            check_gzip_stream(path)
    except Exception as error:  # truncated files: OSError, EOFError, zlib.error, ValueError, ...
        raise IslesFormatError(f"{where} cannot be read, corrupt or truncated ({one_line_error(error, path)})") from error
    if raw.dtype.kind not in "biuf":
        raise IslesFormatError(f"{where} stores {raw.dtype}; expected integer or real voxels")

    if ndim == 4 and pwi_summary != "series":
        if pwi_summary == "mean":
            raw = raw.mean(axis=3, dtype=np.float64)
        else:  # "max" of the scaled series; a negative slope turns the raw minimum into the maximum.
            raw = raw.max(axis=3) if slope >= 0 else raw.min(axis=3)
    with np.errstate(over="ignore", invalid="ignore"):
        data = raw.astype(np.float32)
        if slope != 1.0 or inter != 0.0:
            data = (raw.astype(np.float64) * slope + inter).astype(np.float32)
    bad = ~np.isfinite(data)
    nonfinite = int(np.count_nonzero(bad))
    if nonfinite and pwi_summary != "series":
        data[bad] = 0.0
        logging.warning("%s: replaced %d non-finite (NaN/Inf) voxels by 0 in %s file %s", case_id, nonfinite, modality, path)
    return Volume(
        data=data,
        shape=data.shape,
        affine=affine,
        zooms=zooms,
        header=image.header.copy(),
        path=path,
        modality=modality,
        nonfinite=nonfinite,
    )


def check_same_grid(reference: Volume, volume: Volume, case_id: str) -> None:
    where = f"{case_id}: {volume.modality} file {volume.path}"
    if volume.shape != reference.shape:
        raise IslesFormatError(
            f"{where} has shape {volume.shape}; expected {reference.shape} like {reference.modality} file {reference.path}"
        )
    difference = float(np.max(np.abs(volume.affine - reference.affine)))
    if difference > AFFINE_TOLERANCE_MM:
        raise IslesFormatError(
            f"{where} has an affine that differs by up to {difference:.3g} mm from {reference.modality} file "
            f"{reference.path}; expected the same voxel grid"
        )
