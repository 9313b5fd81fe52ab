"""TEST DOUBLE, not a server to deploy: a loaded SavedModel behind TF-Serving's Predict message formats.

No TF-Serving binary can be installed where the tests run, so this module stands in for
`tensorflow_model_server` in the client tests. It is deliberately thin: it speaks the wire formats
(gRPC `PredictionService/Predict` with `PredictRequest`/`PredictResponse` protos; REST
`POST /v1/models/NAME[/versions/V]:predict` with row "instances" or columnar "inputs" JSON, `{"b64": ...}`
strings, and `{"predictions"}`/`{"outputs"}` replies) and runs the request through
`tf.saved_model.load(export_dir).signatures[...]`, so the client's request building and response parsing are
tested against the real exported graph. Behaviour copied from TF-Serving where the client depends on it:
- model name and version checks (NOT_FOUND / 404), unknown signature (FAILED_PRECONDITION / 400);
- inputs must match the signature's input names and dtypes exactly (INVALID_ARGUMENT / 400);
- `output_filter` (gRPC only) selects outputs; outputs are returned as `tensor_content` protos;
- the gRPC server accepts messages up to 2 GiB (TF-Serving calls SetMaxMessageSize(INT32_MAX)).
Not copied: batching, version policies, warmup, model reloads, metadata/status APIs.

Example:
    with ServingDouble({"strokenet": "exports/strokenet/1"}) as double:
        client.ServingClient(double.grpc_address, "strokenet").segment_image(image)
"""

from __future__ import annotations

import base64
import concurrent.futures
import http.server
import json
import re
import threading

import grpc
import numpy as np
import tensorflow as tf
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

SERVING_DEFAULT = "serving_default"
_REST_PATH = re.compile(r"^/v1/models/(?P<name>[^/:]+)(?:/versions/(?P<version>\d+))?:predict$")
_MAX_MESSAGE = 2**31 - 1


class RequestError(Exception):
    """A request TF-Serving would refuse: (gRPC status code, HTTP status, message)."""

    def __init__(self, code: grpc.StatusCode, http_status: int, message: str):
        super().__init__(message)
        self.code, self.http_status, self.message = code, http_status, message


class Servable:
    """One loaded version: runs a named signature on numpy inputs with TF-Serving's input checks."""

    def __init__(self, export_dir: str, version: int):
        self.loaded = tf.saved_model.load(export_dir)
        self.version = version

    def run(self, signature_name: str, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        name = signature_name or SERVING_DEFAULT
        if name not in self.loaded.signatures:
            raise RequestError(grpc.StatusCode.FAILED_PRECONDITION, 400,
                               f"Serving signature name: \"{name}\" not found in signature def")
        function = self.loaded.signatures[name]
        specs = function.structured_input_signature[1]
        if set(inputs) != set(specs):
            raise RequestError(grpc.StatusCode.INVALID_ARGUMENT, 400,
                               f"input names {sorted(inputs)} do not match signature inputs {sorted(specs)}")
        tensors = {}
        for key, spec in specs.items():
            value = inputs[key]
            if spec.dtype == tf.string:
                tensor = tf.constant(value, tf.string)
            else:
                if np.asarray(value).dtype != spec.dtype.as_numpy_dtype:
                    raise RequestError(grpc.StatusCode.INVALID_ARGUMENT, 400,
                                       f"input {key!r}: expects dtype {spec.dtype.name}, got {np.asarray(value).dtype}")
                tensor = tf.constant(value)
            if not spec.shape.is_compatible_with(tensor.shape):
                raise RequestError(grpc.StatusCode.INVALID_ARGUMENT, 400,
                                   f"input {key!r}: shape {tensor.shape} does not match {spec.shape}")
            tensors[key] = tensor
        try:
            outputs = function(**tensors)
        except tf.errors.OpError as error:
            raise RequestError(grpc.StatusCode.INVALID_ARGUMENT, 400, error.message) from None
        return {key: value.numpy() for key, value in outputs.items()}


class ServingDouble:
    """Serves {model name: version folder} over in-process gRPC and REST on free localhost ports."""

    def __init__(self, models: dict[str, str], version: int = 1):
        self.servables = {name: Servable(path, version) for name, path in models.items()}
        self.requests: list[str] = []  # "grpc <signature>" / "rest <signature>", for assertions

    def _servable(self, name: str, version: int | None) -> Servable:
        servable = self.servables.get(name)
        if servable is None or (version is not None and version != servable.version):
            which = f"Specific({name}, {version})" if version is not None else f"Latest({name})"
            raise RequestError(grpc.StatusCode.NOT_FOUND, 404, f"Servable not found for request: {which}")
        return servable

    # ---------------------------------------------------------------------------------------------- gRPC
    def predict(self, request: predict_pb2.PredictRequest) -> predict_pb2.PredictResponse:
        """PredictRequest -> PredictResponse, as TF-Serving's Predict (raises RequestError)."""
        version = request.model_spec.version.value if request.model_spec.HasField("version") else None
        servable = self._servable(request.model_spec.name, version)
        signature = request.model_spec.signature_name or SERVING_DEFAULT
        self.requests.append(f"grpc {signature}")
        inputs = {key: tf.make_ndarray(tensor) for key, tensor in request.inputs.items()}
        outputs = servable.run(signature, inputs)
        wanted = list(request.output_filter) or list(outputs)
        unknown = [key for key in wanted if key not in outputs]
        if unknown:
            raise RequestError(grpc.StatusCode.INVALID_ARGUMENT, 400, f"output tensor alias not found: {unknown[0]}")
        response = predict_pb2.PredictResponse()
        response.model_spec.name = request.model_spec.name
        response.model_spec.version.value = servable.version
        response.model_spec.signature_name = signature
        for key in wanted:
            response.outputs[key].CopyFrom(tf.make_tensor_proto(outputs[key]))
        return response

    class _Servicer(prediction_service_pb2_grpc.PredictionServiceServicer):
        def __init__(self, double: "ServingDouble"):
            self.double = double

        def Predict(self, request, context):  # noqa: N802 (gRPC method name)
            try:
                return self.double.predict(request)
            except RequestError as error:
                context.abort(error.code, error.message)

    # ---------------------------------------------------------------------------------------------- REST
    def predict_rest(self, path: str, body: bytes) -> tuple[int, dict]:
        """(URL path, JSON body) -> (HTTP status, JSON reply), as TF-Serving's REST predict."""
        match = _REST_PATH.match(path)
        if match is None:
            return 404, {"error": f"Malformed request: POST {path}"}
        try:
            payload = json.loads(body)
            version = int(match["version"]) if match["version"] else None
            servable = self._servable(match["name"], version)
            signature = payload.get("signature_name") or SERVING_DEFAULT
            self.requests.append(f"rest {signature}")
            if "inputs" in payload:
                columnar = True
                inputs = payload["inputs"]
                if not isinstance(inputs, dict):
                    specs = servable.loaded.signatures[signature].structured_input_signature[1]
                    inputs = {next(iter(specs)): inputs}
            elif "instances" in payload:
                columnar = False
                rows = payload["instances"]
                if rows and isinstance(rows[0], dict):
                    inputs = {key: [row[key] for row in rows] for key in rows[0]}
                else:
                    specs = servable.loaded.signatures[signature].structured_input_signature[1]
                    inputs = {next(iter(specs)): rows}
            else:
                return 400, {"error": "Missing 'inputs' or 'instances' key"}
            specs = servable.loaded.signatures[signature].structured_input_signature[1] \
                if signature in servable.loaded.signatures else {}
            arrays = {}
            for key, value in inputs.items():
                spec = specs.get(key)
                if spec is not None and spec.dtype == tf.string:
                    arrays[key] = np.array([_decode_b64(item) for item in value], dtype=object)
                else:
                    dtype = spec.dtype.as_numpy_dtype if spec is not None else np.float32
                    arrays[key] = np.asarray(value, dtype=dtype)
            outputs = servable.run(signature, arrays)
        except RequestError as error:
            return error.http_status, {"error": error.message}
        except (ValueError, KeyError, TypeError) as error:
            return 400, {"error": f"JSON Parse error: {error}"}
        if columnar:
            return 200, {"outputs": {key: value.tolist() for key, value in outputs.items()}}
        batch = len(next(iter(outputs.values())))
        return 200, {"predictions": [{key: value[i].tolist() for key, value in outputs.items()} for i in range(batch)]}

    def _handler(self):
        double = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 (http.server method name)
                length = int(self.headers.get("Content-Length", 0))
                status, reply = double.predict_rest(self.path, self.rfile.read(length))
                data = json.dumps(reply).encode("utf-8")
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        return Handler

    # ------------------------------------------------------------------------------------------ lifecycle
    def __enter__(self) -> "ServingDouble":
        self._grpc = grpc.server(
            concurrent.futures.ThreadPoolExecutor(max_workers=2),
            options=[("grpc.max_send_message_length", _MAX_MESSAGE), ("grpc.max_receive_message_length", _MAX_MESSAGE)],
        )
        prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(self._Servicer(self), self._grpc)
        port = self._grpc.add_insecure_port("127.0.0.1:0")
        self._grpc.start()
        self.grpc_address = f"127.0.0.1:{port}"
        self._http = http.server.ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._http_thread = threading.Thread(target=self._http.serve_forever, daemon=True)
        self._http_thread.start()
        self.rest_address = f"127.0.0.1:{self._http.server_address[1]}"
        return self

    def __exit__(self, *exc_info) -> None:
        self._http.shutdown()
        self._http.server_close()
        self._grpc.stop(grace=None)


def _decode_b64(item) -> bytes:
    if isinstance(item, dict) and set(item) == {"b64"}:
        return base64.b64decode(item["b64"])
    if isinstance(item, str):
        return item.encode("utf-8")
    raise ValueError(f"expected a string or {{'b64': ...}} for a DT_STRING input, got {type(item).__name__}")
