r"""Exports a trained StrokeNet run as a TF-Serving SavedModel: EXPORT_BASE/<model_name>/<version>/.

Usage:
    python -m strokenet_tf.export --model=runs/fold0 --export_base=exports [--model_name=strokenet]
        [--version=N] [--overwrite] [--model_source=best|latest] [--threshold=0.5] [--warmup_depths=8]
    python -m strokenet_tf.export --model=runs/cv --export_base=exports     # every fold as one ensemble
    python -m strokenet_tf.export --model=runs/a,runs/b --export_base=exports [--mirror=off]

The SavedModel's `serving_default` signature takes raw perfusion maps float32 [batch, depth, height, width,
channels] (channel order in assets.extra/strokenet_metadata.json) and returns "probabilities" (float32) and
"mask" (uint8) and "uncertainty" of the same spatial shape; preprocessing, padding, the ensemble average
(left-right mirroring, calibration map), crop and threshold are in the graph; the `report` signature
adds the perfusion-mismatch report (research output, not a medical device). The
version defaults to the next free integer; an existing version is replaced only with --overwrite. Prints the
version folder and the `docker run` command that serves it (see export/README.md).
"""

from __future__ import annotations


from absl import flags
from absl import logging as absl_logging

from strokenet_tf import cli, inference
from strokenet_tf.serving import exporting, warmup

FLAGS = flags.FLAGS


TOOL = "strokenet_tf.export"
OLD_NAMES = {"model_dir": "model", "source": "model_source"}
FLAG_NAMES = {"model_dir": "model", "source": "model_source"}  # ExportConfig field -> its flag, where they differ


def define_flags(flag_values: flags.FlagValues = FLAGS) -> None:
    """Defines the exporter's flags on `flag_values` (by `__main__`; tests use their own FlagValues)."""
    fv = {"flag_values": flag_values}
    cli.define_shared(
        flag_values, "model", "model_source", "mirror", "precision", "threshold", "overwrite",
        help={"model": "Training run folder (config.json, best.keras, checkpoints/) or a .keras file; several "
                       "separated by commas, or a cross_validate folder (every fold), export one ensemble.",
              "mirror": "Left-right test-time mirroring (auto: on for an ensemble, off for a single run).",
              "precision": "Compute dtype of the exported network (float32 runs everywhere; bfloat16 for CPUs "
                           "with AVX512_BF16/AMX, mixed_float16 for GPUs).",
              "threshold": "Mask = probabilities >= threshold, fixed in the export.",
              "overwrite": "Replace an existing version folder."},
        defaults={"precision": "float32", "threshold": inference.DEFAULT_THRESHOLD},
        enum_values={"precision": ["float32", "bfloat16", "mixed_float16"]},
    )
    flags.DEFINE_float("temperature", None, "Temperature scaling instead of the calibration map of the "
                       "cross_validate folder's calibration.json.", **fv)
    flags.DEFINE_string("export_base", None, "EXPORT_BASE: the version is written to "
                        "EXPORT_BASE/<model_name>/<version>/ (TF-Serving's model base path is "
                        "EXPORT_BASE/<model_name>).", **fv)
    flags.DEFINE_string("model_name", exporting.DEFAULT_MODEL_NAME, "TF-Serving model name.", **fv)
    flags.DEFINE_integer("version", None, "Model version (positive integer); default: the next free one.", **fv)
    flags.DEFINE_list("warmup_depths", [str(d) for d in warmup.DEFAULT_DEPTHS],
                      "Slice counts of the synthetic warmup requests (one each; e.g. 2,4,8,16,22 pre-tunes every "
                      "ISLES slab depth at ~1.3 MB per slice); empty for no warmup file.", **fv)
    flags.DEFINE_integer("warmup_size", warmup.DEFAULT_SIZE, "In-plane size of the warmup volumes.", **fv)
    flags.DEFINE_boolean("verify", True, "Reload the staged SavedModel and compare it with the in-process "
                         "Segmenter before publishing it.", **fv)
    flags.DEFINE_boolean("from_4d", True, "Also export the from_4d signature (raw CT_4DPWI series in, maps made by "
                         "oSVD deconvolution in the graph) where the model's channels allow it.", **fv)
    flags.mark_flags_as_required(["model", "export_base"], flag_values=flag_values)
    cli.define_old_names(flag_values, TOOL, OLD_NAMES)


def config_from_flags(flag_values: flags.FlagValues = FLAGS) -> exporting.ExportConfig:
    """Parsed flags -> validated ExportConfig (the only place that reads flags)."""
    try:
        depths = tuple(int(depth) for depth in flag_values.warmup_depths)
    except ValueError:
        raise exporting.ExportError(f"--warmup_depths: expected integers, got "
                                     f"{','.join(flag_values.warmup_depths)}") from None
    return exporting.ExportConfig(
        model_dir=flag_values.model,
        export_base=flag_values.export_base,
        model_name=flag_values.model_name,
        version=flag_values.version,
        source=flag_values.model_source,
        threshold=flag_values.threshold,
        overwrite=flag_values.overwrite,
        warmup_depths=depths,
        warmup_size=flag_values.warmup_size,
        verify=flag_values.verify,
        from_4d=flag_values.from_4d,
        mirror=cli.mirror_setting(flag_values.mirror),
        temperature=flag_values.temperature,
        precision=flag_values.precision,
    ).validate()


def _fail(message) -> None:
    cli.fail(TOOL, message, flag_names=FLAG_NAMES)


def main(argv, flag_values: flags.FlagValues = FLAGS) -> None:
    cli.reject_arguments(TOOL, argv)
    # TensorFlow's SavedModel writer logs INFO lines per function and file; the summary below is what matters.
    verbosity = absl_logging.get_verbosity()
    absl_logging.set_verbosity(absl_logging.WARNING)
    try:
        config = config_from_flags(flag_values)
        result = exporting.export_run(config)
    except (exporting.ExportError, inference.ModelLoadError) as error:
        _fail(error)
    except OSError as error:
        _fail(cli.os_error_line(error, flag_values.export_base))
    finally:
        absl_logging.set_verbosity(verbosity)
    difference = ("" if result.max_probability_difference is None
                  else f", max |probability difference| vs Segmenter {result.max_probability_difference:.2g}")
    ensemble = result.metadata["ensemble"]
    members = (f"{ensemble['n_members']} member(s), mirroring {'on' if ensemble['mirror'] else 'off'}, "
               f"calibration {ensemble['calibration']['method']}")
    print(f"Exported {config.model_dir} ({config.source}; {members}) as {config.model_name} version "
          f"{result.version}: {result.version_dir} ({result.size_bytes / 1e6:.1f} MB, {result.seconds:.1f} s"
          f"{difference}).")
    print("Serve it with TF-Serving (gRPC :8500, REST :8501; see export/README.md):")
    print(exporting.serving_command(config.export_base, config.model_name, exporting.deployment_dir()))


if __name__ == "__main__":
    cli.run(main, define_flags)
