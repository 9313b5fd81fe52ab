"""Residual 3D convolution blocks of StrokeNet, as functional builders over built-in Keras layers.

The blocks follow the basic (two-convolution) residual block of He et al. 2016, "Deep Residual Learning for Image
Recognition", in its post-activation form (conv-norm-act, conv-norm, add the shortcut, act):

- Post-activation rather than pre-activation (He et al. 2016b, "Identity Mappings in Deep Residual Networks"):
  StrokeNet has only a handful of blocks, where the identity-path benefit of pre-activation for very deep
  networks does not apply, and every block output is then already normalised and rectified, so the
  refinement module can read any encoder level directly without an extra norm.
- Strided shortcuts average-pool before their 1x1x1 projection ("ResNet-D", He et al. 2019, "Bag of Tricks for
  Image Classification"), so the shortcut sees every voxel instead of one in `stride`.
- Group normalisation (Wu & He 2018) by default: StrokeNet trains with 1-4 slabs per replica, far too few for
  batch statistics. `"batch"` and `"instance"` (one group per channel) are available for comparison.
- Kernels are anisotropic where the voxels are: CT perfusion slabs are ~1 mm in-plane and ~5 mm between slices,
  so high-resolution levels use (1, 3, 3) kernels and deeper, roughly isotropic levels use (3, 3, 3).

Builders (as in keras-hub's `ResNetBackbone` `apply_basic_block`) rather than custom layer classes keep the
model a plain functional graph of built-in layers: fast to trace and saved/loaded without custom objects.
"""

from __future__ import annotations

from collections.abc import Sequence

import keras

from strokenet_tf.model.normalization import GroupNormalization

NORMALIZATIONS = ("group", "batch", "instance")


def triple(value: int | Sequence[int], name: str = "value") -> tuple[int, int, int]:
    """`value` as a (depth, height, width) tuple of ints; an int is repeated on the three axes."""
    if isinstance(value, int):
        return (value, value, value)
    values = tuple(int(item) for item in value)
    if len(values) != 3:
        raise ValueError(f"{name}: expected an int or 3 ints (depth, height, width), got {tuple(value)}")
    return values


def group_count(channels: int, max_groups: int) -> int:
    """Largest divisor of `channels` that is at most `max_groups` (GroupNorm needs an exact split).

    Example: `group_count(12, 8) == 6`, `group_count(24, 8) == 8`, `group_count(4, 8) == 4`.
    """
    if channels < 1 or max_groups < 1:
        raise ValueError(f"group_count: channels and max_groups must be >= 1, got {channels}, {max_groups}")
    return max(g for g in range(1, min(channels, max_groups) + 1) if channels % g == 0)


def normalization(kind: str, channels: int, groups: int = 8, name: str | None = None) -> keras.layers.Layer:
    """A normalisation layer over the channel axis of `[batch, depth, height, width, channels]` tensors.

    Args:
        kind: `"group"` (GroupNorm, Wu & He 2018, with `group_count(channels, groups)` groups), `"batch"` or
            `"instance"` (GroupNorm with one group per channel). GroupNorm is `normalization.GroupNormalization`,
            Keras's layer with faster statistics.
        channels: channel count of the normalised tensor.
        groups: the most groups `"group"` may use.
        name: layer name.
    """
    if kind == "group":
        return GroupNormalization(groups=group_count(channels, groups), epsilon=1e-5, name=name)
    if kind == "instance":
        return GroupNormalization(groups=channels, epsilon=1e-5, name=name)
    if kind == "batch":
        return keras.layers.BatchNormalization(momentum=0.99, epsilon=1e-5, name=name)
    raise ValueError(f"norm: expected one of {', '.join(NORMALIZATIONS)}, got {kind!r}")


def conv3d(
    filters: int,
    kernel_size: int | Sequence[int] = 3,
    strides: int | Sequence[int] = 1,
    dilation_rate: int | Sequence[int] = 1,
    use_bias: bool = False,
    name: str | None = None,
) -> keras.layers.Conv3D:
    """`Conv3D` with "same" padding and He-normal init; no bias by default because a norm follows."""
    return keras.layers.Conv3D(
        filters,
        triple(kernel_size, "kernel_size"),
        strides=triple(strides, "strides"),
        dilation_rate=triple(dilation_rate, "dilation_rate"),
        padding="same",
        use_bias=use_bias,
        kernel_initializer="he_normal",
        name=name,
    )


def conv_norm_act(
    x,
    filters: int,
    kernel_size: int | Sequence[int] = 3,
    strides: int | Sequence[int] = 1,
    dilation_rate: int | Sequence[int] = 1,
    norm: str = "group",
    norm_groups: int = 8,
    activation: str = "relu",
    name: str = "conv",
):
    """Conv3D -> norm -> activation.

    Args:
        x: `[batch, depth, height, width, channels]` tensor.
        filters, kernel_size, strides, dilation_rate: of the Conv3D ("same" padding).
        norm, norm_groups: see `normalization`.
        activation: any Keras activation name.
        name: prefix of the layer names.

    Returns:
        `[batch, ceil(depth / sd), ceil(height / sh), ceil(width / sw), filters]`.
    """
    x = conv3d(filters, kernel_size, strides, dilation_rate, name=f"{name}_conv")(x)
    x = normalization(norm, filters, norm_groups, name=f"{name}_norm")(x)
    return keras.layers.Activation(activation, name=f"{name}_act")(x)


def residual_block_3d(
    x,
    filters: int,
    kernel_size: int | Sequence[int] = (3, 3, 3),
    strides: int | Sequence[int] = 1,
    norm: str = "group",
    norm_groups: int = 8,
    activation: str = "relu",
    name: str = "residual_block",
):
    """Basic post-activation residual block (He et al. 2016) with a projection shortcut when shape changes.

    `act(norm(conv(act(norm(conv_s(x))))) + shortcut(x))`; the first convolution carries the stride. The shortcut
    is the identity when `strides == 1` and the width is unchanged, otherwise average pooling by `strides`
    followed by a 1x1x1 convolution and a norm.

    Args:
        x: `[batch, depth, height, width, channels]` tensor.
        filters: output channels.
        kernel_size: (depth, height, width) kernel of both convolutions, e.g. `(1, 3, 3)` at high in-plane
            resolution, `(3, 3, 3)` deeper.
        strides: (depth, height, width) stride of the block.
        norm: `"group"`, `"batch"` or `"instance"` (see `normalization`).
        norm_groups: the most GroupNorm groups.
        activation: Keras activation name.
        name: prefix of the layer names (must be unique in the model).

    Returns:
        `[batch, ceil(depth / sd), ceil(height / sh), ceil(width / sw), filters]`.

    Example:
    >>> inputs = keras.Input((None, None, None, 8))
    >>> outputs = residual_block_3d(inputs, 16, (1, 3, 3), strides=(1, 2, 2))
    >>> keras.Model(inputs, outputs)(np.zeros((1, 2, 8, 8, 8), "float32")).shape
    TensorShape([1, 2, 4, 4, 16])
    """
    strides = triple(strides, "strides")
    shortcut = x
    if strides != (1, 1, 1):
        # float32: TensorFlow has no float16 AvgPool3D kernel on CPU (mixed_float16 runs there in tests).
        shortcut = keras.layers.AveragePooling3D(strides, strides, padding="same", dtype="float32",
                                                 name=f"{name}_pool")(shortcut)
    if strides != (1, 1, 1) or x.shape[-1] != filters:
        shortcut = conv3d(filters, 1, name=f"{name}_proj")(shortcut)
        shortcut = normalization(norm, filters, norm_groups, name=f"{name}_proj_norm")(shortcut)

    y = conv_norm_act(x, filters, kernel_size, strides, 1, norm, norm_groups, activation, name=f"{name}_1")
    y = conv3d(filters, kernel_size, name=f"{name}_2_conv")(y)
    y = normalization(norm, filters, norm_groups, name=f"{name}_2_norm")(y)
    y = keras.layers.Add(name=f"{name}_add")([y, shortcut])
    return keras.layers.Activation(activation, name=f"{name}_out")(y)
