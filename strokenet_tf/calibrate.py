r"""Fits the calibration map of a cross-validation folder on its out-of-fold probabilities.

Usage:
    python -m strokenet_tf.calibrate --model=runs/cv [--nomirror]

`cross_validate` does this itself after its folds; this entry point serves folders made before it did, or a
re-fit. Folds without `evaluation/out_of_fold.npz` get it (each fold's model on the cases it held out).
Writes MODEL/calibration.json (the map, ECE before/after, 15 bins, brain voxels) and MODEL/reliability.png;
`predict`, `evaluate` and `export` of the folder then apply the map in the graph.
"""

from __future__ import annotations

import os

from absl import flags

from strokenet_tf import cli

FLAGS = flags.FLAGS
TOOL = "strokenet_tf.calibrate"


def define_flags(flag_values: flags.FlagValues = FLAGS) -> None:
    fv = {"flag_values": flag_values}
    cli.define_shared(flag_values, "model", "model_source",
                      help={"model": "cross_validate folder (fold_K run folders) whose map is fitted.",
                            "model_source": "Weights of each fold: best (best.keras) or latest (newest "
                                            "checkpoint)."})
    flags.DEFINE_boolean("mirror", True, "Out-of-fold probabilities with left-right mirroring (as the ensemble "
                         "predicts by default).", **fv)
    flags.DEFINE_enum("method", None, ["temperature", "platt", "isotonic"], "Calibration map (default: the lowest "
                      "out-of-fold ECE).", **fv)
    flags.mark_flags_as_required(["model"], flag_values=flag_values)
    cli.define_old_names(flag_values, TOOL, {"cv_dir": "model", "source": "model_source"})


def main(argv, flag_values: flags.FlagValues = FLAGS) -> None:
    cli.reject_arguments(TOOL, argv)
    if not os.path.isdir(flag_values.model):
        cli.fail(TOOL, f"--model {flag_values.model}: no such folder")
    from strokenet_tf import calibration, cross_validation, evaluation, inference

    try:
        document = cross_validation.calibrate_cross_validation(flag_values.model, flag_values.model_source,
                                                               flag_values.mirror, flag_values.method)
    except (ValueError, inference.ModelLoadError, evaluation.EvaluationError) as error:
        cli.fail(TOOL, cli.first_line(cli.error_line(error), type(error).__name__))
    except OSError as error:
        cli.fail(TOOL, cli.os_error_line(error, flag_values.model))
    print(f"calibration {document['calibration']['method']}; ECE ({document['num_bins']} bins, {document['n_voxels']} "
          f"brain voxels, out of fold) {document['ece_before']:.4f} -> {document['ece_after']:.4f}; "
          f"{os.path.join(flag_values.model, calibration.CALIBRATION_FILE)}, "
          f"{os.path.join(flag_values.model, calibration.RELIABILITY_FILE)}")


if __name__ == "__main__":
    cli.run(main, define_flags)
