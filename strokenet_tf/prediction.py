"""Prediction on NIfTI inputs (the library half of `strokenet_tf.predict`).

Per case: read the raw maps (`isles.read_case` / `isles.read_modality_files`), run the shared inference path
(`inference.Segmenter.predict_case`: normalisation, padding and crop happen in the graph, whole slab in one
forward pass), and write, each file atomically (temporary file + rename):

    OUTPUT_DIR/<case>/<case_id>_mask.nii.gz          uint8 {0, 1}, exactly the input's grid (shape, affine,
                                                     qform/sform and their codes, zooms, units)
    OUTPUT_DIR/<case>/<case_id>_probability.nii.gz   float32 lesion probability (optional; calibrated for a
                                                     calibrated ensemble)
    OUTPUT_DIR/<case>/<case_id>_uncertainty.nii.gz   float32 predictive entropy in bits, 0-1 (optional, default on)
    OUTPUT_DIR/<case>/<case_id>_montage.png          axial slices of the maps, lesion and Tmax > 6 s outlined,
                                                     the report's volumes (`montage`)
    OUTPUT_DIR/<case>/<case_id>_report.json          lesion volume (mL), connected components, the perfusion
                                                     report (`perfusion_report`: core, hypoperfusion, mismatch,
                                                     DEFUSE-3 / EXTEND-IA; research output, not a medical
                                                     device), the ensemble's volume interval and disagreement
                                                     flag, timings, package version, UTC time, absolute paths
                                                     of inputs and outputs; volumes to 0.001 mL (`rounded`)
    OUTPUT_DIR/summary.csv                           for a run of several cases, one row per case, failed ones
                                                     included (`SUMMARY_COLUMNS`)

`<case>` is the case folder's path relative to the input folder (so TRAINING/case_1 and TESTING/case_1 of one
root do not collide), or the case id for a single case. The report is written last: its presence means the
case finished. Existing outputs are refused unless `overwrite`; nothing is ever written into an input case
folder or over an input file. A case that fails is reported and skipped; the others still run. A run killed
mid-case leaves only complete files under final names (plus hidden temporaries, removed when the case is
predicted again).
"""

from __future__ import annotations

import csv
import dataclasses
import datetime
import io
import json
import math
import os
import pathlib
import time
from typing import Callable, Mapping, Sequence

import numpy as np
import tensorflow as tf

from strokenet_tf import __version__, ensemble, errors, metrics, montage, perfusion_input, perfusion_report
from strokenet_tf.inference import MASK_KEY as MASK, PROBABILITIES_KEY as PROBABILITIES, UNCERTAINTY_KEY as UNCERTAINTY
from strokenet_tf.inference import CaseFailure
from strokenet_tf.data import atomic, isles

OUTPUT_KINDS = ("mask", "probability", "uncertainty", "montage", "report")
_SUFFIXES = {"mask": "_mask.nii.gz", "probability": "_probability.nii.gz", "uncertainty": "_uncertainty.nii.gz",
             "montage": "_montage.png", "report": "_report.json"}
BATCH_CSV = "summary.csv"
SUMMARY_COLUMNS = ("case_id", "case_status", "error", "lesion_volume_ml", "lesion_voxels", "connected_components",
                   "seconds") + perfusion_report.CSV_COLUMNS[1:]
"""The batch CSV: the case's outcome ("ok" or "failed" with the error), its lesion and total time, then the
perfusion report's columns (`perfusion_report.CSV_COLUMNS`; "status" is the perfusion report's status)."""
VOLUME_DECIMALS = 3  # 0.001 mL = 1 uL, below the smallest ISLES voxel (~3 uL)
SIGNIFICANT_DIGITS = 6  # other floats: float32 precision, without float64 noise
COMPONENT_CONNECTIVITY = 26  # as metrics.lesion_detection


class PredictError(errors.InputError):
    """A run that cannot start (no inputs, outputs that exist, ...); the message is one line."""


@dataclasses.dataclass(frozen=True)
class CaseInput:
    """One case to predict: a case folder, or explicit per-modality files.

    Attributes:
        case_id: name used in messages and output file names.
        output_subdir: folder under OUTPUT_DIR that receives the case's outputs.
        case_dir: the ISLES case folder, or None for explicit files.
        files: modality name -> NIfTI path for explicit files, else None.
        maps_from_4d: compute the perfusion maps from CT_4DPWI even when the maps exist (`perfusion_input`).
    """

    case_id: str
    output_subdir: str
    case_dir: pathlib.Path | None = None
    files: Mapping[str, str] | None = None
    maps_from_4d: bool = False


@dataclasses.dataclass(frozen=True)
class OutputOptions:
    """What to write and where.

    Attributes:
        output_dir: root of the outputs (created if missing).
        save_probabilities: also write the probability map.
        save_uncertainty: write the uncertainty map (predictive entropy).
        save_montage: write the PNG montage.
        montage_slices: most axial slices in the montage.
        overwrite: replace outputs that exist (never inputs).
    """

    output_dir: str
    save_probabilities: bool = False
    save_uncertainty: bool = True
    save_montage: bool = True
    montage_slices: int = montage.DEFAULT_MAX_SLICES
    overwrite: bool = False


def load_model(model: str, source: str = "best", threshold: float | None = None, mirror: bool | None = None,
               precision: str = "float32"):
    """`ensemble.load_segmenter` with the threshold rule: an export records its own threshold.

    Raises:
        inference.ModelLoadError: one line naming the path (also for a threshold given with an export).
    """
    from strokenet_tf import inference

    if threshold is not None and inference.is_saved_model_dir(model):
        raise inference.ModelLoadError(f"{model}: an exported SavedModel fixes its threshold in its metadata; "
                                       f"drop {errors.ref('threshold')}")
    if inference.is_saved_model_dir(model):
        return ensemble.load_segmenter(model, source, inference.DEFAULT_THRESHOLD, mirror)
    return ensemble.load_segmenter(model, source, inference.DEFAULT_THRESHOLD if threshold is None else threshold,
                                    mirror, precision)


def find_inputs(input_path: str | os.PathLike) -> list[CaseInput]:
    """The cases under a case folder, a folder of case folders or an ISLES root (both splits).

    Raises:
        PredictError: no such folder or no case in it.
    """
    root = pathlib.Path(input_path)
    if root.is_file():
        raise PredictError("input", f"{root} is a file; give a case folder, or one case's maps as per-modality files")
    if not root.is_dir():
        raise PredictError("input", f"{root}: no such folder (give a case folder or a folder of case folders)")
    try:
        case_dirs = isles.find_case_dirs(root)
    except isles.IslesFormatError as error:
        raise PredictError("input", f"{root}: {error}") from None
    if not case_dirs:
        raise PredictError("input", f"{root}: no ISLES case folder in it (expected case_N/ folders holding "
                           "SMIR.Brain.XX.O.<MODALITY>.<ID> files)")
    inputs = []
    for case_dir in case_dirs:
        relative = case_dir.name if case_dir == root else str(case_dir.relative_to(root))
        inputs.append(CaseInput(case_id=case_dir.name, output_subdir=relative, case_dir=case_dir))
    return inputs


def explicit_input(files: Mapping[str, str], case_id: str | None = None) -> CaseInput:
    """A case from explicit per-modality files; its id defaults to the folder that holds them all."""
    if not files:
        raise PredictError(f"no input: give {errors.ref('input')} or the per-modality files")
    if case_id is None:
        parents = [os.path.dirname(os.path.abspath(path)) for path in files.values()]
        common = os.path.commonpath(parents)
        # ISLES layout: case_1/SMIR.Brain.XX.O.CT.1/SMIR...nii -> the case folder; loose files: their folder.
        if len(set(parents)) > 1 or isles.parse_modality_name(os.path.basename(common)) is None:
            case_id = os.path.basename(common) or "case"
        else:
            case_id = os.path.basename(os.path.dirname(common)) or "case"
    return CaseInput(case_id=case_id, output_subdir=case_id, files=dict(files))


def output_paths(case_input: CaseInput, options: OutputOptions) -> dict[str, pathlib.Path]:
    """The files a case will write, by kind (see `OUTPUT_KINDS`)."""
    folder = pathlib.Path(options.output_dir) / case_input.output_subdir
    kinds = [k for k in OUTPUT_KINDS if (k != "probability" or options.save_probabilities)
             and (k != "montage" or options.save_montage) and (k != "uncertainty" or options.save_uncertainty)]
    return {kind: folder / f"{case_input.case_id}{_SUFFIXES[kind]}" for kind in kinds}


def _inside(path: pathlib.Path, folder: pathlib.Path) -> bool:
    path, folder = path.resolve(), folder.resolve()
    return path == folder or folder in path.parents


def check_outputs(inputs: Sequence[CaseInput], options: OutputOptions) -> None:
    """Refuses, before any work, outputs inside an input case folder, over an input file, or that exist.

    Raises:
        PredictError: one line naming the first offending path.
    """
    output_dir = pathlib.Path(options.output_dir)
    if output_dir.exists() and not output_dir.is_dir():
        raise PredictError("output_dir", f"{output_dir} exists and is not a folder")
    input_files = {pathlib.Path(p).resolve() for c in inputs if c.files for p in c.files.values()}
    case_dirs = [c.case_dir.resolve() for c in inputs if c.case_dir is not None]
    seen: dict[pathlib.Path, str] = {}
    existing = []
    for case_input in inputs:
        if case_input.case_dir is not None and _inside(output_dir, case_input.case_dir):
            raise PredictError("output_dir", f"{output_dir} is inside input case folder {case_input.case_dir}; "
                               "choose a folder outside the inputs")
        for path in output_paths(case_input, options).values():
            resolved = path.resolve()
            if resolved in input_files:
                raise PredictError(f"output {path} would overwrite an input file")
            # An output_dir equal to the folder holding the cases (or a case's parent) puts each case's outputs
            # into its own input folder.
            holder = next((d for d in case_dirs if d in resolved.parents), None)
            if holder is not None:
                raise PredictError("output_dir", f"{output_dir} would write {path} inside input case folder "
                                   f"{holder}; choose a folder outside the inputs")
            if resolved in seen:
                raise PredictError(f"cases {seen[resolved]} and {case_input.case_id} would both write {path}")
            seen[resolved] = case_input.case_id
            if path.exists():
                existing.append(path)
    if existing and not options.overwrite:
        more = f" (and {len(existing) - 1} more)" if len(existing) > 1 else ""
        raise PredictError(f"output {existing[0]} already exists{more}; pass {errors.ref('overwrite')} to replace it")


def read_input(case_input: CaseInput, channels: Sequence[str],
               warn: Callable[[str], None] = lambda message: None) -> isles.Case:
    """Reads the maps a model needs, in its channel order (labels are read when present, for the montage; a
    damaged label is reported through `warn` and left out, since predicting does not need it).

    Raises:
        isles.IslesFormatError: one line naming the case and file.
    """
    if perfusion_input.wants_maps_from_4d(case_input, channels):  # maps missing (CT_4DPWI there) or forced
        return perfusion_input.read_input_from_4d(case_input, channels, warn)
    if case_input.files is None:
        try:
            return isles.read_case(case_input.case_dir, channels)
        except isles.LabelFormatError as error:
            warn(f"{error}; predicting without it (no outline in the montage)")
            return isles.read_case(case_input.case_dir, channels, read_label=False)
    missing = [c for c in channels if c not in case_input.files]
    if missing:
        raise isles.IslesFormatError(f"{case_input.case_id}: missing modality {', '.join(missing)} "
                                     f"(the model reads {', '.join(channels)})")
    return isles.read_modality_files({c: case_input.files[c] for c in channels}, case_input.case_id)


def lesion_report(mask: np.ndarray, spacing_mm: Sequence[float]) -> dict:
    """Lesion volume (mL), voxel count and connected components (26-connected) of a mask [depth, height, width]."""
    labels, count = metrics.lesion_components(mask, COMPONENT_CONNECTIVITY)
    voxel_ml = float(np.prod(spacing_mm)) / 1000.0
    sizes = np.bincount(labels.ravel(), minlength=count + 1)[1:]
    return {
        "lesion_volume_ml": metrics.volume_ml(mask, spacing_mm),
        "lesion_voxels": int(np.count_nonzero(mask)),
        "connected_components": int(count),
        "component_volumes_ml": [float(v) for v in sorted(sizes * voxel_ml, reverse=True)],
    }


def predict_case(segmenter, case_input: CaseInput, options: OutputOptions,
                 warn: Callable[[str], None] = lambda message: None) -> dict:
    """Predicts one case and writes its outputs; returns its report (also written as JSON).

    Args:
        segmenter: `inference.Segmenter` or `inference.SavedModelSegmenter` (has `channels`, `predict_case`).
        case_input: from `find_inputs` / `explicit_input`.
        options: outputs.
        warn: receives one-line warnings (non-finite voxels replaced).

    Raises:
        isles.IslesFormatError, ValueError, OSError: one line; nothing of this case is left half-written.
    """
    started = time.perf_counter()
    case = read_input(case_input, segmenter.channels, warn)
    for modality, count in case.nonfinite_voxels.items():
        warn(f"{case.case_id}: replaced {count} NaN/Inf voxels by 0 in {modality} file "
             f"{case.source_files[modality]}")
    read_s = time.perf_counter() - started
    started = time.perf_counter()
    outputs = segmenter.analyse_case(case)
    probabilities, mask = outputs[PROBABILITIES], outputs[MASK]
    predict_s = time.perf_counter() - started
    perfusion = perfusion_section(outputs, segmenter)
    uncertainty = ensemble.uncertainty_summary(outputs, case.spacing_mm)
    started = time.perf_counter()
    paths = output_paths(case_input, options)
    paths["mask"].parent.mkdir(parents=True, exist_ok=True)
    for path in paths.values():  # left by a run that was killed while writing this case
        atomic.remove_stale_temporaries(path)
    isles.write_nifti_like(mask.astype(np.uint8), case, paths["mask"], dtype=np.uint8)
    if "probability" in paths:
        isles.write_nifti_like(probabilities.astype(np.float32), case, paths["probability"], dtype=np.float32)
    if "uncertainty" in paths and UNCERTAINTY in outputs:
        isles.write_nifti_like(outputs[UNCERTAINTY].astype(np.float32), case, paths["uncertainty"], dtype=np.float32)
    model = _model_name(segmenter)
    if "montage" in paths:
        rgb = montage.render_montage(case, mask, truth=case.label, max_slices=options.montage_slices,
                                     hypoperfusion=outputs.get(perfusion_report.HYPOPERFUSION_MASK_KEY),
                                     caption=montage_caption(perfusion, uncertainty), model=model)
        atomic.atomic_write_bytes(paths["montage"], montage.encode_png(rgb))
    report = rounded({
        "case_id": case.case_id,
        **lesion_report(mask, case.spacing_mm),
        "max_probability": float(probabilities.max()) if probabilities.size else 0.0,
        "threshold": float(getattr(segmenter, "threshold", float("nan"))),
        "perfusion_report": perfusion,
        "uncertainty": uncertainty,
        "ensemble": ensemble_info(segmenter),
        "model": ",".join(_absolute(p) if os.path.exists(p) else p for p in model.split(",")) if model else "",
        "strokenet_tf_version": __version__,
        "created_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "shape_xyz": list(case.nifti_shape),
        "voxel_size_mm_xyz": [float(s) for s in reversed(case.spacing_mm)],
        "inputs": {modality: _absolute(path) for modality, path in case.source_files.items()},
        "nonfinite_voxels_replaced": dict(case.nonfinite_voxels),
        "output_dir": _absolute(options.output_dir),
        "outputs": {kind: _absolute(path) for kind, path in paths.items()},
        "seconds": {"read": round(read_s, 4), "predict": round(predict_s, 4),
                    "write": round(time.perf_counter() - started, 4)},
    })
    atomic.atomic_write_text(paths["report"], json.dumps(report, indent=2) + "\n")
    return report


def _absolute(path: str | os.PathLike) -> str:
    return os.path.abspath(os.fspath(path))


def _model_name(segmenter) -> str:
    return str(getattr(segmenter, "source", "") or getattr(getattr(segmenter, "trained", None), "source", ""))


def rounded(value, key: str = ""):
    """`value` (a report: dicts, lists, numbers) with volumes (keys ending in "_ml") to `VOLUME_DECIMALS` and other
    floats to `SIGNIFICANT_DIGITS`, so the JSON shows what was measured rather than float64 noise
    (0.9 mm, not 0.8999999761581421). Non-finite floats, ints, bools and strings are kept."""
    if isinstance(value, dict):
        return {k: rounded(v, str(k)) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [rounded(v, key) for v in value]
    if isinstance(value, float) and math.isfinite(value):
        if key.endswith("_ml"):
            return round(value, VOLUME_DECIMALS) + 0.0  # + 0.0: no "-0.0"
        return float(f"{value:.{SIGNIFICANT_DIGITS}g}")
    return value


def perfusion_section(outputs: Mapping[str, np.ndarray], segmenter) -> dict:
    """The perfusion report of one case's outputs; the core only, with the reason, where the graph had none."""
    if "perfusion_status" in outputs:
        return perfusion_report.describe({k: np.asarray(v)[np.newaxis] for k, v in outputs.items()})
    return {"disclaimer": perfusion_report.DISCLAIMER, "core_volume_ml": None,
            "status": f"{getattr(segmenter, 'source', 'the model')}: an export without the report signature "
                      "(exported before it existed): no perfusion report; re-export the run"}


def ensemble_info(segmenter) -> dict:
    """Members, mirroring and calibration of the model that predicted (an in-process ensemble or an export)."""
    metadata = getattr(segmenter, "metadata", None)
    members = (metadata.get("ensemble", {}).get("n_members", 1) if metadata is not None
               else len(getattr(segmenter, "models", [None])))
    calibration = getattr(segmenter, "calibration", None)
    return {"n_members": members, "mirror": bool(getattr(segmenter, "mirror", False)),
            "calibration": calibration.method if calibration is not None else "identity"}


def montage_caption(perfusion: Mapping, uncertainty: Mapping | None) -> str:
    """One line of the report's volumes for the montage (research output)."""
    def ml(value):
        return "n/a" if value is None else ("inf" if value == "inf" else f"{value:.1f} mL")

    parts = [f"core {ml(perfusion.get('core_volume_ml'))}"]
    if uncertainty and uncertainty["n_members"] > 1:
        low, high = uncertainty["core_volume_interval_ml"]
        parts[0] += f" [{low:.1f}-{high:.1f}]" + (" DISAGREE" if uncertainty["members_disagree"] else "")
    if perfusion.get("hypoperfusion_volume_ml") is not None:
        ratio = perfusion["mismatch_ratio"]
        ratio = ratio if isinstance(ratio, str) else f"{ratio:.2f}"
        parts += [f"Tmax>6s {ml(perfusion['hypoperfusion_volume_ml'])}",
                  f"mismatch {ml(perfusion['mismatch_volume_ml'])} (ratio {ratio})"]
    else:
        parts.append("no perfusion report: " + perfusion["status"].split(":")[0])
    return ", ".join(parts) + "  (research output, not a medical device)"


def predict_cases(segmenter, inputs: Sequence[CaseInput], options: OutputOptions,
                  on_progress: Callable[[int, str], None] = lambda done, case_id: None,
                  warn: Callable[[str], None] = lambda message: None) -> tuple[list[dict], list[CaseFailure]]:
    """Predicts every case; a case that fails is reported through `warn`, skipped and returned as a failure.

    Raises:
        PredictError: before any work, for outputs that exist or would land inside the inputs.
    """
    check_outputs(inputs, options)
    batch_csv = pathlib.Path(options.output_dir) / BATCH_CSV
    if len(inputs) > 1 and batch_csv.exists() and not options.overwrite:
        raise PredictError(f"output {batch_csv} already exists; pass {errors.ref('overwrite')} to replace it")
    pathlib.Path(options.output_dir).mkdir(parents=True, exist_ok=True)
    reports, failures, rows = [], [], []
    for done, case_input in enumerate(inputs, start=1):
        try:
            reports.append(predict_case(segmenter, case_input, options, warn))
            rows.append(summary_row(reports[-1]))
        except (isles.IslesFormatError, ValueError, OSError, tf.errors.OpError) as error:
            message = " ".join(str(error).split()) or type(error).__name__
            failures.append(CaseFailure(case_input.case_id, message))
            rows.append(summary_row(failure=failures[-1]))
            warn(f"{case_input.case_id}: skipped: {message}")
        on_progress(done, case_input.case_id)
    if len(inputs) > 1:
        atomic.remove_stale_temporaries(batch_csv)
        atomic.atomic_write_text(batch_csv, summary_csv(rows))
    return reports, failures


def summary_row(report: Mapping | None = None, failure: CaseFailure | None = None) -> list[str]:
    """One row of the batch CSV (`SUMMARY_COLUMNS`) for a finished case's report or a failed case."""
    if failure is not None:
        return [failure.case_id, "failed", failure.message] + [""] * (len(SUMMARY_COLUMNS) - 3)
    perfusion = perfusion_report.csv_row(report["case_id"], report["perfusion_report"], report["uncertainty"])
    return [report["case_id"], "ok", "", f"{report['lesion_volume_ml']:.{VOLUME_DECIMALS}f}",
            str(report["lesion_voxels"]), str(report["connected_components"]),
            f"{sum(report['seconds'].values()):.2f}"] + perfusion[1:]


def summary_csv(rows: Sequence[Sequence[str]]) -> str:
    """CSV text: `SUMMARY_COLUMNS` then `rows` (cells with commas or quotes are quoted)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(SUMMARY_COLUMNS)
    writer.writerows(rows)
    return buffer.getvalue()
