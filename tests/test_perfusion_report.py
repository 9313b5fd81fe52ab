"""Tests for strokenet_tf.perfusion_report: volumes against numpy, the criteria at their thresholds, bad units."""

import math

import numpy as np
import pytest
import tensorflow as tf

from strokenet_tf import perfusion_report
from strokenet_tf.data import isles, preprocess

SPACING = (5.0, 1.0, 1.0)  # 5 uL voxels


def _report(image, core, channels=isles.DEFAULT_CHANNELS, spacing=SPACING):
    outputs = perfusion_report.graph_report(tf.constant(image[np.newaxis]), channels, tf.constant(core[np.newaxis]),
                                            tf.constant([spacing], tf.float32))
    return {key: np.asarray(value) for key, value in outputs.items()}


def test_volumes_equal_numpy_on_a_case(make_case):
    case = make_case(4, 32, 32)
    core = case.label.copy()
    outputs = _report(case.image, core)
    brain = np.asarray(preprocess.brain_mask(case.image, case.channels))
    tmax = case.image[..., case.channels.index(isles.TMAX)]
    reference = perfusion_report.reference_volumes_ml(tmax, brain, core > 0, SPACING)
    for key in ("core_volume_ml", "hypoperfusion_volume_ml", "mismatch_volume_ml", "mismatch_ratio"):
        assert outputs[key][0] == pytest.approx(reference[key], rel=1e-5)
    severe = np.count_nonzero(brain & (tmax > 10.0)) * 0.005
    assert outputs["hypoperfusion_intensity_ratio"][0] == pytest.approx(severe / reference["hypoperfusion_volume_ml"])
    assert outputs["perfusion_status"][0] == perfusion_report.STATUS_OK
    np.testing.assert_array_equal(outputs[perfusion_report.HYPOPERFUSION_MASK_KEY][0], brain & (tmax > 6.0))


def _slab(hypo_voxels: int, core_voxels: int, tmax_s: float = 8.0):
    """1 x 100 x 100 slab of 1 mL voxels (spacing 10 mm): `hypo_voxels` with Tmax `tmax_s`, the first
    `core_voxels` of them core."""
    image = np.zeros((1, 100, 100, 5), np.float32)
    image[..., 1:] = 1.0  # brain everywhere
    image[..., 4] = 2.0
    tmax = image[0, :, :, 4].reshape(-1)
    tmax[:hypo_voxels] = tmax_s
    image[0, :, :, 4] = tmax.reshape(100, 100)
    core = np.zeros((1, 100, 100), np.uint8)
    core.reshape(-1)[:core_voxels] = 1
    return image, core


@pytest.mark.parametrize("hypo, core, defuse3, extend_ia", [
    (36, 20, 1, 1),    # ratio 1.8, mismatch 16: both met (DEFUSE-3's >= at the ratio)
    (35, 20, 0, 1),    # ratio 1.75 < 1.8
    (30, 20, 0, 0),    # mismatch 10 is not > 10
    (31, 20, 0, 1),    # ratio 1.55, mismatch 11
    (200, 70, 0, 0),   # core 70 is not < 70
    (50, 0, 1, 1),     # no core: ratio inf
])
def test_criteria_at_their_thresholds(hypo, core, defuse3, extend_ia):
    image, mask = _slab(hypo, core)
    outputs = _report(image, mask, spacing=(10.0, 10.0, 10.0))
    assert outputs["core_volume_ml"][0] == pytest.approx(core)
    assert outputs["hypoperfusion_volume_ml"][0] == pytest.approx(hypo)
    assert (outputs["defuse3"][0], outputs["extend_ia"][0]) == (defuse3, extend_ia)
    report = perfusion_report.describe(outputs)
    assert report["defuse3"]["met"] is bool(defuse3) and report["defuse3"]["thresholds"]["ratio_ge"] == 1.8
    if core == 0:
        assert report["mismatch_ratio"] == "inf"


@pytest.mark.parametrize("scale", [1000.0, 0.01])  # milliseconds, or a map normalised to [0, 1]
def test_tmax_not_in_seconds_gives_a_warning_and_no_numbers(scale):
    image, mask = _slab(40, 10, tmax_s=12.0)
    image[..., 4] *= scale
    outputs = _report(image, mask, spacing=(10.0, 10.0, 10.0))
    report = perfusion_report.describe(outputs)
    assert outputs["perfusion_status"][0] == perfusion_report.STATUS_IMPLAUSIBLE_TMAX
    assert "does not look like seconds" in report["status"]
    assert report["core_volume_ml"] == pytest.approx(10.0) and report["hypoperfusion_volume_ml"] is None
    assert report["defuse3"]["met"] is None and report["extend_ia"]["met"] is None
    assert not outputs[perfusion_report.HYPOPERFUSION_MASK_KEY].any()


def test_without_tmax_only_the_core_is_reported(make_case):
    channels = (isles.CT, isles.CBF, isles.CBV, isles.MTT)
    case = make_case(2, 16, 16, channels=channels)
    outputs = _report(case.image, case.label, channels=channels)
    report = perfusion_report.describe(outputs)
    assert report["status"].startswith("no Tmax map") and report["core_volume_ml"] > 0
    assert report["hypoperfusion_volume_ml"] is None and report["defuse3"]["met"] is None
    assert "not a medical device" in report["disclaimer"]


def test_csv_row_leaves_unknowns_empty():
    image, mask = _slab(40, 10)
    report = perfusion_report.describe(_report(image, mask, spacing=(10.0, 10.0, 10.0)))
    row = perfusion_report.csv_row("case_1", report, {"core_volume_interval_ml": [9.0, 11.0],
                                                      "members_disagree": False})
    assert len(row) == len(perfusion_report.CSV_COLUMNS)
    assert row[:5] == ["case_1", "10.000", "9.000", "11.000", "0"] and row[9:11] == ["1", "1"]
    assert math.isclose(float(row[5]), 40.0)
