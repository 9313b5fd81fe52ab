"""Tests for strokenet_tf.training.validation: the same numbers as before the step after the network moved to
`model.postprocess`, and the same mask as the inference graph."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from strokenet_tf import inference, metrics
from strokenet_tf.data import isles, preprocess
from strokenet_tf.model import postprocess, strokenet
from strokenet_tf.training import validation

MODEL_CONFIG = strokenet.tiny_model_config(in_channels=5)


@pytest.fixture(scope="module")
def model():
    keras.utils.set_random_seed(7)
    return strokenet.build_strokenet(MODEL_CONFIG)


@pytest.fixture(scope="module")
def prepared_cases():
    from conftest import build_case

    shapes = [(2, 16, 16), (3, 20, 27), (5, 33, 17), (4, 24, 24)]
    cases = [build_case(*shape, rng=np.random.default_rng(i), case_id=f"case_{i}", lesion=i != 3)
             for i, shape in enumerate(shapes)]
    return [preprocess.prepare_case(case) for case in cases]


def _reference_scores(model, case, multiples):
    """Validation as written before `model.postprocess` (sigmoid in the traced function, numpy threshold 0.5)."""
    padded, _ = preprocess.pad_to_multiple(tf.convert_to_tensor(case.image[np.newaxis], tf.float32), multiples)
    probabilities = tf.sigmoid(tf.cast(model(padded, training=False), tf.float32))
    probabilities = np.asarray(preprocess.crop_to_shape(probabilities, case.image.shape[:3]))[0, ..., 0]
    prediction, label = probabilities >= 0.5, np.asarray(case.label, bool)
    return {
        "dice": float(metrics.dice(prediction, label)),
        "precision": float(metrics.precision(prediction, label, empty_score="zero")),
        "recall": float(metrics.recall(prediction, label, empty_score="zero")),
    }


def test_validation_scores_are_bit_identical_to_the_former_implementation(model, prepared_cases):
    multiples = MODEL_CONFIG.required_multiples
    predict_fn = validation.make_predict_fn(model, 5)
    result = validation.validate(predict_fn, prepared_cases, multiples)
    expected = {case.case_id: _reference_scores(model, case, multiples) for case in prepared_cases}
    assert result.per_case == expected  # exact, not approximate
    for name in validation.METRIC_NAMES:
        assert result.mean[name] == np.mean([scores[name] for scores in expected.values()])
    assert 0.0 < result.mean["dice"] < 1.0  # a non-trivial mask: the comparison means something


def test_validation_probabilities_are_the_inference_graph_probabilities(model, prepared_cases):
    """Validation and predict share the threshold and the step after the network (`model.postprocess`)."""
    assert validation.validate.__defaults__[-1] == inference.DEFAULT_THRESHOLD == postprocess.DEFAULT_THRESHOLD
    segmenter = inference.Segmenter(model, isles.DEFAULT_CHANNELS, MODEL_CONFIG.required_multiples)
    predict_fn = validation.make_predict_fn(model, 5)
    case = prepared_cases[1]  # 3 x 20 x 27: padded, then cropped back
    probabilities = validation.predict_probabilities(predict_fn, case.image, MODEL_CONFIG.required_multiples)
    in_graph = segmenter._member_probabilities(tf.constant(case.image[np.newaxis]))[0].numpy()[0]
    assert probabilities.shape == in_graph.shape == (3, 20, 27)
    np.testing.assert_allclose(probabilities, in_graph, atol=1e-6)


def test_lesion_mask_threshold_is_inclusive():
    probabilities = tf.constant([0.49999, 0.5, 0.7], tf.float32)
    np.testing.assert_array_equal(postprocess.lesion_mask(probabilities).numpy(), [0, 1, 1])
    np.testing.assert_array_equal(postprocess.lesion_mask(probabilities, 0.6).numpy(), [0, 0, 1])
