r"""K-fold cross-validation: trains every fold, scores its held-out cases, reports the mean over folds.

Usage:
    python -m strokenet_tf.cross_validate --flagfile=experiments/default.flags \
        --data_dir=/data/ISLES2018 --model_dir=runs/cv

Takes every flag of `strokenet_tf.train` (the same TrainConfig, built by `train.config_from_flags`, so the
experiments' flagfiles work); --fold is ignored and --folds picks a subset (default: all --num_folds). Fold K
trains into MODEL_DIR/fold_K and is scored on the cases it held out (`evaluation`, the same code as
`strokenet_tf.evaluate --fold=K`) into MODEL_DIR/fold_K/evaluation/. Then
MODEL_DIR/cv_summary.json and cv_summary.csv hold, per fold, the mean of every metric, and their mean and std
over folds, the form of the StrokeNet report (Dice, recall, precision in %), plus HD95, AVD and lesion F1.

Resumable: a fold whose evaluation/summary.json exists is skipped (after checking that its run has the same
settings); an interrupted fold resumes from its last checkpoint. The model scored is best.keras (chosen on the
held-out fold itself, as published cross-validation numbers usually are: slightly optimistic) unless
--model_source=latest.
"""

from __future__ import annotations

import os

from absl import flags
from absl import logging as absl_logging

from strokenet_tf import cli
from strokenet_tf import config as config_lib
from strokenet_tf import cross_validation
from strokenet_tf import curriculum as curriculum_lib
from strokenet_tf import train
from strokenet_tf.cross_validation import CV_SUMMARY_CSV, CV_SUMMARY_JSON, EVAL_SUBDIR, CrossValidationConfig

FLAGS = flags.FLAGS
TOOL = "strokenet_tf.cross_validate"
FLAG_NAMES = {"eval_model_source": "model_source"}  # CrossValidationConfig field -> its flag, where they differ


def define_flags(flag_values: flags.FlagValues = FLAGS) -> None:
    """The trainer's flags plus --folds and --model_source (--help lists them all)."""
    train.define_flags(flag_values)
    flags.DEFINE_list("folds", None, "Folds to run, e.g. 0,1 (default: all of --num_folds).", flag_values=flag_values)
    cli.define_shared(flag_values, "model_source", help={"model_source": "Model of each fold that is scored and "
                                                         "calibrated: best (best.keras) or latest (newest checkpoint)."})
    cli.define_old_names(flag_values, TOOL, {"eval_model_source": "model_source"})


def config_from_flags(flag_values) -> CrossValidationConfig:
    """Raises config_lib.ConfigError / curriculum.CurriculumError: one line naming the flag."""
    if flag_values["fold"].present:  # e.g. from an experiment's flagfile, written for strokenet_tf.train
        absl_logging.warning("--fold=%d is ignored: cross-validation runs the folds of --folds (default: all)",
                             flag_values.fold)
    base = train.config_from_flags(flag_values)
    if flag_values.folds:
        try:
            selected = tuple(sorted({int(f) for f in flag_values.folds}))
        except ValueError:
            raise config_lib.ConfigError(f"--folds: expected integers, got {','.join(flag_values.folds)}") from None
        bad = [f for f in selected if not 0 <= f < base.num_folds]
        if bad:
            raise config_lib.ConfigError(f"--folds: {bad[0]} is not in [0, {base.num_folds - 1}]")
    else:
        selected = tuple(range(base.num_folds))
    return CrossValidationConfig(base, selected, flag_values.model_source)


def _warn(message: str) -> None:
    cli.warn(TOOL, message)


def _fail(message) -> None:
    cli.fail(TOOL, message, flag_names=FLAG_NAMES)


def main(argv, flag_values: flags.FlagValues = FLAGS):
    cli.reject_arguments(TOOL, argv)
    try:
        config = config_from_flags(flag_values)
    except (config_lib.ConfigError, curriculum_lib.CurriculumError) as error:
        _fail(error)
    from strokenet_tf import evaluation, inference

    absl_logging.get_absl_handler().addFilter(train.package_info_filter)
    try:
        summary = cross_validation.run(config, warn=_warn)
    except train.user_errors() + (evaluation.EvaluationError, inference.ModelLoadError) as error:
        _fail(error)
    except OSError as error:
        _fail(cli.os_error_line(error, config.train.model_dir))
    print(f"Cross-validation, {len(config.folds)} of {config.train.num_folds} folds, {summary['n_cases']} cases "
          f"(per-fold means; mean and std over folds):")
    print(cross_validation.format_cv_table(summary))
    report = ", ".join(f"{cross_validation.HEADERS[k].split()[0]} {v:.2f}%"
                       for k, v in cross_validation.STROKENET_REPORT.items())
    print(f"StrokeNet report (ISLES 2018 training set, 5-fold CV): {report}")
    if "calibration" in summary:
        fitted = summary["calibration"]
        print(f"Calibration on out-of-fold brain voxels: {fitted['calibration']['method']}, ECE "
              f"{fitted['ece_before']:.4f} -> {fitted['ece_after']:.4f} ({fitted['num_bins']} bins); "
              f"{os.path.join(config.train.model_dir, 'calibration.json')}, reliability.png")
    print(f"Summary: {os.path.join(config.train.model_dir, CV_SUMMARY_JSON)}, "
          f"{os.path.join(config.train.model_dir, CV_SUMMARY_CSV)}; per case: "
          f"{os.path.join(config.train.model_dir, 'fold_K', EVAL_SUBDIR, 'per_case.csv')}")


if __name__ == "__main__":
    cli.run(main, define_flags)
