"""The step after the network: logits on the padded grid -> lesion probabilities on the case's grid -> mask.

One owner for every path that turns network output into a segmentation: `inference.Segmenter` (predict,
evaluate, the SavedModel export), validation during training (`training.validation`) and the inference
benchmarks. As nnU-Net's `export_prediction.py`, one function serves them all, so the threshold and the
inverse crop cannot drift apart between training-time Dice and what a user gets.

It sits below `inference` and `training` (it needs only `data.preprocess`), so both can import it.
"""

from __future__ import annotations

from typing import Sequence

import tensorflow as tf

from strokenet_tf.data import preprocess

DEFAULT_THRESHOLD = 0.5
"""Probability at or above which a voxel is called lesion (predict, export, evaluate and validation alike)."""


def probabilities_from_logits(logits: tf.Tensor, spatial_shape: tf.Tensor | Sequence[int]) -> tf.Tensor:
    """Lesion probabilities of the network's logits, cropped back to the case's grid.

    Args:
        logits: `[batch, padded_depth, padded_height, padded_width, 1]` of the network on an input padded by
            `preprocess.pad_to_multiple` (any float dtype; mixed-precision logits are cast to float32 first).
        spatial_shape: `(depth, height, width)` before padding, as `pad_to_multiple` returns it.

    Returns:
        float32 `[batch, depth, height, width]`: sigmoid of the logits, the padding removed
        (`preprocess.crop_to_shape`, its exact inverse).
    """
    probabilities = tf.sigmoid(tf.cast(logits, tf.float32))
    return preprocess.crop_to_shape(probabilities, spatial_shape)[..., 0]


def lesion_mask(probabilities: tf.Tensor, threshold: float = DEFAULT_THRESHOLD) -> tf.Tensor:
    """uint8 mask, same shape as `probabilities`: 1 where probability >= `threshold`, else 0."""
    return tf.cast(probabilities >= threshold, tf.uint8)
