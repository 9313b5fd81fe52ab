"""Tests for strokenet_tf.inference: raw maps -> probabilities/mask in one graph, and loading trained runs."""

import dataclasses
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from strokenet_tf import curriculum as curriculum_lib
from strokenet_tf import ensemble, inference
from strokenet_tf.config import TrainConfig
from strokenet_tf.data import isles, pipeline, preprocess
from strokenet_tf.model import strokenet
from strokenet_tf.training import checkpointing, validation

MODEL_CONFIG = strokenet.tiny_model_config(in_channels=5)


@pytest.fixture(scope="module")
def model():
    keras.utils.set_random_seed(3)
    return strokenet.build_strokenet(MODEL_CONFIG)


@pytest.fixture(scope="module")
def segmenter(model):
    return inference.Segmenter(model, isles.DEFAULT_CHANNELS, MODEL_CONFIG.required_multiples)


@pytest.fixture(scope="module")
def run_dir(model, tmp_path_factory):
    """A run folder as `train` leaves it: config.json, best.keras/best.json and a newer checkpoint."""
    model_dir = str(tmp_path_factory.mktemp("run"))
    config = TrainConfig(
        data_dir="unused", model_dir=model_dir, model=MODEL_CONFIG, pipeline=pipeline.PipelineConfig(),
        curriculum=curriculum_lib.Curriculum.single_stage(1, 1e-3, None),
    )
    checkpointing.check_or_write_config(model_dir, config.to_dict(), (), write=True)
    checkpointing.save_best_model(model, model_dir, epoch=1, metrics={"dice": 0.5})
    # The "latest" checkpoint holds other weights than best.keras.
    later = strokenet.build_strokenet(MODEL_CONFIG)
    later.set_weights([w + 0.01 for w in model.get_weights()])
    manager = tf.train.CheckpointManager(
        tf.train.Checkpoint(model=later), os.path.join(model_dir, checkpointing.CHECKPOINT_SUBDIR), max_to_keep=1
    )
    manager.save(checkpoint_number=7)
    return model_dir, later


def _reference(model, image, multiples, threshold=inference.DEFAULT_THRESHOLD):
    """The same computation spelled out step by step with the preprocessing functions."""
    normalised = preprocess.normalize_image(image, isles.DEFAULT_CHANNELS)[tf.newaxis]
    box = preprocess.head_box(normalised, multiples)
    padded, shape = preprocess.pad_to_multiple(preprocess.crop_box(normalised, box), multiples)
    probabilities = tf.sigmoid(model(padded, training=False))
    probabilities = preprocess.crop_to_shape(probabilities, shape)[..., 0]
    probabilities = preprocess.uncrop_box(probabilities, box, tf.shape(normalised)[2:4]).numpy()[0]
    return probabilities, (probabilities >= threshold).astype(np.uint8)


@pytest.mark.parametrize("shape", [(2, 16, 16), (3, 20, 27), (5, 33, 17)])
def test_segment_equals_the_step_by_step_pipeline_on_odd_sizes(segmenter, model, make_case, shape):
    case = make_case(*shape)
    probabilities, mask = segmenter.predict_case(case)
    expected_probabilities, expected_mask = _reference(model, case.image, MODEL_CONFIG.required_multiples)
    assert probabilities.shape == shape and probabilities.dtype == np.float32
    assert mask.shape == shape and mask.dtype == np.uint8 and set(np.unique(mask)) <= {0, 1}
    np.testing.assert_allclose(probabilities, expected_probabilities, atol=1e-6)
    np.testing.assert_array_equal(mask, expected_mask)
    # Validation during training (normalised once, then padded) scores the same probabilities.
    predict_fn = validation.make_predict_fn(model, 5)
    validated = validation.predict_probabilities(predict_fn, preprocess.prepare_case(case).image,
                                                 MODEL_CONFIG.required_multiples)
    np.testing.assert_allclose(probabilities, validated, atol=1e-6)


def test_one_trace_serves_every_slab_size(model, make_case):
    segmenter = inference.Segmenter(model, isles.DEFAULT_CHANNELS, MODEL_CONFIG.required_multiples)
    for shape in [(2, 16, 16), (4, 24, 40), (7, 9, 11)]:
        segmenter.predict_case(make_case(*shape))
    assert segmenter.segment.experimental_get_tracing_count() == 1


def test_nan_voxels_are_cleaned_and_vendor_scales_do_not_matter(segmenter, make_case):
    case = make_case(4, 24, 24)
    base_probabilities, base_mask = segmenter.predict_case(case)
    image = case.image.copy()
    cbf = isles.DEFAULT_CHANNELS.index(isles.CBF)
    image[..., cbf] *= 100.0  # a vendor scale
    probabilities, mask = segmenter.predict_image(image)
    np.testing.assert_allclose(probabilities, base_probabilities, atol=1e-5)
    image[0, 0, 0, :] = np.nan
    image[1, 2, 3, 1] = np.inf
    probabilities, _ = segmenter.predict_image(image)
    assert np.isfinite(probabilities).all()


def test_case_channels_are_reordered_to_the_model_order(segmenter, make_case):
    case = make_case(2, 16, 16)
    order = [4, 2, 0, 3, 1]
    shuffled = dataclasses.replace(case, image=case.image[..., order], channels=tuple(case.channels[i] for i in order))
    np.testing.assert_array_equal(segmenter.predict_case(shuffled)[0], segmenter.predict_case(case)[0])
    with pytest.raises(ValueError, match=r"expected a raw image \[depth, height, width, 5\]"):
        segmenter.predict_image(case.image[..., :4])


def test_threshold_decides_the_mask(model, make_case):
    case = make_case(2, 16, 16)
    low = inference.Segmenter(model, isles.DEFAULT_CHANNELS, MODEL_CONFIG.required_multiples, threshold=0.001)
    probabilities, mask = low.predict_case(case)
    np.testing.assert_array_equal(mask, (probabilities >= 0.001).astype(np.uint8))
    with pytest.raises(ValueError, match="threshold"):
        inference.Segmenter(model, isles.DEFAULT_CHANNELS, MODEL_CONFIG.required_multiples, threshold=1.0)


def test_run_folder_loads_best_or_latest_weights(run_dir, model, make_case):
    model_dir, later = run_dir
    case = make_case(3, 20, 20)
    best = ensemble.load_segmenter(model_dir)
    assert isinstance(best, inference.Segmenter)
    assert best.trained.source.endswith(checkpointing.BEST_MODEL_FILE)
    assert best.trained.best_record["dice"] == 0.5 and best.channels == isles.DEFAULT_CHANNELS
    np.testing.assert_allclose(best.predict_case(case)[0],
                               _reference(model, case.image, MODEL_CONFIG.required_multiples)[0], atol=1e-6)
    latest = inference.Segmenter.from_run(model_dir, source="latest")
    assert latest.trained.source.endswith("ckpt-7")
    np.testing.assert_allclose(latest.predict_case(case)[0],
                               _reference(later, case.image, MODEL_CONFIG.required_multiples)[0], atol=1e-6)
    keras_file = inference.Segmenter.from_run(os.path.join(model_dir, checkpointing.BEST_MODEL_FILE))
    assert keras_file.multiples == MODEL_CONFIG.required_multiples  # read from the config.json beside it
    np.testing.assert_allclose(keras_file.predict_case(case)[0], best.predict_case(case)[0], atol=1e-6)


def test_bare_keras_file_carries_its_architecture(run_dir, tmp_path):
    bare = tmp_path / "model.keras"
    bare.write_bytes(open(os.path.join(run_dir[0], checkpointing.BEST_MODEL_FILE), "rb").read())
    trained = inference.load_run(str(bare))
    assert trained.channels == isles.DEFAULT_CHANNELS and trained.run_config == {}
    assert trained.model_config == MODEL_CONFIG and trained.multiples == MODEL_CONFIG.required_multiples != \
        strokenet.ModelConfig().required_multiples


def _plain_functional_file(model, path):
    """A `.keras` file as saved before `StrokeNet` carried its config (a plain functional model)."""
    plain = keras.Model(*strokenet._network(MODEL_CONFIG), name=MODEL_CONFIG.name)
    plain.set_weights(model.get_weights())
    plain.save(path)
    return path


def test_keras_file_without_its_architecture_falls_back_to_config_json_then_defaults(run_dir, model, tmp_path,
                                                                                     make_case):
    old = _plain_functional_file(model, str(tmp_path / "old.keras"))
    trained = inference.load_run(old)  # bare: the default architecture, as before
    assert strokenet.model_config_of(trained.model) is None
    assert trained.multiples == strokenet.ModelConfig().required_multiples
    beside = os.path.join(run_dir[0], "old_copy.keras")  # beside the run's config.json: the run's architecture
    try:
        _plain_functional_file(model, beside)
        trained = inference.load_run(beside)
        assert trained.model_config == MODEL_CONFIG and trained.multiples == MODEL_CONFIG.required_multiples
        case = make_case(3, 20, 20)
        np.testing.assert_allclose(inference.Segmenter.from_run(beside).predict_case(case)[0],
                                   _reference(model, case.image, MODEL_CONFIG.required_multiples)[0], atol=1e-6)
    finally:
        os.remove(beside)


def test_bad_model_paths_are_one_line_errors(tmp_path, run_dir):
    with pytest.raises(inference.ModelLoadError, match=r"nowhere: no such model folder or file"):
        ensemble.load_segmenter(str(tmp_path / "nowhere"))
    with pytest.raises(inference.ModelLoadError, match=r"not a training run \(no config.json\)"):
        ensemble.load_segmenter(str(tmp_path))
    broken = tmp_path / "broken.keras"
    broken.write_bytes(b"not a zip")
    with pytest.raises(inference.ModelLoadError, match=r"broken.keras: cannot load Keras model"):
        ensemble.load_segmenter(str(broken))
    with pytest.raises(inference.ModelLoadError, match="model source must be one of best, latest"):
        ensemble.load_segmenter(run_dir[0], source="newest")
    empty_run = tmp_path / "empty_run"
    empty_run.mkdir()
    (empty_run / checkpointing.CONFIG_FILE).write_text(open(os.path.join(run_dir[0], checkpointing.CONFIG_FILE)).read())
    with pytest.raises(inference.ModelLoadError, match="no best.keras yet"):
        ensemble.load_segmenter(str(empty_run))
    with pytest.raises(inference.ModelLoadError, match="no training checkpoint"):
        ensemble.load_segmenter(str(empty_run), source="latest")


def test_the_network_runs_on_the_brain_box_only(model, make_case):
    """A brain in one corner of a 64 x 64 plane: the network sees its box (grown to the multiples), the
    probability outside is 0, and inside equals the network run on that box alone."""
    case = make_case(2, 64, 64)
    image = np.array(case.image)
    image[:, 30:, :] = 0.0
    image[:, :, 40:] = 0.0
    case = dataclasses.replace(case, image=image)
    segmenter = inference.Segmenter(model, isles.DEFAULT_CHANNELS, MODEL_CONFIG.required_multiples)
    probabilities, _ = segmenter.predict_case(case)
    normalised = preprocess.normalize_image(image, isles.DEFAULT_CHANNELS)[tf.newaxis]
    box = preprocess.head_box(normalised, MODEL_CONFIG.required_multiples).numpy()
    r, c, h, w = box
    assert h < 64 and w < 64 and r + h <= 64 and c + w <= 64
    assert h % MODEL_CONFIG.required_multiples[1] == 0 and w % MODEL_CONFIG.required_multiples[2] == 0
    outside = np.ones(probabilities.shape, bool)
    outside[:, r:r + h, c:c + w] = False
    assert np.all(probabilities[outside] == 0.0) and np.all(probabilities[~outside] > 0.0)
    inside = tf.sigmoid(model(normalised[:, :, r:r + h, c:c + w], training=False)).numpy()[0, ..., 0]
    np.testing.assert_allclose(probabilities[:, r:r + h, c:c + w], inside, atol=1e-6)
    whole = inference.Segmenter(model, isles.DEFAULT_CHANNELS, MODEL_CONFIG.required_multiples,
                                crop_to_head=False).predict_case(case)[0]
    assert np.all(whole[outside] > 0.0)  # without the box the air gets the network's (small) probabilities
