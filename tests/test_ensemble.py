"""Tests for strokenet_tf.ensemble and the ensemble path of inference.Segmenter (members, mirroring, temperature)."""

import json
import os

import numpy as np
import pytest
import tensorflow as tf

from strokenet_tf import calibration, ensemble, inference
from strokenet_tf.data import isles, preprocess
from strokenet_tf.training import checkpointing

from serving_fixtures import MODEL_CONFIG, tiny_model, write_run


@pytest.fixture(scope="module")
def models():
    return [tiny_model(seed) for seed in (3, 4, 5)]


@pytest.fixture(scope="module")
def cv_dir(models, tmp_path_factory):
    """A cross_validate folder with three finished folds."""
    root = str(tmp_path_factory.mktemp("cv"))
    for fold, model in enumerate(models):
        fold_dir = os.path.join(root, f"fold_{fold}")
        write_run(model, fold_dir)
        os.makedirs(os.path.join(fold_dir, "evaluation"))
        with open(os.path.join(fold_dir, ensemble.EVAL_SUMMARY), "w") as stream:
            json.dump({"metrics": {}}, stream)
    with open(os.path.join(root, ensemble.CV_SUMMARY_FILE), "w") as stream:
        json.dump({"folds": {"0": {"dice": 0.3}, "1": {"dice": 0.6}, "2": {"dice": None}}}, stream)
    return root


def _probabilities(model, image, mirror=False):
    """Step by step: normalise, pad, network, sigmoid, crop (and the mirrored view flipped back)."""
    def one(x):
        normalised = preprocess.normalize_image(x, isles.DEFAULT_CHANNELS)[tf.newaxis]
        padded, shape = preprocess.pad_to_multiple(normalised, MODEL_CONFIG.required_multiples)
        return preprocess.crop_to_shape(tf.sigmoid(model(padded, training=False)), shape).numpy()[0, ..., 0]

    p = one(image)
    if mirror:
        p = 0.5 * (p + one(image[:, :, ::-1])[:, :, ::-1])
    return p


def test_ensemble_of_one_is_the_single_model_exactly(models, make_case):
    case = make_case(3, 24, 40)
    single = inference.Segmenter(models[0], isles.DEFAULT_CHANNELS, MODEL_CONFIG.required_multiples)
    one = inference.Segmenter([models[0]], isles.DEFAULT_CHANNELS, MODEL_CONFIG.required_multiples)
    for segmenter in (single, one):
        probabilities, mask = segmenter.predict_case(case)
        expected = _probabilities(models[0], case.image)
        np.testing.assert_allclose(probabilities, expected, rtol=0, atol=1e-6)
        np.testing.assert_array_equal(mask, (expected >= 0.5).astype(np.uint8))


def test_members_are_averaged_with_mirrored_views_then_calibrated_after_the_mask(models, make_case):
    case = make_case(2, 32, 24)
    fitted = calibration.Calibration(temperature=2.0, bias=-1.0)
    segmenter = inference.Segmenter(models, isles.DEFAULT_CHANNELS, MODEL_CONFIG.required_multiples, mirror=True,
                                    calibration=fitted)
    probabilities, mask = segmenter.predict_case(case)
    mean = np.mean([_probabilities(m, case.image, mirror=True) for m in models], axis=0)
    np.testing.assert_allclose(probabilities, fitted.apply_np(mean), rtol=0, atol=2e-5)
    np.testing.assert_array_equal(mask, (mean >= 0.5).astype(np.uint8))  # calibration never moves the mask
    assert 0 < mask.sum() and (probabilities[mask > 0] < 0.5).any()


def test_mirrored_input_gives_mirrored_output_under_mirroring(models, make_case):
    case = make_case(2, 32, 32)
    segmenter = inference.Segmenter(models[:2], isles.DEFAULT_CHANNELS, MODEL_CONFIG.required_multiples, mirror=True)
    p = segmenter.predict_image(case.image)[0]
    p_flipped = segmenter.predict_image(np.ascontiguousarray(case.image[:, :, ::-1]))[0]
    np.testing.assert_allclose(p_flipped[:, :, ::-1], p, rtol=0, atol=1e-5)


def test_report_gives_uncertainty_member_volumes_and_disagreement(models, make_case):
    case = make_case(3, 32, 32)
    segmenter = inference.Segmenter(models, isles.DEFAULT_CHANNELS, MODEL_CONFIG.required_multiples)
    outputs = segmenter.analyse_case(case)
    p = outputs[inference.PROBABILITIES_KEY]
    q = np.clip(p.astype(np.float64), 1e-7, 1 - 1e-7)
    entropy = -(q * np.log2(q) + (1 - q) * np.log2(1 - q))
    np.testing.assert_allclose(outputs[inference.UNCERTAINTY_KEY], entropy, rtol=0, atol=1e-4)
    voxel_ml = np.prod(case.spacing_mm) / 1000.0
    expected = [np.count_nonzero(_probabilities(m, case.image) >= 0.5) * voxel_ml for m in models]
    np.testing.assert_allclose(outputs[inference.MEMBER_VOLUMES_KEY], expected, rtol=1e-5)
    core = outputs["core_volume_ml"]
    spread = max(expected) - min(expected)
    dice_low = outputs["member_dice"].min() < inference.DISAGREEMENT_MIN_DICE
    assert bool(outputs[inference.DISAGREE_KEY]) == (spread > 1.0 * max(core, 2.0) or dice_low)


def test_cv_folder_loads_every_fold_mirrored_and_calibrated(cv_dir, models, make_case):
    with open(os.path.join(cv_dir, calibration.CALIBRATION_FILE), "w") as stream:
        json.dump({"calibration": {"temperature": 1.5, "bias": -0.5}}, stream)
    try:
        segmenter = ensemble.load_segmenter(cv_dir)
    finally:
        os.remove(os.path.join(cv_dir, calibration.CALIBRATION_FILE))
    assert len(segmenter.models) == 3 and segmenter.mirror
    assert segmenter.calibration == calibration.Calibration(temperature=1.5, bias=-0.5)
    single = ensemble.load_segmenter(os.path.join(cv_dir, "fold_1"))
    assert len(single.models) == 1 and not single.mirror and single.calibration.is_identity
    listed = ensemble.load_segmenter(",".join(os.path.join(cv_dir, f"fold_{k}") for k in (0, 2)), mirror=False)
    assert len(listed.models) == 2 and not listed.mirror
    assert ensemble.best_fold(cv_dir) == os.path.join(cv_dir, "fold_1")


def test_unfinished_fold_is_named(cv_dir, tmp_path):
    import shutil

    copy = str(tmp_path / "cv")
    shutil.copytree(cv_dir, copy)
    os.remove(os.path.join(copy, "fold_2", ensemble.EVAL_SUMMARY))
    with pytest.raises(inference.ModelLoadError, match=r"fold_2: no finished model"):
        ensemble.load_ensemble([copy])


def test_members_with_other_channels_are_refused_naming_the_difference(cv_dir, tmp_path):
    other = str(tmp_path / "other")
    write_run(tiny_model(6), other)
    path = os.path.join(other, checkpointing.CONFIG_FILE)
    with open(path) as stream:
        config = json.load(stream)
    config["channels"] = list(reversed(config["channels"]))
    with open(path, "w") as stream:
        json.dump(config, stream)
    with pytest.raises(inference.ModelLoadError, match=r"^ensemble: .*other differs from .*fold_0 in channels"):
        ensemble.load_ensemble([os.path.join(cv_dir, "fold_0"), other])


def test_missing_member_path_is_one_line(tmp_path):
    with pytest.raises(inference.ModelLoadError, match="no such model folder or file"):
        ensemble.load_ensemble([str(tmp_path / "nope")])


def test_cpu_bf16_detection_reads_the_flags():
    assert ensemble.cpu_has_bf16("flags\t\t: fpu avx512f avx512_bf16 sse\n")
    assert ensemble.cpu_has_bf16("flags : fpu amx_bf16 amx_tile\n")
    assert not ensemble.cpu_has_bf16("flags : fpu avx512f avx2\n")
    assert ensemble.cpu_has_amx("flags : fpu amx_bf16 amx_tile avx512_bf16\n")
    assert not ensemble.cpu_has_amx("flags\t\t: fpu avx512f avx512_bf16 sse\n")


def test_precision_auto_keeps_a_single_run_in_float32(cv_dir):
    assert ensemble.resolve_precision("auto", is_ensemble=False) == "float32"
    expected = ("mixed_float16" if tf.config.list_physical_devices("GPU")
                else "bfloat16" if ensemble.cpu_has_amx() else "float32")
    assert ensemble.resolve_precision("auto", is_ensemble=True) == expected
    with pytest.raises(inference.ModelLoadError, match="^precision: expected one of"):
        ensemble.resolve_precision("int8", is_ensemble=True)


def test_bfloat16_members_stay_close_and_return_float32(cv_dir, make_case):
    case = make_case(2, 32, 32)
    full = ensemble.load_ensemble([cv_dir], mirror=False, precision="float32")
    half = ensemble.load_ensemble([cv_dir], mirror=False, precision="bfloat16")
    assert any("bfloat16" in layer.dtype_policy.name for layer in half.models[0].layers)
    p_full, p_half = full.predict_case(case)[0], half.predict_case(case)[0]
    assert p_half.dtype == np.float32 and np.max(np.abs(p_full - p_half)) < 0.05


def test_bare_keras_file_of_another_architecture_runs_under_bfloat16(models, tmp_path):
    """The member is rebuilt from the architecture its .keras file carries, not the default one."""
    path = str(tmp_path / "tiny.keras")
    models[0].save(path)
    trained = inference.load_run(path)  # no config.json beside it
    half = ensemble.with_policy(trained, "bfloat16")
    assert half.model_config == MODEL_CONFIG and half.get_layer("stem_conv").compute_dtype == "bfloat16"
    assert [w.shape for w in half.weights] == [w.shape for w in models[0].weights]


@pytest.mark.skipif(not tf.config.list_physical_devices("GPU"), reason="needs a GPU (mixed_float16 path)")
def test_gpu_mixed_float16_ensemble_matches_float32(cv_dir, make_case):
    case = make_case(2, 32, 32)
    full = ensemble.load_ensemble([cv_dir], precision="float32")
    half = ensemble.load_ensemble([cv_dir], precision="auto")
    assert half.precision == "mixed_float16"
    np.testing.assert_allclose(half.predict_case(case)[0], full.predict_case(case)[0], atol=1e-2)
