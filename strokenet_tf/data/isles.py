"""Reads the ISLES 2018 challenge layout into typed case records.

Layout (ISLES 2018, SMIR export):
    ROOT/{TRAINING,TESTING}/case_N/SMIR.Brain.XX.O.<MOD>.<ID>/SMIR.Brain.XX.O.<MOD>.<ID>.nii
with MOD in CT, CT_4DPWI, CT_CBF, CT_CBV, CT_MTT, CT_Tmax, OT (OT only in TRAINING).

The reader matches files by the modality field of their names (ids are arbitrary; CT never matches
CT_CBF), accepts TRAINING/training, .nii and .nii.gz, and case folders holding the .nii files directly.
Values come back in physical units (scl_slope/scl_inter applied); NaN/Inf voxels become 0 and are
counted. Anything else unexpected raises `IslesFormatError` with one line naming the case and file.
`write_nifti_like` writes a prediction back in the exact geometry of the case's inputs. Each file is read and
checked by `nifti_volume.read_volume`; this module finds the files, assembles cases and checks their grids.

Odd inputs, as tested in tests/test_isles.py and tests/test_fuzz_inputs.py (the reader never writes to them):
- Accepted: any integer or real voxel type (int8 ... int64, uint8 ... uint16, float32, float64), read as
  float32 values; slabs of any depth including 1 slice (the network pads depth and crops back); trailing
  singleton axes ((x, y, z, 1, 1) reads as (x, y, z)); a 3D CT_4DPWI file (used as its own time summary).
- Replaced and counted: NaN/Inf voxels, and float64 values beyond the float32 range, become 0 (logged; a
  map that is all NaN reads as all 0).
- Labels: voxels > 0 are lesion; values other than 0 and 1 (2, 255, 0.5, -1) are logged with their count.
  A damaged OT file raises `LabelFormatError` (an `IslesFormatError`); `read_case(..., read_label=False)`
  leaves it alone, which is what predict does for such a case (with a warning).
- Refused with `IslesFormatError`: unreadable, empty, header-only, truncated or random-byte files; .nii.gz
  files whose gzip stream is damaged or fails its CRC32/length check (the whole stream is read to its end);
  complex, RGB, 1-bit or unknown voxel types; 2D files, 4D/5D files where 3D is expected (other than trailing
  singletons); empty (0) or negative dimensions and headers claiming more than `MAX_VOXELS` voxels (refused
  before anything is allocated); voxel sizes that are 0, negative, NaN, Inf or outside `VOXEL_SIZE_RANGE_MM`;
  non-finite or singular affines; maps of one case whose shapes or affines differ.

Axis convention used everywhere in this package: NIfTI arrays are indexed (i, j, k) = (x, y, z);
the network sees [depth, height, width, channels] = (k, j, i, c). `nifti_to_network` and
`network_to_nifti` are the only place that conversion is written.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
import re
from typing import Any, Mapping, Sequence

import nibabel as nib
import numpy as np
from absl import logging

from strokenet_tf.data import atomic
from strokenet_tf.data.nifti_volume import (  # noqa: F401  (re-exported: part of this module's API)
    AFFINE_TOLERANCE_MM,
    MAX_VOXELS,
    VOXEL_SIZE_RANGE_MM,
    IslesFormatError,
    LabelFormatError,
    Volume,
    check_same_grid,
    one_line_error,
    read_volume,
)

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
        header: copy of the NIfTI header of the first channel's file (geometry reference for
            `write_nifti_like`), or None for cases built by hand.
    """

    case_id: str
    image: np.ndarray
    channels: tuple[str, ...]
    label: np.ndarray | None
    affine: np.ndarray
    spacing_mm: tuple[float, float, float]
    source_files: Mapping[str, str]
    nonfinite_voxels: Mapping[str, int] = dataclasses.field(default_factory=dict)
    header: Any = dataclasses.field(default=None, compare=False, repr=False)

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


SPLITS: tuple[str, ...] = ("TRAINING", "TESTING")
PWI_SUMMARIES: tuple[str, ...] = ("max", "mean")
# "SMIR.Brain.XX.O.CT_CBF.345563" -> modality "CT_CBF", id "345563". Anchored at the end so that
# "CT" never matches "CT_CBF" and the prefix before ".O." may vary.
_MODALITY_PATTERN = re.compile(r"\.O\.(?P<mod>[A-Za-z0-9_]+)\.(?P<id>\d+)$")
_CASE_DIR_PATTERN = re.compile(r"^case_\d+$", re.IGNORECASE)
_CANONICAL_MODALITY = {name.lower(): name for name in ALL_MODALITIES}


def _strip_nifti_suffix(name: str) -> str:
    lower = name.lower()
    for suffix in (".nii.gz", ".nii"):
        if lower.endswith(suffix):
            return name[: -len(suffix)]
    return name


def _is_nifti_name(name: str) -> bool:
    return name.lower().endswith((".nii", ".nii.gz")) and not name.startswith(".")


def parse_modality_name(name: str) -> str | None:
    """Modality of an ISLES folder or file name, or None when the name does not follow the layout.

    "SMIR.Brain.XX.O.CT_CBF.345563.nii" -> "CT_CBF"; "SMIR.Brain.XX.O.CT.345562" -> "CT". Known
    modalities are matched case-insensitively and returned in their canonical spelling.
    """
    match = _MODALITY_PATTERN.search(_strip_nifti_suffix(name))
    if match is None:
        return None
    modality = match.group("mod")
    return _CANONICAL_MODALITY.get(modality.lower(), modality)


def _natural_key(path: pathlib.Path) -> tuple:
    return tuple(int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", path.name))


def _subdirs(folder: pathlib.Path) -> list[pathlib.Path]:
    return sorted((p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")), key=_natural_key)


def _looks_like_case(folder: pathlib.Path) -> bool:
    for entry in folder.iterdir():
        if entry.name.startswith(".") or parse_modality_name(entry.name) is None:
            continue
        if entry.is_dir() or _is_nifti_name(entry.name):
            return True
    return False


def _case_dirs_in(split_dir: pathlib.Path) -> list[pathlib.Path]:
    return [p for p in _subdirs(split_dir) if _CASE_DIR_PATTERN.match(p.name) or _looks_like_case(p)]


def find_case_dirs(root: str | os.PathLike, split: str | None = None) -> list[pathlib.Path]:
    """Case folders under an ISLES root, a split folder, or a single case folder.

    Args:
        root: dataset root (holding TRAINING/ and/or TESTING/, any letter case), one split folder, or
            one case folder.
        split: "TRAINING" or "TESTING" to keep one split of a dataset root; None keeps both.

    Returns:
        Case folders, TRAINING before TESTING, naturally sorted within a split (case_2 < case_10).
        Empty when nothing matches.
    """
    if split is not None:
        if split.upper() not in SPLITS:
            raise ValueError(f"split must be one of {', '.join(SPLITS)}; got {split!r}")
        split = split.upper()
    root = pathlib.Path(root)
    if not root.is_dir():
        raise IslesFormatError(f"data folder {root} does not exist or is not a folder")
    if _looks_like_case(root):
        return [root]
    split_dirs = [p for p in _subdirs(root) if p.name.upper() in SPLITS]
    if split_dirs:
        split_dirs.sort(key=lambda p: (SPLITS.index(p.name.upper()), p.name))
        if split is not None:
            split_dirs = [p for p in split_dirs if p.name.upper() == split]
        return [case for split_dir in split_dirs for case in _case_dirs_in(split_dir)]
    if split is not None and root.name.upper() in SPLITS and root.name.upper() != split:
        return []
    return _case_dirs_in(root)


def find_modality_files(
    case_dir: str | os.PathLike, modalities: Sequence[str] | None = None
) -> dict[str, pathlib.Path]:
    """Modality name -> NIfTI file of one case folder.

    Accepts the ISLES layout (one SMIR.Brain.XX.O.<MOD>.<ID>/ folder per modality holding one
    .nii or .nii.gz file) and case folders holding the named .nii files directly. Entries that do not
    follow the naming pattern are ignored.

    Args:
        case_dir: one case folder.
        modalities: the modalities the caller needs; problems with other modalities (an empty
            folder, two files) are not raised. None checks every modality present.

    Raises:
        IslesFormatError: the folder is missing or empty or holds no modality, or a needed modality's
            folder holds no NIfTI file or two of them.
    """
    case_dir = pathlib.Path(case_dir)
    case_id = case_dir.name
    if not case_dir.is_dir():
        raise IslesFormatError(f"{case_id}: case folder {case_dir} does not exist or is not a folder")
    entries = sorted((p for p in case_dir.iterdir() if not p.name.startswith(".")), key=lambda p: p.name)
    if not entries:
        raise IslesFormatError(
            f"{case_id}: case folder {case_dir} is empty; expected SMIR.Brain.XX.O.<MODALITY>.<ID> folders"
        )
    found: dict[str, list[pathlib.Path]] = {}
    problems: dict[str, str] = {}
    for entry in entries:
        modality = parse_modality_name(entry.name)
        if modality is None:
            continue
        if entry.is_dir():
            files = sorted(p for p in entry.iterdir() if p.is_file() and _is_nifti_name(p.name))
            if not files:
                problems.setdefault(modality, f"modality folder {entry} holds no .nii or .nii.gz file")
            for file in files:
                named = parse_modality_name(file.name)
                if named is not None and named != modality:
                    problems.setdefault(
                        modality, f"file {file} names modality {named} but lies in the folder for {modality}"
                    )
        elif _is_nifti_name(entry.name):
            files = [entry]
        else:
            continue
        found.setdefault(modality, []).extend(files)
    if not found:
        raise IslesFormatError(
            f"{case_id}: no ISLES modality files in {case_dir}; "
            "expected SMIR.Brain.XX.O.<MODALITY>.<ID>/SMIR.Brain.XX.O.<MODALITY>.<ID>.nii"
        )
    for modality, files in found.items():
        if len(files) > 1:
            problems.setdefault(modality, f"two files for modality {modality}: {files[0]} and {files[1]}; expected one")
    needed = set(found) if modalities is None else set(modalities)
    for modality, problem in problems.items():
        if modality in needed:
            raise IslesFormatError(f"{case_id}: {problem}")
    return {m: files[0] for m, files in found.items() if files and m not in problems}


def _warn_non_binary_label(volume: Volume, case_id: str) -> None:
    """Logs a label with values other than 0 and 1 (read as lesion where > 0)."""
    other = int(np.count_nonzero((volume.data != 0) & (volume.data != 1)))
    if other:
        values = np.unique(volume.data[(volume.data != 0) & (volume.data != 1)])
        shown = ", ".join(f"{v:g}" for v in values[:5]) + (", ..." if len(values) > 5 else "")
        logging.warning("%s: %s file %s has %d voxel(s) with values other than 0 and 1 (%s); voxels > 0 are read as "
                        "lesion", case_id, LABEL, volume.path, other, shown)


def read_modality_files(
    files: Mapping[str, str | os.PathLike],
    case_id: str,
    label_file: str | os.PathLike | None = None,
    pwi_summary: str = "max",
) -> Case:
    """Reads explicitly named per-modality files into a `Case`.

    Args:
        files: modality name -> NIfTI path; the mapping order is the channel order. "CT_4DPWI" is
            summarised over time into one 3D channel.
        case_id: name used in `Case.case_id` and in error messages.
        label_file: optional ground-truth NIfTI; voxels > 0 become 1.
        pwi_summary: "max" or "mean" over time for a CT_4DPWI channel.

    Returns:
        A `Case` with image float32 [depth, height, width, channels] in physical or stored units.

    Raises:
        IslesFormatError: unreadable file, wrong dimensionality, bad geometry, or files on different grids;
            `LabelFormatError` when only the label file is at fault.
    """
    if pwi_summary not in PWI_SUMMARIES:
        raise ValueError(f"pwi_summary must be one of {', '.join(PWI_SUMMARIES)}; got {pwi_summary!r}")
    if not files:
        raise ValueError(f"{case_id}: no modality files given")
    if LABEL in files:
        raise ValueError(f"{case_id}: {LABEL} is the label; pass it as label_file, not as a channel")
    volumes: list[Volume] = []
    for modality, path in files.items():
        volume = read_volume(path, case_id, modality, 4 if modality == PWI else 3, pwi_summary)
        if volumes:
            check_same_grid(volumes[0], volume, case_id)
        volumes.append(volume)
    reference = volumes[0]
    source_files = {v.modality: str(v.path) for v in volumes}
    nonfinite = {v.modality: v.nonfinite for v in volumes if v.nonfinite}

    label = None
    if label_file is not None:
        try:
            label_volume = read_volume(label_file, case_id, LABEL, 3, pwi_summary)
            check_same_grid(reference, label_volume, case_id)
        except IslesFormatError as error:
            raise LabelFormatError(str(error)) from error
        label = np.ascontiguousarray(nifti_to_network(label_volume.data > 0), dtype=np.uint8)
        _warn_non_binary_label(label_volume, case_id)
        source_files[LABEL] = str(label_volume.path)
        if label_volume.nonfinite:
            nonfinite[LABEL] = label_volume.nonfinite

    image = np.stack([v.data for v in volumes], axis=-1)
    return Case(
        case_id=case_id,
        image=np.ascontiguousarray(nifti_to_network(image), dtype=np.float32),
        channels=tuple(files),
        label=label,
        affine=reference.affine,
        spacing_mm=spacing_to_network(reference.zooms),
        source_files=source_files,
        nonfinite_voxels=nonfinite,
        header=reference.header,
    )


def read_case(
    case_dir: str | os.PathLike,
    channels: Sequence[str] = DEFAULT_CHANNELS,
    require_label: bool = False,
    pwi_summary: str = "max",
    read_label: bool = True,
) -> Case:
    """Reads one ISLES case folder.

    Args:
        case_dir: e.g. ROOT/TRAINING/case_1.
        channels: modalities to stack, in order; may include "CT_4DPWI" (summarised over time).
        require_label: raise when the case has no OT; otherwise `Case.label` is None then.
        pwi_summary: "max" or "mean" over time for a CT_4DPWI channel.
        read_label: False leaves the OT file alone (`Case.label` None), even when it is damaged.

    Raises:
        IslesFormatError: one line naming the case and file (missing modality, mismatched grids, ...);
            `LabelFormatError` when only the OT file is at fault.
    """
    channels = tuple(channels)
    if not channels or len(set(channels)) != len(channels):
        raise ValueError(f"channels must be distinct modality names; got {channels}")
    if require_label and not read_label:
        raise ValueError("require_label needs read_label")
    case_dir = pathlib.Path(case_dir)
    case_id = case_dir.name
    files = find_modality_files(case_dir, modalities=channels + ((LABEL,) if read_label else ()))
    found = ", ".join(sorted(files))
    missing = [c for c in channels if c not in files]
    if missing:
        raise IslesFormatError(f"{case_id}: missing modality {', '.join(missing)} in {case_dir}; found {found}")
    label_file = files.get(LABEL) if read_label else None
    if require_label and label_file is None:
        raise IslesFormatError(f"{case_id}: no ground truth ({LABEL}) in {case_dir}; found {found}")
    return read_modality_files({c: files[c] for c in channels}, case_id, label_file, pwi_summary)


def load_cases(
    root: str | os.PathLike,
    channels: Sequence[str] = DEFAULT_CHANNELS,
    split: str | None = None,
    require_label: bool = False,
    pwi_summary: str = "max",
) -> list[Case]:
    """Reads every case under `root` (see `find_case_dirs`), in order.

    Raises:
        IslesFormatError: no case folder under `root`, or any case fails to read.
    """
    case_dirs = find_case_dirs(root, split=split)
    if not case_dirs:
        which = f" for split {split}" if split else ""
        raise IslesFormatError(f"no ISLES case folders (case_N/) found under {root}{which}")
    return [read_case(d, channels, require_label=require_label, pwi_summary=pwi_summary) for d in case_dirs]


def _same_file(a: pathlib.Path, b: pathlib.Path) -> bool:
    if os.path.realpath(a) == os.path.realpath(b):
        return True
    try:
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except OSError:
        return False


def _reference_header(reference: Case):
    if reference.header is not None:
        return reference.header
    path = reference.source_files[reference.channels[0]]
    try:
        return nib.load(str(path)).header
    except Exception as error:
        raise IslesFormatError(
            f"{reference.case_id}: cannot read reference header from {path} ({one_line_error(error)})"
        ) from error


def write_nifti_like(
    volume_network_order: np.ndarray,
    reference: Case,
    path: str | os.PathLike,
    dtype=np.uint8,
) -> pathlib.Path:
    """Writes a volume in the exact geometry of a case's source files, atomically.

    The header is a copy of the reference header (affine, qform and sform with their codes, zooms,
    units) with the new data type and no intensity scaling, so the file overlays the input in any viewer.

    Args:
        volume_network_order: [depth, height, width] (optionally with trailing axes) matching
            `reference.image.shape[:3]`.
        reference: the case the volume belongs to.
        path: output file ending in .nii or .nii.gz; never one of the case's input files.
        dtype: stored data type, e.g. np.uint8 for masks, np.float32 for probabilities.

    Returns:
        The written path.
    """
    volume = np.asarray(volume_network_order)
    target = pathlib.Path(path)
    case_id = reference.case_id
    expected = tuple(reference.image.shape[:3])
    if volume.ndim < 3 or tuple(volume.shape[:3]) != expected:
        raise ValueError(
            f"{case_id}: volume for {target} has shape {volume.shape}; expected {expected} (depth, height, width)"
        )
    if not target.name.lower().endswith((".nii", ".nii.gz")):
        raise ValueError(f"{case_id}: output {target} must end in .nii or .nii.gz")
    for modality, source in reference.source_files.items():
        if _same_file(target, pathlib.Path(source)):
            raise ValueError(f"{case_id}: refusing to overwrite input {modality} file {source}")

    reference_header = _reference_header(reference)
    data = np.asarray(network_to_nifti(volume)).astype(dtype)
    header = reference_header.copy()
    header.set_data_dtype(data.dtype)
    header.set_data_shape(data.shape)
    header.set_zooms(tuple(reference_header.get_zooms()[:3]) + (1.0,) * (data.ndim - 3))
    header.set_slope_inter(None, None)
    header["cal_min"] = 0
    header["cal_max"] = 0
    image_class = nib.Nifti2Image if isinstance(header, nib.Nifti2Header) else nib.Nifti1Image
    image = image_class(data, None, header=header)
    with atomic.atomic_path(target) as temporary:
        nib.save(image, str(temporary))
    return target
