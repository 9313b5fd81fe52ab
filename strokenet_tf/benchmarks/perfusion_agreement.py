r"""Agreement of the raw-4D perfusion maps with a synthetic dataset's true maps.

Usage:
    python -m strokenet_tf.data.synthesize --output_dir=/tmp/synth --num_cases=4 --write_truth
    python -m strokenet_tf.benchmarks.perfusion_agreement --data_dir=/tmp/synth

For every case with CT_4DPWI and the hidden `.truth/{cbf,cbv,mtt,tmax}.nii.gz` (written by
`synthesize --write_truth`), the maps of `perfusion.deconvolution.perfusion_maps` (default settings) are
(optionally with the Tmax bias correction) compared with the true maps inside the brain (deconvolution mask, true CBF > 0, and large-vessel fraction
below 5% where `.truth/vessel.nii.gz` exists): Pearson correlation voxel by voxel (r), Spearman's rank
correlation (rho), Pearson of 5 x 5 in-plane means (r5, regional agreement without most of the voxel noise),
median bias (deconvolved - true, in the map's units) and median ratio. When the case also holds the stored
maps (CT_CBF, ...), the same numbers are given for them (in vendor scales the bias is not meaningful; the
correlation is). Printed, never asserted.
"""

from __future__ import annotations

import pathlib
import statistics
from typing import Sequence

import nibabel as nib
import numpy as np
import tensorflow as tf
from scipy import ndimage, stats
from absl import flags

from strokenet_tf import cli
from strokenet_tf.data import isles, time_series
from strokenet_tf.data.synthesis import TRUTH_FOLDER
from strokenet_tf.perfusion import deconvolution

FLAGS = flags.FLAGS
TOOL = "strokenet_tf.benchmarks.perfusion_agreement"
MAPS = {"cbf": isles.CBF, "cbv": isles.CBV, "mtt": isles.MTT, "tmax": isles.TMAX}
VESSEL_MAX = 0.05


def define_flags(flag_values: flags.FlagValues = FLAGS) -> None:
    defined = {"flag_values": flag_values}
    cli.define_shared(flag_values, "data_dir",
                      help={"data_dir": "Synthetic root written with synthesize --write_truth."})
    flags.DEFINE_string("split", None, "Split folder to read (default: every split found).", **defined)
    flags.DEFINE_integer("max_cases", 0, "Most cases to compare (0: all).", lower_bound=0, **defined)
    flags.DEFINE_boolean("tmax_bias_correction", False, "perfusion_maps(tmax_bias_correction=...).", **defined)


def _regional(volume: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """5 x 5 in-plane means within `mask` (normalised convolution)."""
    weight = ndimage.uniform_filter(mask.astype(np.float64), size=(1, 5, 5))
    return ndimage.uniform_filter(np.where(mask, volume, 0.0).astype(np.float64), size=(1, 5, 5)) / np.maximum(
        weight, 1e-6)


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(a, b)[0, 1]) if a.size >= 3 and a.std() > 0 and b.std() > 0 else float("nan")


def agreement(estimate: np.ndarray, truth: np.ndarray, mask: np.ndarray) -> dict:
    """Pearson r voxel by voxel and of 5 x 5 in-plane means (r5: regional agreement, less the voxel noise),
    median bias (estimate - truth) and median ratio inside `mask`."""
    a, b = estimate[mask].astype(np.float64), truth[mask].astype(np.float64)
    ratio = np.median(a[b > 0] / b[b > 0]) if np.any(b > 0) else float("nan")
    rho = float(stats.spearmanr(a, b)[0]) if a.size >= 3 else float("nan")
    return {"r": _pearson(a, b), "rho": rho,
            "r5": _pearson(_regional(estimate, mask)[mask], _regional(truth, mask)[mask]),
            "bias": float(np.median(a - b)) if a.size else float("nan"), "ratio": float(ratio), "voxels": int(a.size)}


def compare_case(case_dir: pathlib.Path, graph) -> dict | None:
    """Per-map agreement of one case, or None without CT_4DPWI or true maps."""
    files = isles.find_modality_files(case_dir)
    truth_files = {name: case_dir / TRUTH_FOLDER / f"{name}.nii.gz" for name in MAPS}
    if isles.PWI not in files or not all(p.is_file() for p in truth_files.values()):
        return None
    series = time_series.read_time_series(files[isles.PWI], case_dir.name)
    result = graph(tf.constant(series.series), tf.constant(series.frame_interval_s, tf.float32))
    truth = {name: isles.nifti_to_network(np.asarray(nib.load(str(p)).dataobj, np.float32))
             for name, p in truth_files.items()}
    mask = np.asarray(result["brain_mask"]) & (truth["cbf"] > 0)
    vessel_file = case_dir / TRUTH_FOLDER / "vessel.nii.gz"
    if vessel_file.is_file():  # large vessels are map hot spots by design, and would dominate Pearson's r
        mask &= isles.nifti_to_network(np.asarray(nib.load(str(vessel_file)).dataobj, np.float32)) < VESSEL_MAX
    rows = {"aif_found": bool(result["aif_found"]), "brain_voxels": int(mask.sum())}
    for name, modality in MAPS.items():
        rows[name] = agreement(np.asarray(result[name]), truth[name], mask)
        if modality in files:
            stored = isles.nifti_to_network(np.asarray(nib.load(str(files[modality])).dataobj, np.float32))
            rows[f"stored_{name}"] = agreement(stored, truth[name], mask)
    return rows


def main(argv: Sequence[str]) -> None:
    del argv
    if FLAGS.data_dir is None:
        raise SystemExit(f"{TOOL}: --data_dir is required (a synthetic root written with synthesize --write_truth)")
    if not pathlib.Path(FLAGS.data_dir).is_dir():
        raise SystemExit(f"{TOOL}: --data_dir {FLAGS.data_dir}: no such folder")
    case_dirs = isles.find_case_dirs(FLAGS.data_dir, split=FLAGS.split)
    spec = [tf.TensorSpec([None, None, None, None], tf.float32), tf.TensorSpec([], tf.float32)]
    graph = tf.function(lambda s, dt: deconvolution.perfusion_maps(
        s, dt, tmax_bias_correction=FLAGS.tmax_bias_correction), input_signature=spec)
    results = {}
    for case_dir in case_dirs[: FLAGS.max_cases or None]:
        rows = compare_case(case_dir, graph)
        if rows is None:
            continue
        results[case_dir.name] = rows
        shown = "  ".join(f"{n} r={rows[n]['r']:.2f} rho={rows[n]['rho']:.2f} r5={rows[n]['r5']:.2f} "
                          f"bias={rows[n]['bias']:+.2f} "
                          f"ratio={rows[n]['ratio']:.2f}" for n in MAPS)
        print(f"{case_dir.name}: AIF {'found' if rows['aif_found'] else 'NOT found'}, {rows['brain_voxels']} "
              f"voxels: {shown}")
    if not results:
        raise SystemExit(f"{TOOL}: no case under {FLAGS.data_dir} has CT_4DPWI and {TRUTH_FOLDER}/ true maps")
    for prefix, label in (("", "deconvolved"), ("stored_", "stored maps")):
        summary = []
        for name in MAPS:
            values = [r[prefix + name] for r in results.values() if prefix + name in r]
            if values:
                r, rho, r5, bias, ratio = (statistics.median(v[key] for v in values)
                                           for key in ("r", "rho", "r5", "bias", "ratio"))
                summary.append(f"{name} r={r:.2f} rho={rho:.2f} r5={r5:.2f} bias={bias:+.2f} ratio={ratio:.2f}")
        if summary:
            print(f"median over {len(results)} case(s), {label}: " + "  ".join(summary))


if __name__ == "__main__":
    cli.run(main, define_flags)
