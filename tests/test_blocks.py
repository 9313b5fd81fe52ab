"""Tests for strokenet_tf.model.blocks: residual 3D blocks, normalisation choice, helpers."""

import keras
import numpy as np
import pytest

from keras_round_trip import assert_keras_round_trip

from strokenet_tf.model import blocks


def _block_model(in_channels, filters, kernel_size=(1, 3, 3), strides=1, norm="group", groups=8):
    inputs = keras.Input((None, None, None, in_channels))
    outputs = blocks.residual_block_3d(inputs, filters, kernel_size, strides, norm=norm, norm_groups=groups,
                                       name="block")
    return keras.Model(inputs, outputs)


def test_triple():
    assert blocks.triple(3) == (3, 3, 3)
    assert blocks.triple([1, 2, 2]) == (1, 2, 2)
    with pytest.raises(ValueError, match="kernel_size"):
        blocks.triple((1, 2), "kernel_size")


@pytest.mark.parametrize("channels, max_groups, expected", [(12, 8, 6), (24, 8, 8), (4, 8, 4), (7, 8, 7), (9, 2, 1)])
def test_group_count(channels, max_groups, expected):
    assert blocks.group_count(channels, max_groups) == expected


def test_normalization_kinds():
    group = blocks.normalization("group", 12, 8)
    assert isinstance(group, keras.layers.GroupNormalization) and group.groups == 6
    instance = blocks.normalization("instance", 12, 8)
    assert isinstance(instance, keras.layers.GroupNormalization) and instance.groups == 12
    assert isinstance(blocks.normalization("batch", 12), keras.layers.BatchNormalization)
    with pytest.raises(ValueError, match="norm"):
        blocks.normalization("layer", 12)


@pytest.mark.parametrize(
    "shape, strides, expected",
    [((2, 6, 10), (1, 2, 2), (2, 3, 5)), ((4, 8, 8), (2, 2, 2), (2, 4, 4)), ((3, 5, 7), 1, (3, 5, 7))],
)
def test_residual_block_shapes(shape, strides, expected):
    model = _block_model(3, 8, (3, 3, 3), strides)
    out = model(np.random.default_rng(0).normal(size=(2, *shape, 3)).astype(np.float32))
    assert tuple(out.shape) == (2, *expected, 8)
    assert np.all(out.numpy() >= 0.0)  # post-activation ReLU


def test_residual_block_parameter_count_with_projection():
    # conv1 1*3*3*4*8 + norm 2*8 + conv2 9*8*8 + norm 16 + proj 4*8 + norm 16 (no conv biases).
    model = _block_model(4, 8, (1, 3, 3))
    assert model.count_params() == 288 + 16 + 576 + 16 + 32 + 16
    assert model.get_layer("block_proj") is not None


def test_identity_shortcut_without_projection():
    model = _block_model(4, 4, (1, 3, 3))
    names = [layer.name for layer in model.layers]
    assert "block_proj" not in names and "block_pool" not in names
    # With the second convolution zeroed the residual branch is norm(0) = beta = 0: output == relu(input).
    conv = model.get_layer("block_2_conv")
    conv.set_weights([np.zeros_like(w) for w in conv.get_weights()])
    x = np.random.default_rng(1).normal(size=(1, 2, 5, 5, 4)).astype(np.float32)
    np.testing.assert_allclose(model(x).numpy(), np.maximum(x, 0.0), atol=1e-6)


def test_strided_shortcut_averages_before_projecting():
    model = _block_model(1, 1, (1, 3, 3), (1, 2, 2), groups=1)
    for name in ("block_1_conv", "block_2_conv"):
        layer = model.get_layer(name)
        layer.set_weights([np.zeros_like(w) for w in layer.get_weights()])
    model.get_layer("block_proj").set_weights([np.ones((1, 1, 1, 1, 1), np.float32)])
    norm = model.get_layer("block_proj_norm")
    norm.set_weights([np.ones(1, np.float32), np.zeros(1, np.float32)])
    x = np.zeros((1, 1, 2, 4, 1), np.float32)
    x[0, 0, :, :2, 0] = 1.0  # left 2x2 window of ones, right one zeros
    # Average pooling gives [1, 0]; GroupNorm over those two values gives [1, -1]; ReLU gives [1, 0].
    np.testing.assert_allclose(model(x).numpy().ravel(), [1.0, 0.0], atol=1e-3)


@pytest.mark.parametrize("norm", ["group", "batch", "instance"])
def test_norm_variants_run_and_train(norm):
    model = _block_model(2, 4, (3, 3, 3), (1, 2, 2), norm=norm, groups=2)
    x = np.random.default_rng(2).normal(size=(2, 2, 4, 4, 2)).astype(np.float32)
    assert model(x, training=True).shape == (2, 2, 2, 2, 4)


def test_block_model_keras_round_trip(tmp_path):
    model = _block_model(3, 6, (1, 3, 3), (1, 2, 2), groups=3)
    x = np.random.default_rng(3).normal(size=(1, 2, 4, 6, 3)).astype(np.float32)
    assert_keras_round_trip(model, x, tmp_path)
    assert keras.Model.from_config(model.get_config()).count_params() == model.count_params()
