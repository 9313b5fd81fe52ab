"""The JSON that travels with an export: `<version_dir>/assets.extra/strokenet_metadata.json`.

TF-Serving copies nothing from it, but `inference.SavedModelSegmenter`, `serving_client` users and people
auditing a deployment read it: channel order, threshold, normalisation constants, where the weights came
from and how good they were when exported.
"""

from __future__ import annotations

import datetime
import json
import os
from typing import Any, Sequence

import keras
import tensorflow as tf

from strokenet_tf import inference, perfusion_input, perfusion_report
from strokenet_tf.data import atomic, preprocess
from strokenet_tf.serving import signatures
from strokenet_tf.training import checkpointing

FORMAT_VERSION = 1


def run_id(model_path: str) -> str:
    """A stable id of a training run: `<run folder name>-<first 12 hex of sha256(config.json)>`.

    Two runs with the same folder name but other settings get other ids. For a bare `.keras` file (no run
    folder) the file name and a hash of the file itself.
    """
    path = os.path.abspath(model_path)
    run_dir = path if os.path.isdir(path) else os.path.dirname(path)
    config_path = os.path.join(run_dir, checkpointing.CONFIG_FILE)
    if os.path.isfile(config_path):
        return f"{os.path.basename(run_dir)}-{checkpointing.file_sha256(config_path)[:12]}"
    return f"{os.path.splitext(os.path.basename(path))[0]}-{checkpointing.file_sha256(path)[:12]}"


def _tensor_info(shape: Sequence[int | None], dtype: str) -> dict[str, Any]:
    return {"shape": [-1 if size is None else size for size in shape], "dtype": dtype}


def signature_summary(channels: int, from_4d: bool = False) -> dict[str, Any]:
    """What `saved_model_cli show` reports, in plain JSON (-1 = dynamic); `from_4d`: the export has that
    signature (`signatures.from_4d_endpoint`: models reading only CT, CT_4DPWI and the maps)."""
    outputs = {inference.PROBABILITIES_KEY: _tensor_info([None] * 4, "float32"),
               inference.MASK_KEY: _tensor_info([None] * 4, "uint8"),
               inference.UNCERTAINTY_KEY: _tensor_info([None] * 4, "float32")}
    image = {inference.INPUT_KEY: _tensor_info([None] * 4 + [channels], "float32")}
    per_case = {key: _tensor_info([None], "int32" if key in ("defuse3", "extend_ia", "perfusion_status")
                                  else "float32") for key in perfusion_report.REPORT_KEYS}
    report_outputs = {**outputs, **per_case, inference.MEMBER_VOLUMES_KEY: _tensor_info([None, None], "float32"),
                      "member_dice": _tensor_info([None, None], "float32"),
                      inference.DISAGREE_KEY: _tensor_info([None], "bool"),
                      perfusion_report.HYPOPERFUSION_MASK_KEY: _tensor_info([None] * 4, "uint8")}
    summary = {
        signatures.SERVING_DEFAULT: {"inputs": image, "outputs": outputs},
        signatures.SERIALIZED: {"inputs": {signatures.SERIALIZED_INPUT_KEY: _tensor_info([None], "string")},
                                "outputs": outputs},
        signatures.REPORT: {"inputs": {**image, inference.VOXEL_SIZE_KEY: _tensor_info([None, 3], "float32")},
                            "outputs": report_outputs},
    }
    if from_4d:
        series, ct, interval = signatures.FROM_4D_KEYS
        summary[signatures.FROM_4D] = {
            "inputs": {series: _tensor_info([None] * 5, "float32"), ct: _tensor_info([None] * 4, "float32"),
                       interval: _tensor_info([None], "float32")},
            "outputs": {**outputs, signatures.AIF_FOUND_KEY: _tensor_info([None], "bool")},
            "units": {series: "HU, [batch, depth, height, width, time]", ct: "HU", interval: "s"},
        }
    return summary


def ensemble_summary(segmenter: inference.Segmenter) -> dict[str, Any]:
    """Members (run id, weights file and its sha256), mirroring and calibration of an export."""
    members = getattr(segmenter, "members", None) or [segmenter.trained]
    paths = getattr(segmenter, "member_paths", None) or [member.source for member in members]
    return {
        "n_members": len(members),
        "members": [{"run_id": run_id(path), "run_dir": os.path.abspath(path),
                     "source_checkpoint": os.path.abspath(member.source),
                     "source_sha256": checkpointing.file_sha256(member.source) if os.path.isfile(member.source) else None,
                     "best_record": dict(member.best_record) if member.best_record else None}
                    for member, path in zip(members, paths)],
        "mirror": bool(segmenter.mirror),
        "test_time_augmentation": "left-right (width axis) mirroring, averaged" if segmenter.mirror else "none",
        "calibration": segmenter.calibration.to_dict(),
        "probability": "mean of the members' sigmoid probabilities; mask = mean >= threshold; the probabilities "
                       "returned are that mean through the calibration map (monotone)",
        "uncertainty": "binary predictive entropy of the final probability, in bits (0-1)",
        "perfusion_report": perfusion_report.DISCLAIMER,
    }


def build_metadata(
    trained: inference.TrainedModel,
    model_path: str,
    model_source: str,
    threshold: float,
    model_name: str,
    version: int,
    warmup_shapes: Sequence[Sequence[int]] = (),
) -> dict[str, Any]:
    """The metadata dict of one export.

    Args:
        trained: the loaded run (`inference.load_run`).
        model_path: the --model_dir given (run folder or .keras file).
        model_source: "best" or "latest".
        threshold: mask = probabilities >= threshold, as exported.
        model_name, version: where it is served (EXPORT_BASE/model_name/version).
        warmup_shapes: (depth, height, width) of each warmup request.

    Keys "channels" (list) and "threshold" (float) are what `inference.SavedModelSegmenter` needs.
    "metrics" is best.json when the exported weights are best.keras, else None (the latest checkpoint was
    never validated as such); the run's best record is kept under "run_best_record" either way.
    """
    source = os.path.abspath(trained.source)
    is_best_file = os.path.isfile(source) and os.path.basename(source) == checkpointing.BEST_MODEL_FILE
    return {
        "format_version": FORMAT_VERSION,
        "model_name": model_name,
        "version": int(version),
        "channels": list(trained.channels),
        "threshold": float(threshold),
        "multiples": list(trained.multiples),
        "normalization": preprocess.normalization_constants(),
        "run_id": run_id(model_path),
        "run_dir": os.path.abspath(model_path),
        "model_source": model_source,
        "source_checkpoint": source,
        "source_sha256": checkpointing.file_sha256(source) if os.path.isfile(source) else None,
        "metrics": dict(trained.best_record) if (trained.best_record and is_best_file) else None,
        "run_best_record": dict(trained.best_record) if trained.best_record else None,
        # Per-layer policies: a mixed_float16 run has "mixed_float16" here (the model-level policy stays float32).
        # The signatures take and return float32 either way.
        "dtype_policies": sorted({layer.dtype_policy.name for layer in trained.model.layers}),
        "signatures": signature_summary(len(trained.channels), perfusion_input.supports(trained.channels)),
        "warmup_shapes": [list(shape) for shape in warmup_shapes],
        "exported_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "tensorflow_version": tf.__version__,
        "keras_version": keras.__version__,
    }


def metadata_path(version_dir: str) -> str:
    return os.path.join(version_dir, inference.EXPORT_METADATA_FILE)


def write_metadata(version_dir: str, metadata: dict[str, Any]) -> str:
    """Writes `<version_dir>/assets.extra/strokenet_metadata.json` atomically; returns its path."""
    path = metadata_path(version_dir)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    atomic.atomic_write_text(path, json.dumps(metadata, indent=2, sort_keys=True) + "\n")
    return path


def read_metadata(version_dir: str) -> dict[str, Any]:
    with open(metadata_path(version_dir), encoding="utf-8") as stream:
        return json.load(stream)
