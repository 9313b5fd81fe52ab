"""Tests for strokenet_tf.perfusion: the tracer forward model and the deconvolution that inverts it."""

import numpy as np
import pytest

from strokenet_tf.perfusion import constants, tracer

FRAMES = 45
TIMES_S = np.arange(FRAMES, dtype=np.float64)


def _aif(arrival_s=4.0, peak=300.0):
    return tracer.gamma_variate(TIMES_S, arrival_s, peak, 3.0, 1.5)


def _brute_force(aif, cbf, mtt_s, delay_s=0.0, dispersion_s=0.0, dt=0.005):
    """Direct time-domain convolution on a 5 ms grid (reference for tissue_curves)."""
    fine_t = np.arange(0.0, TIMES_S[-1] + dt / 2, dt)
    fine = np.interp(fine_t - delay_s, TIMES_S, aif, left=0.0)
    if dispersion_s > 0:
        fine = np.convolve(fine, np.exp(-fine_t / dispersion_s) / dispersion_s)[: fine_t.size] * dt
    curve = np.convolve(fine, np.exp(-fine_t / mtt_s))[: fine_t.size] * dt
    curve *= constants.RHO_G_PER_ML / constants.K_H * cbf / 6000.0
    return np.interp(TIMES_S, fine_t, curve)


def test_gamma_variate_peaks_at_its_mode():
    curve = tracer.gamma_variate(np.linspace(0, 30, 3001), 5.0, 250.0, 3.0, 1.5)
    assert curve.max() == pytest.approx(250.0, rel=1e-6)
    assert np.linspace(0, 30, 3001)[curve.argmax()] == pytest.approx(5.0 + 4.5, abs=0.01)
    assert np.all(curve[np.linspace(0, 30, 3001) <= 5.0] == 0)


@pytest.mark.parametrize("cbf, mtt_s", [(60.0, 4.0), (20.0, 6.0), (80.0, 2.0), (10.0, 1.0)])
def test_area_ratio_is_cbv(cbf, mtt_s):
    aif = _aif()
    curve = tracer.tissue_curves(aif, 1.0, cbf, mtt_s)[0]
    cbv = cbf * mtt_s / 60.0
    expected = constants.RHO_G_PER_ML / constants.K_H * cbv / 100.0
    assert np.trapezoid(curve) / np.trapezoid(aif) == pytest.approx(expected, rel=0.01)


@pytest.mark.parametrize("delay_s, dispersion_s", [(0.0, 0.0), (2.5, 0.0), (0.0, 2.0), (3.3, 1.2)])
def test_matches_direct_convolution(delay_s, dispersion_s):
    aif = _aif()
    curve = tracer.tissue_curves(aif, 1.0, 50.0, 4.0, delay_s, dispersion_s)[0]
    reference = _brute_force(aif, 50.0, 4.0, delay_s, dispersion_s)
    assert np.max(np.abs(curve - reference)) < 0.01 * reference.max()


def test_delay_shifts_the_curve():
    aif = _aif()
    curves = tracer.tissue_curves(aif, 1.0, 50.0, 3.0, [0.0, 6.0], 0.0)
    assert curves[1].argmax() - curves[0].argmax() == 6
    np.testing.assert_allclose(curves[1][6:30], curves[0][:24], rtol=1e-4, atol=1e-4)
    assert np.all(curves[1][:10] <= 1e-6)


def test_dispersion_lowers_and_broadens_keeping_the_area():
    aif = _aif()
    plain, dispersed = tracer.tissue_curves(aif, 1.0, 50.0, 3.0, 0.0, [0.0, 3.0])
    assert dispersed.max() < 0.85 * plain.max()
    width = lambda c: np.sum(c > c.max() / 2)  # noqa: E731
    assert width(dispersed) > width(plain)
    assert np.trapezoid(dispersed) == pytest.approx(np.trapezoid(plain), rel=0.01)


def test_many_voxels_and_frame_interval():
    rng = np.random.default_rng(0)
    count = 20000
    cbf, mtt = rng.uniform(5, 90, count), rng.uniform(1, 12, count)
    aif_2s = tracer.gamma_variate(np.arange(30) * 2.0, 6.0, 300.0, 3.0, 1.5)
    curves = tracer.tissue_curves(aif_2s, 2.0, cbf, mtt, rng.uniform(0, 4, count), rng.uniform(0, 2, count))
    assert curves.shape == (count, 30) and curves.dtype == np.float32
    ratio = np.trapezoid(curves, dx=2.0, axis=1) / np.trapezoid(aif_2s, dx=2.0)
    expected = constants.RHO_G_PER_ML / constants.K_H * cbf * mtt / 6000.0
    short = mtt < 6
    np.testing.assert_allclose(ratio[short], expected[short], rtol=0.02)


def test_true_tmax():
    np.testing.assert_allclose(tracer.true_tmax_s(4.0, [0.0, 6.0], 0.0), [0.0, 6.0])
    beta, mtt = 2.0, 4.0
    t = np.linspace(0, 20, 200001)
    effective = np.exp(-t / mtt) - np.exp(-t / beta)
    assert tracer.true_tmax_s(mtt, 1.5, beta) == pytest.approx(1.5 + t[effective.argmax()], abs=1e-3)
    assert tracer.true_tmax_s(3.0, 0.0, 3.0) == pytest.approx(3.0)
    assert tracer.true_tmax_s(np.full((2, 3), 4.0), 1.0, 1.0).shape == (2, 3)


def test_tracer_rejects_bad_input():
    with pytest.raises(ValueError, match="aif"):
        tracer.tissue_curves(np.zeros((2, 3)), 1.0, 50.0, 4.0)
    with pytest.raises(ValueError, match="mtt_s"):
        tracer.tissue_curves(_aif(), 1.0, 50.0, -1.0)
    with pytest.raises(ValueError, match="hold 3 values"):
        tracer.tissue_curves(_aif(), 1.0, [1.0, 2.0], [1.0, 2.0, 3.0])
