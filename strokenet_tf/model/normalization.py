"""Group normalisation (Wu & He 2018) for `[batch, depth, height, width, channels]` tensors, computed faster.

`GroupNormalization` is Keras's `keras.layers.GroupNormalization` (same weights, same config, same formula
`gamma * (x - mean_g) / sqrt(var_g + epsilon) + beta` over each group's channels and all voxels) with a different
way of computing the statistics. Keras reshapes to `[..., groups, channels / groups]` and reduces over four
non-adjacent axes twice (mean, then the squared deviations), which on CPU costs more than the convolution it
follows at StrokeNet's small widths (8-48 channels). Here:

- per-channel sums come from one contiguous reduction of the `[batch, voxels, channels]` view, and per-channel
  sums of squares from its Gram matrix `X^T X` (a single read of the activations by a GEMM; the diagonal is
  kept), so the activations are read twice in all instead of four times;
- group mean and variance are combined exactly from the per-channel ones (law of total variance);
- the output is one scale-and-shift per channel.

Against a float64 reference it is more accurate than Keras's reduction (the GEMM accumulates in blocks); its
speed against Keras's layer is measured by `python -m strokenet_tf.benchmarks` (strokenet_tf/benchmarks/README.md).
`blocks.normalization` builds this class; `with_fast_group_norm` swaps it into models saved with Keras's class
(`inference` does so when it loads a `.keras` file), so older runs get the faster path with unchanged weights.
"""

from __future__ import annotations

import keras
import tensorflow as tf
from keras import ops


@keras.saving.register_keras_serializable(package="strokenet_tf")
class GroupNormalization(keras.layers.GroupNormalization):
    """Drop-in `keras.layers.GroupNormalization` for channels-last 5-D tensors (see the module docstring).

    Args: as `keras.layers.GroupNormalization` (`groups`, `axis` = -1, `epsilon`, `center`, `scale`, ...).
    Other axes or ranks fall back to Keras's computation.

    Example:
    >>> layer = GroupNormalization(groups=2, epsilon=1e-5)
    >>> layer(np.random.rand(1, 2, 4, 4, 6).astype("float32")).shape
    TensorShape([1, 2, 4, 4, 6])
    """

    def call(self, inputs):
        if len(inputs.shape) != 5 or self.axis not in (-1, 4):
            return super().call(inputs)
        channels = inputs.shape[-1]
        # Statistics in float32 (as Keras: GroupNorm overflows in float16).
        x = ops.cast(inputs, "float32")
        flat = ops.reshape(x, (ops.shape(x)[0], -1, channels))  # [batch, voxels, channels]
        count = ops.cast(ops.shape(flat)[1], "float32")
        mean = ops.mean(flat, axis=1)  # [batch, channels]
        # tf rather than keras.ops: `transpose_a` lets the GEMM read `flat` in place instead of a transposed copy.
        squares = tf.linalg.diag_part(tf.linalg.matmul(flat, flat, transpose_a=True))
        variance = ops.maximum(squares / count - ops.square(mean), 0.0)

        per_group = (-1, self.groups, channels // self.groups)
        mean = ops.reshape(mean, per_group)
        variance = ops.reshape(variance, per_group)
        group_mean = ops.mean(mean, axis=-1, keepdims=True)
        group_variance = ops.mean(variance + ops.square(mean - group_mean), axis=-1, keepdims=True)
        scale = ops.rsqrt(group_variance + self.epsilon) + ops.zeros_like(mean)  # broadcast to channels
        shift = -group_mean * scale
        if self.scale:
            gamma = ops.reshape(ops.cast(self.gamma, "float32"), (1, self.groups, channels // self.groups))
            scale, shift = scale * gamma, shift * gamma
        if self.center:
            shift = shift + ops.reshape(ops.cast(self.beta, "float32"), (1, self.groups, channels // self.groups))
        scale = ops.reshape(scale, (-1, 1, 1, 1, channels))
        shift = ops.reshape(shift, (-1, 1, 1, 1, channels))
        return ops.cast(x * scale + shift, self.compute_dtype)


def with_fast_group_norm(model: keras.Model) -> keras.Model:
    """`model` with every `keras.layers.GroupNormalization` replaced by this module's (same config and weights).

    For models saved before the model package had its own GroupNorm (their `.keras` files name Keras's class);
    returns `model` itself when there is nothing to replace.
    """
    if not any(type(layer) is keras.layers.GroupNormalization for layer in model.layers):
        return model

    def clone(layer):
        if type(layer) is keras.layers.GroupNormalization:
            return GroupNormalization.from_config(layer.get_config())
        return layer.__class__.from_config(layer.get_config())

    fast = keras.models.clone_model(model, clone_function=clone)
    fast.set_weights(model.get_weights())
    return fast
