"""Tests for strokenet_tf.data.difficulty and baselines.rapid_core."""

from __future__ import annotations

import numpy as np

from strokenet_tf import baselines
from strokenet_tf.data import difficulty, synthesis


def test_rapid_core_on_hand_made_maps():
    cbf = np.full((1, 2, 4), 50.0, np.float32)
    tmax = np.full((1, 2, 4), 1.0, np.float32)
    cbf[0, 0, :2], tmax[0, 0, :3] = 10.0, 9.0  # two voxels of low flow, three late ones
    brain = np.ones(cbf.shape, bool)
    brain[0, 1, 3] = False
    expected = np.zeros(cbf.shape, np.uint8)
    expected[0, 0, :2] = 1  # 10 < 0.3 x 50 and Tmax 9 > 6
    np.testing.assert_array_equal(baselines.rapid_core(cbf, tmax, brain), expected)
    cbf_vendor = cbf * 123.0  # any vendor scale: relative to the case's own normal tissue
    np.testing.assert_array_equal(baselines.rapid_core(cbf_vendor, tmax, brain), expected)
    assert baselines.rapid_core(cbf, np.full(cbf.shape, 9.0), brain).sum() == 0  # no normal tissue


def test_report_on_a_small_generated_set(tmp_path):
    synthesis.write_dataset(tmp_path, 6, seed=2, size=48, depths=(4, 8), with_pwi=False, centres=("centre_1", "centre_3"))
    report = difficulty.difficulty_report(str(tmp_path), num_folds=3)
    assert report["num_cases"] == 6 and set(report["per_case"]) == {f"case_{k}" for k in range(1, 7)}
    assert sum(report["depth_mix"].values()) == 6 and set(report["depth_mix"]) <= {4, 8}
    assert set(report["by_centre"]) <= {"centre_1", "centre_3"}
    for key in ("rapid_dice", "threshold_dice"):
        assert 0.0 <= report[key]["mean"] <= 1.0 and report[key]["n"] == 6
    assert all(0.0 <= case["threshold_dice"] <= 1.0 for case in report["per_case"].values())
    assert report["lesion_ml"]["min"] > 0
    text = difficulty.format_report(report)
    assert "RAPID-like rule" in text and "15.2" in text and "centre_1" in text


def test_held_out_scoring_of_the_fitted_and_rapid_rules(tmp_path):
    from strokenet_tf.data import isles

    synthesis.write_dataset(tmp_path, 2, seed=6, size=32, depths=(2,), with_pwi=False)
    cases = isles.load_cases(tmp_path, split="TRAINING", require_label=True)
    rule = baselines.ThresholdRule(isles.TMAX, "above", 0.5, 0.0)
    scores = baselines.score_held_out(rule, cases, cases[0].channels)
    assert scores["rule_dice"]["n"] == 2 and scores["rapid_dice"]["n"] == 2
    from strokenet_tf import metrics
    from strokenet_tf.data import preprocess

    expected = np.mean([metrics.dice(rule.apply(preprocess.prepare_case(c).image, c.channels), c.label) for c in cases])
    assert scores["rule_dice"]["mean"] == expected
