"""Training run -> TF-Serving SavedModel at EXPORT_BASE/<model_name>/<version>/, atomically.

The SavedModel is written with Keras 3's `keras.export.ExportArchive`: the members' variables are tracked and
the endpoints call the graphs of `inference.Segmenter.segment` itself (`serving_default`), of a thin wrapper
that parses serialized tensors first (`serialized`, see `signatures`), of `Segmenter.report` and of `from_4d`,
each traced once (`build_export_archive`). So predict, evaluate and TF-Serving run one graph: NaN cleaning, per-case normalisation, padding to the network's multiples, network, sigmoid, inverse
crop and threshold, with dynamic depth/height/width and float32 in and out even for a mixed_float16 model.

A version folder appears only when it is complete: everything is built in a hidden sibling
`.tmp-export-<id>-<pid>@<host>-<version>` (TF-Serving only loads children whose names parse as integers, see
`is_version_name`), verified by reloading it and replaying its warmup requests, flushed to disk and then
renamed into place (with `overwrite` it swaps it with the old version in one atomic step where Linux's
renameat2 RENAME_EXCHANGE is available). A killed export leaves at most hidden folders, never a half-written
version, and the next export into the same model folder removes those whose process (named in the folder
name) no longer runs on this host (`remove_abandoned_scratch`).

Example (needs a training run, so the doctests do not run it):
```python
result = export_run(ExportConfig(model_dir="runs/fold0", export_base="exports"))
result.version_dir   # 'exports/strokenet/1'
```
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import errno
import inspect
import os
import pathlib
import re
import shutil
import socket
import time
import uuid
from typing import Any, Sequence

import keras
import numpy as np
import tensorflow as tf

from strokenet_tf import errors, inference
from strokenet_tf.serving import client, metadata as metadata_lib, signatures, warmup

DEFAULT_MODEL_NAME = "strokenet"
SERVING_IMAGE = "tensorflow/serving:latest-gpu"
PROBABILITY_TOLERANCE = 1e-5
_STAGING_PREFIX = ".tmp-export-"
_RETIRED_PREFIX = ".tmp-replaced-"
# "<prefix><id>-<pid>@<host>-<version>": the process that made a scratch folder, so a later export can tell an
# abandoned one (its process is gone) from one another export is still writing. Hosts may contain "-".
_SCRATCH_PATTERN = re.compile(r"^\.tmp-(?:export|replaced)-[0-9a-f]{12}-(?P<pid>\d+)@(?P<host>.+)-\d+$")
_MODEL_NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
# TF-Serving reads a child folder as a version when strings::safe_strto64 accepts its name: optional
# surrounding whitespace, an optional sign, decimal digits.
_VERSION_NAME_PATTERN = re.compile(r"\s*[+-]?\d+\s*")


class ExportError(errors.InputError):
    """An export that cannot be done; the message is one line naming the `ExportConfig` field or path."""


@dataclasses.dataclass(frozen=True)
class ExportConfig:
    """What to export and where.

    Attributes:
        model_dir: training run folder (or a .keras file); several separated by commas, or a cross-validation
            folder (`cross_validate` MODEL_DIR): one ensemble (`ensemble.load_ensemble`).
        export_base: EXPORT_BASE; the version lands in EXPORT_BASE/model_name/version.
        model_name: TF-Serving model name (folder name and models.config `name`).
        version: integer version, or None for the next free one (1 for a new model).
        source: "best" (best.keras) or "latest" (newest training checkpoint).
        threshold: mask = probabilities >= threshold (recorded in the metadata).
        overwrite: replace an existing version folder.
        warmup_depths: one warmup request per depth (empty: no warmup file).
        warmup_size: in-plane size of the warmup volumes (256 for ISLES 2018).
        verify: reload the staged SavedModel and check it against the Segmenter before publishing.
        mirror: left-right test-time mirroring; None = on for an ensemble, off for a single run.
        temperature: temperature scaling instead of the cross-validation folder's calibration.json map.
        precision: dtype policy of the members ("float32" as saved, "bfloat16", "mixed_float16").
        from_4d: also export the `from_4d` signature (raw CT_4DPWI in) where the channels allow it; False keeps
            the deconvolution graph out of a deployment that only receives maps (a smaller, faster export).
    """

    model_dir: str
    export_base: str
    model_name: str = DEFAULT_MODEL_NAME
    version: int | None = None
    source: str = "best"
    threshold: float = inference.DEFAULT_THRESHOLD
    overwrite: bool = False
    warmup_depths: tuple[int, ...] = warmup.DEFAULT_DEPTHS
    warmup_size: int = warmup.DEFAULT_SIZE
    verify: bool = True
    mirror: bool | None = None
    temperature: float | None = None
    precision: str = "float32"
    from_4d: bool = True

    def validate(self) -> "ExportConfig":
        if self.temperature is not None and not 0.0 < self.temperature < float("inf"):
            raise ExportError("temperature", f": expected a positive number, got {self.temperature}")
        if not _MODEL_NAME_PATTERN.fullmatch(self.model_name or ""):
            raise ExportError("model_name", f": expected letters, digits, '_', '.', '-' (not starting with '.' or "
                              f"'-'), got {self.model_name!r}")
        if self.version is not None and self.version < 1:
            raise ExportError("version", f": expected a positive integer, got {self.version}")
        if self.source not in inference.MODEL_SOURCES:
            raise ExportError("source", f": expected one of {', '.join(inference.MODEL_SOURCES)}, got {self.source!r}")
        if not 0.0 < self.threshold < 1.0:
            raise ExportError("threshold", f": expected a value in (0, 1), got {self.threshold}")
        if any(depth < 1 for depth in self.warmup_depths) or len(self.warmup_depths) > warmup.MAX_RECORDS:
            raise ExportError("warmup_depths", f": expected at most {warmup.MAX_RECORDS} positive slice counts, "
                              f"got {','.join(str(d) for d in self.warmup_depths)}")
        if self.warmup_size < 8:
            raise ExportError("warmup_size", f": expected at least 8 voxels, got {self.warmup_size}")
        return self


@dataclasses.dataclass(frozen=True)
class ExportResult:
    """A published export: the version folder, how long it took and how close it is to the Segmenter."""

    version_dir: str
    version: int
    seconds: float
    size_bytes: int
    max_probability_difference: float | None
    metadata: dict[str, Any]


def is_version_name(name: str) -> bool:
    """True for folder names TF-Serving loads as versions ("1", "007"); False for ".tmp-export-...-3"."""
    return bool(_VERSION_NAME_PATTERN.fullmatch(name))


def existing_versions(model_base: str) -> list[int]:
    """Versions TF-Serving would see under EXPORT_BASE/model_name, ascending."""
    if not os.path.isdir(model_base):
        return []
    return sorted(int(name) for name in os.listdir(model_base)
                  if is_version_name(name) and os.path.isdir(os.path.join(model_base, name)))


def next_version(model_base: str) -> int:
    """One more than the highest existing version; 1 for a new model."""
    versions = existing_versions(model_base)
    return max(versions) + 1 if versions else 1


def build_export_archive(segmenter: inference.Segmenter, from_4d: bool = True) -> keras.export.ExportArchive:
    """An ExportArchive with the variables of every ensemble member and the `serving_default`, `serialized` and
    `report` endpoints, and (`from_4d`) `from_4d` (raw CT_4DPWI series in) where the channels allow it.

    Each endpoint's graph is traced once, here (`_single_trace_endpoint`); saving and the verification reuse it.
    """
    archive = keras.export.ExportArchive()
    for model in segmenter.models:
        _track_variables(archive, model)
    endpoints = {signatures.SERVING_DEFAULT: segmenter.segment,
                 signatures.SERIALIZED: signatures.serialized_endpoint(segmenter),
                 signatures.REPORT: segmenter.report}
    endpoint = signatures.from_4d_endpoint(segmenter) if from_4d else None
    if endpoint is not None:  # models reading only CT, CT_4DPWI and the maps
        endpoints[signatures.FROM_4D] = endpoint
    for name, function in endpoints.items():
        caller, input_signature = _single_trace_endpoint(function)
        archive.add_endpoint(name, caller, input_signature=input_signature)
    return archive


def _track_variables(archive: keras.export.ExportArchive, model: keras.Model) -> None:
    """What `ExportArchive.track(model)` records for a Keras model (its variables, listed on the SavedModel's
    root), without `track`'s walk over every layer's attributes in search of lookup tables (a StrokeNet holds
    none): that walk also traces each member's default `serving_default` (a whole network) and is thrown away."""
    if not model.built:
        raise ValueError(f"{model.name}: the model must be built before export")
    archive.variables.extend(model.variables)
    archive.trainable_variables.extend(model.trainable_variables)
    archive.non_trainable_variables.extend(model.non_trainable_variables)


def _single_trace_endpoint(function: tf.types.experimental.GenericFunction):
    """(caller, input signature) of a tf.function with an input signature, for `ExportArchive.add_endpoint`.

    The caller calls `function`'s concrete function (traced now, or taken from its cache when the Segmenter has
    run) under the same argument names. `tf.saved_model.save` traces the functions it saves again, because it
    keys traces by its save context: handed `function` itself it would rebuild the whole graph (preprocessing,
    every member's network, report) a second time; handed this caller it traces a single call of the graph
    built here. The SavedModel holds that graph once, and the in-process `function` (what the verification
    compares with) runs the very graph that was saved.
    """
    concrete = function.get_concrete_function()
    specs = concrete.structured_input_signature[0]
    if concrete.structured_input_signature[1] or not all(isinstance(spec, tf.TensorSpec) for spec in specs):
        raise ValueError(f"{function.__name__}: expected an input signature of positional tensors")

    def endpoint(*args, **kwargs):
        return concrete(*args, **kwargs)

    endpoint.__name__ = f"call_{function.__name__.lstrip('_')}"  # its trace: __inference_call_segment_<n>
    endpoint.__signature__ = inspect.Signature(  # the SavedModel's argument and signature input names
        [inspect.Parameter(spec.name, inspect.Parameter.POSITIONAL_OR_KEYWORD) for spec in specs])
    return endpoint, [tf.TensorSpec(spec.shape, spec.dtype, name=spec.name) for spec in specs]


def _tree_size_bytes(directory: str) -> int:
    return sum(path.stat().st_size for path in pathlib.Path(directory).rglob("*") if path.is_file())


def _fsync_tree(directory: str) -> None:
    """Flushes every file and folder under `directory`, so the rename publishes data that is on disk."""
    for root, _, files in os.walk(directory):
        for name in files:
            with open(os.path.join(root, name), "rb") as handle:
                os.fsync(handle.fileno())
        _fsync_folder(root)


def _fsync_folder(folder: str) -> None:
    """Flushes a folder's entries (a rename inside it is durable once this returns)."""
    descriptor = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def _max_difference(expected: dict, actual: dict, where: str) -> float:
    expected_mask = np.asarray(expected[inference.MASK_KEY])
    actual_mask = np.asarray(actual[inference.MASK_KEY])
    if actual_mask.dtype != np.uint8 or actual_mask.shape != expected_mask.shape:
        raise ExportError(f"{where}: mask is {actual_mask.dtype} {actual_mask.shape}, expected uint8 "
                          f"{expected_mask.shape}")
    difference = float(np.max(np.abs(np.asarray(expected[inference.PROBABILITIES_KEY], np.float64)
                                     - np.asarray(actual[inference.PROBABILITIES_KEY], np.float64)), initial=0.0))
    changed = int(np.count_nonzero(expected_mask != actual_mask))
    if difference > PROBABILITY_TOLERANCE or changed:
        raise ExportError(f"{where}: the SavedModel differs from the Segmenter (max |probability difference| "
                          f"{difference:.3g}, {changed} mask voxel(s) differ)")
    return difference


def verify_export(version_dir: str, segmenter: inference.Segmenter,
                  fallback_images: Sequence[np.ndarray] = ()) -> float:
    """Reloads a SavedModel and checks both signatures against `segmenter.segment`.

    Replays the warmup file through `serving_default` (or `fallback_images` when there is none) and one
    down-sampled image through `serialized`. Returns the largest |probability difference|.

    Both sides run with TensorFlow's graph optimiser (grappler) off (`_graph_optimizer_off`): the check is that
    the saved graphs and weights are the in-process ones, and optimising each function before its first (and
    only) call here took half of the check's time; TF-Serving optimises the saved graphs as before.

    Raises:
        ExportError: a missing signature, another dtype/shape, any mask voxel or a probability beyond
            `PROBABILITY_TOLERANCE` that differs.
    """
    with _graph_optimizer_off():
        return _verify_loaded(version_dir, segmenter, fallback_images)


@contextlib.contextmanager
def _graph_optimizer_off():
    """Functions first run inside run unoptimised; the setting (part of each call's configuration, so a function
    run again afterwards is optimised as usual) is restored on exit."""
    disabled = tf.config.optimizer.get_experimental_options().get("disable_meta_optimizer", False)
    tf.config.optimizer.set_experimental_options({"disable_meta_optimizer": True})
    try:
        yield
    finally:
        tf.config.optimizer.set_experimental_options({"disable_meta_optimizer": disabled})


def _verify_loaded(version_dir: str, segmenter: inference.Segmenter, fallback_images: Sequence[np.ndarray]) -> float:
    loaded = tf.saved_model.load(version_dir)
    missing = [name for name in signatures.EXPORTED_SIGNATURES if name not in loaded.signatures]
    if missing:
        raise ExportError(f"{version_dir}: SavedModel lacks signature(s) {', '.join(missing)}")
    images = []
    if os.path.isfile(os.path.join(version_dir, warmup.WARMUP_FILE)):
        for request in warmup.read_warmup_requests(version_dir):
            inputs = {key: tf.make_ndarray(tensor) for key, tensor in request.inputs.items()}
            images.append(inputs[inference.INPUT_KEY][0])
    images = images or [np.asarray(image, np.float32) for image in fallback_images]
    difference = 0.0
    for image in images:
        expected = segmenter.segment(tf.constant(image[np.newaxis]))
        actual = loaded.signatures[signatures.SERVING_DEFAULT](**{inference.INPUT_KEY: tf.constant(image[np.newaxis])})
        difference = max(difference, _max_difference(expected, actual, f"{version_dir} {image.shape[:3]}"))
    if images:
        small = np.ascontiguousarray(images[0][:, ::4, ::4])
        expected = segmenter.segment(tf.constant(small[np.newaxis]))
        serialized = tf.constant([client.serialize_image(small)])
        actual = loaded.signatures[signatures.SERIALIZED](**{signatures.SERIALIZED_INPUT_KEY: serialized})
        difference = max(difference, _max_difference(expected, actual, f"{version_dir} serialized"))
        spacing = tf.constant([[5.0, 1.0, 1.0]], tf.float32)
        expected = segmenter.report(tf.constant(small[np.newaxis]), spacing)
        actual = loaded.signatures[signatures.REPORT](**{inference.INPUT_KEY: tf.constant(small[np.newaxis]),
                                                         inference.VOXEL_SIZE_KEY: spacing})
        difference = max(difference, _max_difference(expected, actual, f"{version_dir} report"))
        for key in ("core_volume_ml", "hypoperfusion_volume_ml", inference.MEMBER_VOLUMES_KEY):
            if not np.allclose(np.asarray(expected[key]), np.asarray(actual[key]), rtol=1e-5, equal_nan=True):
                raise ExportError(f"{version_dir} report: {key} differs from the Segmenter's")
    if signatures.FROM_4D in loaded.signatures:
        difference = max(difference, _verify_from_4d(version_dir, loaded, segmenter))
    return difference


def _verify_from_4d(version_dir: str, loaded, segmenter: inference.Segmenter) -> float:
    """The reloaded `from_4d` signature against the in-process one on a small raw CTP phantom."""
    ct, series = warmup.synthetic_series()
    series_key, ct_key, interval_key = signatures.FROM_4D_KEYS
    inputs = {series_key: tf.constant(series[np.newaxis]), ct_key: tf.constant(ct[np.newaxis]),
              interval_key: tf.constant([1.0], tf.float32)}
    expected = signatures.from_4d_endpoint(segmenter)(**inputs)
    actual = loaded.signatures[signatures.FROM_4D](**inputs)
    if not np.array_equal(np.asarray(expected[signatures.AIF_FOUND_KEY]), np.asarray(actual[signatures.AIF_FOUND_KEY])):
        raise ExportError(f"{version_dir} {signatures.FROM_4D}: aif_found differs from the Segmenter's")
    return _max_difference({k: expected[k] for k in actual if k != signatures.AIF_FOUND_KEY},
                           {k: actual[k] for k in actual if k != signatures.AIF_FOUND_KEY}, f"{version_dir} {signatures.FROM_4D}")


def exchange_paths(first: str, second: str) -> bool:
    """Swaps two existing paths in one atomic step (Linux renameat2 with RENAME_EXCHANGE).

    Returns False, having changed nothing, where the C library, kernel or file system cannot do it.
    """
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (AttributeError, OSError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    if renameat2(at_fdcwd, os.fsencode(first), at_fdcwd, os.fsencode(second), rename_exchange) == 0:
        return True
    error = ctypes.get_errno()
    if error in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
        return False
    raise OSError(error, os.strerror(error), second)


def _scratch_path(model_base: str, prefix: str, version_name: str) -> str:
    """A hidden sibling of the version folders, named after this process (see `_SCRATCH_PATTERN`)."""
    owner = f"{os.getpid()}@{socket.gethostname()}"
    return os.path.join(model_base, f"{prefix}{uuid.uuid4().hex[:12]}-{owner}-{version_name}")


def _process_running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def remove_abandoned_scratch(model_base: str) -> list[str]:
    """Removes scratch folders left under `model_base` by exports killed on this host; returns their paths.

    Only folders named by `_scratch_path` whose host is this one and whose process no longer runs are removed:
    a folder of a running export, of another host (shared file systems) or of unknown origin stays.
    """
    removed = []
    host = socket.gethostname()
    for name in sorted(os.listdir(model_base)) if os.path.isdir(model_base) else []:
        match = _SCRATCH_PATTERN.match(name)
        if match is None or match["host"] != host or _process_running(int(match["pid"])):
            continue
        path = os.path.join(model_base, name)
        shutil.rmtree(path, ignore_errors=True)
        if not os.path.exists(path):
            removed.append(path)
    return removed


def _publish(staging: str, target: str, overwrite: bool) -> None:
    """Renames the complete staging folder to the version folder (replacing it only with `overwrite`).

    An existing version is swapped with the staging folder in one atomic step where the system allows it, so
    TF-Serving sees the old version or the new one, never none; elsewhere it is renamed aside first.
    """
    base = os.path.dirname(target)
    if os.path.lexists(target):
        if not overwrite:
            raise ExportError(f"{target} appeared while exporting; nothing was replaced")
        if exchange_paths(staging, target):
            shutil.rmtree(staging, ignore_errors=True)  # now the old version
        else:
            retired = _scratch_path(base, _RETIRED_PREFIX, os.path.basename(target))
            os.rename(target, retired)
            os.rename(staging, target)
            shutil.rmtree(retired, ignore_errors=True)
    else:
        try:
            os.rename(staging, target)
        except OSError as error:
            raise ExportError(f"{target}: cannot publish the export ({error.strerror})") from None
    _fsync_folder(base)


def _refuse_existing(model_base: str, version: int, overwrite: bool) -> None:
    """Refuses an existing version folder without `overwrite`, and always one spelled otherwise ("007" for 7)."""
    names = os.listdir(model_base) if os.path.isdir(model_base) else []
    aliases = [name for name in names if is_version_name(name) and int(name) == version and name != str(version)]
    if aliases:
        raise ExportError(f"{model_base}: version {version} already exists as folder {aliases[0]!r}; remove it "
                          f"or choose another {errors.ref('version')}")
    target = os.path.join(model_base, str(version))
    if os.path.lexists(target) and not overwrite:
        raise ExportError(f"{target} exists: version {version} is already exported; pass {errors.ref('overwrite')} "
                          f"to replace it, or omit {errors.ref('version')} to take the next free one")


def export_segmenter(
    segmenter: inference.Segmenter,
    model_base: str,
    version: int,
    metadata: dict[str, Any],
    warmup_images: Sequence[np.ndarray] = (),
    overwrite: bool = False,
    verify: bool = True,
    from_4d: bool = True,
) -> tuple[str, float | None]:
    """Writes `segmenter` as version `version` under `model_base` (staged, verified, renamed into place).

    Returns:
        (version folder, largest |probability difference| found by `verify_export`, or None).
    """
    version = int(version)
    _refuse_existing(model_base, version, overwrite)
    target = os.path.join(model_base, str(version))
    os.makedirs(model_base, exist_ok=True)
    remove_abandoned_scratch(model_base)
    staging = _scratch_path(model_base, _STAGING_PREFIX, str(version))
    try:
        build_export_archive(segmenter, from_4d).write_out(staging, verbose=False)
        metadata_lib.write_metadata(staging, metadata)
        if warmup_images:
            warmup.write_warmup_file(staging, warmup_images, metadata.get("model_name", DEFAULT_MODEL_NAME))
        difference = None
        if verify:
            fallback = warmup_images or [warmup.synthetic_image(2, 32, segmenter.channels)]
            difference = verify_export(staging, segmenter, fallback)
        _fsync_tree(staging)
        _publish(staging, target, overwrite)
    finally:
        if os.path.exists(staging):
            shutil.rmtree(staging, ignore_errors=True)
    return target, difference


def export_run(config: ExportConfig) -> ExportResult:
    """Loads a training run and publishes it as the next (or the given) version.

    Raises:
        ExportError, inference.ModelLoadError: one line naming the flag or path.
    """
    config.validate()
    start = time.perf_counter()
    model_base = os.path.join(config.export_base, config.model_name)
    version = config.version if config.version is not None else next_version(model_base)
    _refuse_existing(model_base, version, config.overwrite)  # before the slow part
    from strokenet_tf import ensemble

    paths = [path for path in config.model_dir.split(",") if path]
    segmenter = ensemble.load_ensemble(paths, config.source, config.threshold, mirror=config.mirror,
                                       temperature=config.temperature, precision=config.precision)
    images = warmup.warmup_images(segmenter.channels, config.warmup_depths, config.warmup_size)
    metadata = metadata_lib.build_metadata(
        segmenter.trained, segmenter.member_paths[0], config.source, config.threshold, config.model_name, version,
        warmup_shapes=[image.shape[:3] for image in images],
    )
    metadata["ensemble"] = metadata_lib.ensemble_summary(segmenter)
    metadata["mirror"] = bool(segmenter.mirror)
    metadata["calibration"] = segmenter.calibration.to_dict()
    metadata["precision"] = segmenter.precision
    if not config.from_4d:
        metadata["signatures"].pop(signatures.FROM_4D, None)
    if len(segmenter.member_paths) > 1 or paths != segmenter.member_paths:
        metadata["run_dir"] = ",".join(os.path.abspath(path) for path in paths)
    version_dir, difference = export_segmenter(segmenter, model_base, version, metadata, images,
                                               overwrite=config.overwrite, verify=config.verify,
                                               from_4d=config.from_4d)
    return ExportResult(version_dir, version, time.perf_counter() - start, _tree_size_bytes(version_dir),
                        difference, metadata)


def deployment_dir() -> str | None:
    """The repository's export/ folder (models.config, batching parameters), when running from a checkout."""
    folder = pathlib.Path(__file__).resolve().parents[2] / "export"
    return str(folder) if (folder / "batching_parameters.txt").is_file() else None


def serving_command(export_base: str, model_name: str, config_dir: str | None = None) -> str:
    """The `docker run` line that serves EXPORT_BASE/model_name with the official GPU image (8500 gRPC, 8501 REST)."""
    lines = [
        "docker run --rm --gpus all -p 8500:8500 -p 8501:8501",
        f"  -v {os.path.abspath(export_base)}:/models:ro -e MODEL_NAME={model_name}",
    ]
    if config_dir:
        lines.append(f"  -v {os.path.abspath(config_dir)}:/config:ro")
    lines.append(f"  {SERVING_IMAGE}")
    if config_dir:
        lines.append("  --enable_batching=true --batching_parameters_file=/config/batching_parameters.txt")
    lines.append("  --rest_api_timeout_in_ms=120000 --grpc_max_threads=16")
    return " \\\n".join(lines)
