"""How hard is a data set? Lesion volumes, slab depths and the Dice of the two classic threshold rules.

ISLES 2018 is hard for simple rules (~0.25-0.33 Dice for perfusion-map thresholds) and for networks (~0.51-0.58);
its median lesion is 15.2 mL. A simulator stands in for that task only if simple rules score as they do
there, so this command reports, over a data set with labels:
    - the lesion volume distribution and the slab depth mix (and centres / lesion types of synthetic cases);
    - (a) the RAPID-like rule: relative CBF < 30 % of normal tissue inside Tmax > 6 s (`baselines.rapid_core`);
    - (b) the best single-map threshold, fitted out of fold: the cases are split into `--num_folds` folds and
      each case is scored by the rule fitted on the other folds, so no case scores a rule it helped choose.

Usage:
    python -m strokenet_tf.data.difficulty --data_dir demo_data [--output demo_data/difficulty.json]
"""

from __future__ import annotations

import collections
import json
import os
from typing import Sequence

import numpy as np
from absl import flags

from strokenet_tf import cli

TOOL = "strokenet_tf.data.difficulty"
ISLES_REFERENCE = {"median_lesion_ml": 15.2, "threshold_dice": (0.25, 0.35), "best_networks_dice": (0.51, 0.58)}


def _stats(values: Sequence[float]) -> dict:
    values = np.asarray(values, np.float64)
    return {"n": int(values.size), "mean": float(values.mean()), "std": float(values.std(ddof=1)) if values.size > 1 else 0.0,
            "median": float(np.median(values)), "q25": float(np.percentile(values, 25)),
            "q75": float(np.percentile(values, 75)), "min": float(values.min()), "max": float(values.max())}


def difficulty_report(data_dir: str, split: str = "TRAINING", num_folds: int = 5, seed: int = 0) -> dict:
    """Reads every labelled case under data_dir/split and computes the report (see the module docstring)."""
    from strokenet_tf import baselines, metrics
    from strokenet_tf.data import folds, isles, preprocess

    cases = isles.load_cases(data_dir, split=split, require_label=True)
    if len(cases) < num_folds:
        raise ValueError(f"--data_dir={data_dir}: {len(cases)} labelled cases, fewer than --num_folds={num_folds}")
    channels = tuple(cases[0].channels)
    per_case = {}
    for case in cases:
        spacing = case.spacing_mm
        rapid = baselines.rapid_core_of_case(case)
        record = _synthetic_record(case.source_files)
        per_case[case.case_id] = {
            "lesion_ml": metrics.volume_ml(case.label, spacing), "depth": int(case.image.shape[0]),
            "rapid_dice": metrics.dice(rapid, case.label), "centre": record.get("centre", "unknown"),
            "lesion_type": record.get("lesion_type", "unknown"),
        }
    prepared = {case.case_id: preprocess.prepare_case(case) for case in cases}
    ids = list(prepared)
    values = {case_id: baselines.sorted_values(case) for case_id, case in prepared.items()}  # once for all folds
    rules = []
    for fold in range(num_folds):
        train_ids, held_ids = folds.split_folds(ids, num_folds, fold, seed)
        rule = baselines.fit_threshold_rule([prepared[i] for i in train_ids], channels,
                                            [values[i] for i in train_ids])
        rules.append(rule.describe())
        for case_id in held_ids:
            case = prepared[case_id]
            per_case[case_id]["threshold_dice"] = metrics.dice(rule.apply(case.image, channels), case.label)
    table = lambda key: _stats([c[key] for c in per_case.values()])  # noqa: E731
    groups = {}
    for field in ("centre", "lesion_type"):
        by = collections.defaultdict(list)
        for record in per_case.values():
            by[record[field]].append(record)
        groups[field] = {name: {"n": len(rs), "median_lesion_ml": float(np.median([r["lesion_ml"] for r in rs])),
                                "rapid_dice": float(np.mean([r["rapid_dice"] for r in rs])),
                                "threshold_dice": float(np.mean([r["threshold_dice"] for r in rs]))}
                         for name, rs in sorted(by.items())}
    return {
        "data_dir": os.path.abspath(data_dir), "split": split, "num_cases": len(cases), "num_folds": num_folds,
        "lesion_ml": table("lesion_ml"), "depth_mix": dict(sorted(collections.Counter(c["depth"] for c in per_case.values()).items())),
        "rapid_dice": table("rapid_dice"), "threshold_dice": table("threshold_dice"), "threshold_rules": rules,
        "by_centre": groups["centre"], "by_lesion_type": groups["lesion_type"], "isles_2018": ISLES_REFERENCE,
        "per_case": per_case,
    }


def _synthetic_record(source_files) -> dict:
    """The generator's record of a synthetic case (centre, lesion type), or {} for real data."""
    from strokenet_tf.data import synthesis

    any_file = next(iter(source_files.values()))
    marker = os.path.join(os.path.dirname(os.path.dirname(any_file)), synthesis.MARKER_FILE)
    try:
        with open(marker, encoding="utf-8") as stream:
            return json.load(stream)
    except (OSError, ValueError):
        return {}


def format_report(report: dict) -> str:
    """The table a person reads (also what the README shows)."""
    v, r, t = report["lesion_ml"], report["rapid_dice"], report["threshold_dice"]
    depth = ", ".join(f"{d}: {n}" for d, n in report["depth_mix"].items())
    lines = [
        f"{report['num_cases']} cases in {report['data_dir']}/{report['split']}",
        f"{'':38s}{'this data':>24s}   ISLES 2018",
        f"{'lesion volume, median [IQR] (mL)':38s}{v['median']:>8.1f} [{v['q25']:.1f}-{v['q75']:.1f}]{'':7s}   15.2",
        f"{'lesion volume, range (mL)':38s}{v['min']:>8.2f} - {v['max']:.1f}",
        f"{'slab depths (slices: cases)':38s}{depth}",
        f"{'RAPID-like rule Dice, mean +- sd':38s}{r['mean']:>8.3f} +- {r['std']:.3f}{'':7s}   ~0.25-0.33",
        f"{'best single-map threshold (out of fold)':38s}{t['mean']:>8.3f} +- {t['std']:.3f}{'':7s}   ~0.29-0.30",
    ]
    for field, title in (("by_centre", "centre"), ("by_lesion_type", "lesion type")):
        for name, g in report[field].items():
            lines.append(f"  {title} {name:14s} n={g['n']:<3d} median {g['median_lesion_ml']:6.1f} mL  "
                         f"RAPID {g['rapid_dice']:.3f}  threshold {g['threshold_dice']:.3f}")
    return "\n".join(lines)


def define_flags(flag_values: flags.FlagValues = flags.FLAGS) -> None:
    cli.define_shared(flag_values, "data_dir", "output",
                      help={"data_dir": "Dataset root (ISLES layout) with labelled cases.",
                            "output": "Optional JSON file for the full report."})
    flags.DEFINE_string("split", "TRAINING", "Split folder to read.", flag_values=flag_values)
    flags.DEFINE_integer("num_folds", 5, "Folds for the out-of-fold threshold fit.", lower_bound=2, flag_values=flag_values)
    flags.DEFINE_integer("seed", 0, "Fold split seed.", flag_values=flag_values)
    flags.mark_flag_as_required("data_dir", flag_values=flag_values)


def main(argv: Sequence[str]) -> None:
    cli.reject_arguments(TOOL, argv)
    from strokenet_tf.data import atomic, isles

    config = flags.FLAGS
    if not os.path.isdir(config.data_dir):
        cli.fail(TOOL, f"--data_dir={config.data_dir}: not a folder")
    try:
        report = difficulty_report(config.data_dir, config.split, config.num_folds, config.seed)
    except (ValueError, isles.IslesFormatError) as error:
        cli.fail(TOOL, cli.first_line(str(error)))
    print(format_report(report))
    if config.output:
        try:
            atomic.atomic_write_text(config.output, json.dumps(report, indent=1) + "\n")
        except OSError as error:
            cli.fail(TOOL, cli.os_error_line(error, config.output))
        print(f"written to {config.output}")


if __name__ == "__main__":
    cli.run(main, define_flags)
