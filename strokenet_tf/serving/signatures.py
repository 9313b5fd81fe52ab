"""Names and functions of the exported serving signatures (the contract between export, TF-Serving and client).

`serving_default` is `inference.Segmenter.segment` itself: raw maps float32 `[batch, depth, height, width,
channels]` under the key "image" -> "probabilities" float32, "mask" uint8 and "uncertainty" float32 (predictive
entropy in bits), `[batch, depth, height, width]`. For an ensemble the members' probabilities are averaged (and
mirrored, calibrated) inside it.

`report` is `inference.Segmenter.report`: "image" plus "voxel_size_mm" float32 `[batch, 3]` -> the outputs of
`serving_default` plus, per case, the perfusion report of `perfusion_report.graph_report` (core, Tmax > 6 s
hypoperfusion, mismatch volume and ratio, HIR, DEFUSE-3 / EXTEND-IA flags, status), every member's core volume
and the members' disagreement flag. Research output, not a medical device.

`serialized` accepts the same raw maps as serialized `TensorProto`s, one string per case (key "image_bytes"),
parses them in the graph and calls the same `Segmenter.segment`. Over REST a string travels as base64
(`{"b64": ...}`, 4 characters per 3 bytes) instead of a JSON number per voxel value (10-20 characters), so a
256 x 256 x 22 x 5 slab is ~38 MB instead of ~100 MB of request text, and much faster to encode and decode.
"""

from __future__ import annotations

import tensorflow as tf

from strokenet_tf import inference

SERVING_DEFAULT = "serving_default"
SERIALIZED = "serialized"
REPORT = inference.REPORT_SIGNATURE
SIGNATURES = (SERVING_DEFAULT, SERIALIZED)
"""The signatures that take the image alone (what `serving_client` can call)."""
EXPORTED_SIGNATURES = SIGNATURES + (REPORT,)
SERIALIZED_INPUT_KEY = "image_bytes"
"""Input of `SERIALIZED`: string [batch], each a serialized float32 TensorProto [depth, height, width, channels].
The `_bytes` suffix is TF-Serving's REST convention for binary strings."""

INPUT_KEYS = {SERVING_DEFAULT: inference.INPUT_KEY, SERIALIZED: SERIALIZED_INPUT_KEY}
OUTPUT_KEYS = (inference.PROBABILITIES_KEY, inference.MASK_KEY)
"""What `serving_client` asks for; `serving_default` also returns "uncertainty" (predictive entropy, bits)."""


def serialized_endpoint(segmenter: inference.Segmenter) -> tf.types.experimental.GenericFunction:
    """A tf.function: serialized raw maps (string [batch]) -> `segmenter.segment` of the parsed batch.

    Every case of one request must have the same shape (they are stacked into one batch).
    """
    channels = len(segmenter.channels)
    case_spec = tf.TensorSpec([None, None, None, channels], tf.float32)

    def parse(serialized: tf.Tensor) -> tf.Tensor:
        return tf.ensure_shape(tf.io.parse_tensor(serialized, tf.float32), case_spec.shape)

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string)])
    def segment_serialized(image_bytes: tf.Tensor) -> dict[str, tf.Tensor]:
        images = tf.map_fn(parse, image_bytes, fn_output_signature=case_spec)
        return segmenter.segment(images)

    return segment_serialized
