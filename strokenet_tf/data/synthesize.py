"""Synthetic ISLES 2018-like CT perfusion cases, written in the real ISLES layout.

Each case is a head slab (256 x 256 x Z, Z in {2, 4, 8, 16, 22}; ~0.9 mm in-plane, 4-6 mm slices) with
skull, CSF, ventricles and smooth grey/white-matter fields, the four perfusion maps (CBF, CBV, MTT,
Tmax; 0 outside brain tissue, so the ISLES brain mask "summed perfusion > 0" works), a non-contrast CT,
optionally the 4D perfusion series (CT_4DPWI) and, for TRAINING, the ground truth OT.

One hypoperfused territory per case: a benign-oligaemia rim (Tmax 3-6 s), a penumbra (Tmax 6-12 s, CBF
mildly lowered, CBV normal or raised) and an ischaemic core (CBF and CBV strongly lowered, Tmax high).
OT is the core perturbed (eroded or dilated, grown into the penumbra, noisy boundary), as the ISLES 2018
ground truth came from a DWI taken after the CT perfusion. Old infarcts (low CBF and CBV, normal Tmax,
hypodense CT), smoothing that darkens the brain edge, multiplicative noise and a per-case calibration
scale on CBF and CBV keep any single-map threshold far from the ground truth, while the maps together
(CBF and CBV low where Tmax is high) carry the signal.

The anatomy, lesion and maps are drawn in `phantom`; this module names, stores and writes them.
Case k of a split depends only on (seed, split, k), whatever `num_cases` or `start_index` were.

Usage:
    python -m strokenet_tf.data.synthesize --output_dir demo_data --num_cases 8 --seed 0 --split TRAINING
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import shutil
import time
import uuid
from typing import Sequence

import nibabel as nib
import numpy as np
from absl import app, flags, logging

from strokenet_tf import cli
from strokenet_tf.data import isles, phantom

TOOL = "strokenet_tf.data.synthesize"

DEFAULT_DEPTHS: tuple[int, ...] = (2, 4, 8, 16, 22)
STORAGES: tuple[str, ...] = ("physical", "isles")
MARKER_FILE = ".synthetic.json"  # hidden: the ISLES reader ignores it; marks folders we may replace.
_FILE_PREFIX = "SMIR.Brain.XX.O."
_SPLIT_CODES = {"TRAINING": 0, "TESTING": 1}


def synthesize_case(
    rng: np.random.Generator,
    size: int = 256,
    depths: Sequence[int] = DEFAULT_DEPTHS,
    with_pwi: bool = True,
    lesion_volume_range_ml: tuple[float, float] = (1.0, 100.0),
) -> dict:
    """One synthetic case in physical units.

    Args:
        rng: the case's generator (see `case_rng`); everything is drawn from it.
        size: in-plane size; the field of view stays ~230 mm, so smaller sizes have coarser voxels.
        depths: slice counts to choose from.
        with_pwi: also make the 4D series (the slow part).
        lesion_volume_range_ml: the ground truth volume is kept inside this range.

    Returns:
        dict with "maps" (modality name -> array in NIfTI (x, y, z[, t]) order: float32 physical units
        for CT (HU), CT_CBF, CT_CBV, CT_MTT, CT_Tmax; int16 HU for CT_4DPWI; uint8 for OT), "affine",
        "zooms_mm" (x, y, z), "codes" (qform, sform), "ids" (modality -> 6-digit string), "vendor_scale"
        (uint16 factors for CBF and CBV under --storage isles), "core", "territory", "tissue" (bool,
        NIfTI order), "lesion_volume_ml" and "params" (numbers describing the case).
    """
    ids = rng.choice(np.arange(100000, 1000000), size=len(isles.ALL_MODALITIES), replace=False)
    ids = {m: str(i) for m, i in zip(isles.ALL_MODALITIES, ids)}
    vendor_scale = {isles.CBF: float(rng.uniform(40, 70)), isles.CBV: float(rng.uniform(70, 110))}
    grid = phantom.make_grid(rng, size, depths)
    head = phantom.make_head(rng, grid)
    lesion, volume_ml = phantom.make_lesion_of_volume(rng, grid, head["tissue"], lesion_volume_range_ml)
    maps = phantom.make_perfusion(rng, grid, head, lesion)
    calibration = rng.uniform(0.7, 1.4, 2)  # per-case scale of the deconvolved CBF and CBV
    to_nifti = isles.network_to_nifti
    out = {
        isles.CT: maps["ct"], isles.CBF: maps["cbf"] * np.float32(calibration[0]),
        isles.CBV: maps["cbv"] * np.float32(calibration[1]),
        isles.MTT: maps["mtt"], isles.TMAX: maps["tmax"], isles.LABEL: lesion["label"].astype(np.uint8),
    }
    out = {m: to_nifti(v) for m, v in out.items()}
    if with_pwi:
        out[isles.PWI] = np.transpose(phantom.make_pwi(rng, grid, head, maps), (3, 2, 1, 0))
    return {
        "maps": out,
        "affine": grid["affine"],
        "zooms_mm": tuple(reversed(grid["spacing"])),
        "codes": grid["codes"],
        "ids": ids,
        "vendor_scale": vendor_scale,
        "core": to_nifti(lesion["core"] > 0.5),
        "territory": to_nifti(lesion["territory"] > 0.5),
        "tissue": to_nifti(head["tissue"]),
        "lesion_volume_ml": volume_ml,
        "params": {"radius_mm": lesion["radius_mm"], "side": lesion["side"], "depth": grid["shape"][0],
                   "spacing_mm": grid["spacing"]},
    }


# ---------------------------------------------------------------------------------------- writing


def _stored(modality: str, volume: np.ndarray, storage: str, vendor_scale: dict) -> np.ndarray:
    """Array as written: float32 physical units, or the dtypes and vendor scales of the ISLES archives."""
    if modality == isles.LABEL:
        return volume.astype(np.uint8)
    if modality == isles.PWI:
        return volume.astype(np.int16)
    if storage == "physical":
        return volume.astype(np.float32)
    if modality == isles.CT:
        return np.clip(np.rint(volume), -1024, 3071).astype(np.int32)
    if modality in (isles.CBF, isles.CBV):
        return np.clip(np.rint(volume * vendor_scale[modality]), 0, 65535).astype(np.uint16)
    return volume.astype(np.float64)


def write_case(
    case: dict,
    case_dir: str | os.PathLike,
    storage: str = "physical",
    compress: bool = False,
    with_label: bool = True,
) -> dict[str, pathlib.Path]:
    """Writes a `synthesize_case` result as case_dir/SMIR.Brain.XX.O.<MOD>.<ID>/<same>.nii[.gz].

    Returns:
        modality name -> written file.
    """
    if storage not in STORAGES:
        raise ValueError(f"--storage must be one of {', '.join(STORAGES)}; got {storage!r}")
    case_dir = pathlib.Path(case_dir)
    extension = ".nii.gz" if compress else ".nii"
    written = {}
    for modality, volume in case["maps"].items():
        if modality == isles.LABEL and not with_label:
            continue
        name = f"{_FILE_PREFIX}{modality}.{case['ids'][modality]}"
        folder = case_dir / name
        folder.mkdir(parents=True, exist_ok=True)
        image = nib.Nifti1Image(_stored(modality, volume, storage, case["vendor_scale"]), case["affine"])
        image.header.set_xyzt_units("mm", "sec")
        image.set_qform(case["affine"], code=case["codes"][0])
        image.set_sform(case["affine"], code=case["codes"][1])
        if volume.ndim == 4:
            image.header.set_zooms(tuple(case["zooms_mm"]) + (1.0,))
        path = folder / (name + extension)
        nib.save(image, str(path))
        written[modality] = path
    return written


def case_rng(seed: int, split: str, index: int) -> np.random.Generator:
    """The generator of case `index` in `split`: independent of how many cases are written."""
    return np.random.default_rng([int(seed), _SPLIT_CODES[split], int(index)])


def write_dataset(
    output_dir: str | os.PathLike,
    num_cases: int,
    seed: int = 0,
    split: str = "TRAINING",
    storage: str = "physical",
    size: int = 256,
    depths: Sequence[int] = DEFAULT_DEPTHS,
    start_index: int = 1,
    with_pwi: bool = True,
    compress: bool = False,
) -> list[pathlib.Path]:
    """Writes cases start_index .. start_index + num_cases - 1 to output_dir/split/case_k.

    Each case is written to a hidden temporary folder and renamed into place. An existing case folder
    is replaced only when it holds the marker of a synthetic case, so a real dataset is never touched.

    Returns:
        The case folders.
    """
    split = split.upper()
    if split not in _SPLIT_CODES:
        raise ValueError(f"--split must be TRAINING or TESTING; got {split!r}")
    if storage not in STORAGES:
        raise ValueError(f"--storage must be one of {', '.join(STORAGES)}; got {storage!r}")
    if size < 16 or not depths or min(depths) < 1:
        raise ValueError(f"--size must be >= 16 and --depths positive; got size={size}, depths={tuple(depths)}")
    split_dir = pathlib.Path(output_dir) / split
    split_dir.mkdir(parents=True, exist_ok=True)
    case_dirs = []
    for index in range(start_index, start_index + num_cases):
        case_dir = split_dir / f"case_{index}"
        if case_dir.exists() and not (case_dir / MARKER_FILE).is_file():
            raise ValueError(f"refusing to replace {case_dir}: it exists and was not written by this generator")
        started = time.perf_counter()
        case = synthesize_case(case_rng(seed, split, index), size=size, depths=depths, with_pwi=with_pwi)
        temporary = split_dir / f".tmp-{uuid.uuid4().hex[:12]}-case_{index}"
        try:
            write_case(case, temporary, storage=storage, compress=compress, with_label=split == "TRAINING")
            record = {"seed": seed, "split": split, "index": index, "storage": storage, "size": size,
                      "lesion_volume_ml": case["lesion_volume_ml"], **case["params"]}
            (temporary / MARKER_FILE).write_text(json.dumps(record, indent=1) + "\n")
            if case_dir.exists():
                trash = split_dir / f".trash-{uuid.uuid4().hex[:12]}-case_{index}"
                os.replace(case_dir, trash)
                os.replace(temporary, case_dir)
                shutil.rmtree(trash)
            else:
                os.replace(temporary, case_dir)
        finally:
            if temporary.exists():
                shutil.rmtree(temporary)
        logging.info("wrote %s (%d slices, lesion %.1f mL) in %.2f s", case_dir, case["params"]["depth"],
                     case["lesion_volume_ml"], time.perf_counter() - started)
        case_dirs.append(case_dir)
    return case_dirs


# -------------------------------------------------------------------------------------------- CLI


@dataclasses.dataclass(frozen=True)
class SynthesisConfig:
    """What `main` writes; filled from flags."""

    output_dir: str
    num_cases: int = 4
    seed: int = 0
    split: str = "TRAINING"
    storage: str = "physical"
    size: int = 256
    depths: tuple[int, ...] = DEFAULT_DEPTHS
    start_index: int = 1
    with_pwi: bool = True
    compress: bool = False


def define_flags(flag_values: flags.FlagValues = flags.FLAGS) -> None:
    """Defines the CLI flags (only when run as a program, so importing this module defines none)."""
    flags.DEFINE_string("output_dir", None, "Dataset root; cases go to OUTPUT_DIR/SPLIT/case_K.", flag_values=flag_values)
    flags.DEFINE_integer("num_cases", 4, "Number of cases to write.", lower_bound=0, flag_values=flag_values)
    flags.DEFINE_integer("seed", 0, "Case k depends only on (seed, split, k).", flag_values=flag_values)
    flags.DEFINE_enum("split", "TRAINING", list(_SPLIT_CODES), "TESTING writes no OT.", flag_values=flag_values)
    flags.DEFINE_enum("storage", "physical", list(STORAGES),
                      "physical: float32 physical units; isles: the archives' dtypes and vendor scales.",
                      flag_values=flag_values)
    flags.DEFINE_integer("size", 256, "In-plane size (ISLES: 256).", lower_bound=16, flag_values=flag_values)
    flags.DEFINE_list("depths", [str(d) for d in DEFAULT_DEPTHS], "Slice counts to draw from.", flag_values=flag_values)
    flags.DEFINE_integer("start_index", 1, "Index of the first case folder.", flag_values=flag_values)
    flags.DEFINE_boolean("no_pwi", False, "Skip CT_4DPWI (much faster, much smaller).", flag_values=flag_values)
    flags.DEFINE_boolean("compress", False, "Write .nii.gz instead of .nii.", flag_values=flag_values)
    flags.mark_flag_as_required("output_dir", flag_values=flag_values)


def config_from_flags(flag_values: flags.FlagValues = flags.FLAGS) -> SynthesisConfig:
    try:
        depths = tuple(int(d) for d in flag_values.depths)
    except ValueError:
        raise app.UsageError(f"--depths must be comma-separated integers; got {','.join(flag_values.depths)}")
    return SynthesisConfig(
        output_dir=flag_values.output_dir, num_cases=flag_values.num_cases, seed=flag_values.seed,
        split=flag_values.split, storage=flag_values.storage, size=flag_values.size, depths=depths,
        start_index=flag_values.start_index, with_pwi=not flag_values.no_pwi, compress=flag_values.compress,
    )


def run(config: SynthesisConfig) -> list[pathlib.Path]:
    return write_dataset(
        config.output_dir, config.num_cases, seed=config.seed, split=config.split, storage=config.storage,
        size=config.size, depths=config.depths, start_index=config.start_index, with_pwi=config.with_pwi,
        compress=config.compress,
    )


def main(argv: Sequence[str]) -> None:
    cli.reject_arguments(TOOL, argv)
    try:
        config = config_from_flags(flags.FLAGS)
        case_dirs = run(config)
    except (app.UsageError, ValueError) as error:  # bad flag values, a folder this generator did not write
        cli.fail(TOOL, str(error))
    except OSError as error:  # --output_dir is a file, or cannot be created
        cli.fail(TOOL, cli.os_error_line(error, flags.FLAGS.output_dir))
    print(f"wrote {len(case_dirs)} {config.split} cases to {pathlib.Path(config.output_dir) / config.split}")


if __name__ == "__main__":
    define_flags()
    app.run(main)
