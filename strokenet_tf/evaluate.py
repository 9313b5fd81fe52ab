r"""Scores a trained model on labelled ISLES-style cases: per-case CSV, summary JSON, printed table.

Usage:
    python -m strokenet_tf.evaluate --model=runs/fold0 --fold=0 --output_dir=runs/fold0/eval_fold0
    python -m strokenet_tf.evaluate --model=export/strokenet/1 --data_dir=/data/ISLES2018 --output_dir=eval_all

--model is a training run folder (best.keras, or --model_source=latest), a .keras file or an exported SavedModel
version folder. --data_dir defaults to the run's data_dir. With --fold=K only the cases the run held out as
fold K are scored: the split is re-created from the run's config.json (num_folds, seed, patient_map; flags
override). Metrics and the empty-mask rule: see `strokenet_tf.evaluation` and `strokenet_tf.metrics`.
Exit codes: 0 done, 1 some case failed (reported and skipped), 2 bad flags or inputs.
"""

from __future__ import annotations

import dataclasses
import os

from absl import flags

from strokenet_tf import cli

FLAGS = flags.FLAGS
TOOL = "strokenet_tf.evaluate"


def define_flags(flag_values: flags.FlagValues = FLAGS) -> None:
    """Defines the evaluator's flags on `flag_values` (by `__main__`; tests use their own FlagValues)."""
    fv = {"flag_values": flag_values}
    cli.define_shared(flag_values, "model", "model_source", "mirror", "precision", "threshold", "data_dir",
                      "output_dir", "overwrite", "progress",
                      help={"data_dir": "Dataset root, split folder or case folder (default: the run's).",
                            "output_dir": "Where per_case.csv and summary.json go.",
                            "overwrite": "Replace existing per_case.csv / summary.json.",
                            "progress": "Show a progress bar over cases."})
    flags.DEFINE_string("split", None, "Split to score, TRAINING or TESTING (default: the run's, else TRAINING).",
                        **fv)
    flags.DEFINE_integer("fold", None, "Score only the cases of this held-out fold (default: every case).", **fv)
    flags.DEFINE_integer("num_folds", None, "Folds of the split (default: the run's).", **fv)
    flags.DEFINE_integer("seed", None, "Seed of the split (default: the run's).", **fv)
    flags.DEFINE_string("patient_map", None, "case_id,patient_id CSV of the split (default: the run's).", **fv)
    flags.DEFINE_string("empty_score", "zero", "Precision/recall when their denominator is empty and the other "
                        "mask is not: zero, one, nan or a number.", **fv)
    flags.DEFINE_string("empty_distance", "nan", "Hausdorff distance when exactly one mask is empty: nan (left out "
                        "of the mean, counted as n_nan), inf, zero or a number in mm.", **fv)
    flags.mark_flags_as_required(["model", "output_dir"], flag_values=flag_values)


@dataclasses.dataclass(frozen=True)
class EvaluateConfig:
    """An evaluation run, filled from flags (None = take it from the run's config.json)."""

    model: str
    output_dir: str
    model_source: str = "best"
    threshold: float | None = None
    mirror: bool | None = None
    precision: str = "auto"
    data_dir: str | None = None
    split: str | None = None
    fold: int | None = None
    num_folds: int | None = None
    seed: int | None = None
    patient_map: str | None = None
    empty_score: str | float = "zero"
    empty_distance: str | float = "nan"
    overwrite: bool = False
    progress: bool = True


class UsageError(ValueError):
    """Bad flag value; one line."""


def _rule(text: str, flag: str, names: tuple[str, ...]):
    if text in names:
        return text
    try:
        return float(text)
    except ValueError:
        raise UsageError(f"--{flag} must be one of {', '.join(names)} or a number, got {text!r}") from None


def config_from_flags(flag_values) -> EvaluateConfig:
    threshold = flag_values.threshold
    if threshold is not None and not 0.0 < threshold < 1.0:
        raise UsageError(f"--threshold must be in (0, 1), got {threshold}")
    return EvaluateConfig(
        model=flag_values.model, output_dir=flag_values.output_dir, model_source=flag_values.model_source,
        threshold=threshold, mirror=cli.mirror_setting(flag_values.mirror),
        precision=flag_values.precision,
        data_dir=flag_values.data_dir, split=flag_values.split, fold=flag_values.fold,
        num_folds=flag_values.num_folds, seed=flag_values.seed, patient_map=flag_values.patient_map,
        empty_score=_rule(flag_values.empty_score, "empty_score", ("zero", "one", "nan")),
        empty_distance=_rule(flag_values.empty_distance, "empty_distance", ("nan", "inf", "zero")),
        overwrite=flag_values.overwrite, progress=flag_values.progress,
    )


def _warn(message: str) -> None:
    cli.warn(TOOL, message)


def run(config: EvaluateConfig, segmenter=None) -> tuple[dict, list]:
    """Scores the cases of `config` and writes the outputs.

    Returns:
        (summary document as written to summary.json, list of `inference.CaseFailure`).

    Raises:
        UsageError, evaluation.EvaluationError, inference.ModelLoadError: the run cannot start (one line).
    """
    import keras

    from strokenet_tf import evaluation, metrics, prediction

    evaluation.check_outputs(config.output_dir, config.overwrite)
    if segmenter is None:
        segmenter = prediction.load_model(config.model, config.model_source, config.threshold, config.mirror,
                                          config.precision)
    if len(getattr(segmenter, "models", ())) > 1 and config.fold is not None:
        _warn("--fold with an ensemble: every fold's cases trained some member, so the scores are optimistic")
    run_config = getattr(getattr(segmenter, "trained", None), "run_config", None) or {}
    data_dir = config.data_dir or run_config.get("data_dir")
    if not data_dir:
        raise UsageError("--data_dir is required: the model has no training run config to read it from")
    split = config.split or run_config.get("split") or "TRAINING"
    fold = None
    if config.fold is not None:
        fold = evaluation.fold_spec_from_run(
            run_config, config.fold, {"num_folds": config.num_folds, "seed": config.seed,
                                      "patient_map": config.patient_map})
    case_dirs = evaluation.select_case_dirs(data_dir, split, fold)
    os.makedirs(config.output_dir, exist_ok=True)  # an unwritable --output_dir fails here, not after the work
    rules = evaluation.EmptyRules(config.empty_score, config.empty_distance)
    progress = keras.utils.Progbar(len(case_dirs), verbose=1 if config.progress else 0, unit_name="case")
    rows, failures = evaluation.evaluate_cases(segmenter, case_dirs, rules,
                                               on_progress=lambda done, _: progress.update(done), warn=_warn)
    if not rows:
        raise evaluation.EvaluationError(f"no case could be scored ({len(failures)} failed)")
    summary = metrics.summarize(rows)
    source = getattr(segmenter, "source", None) or getattr(getattr(segmenter, "trained", None), "source", "")
    info = {
        "model": str(source), "threshold": getattr(segmenter, "threshold", None), "data_dir": str(data_dir),
        "ensemble": prediction.ensemble_info(segmenter),
        "split": split, "fold": dataclasses.asdict(fold) if fold else None,
        "empty_score": rules.empty_score, "empty_distance": rules.empty_distance,
        "n_cases": len(rows), "case_ids": [row["case_id"] for row in rows],
        "failed": [dataclasses.asdict(f) for f in failures],
    }
    evaluation.write_outputs(config.output_dir, rows, summary, info)
    return {**info, "metrics": summary}, failures


def _fail(message, code: int = 2) -> None:
    cli.fail(TOOL, message, code)


def main(argv, flag_values: flags.FlagValues = FLAGS):
    cli.reject_arguments(TOOL, argv)
    try:
        config = config_from_flags(flag_values)
    except UsageError as error:
        _fail(error)
    from strokenet_tf import evaluation, inference  # TensorFlow loads from here on

    try:
        document, failures = run(config)
    except (UsageError, evaluation.EvaluationError, inference.ModelLoadError) as error:
        _fail(error)
    except OSError as error:
        _fail(cli.os_error_line(error, config.output_dir))
    fold = document["fold"]
    where = f"fold {fold['fold']} of {fold['num_folds']}" if fold else f"all {document['split']} cases"
    print(f"{document['model']} on {document['n_cases']} case(s) of {document['data_dir']} ({where}):")
    print(evaluation.format_table(document["metrics"]))
    paths = evaluation.output_paths(config.output_dir)
    print(f"per-case metrics: {paths['per_case']}; summary: {paths['summary']}")
    if failures:
        _fail(f"{len(failures)} case(s) failed: " + "; ".join(f"{f.case_id} ({f.message})" for f in failures),
              code=1)


if __name__ == "__main__":
    cli.run(main, define_flags)
