r"""Predicts lesion masks for ISLES-style CT perfusion cases (NIfTI in, NIfTI + PNG + JSON out).

Usage:
    python -m strokenet_tf.predict --model=runs/fold0 --input=/data/ISLES2018/TESTING --output_dir=predictions
    python -m strokenet_tf.predict --model=runs/fold0 --input=/data/case_7 --output_dir=out --save_probabilities
    python -m strokenet_tf.predict --model=export/strokenet/1 --ct=ct.nii --cbf=cbf.nii --cbv=cbv.nii \
        --mtt=mtt.nii --tmax=tmax.nii --output_dir=out

--model is a training run folder (best.keras, or --model_source=latest for the newest checkpoint), a .keras file,
a cross_validate folder or run folders separated by commas (an ensemble: mirrored and calibrated by default, see
`strokenet_tf.ensemble`), or an exported SavedModel version folder. Each case gets a uint8 mask in the input's
exact geometry, an uncertainty map, a montage PNG, a JSON report (lesion volume in mL, connected components, the
perfusion-mismatch report: research output, not a medical device) and optionally the probability map (see
`strokenet_tf.prediction`); a run of several cases also writes OUTPUT_DIR/summary.csv (one row per case). Exit codes: 0 all cases done, 1 some case failed (reported and skipped), 2 bad flags
or inputs that stop the whole run.
"""

from __future__ import annotations

import dataclasses
import os

from absl import flags

from strokenet_tf import cli
from strokenet_tf import montage as montage_lib
from strokenet_tf.data import isles

FLAGS = flags.FLAGS
TOOL = "strokenet_tf.predict"
MODALITY_FLAGS = {"ct": isles.CT, "cbf": isles.CBF, "cbv": isles.CBV, "mtt": isles.MTT, "tmax": isles.TMAX,
                  "pwi": isles.PWI}


def define_flags(flag_values: flags.FlagValues = FLAGS) -> None:
    """Defines the predictor's flags on `flag_values` (by `__main__`; tests use their own FlagValues)."""
    fv = {"flag_values": flag_values}
    cli.define_shared(flag_values, "model", "model_source", "mirror", "precision", "threshold", "output_dir",
                      "overwrite", "progress",
                      help={"output_dir": "Where the outputs go, one folder per case (never inside the input).",
                            "progress": "Show a progress bar over cases."})
    flags.DEFINE_boolean("save_uncertainty", True, "Write the uncertainty map (predictive entropy, bits).", **fv)
    flags.DEFINE_string("input", None, "A case folder, a folder of case folders, or an ISLES root.", **fv)
    for name, modality in MODALITY_FLAGS.items():
        flags.DEFINE_string(name, None, f"{modality} NIfTI file of one case (instead of --input).", **fv)
    flags.DEFINE_string("case_id", None, "Name of a case given as files (default: the folder holding them).", **fv)
    flags.DEFINE_boolean("save_probabilities", False, "Also write the float32 probability map.", **fv)
    flags.DEFINE_boolean("montage", True, "Write a PNG montage of axial slices with the lesion outlined.", **fv)
    flags.DEFINE_integer("montage_slices", montage_lib.DEFAULT_MAX_SLICES, "Most axial slices in the montage.",
                         lower_bound=1, **fv)
    flags.DEFINE_boolean("maps_from_4d", False, "Compute CBF/CBV/MTT/Tmax from CT_4DPWI (oSVD deconvolution) even "
                         "when the maps exist; cases without the maps get them from CT_4DPWI anyway.", **fv)
    flags.mark_flags_as_required(["model", "output_dir"], flag_values=flag_values)


@dataclasses.dataclass(frozen=True)
class PredictConfig:
    """A predict run, filled from flags.

    Attributes:
        model, model_source, threshold: which model (see `ensemble.load_segmenter`); threshold None = default.
        input: case folder / folder of cases, or None when `files` are given.
        files: modality name -> NIfTI file of one case, or {}.
        case_id: name of the explicit-files case (None: its folder's name).
        output_dir, save_probabilities, montage, montage_slices, overwrite: outputs (`prediction.OutputOptions`).
        progress: show a progress bar.
        maps_from_4d: compute the perfusion maps from CT_4DPWI for every case (`perfusion_input`).
    """

    model: str
    output_dir: str
    model_source: str = "best"
    threshold: float | None = None
    mirror: bool | None = None
    precision: str = "auto"
    save_uncertainty: bool = True
    input: str | None = None
    files: dict = dataclasses.field(default_factory=dict)
    case_id: str | None = None
    save_probabilities: bool = False
    montage: bool = True
    montage_slices: int = montage_lib.DEFAULT_MAX_SLICES
    overwrite: bool = False
    progress: bool = True
    maps_from_4d: bool = False


class UsageError(ValueError):
    """Bad flag combination; one line."""


def _check_paths(model: str, input_path: str | None, files: dict, output_dir: str) -> None:
    """Refuses missing paths before TensorFlow loads, so a typo fails in a fraction of a second."""
    if os.path.exists(output_dir) and not os.path.isdir(output_dir):
        raise UsageError(f"--output_dir {output_dir} exists and is not a folder")
    if not os.path.exists(model):
        raise UsageError(f"--model {model}: no such model folder or file")
    if input_path is not None and not os.path.isdir(input_path):
        if os.path.exists(input_path):
            raise UsageError(f"--input {input_path} is a file; give a case folder, or one case's maps as --ct --cbf "
                             "--cbv --mtt --tmax")
        raise UsageError(f"--input {input_path}: no such folder (give a case folder or a folder of case folders)")
    flag_of = {modality: name for name, modality in MODALITY_FLAGS.items()}
    for modality, path in files.items():
        if not os.path.isfile(path):
            problem = "is a folder; expected a NIfTI file" if os.path.exists(path) else "no such file"
            raise UsageError(f"--{flag_of[modality]} {path}: {problem}")


def config_from_flags(flag_values) -> PredictConfig:
    files = {modality: flag_values[name].value for name, modality in MODALITY_FLAGS.items()
             if flag_values[name].value is not None}
    if flag_values.input is not None and files:
        raise UsageError("give either --input or per-modality files (--ct --cbf --cbv --mtt --tmax), not both")
    if flag_values.input is None and not files:
        raise UsageError("no input: give --input (a case folder or a folder of cases) or --ct --cbf --cbv --mtt "
                         "--tmax")
    if flag_values.case_id is not None and not files:
        raise UsageError("--case_id names a case given as files; with --input the folder names are used")
    threshold = flag_values.threshold
    if threshold is not None and not 0.0 < threshold < 1.0:
        raise UsageError(f"--threshold must be in (0, 1), got {threshold}")
    _check_paths(flag_values.model, flag_values.input, files, flag_values.output_dir)
    return PredictConfig(
        model=flag_values.model, output_dir=flag_values.output_dir, model_source=flag_values.model_source,
        threshold=threshold, mirror=cli.mirror_setting(flag_values.mirror),
        precision=flag_values.precision,
        save_uncertainty=flag_values.save_uncertainty, input=flag_values.input, files=files,
        case_id=flag_values.case_id,
        save_probabilities=flag_values.save_probabilities, montage=flag_values.montage,
        montage_slices=flag_values.montage_slices, overwrite=flag_values.overwrite, progress=flag_values.progress,
        maps_from_4d=flag_values.maps_from_4d,
    )


def _warn(message: str) -> None:
    cli.warn(TOOL, message)


def run(config: PredictConfig, segmenter=None):
    """Predicts every case of `config`; returns (reports, failures) as `prediction.predict_cases`.

    Raises:
        UsageError, prediction.PredictError, inference.ModelLoadError: the run cannot start (one line).
    """
    import keras

    from strokenet_tf import perfusion_input, prediction

    if config.input is not None:
        inputs = prediction.find_inputs(config.input)
    else:
        inputs = [prediction.explicit_input(config.files, config.case_id)]
    inputs = perfusion_input.for_inputs(inputs, config.maps_from_4d)
    options = prediction.OutputOptions(
        output_dir=config.output_dir, save_probabilities=config.save_probabilities,
        save_uncertainty=config.save_uncertainty, save_montage=config.montage,
        montage_slices=config.montage_slices, overwrite=config.overwrite,
    )
    prediction.check_outputs(inputs, options)  # before the model loads: refuse early and cheaply
    if segmenter is None:
        segmenter = prediction.load_model(config.model, config.model_source, config.threshold, config.mirror,
                                          config.precision)
    if config.files:
        flag_of = {modality: name for name, modality in MODALITY_FLAGS.items()}
        computed = perfusion_input.MAP_KEYS if isles.PWI in config.files else {}  # maps from the series
        missing = [f"--{flag_of.get(m, m)}" for m in segmenter.channels
                   if m not in config.files and m not in computed]
        if missing:
            raise UsageError(f"{', '.join(missing)} {'is' if len(missing) == 1 else 'are'} required: the model reads "
                             f"{', '.join(segmenter.channels)}")
        unused = [m for m in config.files if m not in segmenter.channels]
        if unused:
            _warn(f"the model does not read {', '.join(unused)} (it reads {', '.join(segmenter.channels)})")
    progress = keras.utils.Progbar(len(inputs), verbose=1 if config.progress else 0, unit_name="case")
    return prediction.predict_cases(segmenter, inputs, options,
                                    on_progress=lambda done, case_id: progress.update(done), warn=_warn)


def _fail(message, code: int = 2) -> None:
    cli.fail(TOOL, message, code)


def main(argv, flag_values: flags.FlagValues = FLAGS):
    cli.reject_arguments(TOOL, argv)
    try:
        config = config_from_flags(flag_values)
    except UsageError as error:
        _fail(error)
    from strokenet_tf import inference, prediction  # TensorFlow loads from here on

    try:
        reports, failures = run(config)
    except (UsageError, prediction.PredictError, inference.ModelLoadError) as error:
        _fail(error)
    except OSError as error:  # e.g. an --output_dir that cannot be created
        _fail(cli.os_error_line(error, config.output_dir))
    for report in reports:
        outputs = report["outputs"]
        shown = f"mask {outputs['mask']}" + (f", montage {outputs['montage']}" if "montage" in outputs else "")
        print(f"{report['case_id']}: lesion {report['lesion_volume_ml']:.2f} mL in "
              f"{report['connected_components']} component(s), {report['seconds']['predict']:.2f} s; {shown}")
        print(f"  {prediction.montage_caption(report['perfusion_report'], report['uncertainty'])}")
    if failures:
        _fail(f"{len(failures)} of {len(failures) + len(reports)} case(s) failed: "
              + "; ".join(f"{f.case_id} ({f.message})" for f in failures), code=1)


if __name__ == "__main__":
    cli.run(main, define_flags)
