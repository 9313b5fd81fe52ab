"""Staged data augmentation for anisotropic CT-perfusion slabs, as stateless TF ops.

`augment(image, label, stage, seed)` draws every random number from `tf.random.stateless_*` ops keyed by
`seed`, so a pipeline that derives seeds from (run seed, epoch, case, patch) replays exactly. Stage 0 is the
identity; stages 1-3 grow in strength (the curriculum raises the stage as training goes, as the StrokeNet
report's staged training does).

Spatial transforms are 2-D (in-plane, the same for every slice): ISLES slabs have ~5 mm slices against
~1 mm pixels and only 2-22 of them, so out-of-plane rotation would mostly interpolate between distant slices.
They are applied identically to image (bilinear) and label (nearest: it stays binary). The width axis is
the NIfTI x axis, i.e. left-right, so the flip mirrors the hemispheres.

Intensity transforms act on the normalised input (see `preprocess.normalize_image`, values ~[0, 1] in the
brain) and only inside the foreground (voxels where any channel is non-zero), so the background stays 0.
"""

from __future__ import annotations

import dataclasses
import math

import tensorflow as tf


@dataclasses.dataclass(frozen=True)
class AugmentationStrength:
    """How strong each augmentation is; all zero / (1, 1) is the identity.

    Attributes:
        flip_lr_prob: probability of mirroring left-right (the width axis).
        rotation_deg: in-plane rotation angle drawn uniformly in [-rotation_deg, rotation_deg].
        scale_range: in-plane zoom factor drawn log-uniformly in [low, high] (> 1 enlarges the anatomy).
        intensity_scale: each channel is multiplied by a factor uniform in [1 - s, 1 + s].
        intensity_shift: each channel is shifted by a value uniform in [-s, s] (normalised units).
        noise_std: standard deviation of additive Gaussian noise (normalised units).
        noise_prob: probability of adding that noise to a patch.
        gamma_range: per-channel gamma drawn log-uniformly in [low, high], applied to a min-max rescaled copy
            of the channel's foreground (its range is kept).
        gamma_prob: probability of the gamma transform (as nnU-Net, noise and gamma hit only some patches, which
            also keeps their cost, a power and a normal draw per voxel, off most patches).
        slice_jitter: std of an extra per-slice, per-channel multiplicative factor (CTP slabs are acquired
            slice by slice; contrast bolus timing differs along depth).
        low_resolution_prob: probability of simulating a coarser in-plane resolution (downsample then
            upsample the image, bilinear).
        low_resolution_factor: largest downsampling factor of that simulation (drawn in [1, factor]).
    """

    flip_lr_prob: float = 0.0
    rotation_deg: float = 0.0
    scale_range: tuple[float, float] = (1.0, 1.0)
    intensity_scale: float = 0.0
    intensity_shift: float = 0.0
    noise_std: float = 0.0
    noise_prob: float = 1.0
    gamma_range: tuple[float, float] = (1.0, 1.0)
    gamma_prob: float = 1.0
    slice_jitter: float = 0.0
    low_resolution_prob: float = 0.0
    low_resolution_factor: float = 1.0

    def __post_init__(self):
        probabilities = (self.flip_lr_prob, self.low_resolution_prob, self.noise_prob, self.gamma_prob)
        if not all(0.0 <= p <= 1.0 for p in probabilities):
            raise ValueError(f"AugmentationStrength: probabilities must be in [0, 1], got {self}")
        for name in ("scale_range", "gamma_range"):
            low, high = getattr(self, name)
            if not 0.0 < low <= high:
                raise ValueError(f"AugmentationStrength.{name}: need 0 < low <= high, got {(low, high)}")
        if min(self.rotation_deg, self.intensity_scale, self.intensity_shift, self.noise_std, self.slice_jitter) < 0:
            raise ValueError(f"AugmentationStrength: magnitudes must be >= 0, got {self}")
        if self.intensity_scale >= 1.0 or self.low_resolution_factor < 1.0 or self.rotation_deg > 180.0:
            raise ValueError(
                "AugmentationStrength: need intensity_scale < 1, low_resolution_factor >= 1, rotation_deg <= 180"
            )

    @property
    def has_affine(self) -> bool:
        return self.rotation_deg > 0.0 or self.scale_range != (1.0, 1.0)

    @property
    def has_intensity(self) -> bool:
        return (self.intensity_scale > 0.0 or self.intensity_shift > 0.0 or self.slice_jitter > 0.0
                or self.has_noise or self.has_gamma)

    @property
    def has_noise(self) -> bool:
        return self.noise_std > 0.0 and self.noise_prob > 0.0

    @property
    def has_gamma(self) -> bool:
        return self.gamma_range != (1.0, 1.0) and self.gamma_prob > 0.0

    @property
    def has_low_resolution(self) -> bool:
        return self.low_resolution_prob > 0.0 and self.low_resolution_factor > 1.0

    @property
    def is_identity(self) -> bool:
        return not (self.flip_lr_prob > 0.0 or self.has_affine or self.has_intensity or self.has_low_resolution)

    def context_factor(self) -> float:
        """In-plane size, relative to a patch, of the region whose rotation and zoom covers the whole patch.

        A patch of side p rotated by up to `rotation_deg` and zoomed out down to `scale_range[0]` reads
        from a square of side p * context_factor around its centre; the pipeline crops that much context so
        that the transformed patch has no empty corners.
        """
        angle = math.radians(min(self.rotation_deg, 45.0))
        return (abs(math.cos(angle)) + abs(math.sin(angle))) / min(1.0, self.scale_range[0])


AUGMENTATION_STAGES: tuple[AugmentationStrength, ...] = (
    AugmentationStrength(),
    AugmentationStrength(
        flip_lr_prob=0.5, rotation_deg=10.0, scale_range=(0.9, 1.1), intensity_scale=0.1, intensity_shift=0.05,
        noise_std=0.02, noise_prob=0.3, gamma_range=(0.9, 1.1), gamma_prob=0.3,
    ),
    AugmentationStrength(
        flip_lr_prob=0.5, rotation_deg=20.0, scale_range=(0.85, 1.18), intensity_scale=0.15, intensity_shift=0.1,
        noise_std=0.04, noise_prob=0.4, gamma_range=(0.8, 1.25), gamma_prob=0.4, slice_jitter=0.03,
        low_resolution_prob=0.15, low_resolution_factor=2.0,
    ),
    AugmentationStrength(
        flip_lr_prob=0.5, rotation_deg=30.0, scale_range=(0.8, 1.25), intensity_scale=0.25, intensity_shift=0.15,
        noise_std=0.06, noise_prob=0.5, gamma_range=(0.7, 1.4), gamma_prob=0.5, slice_jitter=0.06,
        low_resolution_prob=0.25, low_resolution_factor=3.0,
    ),
)


def num_stages() -> int:
    """Number of augmentation stages (valid stages are 0 .. num_stages() - 1)."""
    return len(AUGMENTATION_STAGES)


def strength_of(stage: int | AugmentationStrength) -> AugmentationStrength:
    """The `AugmentationStrength` of a stage index (or the strength itself)."""
    if isinstance(stage, AugmentationStrength):
        return stage
    if isinstance(stage, bool) or not isinstance(stage, int) or not 0 <= stage < len(AUGMENTATION_STAGES):
        raise ValueError(f"augmentation stage must be an int in [0, {len(AUGMENTATION_STAGES) - 1}], got {stage!r}")
    return AUGMENTATION_STAGES[stage]


def _uniform(seed, low, high, shape=()) -> tf.Tensor:
    return tf.random.stateless_uniform(shape, seed, minval=low, maxval=high, dtype=tf.float32)


def _log_uniform(seed, value_range, shape=()) -> tf.Tensor:
    low, high = value_range
    return tf.exp(_uniform(seed, math.log(low), math.log(high), shape))


def affine_transform(output_height, output_width, angle_rad, scale, input_height=None, input_width=None) -> tf.Tensor:
    """Projective-transform vector [1, 8] (output pixel -> input pixel) of a rotation and zoom about the centre.

    The output centre maps to the input centre, so an output smaller than the input is a centre crop of the
    rotated, zoomed input (input size defaults to the output size).
    """
    out_x = (tf.cast(output_width, tf.float32) - 1.0) / 2.0
    out_y = (tf.cast(output_height, tf.float32) - 1.0) / 2.0
    in_x = out_x if input_width is None else (tf.cast(input_width, tf.float32) - 1.0) / 2.0
    in_y = out_y if input_height is None else (tf.cast(input_height, tf.float32) - 1.0) / 2.0
    cos, sin = tf.cos(angle_rad) / scale, tf.sin(angle_rad) / scale
    a2 = in_x - cos * out_x + sin * out_y
    b2 = in_y - sin * out_x - cos * out_y
    zero = tf.zeros([], tf.float32)
    return tf.reshape(tf.stack([cos, -sin, a2, sin, cos, b2, zero, zero]), [1, 8])


def _transform(volume, transform, interpolation: str, output_size) -> tf.Tensor:
    # Depth is the batch of the 2-D transform: every slice gets the same in-plane map.
    transformed = tf.raw_ops.ImageProjectiveTransformV3(
        images=volume,
        transforms=transform,
        output_shape=tf.convert_to_tensor(output_size, tf.int32),
        fill_value=tf.zeros([], volume.dtype),
        interpolation=interpolation,
        fill_mode="CONSTANT",
    )
    static = volume.shape.as_list()
    if isinstance(output_size, (tuple, list)):
        static[1:3] = list(output_size)
    else:
        static[1:3] = [None, None]
    transformed.set_shape(static)
    return transformed


def center_crop(volume, output_size: tuple[int, int]) -> tf.Tensor:
    """Central height x width window of [depth, height, width, ...] (offset (size - output) // 2 per axis)."""
    volume = tf.convert_to_tensor(volume)
    if volume.shape[1:3] == tuple(output_size):
        return volume
    size = tf.shape(volume)[1:3]
    offset = (size - tf.constant(output_size, tf.int32)) // 2
    cropped = volume[:, offset[0]:offset[0] + output_size[0], offset[1]:offset[1] + output_size[1]]
    cropped.set_shape(volume.shape[:1].concatenate(output_size).concatenate(volume.shape[3:]))
    return cropped


def _gamma(image, foreground, gamma) -> tf.Tensor:
    big = tf.constant(3.0e38, tf.float32)
    low = tf.reduce_min(tf.where(foreground, image, big), axis=(0, 1, 2))
    high = tf.reduce_max(tf.where(foreground, image, -big), axis=(0, 1, 2))
    low = tf.where(low <= high, low, tf.zeros_like(low))  # empty foreground
    extent = tf.maximum(high - low, 1e-6)
    high = tf.maximum(high, low)
    unit = tf.clip_by_value((image - low) / extent, 0.0, 1.0)
    return low + tf.pow(unit, gamma) * (high - low)


def _low_resolution(image, seed, strength: AugmentationStrength) -> tf.Tensor:
    apply_seed, factor_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
    factor = _uniform(factor_seed, 1.0, strength.low_resolution_factor)
    size = tf.shape(image)[1:3]
    small = tf.maximum(tf.cast(tf.math.ceil(tf.cast(size, tf.float32) / factor), tf.int32), 1)

    def degrade():
        coarse = tf.image.resize(image, small, method="area")
        return tf.image.resize(coarse, size, method="bilinear")

    degraded = tf.cond(_uniform(apply_seed, 0.0, 1.0) < strength.low_resolution_prob, degrade, lambda: image)
    degraded.set_shape(image.shape)
    return degraded


def _maybe(seed, probability: float, transform, image) -> tf.Tensor:
    """transform() with the given probability, else image (no branch when the probability is 1)."""
    if probability >= 1.0:
        return transform()
    result = tf.cond(_uniform(seed, 0.0, 1.0) < probability, transform, lambda: image)
    result.set_shape(image.shape)
    return result


def augment(image, label, stage: int | AugmentationStrength, seed, output_size=None) -> tuple[tf.Tensor, tf.Tensor]:
    """Augments one case or patch; the same spatial transform is applied to image and label.

    Args:
        image: float32 [depth, height, width, channels], normalised (background 0).
        label: float32 [depth, height, width, 1] in {0, 1}.
        stage: index into `AUGMENTATION_STAGES` (0 returns the inputs unchanged), or an `AugmentationStrength`.
        seed: int32/int64 tensor of shape [2] (stateless random ops); equal seeds give equal outputs.
        output_size: optional (height, width) <= the input's: return the central window of that size of the
            transformed input. The pipeline passes a context region larger than the patch
            (`AugmentationStrength.context_factor`) so that rotated and zoomed-out patches have no empty
            corners; only the output window is interpolated and only it gets the intensity transforms.

    Returns:
        (image, label), [depth, output height, output width, channels / 1]; label still in {0, 1}.
    """
    strength = strength_of(stage)
    if output_size is not None:
        output_size = tuple(int(n) for n in output_size)
    if strength.is_identity:
        if output_size is None:
            return image, label
        return center_crop(image, output_size), center_crop(label, output_size)
    image = tf.convert_to_tensor(image, tf.float32)
    label = tf.convert_to_tensor(label, tf.float32)
    seeds = tf.unstack(tf.random.experimental.stateless_split(tf.cast(seed, tf.int64), 11))

    flip = None
    if strength.flip_lr_prob > 0.0:
        flip = _uniform(seeds[0], 0.0, 1.0) < strength.flip_lr_prob
    if strength.has_affine:
        angle = _uniform(seeds[1], -1.0, 1.0) * math.radians(strength.rotation_deg)
        scale = _log_uniform(seeds[2], strength.scale_range)
        input_size = tf.shape(image)[1:3]
        size = input_size if output_size is None else output_size
        transform = affine_transform(size[0], size[1], angle, scale, input_size[0], input_size[1])
        if flip is not None:  # mirror the sampled input column: x -> (width - 1) - x, free inside the transform
            mirror = tf.constant([[-1.0, -1.0, -1.0, 1.0, 1.0, 1.0, 1.0, 1.0]])
            offset = tf.concat([[0.0, 0.0], [tf.cast(input_size[1], tf.float32) - 1.0], tf.zeros([5])], 0)
            transform = tf.where(flip, transform * mirror + offset, transform)
        image_shape, label_shape = image.shape, label.shape
        image = _transform(image, transform, "BILINEAR", size)
        label = _transform(label, transform, "NEAREST", size)
        if output_size is None:
            image.set_shape(image_shape)
            label.set_shape(label_shape)
    else:
        if output_size is not None:  # the margin is even: cropping before flipping gives the same window
            image, label = center_crop(image, output_size), center_crop(label, output_size)
        if flip is not None:
            image, label = tf.cond(
                flip, lambda: (tf.reverse(image, [2]), tf.reverse(label, [2])), lambda: (image, label)
            )
    if strength.has_low_resolution:
        image = _low_resolution(image, seeds[3], strength)
    if not strength.has_intensity:
        return image, label

    foreground = tf.reduce_any(tf.not_equal(image, 0.0), axis=-1, keepdims=True)
    channels = tf.shape(image)[-1:]
    if strength.has_gamma:
        gamma = _log_uniform(seeds[4], strength.gamma_range, channels)
        image = _maybe(seeds[9], strength.gamma_prob, lambda: _gamma(image, foreground, gamma), image)
    # Channel scale, per-slice jitter and channel shift as one multiply-add.
    factor = tf.ones([1, 1, 1, 1], tf.float32)
    if strength.intensity_scale > 0.0:
        factor *= _uniform(seeds[5], 1.0 - strength.intensity_scale, 1.0 + strength.intensity_scale, channels)
    if strength.slice_jitter > 0.0:
        per_slice = tf.concat([tf.shape(image)[:1], [1, 1], channels], axis=0)
        factor *= 1.0 + strength.slice_jitter * tf.random.stateless_normal(per_slice, seeds[7])
    if strength.intensity_scale > 0.0 or strength.slice_jitter > 0.0:
        image *= factor
    if strength.intensity_shift > 0.0:
        image += _uniform(seeds[6], -strength.intensity_shift, strength.intensity_shift, channels)
    if strength.has_noise:
        noisy = lambda: image + strength.noise_std * tf.random.stateless_normal(tf.shape(image), seeds[8])  # noqa: E731
        image = _maybe(seeds[10], strength.noise_prob, noisy, image)
    return tf.where(foreground, image, tf.zeros_like(image)), label


def context_size(patch_size: tuple[int, int, int], stage: int | AugmentationStrength) -> tuple[int, int, int]:
    """(depth, height, width) of the region to cut around a patch so `augment(..., output_size=patch hw)` fills it.

    Depth is unchanged (transforms are in-plane); height and width grow by `context_factor`, keeping the
    margin even so that the patch stays exactly centred.
    """
    factor = strength_of(stage).context_factor()
    depth, height, width = (int(n) for n in patch_size)
    grow = lambda n: n + 2 * int(math.ceil((n * factor - n) / 2 - 1e-9))  # noqa: E731
    return depth, grow(height), grow(width)
