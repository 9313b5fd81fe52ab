"""Counted (not estimated) floating-point operations of a Keras model's forward pass.

The model is traced as a concrete `tf.function` at a fixed input shape and TensorFlow's graph profiler
(`tf.compat.v1.profiler`, `float_operation` view) sums the FLOP statistics registered for each op of that graph:
`Conv3D` counts 2 FLOPs per multiply-add (`2 * output voxels * kernel volume * input channels`), `MatMul`
likewise, and element-wise ops (bias and residual additions, normalisation arithmetic) one FLOP per output
element. Ops without a registered statistic (reshapes, concatenation, activations such as `Relu`) count 0.

Example (the default network on a 16-slice ISLES slab; the figures `model.strokenet` quotes):
>>> from strokenet_tf.model.strokenet import ModelConfig, build_strokenet
>>> model = build_strokenet(ModelConfig())
>>> by_op = flops_by_op_type(model, (1, 16, 256, 256, 5))  # the same count as `count_flops`, by op type
>>> round(sum(by_op.values()) / 1e9, 2), round(by_op["Conv3D"] / 1e9, 2)  # GFLOP
(8.22, 8.11)
>>> model.count_params()
553617
"""

from __future__ import annotations

from collections.abc import Sequence

import keras
import tensorflow as tf


def _profile(model: keras.Model, input_shape: Sequence[int]):
    input_shape = tuple(int(dim) for dim in input_shape)
    if len(input_shape) != len(model.inputs[0].shape):
        raise ValueError(f"count_flops: input_shape {input_shape} does not match the model input rank "
                         f"{len(model.inputs[0].shape)} (include the batch dimension)")
    forward = tf.function(lambda x: model(x, training=False))
    graph = forward.get_concrete_function(tf.TensorSpec(input_shape, tf.float32)).graph
    options = (
        tf.compat.v1.profiler.ProfileOptionBuilder(tf.compat.v1.profiler.ProfileOptionBuilder.float_operation())
        .with_empty_output()
        .build()
    )
    logger = tf.get_logger()
    level = logger.level
    logger.setLevel("ERROR")  # TF's own FLOP statistics call a deprecated shape helper and say so
    try:
        return tf.compat.v1.profiler.profile(graph=graph, run_meta=tf.compat.v1.RunMetadata(), cmd="op",
                                             options=options)
    finally:
        logger.setLevel(level)


def count_flops(model: keras.Model, input_shape: Sequence[int]) -> int:
    """FLOPs of one inference forward pass of `model` on a float32 input of `input_shape` (batch included).

    Args:
        model: a Keras model with one input.
        input_shape: full input shape, e.g. `(1, 16, 256, 256, 5)`.

    Returns:
        Total counted FLOPs (multiply-add = 2).
    """
    return int(_profile(model, input_shape).total_float_ops)


def flops_by_op_type(model: keras.Model, input_shape: Sequence[int]) -> dict[str, int]:
    """The same count as `count_flops`, split by TensorFlow op type (e.g. `{"Conv3D": ..., "AddV2": ...}`)."""
    counts = {}
    pending = list(_profile(model, input_shape).children)
    while pending:  # the "op" view nests op types in a chain, each node holding its own `float_ops`
        node = pending.pop()
        if node.float_ops:
            counts[node.name] = counts.get(node.name, 0) + int(node.float_ops)
        pending.extend(node.children)
    return counts
