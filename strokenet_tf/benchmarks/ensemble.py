r"""Single best fold vs fold ensemble vs ensemble + mirroring on a held-out test split: quality, calibration,
perfusion volumes and seconds per slab.

Usage:
    python -m strokenet_tf.benchmarks.ensemble --model=runs/cv --data_dir=heldout --output=ensemble.json

--data_dir must hold labelled cases never used for fitting (not the cross-validation's data). Per variant:
Dice, HD95 (mm) and absolute volume error (mL) per case (`metrics.case_metrics`), mean, std and n; ECE (15 bins,
brain voxels) of the raw and the calibrated probabilities (the cross-validation's calibration.json); the
perfusion report's hypoperfusion volume against Tmax > 6 s counted in numpy on the true Tmax map, and its
mismatch volume (predicted core) against the true one (true Tmax, true CT-time core), where the cases hold the
true maps (`synthesize --write_truth`; else the Tmax file and the label); and the median seconds of `Segmenter.segment` (raw maps
to mask, end to end) on a synthetic 16 x 256 x 256 slab, float32 and bfloat16 where the CPU runs it natively.
"""

from __future__ import annotations

import json
import os
import time
from typing import Sequence

import numpy as np
from absl import flags

from strokenet_tf import cli

FLAGS = flags.FLAGS
TOOL = "strokenet_tf.benchmarks.ensemble"
VARIANTS = ("single_best_fold", "ensemble", "ensemble_mirror")
WHOLE_PLANE = "_whole_plane"
"""Suffix of a variant run on the whole 256 x 256 plane instead of the brain's box (`preprocess.head_box`), e.g.
`ensemble_mirror_whole_plane`: the inference of before the box, for comparison."""


def define_flags(flag_values: flags.FlagValues = FLAGS) -> None:
    fv = {"flag_values": flag_values}
    cli.define_shared(flag_values, "model", "data_dir", "output",
                      help={"model": "cross_validate folder (fold_K run folders).",
                            "data_dir": "Held-out labelled cases (ISLES layout).",
                            "output": "JSON file for the results."})
    flags.DEFINE_list("variants", list(VARIANTS), "Variants to run.", **fv)
    flags.DEFINE_list("precisions", ["float32", "bfloat16"], "Dtype policies to run (bfloat16 only where the "
                      "CPU has AVX512_BF16/AMX, mixed_float16 only on a GPU).", **fv)
    flags.DEFINE_integer("timing_depth", 16, "Slices of the timing slab.", **fv)
    flags.DEFINE_integer("timing_repeats", 5, "Timed calls (median) after one warm-up call.", **fv)
    flags.DEFINE_boolean("timing_only", False, "Only the seconds per slab (no scoring; --data_dir unused).", **fv)
    flags.DEFINE_integer("interleaved_rounds", 0, "With --timing_only: load every variant first, then time them in "
                         "this many rounds of one call each (load drift on shared cores hits all alike).", **fv)
    flags.mark_flags_as_required(["model", "data_dir"], flag_values=flag_values)
    cli.define_old_names(flag_values, TOOL, {"cv_dir": "model"})


def _variant(name: str, cv_dir: str, precision: str):
    from strokenet_tf import ensemble

    whole_plane = name.endswith(WHOLE_PLANE)
    name = name[:-len(WHOLE_PLANE)] if whole_plane else name
    if name not in VARIANTS:
        raise ValueError(f"--variants: unknown {name!r} (expected {', '.join(VARIANTS)}, optionally + {WHOLE_PLANE})")
    if name == "single_best_fold":
        segmenter = ensemble.load_ensemble([ensemble.best_fold(cv_dir)], mirror=False, calibrate=False,
                                           precision=precision)
    else:
        segmenter = ensemble.load_ensemble([cv_dir], mirror=name == "ensemble_mirror", calibrate=False,
                                           precision=precision)
    segmenter.crop_to_head = not whole_plane  # read when the graph is traced (first call)
    return segmenter


def _summary(values: Sequence[float]) -> dict:
    kept = np.asarray([v for v in values if v is not None and np.isfinite(v)], np.float64)
    return {"mean": float(kept.mean()) if kept.size else None, "std": float(kept.std()) if kept.size else None,
            "n": int(kept.size), "n_nan": len(values) - int(kept.size)}


def score_variant(segmenter, case_dirs, fitted) -> dict:
    """Per-case metrics, ECE before/after `fitted` and perfusion-volume checks of one variant."""
    from strokenet_tf import calibration, metrics, perfusion_report
    from strokenet_tf.data import isles, preprocess

    rows, raw_p, labels = [], [], []
    for case_dir in case_dirs:
        case = isles.read_case(case_dir, segmenter.channels, require_label=True)
        outputs = segmenter.analyse_case(case)
        mask, probabilities = outputs["mask"], outputs["probabilities"]
        row = {"case_id": case.case_id, **metrics.case_metrics(mask, case.label, case.spacing_mm)}
        brain = np.asarray(preprocess.brain_mask(case.image, case.channels))
        raw_p.append(probabilities[brain])
        labels.append(case.label[brain] > 0)
        tmax, core = case.image[..., case.channels.index(isles.TMAX)], case.label > 0
        truth = _true_maps(case_dir)
        if truth is not None:  # synthesize --write_truth: the maps before acquisition and deconvolution
            tmax, core = truth["tmax"], truth["core"] > 0
        reference = perfusion_report.reference_volumes_ml(tmax, brain, core, case.spacing_mm)
        row.update({
            "truth_maps": truth is not None,
            "volume_error_ml": abs(row["volume_pred_ml"] - row["volume_true_ml"]),
            "hypoperfusion_ml": float(outputs["hypoperfusion_volume_ml"]),
            "hypoperfusion_true_ml": reference["hypoperfusion_volume_ml"],
            "mismatch_ml": float(outputs["mismatch_volume_ml"]),
            "mismatch_true_ml": reference["mismatch_volume_ml"],
            "defuse3": int(outputs["defuse3"]),
            "defuse3_true": int(reference["core_volume_ml"] < 70 and reference["mismatch_ratio"] >= 1.8
                                and reference["mismatch_volume_ml"] >= 15),
            "members_disagree": bool(outputs["members_disagree"]),
            "member_dice_min": float(np.min(outputs["member_dice"])),
            "core_interval_ml": [float(np.min(outputs["member_core_volume_ml"])),
                                 float(np.max(outputs["member_core_volume_ml"]))],
        })
        low, high = row["core_interval_ml"]
        row["truth_in_interval"] = bool(low <= row["volume_true_ml"] <= high)
        rows.append(row)
    p, y = np.concatenate(raw_p), np.concatenate(labels)
    result = {"cases": rows}
    for key in ("dice", "hd95_mm", "volume_error_ml"):
        result[key] = _summary([row[key] for row in rows])
    result["ece_raw"] = calibration.expected_calibration_error(p, y)
    result["ece_calibrated"] = calibration.expected_calibration_error(fitted.apply_np(p), y) if fitted else None
    result["calibration_method"] = fitted.method if fitted else None
    result["hypoperfusion_abs_error_ml"] = _summary([abs(r["hypoperfusion_ml"] - r["hypoperfusion_true_ml"])
                                                      for r in rows])
    result["mismatch_abs_error_ml"] = _summary([abs(r["mismatch_ml"] - r["mismatch_true_ml"]) for r in rows])
    result["defuse3_agreement"] = float(np.mean([r["defuse3"] == r["defuse3_true"] for r in rows]))
    result["members_disagree_cases"] = int(sum(r["members_disagree"] for r in rows))
    result["truth_in_member_interval"] = int(sum(r["truth_in_interval"] for r in rows))
    return result


def _true_maps(case_dir) -> dict | None:
    """The true Tmax (s) and CT-time core of a synthetic case (`.truth/`), network order; None without them."""
    import nibabel as nib

    from strokenet_tf.data import isles
    from strokenet_tf.data.synthesis import TRUTH_FOLDER

    folder = os.path.join(str(case_dir), TRUTH_FOLDER)
    paths = {name: os.path.join(folder, f"{name}.nii.gz") for name in ("tmax", "core")}
    if not all(os.path.isfile(path) for path in paths.values()):
        return None
    return {name: isles.nifti_to_network(np.asarray(nib.load(path).dataobj, np.float32))
            for name, path in paths.items()}


def time_variant(segmenter, depth: int, repeats: int) -> dict:
    """Median seconds of `segment` (raw maps -> mask, end to end) on a synthetic depth x 256 x 256 slab."""
    import tensorflow as tf

    from strokenet_tf.benchmarks import inference as inference_benchmark

    image = tf.constant(inference_benchmark.synthetic_slab(depth, 256, segmenter.channels)[np.newaxis])
    timing = inference_benchmark.time_calls(lambda: segmenter.segment(image)["mask"].numpy(), 1, repeats)
    return {"depth": depth, **timing}


def time_interleaved(segmenters: dict, depth: int, rounds: int) -> dict:
    """Seconds of `segment` per variant, one call each per round after one warm-up call: min and median."""
    import tensorflow as tf

    from strokenet_tf.benchmarks import inference as inference_benchmark

    first = next(iter(segmenters.values()))
    image = tf.constant(inference_benchmark.synthetic_slab(depth, 256, first.channels)[np.newaxis])
    for segmenter in segmenters.values():
        segmenter.segment(image)["mask"].numpy()
    seconds = {key: [] for key in segmenters}
    loads = []
    for _ in range(rounds):
        for key, segmenter in segmenters.items():
            start = time.perf_counter()
            segmenter.segment(image)["mask"].numpy()
            seconds[key].append(time.perf_counter() - start)
        loads.append(os.getloadavg()[0])
    return {"rounds": rounds, "depth": depth, "load_average_1min": loads,
            "variants": {key: {"min_s": min(v), "median_s": float(np.median(v))} for key, v in seconds.items()}}


def run(cv_dir: str, data_dir: str, variants: Sequence[str], precisions: Sequence[str], depth: int,
        repeats: int, timing_only: bool = False, interleaved_rounds: int = 0) -> dict:
    from strokenet_tf import calibration, ensemble
    from strokenet_tf.benchmarks import machine
    from strokenet_tf.data import isles

    fitted = calibration.read_calibration(cv_dir)
    case_dirs = [] if timing_only else isles.find_case_dirs(data_dir, split="TRAINING")
    results = {"cv_dir": os.path.abspath(cv_dir), "data_dir": os.path.abspath(data_dir), "n_cases": len(case_dirs),
               "best_fold": ensemble.best_fold(cv_dir), "cpu": machine.cpu_peak().get("model_name"),
               "cpu_bf16": ensemble.cpu_has_bf16(), "environment": machine.environment(), "variants": {}}
    if timing_only and interleaved_rounds > 0:
        segmenters = {f"{name}/{precision}": _variant(name, cv_dir, precision) for precision in precisions
                      for name in variants if precision != "bfloat16" or ensemble.cpu_has_bf16()}
        results["interleaved"] = time_interleaved(segmenters, depth, interleaved_rounds)
        for key, timing in results["interleaved"]["variants"].items():
            print(f"{key}: {timing['min_s']:.3f} s/slab fastest, {timing['median_s']:.3f} median", flush=True)
        return results
    for precision in precisions:
        if precision == "bfloat16" and not ensemble.cpu_has_bf16():
            continue
        for name in variants:
            segmenter = _variant(name, cv_dir, precision)
            key = f"{name}/{precision}"
            print(f"--- {key}: {len(segmenter.models)} member(s), mirror {segmenter.mirror}", flush=True)
            entry = {} if timing_only else score_variant(segmenter, case_dirs, fitted)
            entry["seconds_per_slab"] = time_variant(segmenter, depth, repeats)
            entry["load_average_1min"] = os.getloadavg()[0]
            results["variants"][key] = entry
            if timing_only:
                timing = entry["seconds_per_slab"]
                print(f"{key}: {timing['median_s']:.3f} s/slab median, {timing['min_s']:.3f} fastest "
                      f"(load {entry['load_average_1min']:.1f})", flush=True)
            else:
                print(format_row(key, entry), flush=True)
    return results


def format_row(key: str, entry: dict) -> str:
    def cell(summary, scale=1.0):
        return f"{summary['mean'] * scale:.2f} ± {summary['std'] * scale:.2f}" if summary["mean"] is not None else "nan"

    calibrated = "" if entry["ece_calibrated"] is None else f" -> {entry['ece_calibrated']:.4f}"
    return (f"{key}: Dice % {cell(entry['dice'], 100)} | HD95 mm {cell(entry['hd95_mm'])} (n {entry['hd95_mm']['n']}) "
            f"| volume error mL {cell(entry['volume_error_ml'])} | ECE {entry['ece_raw']:.4f}{calibrated} | "
            f"hypoperfusion |err| mL {entry['hypoperfusion_abs_error_ml']['mean']:.3f} | mismatch |err| mL "
            f"{entry['mismatch_abs_error_ml']['mean']:.2f} | DEFUSE-3 agreement {entry['defuse3_agreement']:.2f} | "
            f"{entry['seconds_per_slab']['median_s']:.3f} s/slab (min {entry['seconds_per_slab']['min_s']:.3f})")


def main(argv: Sequence[str]) -> None:
    from strokenet_tf.data import atomic

    cli.reject_arguments(TOOL, argv)
    results = run(FLAGS.model, FLAGS.data_dir, FLAGS.variants, FLAGS.precisions, FLAGS.timing_depth,
                  FLAGS.timing_repeats, FLAGS.timing_only, FLAGS.interleaved_rounds)
    if FLAGS.output:
        from strokenet_tf import evaluation

        atomic.atomic_write_text(FLAGS.output, json.dumps(evaluation.json_safe(results), indent=2) + "\n")
        print(f"results: {FLAGS.output}")


if __name__ == "__main__":
    cli.run(main, define_flags)
