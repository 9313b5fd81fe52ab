"""K-fold cross-validation: trains every fold, scores its held-out cases, summarises the folds.

Fold K trains into MODEL_DIR/fold_K (`training.loop.train`) and is scored on the cases it held out
(`evaluation`, the same code as `strokenet_tf.evaluate --fold=K`) into MODEL_DIR/fold_K/evaluation/. Then
MODEL_DIR/cv_summary.json and cv_summary.csv hold, per fold, the mean of every metric, and their mean and std
over folds, the form of the StrokeNet report (Dice, recall, precision in %), plus HD95, AVD and lesion F1; the
folds' out-of-fold probabilities fit the ensemble's calibration (`calibration`). Beside the network's Dice, each
fold has the simple baseline's on the same cases: the best single-map threshold rule fitted on the fold's
training cases (`baselines`).

Resumable: a fold whose evaluation/summary.json exists is skipped (after checking that its run has the same
settings); an interrupted fold resumes from its last checkpoint. The command is `strokenet_tf.cross_validate`.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from typing import Any, Mapping, Sequence

from absl import logging as absl_logging

from strokenet_tf import cli
from strokenet_tf import config as config_lib
from strokenet_tf import metrics

EVAL_SUBDIR = "evaluation"
CV_SUMMARY_JSON = "cv_summary.json"
CV_SUMMARY_CSV = "cv_summary.csv"
REPORT_METRICS = ("dice", "recall", "precision", "hd95_mm", "hd_max_mm", "avd_ml", "lesion_precision",
                  "lesion_recall", "lesion_f1")
# The cv table's columns: the report metrics, with the threshold baseline's Dice on the same cases beside the Dice.
TABLE_METRICS = ("dice", "threshold_dice") + REPORT_METRICS[1:]
PERCENT_METRICS = ("dice", "threshold_dice", "recall", "precision")
STROKENET_REPORT = {"dice": 52.26, "recall": 55.50, "precision": 58.84}  # % (Table in the StrokeNet report)


@dataclasses.dataclass(frozen=True)
class CrossValidationConfig:
    """Attributes: train (the run of fold 0, model_dir = the CV root), folds, eval_model_source."""

    train: config_lib.TrainConfig
    folds: tuple[int, ...]
    eval_model_source: str = "best"

    def fold_config(self, fold: int) -> config_lib.TrainConfig:
        return dataclasses.replace(self.train, fold=fold, model_dir=fold_dir(self.train.model_dir, fold))


def fold_dir(model_dir: str, fold: int) -> str:
    return os.path.join(model_dir, f"fold_{fold}")


def _read_json(path: str) -> dict[str, Any]:
    with open(path, encoding="utf-8") as stream:
        return json.load(stream)


def run_fold(config: CrossValidationConfig, fold: int, warn=lambda message: None) -> dict[str, Any]:
    """Trains (or resumes) one fold and scores its held-out cases; skips a fold that is already scored.

    Returns:
        The fold's summary document (as MODEL_DIR/fold_K/evaluation/summary.json).
    """
    from strokenet_tf import calibration, evaluation, inference
    from strokenet_tf.training import checkpointing, loop

    fold_config = config.fold_config(fold)
    eval_dir = os.path.join(fold_config.model_dir, EVAL_SUBDIR)
    summary_path = evaluation.output_paths(eval_dir)["summary"]
    if summary_path.is_file():
        # Refuses a fold folder of another run, as training would.
        checkpointing.check_or_write_config(fold_config.model_dir, fold_config.to_dict(), config_lib.RUNTIME_FIELDS,
                                            write=False)
        absl_logging.info("fold %d already evaluated (%s): skipped", fold, summary_path)
        return _read_json(str(summary_path))
    result = loop.train(fold_config)
    segmenter = inference.Segmenter.from_run(fold_config.model_dir, config.eval_model_source)
    spec = evaluation.FoldSpec(fold, fold_config.num_folds, fold_config.seed, fold_config.patient_map)
    case_dirs = evaluation.select_case_dirs(fold_config.data_dir, fold_config.split, spec)
    if sorted(d.name for d in case_dirs) != sorted(result.val_ids):
        raise evaluation.EvaluationError(f"fold {fold}: evaluation cases {[d.name for d in case_dirs]} differ from "
                                         f"the run's validation cases {result.val_ids}")
    rows, failures = evaluation.evaluate_cases(segmenter, case_dirs, warn=warn)
    summary = metrics.summarize(rows)
    info = {"model": segmenter.trained.source, "threshold": segmenter.threshold, "data_dir": fold_config.data_dir,
            "split": fold_config.split, "fold": dataclasses.asdict(spec),
            "empty_score": evaluation.EmptyRules().empty_score,
            "empty_distance": evaluation.EmptyRules().empty_distance, "n_cases": len(rows),
            "case_ids": [row["case_id"] for row in rows], "failed": [dataclasses.asdict(f) for f in failures],
            "threshold_baseline": _threshold_baseline(fold_config)}
    # Out-of-fold probabilities (mirrored, as the ensemble predicts) for the calibration; kept before the summary
    # marks the fold finished.
    calibration.write_out_of_fold(eval_dir, inference.Segmenter.from_trained(segmenter.trained, mirror=True),
                                  case_dirs)
    evaluation.write_outputs(eval_dir, rows, summary, info)
    return _read_json(str(summary_path))


def _threshold_baseline(fold_config: config_lib.TrainConfig) -> dict[str, Any]:
    """The single-map threshold rule fitted on the fold's training cases, scored on its held-out cases
    (`baselines`): the simple baseline beside the network, on the same cases."""
    from strokenet_tf import baselines
    from strokenet_tf.training import loop

    train_cases, val_cases = loop.load_fold(fold_config)  # the run's own prepared cases, kept by the loop
    result = baselines.evaluate_threshold_baseline(train_cases, val_cases, fold_config.channels)
    return {"rule": result["rule"], "dice": result["val_dice"], "train_dice": result["train_dice"],
            "dice_per_case": result["val_dice_per_case"]}


def _mean_std(values: Sequence[float]) -> dict[str, float | int]:
    kept = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    if not kept:
        return {"mean": math.nan, "std": math.nan, "n_folds": 0}
    mean = sum(kept) / len(kept)
    return {"mean": mean, "std": math.sqrt(sum((v - mean) ** 2 for v in kept) / len(kept)), "n_folds": len(kept)}


def aggregate(fold_documents: Mapping[int, Mapping[str, Any]]) -> dict[str, Any]:
    """Per-fold means and their mean and (population) std over folds for `TABLE_METRICS` (the threshold
    baseline's mean Dice on the fold's cases, when the fold document has it)."""
    per_fold = {}
    for fold, document in sorted(fold_documents.items()):
        means = {}
        for key in REPORT_METRICS:
            value = document["metrics"].get(key, {}).get("mean")
            means[key] = math.nan if value is None else float(value)
        threshold = document.get("threshold_baseline", {}).get("dice")
        means["threshold_dice"] = math.nan if threshold is None else float(threshold)
        per_fold[fold] = {"n_cases": document["n_cases"], **means}
    over_folds = {key: _mean_std([row[key] for row in per_fold.values()]) for key in TABLE_METRICS}
    return {"folds": per_fold, "mean_over_folds": over_folds,
            "n_cases": sum(row["n_cases"] for row in per_fold.values())}


def _cell(key: str, value: float) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "nan"
    return f"{100.0 * value:.2f}" if key in PERCENT_METRICS else f"{value:.3f}" if "lesion" in key else f"{value:.2f}"


HEADERS = {"dice": "Dice %", "threshold_dice": "threshold Dice %", "recall": "Recall %", "precision": "Precision %", "hd95_mm": "HD95 mm",
            "hd_max_mm": "HDmax mm", "avd_ml": "AVD mL", "lesion_precision": "lesion P", "lesion_recall": "lesion R",
            "lesion_f1": "lesion F1"}


def cv_rows(summary: Mapping[str, Any]) -> list[list[str]]:
    """Table rows: a header, one row per fold, the mean and std over folds (Dice/recall/precision in %)."""
    rows = [["fold", "cases"] + [HEADERS[k] for k in TABLE_METRICS]]
    for fold, row in summary["folds"].items():
        rows.append([str(fold), str(row["n_cases"])] + [_cell(k, row.get(k, math.nan)) for k in TABLE_METRICS])
    over = summary["mean_over_folds"]
    rows.append(["mean", str(summary["n_cases"])] + [_cell(k, over[k]["mean"]) for k in TABLE_METRICS])
    rows.append(["std", ""] + [_cell(k, over[k]["std"]) for k in TABLE_METRICS])
    return rows


def format_cv_table(summary: Mapping[str, Any]) -> str:
    rows = cv_rows(summary)
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(cell.rjust(width) for cell, width in zip(row, widths)) for row in rows)


CSV_HEADER = ["fold", "n_cases"] + [f"{k}_percent" if k in PERCENT_METRICS else k for k in TABLE_METRICS]


def write_summary(model_dir: str, summary: Mapping[str, Any]) -> tuple[str, str]:
    """Writes cv_summary.json (numbers as fractions, NaN as null) and cv_summary.csv (the printed table's rows,
    Dice/recall/precision in %, with machine-readable column names)."""
    from strokenet_tf import evaluation
    from strokenet_tf.data import atomic

    json_path, csv_path = os.path.join(model_dir, CV_SUMMARY_JSON), os.path.join(model_dir, CV_SUMMARY_CSV)
    document = {**summary, "folds": {str(k): v for k, v in summary["folds"].items()},
                "strokenet_report_percent": STROKENET_REPORT}
    atomic.atomic_write_text(json_path, json.dumps(evaluation.json_safe(document), indent=2, allow_nan=False) + "\n")
    rows = [CSV_HEADER] + cv_rows(summary)[1:]
    atomic.atomic_write_text(csv_path, "\n".join(",".join(row) for row in rows) + "\n")
    return json_path, csv_path


def run(config: CrossValidationConfig, warn=lambda message: None) -> dict[str, Any]:
    """Runs every selected fold, then writes and returns the cross-validation summary.

    `warn(message)` hears of cases that could not be scored and of a calibration that could not be fitted.
    """
    from strokenet_tf.training import run_lock

    with run_lock.hold(config.train.model_dir):  # one cross-validation per folder; each fold's train locks its own
        return _run_folds(config, warn)


def _run_folds(config: CrossValidationConfig, warn) -> dict[str, Any]:
    os.makedirs(config.train.model_dir, exist_ok=True)
    documents = {}
    for fold in config.folds:
        if config.train.verbose:
            print(f"=== fold {fold} ({config.folds.index(fold) + 1}/{len(config.folds)}) ===", flush=True)
        documents[fold] = run_fold(config, fold, warn=warn)
    summary = aggregate(documents)
    write_summary(config.train.model_dir, summary)
    try:
        summary["calibration"] = calibrate_cross_validation(config.train.model_dir, config.eval_model_source)
    except ValueError as error:
        warn(f"no calibration: {cli.first_line(error)}")
    return summary


def ensure_out_of_fold(fold_dir: str, source: str = "best", mirror: bool = True) -> str:
    """fold_K/evaluation/out_of_fold.npz of a cross-validation fold, computed (with the fold's own model, mirrored
    as the ensemble will be, on the cases it held out) when missing."""
    from strokenet_tf import calibration, evaluation, inference

    path = calibration.out_of_fold_path(fold_dir)
    if os.path.isfile(path):
        return path
    segmenter = inference.Segmenter.from_run(fold_dir, source, mirror=mirror)
    run = segmenter.trained.run_config
    spec = evaluation.FoldSpec(run["fold"], run["num_folds"], run["seed"], run.get("patient_map"))
    case_dirs = evaluation.select_case_dirs(run["data_dir"], run.get("split"), spec)
    return calibration.write_out_of_fold(os.path.dirname(path), segmenter, case_dirs)


def calibrate_cross_validation(cv_dir: str, source: str = "best", mirror: bool = True,
                               method: str | None = None) -> dict[str, Any]:
    """Out-of-fold probabilities of every fold of a `cross_validate` folder (kept, or computed when missing) ->
    `cv_dir/calibration.json` + `reliability.png` (see `calibration.calibrate`)."""
    from strokenet_tf import calibration, ensemble

    folds = [fold for fold in ensemble.fold_dirs(cv_dir) if os.path.isfile(os.path.join(fold, ensemble.EVAL_SUMMARY))]
    if not folds:
        raise ValueError(f"{cv_dir}: no finished cross-validation fold (fold_K/{ensemble.EVAL_SUMMARY})")
    paths = [ensure_out_of_fold(fold, source, mirror) for fold in folds]
    return calibration.calibrate(paths, cv_dir, method)
