"""Names and functions of the exported serving signatures (the contract between export, TF-Serving and client).

`serving_default` is `inference.Segmenter.segment` itself: raw maps float32 `[batch, depth, height, width,
channels]` under the key "image" -> "probabilities" float32, "mask" uint8 and "uncertainty" float32 (predictive
entropy in bits), `[batch, depth, height, width]`. For an ensemble the members' probabilities are averaged (and
mirrored, calibrated) inside it.

`report` is `inference.Segmenter.report`: "image" plus "voxel_size_mm" float32 `[batch, 3]` -> the outputs of
`serving_default` plus, per case, the perfusion report of `perfusion_report.graph_report` (core, Tmax > 6 s
hypoperfusion, mismatch volume and ratio, HIR, DEFUSE-3 / EXTEND-IA flags, status), every member's core volume
and the members' disagreement flag. Research output, not a medical device.

`from_4d` (`from_4d_endpoint`, for models reading only CT, CT_4DPWI and the maps) takes the raw series instead of
the maps: "series_hu" float32 `[batch, depth, height, width, time]`, "ct_hu" `[batch, depth, height, width]` and
"frame_interval_s" `[batch]`; it computes CBF/CBV/MTT/Tmax by oSVD deconvolution (`perfusion_input.image_from_4d`,
the same graph predict uses for such cases) and returns the outputs of `serving_default` plus "aif_found" bool
`[batch]` (False: no arterial input, the maps are 0 and the segmentation meaningless).

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
FROM_4D = "from_4d"
FROM_4D_KEYS = ("series_hu", "ct_hu", "frame_interval_s")
AIF_FOUND_KEY = "aif_found"
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

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string)], autograph=False)  # no Python control flow
    def segment_serialized(image_bytes: tf.Tensor) -> dict[str, tf.Tensor]:
        images = tf.map_fn(parse, image_bytes, fn_output_signature=case_spec)
        return segmenter.segment(images)

    return segment_serialized


def from_4d_endpoint(segmenter: inference.Segmenter) -> tf.types.experimental.GenericFunction | None:
    """A tf.function: raw CT_4DPWI series, CT and frame interval -> `segmenter.segment` of the image built by
    `perfusion_input.image_from_4d`, plus "aif_found"; None when the model reads other channels.

    Every case of one request must have the same shape (they are stacked into one batch).
    """
    from strokenet_tf import perfusion_input

    if not perfusion_input.supports(segmenter.channels):
        return None
    cached = segmenter.__dict__.get("_from_4d_endpoint")  # one trace for the export and its check
    if cached is not None:
        return cached
    channels = tuple(segmenter.channels)
    image_spec = tf.TensorSpec([None, None, None, len(channels)], tf.float32)

    # AutoGraph off: `image_from_4d` and `deconvolution.perfusion_maps` have no Python control flow that depends
    # on a tensor, so the traced ops are the same; converting their source cost ~2-3 s of every export.
    # (`segmenter.segment`, called inside, is its own tf.function and keeps its AutoGraph.)
    @tf.function(input_signature=[tf.TensorSpec([None, None, None, None, None], tf.float32),
                                  tf.TensorSpec([None, None, None, None], tf.float32),
                                  tf.TensorSpec([None], tf.float32)], autograph=False)
    def segment_from_4d(series_hu: tf.Tensor, ct_hu: tf.Tensor, frame_interval_s: tf.Tensor) -> dict[str, tf.Tensor]:
        images, found = tf.map_fn(lambda case: perfusion_input.image_from_4d(*case, channels),
                                  (series_hu, ct_hu, frame_interval_s),
                                  fn_output_signature=(image_spec, tf.TensorSpec([], tf.bool)))
        outputs = dict(segmenter.segment(images))
        outputs[AIF_FOUND_KEY] = found
        return outputs

    segmenter.__dict__["_from_4d_endpoint"] = segment_from_4d  # untracked: not part of the module's variables
    return segment_from_4d
