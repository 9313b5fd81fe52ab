r"""Segments one ISLES case with a model served by TF-Serving and writes the mask in the case's geometry.

Usage:
    python -m strokenet_tf.serving_client --server=localhost:8500 --model_name=strokenet \
        --input=ISLES2018/TESTING/case_1 --output=case_1_mask.nii.gz [--protocol=grpc|rest]

Reads the case's maps in --channels order (it must be the export's order: assets.extra/
strokenet_metadata.json "channels"), sends the raw maps (gRPC PredictRequest with raised message-size limits,
or REST JSON with the maps as one base64 string), and writes the returned mask like `predict` does: same
affine, header and voxel grid as the input, written atomically. An existing --output is refused without
--overwrite.
"""

from __future__ import annotations

import dataclasses
import os

from absl import flags

from strokenet_tf import cli
from strokenet_tf.data import isles

FLAGS = flags.FLAGS
TOOL = "strokenet_tf.serving_client"
OLD_NAMES = {"model": "model_name"}
FLAG_NAMES = {"max_message_bytes": "max_message_mb"}  # serving.client setting -> its flag, where they differ


@dataclasses.dataclass(frozen=True)
class ClientConfig:
    """One segmentation request (see the module docstring)."""

    server: str
    model_name: str
    input: str
    output: str
    protocol: str = "grpc"
    version: int | None = None
    signature: str | None = None
    channels: tuple[str, ...] = isles.DEFAULT_CHANNELS
    probabilities_output: str | None = None
    timeout_s: float = 300.0
    max_message_mb: int = 512
    overwrite: bool = False


class ClientError(ValueError):
    """Bad flags or paths; the message is one line naming the flag."""


def define_flags(flag_values: flags.FlagValues = FLAGS) -> None:
    """Defines the client's flags on `flag_values` (by `__main__`; tests use their own FlagValues)."""
    from strokenet_tf.serving import client, signatures

    fv = {"flag_values": flag_values}
    flags.DEFINE_string("server", None, "TF-Serving HOST:PORT (8500 gRPC, 8501 REST by convention).", **fv)
    flags.DEFINE_string("model_name", None, "Served model name (models.config name / MODEL_NAME; export's "
                        "--model_name).", **fv)
    flags.DEFINE_string("input", None, "ISLES case folder (case_N/ with the SMIR.Brain.XX.O.CT_* maps).", **fv)
    cli.define_shared(flag_values, "output", "overwrite",
                      help={"output": "Mask file to write (.nii or .nii.gz), in the input's geometry.",
                            "overwrite": "Replace existing output files."})
    flags.DEFINE_enum("protocol", "grpc", list(client.PROTOCOLS), "gRPC PredictRequest or REST JSON.", **fv)
    flags.DEFINE_integer("version", None, "Model version to ask for; default: the latest loaded one.", **fv)
    flags.DEFINE_enum("signature", None, list(signatures.SIGNATURES),
                      "Signature to call; default serving_default over gRPC, serialized (base64 maps) over REST.",
                      **fv)
    flags.DEFINE_list("channels", list(isles.DEFAULT_CHANNELS), "Input modalities in the export's channel order.",
                      **fv)
    flags.DEFINE_string("probabilities_output", None, "Also write the lesion probabilities (float32 NIfTI).", **fv)
    flags.DEFINE_float("timeout_s", client.DEFAULT_TIMEOUT_S, "Deadline of the request in seconds.", **fv)
    flags.DEFINE_integer("max_message_mb", client.DEFAULT_MAX_MESSAGE_MB,
                         "gRPC max send/receive message length of the client channel, in MiB.", **fv)
    flags.mark_flags_as_required(["server", "model_name", "input", "output"], flag_values=flag_values)
    cli.define_old_names(flag_values, TOOL, OLD_NAMES)


def _check_output(flag: str, path: str | None, overwrite: bool) -> None:
    if path is None:
        return
    if not path.lower().endswith((".nii", ".nii.gz")):
        raise ClientError(f"{flag}: {path} must end in .nii or .nii.gz")
    if os.path.exists(path) and not overwrite:
        raise ClientError(f"{flag}: {path} exists; pass --overwrite to replace it")
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise ClientError(f"{flag}: folder {folder} does not exist")


def config_from_flags(flag_values: flags.FlagValues = FLAGS) -> ClientConfig:
    """Parsed flags -> validated ClientConfig (the only place that reads flags)."""
    config = ClientConfig(
        server=flag_values.server, model_name=flag_values.model_name, input=flag_values.input,
        output=flag_values.output,
        protocol=flag_values.protocol, version=flag_values.version, signature=flag_values.signature,
        channels=tuple(flag_values.channels), probabilities_output=flag_values.probabilities_output,
        timeout_s=flag_values.timeout_s, max_message_mb=flag_values.max_message_mb,
        overwrite=flag_values.overwrite,
    )
    if not os.path.isdir(config.input):
        raise ClientError(f"--input: {config.input} is not a case folder")
    _check_output("--output", config.output, config.overwrite)
    _check_output("--probabilities_output", config.probabilities_output, config.overwrite)
    if config.probabilities_output and os.path.abspath(config.probabilities_output) == os.path.abspath(config.output):
        raise ClientError("--probabilities_output must differ from --output")
    if config.version is not None and config.version < 1:
        raise ClientError(f"--version: expected a positive integer, got {config.version}")
    if config.timeout_s <= 0 or config.max_message_mb < 1:
        raise ClientError("--timeout_s and --max_message_mb must be positive")
    if not config.channels or len(set(config.channels)) != len(config.channels):
        raise ClientError(f"--channels: expected distinct modality names, got {','.join(config.channels)}")
    return config


def run(config: ClientConfig) -> dict:
    """Reads the case, asks TF-Serving, writes the mask (and probabilities); returns a summary dict.

    Raises:
        isles.IslesFormatError, client.ServingError, ValueError: one line.
    """
    from strokenet_tf.data import preprocess
    from strokenet_tf.serving import client

    case = isles.read_case(config.input, config.channels, read_label=False)  # the label plays no part here
    image = preprocess.select_channels(case, config.channels)
    connection = client.ServingClient(
        config.server, config.model_name, protocol=config.protocol, version=config.version, signature=config.signature,
        timeout_s=config.timeout_s, max_message_bytes=config.max_message_mb << 20,
        want_probabilities=config.probabilities_output is not None,
    )
    try:
        probabilities, mask = connection.segment_image(image)
    finally:
        connection.close()
    isles.write_nifti_like(mask, case, config.output, dtype="uint8")
    if config.probabilities_output:
        isles.write_nifti_like(probabilities, case, config.probabilities_output, dtype="float32")
    return {"case_id": case.case_id, "shape": tuple(mask.shape), "lesion_voxels": int(mask.sum()),
            "output": config.output}


def _fail(message) -> None:
    cli.fail(TOOL, message, flag_names=FLAG_NAMES)


def main(argv, flag_values: flags.FlagValues = FLAGS) -> None:
    cli.reject_arguments(TOOL, argv)
    from strokenet_tf.serving import client

    try:
        summary = run(config_from_flags(flag_values))
    except (ClientError, isles.IslesFormatError, client.ServingError, ValueError) as error:
        _fail(error)
    except OSError as error:
        _fail(cli.os_error_line(error, flag_values.output))
    print(f"{summary['case_id']}: {summary['lesion_voxels']} lesion voxels of {summary['shape']} -> "
          f"{summary['output']}")


if __name__ == "__main__":
    cli.run(main, define_flags)
