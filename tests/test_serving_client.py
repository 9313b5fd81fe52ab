"""Tests for strokenet_tf.serving_client and strokenet_tf.serving.client.

The server is `serving_double.ServingDouble`: the exported SavedModel behind TF-Serving's gRPC and REST
message formats on localhost (a test double; no TF-Serving binary can be installed here).
"""

import base64
import json
import os

import nibabel as nib
import numpy as np
import pytest
import tensorflow as tf
from absl import flags
from tensorflow_serving.apis import predict_pb2

import serving_double
import serving_fixtures
from strokenet_tf import inference, serving_client
from strokenet_tf.data import isles, synthesis
from strokenet_tf.serving import client, exporting, signatures

MODEL = "strokenet"


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    return serving_fixtures.write_run(serving_fixtures.tiny_model(seed=5), str(tmp_path_factory.mktemp("run")))


@pytest.fixture(scope="module")
def double(run_dir, tmp_path_factory):
    result = exporting.export_run(exporting.ExportConfig(
        model_dir=run_dir, export_base=str(tmp_path_factory.mktemp("exports")), model_name=MODEL,
        warmup_depths=(), verify=False))
    with serving_double.ServingDouble({MODEL: result.version_dir}) as server:
        yield server


@pytest.fixture(scope="module")
def case_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("isles")
    (folder,) = synthesis.write_dataset(str(root), num_cases=1, seed=4, split="TESTING", size=20, depths=(3,),
                                         with_pwi=False)
    return str(folder)


@pytest.fixture(scope="module")
def expected(run_dir, case_dir):
    """What `predict` computes in-process for the case: (case, probabilities, mask)."""
    case = isles.read_case(case_dir)
    probabilities, mask = inference.Segmenter.from_run(run_dir).predict_case(case)
    assert 0 < mask.sum() < mask.size
    return case, probabilities, mask


def _image(shape=(3, 5, 4)):
    return np.random.default_rng(0).normal(size=(*shape, 5)).astype(np.float32)


def test_grpc_request_carries_a_float32_batch_of_one_and_the_output_filter():
    image = _image()
    request = client.build_predict_request(image, MODEL, version=4, output_keys=("mask",))
    assert request.model_spec.name == MODEL and request.model_spec.signature_name == "serving_default"
    assert request.model_spec.version.value == 4 and list(request.output_filter) == ["mask"]
    tensor = request.inputs["image"]
    assert tensor.dtype == tf.float32.as_datatype_enum
    assert [dim.size for dim in tensor.tensor_shape.dim] == [1, 3, 5, 4, 5]
    assert len(tensor.tensor_content) == image.nbytes  # compact bytes, not one float_val per voxel
    np.testing.assert_array_equal(tf.make_ndarray(tensor)[0], image)

    serialized = client.build_predict_request(image, MODEL, signature=signatures.SERIALIZED)
    assert not serialized.model_spec.HasField("version") and list(serialized.inputs) == ["image_bytes"]
    (payload,) = tf.make_ndarray(serialized.inputs["image_bytes"])
    np.testing.assert_array_equal(tf.io.parse_tensor(payload, tf.float32).numpy(), image)


def test_grpc_response_parsing_accepts_content_and_repeated_fields_and_checks_shapes():
    response = predict_pb2.PredictResponse()
    mask = np.array([[[[0, 1], [1, 0]]]], np.uint8)
    response.outputs["mask"].CopyFrom(tf.make_tensor_proto(mask))
    response.outputs["probabilities"].dtype = tf.float32.as_datatype_enum  # float_val form, as some servers send
    response.outputs["probabilities"].tensor_shape.CopyFrom(tf.TensorShape([1, 1, 2, 2]).as_proto())
    response.outputs["probabilities"].float_val.extend([0.1, 0.9, 0.8, 0.2])
    probabilities, parsed_mask = client.parse_predict_response(response, (1, 2, 2))
    np.testing.assert_array_equal(parsed_mask, mask[0])
    np.testing.assert_allclose(probabilities, [[[0.1, 0.9], [0.8, 0.2]]], rtol=1e-6)
    with pytest.raises(client.ServingError, match=r"shape \(1, 1, 2, 2\); expected \(1, 1, 2, 3\)"):
        client.parse_predict_response(response, (1, 2, 3))
    with pytest.raises(client.ServingError, match="no 'mask' output"):
        client.parse_predict_response(predict_pb2.PredictResponse(), (1, 2, 2))


def test_rest_body_and_response_formats():
    image = _image()
    body = client.build_rest_body(image)
    assert body["signature_name"] == "serialized" and list(body["inputs"]) == ["image_bytes"]
    (item,) = body["inputs"]["image_bytes"]
    decoded = tf.io.parse_tensor(base64.b64decode(item["b64"]), tf.float32).numpy()
    np.testing.assert_array_equal(decoded, image)
    plain = client.build_rest_body(image, signatures.SERVING_DEFAULT)
    assert np.asarray(plain["inputs"]["image"]).shape == (1, 3, 5, 4, 5)
    assert len(json.dumps(body)) < len(json.dumps(plain)) / 2

    columnar = {"outputs": {"mask": [[[[1, 0]]]], "probabilities": [[[[0.75, 0.25]]]]}}
    rows = {"predictions": [{"mask": [[[1, 0]]], "probabilities": [[[0.75, 0.25]]]}]}
    for reply in (columnar, rows):
        probabilities, mask = client.parse_rest_response(reply, (1, 1, 2))
        assert mask.dtype == np.uint8 and mask.tolist() == [[[1, 0]]]
        assert probabilities.dtype == np.float32 and probabilities.tolist() == [[[0.75, 0.25]]]
    with pytest.raises(client.ServingError, match="server error: Servable not found"):
        client.parse_rest_response({"error": "Servable not found for request: Latest(x)"}, (1, 1, 2))
    url = client.rest_predict_url("host:8501", MODEL, 3)
    assert url == "http://host:8501/v1/models/strokenet/versions/3:predict"


def test_grpc_channel_raises_the_message_size_limits():
    options = dict(client.grpc_channel_options(512 << 20))
    assert options == {"grpc.max_send_message_length": 512 << 20, "grpc.max_receive_message_length": 512 << 20}


@pytest.mark.parametrize("protocol, signature", [("grpc", None), ("grpc", "serialized"), ("rest", None),
                                                 ("rest", "serving_default")])
def test_client_writes_the_mask_predict_computes_in_the_input_geometry(double, case_dir, expected, tmp_path,
                                                                       protocol, signature):
    case, expected_probabilities, expected_mask = expected
    server = double.grpc_address if protocol == "grpc" else double.rest_address
    config = serving_client.ClientConfig(
        server=server, model_name=MODEL, input=case_dir, output=str(tmp_path / "mask.nii.gz"), protocol=protocol,
        signature=signature, probabilities_output=str(tmp_path / "probabilities.nii.gz"))
    summary = serving_client.run(config)
    used = signature or ("serving_default" if protocol == "grpc" else "serialized")
    assert double.requests[-1] == f"{protocol} {used}"
    assert summary["lesion_voxels"] == int(expected_mask.sum()) and summary["shape"] == expected_mask.shape

    written = nib.load(config.output)
    reference = nib.load(case.source_files[isles.CT])
    assert written.shape == reference.shape and written.get_data_dtype() == np.uint8
    np.testing.assert_array_equal(written.affine, reference.affine)
    assert written.header.get_zooms() == reference.header.get_zooms()
    np.testing.assert_array_equal(isles.nifti_to_network(np.asarray(written.dataobj)), expected_mask)
    probabilities = isles.nifti_to_network(np.asarray(nib.load(config.probabilities_output).dataobj))
    np.testing.assert_allclose(probabilities, expected_probabilities, rtol=0, atol=1e-5)
    assert not [name for name in os.listdir(tmp_path) if name.startswith(".tmp-")]


def test_grpc_without_probabilities_asks_for_the_mask_only(double, case_dir, expected):
    connection = client.ServingClient(double.grpc_address, MODEL, version=1)
    probabilities, mask = connection.segment_image(isles.read_case(case_dir).image)
    connection.close()
    assert probabilities is None
    np.testing.assert_array_equal(mask, expected[2])


def test_request_failures_are_one_line_serving_errors(double, case_dir):
    image = isles.read_case(case_dir).image
    failures = [
        (client.ServingClient(double.grpc_address, "other"), r"gRPC NOT_FOUND: Servable not found"),
        (client.ServingClient(double.grpc_address, MODEL, version=9), r"NOT_FOUND"),
        (client.ServingClient(double.rest_address, "other", protocol="rest"), r"HTTP 404: Servable not found"),
        (client.ServingClient(double.grpc_address, MODEL, max_message_bytes=4096),
         r"RESOURCE_EXHAUSTED.*raise max_message_bytes"),
        (client.ServingClient("127.0.0.1:1", MODEL, timeout_s=10), r"127.0.0.1:1: gRPC UNAVAILABLE"),
        (client.ServingClient("127.0.0.1:1", MODEL, protocol="rest", timeout_s=10), r"cannot reach TF-Serving"),
    ]
    for connection, pattern in failures:
        with pytest.raises(client.ServingError, match=pattern) as error_info:
            connection.segment_image(image)
        connection.close()
        assert "\n" not in str(error_info.value)
    with pytest.raises(client.ServingError, match="INVALID_ARGUMENT"):  # 4 channels for a 5-channel model
        client.ServingClient(double.grpc_address, MODEL).segment_image(image[..., :4])


def _flag_values(**values) -> flags.FlagValues:
    flag_values = flags.FlagValues()
    serving_client.define_flags(flag_values)
    flag_values(["serving_client"] + [f"--{key}={value}" for key, value in values.items()])
    return flag_values


def test_cli_writes_the_mask_and_refuses_to_overwrite(double, case_dir, expected, tmp_path, capsys):
    output = str(tmp_path / "case_mask.nii")
    values = dict(server=double.grpc_address, model_name=MODEL, input=case_dir, output=output)
    serving_client.main(["serving_client"], _flag_values(**values))
    assert f"-> {output}" in capsys.readouterr().out
    np.testing.assert_array_equal(isles.nifti_to_network(np.asarray(nib.load(output).dataobj)), expected[2])

    requests = len(double.requests)
    with pytest.raises(SystemExit) as exit_info:
        serving_client.main(["serving_client"], _flag_values(**values))
    error = capsys.readouterr().err
    assert exit_info.value.code == 2 and error.count("\n") == 1
    assert error.startswith("strokenet_tf.serving_client: error: --output: ") and "--overwrite" in error
    assert len(double.requests) == requests  # refused before asking the server
    serving_client.main(["serving_client"], _flag_values(**values, overwrite=True))


@pytest.mark.parametrize("values, expected_error", [
    (dict(input="/nonexistent/case_1"), "--input: /nonexistent/case_1 is not a case folder"),
    (dict(output="mask.png"), "--output: mask.png must end in .nii or .nii.gz"),
    (dict(server="127.0.0.1:1", timeout_s=10), "127.0.0.1:1: gRPC UNAVAILABLE"),
])
def test_cli_errors_are_one_line(case_dir, tmp_path, capsys, values, expected_error):
    flag_values = dict(server="127.0.0.1:1", model_name=MODEL, input=case_dir, output=str(tmp_path / "m.nii.gz"))
    flag_values.update(values)
    with pytest.raises(SystemExit) as exit_info:
        serving_client.main(["serving_client"], _flag_values(**flag_values))
    error = capsys.readouterr().err
    assert exit_info.value.code == 2 and error.count("\n") == 1 and "Traceback" not in error
    assert error.startswith("strokenet_tf.serving_client: error: ") and expected_error in error


def test_row_format_rest_request_through_the_double(double, case_dir, expected):
    image = isles.read_case(case_dir).image
    payload = base64.b64encode(client.serialize_image(image)).decode("ascii")
    body = {"signature_name": "serialized", "instances": [{"image_bytes": {"b64": payload}}]}
    status, reply = double.predict_rest(f"/v1/models/{MODEL}/versions/1:predict", json.dumps(body).encode())
    assert status == 200 and list(reply) == ["predictions"]
    probabilities, mask = client.parse_rest_response(reply, image.shape[:3])
    np.testing.assert_array_equal(mask, expected[2])
    np.testing.assert_allclose(probabilities, expected[1], rtol=0, atol=1e-5)
    status, reply = double.predict_rest(f"/v1/models/{MODEL}:predict", json.dumps({"inputs": {"x": [1]}}).encode())
    assert status == 400 and "do not match signature inputs" in reply["error"]
