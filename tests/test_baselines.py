"""Tests for strokenet_tf.baselines: the single-map threshold rule the network must beat."""

import dataclasses

import numpy as np
import pytest

from strokenet_tf import baselines, metrics
from strokenet_tf.data import isles, preprocess


@pytest.fixture
def prepared(make_case):
    rng = np.random.default_rng(5)
    return [preprocess.prepare_case(make_case(4, 24, 24, rng=rng, case_id=f"case_{k}")) for k in range(4)]


def test_dice_curves_equal_masks_scored_one_by_one(prepared):
    channels = isles.DEFAULT_CHANNELS
    index = channels.index(isles.CBF)
    thresholds = np.array([-0.2, 0.05, 0.1, 0.3, 0.7, 1.2])
    below, above = baselines._dice_curves([baselines.sorted_values(c) for c in prepared], index, thresholds)
    for k, threshold in enumerate(thresholds):
        for direction, curve in (("below", below), ("above", above)):
            rule = baselines.ThresholdRule(isles.CBF, direction, float(threshold), 0.0)
            expected = np.mean([metrics.dice(rule.apply(c.image, channels), c.label) for c in prepared])
            assert curve[k] == pytest.approx(expected, abs=1e-12), (direction, threshold)


def test_fitted_rule_finds_the_map_that_separates_the_lesion(prepared):
    # In the hand-made cases the lesion has low CBF/CBV and high MTT/Tmax, with little noise.
    rule = baselines.fit_threshold_rule(prepared, isles.DEFAULT_CHANNELS)
    assert rule.channel in isles.PERFUSION_MAPS and rule.channel != isles.CT
    assert rule.direction == ("below" if rule.channel in (isles.CBF, isles.CBV) else "above")
    assert rule.train_dice > 0.9
    # The cases' sorted values made once and handed in (as the folds of data.difficulty do): the same rule.
    values = [baselines.sorted_values(c) for c in prepared]
    assert baselines.fit_threshold_rule(prepared, isles.DEFAULT_CHANNELS, values) == rule
    result = baselines.evaluate_threshold_baseline(prepared[:3], prepared[3:], isles.DEFAULT_CHANNELS)
    mask = baselines.ThresholdRule(result["channel"], result["direction"], result["threshold"], 0.0).apply(
        prepared[3].image, isles.DEFAULT_CHANNELS)
    assert result["val_dice"] == pytest.approx(metrics.dice(mask, prepared[3].label))
    assert list(result["val_dice_per_case"]) == ["case_3"]


def test_unlabelled_cases_are_refused(prepared):
    with pytest.raises(ValueError, match="labelled"):
        baselines.fit_threshold_rule([dataclasses.replace(prepared[0], label=None)], isles.DEFAULT_CHANNELS)
