"""Tests for strokenet_tf.model.strokenet: ModelConfig and build_strokenet."""

import dataclasses
import json
import math

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_round_trip import assert_keras_round_trip

from strokenet_tf import losses
from strokenet_tf.model import strokenet
from strokenet_tf.model.strokenet import ModelConfig


@pytest.fixture(scope="module")
def tiny_model():
    keras.utils.set_random_seed(0)
    return strokenet.build_strokenet(strokenet.tiny_model_config(in_channels=5))


def test_required_multiples():
    assert ModelConfig().required_multiples == (2, 16, 16)
    assert strokenet.tiny_model_config().required_multiples == (2, 8, 8)
    config = dataclasses.replace(
        strokenet.tiny_model_config(), strides=((1, 1, 1), (2, 2, 2), (2, 3, 3)),
        kernel_sizes=((1, 3, 3), (3, 3, 3), (3, 3, 3)),
    )
    assert config.required_multiples == (4, 6, 6)


def test_default_config_is_anisotropic_and_compact():
    config = ModelConfig()
    assert sum(stride[0] > 1 for stride in config.strides) <= 2
    assert config.strides[0] == (1, 2, 2) and config.kernel_sizes[0] == (1, 3, 3)
    assert config.refinement_widths == (12, 24, 32, 32)
    assert config.output_bias_init == pytest.approx(math.log(0.01 / 0.99))
    model = strokenet.build_strokenet(config)
    assert 300_000 <= model.count_params() <= 2_000_000
    assert model.get_layer("logits").get_weights()[1][0] == pytest.approx(-4.59511985)
    assert model(np.zeros((1, 2, 16, 16, 5), np.float32)).shape == (1, 2, 16, 16, 1)


@pytest.mark.parametrize("spatial", [(2, 8, 8), (4, 16, 8), (6, 24, 16), (2, 32, 40)])
def test_output_matches_input_spatial_shape(tiny_model, spatial):
    x = np.random.default_rng(0).normal(size=(1, *spatial, 5)).astype(np.float32)
    logits = tiny_model(x)
    assert logits.shape == (1, *spatial, 1) and logits.dtype == "float32"
    assert np.all(np.isfinite(logits.numpy()))


def test_one_trace_serves_every_shape(tiny_model):
    """Fully dynamic spatial dims (as a serving signature has): one concrete function, several slab shapes."""
    forward = tf.function(lambda x: tiny_model(x, training=False),
                          input_signature=[tf.TensorSpec((None, None, None, None, 5), tf.float32)])
    for shape in [(1, 2, 16, 16), (2, 6, 8, 24)]:
        x = np.random.default_rng(5).normal(size=(*shape, 5)).astype(np.float32)
        np.testing.assert_allclose(forward(x).numpy(), tiny_model(x).numpy(), rtol=1e-5, atol=1e-5)
    assert forward.experimental_get_tracing_count() == 1


def test_gradients_reach_every_trainable_weight(tiny_model):
    rng = np.random.default_rng(1)
    x = rng.normal(size=(2, 2, 16, 16, 5)).astype(np.float32)
    labels = (rng.random((2, 2, 16, 16, 1)) > 0.8).astype(np.float32)
    with tf.GradientTape() as tape:
        logits = tiny_model(x, training=True)
        loss = losses.focal_loss(labels, logits, reduction="mean") + tf.reduce_mean(losses.soft_dice_loss(labels, logits))
    gradients = tape.gradient(loss, tiny_model.trainable_variables)
    assert len(gradients) == len(tiny_model.trainable_variables) > 0
    for variable, gradient in zip(tiny_model.trainable_variables, gradients):
        assert gradient is not None, variable.path
        gradient = gradient.numpy()
        assert np.all(np.isfinite(gradient)), variable.path
        assert np.any(gradient != 0.0), variable.path


def test_keras_save_load_round_trip_carries_the_model_config(tmp_path, tiny_model):
    x = np.random.default_rng(2).normal(size=(1, 4, 16, 24, 5)).astype(np.float32)
    restored = assert_keras_round_trip(tiny_model, x, tmp_path)
    assert isinstance(restored, strokenet.StrokeNet)
    assert strokenet.model_config_of(restored) == strokenet.tiny_model_config(in_channels=5)
    assert restored.get_config()["model_config"]["widths"] == [4, 8, 8]  # the constructor arguments, not layers


def test_saved_model_config_is_json_and_rebuilds_the_same_architecture(tiny_model):
    config = json.loads(json.dumps(tiny_model.get_config()))
    rebuilt = strokenet.StrokeNet.from_config(config)
    assert rebuilt.model_config == tiny_model.model_config and rebuilt.name == tiny_model.name
    assert [w.shape for w in rebuilt.weights] == [w.shape for w in tiny_model.weights]


def test_mixed_float16_model_reloads_under_its_policy(tmp_path):
    try:
        keras.mixed_precision.set_global_policy("mixed_float16")
        model = strokenet.build_strokenet(strokenet.tiny_model_config(in_channels=2))
    finally:
        keras.mixed_precision.set_global_policy("float32")
    x = np.random.default_rng(4).normal(size=(1, 2, 8, 8, 2)).astype(np.float32)
    restored = assert_keras_round_trip(model, x, tmp_path)
    assert restored.dtype_policy.name == "mixed_float16"
    assert restored.get_layer("stem_conv").compute_dtype == "float16"
    assert keras.mixed_precision.global_policy().name == "float32"  # loading leaves the global policy alone


def test_weights_of_a_plain_functional_model_restore_into_strokenet(tmp_path):
    """Checkpoints written before `StrokeNet` (a plain `keras.Model`) restore into it: same object graph."""
    config = strokenet.tiny_model_config(in_channels=2)
    keras.utils.set_random_seed(5)
    plain = keras.Model(*strokenet._network(config), name=config.name)
    path = tf.train.Checkpoint(model=plain).save(str(tmp_path / "ckpt"))
    model = strokenet.build_strokenet(config)
    tf.train.Checkpoint(model=model).restore(path).assert_existing_objects_matched()
    x = np.random.default_rng(6).normal(size=(1, 2, 8, 8, 2)).astype(np.float32)
    np.testing.assert_array_equal(model(x).numpy(), plain(x).numpy())


def test_mixed_float16_policy_outputs_float32():
    try:
        keras.mixed_precision.set_global_policy("mixed_float16")
        model = strokenet.build_strokenet(strokenet.tiny_model_config(in_channels=2))
        assert model.get_layer("stem_conv").compute_dtype == "float16"
        logits = model(np.random.default_rng(3).normal(size=(1, 2, 8, 8, 2)).astype(np.float32))
        assert logits.dtype == "float32" and model.outputs[0].dtype == "float32"
        assert np.all(np.isfinite(logits.numpy()))
    finally:
        keras.mixed_precision.set_global_policy("float32")
    assert keras.mixed_precision.global_policy().name == "float32"


@pytest.mark.parametrize("norm", ["batch", "instance"])
def test_other_norms_build(norm):
    config = dataclasses.replace(strokenet.tiny_model_config(in_channels=1), norm=norm)
    model = strokenet.build_strokenet(config)
    assert model(np.zeros((2, 2, 8, 8, 1), np.float32), training=True).shape == (2, 2, 8, 8, 1)


def test_stem_only_level_zero_and_unit_stem_stride():
    config = dataclasses.replace(
        strokenet.tiny_model_config(in_channels=1), blocks_per_stage=(0, 1, 2), strides=((1, 1, 1), (1, 2, 2), (2, 2, 2)),
    )
    model = strokenet.build_strokenet(config)
    names = {layer.name for layer in model.layers}
    assert "head_upsample" not in names and "stage2_block2_out" in names and "stage0_block1_out" not in names
    assert model(np.zeros((1, 2, 4, 4, 1), np.float32)).shape == (1, 2, 4, 4, 1)


def test_config_dict_round_trip():
    config = ModelConfig()
    data = config.to_dict()
    assert data["strides"][2] == [2, 2, 2]
    again = ModelConfig.from_dict(json.loads(json.dumps(data)))
    assert again == config and isinstance(again.strides[0], tuple)
    assert dataclasses.replace(config, widths=[8, 16, 24, 32]).widths == (8, 16, 24, 32)
    with pytest.raises(ValueError, match="unknown field"):
        ModelConfig.from_dict({**data, "depth": 3})


@pytest.mark.parametrize(
    "overrides, match",
    [
        (dict(widths=(8, 16, 32)), "needs one entry per level of widths"),
        (dict(kernel_sizes=((1, 3, 3), (1, 3, 3), (1, 3, 3), (3, 3, 3))), "kernel_sizes\\[2\\]"),
        (dict(kernel_sizes=((1, 3, 3), (1, 3, 3), (3, 3, 3), (2, 3, 3))), "odd kernels"),
        (dict(norm="layer"), "norm"),
        (dict(blocks_per_stage=(1, 0, 1, 1)), "blocks_per_stage"),
        (dict(dropout=1.0), "dropout"),
        (dict(context_dilations=(0,)), "context_dilations"),
    ],
)
def test_config_validation(overrides, match):
    with pytest.raises(ValueError, match=match):
        dataclasses.replace(ModelConfig(), **overrides)


def test_overfits_one_tiny_volume():
    """A tiny network memorises one 4x32x32 volume with a blob lesion (Dice > 0.9)."""
    keras.utils.set_random_seed(4)
    rng = np.random.default_rng(4)
    depth, height, width = np.meshgrid(np.arange(4), np.arange(32), np.arange(32), indexing="ij")
    blob = ((depth - 1.5) / 2.0) ** 2 + ((height - 12) / 7.0) ** 2 + ((width - 18) / 5.0) ** 2 <= 1.0
    labels = blob[None, ..., None].astype(np.float32)
    image = rng.normal(0.0, 1.0, (1, 4, 32, 32, 2)).astype(np.float32)
    image[..., 0] += 1.5 * labels[..., 0]  # a lesion that is visible, but noisy, in one map
    model = strokenet.build_strokenet(strokenet.tiny_model_config(in_channels=2))
    optimizer = keras.optimizers.Adam(1e-2)
    loss_fn = losses.FocalDiceLoss(alpha=0.5, gamma=0.0, dice_weight=1.0)

    @tf.function
    def step():
        with tf.GradientTape() as tape:
            loss = loss_fn(labels, model(image, training=True))
        optimizer.apply_gradients(zip(tape.gradient(loss, model.trainable_variables), model.trainable_variables))
        return loss

    for _ in range(150):
        step()
    prediction = model(image).numpy() > 0.0
    dice = 2.0 * np.sum(prediction & (labels > 0)) / (np.sum(prediction) + np.sum(labels))
    assert dice > 0.9
