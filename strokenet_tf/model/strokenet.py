"""StrokeNet: compact 3D residual network that segments a whole CT-perfusion slab in one pass.

Encoder: a strided conv stem, then one stage of residual blocks (`blocks.residual_block_3d`) per level, each
stage after the first downsampling by its (depth, height, width) stride. Decoder: the multi-level refinement
module (`refinement.multi_level_refinement`) brings deep context back up level by level, merging each encoder
level, and a light full-resolution head adds a 1x1x1 projection of the input channels (full-resolution detail)
to the linearly upsampled refined features before the final 1x1x1 logit layer.

Why the default shape: slabs are ~1 mm in-plane and ~5 mm between slices, 256 x 256 x 2..22 voxels. The first
two strides are in-plane only, (1, 2, 2), which brings voxels to ~4 x 4 x 5 mm; only then does one (2, 2, 2)
stride halve depth, and the last stride is in-plane again, (1, 2, 2). Depth is therefore divided by 2 in total
(`required_multiples == (2, 16, 16)`), so a 2-slice slab needs no depth padding. Kernels are (1, 3, 3) at the two
high-resolution levels and (3, 3, 3) at the deeper, roughly isotropic ones. Full-resolution 3x3x3 convolutions
are avoided entirely (a single 16 -> 16 one costs 2 x 27 x 16 x 16 FLOP per voxel, ~14.5 GFLOP on a
256 x 256 x 16 slab); the default network costs 8.22 GFLOP on a 16 x 256 x 256 x 5 slab (8.11 of them in
Conv3D) with 0.55 M parameters, as the example of `flops` counts (the doctests check it). Other widths:
strokenet_tf/benchmarks/README.md.

Output: logits `[batch, depth, height, width, 1]`, float32 even under a `mixed_float16` policy; the last bias
starts at log(p / (1 - p)) for a lesion prior p = 0.01 (Lin et al. 2017, focal loss initialisation).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

import keras

from strokenet_tf.model import blocks, refinement

LESION_PRIOR = 0.01
"""Fraction of lesion voxels the output bias is initialised for (ISLES 2018 lesions are ~1% of a slab)."""


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Architecture of StrokeNet (one entry per encoder level in the per-level tuples).

    Attributes:
        in_channels: input modalities (5: CT, CBF, CBV, MTT, Tmax).
        widths: encoder channels per level.
        blocks_per_stage: residual blocks per level (level 0 may have 0: stem only; deeper levels >= 1).
        strides: (depth, height, width) stride of each level relative to the previous one; `strides[0]` is the
            stem's. Downsample in-plane first: depth is 5x coarser than height and width.
        kernel_sizes: (depth, height, width) kernel per level, used by the encoder blocks and the refinement at
            that level; each must be >= the level's stride on every axis (a strided kernel must not skip voxels).
        norm: "group" (default; batches are 1-4 slabs), "batch" or "instance".
        norm_groups: the most GroupNorm groups (the largest divisor of the width not above it is used).
        activation: Keras activation name.
        refinement_width: the most refinement channels per level (level i uses `min(refinement_width,
            widths[i])`).
        refinement_convs: conv-norm-act layers after each refinement merge.
        context_dilations: in-plane dilation rates of the deepest-level context module (empty: 1x1x1 only).
        head_width: channels of the full-resolution head.
        dropout: SpatialDropout3D rate on the deepest-level context (0 disables).
        output_bias_init: initial bias of the logit layer, log(p / (1 - p)) for p = `LESION_PRIOR`.
        name: Keras model name.
    """

    in_channels: int = 5
    widths: tuple[int, ...] = (12, 24, 48, 96)
    blocks_per_stage: tuple[int, ...] = (1, 1, 1, 1)
    strides: tuple[tuple[int, int, int], ...] = ((1, 2, 2), (1, 2, 2), (2, 2, 2), (1, 2, 2))
    kernel_sizes: tuple[tuple[int, int, int], ...] = ((1, 3, 3), (1, 3, 3), (3, 3, 3), (3, 3, 3))
    norm: str = "group"
    norm_groups: int = 8
    activation: str = "relu"
    refinement_width: int = 32
    refinement_convs: int = 1
    context_dilations: tuple[int, ...] = (1, 2, 4)
    head_width: int = 8
    dropout: float = 0.1
    output_bias_init: float = math.log(LESION_PRIOR / (1.0 - LESION_PRIOR))
    name: str = "strokenet"

    def __post_init__(self):
        # Lists (from JSON or flags) become tuples so that configs compare and hash by value.
        for field in ("widths", "blocks_per_stage", "context_dilations"):
            object.__setattr__(self, field, tuple(int(value) for value in getattr(self, field)))
        for field in ("strides", "kernel_sizes"):
            object.__setattr__(self, field, tuple(blocks.triple(value, field) for value in getattr(self, field)))
        levels = len(self.widths)
        if levels < 1:
            raise ValueError("ModelConfig.widths: need at least one level")
        for field in ("blocks_per_stage", "strides", "kernel_sizes"):
            if len(getattr(self, field)) != levels:
                raise ValueError(
                    f"ModelConfig.{field}: needs one entry per level of widths ({levels}), got "
                    f"{len(getattr(self, field))}; set it along with widths"
                )
        if self.in_channels < 1 or min(self.widths) < 1:
            raise ValueError(f"ModelConfig: in_channels and widths must be >= 1, got {self.in_channels}, {self.widths}")
        if min(self.blocks_per_stage) < 0 or min(self.blocks_per_stage[1:], default=1) < 1:
            raise ValueError(f"ModelConfig.blocks_per_stage: level 0 needs >= 0, deeper levels >= 1, got "
                             f"{self.blocks_per_stage}")
        for level, (stride, kernel) in enumerate(zip(self.strides, self.kernel_sizes)):
            if min(stride) < 1 or min(kernel) < 1 or any(k % 2 == 0 for k in kernel):
                raise ValueError(f"ModelConfig: level {level} needs strides >= 1 and odd kernels, got "
                                 f"strides {stride}, kernel {kernel}")
            if any(k < s for k, s in zip(kernel, stride)):
                raise ValueError(f"ModelConfig: kernel_sizes[{level}]={kernel} is smaller than strides[{level}]="
                                 f"{stride} on some axis (the strided convolution would skip voxels)")
        if self.norm not in blocks.NORMALIZATIONS:
            raise ValueError(f"ModelConfig.norm: expected one of {', '.join(blocks.NORMALIZATIONS)}, got {self.norm!r}")
        if min(self.norm_groups, self.refinement_width, self.head_width) < 1 or self.refinement_convs < 0:
            raise ValueError("ModelConfig: norm_groups, refinement_width and head_width must be >= 1, "
                             "refinement_convs >= 0")
        if any(rate < 1 for rate in self.context_dilations):
            raise ValueError(f"ModelConfig.context_dilations: rates must be >= 1, got {self.context_dilations}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"ModelConfig.dropout: expected a rate in [0, 1), got {self.dropout}")

    @property
    def required_multiples(self) -> tuple[int, int, int]:
        """(depth, height, width) every input's spatial shape must be a multiple of: the product of the strides."""
        return tuple(math.prod(stride[axis] for stride in self.strides) for axis in range(3))

    @property
    def refinement_widths(self) -> tuple[int, ...]:
        """Refinement channels per level: `min(refinement_width, widths[i])`."""
        return tuple(min(self.refinement_width, width) for width in self.widths)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (tuples become lists)."""
        return {
            field.name: _lists(getattr(self, field.name)) for field in dataclasses.fields(self)
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "ModelConfig":
        """Inverse of `to_dict`; raises ValueError naming unknown fields."""
        names = {field.name for field in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ValueError(f"ModelConfig: unknown field(s) {', '.join(unknown)}")
        return cls(**data)


def _lists(value):
    if isinstance(value, (tuple, list)):
        return [_lists(item) for item in value]
    return value


def tiny_model_config(in_channels: int = 5) -> ModelConfig:
    """A three-level network with 4-8 channels (~5 k parameters) for tests and smoke runs; multiples (2, 8, 8)."""
    return ModelConfig(
        in_channels=in_channels,
        widths=(4, 8, 8),
        blocks_per_stage=(1, 1, 1),
        strides=((1, 2, 2), (1, 2, 2), (2, 2, 2)),
        kernel_sizes=((1, 3, 3), (1, 3, 3), (3, 3, 3)),
        norm_groups=2,
        refinement_width=8,
        context_dilations=(1, 2),
        head_width=4,
        dropout=0.0,
        name="strokenet_tiny",
    )


@keras.saving.register_keras_serializable(package="strokenet_tf")
class StrokeNet(keras.Model):
    """StrokeNet as a functional Keras model that carries its `ModelConfig` (see the module docstring).

    As keras-hub's backbones, `get_config` returns the constructor arguments (the `ModelConfig` as a dict, the
    name, trainability and dtype policy) rather than the layer graph, and `from_config` calls the constructor;
    so a saved `.keras` file describes itself: `keras.saving.load_model(path)` (after importing this module,
    which registers the class) gives a `StrokeNet` whose `model_config` holds the architecture and hence the
    padding multiples. Files saved before this class load as plain functional models with the same layers.

    Args:
        model_config: the architecture.
        dtype: Keras dtype policy the layers are built under (default: the global policy); the logits layer is
            float32 under any policy.
        name: Keras model name (default: `model_config.name`).
        trainable: whether the weights are trainable.

    Call: `[batch, depth, height, width, in_channels]` float32 images (any spatial size that is a multiple of
    `model_config.required_multiples`; pad with `data.preprocess.pad_to_multiple`) -> logits
    `[batch, depth, height, width, 1]` float32.
    """

    def __init__(self, model_config: ModelConfig = ModelConfig(), dtype=None, name: str | None = None,
                 trainable: bool = True, **kwargs):
        policy = keras.dtype_policies.get(dtype) if dtype is not None else keras.mixed_precision.global_policy()
        previous = keras.mixed_precision.global_policy()
        keras.mixed_precision.set_global_policy(policy)
        try:
            inputs, logits = _network(model_config)
        finally:
            keras.mixed_precision.set_global_policy(previous)
        super().__init__(inputs, logits, name=name or model_config.name, trainable=trainable, **kwargs)
        self.dtype_policy = policy  # the functional constructor ignores `dtype`
        self.model_config = model_config

    def get_config(self) -> dict:
        # Not chained to super: a functional model's config is its layer graph, which the constructor rebuilds.
        return {"model_config": self.model_config.to_dict(), "name": self.name, "trainable": self.trainable,
                "dtype": self.dtype_policy.name}

    @classmethod
    def from_config(cls, config: dict) -> "StrokeNet":
        config = dict(config)
        return cls(ModelConfig.from_dict(config.pop("model_config")), **config)


def model_config_of(model: keras.Model) -> ModelConfig | None:
    """The `ModelConfig` a model carries (a `StrokeNet`), or None (a plain functional model, e.g. a `.keras` file
    saved before `StrokeNet` existed)."""
    config = getattr(model, "model_config", None)
    return config if isinstance(config, ModelConfig) else None


def build_strokenet(config: ModelConfig = ModelConfig()) -> StrokeNet:
    """Builds StrokeNet under the global dtype policy: `StrokeNet(config)`.

    Args:
        config: the architecture.

    Returns:
        A `StrokeNet` from `[batch, depth, height, width, in_channels]` float32 images (any spatial size that is
        a multiple of `config.required_multiples`; pad with `data.preprocess.pad_to_multiple`) to logits
        `[batch, depth, height, width, 1]` float32.

    Example:
    >>> model = build_strokenet(tiny_model_config())
    >>> model(np.zeros((1, 2, 16, 16, 5), "float32")).shape
    TensorShape([1, 2, 16, 16, 1])
    """
    return StrokeNet(config)


def _network(config: ModelConfig):
    """The layer graph of StrokeNet: (input tensor, logits tensor)."""
    norm_args = dict(norm=config.norm, norm_groups=config.norm_groups, activation=config.activation)
    inputs = keras.Input((None, None, None, config.in_channels), name="image")

    x = blocks.conv_norm_act(inputs, config.widths[0], config.kernel_sizes[0], config.strides[0], name="stem",
                             **norm_args)
    features = []
    for level, width in enumerate(config.widths):
        for index in range(config.blocks_per_stage[level]):
            stride = config.strides[level] if level > 0 and index == 0 else 1
            x = blocks.residual_block_3d(x, width, config.kernel_sizes[level], stride,
                                         name=f"stage{level}_block{index + 1}", **norm_args)
        features.append(x)

    x = refinement.multi_level_refinement(
        features, config.strides, config.refinement_widths, config.kernel_sizes,
        convs_per_level=config.refinement_convs, context_dilations=config.context_dilations,
        dropout=config.dropout, name="refine", **norm_args,
    )

    # Full-resolution head: upsampled refined features + a 1x1x1 projection of the input channels.
    x = blocks.conv3d(config.head_width, 1, name="head_proj")(x)
    if config.strides[0] != (1, 1, 1):
        x = refinement.LinearUpsampling3D(config.strides[0], name="head_upsample")(x)
    detail = blocks.conv3d(config.head_width, 1, name="head_detail")(inputs)
    x = keras.layers.Add(name="head_merge")([x, detail])
    x = keras.layers.Activation(config.activation, name="head_act")(x)
    logits = keras.layers.Conv3D(
        1, 1, padding="same", dtype="float32",
        bias_initializer=keras.initializers.Constant(config.output_bias_init), name="logits",
    )(x)
    return inputs, logits
