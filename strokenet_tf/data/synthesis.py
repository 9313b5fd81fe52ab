"""Synthetic ISLES 2018-like CT perfusion cases, written in the real ISLES layout.

Each case is a slab of a real brain template (256 x 256 x Z, Z in {2, 4, 8, 16, 22}; ~0.8-1 mm in-plane,
4-6 mm slices) with skull, ventricles, sulci, grey and white matter; a stroke in a vascular territory; the
raw 4D perfusion series CT_4DPWI (x, y, z, t; 43-49 frames, 1 s apart, HU); the CBF, CBV, MTT and Tmax maps
deconvolved from that series as a scanner makes them; a non-contrast CT; and, for TRAINING, the ground truth
OT (the lesion a DWI would show 30-60 min later, misregistered by 1-3 mm). See `simulate` for the steps.
Cases come from four centres (noise, smoothing, vendor scales: `scanner.CENTRES`); each case folder's
hidden `.synthetic.json` records its centre, lesion type and geometry, and `with_truth` adds the true
maps (before acquisition and deconvolution) under the hidden folder `.truth/`, which the reader ignores.

Case k of a split depends only on (seed, split, k), whatever `num_cases`, `start_index` or `workers` were.
The command is `python -m strokenet_tf.data.synthesize`.
"""

from __future__ import annotations

import concurrent.futures
import ctypes
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
from absl import logging

from strokenet_tf import errors
from strokenet_tf.data import anatomy, isles, pathology, scanner, simulate

DEFAULT_DEPTHS: tuple[int, ...] = simulate.DEFAULT_DEPTHS
STORAGES: tuple[str, ...] = ("physical", "isles")
TRUTH_FOLDER = ".truth"  # hidden: true maps for checks
MARKER_FILE = ".synthetic.json"  # hidden: the ISLES reader ignores it; marks folders we may replace.
_FILE_PREFIX = "SMIR.Brain.XX.O."
SPLIT_CODES = {"TRAINING": 0, "TESTING": 1}


def synthesize_case(
    rng: np.random.Generator,
    size: int = 256,
    depths: Sequence[int] = DEFAULT_DEPTHS,
    with_pwi: bool = True,
    centres: Sequence[str] | None = None,
    lesion_types: Sequence[str] | None = None,
) -> dict:
    """One synthetic case (`simulate.simulate_case`), its centre drawn from `centres` (default: all four).

    `lesion_types` (names from `pathology.LESION_TYPE_NAMES`) restricts the main lesion's type, so a set can
    leave a type out for a generalisation check.
    """
    names = tuple(centres or scanner.CENTRE_NAMES)
    centre = scanner.CENTRES[scanner.CENTRE_NAMES.index(names[int(rng.integers(len(names)))])]
    return simulate.simulate_case(rng, size=size, depths=depths, with_pwi=with_pwi, centre=centre,
                                  lesion_types=lesion_types)


# ---------------------------------------------------------------------------------------- writing


def _stored(modality: str, volume: np.ndarray, storage: str, vendor_scale: dict) -> np.ndarray:
    """Array as written: float32 physical units, or the dtypes and vendor scales of the ISLES archives."""
    if modality == isles.LABEL:
        return volume.astype(np.uint8, copy=False)
    if modality == isles.PWI:
        return volume.astype(np.int16, copy=False)
    if storage == "physical":
        return volume.astype(np.float32)
    if modality == isles.CT:
        return np.clip(np.rint(volume), -1024, 3071).astype(np.int32)
    if modality in (isles.CBF, isles.CBV):
        return np.clip(np.rint(volume * vendor_scale[modality]), 0, 65535).astype(np.uint16)
    return volume.astype(np.float64)


def _nifti(volume: np.ndarray, case: dict) -> nib.Nifti1Image:
    image = nib.Nifti1Image(volume, case["affine"])
    image.header.set_xyzt_units("mm", "sec")
    image.set_qform(case["affine"], code=case["codes"][0])
    image.set_sform(case["affine"], code=case["codes"][1])
    if volume.ndim == 4:
        image.header.set_zooms(tuple(case["zooms_mm"]) + (1.0,))
    return image


def write_case(
    case: dict,
    case_dir: str | os.PathLike,
    storage: str = "physical",
    compress: bool = False,
    with_label: bool = True,
    with_truth: bool = False,
) -> dict[str, pathlib.Path]:
    """Writes a `synthesize_case` result as case_dir/SMIR.Brain.XX.O.<MOD>.<ID>/<same>.nii[.gz].

    With `with_truth`, the true maps go to case_dir/.truth/<name>.nii.gz (float32 physical units, hidden
    from the reader).

    Returns:
        modality name -> written file.
    """
    if storage not in STORAGES:
        raise errors.InputError("storage", f"must be one of {', '.join(STORAGES)}; got {storage!r}")
    case_dir = pathlib.Path(case_dir)
    extension = ".nii.gz" if compress else ".nii"
    written = {}
    for modality, volume in case["maps"].items():
        if modality == isles.LABEL and not with_label:
            continue
        name = f"{_FILE_PREFIX}{modality}.{case['ids'][modality]}"
        folder = case_dir / name
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / (name + extension)
        nib.save(_nifti(_stored(modality, volume, storage, case["vendor_scale"]), case), str(path))
        written[modality] = path
    if with_truth:
        truth_dir = case_dir / TRUTH_FOLDER
        truth_dir.mkdir(parents=True, exist_ok=True)
        for name, volume in case["truth"].items():
            nib.save(_nifti(np.asarray(volume, np.float32), case), str(truth_dir / f"{name}.nii.gz"))
    return written


_M_TRIM_THRESHOLD, _M_MMAP_MAX, _M_ARENA_MAX = -1, -4, -8  # glibc mallopt parameters


def keep_freed_memory() -> None:
    """Makes this process reuse the memory it frees for its next arrays (glibc malloc; elsewhere a no-op).

    glibc gives each large block (over its mmap threshold, at most 32 MB; in a thread's own arena, over 64 MB)
    fresh pages and returns them when it is freed, so each case's series (100-300 MB), its temporaries and
    TensorFlow's tensors would be page-faulted and zeroed by the kernel again, case after case: a large share
    of the time, as system time. Served from the one main heap, which is not trimmed, the pages are reused.
    The process then holds on to its peak memory until it ends, so only a process that only synthesizes calls
    this (the `synthesize` command), before it starts threads.
    """
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (AttributeError, OSError, TypeError):  # not glibc (or no C library to load)
        return
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt(_M_ARENA_MAX, 1)
    mallopt(_M_MMAP_MAX, 0)
    mallopt(_M_TRIM_THRESHOLD, 2**31 - 1)


def one_blas_thread() -> None:
    """Makes numpy's BLAS (OpenBLAS) use one thread in this process, if threadpoolctl is installed (nilearn's
    scikit-learn brings it).

    BLAS serves only the small [N, 3] x [3, 3] point transforms here, whose results are the same either way;
    its second thread mostly spun waiting for work, taking CPU from the cases' threads. Like
    `keep_freed_memory`, only for a process that only synthesizes.
    """
    try:
        import threadpoolctl
    except ImportError:
        return
    threadpoolctl.threadpool_limits(1, user_api="blas")


def _load_shared(size: int) -> None:
    """Loads what every case uses once, before worker threads share it: the template, the pathology atlas and
    the traced deconvolution graph (one after the other: importing TensorFlow in a thread of its own while
    the template is derived is slower, the two contending for the GIL)."""
    anatomy.load_template()
    if size > 256 / 2.5:  # the slab's in-plane spacing (<= 256 / size mm) takes the fine pathology grid
        pathology.coarse_anatomy(pathology.FINE_STEP_MM)
    simulate._deconvolve_graph()


def case_rng(seed: int, split: str, index: int) -> np.random.Generator:
    """The generator of case `index` in `split`: independent of how many cases are written."""
    return np.random.default_rng([int(seed), SPLIT_CODES[split], int(index)])


def _write_one(job: tuple) -> tuple[pathlib.Path, float, int, float]:
    """Makes and writes one case into a hidden temporary folder, then renames it into place."""
    split_dir, index, seed, split, options = job
    case_dir = split_dir / f"case_{index}"
    started = time.perf_counter()
    case = synthesize_case(case_rng(seed, split, index), size=options["size"], depths=options["depths"],
                           with_pwi=options["with_pwi"], centres=options["centres"],
                           lesion_types=options["lesion_types"])
    temporary = split_dir / f".tmp-{uuid.uuid4().hex[:12]}-case_{index}"
    try:
        write_case(case, temporary, storage=options["storage"], compress=options["compress"],
                   with_label=split == "TRAINING", with_truth=options["with_truth"])
        record = {"seed": seed, "split": split, "index": index, "storage": options["storage"], "size": options["size"],
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
    return case_dir, case["lesion_volume_ml"], case["params"]["depth"], time.perf_counter() - started


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
    centres: Sequence[str] | None = None,
    lesion_types: Sequence[str] | None = None,
    with_truth: bool = False,
    workers: int = 1,
) -> list[pathlib.Path]:
    """Writes cases start_index .. start_index + num_cases - 1 to output_dir/split/case_k.

    Each case is written to a hidden temporary folder and renamed into place. An existing case folder
    is replaced only when it holds the marker of a synthetic case, so a real dataset is never touched.
    `workers` > 1 makes cases in that many threads (the result is the same).

    Returns:
        The case folders.
    """
    split = split.upper()
    if split not in SPLIT_CODES:
        raise errors.InputError("split", f"must be TRAINING or TESTING; got {split!r}")
    if storage not in STORAGES:
        raise errors.InputError("storage", f"must be one of {', '.join(STORAGES)}; got {storage!r}")
    if size < 16 or not depths or min(depths) < 1:
        raise errors.InputError("size", f"must be >= 16 and {errors.ref('depths')} positive; got size={size}, "
                                f"depths={tuple(depths)}")
    unknown = [c for c in (centres or ()) if c not in scanner.CENTRE_NAMES]
    if unknown:
        raise errors.InputError("centres", f": unknown centre {unknown[0]!r}; known: {', '.join(scanner.CENTRE_NAMES)}")
    unknown = [t for t in (lesion_types or ()) if t not in pathology.LESION_TYPE_NAMES]
    if unknown:
        raise errors.InputError("lesion_types", f": unknown type {unknown[0]!r}; known: "
                                f"{', '.join(pathology.LESION_TYPE_NAMES)}")
    split_dir = pathlib.Path(output_dir) / split
    split_dir.mkdir(parents=True, exist_ok=True)
    indices = range(start_index, start_index + num_cases)
    for index in indices:
        case_dir = split_dir / f"case_{index}"
        if case_dir.exists() and not (case_dir / MARKER_FILE).is_file():
            raise ValueError(f"refusing to replace {case_dir}: it exists and was not written by this generator")
    options = {"size": size, "depths": tuple(depths), "with_pwi": with_pwi, "centres": centres,
               "lesion_types": lesion_types, "storage": storage, "compress": compress, "with_truth": with_truth}
    jobs = [(split_dir, index, seed, split, options) for index in indices]
    if workers > 1 and len(jobs) > 1:
        # Threads of this process: TensorFlow, its traced graph and the template are loaded once and shared (as
        # processes, each worker spent seconds on them), and the heavy steps (TensorFlow, scipy.ndimage, numpy on
        # whole slabs, writing) run without the GIL.
        _load_shared(size)
        pool = concurrent.futures.ThreadPoolExecutor(min(workers, len(jobs)))
        try:
            results = list(pool.map(_write_one, jobs))
        finally:  # after an error or Ctrl-C no further case starts; those under way finish (their folders stay whole)
            pool.shutdown(wait=True, cancel_futures=True)
    else:
        results = [_write_one(job) for job in jobs]
    for case_dir, volume_ml, depth, seconds in results:
        logging.info("wrote %s (%d slices, lesion %.1f mL) in %.2f s", case_dir, depth, volume_ml, seconds)
    return [r[0] for r in results]


@dataclasses.dataclass(frozen=True)
class SynthesisConfig:
    """What `run` writes (the arguments of `write_dataset`); `data.synthesize` fills it from flags."""

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
    centres: tuple[str, ...] | None = None
    lesion_types: tuple[str, ...] | None = None
    with_truth: bool = False
    workers: int = 1


def run(config: SynthesisConfig) -> list[pathlib.Path]:
    """`write_dataset` with the arguments of `config`; returns the case folders."""
    return write_dataset(
        config.output_dir, config.num_cases, seed=config.seed, split=config.split, storage=config.storage,
        size=config.size, depths=config.depths, start_index=config.start_index, with_pwi=config.with_pwi,
        compress=config.compress, centres=config.centres, lesion_types=config.lesion_types,
        with_truth=config.with_truth, workers=config.workers,
    )
