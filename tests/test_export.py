"""Tests for strokenet_tf.export and strokenet_tf.serving.exporting: the TF-Serving SavedModel export.

Checked without a TF-Serving binary: signatures, dtypes and dynamic dims (in this process and in a fresh
one with `saved_model_cli show --all`), equality with the in-process Segmenter on odd sizes, the in-graph
preprocessing ops, warmup replay through the TF-Serving message format, versions, atomic publishing and a
mixed_float16 model.
"""

import json
import os
import socket
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf
from absl import flags
from absl import logging as absl_logging
from tensorflow.core.protobuf import saved_model_pb2

import serving_double
import serving_fixtures
from strokenet_tf import ensemble, export, inference
from strokenet_tf.data import isles, preprocess
from strokenet_tf.serving import exporting, metadata as metadata_lib, signatures, warmup

WARMUP_DEPTH, WARMUP_SIZE = 3, 16


def _flag_values(**values) -> flags.FlagValues:
    flag_values = flags.FlagValues()
    export.define_flags(flag_values)
    argv = ["export"] + [f"--{key}={value}" for key, value in values.items()]
    flag_values(argv)
    return flag_values


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    model = serving_fixtures.tiny_model()
    return serving_fixtures.write_run(model, str(tmp_path_factory.mktemp("run")))


@pytest.fixture(scope="module")
def exported(run_dir, tmp_path_factory):
    """Version 1, exported through the command line entry point; (export_base, version_dir, stdout)."""
    export_base = str(tmp_path_factory.mktemp("exports"))
    flag_values = _flag_values(model=run_dir, export_base=export_base, warmup_depths=WARMUP_DEPTH,
                               warmup_size=WARMUP_SIZE)
    capture = _Capture()
    with capture:
        export.main(["export"], flag_values)
    return export_base, os.path.join(export_base, "strokenet", "1"), capture.text


class _Capture:
    """Captures print() output without pytest's capsys (a module-scoped fixture cannot use it)."""

    def __enter__(self):
        import io
        self._stdout, self._buffer = sys.stdout, io.StringIO()
        sys.stdout = self._buffer

    def __exit__(self, *exc_info):
        sys.stdout = self._stdout
        self.text = self._buffer.getvalue()


@pytest.fixture(scope="module")
def segmenter(run_dir):
    return inference.Segmenter.from_run(run_dir)


@pytest.fixture(scope="module")
def loaded(exported):
    return tf.saved_model.load(exported[1])


@pytest.fixture(scope="module")
def adapter(exported):
    """The contract's adapter (what `evaluate` uses for exports): reads the metadata, calls serving_default."""
    return ensemble.load_segmenter(exported[1])


def test_cli_publishes_version_1_with_metadata_warmup_and_serving_command(exported, run_dir):
    export_base, version_dir, stdout = exported
    assert sorted(os.listdir(os.path.join(export_base, "strokenet"))) == ["1"]  # no staging folder left
    for name in ("saved_model.pb", "variables", inference.EXPORT_METADATA_FILE, warmup.WARMUP_FILE):
        assert os.path.exists(os.path.join(version_dir, name)), name
    assert f"{version_dir} (" in stdout and "version 1" in stdout
    assert "docker run" in stdout and "tensorflow/serving:latest-gpu" in stdout
    assert "-p 8500:8500 -p 8501:8501" in stdout
    assert f"{os.path.abspath(export_base)}:/models" in stdout and "MODEL_NAME=strokenet" in stdout

    metadata = metadata_lib.read_metadata(version_dir)
    assert metadata["channels"] == list(isles.DEFAULT_CHANNELS) and isinstance(metadata["channels"], list)
    assert metadata["threshold"] == inference.DEFAULT_THRESHOLD and isinstance(metadata["threshold"], float)
    assert metadata["normalization"] == json.loads(json.dumps(preprocess.normalization_constants()))
    assert metadata["multiples"] == list(serving_fixtures.MODEL_CONFIG.required_multiples)
    assert metadata["metrics"]["dice"] == serving_fixtures.BEST_METRICS["dice"] and metadata["metrics"]["epoch"] == 2
    assert metadata["source_checkpoint"] == os.path.join(os.path.abspath(run_dir), "best.keras")
    assert metadata["run_id"].startswith(os.path.basename(run_dir) + "-") and len(metadata["run_id"]) > 13
    assert metadata["run_id"] == metadata_lib.run_id(run_dir)  # stable
    assert metadata["tensorflow_version"] == tf.__version__ and metadata["keras_version"] == keras.__version__
    assert metadata["exported_at"].endswith("+00:00") and metadata["version"] == 1
    assert metadata["warmup_shapes"] == [[WARMUP_DEPTH, WARMUP_SIZE, WARMUP_SIZE]]
    assert metadata["dtype_policies"] == ["float32"] and metadata["model_source"] == "best"
    assert metadata["signatures"]["serving_default"]["inputs"]["image"] == {"shape": [-1, -1, -1, -1, 5],
                                                                             "dtype": "float32"}


def test_signatures_have_the_contract_names_dtypes_and_dynamic_dims(loaded):
    assert set(signatures.EXPORTED_SIGNATURES) <= set(loaded.signatures)
    default = loaded.signatures[signatures.SERVING_DEFAULT]
    (image_spec,) = default.structured_input_signature[1].values()
    assert list(default.structured_input_signature[1]) == [inference.INPUT_KEY]
    assert image_spec.dtype == tf.float32 and image_spec.shape.as_list() == [None, None, None, None, 5]
    outputs = default.structured_outputs
    assert set(outputs) == {inference.PROBABILITIES_KEY, inference.MASK_KEY, inference.UNCERTAINTY_KEY}
    assert outputs[inference.PROBABILITIES_KEY].dtype == tf.float32
    assert outputs[inference.MASK_KEY].dtype == tf.uint8
    assert outputs[inference.MASK_KEY].shape.as_list() == [None, None, None, None]
    serialized = loaded.signatures[signatures.SERIALIZED].structured_input_signature[1]
    assert {key: (spec.dtype, spec.shape.as_list()) for key, spec in serialized.items()} == {
        signatures.SERIALIZED_INPUT_KEY: (tf.string, [None])}


@pytest.mark.parametrize("shape", [(1, 8, 8), (3, 13, 11), (5, 17, 9), (2, 31, 20)])
def test_export_equals_segmenter_on_odd_sizes(adapter, loaded, segmenter, make_case, shape):
    case = make_case(*shape, rng=np.random.default_rng(sum(shape)))
    expected_probabilities, expected_mask = segmenter.predict_case(case)
    outputs = loaded.signatures["serving_default"](image=tf.constant(case.image[np.newaxis]))
    assert outputs["probabilities"].shape == (1, *shape) and outputs["mask"].dtype == tf.uint8
    np.testing.assert_allclose(outputs["probabilities"].numpy()[0], expected_probabilities, rtol=0, atol=1e-5)
    np.testing.assert_array_equal(outputs["mask"].numpy()[0], expected_mask)
    assert 0 < expected_mask.sum() < expected_mask.size  # the comparison is not between two empty masks
    assert isinstance(adapter, inference.SavedModelSegmenter) and adapter.channels == isles.DEFAULT_CHANNELS
    probabilities, mask = adapter.predict_case(case)
    np.testing.assert_allclose(probabilities, expected_probabilities, rtol=0, atol=1e-5)
    np.testing.assert_array_equal(mask, expected_mask)


def test_nan_cleaning_and_serialized_signature_are_in_the_graph(loaded, segmenter, make_case):
    image = make_case(3, 13, 11).image.copy()
    image[0, 2, 3, 1], image[1, 5, 5, 4], image[2, 7, 1, 0] = np.nan, np.inf, -np.inf
    expected_probabilities, expected_mask = segmenter.predict_image(image)
    assert np.isfinite(expected_probabilities).all()
    default = loaded.signatures["serving_default"](image=tf.constant(image[np.newaxis]))
    serialized = loaded.signatures["serialized"](
        image_bytes=tf.constant([tf.make_tensor_proto(image).SerializeToString()]))
    for outputs in (default, serialized):
        np.testing.assert_allclose(outputs["probabilities"].numpy()[0], expected_probabilities, rtol=0, atol=1e-5)
        np.testing.assert_array_equal(outputs["mask"].numpy()[0], expected_mask)


def test_saved_graph_holds_preprocessing_and_no_python_ops(exported):
    saved_model = saved_model_pb2.SavedModel()
    with open(os.path.join(exported[1], "saved_model.pb"), "rb") as stream:
        saved_model.ParseFromString(stream.read())
    graph = saved_model.meta_graphs[0].graph_def
    ops = {node.op for node in graph.node}
    for function in graph.library.function:
        ops.update(node.op for node in function.node_def)
    # NaN cleaning, percentiles (sort), clipping, padding, network, sigmoid, inverse crop, threshold, parsing.
    assert {"IsFinite", "TopKV2", "Minimum", "Maximum", "Pad", "Conv3D", "Sigmoid", "Slice", "GreaterEqual",
            "ParseTensor"} <= ops, sorted(ops)
    assert not ops & {"PyFunc", "EagerPyFunc", "PyFuncStateless"}


def test_saved_model_holds_each_endpoint_graph_once(exported):
    """Every endpoint graph is traced once (`exporting.build_export_archive`): the library has no two copies of a
    graph (before, `tf.saved_model.save` traced each endpoint again and saved both traces)."""
    saved_model = saved_model_pb2.SavedModel()
    with open(os.path.join(exported[1], "saved_model.pb"), "rb") as stream:
        saved_model.ParseFromString(stream.read())
    library = saved_model.meta_graphs[0].graph_def.library.function
    graphs = [tuple(sorted(node.op for node in function.node_def)) for function in library
              if function.signature.name.startswith("__inference_") and len(function.node_def) > 50]
    assert len(graphs) >= 3 and len(set(graphs)) == len(graphs), sorted(f.signature.name for f in library)


def test_fresh_process_loads_the_export_and_saved_model_cli_shows_it(exported):
    script = (
        "import json, sys, tensorflow as tf\n"
        "loaded = tf.saved_model.load(sys.argv[1])\n"
        "out = {}\n"
        "for name, fn in loaded.signatures.items():\n"
        "    inputs = {k: [s.dtype.name, s.shape.as_list()] for k, s in fn.structured_input_signature[1].items()}\n"
        "    outputs = {k: [s.dtype.name, s.shape.as_list()] for k, s in fn.structured_outputs.items()}\n"
        "    out[name] = [inputs, outputs]\n"
        "image = tf.zeros([1, 3, 9, 10, 5])\n"
        "result = loaded.signatures['serving_default'](image=image)\n"
        "out['run'] = [result['mask'].shape.as_list(), result['mask'].dtype.name]\n"
        "print('RESULT ' + json.dumps(out))\n"
    )
    environment = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    loaded = subprocess.run([sys.executable, "-c", script, exported[1]], capture_output=True, text=True,
                            env=environment, timeout=300)
    assert loaded.returncode == 0, loaded.stderr[-2000:]
    result = json.loads(loaded.stdout.split("RESULT ", 1)[1])
    assert result["serving_default"] == [{"image": ["float32", [None, None, None, None, 5]]},
                                         {"mask": ["uint8", [None, None, None, None]],
                                          "probabilities": ["float32", [None, None, None, None]],
                                          "uncertainty": ["float32", [None, None, None, None]]}]
    assert result["serialized"][0] == {"image_bytes": ["string", [None]]}
    assert result["run"] == [[1, 3, 9, 10], "uint8"]

    shown = subprocess.run([sys.executable, "-m", "tensorflow.python.tools.saved_model_cli", "show", "--dir",
                            exported[1], "--all"], capture_output=True, text=True, env=environment, timeout=300)
    assert shown.returncode == 0, shown.stderr[-2000:]
    default = shown.stdout.split("signature_def['serving_default']", 1)[1].split("signature_def[", 1)[0]
    assert "inputs['image'] tensor_info:\n        dtype: DT_FLOAT\n        shape: (-1, -1, -1, -1, 5)" in default
    assert "outputs['mask'] tensor_info:\n        dtype: DT_UINT8\n        shape: (-1, -1, -1, -1)" in default
    assert "outputs['probabilities'] tensor_info:\n        dtype: DT_FLOAT" in default
    assert "Method name is: tensorflow/serving/predict" in default
    assert "signature_def['serialized']" in shown.stdout


def test_warmup_file_replays_through_the_loaded_signature(exported, segmenter):
    requests = list(warmup.read_warmup_requests(exported[1]))
    assert len(requests) == 1
    (request,) = requests
    assert request.model_spec.name == "strokenet" and request.model_spec.signature_name == "serving_default"
    image = tf.make_ndarray(request.inputs["image"])
    assert image.dtype == np.float32 and image.shape == (1, WARMUP_DEPTH, WARMUP_SIZE, WARMUP_SIZE, 5)
    # A synthetic head, not zeros: CT everywhere (air is -1000 HU) and perfusion maps inside the brain.
    assert np.count_nonzero(image[..., 0]) == image[..., 0].size and np.count_nonzero(image[..., 1:]) > 0
    double = serving_double.ServingDouble({"strokenet": exported[1]})
    response = double.predict(request)  # the TF-Serving Predict message path, as at model load
    expected_probabilities, expected_mask = segmenter.predict_image(image[0])
    np.testing.assert_array_equal(tf.make_ndarray(response.outputs["mask"])[0], expected_mask)
    np.testing.assert_allclose(tf.make_ndarray(response.outputs["probabilities"])[0], expected_probabilities,
                               rtol=0, atol=1e-5)


def test_warmup_head_has_the_extent_and_value_ranges_of_isles_like_heads():
    """The warmup phantom's brain spans what the ISLES-like heads of `data.synthesize` span at 256 x 256 (the box
    the members run on, hence the shapes TF-Serving tunes), with maps only inside it and a lesion."""
    channels = isles.DEFAULT_CHANNELS + (isles.PWI,)
    image = warmup.synthetic_image(4, 256, channels, seed=3)
    assert image.shape == (4, 256, 256, 6) and image.dtype == np.float32 and np.isfinite(image).all()
    maps = image[..., 1:5]
    brain = maps.sum(axis=-1) > 0
    rows, cols = np.nonzero(brain.any(axis=0))
    assert 175 <= rows.max() - rows.min() <= 200 and 150 <= cols.max() - cols.min() <= 175
    assert (maps[brain] > 0).all() and not maps[~brain].any()
    ct = image[..., 0]
    assert ct.min() < -950 and ct.max() > 800 and 20 < np.median(ct[brain]) < 45
    assert 0.03 < np.mean(image[..., 4][brain] > 6.0) < 0.5  # Tmax > 6 s: a hypoperfused territory
    assert np.array_equal(image, warmup.synthetic_image(4, 256, channels, seed=3))
    with pytest.raises(ValueError, match="cannot synthesise channel"):
        warmup.synthetic_image(2, 32, (isles.CT, "DWI"))


def test_verification_refuses_other_weights_and_restores_the_graph_optimizer(exported, run_dir):
    """verify_export (run with grappler off on both sides) still tells a SavedModel from a Segmenter with other
    weights, and leaves the optimizer setting as it found it."""
    version_dir = exported[1]
    other = inference.Segmenter.from_run(run_dir)
    for variable in other.model.trainable_variables:
        variable.assign(np.asarray(variable) * 1.5 + 0.01)
    with pytest.raises(exporting.ExportError, match="differs from the Segmenter"):
        exporting.verify_export(version_dir, other)
    assert not tf.config.optimizer.get_experimental_options().get("disable_meta_optimizer", False)
    assert exporting.verify_export(version_dir, inference.Segmenter.from_run(run_dir)) <= exporting.PROBABILITY_TOLERANCE
    assert not tf.config.optimizer.get_experimental_options().get("disable_meta_optimizer", False)


def test_version_names_follow_tf_serving(tmp_path):
    assert exporting.is_version_name("1") and exporting.is_version_name("007")
    assert not any(exporting.is_version_name(name) for name in
                   (".tmp-export-0123456789ab-3", ".tmp-replaced-0123456789ab-3", "v1", "1.0", ""))
    base = tmp_path / "strokenet"
    assert exporting.next_version(str(base)) == 1
    for name in ("1", "3", ".tmp-export-abc-7", "notes"):
        (base / name).mkdir(parents=True)
    (base / "9").write_text("a file, not a version folder")
    assert exporting.existing_versions(str(base)) == [1, 3] and exporting.next_version(str(base)) == 4
    (base / "003").mkdir()  # TF-Serving reads it as version 3 too: never add a second folder for 3
    with pytest.raises(exporting.ExportError, match="version 3 already exists as folder '003'"):
        exporting.export_segmenter(None, str(base), 3, {}, overwrite=True)


def test_scratch_folders_of_dead_exports_on_this_host_are_removed_and_others_kept(tmp_path):
    base = tmp_path / "strokenet"
    finished = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                              text=True, check=True)
    dead_pid, host = int(finished.stdout), socket.gethostname()
    names = {
        "dead_here": f".tmp-export-0123456789ab-{dead_pid}@{host}-3",
        "dead_retired": f".tmp-replaced-0123456789ab-{dead_pid}@{host}-1",
        "alive_here": f".tmp-export-0123456789ab-{os.getpid()}@{host}-4",
        "dead_elsewhere": f".tmp-export-0123456789ab-{dead_pid}@not-{host}-5",
        "unknown_origin": ".tmp-export-0123456789ab-6",
        "version": "2",
    }
    for name in names.values():
        (base / name).mkdir(parents=True)
    removed = exporting.remove_abandoned_scratch(str(base))
    assert sorted(removed) == sorted(str(base / names[key]) for key in ("dead_here", "dead_retired"))
    assert sorted(os.listdir(base)) == sorted(names[key] for key in
                                              ("alive_here", "dead_elsewhere", "unknown_origin", "version"))
    assert exporting.remove_abandoned_scratch(str(tmp_path / "absent")) == []


def test_existing_version_is_refused_without_overwrite(exported, run_dir, capsys):
    export_base, version_dir, _ = exported
    before = os.path.getmtime(os.path.join(version_dir, "saved_model.pb"))
    with pytest.raises(SystemExit) as exit_info:
        export.main(["export"], _flag_values(model=run_dir, export_base=export_base, version=1))
    assert exit_info.value.code == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("strokenet_tf.export: error: ") and "--overwrite" in error and version_dir in error
    assert "\n" not in error and os.path.getmtime(os.path.join(version_dir, "saved_model.pb")) == before


@pytest.mark.parametrize("flag, value, expected", [
    ("model", "/nonexistent/run", "/nonexistent/run: no such model folder"),
    ("version", "0", "--version: expected a positive integer"),
    ("threshold", "1.5", "--threshold"),
    ("warmup_depths", "8,x", "--warmup_depths: expected integers"),
    ("model_name", ".hidden", "--model_name"),
])
def test_bad_flags_give_one_line_errors(run_dir, tmp_path, capsys, flag, value, expected):
    values = {"model": run_dir, "export_base": str(tmp_path), flag: value}
    verbosity = absl_logging.get_verbosity()
    with pytest.raises(SystemExit) as exit_info:
        export.main(["export"], _flag_values(**values))
    assert absl_logging.get_verbosity() == verbosity  # other tests' log capture is left alone
    error = capsys.readouterr().err
    assert exit_info.value.code == 2 and error.count("\n") == 1 and "Traceback" not in error
    assert error.startswith("strokenet_tf.export: error: ") and expected in error
    assert not os.listdir(tmp_path)


def test_overwrite_stages_invisibly_then_replaces_the_version(exported, run_dir, monkeypatch):
    export_base, version_dir, _ = exported
    model_base = os.path.dirname(version_dir)
    old_metadata = metadata_lib.read_metadata(version_dir)
    seen = {}
    real_verify = exporting.verify_export

    def inspecting_verify(staging, segmenter, fallback_images=()):
        # Mid-export: TF-Serving would still see only the old version 1; the new one is a hidden folder.
        seen["listing"] = sorted(os.listdir(model_base))
        seen["versions"] = exporting.existing_versions(model_base)
        seen["version_1_run"] = metadata_lib.read_metadata(version_dir)["exported_at"]
        return real_verify(staging, segmenter, fallback_images)

    monkeypatch.setattr(exporting, "verify_export", inspecting_verify)
    result = exporting.export_run(exporting.ExportConfig(
        model_dir=run_dir, export_base=export_base, version=1, overwrite=True, threshold=0.25, warmup_depths=()))
    assert seen["versions"] == [1] and seen["version_1_run"] == old_metadata["exported_at"]
    (staging,) = [name for name in seen["listing"] if name != "1"]
    assert staging.startswith(".tmp-export-") and not exporting.is_version_name(staging)
    assert result.version_dir == version_dir and sorted(os.listdir(model_base)) == ["1"]
    assert metadata_lib.read_metadata(version_dir)["threshold"] == 0.25
    assert not os.path.exists(os.path.join(version_dir, warmup.WARMUP_FILE))
    assert result.max_probability_difference is not None and result.max_probability_difference <= 1e-5


def test_failed_export_leaves_no_version_and_no_staging(run_dir, tmp_path, monkeypatch):
    def broken_archive(segmenter, from_4d=True):
        raise RuntimeError("disk full")

    monkeypatch.setattr(exporting, "build_export_archive", broken_archive)
    with pytest.raises(RuntimeError, match="disk full"):
        exporting.export_run(exporting.ExportConfig(model_dir=run_dir, export_base=str(tmp_path), warmup_depths=()))
    assert os.listdir(tmp_path / "strokenet") == []


def test_mixed_float16_model_exports_float32_signatures(tmp_path, make_case):
    model = serving_fixtures.tiny_model(policy="mixed_float16")
    assert any(layer.compute_dtype == "float16" for layer in model.layers)
    mixed = inference.Segmenter(model, isles.DEFAULT_CHANNELS, serving_fixtures.MODEL_CONFIG.required_multiples)
    metadata = {"model_name": "strokenet", "channels": list(isles.DEFAULT_CHANNELS), "threshold": 0.5}
    version_dir, _ = exporting.export_segmenter(mixed, str(tmp_path / "strokenet"), 1, metadata, verify=False)
    loaded = tf.saved_model.load(version_dir)
    signature = loaded.signatures["serving_default"]
    assert signature.structured_input_signature[1]["image"].dtype == tf.float32
    assert signature.structured_outputs["probabilities"].dtype == tf.float32
    assert signature.structured_outputs["mask"].dtype == tf.uint8
    case = make_case(3, 13, 11)
    outputs = signature(image=tf.constant(case.image[np.newaxis]))
    assert outputs["probabilities"].dtype == tf.float32 and outputs["mask"].dtype == tf.uint8
    mixed_probabilities, mixed_mask = mixed.predict_case(case)  # the in-process mixed-precision Segmenter
    np.testing.assert_allclose(outputs["probabilities"].numpy()[0], mixed_probabilities, rtol=0, atol=1e-5)
    np.testing.assert_array_equal(outputs["mask"].numpy()[0], mixed_mask)
    # Same weights in float32: float16 compute stays within a small tolerance.
    reference = serving_fixtures.tiny_model(policy="float32")
    reference.set_weights(model.get_weights())
    float32_probabilities, _ = inference.Segmenter(
        reference, isles.DEFAULT_CHANNELS, serving_fixtures.MODEL_CONFIG.required_multiples).predict_case(case)
    np.testing.assert_allclose(outputs["probabilities"].numpy()[0], float32_probabilities, rtol=0, atol=1e-2)


def _batching_parameters_class():
    """tensorflow.serving.BatchingParameters (session_bundle_config.proto; tensorflow-serving-api does not ship
    it), built from its field list so the text file is parsed by protobuf itself."""
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory, wrappers_pb2

    pool = descriptor_pool.DescriptorPool()
    pool.AddSerializedFile(wrappers_pb2.DESCRIPTOR.serialized_pb)
    proto = descriptor_pb2.FileDescriptorProto(name="batching_parameters_test.proto", package="tensorflow.serving",
                                               syntax="proto3", dependency=["google/protobuf/wrappers.proto"])
    message = proto.message_type.add(name="BatchingParameters")
    field = descriptor_pb2.FieldDescriptorProto
    wrapped = [("max_batch_size", 1, "Int64Value"), ("batch_timeout_micros", 2, "Int64Value"),
               ("max_enqueued_batches", 3, "Int64Value"), ("num_batch_threads", 4, "Int64Value"),
               ("thread_pool_name", 5, "StringValue")]
    for name, number, wrapper in wrapped:
        message.field.add(name=name, number=number, type=field.TYPE_MESSAGE, label=field.LABEL_OPTIONAL,
                          type_name=f".google.protobuf.{wrapper}")
    message.field.add(name="allowed_batch_sizes", number=6, type=field.TYPE_INT64, label=field.LABEL_REPEATED)
    message.field.add(name="pad_variable_length_inputs", number=7, type=field.TYPE_BOOL, label=field.LABEL_OPTIONAL)
    pool.Add(proto)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("tensorflow.serving.BatchingParameters"))


def test_deployment_files_parse_as_tf_serving_protos():
    from google.protobuf import text_format
    from tensorflow_serving.config import model_server_config_pb2

    folder = exporting.deployment_dir()
    assert folder is not None and os.path.isfile(os.path.join(folder, "README.md"))
    with open(os.path.join(folder, "models.config"), encoding="utf-8") as stream:
        config = text_format.Parse(stream.read(), model_server_config_pb2.ModelServerConfig())
    (model,) = config.model_config_list.config
    assert (model.name, model.base_path, model.model_platform) == ("strokenet", "/models/strokenet", "tensorflow")
    assert model.model_version_policy.latest.num_versions == 1
    with open(os.path.join(folder, "batching_parameters.txt"), encoding="utf-8") as stream:
        batching = text_format.Parse(stream.read(), _batching_parameters_class()())
    # Whole slabs of different sizes are never merged or padded (see the file's comments).
    assert batching.max_batch_size.value == 1 and not batching.pad_variable_length_inputs
    assert batching.num_batch_threads.value >= 1 and batching.max_enqueued_batches.value >= 1
