r"""Fits the calibration map of a cross-validation folder on its out-of-fold probabilities.

Usage:
    python -m strokenet_tf.calibrate --cv_dir=runs/cv [--nomirror]

`cross_validate` does this itself after its folds; this entry point serves folders made before it did, or a
re-fit. Folds without `evaluation/out_of_fold.npz` get it (each fold's model on the cases it held out).
Writes CV_DIR/calibration.json (the map, ECE before/after, 15 bins, brain voxels) and CV_DIR/reliability.png;
`predict`, `evaluate` and `export` of the folder then apply the map in the graph.
"""

from __future__ import annotations

import os

from absl import app, flags

from strokenet_tf import cli

FLAGS = flags.FLAGS
TOOL = "strokenet_tf.calibrate"


def define_flags(flag_values: flags.FlagValues = FLAGS) -> None:
    fv = {"flag_values": flag_values}
    flags.DEFINE_string("cv_dir", None, "cross_validate MODEL_DIR (fold_K folders).", **fv)
    flags.DEFINE_enum("source", "best", ["best", "latest"], "Weights of each fold.", **fv)
    flags.DEFINE_boolean("mirror", True, "Out-of-fold probabilities with left-right mirroring (as the ensemble "
                         "predicts by default).", **fv)
    flags.DEFINE_enum("method", None, ["temperature", "platt", "isotonic"], "Calibration map (default: the lowest "
                      "out-of-fold ECE).", **fv)
    flags.mark_flags_as_required(["cv_dir"], flag_values=flag_values)


def main(argv, flag_values: flags.FlagValues = FLAGS) -> None:
    cli.reject_arguments(TOOL, argv)
    if not os.path.isdir(flag_values.cv_dir):
        cli.fail(TOOL, f"--cv_dir {flag_values.cv_dir}: no such folder")
    from strokenet_tf import calibration, evaluation, inference

    try:
        document = calibration.calibrate_cross_validation(flag_values.cv_dir, flag_values.source, flag_values.mirror,
                                                          flag_values.method)
    except (ValueError, inference.ModelLoadError, evaluation.EvaluationError) as error:
        cli.fail(TOOL, cli.first_line(error, type(error).__name__))
    except OSError as error:
        cli.fail(TOOL, cli.os_error_line(error, flag_values.cv_dir))
    print(f"calibration {document['calibration']['method']}; ECE ({document['num_bins']} bins, {document['n_voxels']} "
          f"brain voxels, out of fold) {document['ece_before']:.4f} -> {document['ece_after']:.4f}; "
          f"{os.path.join(flag_values.cv_dir, calibration.CALIBRATION_FILE)}, "
          f"{os.path.join(flag_values.cv_dir, calibration.RELIABILITY_FILE)}")


if __name__ == "__main__":
    define_flags()
    app.run(main)
