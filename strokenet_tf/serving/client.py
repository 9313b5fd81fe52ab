"""Talking to TF-Serving: PredictRequest / REST JSON building, response parsing, gRPC and REST transports.

The same request builders make the warmup records (`warmup`), so what TF-Serving replays at load time is
byte-for-byte the kind of request this client sends.

Message sizes: one ISLES slab (256 x 256 x 22 x 5 float32) is ~29 MB as a tensor, over gRPC's 4 MB default
receive limit and over many proxies' defaults; the mask and probabilities coming back are ~7 MB. The gRPC
channel therefore raises `grpc.max_send_message_length` / `grpc.max_receive_message_length` (TF-Serving's
own server accepts up to 2 GiB). Over REST the `serialized` signature sends the raw maps as one base64 string.

Example (needs a running TF-Serving, so the doctests do not run it):
```python
client = ServingClient("localhost:8500", "strokenet")
probabilities, mask = client.segment_image(image)   # float32 [d, h, w, c] -> (None, uint8 [d, h, w])
```
"""

from __future__ import annotations

import base64
import dataclasses
import json
import urllib.error
import urllib.request
from typing import Any

import numpy as np
import tensorflow as tf

from strokenet_tf import cli, errors, inference
from strokenet_tf.serving import signatures

try:
    import grpc
    from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc
except ImportError as _error:  # pragma: no cover - depends on the environment
    raise ImportError(
        f"{_error}: the TF-Serving client needs grpcio and tensorflow-serving-api; run `make install` "
        "(it installs tensorflow-serving-api with --no-deps beside tensorflow-cpu)"
    ) from None

PROTOCOLS = ("grpc", "rest")
DEFAULT_MAX_MESSAGE_MB = 512
DEFAULT_TIMEOUT_S = 300.0


class ServingError(errors.InputError, RuntimeError):
    """A request that failed; the message is one line naming the server and what went wrong (and, in a hint,
    the client setting to change)."""


def default_signature(protocol: str) -> str:
    """gRPC carries float tensors compactly (tensor_content); REST is smaller with the serialized signature."""
    return signatures.SERVING_DEFAULT if protocol == "grpc" else signatures.SERIALIZED


def _check_image(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image, np.float32)
    if image.ndim != 4:
        raise ValueError(f"expected a raw image [depth, height, width, channels], got shape {image.shape}")
    return np.ascontiguousarray(image)


def serialize_image(image: np.ndarray) -> bytes:
    """Raw image float32 [depth, height, width, channels] -> serialized TensorProto (`tf.io.parse_tensor` input)."""
    return tf.make_tensor_proto(_check_image(image)).SerializeToString()


def build_predict_request(
    image: np.ndarray,
    model_name: str,
    signature: str = signatures.SERVING_DEFAULT,
    version: int | None = None,
    output_keys: tuple[str, ...] = signatures.OUTPUT_KEYS,
) -> predict_pb2.PredictRequest:
    """A gRPC PredictRequest for one raw image float32 [depth, height, width, channels] (sent as a batch of 1).

    Args:
        signature: `signatures.SERVING_DEFAULT` (float tensor) or `signatures.SERIALIZED` (TensorProto bytes).
        version: a model version, or None for the latest.
        output_keys: outputs to send back (`output_filter`; all when empty).
    """
    image = _check_image(image)
    request = predict_pb2.PredictRequest()
    request.model_spec.name = model_name
    request.model_spec.signature_name = signature
    if version is not None:
        request.model_spec.version.value = int(version)
    if signature == signatures.SERVING_DEFAULT:
        tensor = tf.make_tensor_proto(image[np.newaxis])
    elif signature == signatures.SERIALIZED:
        tensor = tf.make_tensor_proto([serialize_image(image)], dtype=tf.string, shape=[1])
    else:
        raise ValueError(f"signature must be one of {', '.join(signatures.SIGNATURES)}, got {signature!r}")
    request.inputs[signatures.INPUT_KEYS[signature]].CopyFrom(tensor)
    request.output_filter.extend(output_keys)
    return request


def _outputs_to_arrays(outputs: dict[str, np.ndarray], spatial_shape: tuple[int, ...]):
    if inference.MASK_KEY not in outputs:
        names = ", ".join(sorted(outputs)) or "none"
        raise ServingError(f"response has no {inference.MASK_KEY!r} output (got {names})")
    arrays = {}
    for key in signatures.OUTPUT_KEYS:
        if key not in outputs:
            continue
        value = np.asarray(outputs[key])
        if value.shape != (1, *spatial_shape):
            raise ServingError(f"response {key!r} has shape {value.shape}; expected {(1, *spatial_shape)} "
                               "(one case of the request's size)")
        arrays[key] = value[0]
    probabilities = arrays.get(inference.PROBABILITIES_KEY)
    if probabilities is not None:
        probabilities = probabilities.astype(np.float32)
    return probabilities, arrays[inference.MASK_KEY].astype(np.uint8)


def parse_predict_response(response, spatial_shape: tuple[int, ...]) -> tuple[np.ndarray | None, np.ndarray]:
    """A gRPC PredictResponse -> (probabilities float32 [d, h, w] or None if filtered out, mask uint8 [d, h, w])."""
    outputs = {key: tf.make_ndarray(tensor) for key, tensor in response.outputs.items()}
    return _outputs_to_arrays(outputs, tuple(spatial_shape))


def build_rest_body(image: np.ndarray, signature: str = signatures.SERIALIZED) -> dict[str, Any]:
    """The JSON body of `POST /v1/models/NAME[/versions/V]:predict` (columnar "inputs" format)."""
    image = _check_image(image)
    if signature == signatures.SERIALIZED:
        value = [{"b64": base64.b64encode(serialize_image(image)).decode("ascii")}]
    elif signature == signatures.SERVING_DEFAULT:
        value = image[np.newaxis].tolist()
    else:
        raise ValueError(f"signature must be one of {', '.join(signatures.SIGNATURES)}, got {signature!r}")
    return {"signature_name": signature, "inputs": {signatures.INPUT_KEYS[signature]: value}}


def parse_rest_response(body: dict[str, Any], spatial_shape: tuple[int, ...]):
    """A REST predict response ({"outputs": {...}} or row-format {"predictions": [...]}) -> (probabilities, mask)."""
    if "error" in body:
        raise ServingError(f"server error: {body['error']}")
    if "outputs" in body:
        outputs = body["outputs"]
        if not isinstance(outputs, dict):  # a single output is returned without its name
            outputs = {inference.MASK_KEY: outputs}
    elif "predictions" in body:
        rows = body["predictions"]
        if not rows or not isinstance(rows[0], dict):
            raise ServingError("row-format response without named outputs")
        outputs = {key: [row[key] for row in rows] for key in rows[0]}
    else:
        raise ServingError(f"response has neither 'outputs' nor 'predictions' (keys: {', '.join(sorted(body))})")
    return _outputs_to_arrays({key: np.asarray(value) for key, value in outputs.items()}, tuple(spatial_shape))


def rest_predict_url(server: str, model_name: str, version: int | None = None) -> str:
    base = server if server.startswith(("http://", "https://")) else f"http://{server}"
    versioned = f"/versions/{int(version)}" if version is not None else ""
    return f"{base.rstrip('/')}/v1/models/{model_name}{versioned}:predict"


def grpc_channel_options(max_message_bytes: int) -> list[tuple[str, int]]:
    """Client-side gRPC limits for volume-sized messages (the defaults are 4 MB receive)."""
    return [("grpc.max_send_message_length", int(max_message_bytes)),
            ("grpc.max_receive_message_length", int(max_message_bytes))]


@dataclasses.dataclass
class ServingClient:
    """Sends one raw image per request to a TF-Serving model and returns its probabilities and mask.

    Args:
        server: HOST:PORT (gRPC port 8500 or REST port 8501 by convention; REST also takes http(s)://HOST:PORT).
        model_name: the served model's name (models.config `name`, or MODEL_NAME of the docker image).
        protocol: "grpc" or "rest".
        version: a fixed model version, or None for the latest loaded one.
        signature: `signatures.SERVING_DEFAULT` or `signatures.SERIALIZED`; None picks `default_signature`.
        timeout_s: deadline of one request.
        max_message_bytes: gRPC send/receive limit of the channel.
        want_probabilities: also fetch probabilities (gRPC otherwise filters them out to halve the response).
    """

    server: str
    model_name: str
    protocol: str = "grpc"
    version: int | None = None
    signature: str | None = None
    timeout_s: float = DEFAULT_TIMEOUT_S
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_MB << 20
    want_probabilities: bool = False

    def __post_init__(self):
        if self.protocol not in PROTOCOLS:
            raise ValueError(f"protocol must be one of {', '.join(PROTOCOLS)}, got {self.protocol!r}")
        if self.signature is None:
            self.signature = default_signature(self.protocol)
        if self.signature not in signatures.SIGNATURES:
            raise ValueError(f"signature must be one of {', '.join(signatures.SIGNATURES)}, got {self.signature!r}")
        self._channel = None
        self._stub = None

    def _output_keys(self) -> tuple[str, ...]:
        return signatures.OUTPUT_KEYS if self.want_probabilities else (inference.MASK_KEY,)

    def segment_image(self, image: np.ndarray) -> tuple[np.ndarray | None, np.ndarray]:
        """Raw image float32 [depth, height, width, channels] -> (probabilities or None, mask uint8 [d, h, w]).

        Raises:
            ServingError: unreachable server, refused or failed request, malformed response (one line).
        """
        image = _check_image(image)
        if self.protocol == "grpc":
            return self._segment_grpc(image)
        return self._segment_rest(image)

    def _segment_grpc(self, image: np.ndarray):
        if self._stub is None:
            self._channel = grpc.insecure_channel(self.server, options=grpc_channel_options(self.max_message_bytes))
            self._stub = prediction_service_pb2_grpc.PredictionServiceStub(self._channel)
        request = build_predict_request(image, self.model_name, self.signature, self.version, self._output_keys())
        try:
            response = self._stub.Predict(request, timeout=self.timeout_s)
        except grpc.RpcError as error:
            code = error.code() if hasattr(error, "code") else None
            name = code.name if code is not None else "ERROR"
            details = cli.first_line(error.details() if hasattr(error, "details") else error)
            hint = ""
            if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
                hint = (f" (message over the {self.max_message_bytes >> 20} MB gRPC limit: raise "
                        f"{errors.ref('max_message_bytes')})")
            elif code == grpc.StatusCode.UNAVAILABLE:
                hint = " (is TF-Serving running and is this its gRPC port?)"
            raise ServingError(f"{self.server}: gRPC {name}: {details}{hint}") from None
        return parse_predict_response(response, image.shape[:3])

    def _segment_rest(self, image: np.ndarray):
        url = rest_predict_url(self.server, self.model_name, self.version)
        data = json.dumps(build_rest_body(image, self.signature)).encode("utf-8")
        request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"}, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as reply:
                body = json.loads(reply.read())
        except urllib.error.HTTPError as error:
            try:
                message = json.loads(error.read()).get("error", "")
            except (ValueError, AttributeError):
                message = ""
            raise ServingError(f"{url}: HTTP {error.code}: {cli.first_line(message) or error.reason}") from None
        except (urllib.error.URLError, OSError) as error:
            reason = getattr(error, "reason", error)
            raise ServingError(f"{url}: cannot reach TF-Serving ({cli.first_line(reason)}; is this its REST port?)") \
                from None
        except ValueError as error:
            raise ServingError(f"{url}: response is not JSON ({cli.first_line(error)})") from None
        probabilities, mask = parse_rest_response(body, image.shape[:3])
        return (probabilities if self.want_probabilities else None), mask

    def close(self) -> None:
        if self._channel is not None:
            self._channel.close()
            self._channel = self._stub = None
