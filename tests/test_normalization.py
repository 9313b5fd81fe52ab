"""Tests for strokenet_tf.model.normalization: the faster GroupNormalization is Keras's layer, same math."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from strokenet_tf.model import normalization, strokenet
from strokenet_tf.model.normalization import GroupNormalization


def _pair(groups, channels, rng):
    fast = GroupNormalization(groups=groups, epsilon=1e-5)
    reference = keras.layers.GroupNormalization(groups=groups, epsilon=1e-5)
    shape = (None, None, None, None, channels)
    fast.build(shape)
    reference.build(shape)
    weights = [rng.uniform(0.5, 1.5, channels).astype(np.float32), rng.normal(size=channels).astype(np.float32)]
    fast.set_weights(weights)
    reference.set_weights(weights)
    return fast, reference


def _float64_group_norm(x, groups, gamma, beta, epsilon=1e-5):
    grouped = x.astype(np.float64).reshape(x.shape[:-1] + (groups, x.shape[-1] // groups))
    mean = grouped.mean(axis=(1, 2, 3, 5), keepdims=True)
    variance = grouped.var(axis=(1, 2, 3, 5), keepdims=True)
    return ((grouped - mean) / np.sqrt(variance + epsilon)).reshape(x.shape) * gamma + beta


@pytest.mark.parametrize("groups, channels", [(1, 4), (2, 6), (6, 12), (12, 12)])
def test_matches_keras_and_a_float64_reference(groups, channels):
    rng = np.random.default_rng(groups)
    fast, reference = _pair(groups, channels, rng)
    x = rng.normal(2.0, 3.0, size=(2, 3, 5, 7, channels)).astype(np.float32)
    np.testing.assert_allclose(fast(x).numpy(), reference(x).numpy(), atol=2e-5)
    gamma, beta = (w.numpy() for w in (fast.gamma, fast.beta))
    np.testing.assert_allclose(fast(x).numpy(), _float64_group_norm(x, groups, gamma, beta), atol=1e-5)
    graph = tf.function(fast, input_signature=[tf.TensorSpec([None, None, None, None, channels])])
    np.testing.assert_allclose(graph(x).numpy(), fast(x).numpy(), atol=1e-6)


def test_large_slab_is_closer_to_float64_than_keras():
    rng = np.random.default_rng(0)
    fast, reference = _pair(6, 12, rng)
    x = rng.normal(1.0, 2.0, size=(1, 8, 128, 128, 12)).astype(np.float32)
    exact = _float64_group_norm(x, 6, fast.gamma.numpy(), fast.beta.numpy())
    assert np.abs(fast(x).numpy() - exact).max() <= np.abs(reference(x).numpy() - exact).max() + 1e-6


def test_gradients_match_keras():
    rng = np.random.default_rng(1)
    fast, reference = _pair(3, 6, rng)
    x = tf.constant(rng.normal(size=(2, 2, 4, 4, 6)).astype(np.float32))
    gradients = []
    for layer in (fast, reference):
        with tf.GradientTape() as tape:
            tape.watch(x)
            loss = tf.reduce_sum(layer(x) ** 3)
        gradients.append(tape.gradient(loss, [x, layer.gamma, layer.beta]))
    for fast_gradient, reference_gradient in zip(*gradients):
        np.testing.assert_allclose(fast_gradient.numpy(), reference_gradient.numpy(), rtol=1e-4, atol=1e-4)


def test_mixed_precision_and_other_ranks():
    half = GroupNormalization(groups=2, dtype="mixed_float16")
    assert half(np.ones((1, 1, 2, 2, 4), np.float16)).dtype == "float16"
    flat = GroupNormalization(groups=2)
    x = np.random.default_rng(2).normal(size=(3, 4)).astype(np.float32)
    assert flat(x).shape == (3, 4)  # rank 2: Keras's own computation


def test_with_fast_group_norm_swaps_layers_and_keeps_outputs(tmp_path):
    config = strokenet.tiny_model_config()
    model = strokenet.build_strokenet(config)
    assert any(type(layer) is GroupNormalization for layer in model.layers)
    path = str(tmp_path / "model.keras")
    model.save(path)
    assert type(keras.saving.load_model(path).get_layer("stem_norm")) is GroupNormalization

    def as_keras(layer):
        if isinstance(layer, GroupNormalization):
            return keras.layers.GroupNormalization.from_config(layer.get_config())
        return layer.__class__.from_config(layer.get_config())

    legacy = keras.models.clone_model(model, clone_function=as_keras)
    legacy.set_weights(model.get_weights())
    assert not any(type(layer) is GroupNormalization for layer in legacy.layers)
    swapped = normalization.with_fast_group_norm(legacy)
    assert all(type(layer) is not keras.layers.GroupNormalization for layer in swapped.layers)
    assert normalization.with_fast_group_norm(swapped) is swapped
    x = np.random.default_rng(3).normal(size=(1, 2, 16, 16, 5)).astype(np.float32)
    np.testing.assert_allclose(swapped(x).numpy(), legacy(x).numpy(), atol=1e-4)
