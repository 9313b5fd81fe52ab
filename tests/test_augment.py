"""Tests for strokenet_tf.data.augment: identity stage, label alignment, determinism, growing strength."""

import math

import numpy as np
import pytest
import tensorflow as tf

from strokenet_tf.data import augment

MARKER = 2.0


def marked_volume(depth=4, height=32, width=32, seed=0):
    """Brain ellipse (value 1, channel 1 a gradient) with a lesion blob whose channel 0 holds MARKER."""
    rng = np.random.default_rng(seed)
    d, h, w = np.meshgrid(np.arange(depth), np.arange(height), np.arange(width), indexing="ij")
    brain = ((h - height / 2) / (0.4 * height)) ** 2 + ((w - width / 2) / (0.35 * width)) ** 2 < 1
    centre = rng.uniform(0.35, 0.6, size=2) * (height, width)
    lesion = brain & ((h - centre[0]) ** 2 + (w - centre[1]) ** 2 < (0.15 * height) ** 2)
    image = np.zeros((depth, height, width, 2), np.float32)
    image[..., 0] = np.where(lesion, MARKER, np.where(brain, 1.0, 0.0))
    image[..., 1] = np.where(brain, 0.2 + 0.6 * w / width, 0.0)
    return image, lesion[..., np.newaxis].astype(np.float32)


def seed(*values):
    return tf.constant(values, tf.int64)


def test_stage_zero_is_the_identity():
    image, label = marked_volume()
    out_image, out_label = augment.augment(image, label, 0, seed(1, 2))
    assert out_image is image and out_label is label
    assert augment.AUGMENTATION_STAGES[0].is_identity and augment.num_stages() == 4
    assert all(not s.is_identity for s in augment.AUGMENTATION_STAGES[1:])


def test_flip_mirrors_the_width_axis_exactly():
    image, label = marked_volume()
    flip = augment.AugmentationStrength(flip_lr_prob=1.0)
    out_image, out_label = augment.augment(image, label, flip, seed(0, 0))
    np.testing.assert_array_equal(out_image.numpy(), image[:, :, ::-1])
    np.testing.assert_array_equal(out_label.numpy(), label[:, :, ::-1])
    # With a rotation the flip is folded into the transform: a ~0 degree rotation must give the same mirror.
    folded = augment.AugmentationStrength(flip_lr_prob=1.0, rotation_deg=1e-4)
    out_image, out_label = augment.augment(image, label, folded, seed(0, 0), output_size=(24, 28))
    np.testing.assert_allclose(out_image.numpy(), image[:, 4:28, ::-1][:, :, 2:30], atol=1e-3)
    np.testing.assert_array_equal(out_label.numpy(), label[:, 4:28, ::-1][:, :, 2:30])


def test_affine_transform_rotates_about_the_centre():
    volume = np.zeros((1, 5, 5, 1), np.float32)
    volume[0, 1, 2, 0] = 1.0  # above the centre (2, 2)
    transform = augment.affine_transform(5, 5, tf.constant(math.pi / 2), tf.constant(1.0))
    rotated = augment._transform(tf.constant(volume), transform, "NEAREST", (5, 5)).numpy()[0, ..., 0]
    assert rotated[2, 2] == 0.0 and rotated.sum() == 1.0
    assert rotated[2, 1] == 1.0  # +90 degrees moves the voxel above the centre to its left (rows down)
    zoom = augment.affine_transform(5, 5, tf.constant(0.0), tf.constant(2.0))
    np.testing.assert_allclose(zoom.numpy()[0], [0.5, 0.0, 1.0, 0.0, 0.5, 1.0, 0.0, 0.0])


def test_spatial_transform_keeps_label_on_the_same_tissue():
    spatial = augment.AugmentationStrength(flip_lr_prob=0.5, rotation_deg=30.0, scale_range=(0.8, 1.25))
    for index in range(4):
        image, label = marked_volume(seed=index)
        out_image, out_label = augment.augment(image, label, spatial, seed(index, 7))
        out_image, out_label = out_image.numpy(), out_label.numpy()[..., 0] > 0.5
        assert out_label.sum() > 0.5 * label.sum()
        # Bilinear image and nearest label agree up to boundary voxels: "mostly marker" <=> "label".
        on_marker = out_image[..., 0] > (MARKER + 1.0) / 2
        assert np.mean(on_marker[out_label]) > 0.95
        assert np.mean(out_label[on_marker]) > 0.95


@pytest.mark.parametrize("stage", [1, 2, 3])
def test_every_stage_keeps_shapes_binary_labels_and_alignment(stage):
    image, label = marked_volume()

    @tf.function(input_signature=[tf.TensorSpec([None, None, None, 2], tf.float32),
                                  tf.TensorSpec([None, None, None, 1], tf.float32), tf.TensorSpec([2], tf.int64)])
    def run(image, label, seed):
        return augment.augment(image, label, stage, seed)

    for index in range(3):
        out_image, out_label = (t.numpy() for t in run(image, label, seed(stage, index)))
        assert out_image.shape == image.shape and out_label.shape == label.shape
        assert set(np.unique(out_label)) <= {0.0, 1.0} and out_label.sum() > 0
        inside = out_image[..., 0][out_label[..., 0] == 1].mean()
        outside = out_image[..., 0][(out_label[..., 0] == 0) & (out_image[..., 0] != 0)].mean()
        assert inside > outside + 0.4  # the marked tissue moved with its label


def test_same_seed_same_output_and_different_seed_differs():
    image, label = marked_volume()
    first = augment.augment(image, label, 3, seed(5, 6))
    again = augment.augment(image, label, 3, seed(5, 6))
    other = augment.augment(image, label, 3, seed(5, 7))
    np.testing.assert_array_equal(first[0].numpy(), again[0].numpy())
    np.testing.assert_array_equal(first[1].numpy(), again[1].numpy())
    assert not np.array_equal(first[0].numpy(), other[0].numpy())


def test_intensity_changes_stay_inside_the_foreground():
    image, label = marked_volume()
    intensity = augment.AugmentationStrength(intensity_scale=0.2, intensity_shift=0.2, noise_std=0.1,
                                             gamma_range=(0.5, 2.0), slice_jitter=0.1)
    out_image, out_label = augment.augment(image, label, intensity, seed(3, 3))
    out_image = out_image.numpy()
    background = np.all(image == 0, axis=-1)
    assert np.all(out_image[background] == 0.0) and np.all(out_image[~background] != image[~background])
    np.testing.assert_array_equal(out_label.numpy(), label)


def test_gamma_keeps_the_foreground_range():
    image, label = marked_volume()
    gamma = augment.AugmentationStrength(gamma_range=(2.0, 2.0))
    out = augment.augment(image, label, gamma, seed(0, 1))[0].numpy()
    foreground = np.any(image != 0, axis=-1)
    for channel in range(2):
        np.testing.assert_allclose([out[..., channel][foreground].min(), out[..., channel][foreground].max()],
                                   [image[..., channel][foreground].min(), image[..., channel][foreground].max()],
                                   rtol=1e-5)
    low, high = image[..., 1][foreground].min(), image[..., 1][foreground].max()
    voxel = (0, 16, 20)
    expected = low + ((image[voxel + (1,)] - low) / (high - low)) ** 2 * (high - low)
    assert out[voxel + (1,)] == pytest.approx(expected, rel=1e-5)


def test_strength_grows_with_stage():
    image, label = marked_volume(depth=2)
    changes = []
    for stage in range(augment.num_stages()):
        total = 0.0
        for index in range(8):
            out = np.asarray(augment.augment(image, label, stage, seed(11, index))[0])
            total += np.abs(out - image).mean()
        changes.append(total / 8)
    assert changes[0] == 0.0
    assert changes[1] < changes[2] < changes[3]


def test_output_size_is_the_centre_of_the_transformed_input():
    image, label = marked_volume(height=36, width=40)
    flip = augment.AugmentationStrength(flip_lr_prob=1.0)
    out_image, out_label = augment.augment(image, label, flip, seed(0, 0), output_size=(32, 32))
    np.testing.assert_array_equal(out_image.numpy(), image[:, 2:34, ::-1][:, :, 4:36])
    np.testing.assert_array_equal(out_label.numpy(), label[:, 2:34, ::-1][:, :, 4:36])
    crop = augment.augment(image, label, 0, seed(0, 0), output_size=(32, 32))[0]
    np.testing.assert_array_equal(crop.numpy(), image[:, 2:34, 4:36])
    # A quarter turn with a cropped output equals numpy's rot90 of the input, then the same centre crop.
    square = np.random.default_rng(0).uniform(size=(2, 9, 9, 1)).astype(np.float32)
    transform = augment.affine_transform(5, 5, tf.constant(math.pi / 2), tf.constant(1.0), 9, 9)
    rotated = augment._transform(tf.constant(square), transform, "NEAREST", (5, 5)).numpy()
    np.testing.assert_array_equal(rotated, np.rot90(square, k=1, axes=(1, 2))[:, 2:7, 2:7])
    patch = augment.augment(image, label, 3, seed(1, 2), output_size=(16, 24))
    assert patch[0].shape == (4, 16, 24, 2) and patch[1].shape == (4, 16, 24, 1)


def test_context_size_covers_rotation_and_zoom():
    assert augment.context_size((8, 128, 128), 0) == (8, 128, 128)
    depth, height, width = augment.context_size((8, 128, 96), 3)
    factor = augment.AUGMENTATION_STAGES[3].context_factor()
    assert depth == 8 and height >= 128 * factor and width >= 96 * factor
    assert (height - 128) % 2 == 0 and (width - 96) % 2 == 0 and height < 128 * factor + 2


def test_context_factor_and_stage_errors():
    assert augment.AugmentationStrength().context_factor() == 1.0
    assert augment.AugmentationStrength(rotation_deg=45.0).context_factor() == pytest.approx(math.sqrt(2.0))
    assert augment.AugmentationStrength(scale_range=(0.8, 1.2)).context_factor() == pytest.approx(1.25)
    with pytest.raises(ValueError, match=r"stage must be an int in \[0, 3\]"):
        augment.augment(np.zeros((1, 4, 4, 1), np.float32), np.zeros((1, 4, 4, 1), np.float32), 4, seed(0, 0))
    with pytest.raises(ValueError, match="scale_range"):
        augment.AugmentationStrength(scale_range=(1.2, 0.8))
