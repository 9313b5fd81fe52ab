"""Tests for strokenet_tf.calibration: ECE on hand-made bins, the fitted maps, the reliability PNG, the tf/numpy twins."""

import io

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from strokenet_tf import calibration


def test_ece_on_hand_made_bins():
    # bin of 0.1-ish: mean p 0.1, fraction 0 (2 voxels); bin of 0.9: mean p 0.9, fraction 0.5 (2 voxels).
    p = np.array([0.1, 0.1, 0.9, 0.9])
    y = np.array([0, 0, 1, 0])
    bins = calibration.reliability_bins(p, y, num_bins=15)
    assert bins["ece"] == pytest.approx(0.5 * 0.1 + 0.5 * 0.4)
    assert sum(bins["count"]) == 4 and bins["n_voxels"] == 4
    assert calibration.expected_calibration_error(np.array([0.0, 1.0]), np.array([0, 1])) == 0.0
    assert calibration.expected_calibration_error(np.array([1.0]), np.array([0])) == 1.0  # p = 1 is in the last bin


def _simulated(temperature, bias, n=200_000, seed=0):
    rng = np.random.default_rng(seed)
    true_logits = rng.normal(-3.0, 2.5, n)
    y = rng.random(n) < 1.0 / (1.0 + np.exp(-true_logits))
    # A network whose logits are the truth's, stretched and shifted: calibrating must undo it.
    network_logits = (true_logits - bias) * temperature
    return 1.0 / (1.0 + np.exp(-network_logits)), y


def test_platt_fit_recovers_the_distortion_and_lowers_the_ece():
    p, y = _simulated(temperature=2.0, bias=-1.0)
    temperature, bias = calibration.fit_platt(p, y)
    assert temperature == pytest.approx(2.0, rel=0.05) and bias == pytest.approx(-1.0, abs=0.1)
    before = calibration.expected_calibration_error(p, y)
    after = calibration.expected_calibration_error(calibration.apply_temperature_np(p, temperature, bias), y)
    assert after < 0.2 * before


def test_temperature_fit_recovers_a_pure_temperature():
    p, y = _simulated(temperature=0.5, bias=0.0)
    assert calibration.fit_temperature(p, y) == pytest.approx(0.5, rel=0.05)


def test_tf_and_numpy_maps_agree_and_identity_is_no_op():
    p = np.array([1e-9, 0.01, 0.3, 0.5, 0.97, 0.999], np.float32)
    np.testing.assert_allclose(calibration.apply_temperature(tf.constant(p), 1.7, -0.4).numpy(),
                               calibration.apply_temperature_np(p, 1.7, -0.4), rtol=1e-5, atol=1e-6)
    tensor = tf.constant(p)
    assert calibration.apply_temperature(tensor, 1.0, 0.0) is tensor


def test_reliability_png_is_an_image():
    p, y = _simulated(2.0, -1.0, n=5000)
    png = calibration.reliability_png(calibration.reliability_bins(p, y),
                                      calibration.reliability_bins(calibration.apply_temperature_np(p, 2.0, -1.0), y))
    image = Image.open(io.BytesIO(png))
    assert image.format == "PNG" and image.size == (440, 440)


def test_calibration_file_is_read_and_checked(tmp_path):
    assert calibration.read_calibration(str(tmp_path)) is None
    (tmp_path / calibration.CALIBRATION_FILE).write_text('{"calibration": {"temperature": 1.2, "bias": -0.3}}')
    assert calibration.read_calibration(str(tmp_path)) == calibration.Calibration(1.2, -0.3)
    (tmp_path / calibration.CALIBRATION_FILE).write_text('{"calibration": {"temperature": -1}}')
    with pytest.raises(ValueError, match="calibration.json: unreadable calibration .*temperature must be positive"):
        calibration.read_calibration(str(tmp_path))
    (tmp_path / calibration.CALIBRATION_FILE).write_text('{"calibration": {"knots_p": [0, 1], "knots_q": [1, 0]}}')
    with pytest.raises(ValueError, match="q non-decreasing"):
        calibration.read_calibration(str(tmp_path))


def test_isotonic_fit_is_monotone_lowers_the_ece_and_runs_the_same_in_tf():
    p, y = _simulated(temperature=2.0, bias=-1.0)
    fitted = calibration.fit_isotonic(p, y)
    assert fitted.method == "isotonic" and np.all(np.diff(fitted.knots_q) >= 0)
    after = calibration.expected_calibration_error(fitted.apply_np(p), y)
    assert after < 0.2 * calibration.expected_calibration_error(p, y)
    sample = np.array([0.0, 1e-6, 0.02, 0.3, 0.77, 0.999, 1.0], np.float32)
    np.testing.assert_allclose(fitted.apply(tf.constant(sample.reshape(1, 7))).numpy()[0], fitted.apply_np(sample),
                               rtol=1e-5, atol=1e-6)
