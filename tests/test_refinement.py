"""Tests for strokenet_tf.model.refinement: LinearUpsampling3D, context aggregation, multi-level refinement."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_round_trip import assert_keras_round_trip

from strokenet_tf.model import refinement
from strokenet_tf.model.refinement import LinearUpsampling3D


def test_linear_upsampling_exact_values_1d():
    x = np.array([0.0, 4.0], np.float32).reshape(1, 1, 1, 2, 1)
    out = LinearUpsampling3D((1, 1, 2))(x).numpy().ravel()
    # Half-pixel centres: output coordinates -0.25, 0.25, 0.75, 1.25 (edges replicated).
    np.testing.assert_allclose(out, [0.0, 1.0, 3.0, 4.0], atol=1e-6)
    out3 = LinearUpsampling3D((1, 1, 3))(x).numpy().ravel()
    np.testing.assert_allclose(out3, [0.0, 0.0, 4.0 / 3.0, 8.0 / 3.0, 4.0, 4.0], atol=1e-6)


def test_linear_upsampling_matches_tf_image_resize_in_plane_and_in_depth():
    x = np.random.default_rng(0).normal(size=(2, 3, 4, 5, 2)).astype(np.float32)
    out = LinearUpsampling3D((2, 2, 3))(x).numpy()
    assert out.shape == (2, 6, 8, 15, 2)
    # In-plane first (each slice is an image), then depth (resize the (depth, height) planes of each column).
    planes = tf.image.resize(x.reshape(6, 4, 5, 2), (8, 15), method="bilinear").numpy().reshape(2, 3, 8, 15, 2)
    columns = np.transpose(planes, (0, 3, 1, 2, 4)).reshape(30, 3, 8, 2)
    expected = tf.image.resize(columns, (6, 8), method="bilinear").numpy().reshape(2, 15, 6, 8, 2)
    np.testing.assert_allclose(out, np.transpose(expected, (0, 2, 3, 1, 4)), atol=1e-5)


def test_linear_upsampling_identity_constant_and_dynamic_shape():
    x = np.random.default_rng(1).normal(size=(1, 2, 3, 3, 4)).astype(np.float32)
    np.testing.assert_array_equal(LinearUpsampling3D(1)(x).numpy(), x)
    np.testing.assert_allclose(LinearUpsampling3D((2, 2, 2))(np.full((1, 2, 2, 2, 1), 7.0, np.float32)), 7.0)
    layer = LinearUpsampling3D((1, 2, 2))
    function = tf.function(layer, input_signature=[tf.TensorSpec((None, None, None, None, 4))])
    assert function(x).shape == (1, 2, 6, 6, 4)
    assert layer.compute_output_shape((None, 2, None, 5, 4)) == (None, 2, None, 10, 4)


def test_linear_upsampling_config_round_trip_and_errors():
    layer = LinearUpsampling3D((1, 2, 4), name="up")
    config = layer.get_config()
    assert config["size"] == [1, 2, 4]
    again = LinearUpsampling3D.from_config(config)
    assert again.size == (1, 2, 4) and again.name == "up"
    x = np.random.default_rng(2).normal(size=(1, 1, 2, 2, 1)).astype(np.float32)
    np.testing.assert_array_equal(again(x).numpy(), layer(x).numpy())
    with pytest.raises(ValueError, match="size"):
        LinearUpsampling3D((1, 0, 2))


def test_linear_upsampling_keeps_float16():
    x = np.ones((1, 1, 2, 2, 1), np.float16)
    layer = LinearUpsampling3D((1, 2, 2), dtype="mixed_float16")
    assert layer(x).dtype == "float16"


def test_context_aggregation_shapes_and_layers():
    inputs = keras.Input((None, None, None, 6))
    outputs = refinement.context_aggregation(inputs, 4, dilations=(1, 2), norm_groups=2, name="ctx")
    model = keras.Model(inputs, outputs)
    assert model(np.zeros((1, 1, 4, 4, 6), np.float32)).shape == (1, 1, 4, 4, 4)
    assert model.get_layer("ctx_dilation2_conv").dilation_rate == (1, 2, 2)
    plain = keras.Model(inputs, refinement.context_aggregation(inputs, 4, dilations=(), name="plain"))
    assert [layer.name for layer in plain.layers if isinstance(layer, keras.layers.Conv3D)] == ["plain_reduce_conv"]


def _refinement_model(dropout=0.0):
    strides = ((1, 2, 2), (1, 2, 2), (2, 2, 2))
    inputs = [keras.Input((None, None, None, c)) for c in (3, 5, 7)]
    outputs = refinement.multi_level_refinement(
        inputs, strides, widths=(4, 6, 8), kernel_sizes=((1, 3, 3), (1, 3, 3), (3, 3, 3)),
        context_dilations=(1, 2), dropout=dropout, norm_groups=2, name="ref",
    )
    return keras.Model(inputs, outputs)


def test_multi_level_refinement_brings_deep_context_to_level_zero():
    model = _refinement_model(dropout=0.2)
    rng = np.random.default_rng(3)
    features = [rng.normal(size=(1, 4, 8, 8, 3)), rng.normal(size=(1, 4, 4, 4, 5)), rng.normal(size=(1, 2, 2, 2, 7))]
    features = [f.astype(np.float32) for f in features]
    out = model(features).numpy()
    assert out.shape == (1, 4, 8, 8, 4)
    # Changing only the deepest level changes the level-0 output: context really flows up.
    changed = [features[0], features[1], features[2] + 1.0]
    assert not np.allclose(model(changed).numpy(), out)
    assert model.get_layer("ref0_upsample").size == (1, 2, 2)
    assert model.get_layer("ref1_upsample").size == (2, 2, 2)


def test_multi_level_refinement_rejects_mismatched_levels():
    inputs = [keras.Input((None, None, None, 3)), keras.Input((None, None, None, 3))]
    with pytest.raises(ValueError, match="one entry per level"):
        refinement.multi_level_refinement(inputs, ((1, 2, 2),), (4, 4), ((1, 3, 3), (1, 3, 3)))


def test_refinement_model_keras_round_trip(tmp_path):
    model = _refinement_model()
    rng = np.random.default_rng(4)
    features = [rng.normal(size=(2, 2, 8, 8, 3)), rng.normal(size=(2, 2, 4, 4, 5)), rng.normal(size=(2, 1, 2, 2, 7))]
    features = [f.astype(np.float32) for f in features]
    restored = assert_keras_round_trip(model, features, tmp_path)
    assert isinstance(restored.get_layer("ref0_upsample"), LinearUpsampling3D)
