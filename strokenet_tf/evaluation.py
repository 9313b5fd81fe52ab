"""Evaluation of a trained model on labelled cases (the library half of `strokenet_tf.evaluate`).

Each case is read raw and segmented by the shared inference path (`inference.Segmenter.predict_case` or the
exported SavedModel's signature), then scored by `metrics.case_metrics` in mm / mL with the case's header
spacing. Results: a per-case CSV (one row per case, the columns of `metrics.CASE_METRIC_KEYS`), a summary
JSON (mean, std, median, n, n_nan of every metric, `metrics.summarize`) and a printed table.

Empty-mask rule (default, `EmptyRules`): voxel and lesion precision of an empty prediction on a case with a
lesion is 0 (`empty_score="zero"`, as validation during training: a model cannot raise its precision by
predicting nothing); Hausdorff distances with exactly one empty mask are NaN (`empty_distance="nan"`), left
out of the mean and counted in `n_nan`. Dice is 0 then and AVD is always defined. Other rules: see `metrics`.

Fold selection re-creates the training split (`data.folds.split_folds` over the case folder names of the
split, with the run's num_folds, seed and patient map), so `--fold=K` scores exactly the cases that run K held
out.

The single-map threshold baseline to report beside these numbers is `strokenet_tf.baselines` (fitted on the
training fold, scored on the same held-out fold).
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
import os
import pathlib
import time
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

import numpy as np

from strokenet_tf import errors, metrics
from strokenet_tf.data import atomic, folds, isles

if TYPE_CHECKING:
    from strokenet_tf.inference import CaseFailure

PER_CASE_FILE = "per_case.csv"
SUMMARY_FILE = "summary.json"
TABLE_METRICS = ("dice", "precision", "recall", "hd95_mm", "hd_max_mm", "avd_ml", "lesion_precision",
                 "lesion_recall", "lesion_f1", "volume_pred_ml", "volume_true_ml")
CSV_COLUMNS = ("case_id",) + metrics.CASE_METRIC_KEYS + ("predict_s",)


class EvaluationError(errors.InputError):
    """An evaluation that cannot start (no cases, outputs that exist, unknown fold settings); one line."""


@dataclasses.dataclass(frozen=True)
class EmptyRules:
    """How metrics score empty masks (see the module docstring and `metrics`)."""

    empty_score: str | float = "zero"
    empty_distance: str | float = "nan"


@dataclasses.dataclass(frozen=True)
class FoldSpec:
    """Which cross-validation fold to score: the split of `data.folds.split_folds`."""

    fold: int
    num_folds: int
    seed: int
    patient_map: str | None = None


def select_case_dirs(data_dir: str, split: str | None, fold: FoldSpec | None = None) -> list[pathlib.Path]:
    """The case folders to score: every case of the split, or the held-out cases of one fold.

    Raises:
        EvaluationError: no such folder, no case, or bad fold settings (one line).
    """
    try:
        case_dirs = isles.find_case_dirs(data_dir, split=split)
    except (isles.IslesFormatError, ValueError) as error:
        raise EvaluationError("data_dir", f"{data_dir}: {error}") from None
    if not case_dirs:
        raise EvaluationError("data_dir", f"{data_dir}: no ISLES case folders{f' in split {split}' if split else ''}")
    if fold is None:
        return case_dirs
    patient_map = None
    try:
        if fold.patient_map:
            patient_map = folds.read_patient_map(fold.patient_map)
        _, val_ids = folds.split_folds([d.name for d in case_dirs], fold.num_folds, fold.fold, fold.seed,
                                       patient_map)
    except folds.FoldError as error:
        raise EvaluationError("fold", f": {error} ({len(case_dirs)} cases in {data_dir})") from None
    keep = set(val_ids)
    return [d for d in case_dirs if d.name in keep]


def fold_spec_from_run(run_config: Mapping[str, Any], fold: int, overrides: Mapping[str, Any]) -> FoldSpec:
    """The fold split of a training run (MODEL_DIR/config.json), with explicit flag values taking precedence.

    Raises:
        EvaluationError: a setting is neither in the run config nor given.
    """
    values = {}
    for name in ("num_folds", "seed", "patient_map"):
        value = overrides.get(name)
        if value is None:
            value = run_config.get(name)
        if value is None and name != "patient_map":
            raise EvaluationError("fold", f"needs {errors.ref(name)}: the model has no training run config to read it "
                                  "from")
        values[name] = value
    return FoldSpec(fold=fold, **values)


def evaluate_case(segmenter, case_dir, rules: EmptyRules = EmptyRules()) -> dict[str, Any]:
    """Reads, segments and scores one labelled case: {"case_id", metrics..., "predict_s"}.

    Raises:
        isles.IslesFormatError: unreadable case or no ground truth (one line naming the file).
    """
    case = isles.read_case(case_dir, segmenter.channels, require_label=True)
    started = time.perf_counter()
    _, mask = segmenter.predict_case(case)
    predict_s = time.perf_counter() - started
    row = {"case_id": case.case_id}
    row.update(metrics.case_metrics(mask, case.label, case.spacing_mm, empty_score=rules.empty_score,
                                    empty_distance=rules.empty_distance))
    row["predict_s"] = predict_s
    return row


def evaluate_cases(segmenter, case_dirs: Sequence, rules: EmptyRules = EmptyRules(),
                   on_progress: Callable[[int, str], None] = lambda done, case_id: None,
                   warn: Callable[[str], None] = lambda message: None) -> tuple[list[dict], list[CaseFailure]]:
    """Scores every case; a case that fails to read is reported through `warn`, skipped and returned."""
    import tensorflow as tf

    from strokenet_tf.inference import CaseFailure  # TensorFlow loads from here on

    rows, failures = [], []
    for done, case_dir in enumerate(case_dirs, start=1):
        case_id = pathlib.Path(case_dir).name
        try:
            rows.append(evaluate_case(segmenter, case_dir, rules))
        except (isles.IslesFormatError, ValueError, OSError, tf.errors.OpError) as error:
            message = " ".join(str(error).split()) or type(error).__name__
            failures.append(CaseFailure(case_id, message))
            warn(f"{case_id}: skipped: {message}")
        on_progress(done, case_id)
    return rows, failures


# --------------------------------------------------------------------------------------------- outputs


def json_safe(value: Any) -> Any:
    """NaN -> null and +-inf -> "inf"/"-inf", so the JSON is strict (readable by any parser)."""
    if isinstance(value, Mapping):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, (float, np.floating)):
        value = float(value)
        if math.isnan(value):
            return None
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return value
    if isinstance(value, np.integer):
        return int(value)
    return value


def per_case_csv(rows: Sequence[Mapping[str, Any]]) -> str:
    """CSV text with `CSV_COLUMNS` (floats with full precision, NaN as "nan")."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_COLUMNS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: (repr(float(v)) if isinstance(v, (float, np.floating)) else v) for k, v in row.items()})
    return buffer.getvalue()


def read_per_case_csv(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Inverse of `per_case_csv`: rows with numbers parsed (case_id stays a string)."""
    with open(path, newline="", encoding="utf-8") as stream:
        return [{k: (v if k == "case_id" else float(v)) for k, v in row.items()} for row in csv.DictReader(stream)]


def output_paths(output_dir: str | os.PathLike) -> dict[str, pathlib.Path]:
    return {"per_case": pathlib.Path(output_dir) / PER_CASE_FILE, "summary": pathlib.Path(output_dir) / SUMMARY_FILE}


def check_outputs(output_dir: str | os.PathLike, overwrite: bool) -> None:
    """Refuses, before any work, an `output_dir` that is a file and existing outputs unless `overwrite`.

    Raises:
        EvaluationError: one line naming the path.
    """
    folder = pathlib.Path(output_dir)
    if folder.exists() and not folder.is_dir():
        raise EvaluationError("output_dir", f"{folder} exists and is not a folder")
    for path in output_paths(output_dir).values():
        if path.exists() and not overwrite:
            raise EvaluationError(f"output {path} already exists; pass {errors.ref('overwrite')} to replace it")


def write_outputs(output_dir: str | os.PathLike, rows: Sequence[Mapping[str, Any]], summary: Mapping[str, Any],
                  info: Mapping[str, Any]) -> dict[str, pathlib.Path]:
    """Writes per_case.csv and summary.json ({**info, "metrics": summary}) atomically; returns their paths."""
    paths = output_paths(output_dir)
    paths["summary"].parent.mkdir(parents=True, exist_ok=True)
    atomic.atomic_write_text(paths["per_case"], per_case_csv(rows))
    document = {**info, "metrics": summary}
    atomic.atomic_write_text(paths["summary"], json.dumps(json_safe(document), indent=2, allow_nan=False) + "\n")
    return paths


def format_table(summary: Mapping[str, Mapping[str, float]], keys: Sequence[str] = TABLE_METRICS) -> str:
    """Plain-text table: metric | mean | std | median | n | n_nan."""
    lines = [f"{'metric':<18}{'mean':>10}{'std':>10}{'median':>10}{'n':>5}{'n_nan':>7}"]
    for key in keys:
        if key in summary:
            s = summary[key]
            lines.append(f"{key:<18}{s['mean']:>10.4f}{s['std']:>10.4f}{s['median']:>10.4f}{s['n']:>5d}"
                         f"{s['n_nan']:>7d}")
    return "\n".join(lines)
