"""Whole-slab validation: one forward pass per case, Dice / precision / recall per case.

Each slab is padded to the model's multiples with `preprocess.pad_to_multiple`; the logits become probabilities
and a mask on exactly the voxels of the case through `model.postprocess` (the step after the network that
predict, evaluate and the export share, with the same threshold). Metrics come from `strokenet_tf.metrics`
(ISLES 2018 definitions and empty-mask rule).
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Sequence

import numpy as np
import tensorflow as tf

from strokenet_tf import metrics
from strokenet_tf.data import preprocess
from strokenet_tf.model import postprocess

METRIC_NAMES = ("dice", "precision", "recall")


@dataclasses.dataclass
class ValidationResult:
    """Mean metrics over cases, per-case metrics, and one case kept for the TensorBoard overlay."""

    mean: dict[str, float]
    per_case: dict[str, dict[str, float]]
    sample_case_id: str | None = None
    sample_image: np.ndarray | None = None  # float32 [depth, height, width, channels]
    sample_label: np.ndarray | None = None  # uint8 [depth, height, width]
    sample_prediction: np.ndarray | None = None  # uint8 [depth, height, width]


def make_predict_fn(model, in_channels: int) -> Callable[[tf.Tensor], tf.Tensor]:
    """tf.function: padded image [1, depth, height, width, channels] -> logits [1, depth, height, width, 1].

    Depth, height and width are dynamic in the signature, so slabs of any padded size reuse one trace.
    """

    @tf.function(input_signature=[tf.TensorSpec([1, None, None, None, in_channels], tf.float32)])
    def predict(image):
        return model(image, training=False)

    return predict


def predict_probabilities(predict_fn, image: np.ndarray, multiples: Sequence[int]) -> np.ndarray:
    """Lesion probability float32 [depth, height, width] of one normalised case image float32 [depth, height,
    width, channels]: the network runs on the brain's in-plane box (`preprocess.head_box`), as in
    `inference.Segmenter`, and the probability outside it is 0."""
    def probabilities_of(cropped):
        padded, spatial_shape = preprocess.pad_to_multiple(cropped, multiples)
        return postprocess.probabilities_from_logits(predict_fn(padded), spatial_shape)

    batch = tf.convert_to_tensor(image[np.newaxis], tf.float32)
    return preprocess.within_head_box(batch, multiples, probabilities_of).numpy()[0]


def validate(predict_fn, cases: Sequence, multiples: Sequence[int],
             threshold: float = postprocess.DEFAULT_THRESHOLD) -> ValidationResult:
    """Runs every case through the model and averages the metrics over cases.

    Args:
        predict_fn: from `make_predict_fn`.
        cases: `preprocess.PreparedCase` records with labels.
        multiples: spatial multiples (depth, height, width) the model needs.
        threshold: probability at or above which a voxel is lesion.
    """
    per_case: dict[str, dict[str, float]] = {}
    result = ValidationResult(mean={}, per_case=per_case)
    for case in cases:
        probabilities = predict_probabilities(predict_fn, case.image, multiples)
        prediction = postprocess.lesion_mask(probabilities, threshold).numpy()
        label = np.asarray(case.label, np.uint8)
        per_case[case.case_id] = metrics.voxel_metrics(prediction, label, empty_score="zero")
        # Keep the case with the largest lesion for the overlay image.
        if result.sample_label is None or label.sum() > result.sample_label.sum():
            result.sample_case_id = case.case_id
            result.sample_image, result.sample_label, result.sample_prediction = case.image, label, prediction
    for name in METRIC_NAMES:
        values = [scores[name] for scores in per_case.values() if np.isfinite(scores[name])]
        result.mean[name] = float(np.mean(values)) if values else float("nan")
    return result
