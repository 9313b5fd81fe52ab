"""Tests for strokenet_tf.losses: focal loss (Lin et al. 2017), soft Dice, FocalDiceLoss."""

import math

import keras
import numpy as np
import pytest
import tensorflow as tf

from strokenet_tf import losses


def _sigmoid(x):
    return 1.0 / (1.0 + math.exp(-x))


@pytest.mark.parametrize(
    "label, logit, alpha, gamma",
    [(1.0, 0.0, 0.25, 2.0), (0.0, 0.0, 0.25, 2.0), (1.0, 2.0, 0.25, 2.0), (0.0, 2.0, 0.25, 2.0),
     (1.0, -3.0, 0.75, 0.5), (0.0, -1.5, 0.4, 1.0)],
)
def test_focal_loss_matches_formula_on_scalars(label, logit, alpha, gamma):
    p = _sigmoid(logit)
    p_t = p if label == 1.0 else 1.0 - p
    alpha_t = alpha if label == 1.0 else 1.0 - alpha
    expected = -alpha_t * (1.0 - p_t) ** gamma * math.log(p_t)
    got = losses.focal_loss(tf.constant([label]), tf.constant([logit]), alpha=alpha, gamma=gamma)
    np.testing.assert_allclose(got.numpy(), [expected], rtol=1e-6)


def test_focal_loss_exact_values_at_logit_zero():
    # p = 0.5: FL = alpha_t * 0.5**gamma * log 2.
    got = losses.focal_loss(tf.constant([1.0, 0.0]), tf.constant([0.0, 0.0]), alpha=0.25, gamma=2.0).numpy()
    np.testing.assert_allclose(got, [0.25 * 0.25 * math.log(2.0), 0.75 * 0.25 * math.log(2.0)], rtol=1e-6)


def test_gamma_zero_is_alpha_weighted_cross_entropy():
    rng = np.random.default_rng(0)
    labels = (rng.random((2, 3, 4, 4, 1)) > 0.7).astype(np.float32)
    logits = rng.normal(0.0, 3.0, labels.shape).astype(np.float32)
    cross_entropy = tf.nn.sigmoid_cross_entropy_with_logits(labels=labels, logits=logits).numpy()
    weights = np.where(labels == 1.0, 0.3, 0.7)
    got = losses.focal_loss(labels, logits, alpha=0.3, gamma=0.0).numpy()
    np.testing.assert_allclose(got, weights * cross_entropy, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("alpha, gamma", [(0.25, 2.0), (0.5, 0.0), (0.8, 1.5), (0.1, 3.0)])
def test_focal_loss_matches_keras_binary_focal_crossentropy(alpha, gamma):
    rng = np.random.default_rng(1)
    labels = (rng.random((2, 3, 5, 5, 1)) > 0.6).astype(np.float32)
    logits = rng.uniform(-6.0, 6.0, labels.shape).astype(np.float32)
    # Keras: per-element focal BCE, mean over the last axis, then "sum_over_batch_size" (mean of the rest).
    reference = keras.losses.BinaryFocalCrossentropy(
        apply_class_balancing=True, alpha=alpha, gamma=gamma, from_logits=True
    )(labels, logits)
    got = losses.focal_loss(labels, logits, alpha=alpha, gamma=gamma, reduction="mean")
    np.testing.assert_allclose(got.numpy(), reference.numpy(), rtol=1e-5, atol=1e-6)


def test_focal_loss_soft_labels_match_keras():
    rng = np.random.default_rng(2)
    labels = rng.random((3, 7)).astype(np.float32)
    logits = rng.uniform(-4.0, 4.0, labels.shape).astype(np.float32)
    reference = keras.losses.BinaryFocalCrossentropy(
        apply_class_balancing=True, alpha=0.3, gamma=2.0, from_logits=True
    )(labels, logits)
    got = losses.focal_loss(labels, logits, alpha=0.3, gamma=2.0, reduction="mean")
    np.testing.assert_allclose(got.numpy(), reference.numpy(), rtol=1e-5)


def test_reductions():
    labels = tf.constant([[1.0, 0.0, 1.0]])
    logits = tf.constant([[0.5, -0.5, 2.0]])
    per_voxel = losses.focal_loss(labels, logits)
    assert per_voxel.shape == (1, 3)
    np.testing.assert_allclose(losses.focal_loss(labels, logits, reduction="sum"), np.sum(per_voxel), rtol=1e-6)
    np.testing.assert_allclose(losses.focal_loss(labels, logits, reduction="mean"), np.mean(per_voxel), rtol=1e-6)
    with pytest.raises(ValueError, match="reduction"):
        losses.focal_loss(labels, logits, reduction="batch")


@pytest.mark.parametrize("gamma", [0.0, 0.5, 2.0])
def test_focal_loss_large_logits_finite_with_finite_gradients(gamma):
    labels = tf.constant([1.0, 0.0, 1.0, 0.0, 1.0, 0.0, 1.0, 0.0])
    logits = tf.Variable([-1e4, 1e4, -100.0, 100.0, 1e4, -1e4, 100.0, -100.0])
    with tf.GradientTape() as tape:
        loss = losses.focal_loss(labels, logits, alpha=0.25, gamma=gamma)
    gradient = tape.gradient(loss, logits).numpy()
    loss = loss.numpy()
    assert np.all(np.isfinite(loss)) and np.all(np.isfinite(gradient))
    # Confidently wrong voxels: loss ~ alpha_t * |logit|, gradient ~ -+alpha_t.
    np.testing.assert_allclose(loss[:4], [0.25e4, 0.75e4, 25.0, 75.0], rtol=1e-6)
    np.testing.assert_allclose(gradient[:4], [-0.25, 0.75, -0.25, 0.75], rtol=1e-6)
    # Confidently right voxels: loss ~ 0, gradient ~ 0 (exactly 0 in float32 at 1e4).
    np.testing.assert_allclose(loss[4:], 0.0, atol=1e-30)
    np.testing.assert_allclose(gradient[4:], 0.0, atol=1e-30)


def test_focal_loss_gradient_matches_finite_difference():
    labels = tf.constant([1.0, 0.0, 1.0, 0.0], tf.float64)
    values = np.array([0.3, -1.2, 4.0, 2.5])
    logits = tf.Variable(values)
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(losses.focal_loss(labels, logits, alpha=0.25, gamma=2.0))
    gradient = tape.gradient(loss, logits).numpy()
    assert np.all(gradient != 0.0)
    step = 1e-6
    numeric = [
        (tf.reduce_sum(losses.focal_loss(labels, values + step * np.eye(4)[i], 0.25, 2.0))
         - tf.reduce_sum(losses.focal_loss(labels, values - step * np.eye(4)[i], 0.25, 2.0))).numpy() / (2 * step)
        for i in range(4)
    ]
    np.testing.assert_allclose(gradient, numeric, rtol=1e-5)


def test_gamma_and_alpha_as_tensors_do_not_retrace():
    traces = []

    @tf.function
    def step(labels, logits, gamma, alpha):
        traces.append(1)
        return losses.focal_loss(labels, logits, alpha=alpha, gamma=gamma, reduction="mean")

    labels = tf.constant([1.0, 0.0])
    logits = tf.constant([0.0, 0.0])
    values = [step(labels, logits, tf.constant(gamma), tf.constant(0.25)).numpy() for gamma in (0.0, 1.0, 2.0)]
    assert len(traces) == 1
    np.testing.assert_allclose(values, [0.5 * math.log(2.0) * 0.5**g for g in (0, 1, 2)], rtol=1e-6)


def test_soft_dice_loss_exact_values():
    # Logits of +-1e4 make sigmoid exactly 1 or 0, so the soft Dice equals the hard one.
    labels = np.zeros((2, 1, 3, 3, 1), np.float32)
    labels[0, 0, :2, :2] = 1.0  # 4 voxels
    labels[1, 0, 0, 0] = 1.0  # 1 voxel
    logits = np.full_like(labels, -1e4)
    logits[0, 0, 0, :] = 1e4  # 3 predicted, 2 of them correct
    dice = losses.soft_dice_loss(labels, logits, smooth=1.0).numpy()
    np.testing.assert_allclose(dice, [1.0 - (2 * 2 + 1) / (4 + 3 + 1), 1.0 - 1.0 / (1 + 0 + 1)], rtol=1e-6)
    batch = losses.soft_dice_loss(labels, logits, smooth=1.0, per_sample=False).numpy()
    np.testing.assert_allclose(batch, 1.0 - (2 * 2 + 1) / (5 + 3 + 1), rtol=1e-6)


def test_soft_dice_loss_perfect_and_empty():
    labels = np.zeros((1, 2, 2, 2, 1), np.float32)
    labels[0, 0, 0, 0] = 1.0
    perfect = np.where(labels == 1.0, 1e4, -1e4).astype(np.float32)
    assert losses.soft_dice_loss(labels, perfect).numpy()[0] == pytest.approx(0.0, abs=1e-7)
    empty = np.zeros_like(labels)
    assert losses.soft_dice_loss(empty, np.full_like(labels, -1e4)).numpy()[0] == pytest.approx(0.0, abs=1e-7)
    # Logits 0: p = 0.5 everywhere, 8 voxels, 1 positive: 1 - (2 * 0.5 + 1) / (4 + 1 + 1).
    assert losses.soft_dice_loss(labels, np.zeros_like(labels)).numpy()[0] == pytest.approx(1.0 - 2.0 / 6.0)


def test_soft_dice_gradient_finite_and_nonzero():
    labels = tf.constant([[1.0, 0.0, 1.0, 0.0]])
    logits = tf.Variable([[-1e4, 1e4, 0.5, -0.5]])
    with tf.GradientTape() as tape:
        loss = losses.soft_dice_loss(labels, logits)
    gradient = tape.gradient(loss, logits).numpy()
    assert np.all(np.isfinite(gradient)) and np.any(gradient != 0.0)


def test_focal_dice_loss_combines_terms():
    rng = np.random.default_rng(3)
    labels = (rng.random((2, 2, 4, 4, 1)) > 0.5).astype(np.float32)
    logits = rng.normal(0.0, 2.0, labels.shape).astype(np.float32)
    loss = losses.FocalDiceLoss(alpha=0.3, gamma=1.0, focal_weight=2.0, dice_weight=0.5)
    focal = losses.focal_loss(labels, logits, alpha=0.3, gamma=1.0).numpy().reshape(2, -1).mean(axis=1)
    dice = losses.soft_dice_loss(labels, logits).numpy()
    np.testing.assert_allclose(loss(labels, logits).numpy(), np.mean(2.0 * focal + 0.5 * dice), rtol=1e-6)
    per_example = losses.FocalDiceLoss(alpha=0.3, gamma=1.0, focal_weight=2.0, dice_weight=0.5, reduction=None)
    np.testing.assert_allclose(per_example(labels, logits).numpy(), 2.0 * focal + 0.5 * dice, rtol=1e-6)


def test_focal_dice_loss_config_round_trip():
    loss = losses.FocalDiceLoss(alpha=0.4, gamma=1.5, focal_weight=0.5, dice_weight=2.0, smooth=0.1, name="fd")
    config = loss.get_config()
    again = losses.FocalDiceLoss.from_config(config)
    assert again.get_config() == config
    assert config["alpha"] == 0.4 and config["gamma"] == 1.5 and config["smooth"] == 0.1
    serialized = keras.saving.serialize_keras_object(loss)
    restored = keras.saving.deserialize_keras_object(serialized)
    assert isinstance(restored, losses.FocalDiceLoss) and restored.get_config() == config
    labels = np.ones((1, 2, 2, 2, 1), np.float32)
    logits = np.linspace(-2.0, 2.0, 8, dtype=np.float32).reshape(labels.shape)
    np.testing.assert_allclose(restored(labels, logits).numpy(), loss(labels, logits).numpy(), rtol=1e-7)


def test_focal_dice_loss_rejects_bad_parameters():
    with pytest.raises(ValueError, match="alpha"):
        losses.FocalDiceLoss(alpha=1.5)
    with pytest.raises(ValueError, match="gamma"):
        losses.FocalDiceLoss(gamma=-1.0)


def test_focal_dice_loss_takes_tensor_parameters_as_the_training_step_does():
    rng = np.random.default_rng(4)
    labels = (rng.random((2, 2, 4, 4, 1)) > 0.5).astype(np.float32)
    logits = rng.normal(0.0, 2.0, labels.shape).astype(np.float16)  # mixed-precision logits
    traces = []

    @tf.function(input_signature=[tf.TensorSpec([], tf.float32)] * 3)
    def step_loss(alpha, gamma, dice_weight):
        traces.append(1)
        return losses.focal_dice_loss(labels, logits, alpha=alpha, gamma=gamma, dice_weight=dice_weight)

    for alpha, gamma, dice_weight in ((0.3, 1.0, 0.5), (0.5, 0.0, 0.0)):
        expected = losses.FocalDiceLoss(alpha=alpha, gamma=gamma, dice_weight=dice_weight, reduction=None)
        got = step_loss(tf.constant(alpha), tf.constant(gamma), tf.constant(dice_weight))
        assert got.dtype == tf.float32 and got.shape == (2,)
        np.testing.assert_allclose(got.numpy(), expected(labels, logits).numpy(), rtol=1e-6)
    assert len(traces) == 1
