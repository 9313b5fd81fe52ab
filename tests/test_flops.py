"""Tests for strokenet_tf.model.flops: counted FLOPs against hand counts, and the default model's budget."""

import keras
import pytest

from strokenet_tf.model import flops, strokenet


def _conv_model(use_bias, strides=(1, 1, 1)):
    inputs = keras.Input((None, None, None, 3))
    outputs = keras.layers.Conv3D(5, (1, 3, 3), strides=strides, padding="same", use_bias=use_bias)(inputs)
    return keras.Model(inputs, outputs)


def test_single_conv3d_matches_hand_count():
    # 2 FLOPs per multiply-add: 2 * output voxels (4 * 8 * 8) * output channels 5 * kernel (1 * 3 * 3) * inputs 3.
    expected = 2 * (4 * 8 * 8 * 5) * (1 * 3 * 3 * 3)
    assert flops.count_flops(_conv_model(False), (1, 4, 8, 8, 3)) == expected == 69_120
    # The bias adds one FLOP per output element.
    assert flops.count_flops(_conv_model(True), (1, 4, 8, 8, 3)) == expected + 4 * 8 * 8 * 5
    # Batch 2 doubles it; a (1, 2, 2) stride quarters it.
    assert flops.count_flops(_conv_model(False), (2, 4, 8, 8, 3)) == 2 * expected
    assert flops.count_flops(_conv_model(False, (1, 2, 2)), (1, 4, 8, 8, 3)) == expected // 4


def test_by_op_type_sums_to_total():
    model = strokenet.build_strokenet(strokenet.tiny_model_config(in_channels=2))
    by_type = flops.flops_by_op_type(model, (1, 2, 16, 16, 2))
    assert sum(by_type.values()) == flops.count_flops(model, (1, 2, 16, 16, 2))
    assert by_type["Conv3D"] > 0.8 * sum(by_type.values())


def test_input_rank_is_checked():
    with pytest.raises(ValueError, match="batch dimension"):
        flops.count_flops(_conv_model(False), (4, 8, 8, 3))


def test_default_model_fits_the_flop_budget():
    """The default network costs <= 10 GFLOP on a 16-slice 256 x 256 slab of 5 maps."""
    model = strokenet.build_strokenet(strokenet.ModelConfig())
    total = flops.count_flops(model, (1, 16, 256, 256, 5))
    assert 5e9 < total <= 10e9
