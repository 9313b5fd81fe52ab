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


@pytest.mark.parametrize("delay_s, dispersion_s, mtt_s", [(0.0, 0.0, 4.0), (2.5, 0.0, 4.0), (0.0, 2.0, 4.0),
                                                     (3.3, 1.2, 4.0), (4.4, 4.3, 40.0), (0.7, 3.0, 3.0)])
def test_matches_direct_convolution(delay_s, dispersion_s, mtt_s):
    aif = _aif()
    curve = tracer.tissue_curves(aif, 1.0, 50.0, mtt_s, delay_s, dispersion_s)[0]
    reference = _brute_force(aif, 50.0, mtt_s, delay_s, dispersion_s)
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


# ---------------------------------------------------------------------------------------------------------
# Deconvolution: tiny volumes built with the forward model, a known AIF in a few 'artery' voxels and a VOF.

import tensorflow as tf  # noqa: E402

from strokenet_tf.perfusion import arterial, deconvolution, masking  # noqa: E402

SHAPE = (2, 16, 16)
ARTERIES = [(0, 4, 5), (0, 4, 6), (1, 4, 5), (1, 4, 6), (0, 11, 10), (1, 11, 10)]
VEINS = [(0, 8, 13), (1, 8, 13), (0, 9, 13), (1, 9, 13)]


def _phantom(delay_s=None, dispersion_s=1.0, noise_hu=0.0, artery_fraction=1.0, seed=0, mtt_range=(2.0, 8.0)):
    """Series [2, 16, 16, 45] in HU (tissue 35 HU, air -1000 HU in the corners) and the true parameters."""
    rng = np.random.default_rng(seed)
    d, h, w = np.meshgrid(*[np.arange(n) for n in SHAPE], indexing="ij")
    brain = ((h - 7.5) / 7.9) ** 2 + ((w - 7.5) / 7.9) ** 2 < 1.0
    count = brain.sum()
    truth = {
        "cbf": rng.uniform(15.0, 70.0, count), "mtt": rng.uniform(*mtt_range, count),
        "delay": rng.uniform(0.0, 3.0, count) if delay_s is None else np.full(count, float(delay_s)),
        "dispersion": np.full(count, float(dispersion_s)),
    }
    aif = _aif()
    series = np.full(SHAPE + (FRAMES,), -1000.0, np.float32)
    series[brain] = 35.0 + tracer.tissue_curves(
        aif, 1.0, truth["cbf"], truth["mtt"], truth["delay"], truth["dispersion"])
    tissue = brain.copy()
    for voxel in ARTERIES:
        series[voxel] = 35.0 + artery_fraction * aif
        tissue[voxel] = False
    for voxel in VEINS:
        series[voxel] = 35.0 + tracer.transport(aif, 1.0, 4.0, 2.5)[0]
        tissue[voxel] = False
    series[brain] += noise_hu * rng.standard_normal((count, FRAMES)).astype(np.float32)
    maps = {name: np.zeros(SHAPE) for name in ("cbf", "cbv", "mtt", "tmax", "apparent_cbf")}
    maps["cbf"][brain], maps["mtt"][brain] = truth["cbf"], truth["mtt"]
    maps["cbv"][brain] = truth["cbf"] * truth["mtt"] / 60.0
    maps["tmax"][brain] = tracer.true_tmax_s(truth["mtt"], truth["delay"], truth["dispersion"])
    maps["apparent_cbf"][brain] = truth["cbf"] * tracer.apparent_cbf_fraction(truth["mtt"], truth["dispersion"])
    return series, maps, tissue


def _maps(series, **kwargs):
    kwargs.setdefault("smoothing_sigma_voxels", 0.0)
    return {k: v.numpy() for k, v in deconvolution.perfusion_maps(tf.constant(series), 1.0, **kwargs).items()}


def test_recovers_maps_without_noise():
    series, truth, tissue = _phantom()
    maps = _maps(series)
    assert maps["aif_found"] and maps["vof_found"]
    assert maps["aif_voxels"] == len(ARTERIES) and maps["vof_voxels"] == len(VEINS)
    assert all(maps["aif_mask"][v] for v in ARTERIES) and all(maps["vof_mask"][v] for v in VEINS)
    np.testing.assert_allclose(maps["aif"], _aif(), rtol=1e-4, atol=1e-3)
    # The 3x3-smoothed mask loses the rim next to air.
    assert maps["brain_mask"][tissue].mean() > 0.6
    tissue &= maps["brain_mask"]
    cbf_ratio = maps["cbf"][tissue] / truth["apparent_cbf"][tissue]
    assert abs(np.median(cbf_ratio) - 1) < 0.06 and np.percentile(np.abs(cbf_ratio - 1), 90) < 0.12
    cbv_ratio = maps["cbv"][tissue] / truth["cbv"][tissue]
    assert abs(np.median(cbv_ratio) - 1) < 0.02 and np.max(np.abs(cbv_ratio - 1)) < 0.05
    apparent_mtt = truth["cbv"][tissue] * 60 / truth["apparent_cbf"][tissue]
    mtt_ratio = maps["mtt"][tissue] / apparent_mtt
    assert abs(np.median(mtt_ratio) - 1) < 0.07 and np.percentile(np.abs(mtt_ratio - 1), 90) < 0.15
    tmax_error = maps["tmax"][tissue] - truth["tmax"][tissue]
    assert abs(np.median(tmax_error)) < 0.6 and np.percentile(np.abs(tmax_error), 90) < 1.0
    assert np.corrcoef(maps["cbf"][tissue], truth["cbf"][tissue])[0, 1] > 0.95
    outside = ~maps["brain_mask"]
    assert outside[0, 0, 0] and all(np.all(maps[name][outside] == 0) for name in ("cbf", "cbv", "mtt", "tmax"))


def test_delay_insensitive_and_tmax_follows_delay():
    early, _, tissue = _phantom(delay_s=0.0)
    late, _, _ = _phantom(delay_s=6.0)
    early_maps, late_maps = _maps(early), _maps(late)
    tissue &= early_maps["brain_mask"]
    ratio = late_maps["cbf"][tissue] / early_maps["cbf"][tissue]
    assert abs(np.median(ratio) - 1) < 0.1 and np.percentile(np.abs(ratio - 1), 90) < 0.15
    shift = late_maps["tmax"][tissue] - early_maps["tmax"][tissue]
    assert abs(np.median(shift) - 6.0) < 0.3 and np.percentile(np.abs(shift - 6.0), 90) < 1.0


def test_partial_volume_arteries_are_rescaled_by_the_vof():
    series, truth, tissue = _phantom(artery_fraction=0.5)
    maps = _maps(series)
    tissue &= maps["brain_mask"]
    assert maps["aif_scale"] == pytest.approx(2.0, rel=0.02)
    # The veins are brighter than these arteries but later: the baseline still ends before the arterial bolus.
    assert maps["baseline_frames"] <= 5 and _aif()[maps["baseline_frames"]] < 1.0
    cbv_ratio = maps["cbv"][tissue] / truth["cbv"][tissue]
    assert abs(np.median(cbv_ratio) - 1) < 0.03


def test_noise_makes_the_oscillation_index_regularise_more():
    clean, _, tissue = _phantom()
    noisy, _, _ = _phantom(noise_hu=4.0)
    clean_maps, noisy_maps = _maps(clean), _maps(noisy)
    tissue &= clean_maps["brain_mask"]
    fixed = _maps(noisy, thresholds=(min(deconvolution.THRESHOLDS),))
    assert np.median(noisy_maps["threshold"][tissue]) > np.median(clean_maps["threshold"][tissue])
    assert np.median(noisy_maps["oscillation_index"][tissue]) < np.median(fixed["oscillation_index"][tissue])
    passed = noisy_maps["threshold"][tissue] < max(deconvolution.THRESHOLDS)
    assert np.all(noisy_maps["oscillation_index"][tissue][passed] < deconvolution.OI_LIMIT)
    assert noisy_maps["aif_found"]


def test_tikhonov_option():
    series, truth, tissue = _phantom()
    maps = _maps(series, method="tikhonov")
    tissue &= maps["brain_mask"]
    ratio = maps["cbf"][tissue] / truth["apparent_cbf"][tissue]
    assert abs(np.median(ratio) - 1) < 0.06
    with pytest.raises(ValueError, match="method"):
        deconvolution.deconvolve(tf.zeros((2, 45)), tf.zeros(45), method="wiener")


def test_no_arterial_input_is_reported():
    rng = np.random.default_rng(1)
    series = np.full(SHAPE + (FRAMES,), 35.0, np.float32) + rng.normal(0, 3.0, SHAPE + (FRAMES,)).astype(np.float32)
    maps = _maps(series)
    assert not maps["aif_found"] and not maps["vof_found"]
    assert all(np.all(maps[name] == 0) for name in ("cbf", "cbv", "mtt", "tmax"))
    flat = _maps(np.full(SHAPE + (FRAMES,), 35.0, np.float32))
    assert not flat["aif_found"] and flat["aif_voxels"] == 0
    for empty in (np.full((1, 8, 8, 25), -1000.0, np.float32), np.full((2, 8, 8, 20), 1500.0, np.float32)):
        maps = _maps(empty)  # no brain at all: nothing found, nothing fails
        assert not maps["aif_found"] and not maps["brain_mask"].any() and np.all(maps["cbf"] == 0)


def test_runs_in_a_tf_function_with_unknown_shapes():
    spec = [tf.TensorSpec([None, None, None, None], tf.float32), tf.TensorSpec([], tf.float32)]
    mapper = tf.function(lambda s, dt: deconvolution.perfusion_maps(s, dt), input_signature=spec)
    series, _, _ = _phantom(noise_hu=2.0)
    for cut in (series, series[:1, :, :, :40]):
        graph = mapper(tf.constant(cut), tf.constant(1.0))
        eager = deconvolution.perfusion_maps(tf.constant(cut), 1.0)
        assert graph["cbf"].shape == cut.shape[:3] and graph["aif"].shape == (cut.shape[3],)
        for name in ("cbf", "cbv", "mtt", "tmax"):
            np.testing.assert_allclose(graph[name].numpy(), eager[name].numpy(), rtol=1e-4, atol=1e-3)


def test_given_brain_mask_and_smoothing():
    series, truth, tissue = _phantom(noise_hu=3.0)
    mask = np.zeros(SHAPE, bool)
    mask[:, 2:14, 2:14] = True
    maps = _maps(series, brain_mask=tf.constant(mask), smoothing_sigma_voxels=1.0)
    np.testing.assert_array_equal(maps["brain_mask"], mask)
    assert np.all(maps["cbf"][~mask] == 0) and maps["aif_found"]
    smoothed = masking.gaussian_in_plane(tf.constant(series[..., :3] * 0 + 7.0), tf.constant(mask), 1.0).numpy()
    np.testing.assert_allclose(smoothed[mask], 7.0, rtol=1e-5)


def test_tissue_mask_excludes_bone_csf_and_scalp():
    image = np.full((1, 32, 32), -1000.0, np.float32)
    h, w = np.meshgrid(np.arange(32), np.arange(32), indexing="ij")
    radius = np.hypot(h - 15.5, w - 15.5)
    image[0][radius < 15] = 45.0  # scalp
    image[0][radius < 13] = 1200.0  # skull
    image[0][radius < 11] = 35.0  # brain
    image[0][radius < 3] = 5.0  # ventricle (CSF)
    mask = masking.tissue_mask(tf.constant(image)).numpy()[0]
    assert mask[15, 8] and not mask[15, 15] and not mask[15, 1] and not mask[15, 2] and not mask[15, 18 + 8]


def test_baseline_frames_follow_the_bolus():
    curve = np.concatenate([np.zeros(8), np.linspace(0, 40, 10), np.full(27, 20.0)]).astype(np.float32) + 30
    assert int(masking.baseline_frames(tf.constant(curve))) == 8  # arrival at frame 9
    assert int(masking.baseline_frames(tf.constant(curve[6:]))) == constants.MIN_BASELINE_FRAMES


@pytest.mark.parametrize("frame_interval_s", [0.5, 2.0])
def test_other_frame_intervals(frame_interval_s):
    rng = np.random.default_rng(2)
    frames = int(60 / frame_interval_s)
    aif = tracer.gamma_variate(np.arange(frames) * frame_interval_s, 6.0, 350.0, 3.0, 1.5)
    cbf, mtt, delay = rng.uniform(20, 70, 400), rng.uniform(3, 8, 400), rng.uniform(0, 3, 400)
    series = np.full((1, 20, 20, frames), 35.0, np.float32)
    series.reshape(400, frames)[:] += tracer.tissue_curves(aif, frame_interval_s, cbf, mtt, delay, 1.0)
    series[0, 2, 3:5] = 35.0 + aif  # two arteries, fewer than the tissue voxels that arrive late
    maps = {k: v.numpy() for k, v in deconvolution.perfusion_maps(
        tf.constant(series), frame_interval_s, smoothing_sigma_voxels=0.0).items()}
    assert maps["aif_found"] and maps["aif_voxels"] == 2
    tissue = maps["brain_mask"].reshape(-1).copy()
    tissue[[43, 44]] = False
    cbf_ratio = maps["cbf"].reshape(-1)[tissue] / (cbf * tracer.apparent_cbf_fraction(mtt, 1.0))[tissue]
    assert abs(np.median(cbf_ratio) - 1) < 0.1
    cbv_ratio = maps["cbv"].reshape(-1)[tissue] / (cbf * mtt / 60)[tissue]
    assert abs(np.median(cbv_ratio) - 1) < 0.02
    tmax_error = maps["tmax"].reshape(-1)[tissue] - tracer.true_tmax_s(mtt, delay, 1.0)[tissue]
    assert abs(np.median(tmax_error)) < frame_interval_s


def test_tmax_bias_correction():
    series, truth, tissue = _phantom(dispersion_s=0.8)
    raw = _maps(series, thresholds=(0.2,))
    corrected = _maps(series, thresholds=(0.2,), tmax_bias_correction=True)
    tissue &= raw["brain_mask"]
    raw_error = np.median(raw["tmax"][tissue] - truth["tmax"][tissue])
    corrected_error = np.median(corrected["tmax"][tissue] - truth["tmax"][tissue])
    assert raw_error > 1.0 and abs(corrected_error) < 0.4
    np.testing.assert_array_equal(raw["cbf"], corrected["cbf"])
