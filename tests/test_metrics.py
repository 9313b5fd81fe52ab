"""Tests for strokenet_tf.metrics: hand-computed values, the empty-mask table, lesion counts, MedPy agreement."""

import math

import numpy as np
import pytest
from scipy import ndimage
from scipy.spatial.distance import cdist

from strokenet_tf import metrics

SPACING = (5.0, 0.9, 0.9)


def _box(shape, *slices):
    mask = np.zeros(shape, bool)
    mask[slices] = True
    return mask


def _two_boxes():
    """pred: 4x4x4 = 64 voxels; truth: 4x4x2 = 32 voxels; overlap 2x4x2 = 16 voxels."""
    pred = _box((8, 8, 8), slice(0, 4), slice(0, 4), slice(0, 4))
    truth = _box((8, 8, 8), slice(2, 6), slice(0, 4), slice(0, 2))
    return pred, truth


def _blobs(rng, shape, fraction, sigma=(0.6, 3.0, 3.0)):
    field = ndimage.gaussian_filter(rng.standard_normal(shape), sigma)
    return field > np.quantile(field, 1.0 - fraction)


def _brute_force_hausdorff(pred, truth, spacing):
    """Independent reference: pairwise distances between surface voxel centres in mm."""
    def surface_points(mask):
        surface = mask & ~ndimage.binary_erosion(mask, ndimage.generate_binary_structure(3, 1))
        return np.argwhere(surface) * np.asarray(spacing)
    distances = cdist(surface_points(pred), surface_points(truth))
    pooled = np.concatenate((distances.min(axis=1), distances.min(axis=0)))
    return float(np.percentile(pooled, 95)), float(pooled.max())


# --- hand-computed values -------------------------------------------------------------------------------------

def test_overlap_scores_of_two_boxes():
    pred, truth = _two_boxes()
    assert metrics.dice(pred, truth) == pytest.approx(2 * 16 / (64 + 32))
    assert metrics.precision(pred, truth) == pytest.approx(16 / 64)
    assert metrics.recall(pred, truth) == pytest.approx(16 / 32)
    assert metrics.dice(pred.astype(np.uint8), truth.astype(np.float32)) == pytest.approx(1 / 3)


def test_volumes_and_avd_in_ml_with_anisotropic_spacing():
    pred, truth = _two_boxes()
    assert metrics.volume_ml(pred, (5.0, 1.0, 1.0)) == pytest.approx(64 * 5.0 / 1000)
    assert metrics.volume_ml(truth, (5.0, 1.0, 1.0)) == pytest.approx(0.16)
    assert metrics.absolute_volume_difference_ml(pred, truth, (5.0, 1.0, 1.0)) == pytest.approx(0.16)
    assert metrics.absolute_volume_difference_ml(truth, pred, SPACING) == pytest.approx(32 * 4.05 / 1000)


@pytest.mark.parametrize("axis, offset", [(0, 1), (0, 3), (1, 2), (2, 5)])
def test_hausdorff_of_single_voxels_offset_along_one_axis(axis, offset):
    spacing = (5.0, 0.9, 0.7)
    center = [2, 6, 6]
    pred = np.zeros((6, 14, 14), bool)
    pred[tuple(center)] = True
    center[axis] += offset
    truth = np.zeros_like(pred)
    truth[tuple(center)] = True
    expected = offset * spacing[axis]
    assert metrics.hausdorff_max_mm(pred, truth, spacing) == pytest.approx(expected)
    assert metrics.hausdorff_95_mm(pred, truth, spacing) == pytest.approx(expected)


def test_hausdorff_of_single_voxels_offset_diagonally():
    pred = _box((6, 10, 10), 1, 2, 3)
    truth = _box((6, 10, 10), 3, 5, 3)
    assert metrics.hausdorff_max_mm(pred, truth, (5.0, 1.0, 1.0)) == pytest.approx(math.sqrt(10 ** 2 + 3 ** 2))


def test_hd95_interpolates_the_pooled_distances_like_medpy():
    # d_pred->truth = [0]; d_truth->pred = [0, 20 mm]; pooled [0, 0, 20]: 95th percentile = 0.9 * 20 = 18.
    pred = _box((2, 3, 12), 0, 0, 0)
    truth = pred.copy()
    truth[0, 0, 10] = True
    assert metrics.hausdorff_max_mm(pred, truth, (5.0, 1.0, 2.0)) == pytest.approx(20.0)
    assert metrics.hausdorff_95_mm(pred, truth, (5.0, 1.0, 2.0)) == pytest.approx(18.0)


def test_surface_is_mask_minus_its_6_connected_erosion():
    cube = _box((5, 5, 5), slice(1, 4), slice(1, 4), slice(1, 4))
    to_truth, to_pred = metrics.surface_distances_mm(cube, cube, SPACING)
    assert to_truth.shape == (26,) and to_pred.shape == (26,)  # the centre voxel is interior
    np.testing.assert_array_equal(to_truth, 0.0)
    full = np.ones((3, 5, 5), bool)  # voxels on the array edge are surface (75 - 9 interior), as in MedPy
    assert metrics.surface_distances_mm(full, full, SPACING)[0].shape == (66,)
    with pytest.raises(ValueError, match="non-empty"):
        metrics.surface_distances_mm(full, np.zeros_like(full), SPACING)


def test_axis_order_only_needs_spacing_to_match():
    rng = np.random.default_rng(3)
    pred, truth = _blobs(rng, (6, 24, 24), 0.1), _blobs(rng, (6, 24, 24), 0.1)
    network = metrics.case_metrics(pred, truth, SPACING)
    nifti = metrics.case_metrics(pred.transpose(2, 1, 0), truth.transpose(2, 1, 0), SPACING[::-1])
    assert network.keys() == nifti.keys()
    for key in network:
        assert nifti[key] == pytest.approx(network[key], rel=1e-12), key


def test_case_metrics_keys_and_values_on_two_boxes():
    pred, truth = _two_boxes()
    result = metrics.case_metrics(pred, truth, (5.0, 1.0, 1.0))
    assert tuple(result) == metrics.CASE_METRIC_KEYS
    assert result["dice"] == pytest.approx(1 / 3)
    assert result["precision"] == pytest.approx(0.25)
    assert result["recall"] == pytest.approx(0.5)
    assert result["avd_ml"] == pytest.approx(0.16)
    assert result["volume_pred_ml"] == pytest.approx(0.32)
    assert result["volume_true_ml"] == pytest.approx(0.16)
    assert result["hd_max_mm"] == pytest.approx(metrics.hausdorff_max_mm(pred, truth, (5.0, 1.0, 1.0)))
    assert result["hd95_mm"] == pytest.approx(metrics.hausdorff_95_mm(pred, truth, (5.0, 1.0, 1.0)))
    # Farthest pred surface voxel (0, 3, 3) from truth surface: nearest truth voxel (2, 3, 1): sqrt(10^2 + 2^2).
    assert result["hd_max_mm"] == pytest.approx(math.sqrt(104))
    assert (result["n_lesions_pred"], result["n_lesions_true"], result["lesion_f1"]) == (1, 1, 1.0)


# --- empty masks: every cell of the module table ---------------------------------------------------------------

def test_both_empty_scores_perfect_agreement():
    empty = np.zeros((2, 4, 4), bool)
    result = metrics.case_metrics(empty, empty, SPACING)
    expected = {"dice": 1.0, "precision": 1.0, "recall": 1.0, "avd_ml": 0.0, "volume_pred_ml": 0.0,
                "volume_true_ml": 0.0, "hd95_mm": 0.0, "hd_max_mm": 0.0, "lesion_precision": 1.0,
                "lesion_recall": 1.0, "lesion_f1": 1.0, "n_lesions_pred": 0, "n_lesions_true": 0,
                "n_lesions_detected": 0, "n_lesions_false_positive": 0}
    assert result == expected
    assert metrics.precision(empty, empty, empty_score="zero") == 1.0


def test_empty_prediction_with_lesion():
    empty, truth = np.zeros((2, 4, 4), bool), _box((2, 4, 4), 0, slice(0, 2), slice(0, 2))
    result = metrics.case_metrics(empty, truth, (5.0, 1.0, 1.0))
    assert (result["dice"], result["recall"], result["lesion_recall"], result["lesion_f1"]) == (0.0, 0.0, 0.0, 0.0)
    for key in ("precision", "hd95_mm", "hd_max_mm", "lesion_precision"):
        assert math.isnan(result[key]), key
    assert result["avd_ml"] == pytest.approx(0.02)
    assert (result["n_lesions_pred"], result["n_lesions_true"], result["n_lesions_detected"]) == (0, 1, 0)


def test_lesion_without_prediction_and_prediction_without_lesion_are_mirrors():
    empty, mask = np.zeros((2, 4, 4), bool), _box((2, 4, 4), 0, slice(0, 2), slice(0, 2))
    result = metrics.case_metrics(mask, empty, (5.0, 1.0, 1.0))
    assert (result["dice"], result["precision"], result["lesion_precision"], result["lesion_f1"]) == (0, 0, 0, 0)
    for key in ("recall", "hd95_mm", "hd_max_mm", "lesion_recall"):
        assert math.isnan(result[key]), key
    assert result["avd_ml"] == pytest.approx(0.02)
    assert (result["n_lesions_pred"], result["n_lesions_false_positive"]) == (1, 1)


@pytest.mark.parametrize("rule, expected", [("nan", math.nan), ("zero", 0.0), ("one", 1.0), (0.5, 0.5)])
def test_empty_score_rules(rule, expected):
    empty, mask = np.zeros((2, 4, 4), bool), _box((2, 4, 4), 0, 0, 0)
    got = [metrics.precision(empty, mask, empty_score=rule), metrics.recall(mask, empty, empty_score=rule)]
    result = metrics.case_metrics(empty, mask, SPACING, empty_score=rule)
    got += [result["precision"], result["lesion_precision"]]
    lesions = metrics.lesion_detection(mask, empty, empty_score=rule)
    got.append(lesions["lesion_recall"])
    np.testing.assert_array_equal(got, [expected] * len(got))


@pytest.mark.parametrize("rule, expected", [("nan", math.nan), ("inf", math.inf), ("zero", 0.0), (373.13, 373.13)])
def test_empty_distance_rules(rule, expected):
    empty, mask = np.zeros((2, 4, 4), bool), _box((2, 4, 4), 0, 0, 0)
    got = [metrics.hausdorff_95_mm(empty, mask, SPACING, empty_distance=rule),
           metrics.hausdorff_max_mm(mask, empty, SPACING, empty_distance=rule)]
    result = metrics.case_metrics(mask, empty, SPACING, empty_distance=rule)
    got += [result["hd95_mm"], result["hd_max_mm"]]
    np.testing.assert_array_equal(got, [expected] * 4)


# --- lesion-wise detection ------------------------------------------------------------------------------------

def _lesion_scene():
    """truth: lesions A, B, C (8 voxels each); pred: P1 covers A (8 of its 18 voxels), P2 is a lone false
    positive, P3 touches one voxel of B (1 of its 9 voxels); C is missed."""
    shape = (4, 16, 16)
    truth = (_box(shape, slice(0, 2), slice(0, 2), slice(0, 2)) | _box(shape, slice(0, 2), slice(5, 7), slice(5, 7))
             | _box(shape, slice(0, 2), slice(10, 12), slice(10, 12)))
    pred = (_box(shape, slice(0, 2), slice(0, 3), slice(0, 3)) | _box(shape, 3, 14, 14)
            | _box(shape, 0, slice(6, 9), slice(6, 9)))
    return pred, truth


def test_lesion_counts_with_any_overlap():
    pred, truth = _lesion_scene()
    got = metrics.lesion_detection(pred, truth)
    assert got == {"lesion_precision": pytest.approx(2 / 3), "lesion_recall": pytest.approx(2 / 3),
                   "lesion_f1": pytest.approx(2 / (2 + (1 + 1) / 2)), "n_lesions_pred": 3, "n_lesions_true": 3,
                   "n_lesions_detected": 2, "n_lesions_false_positive": 1}


def test_lesion_counts_with_min_overlap_fraction():
    pred, truth = _lesion_scene()
    # 0.4: A is covered 8/8, P1 overlaps 8/18 = 0.44; B is covered 1/8 and P3 overlaps 1/9: both unmatched.
    got = metrics.lesion_detection(pred, truth, min_overlap_fraction=0.4)
    assert (got["n_lesions_detected"], got["n_lesions_false_positive"]) == (1, 2)
    assert got["lesion_recall"] == pytest.approx(1 / 3)
    assert got["lesion_precision"] == pytest.approx(1 / 3)
    assert got["lesion_f1"] == pytest.approx(1 / (1 + (2 + 2) / 2))
    assert metrics.case_metrics(pred, truth, SPACING, min_overlap_fraction=0.4)["n_lesions_detected"] == 1


@pytest.mark.parametrize("second_voxel, counts", [((1, 1, 1), {6: 2, 18: 2, 26: 1}),
                                                   ((0, 1, 1), {6: 2, 18: 1, 26: 1}),
                                                   ((0, 0, 1), {6: 1, 18: 1, 26: 1})])
def test_lesion_connectivity(second_voxel, counts):
    mask = _box((3, 3, 3), 0, 0, 0)
    mask[second_voxel] = True
    for connectivity, n in counts.items():
        assert metrics.lesion_detection(mask, mask, connectivity=connectivity)["n_lesions_true"] == n
        assert metrics.case_metrics(mask, mask, SPACING, lesion_connectivity=connectivity)["n_lesions_pred"] == n


# --- validation -----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("call, message", [
    (lambda m: metrics.dice(m, m[:, :2]), "differs from truth shape"),
    (lambda m: metrics.dice(m[0], m[0]), "3-D"),
    (lambda m: metrics.dice(m * 0.5, m), "only 0 and 1"),
    (lambda m: metrics.volume_ml(m, (1.0, 1.0)), "spacing_mm"),
    (lambda m: metrics.hausdorff_95_mm(m, m, (1.0, -1.0, 1.0)), "spacing_mm"),
    (lambda m: metrics.absolute_volume_difference_ml(m, m, "abc"), "spacing_mm"),
    (lambda m: metrics.precision(m, m, empty_score="ignore"), "empty_score"),
    (lambda m: metrics.case_metrics(m, m, SPACING, empty_distance="one"), "empty_distance"),
    (lambda m: metrics.lesion_detection(m, m, connectivity=8), "connectivity"),
    (lambda m: metrics.lesion_detection(m, m, min_overlap_fraction=1.5), "min_overlap_fraction"),
])
def test_invalid_inputs_raise_one_line_errors(call, message):
    mask = np.ones((2, 3, 3), np.float32)
    with pytest.raises(ValueError, match=message) as info:
        call(mask)
    assert "\n" not in str(info.value)


# --- summary --------------------------------------------------------------------------------------------------

def test_summarize_ignores_nan_and_counts_it():
    per_case = [{"case_id": "case_1", "dice": 0.2, "hd95_mm": math.nan, "n_lesions_true": 1},
                {"case_id": "case_2", "dice": 0.6, "hd95_mm": 4.0},
                {"case_id": "case_3", "dice": 0.7, "hd95_mm": math.nan, "n_lesions_true": 3}]
    summary = metrics.summarize(per_case)
    assert list(summary) == ["dice", "hd95_mm", "n_lesions_true"]
    assert summary["dice"] == {"mean": pytest.approx(0.5), "std": pytest.approx(math.sqrt(0.14 / 3)),
                               "median": pytest.approx(0.6), "n": 3, "n_nan": 0}
    assert summary["hd95_mm"] == {"mean": 4.0, "std": 0.0, "median": 4.0, "n": 1, "n_nan": 2}
    assert summary["n_lesions_true"] == {"mean": 2.0, "std": 1.0, "median": 2.0, "n": 2, "n_nan": 1}


def test_summarize_all_nan_metric_is_nan_without_warnings(recwarn):
    summary = metrics.summarize([{"precision": math.nan}, {"precision": math.nan}])
    assert math.isnan(summary["precision"]["mean"]) and math.isnan(summary["precision"]["median"])
    assert (summary["precision"]["n"], summary["precision"]["n_nan"]) == (0, 2)
    assert not recwarn.list
    assert metrics.summarize([]) == {}


# --- agreement with references --------------------------------------------------------------------------------

@pytest.mark.parametrize("seed", range(4))
def test_hausdorff_matches_brute_force_reference(seed):
    rng = np.random.default_rng(seed)
    pred, truth = rng.random((4, 9, 9)) < 0.25, _blobs(rng, (4, 9, 9), 0.2, sigma=1.0)
    spacing = (4.0, 0.8, 1.1)
    hd95, hd_max = _brute_force_hausdorff(pred, truth, spacing)
    assert metrics.hausdorff_95_mm(pred, truth, spacing) == pytest.approx(hd95, abs=1e-9)
    assert metrics.hausdorff_max_mm(pred, truth, spacing) == pytest.approx(hd_max, abs=1e-9)


def _medpy_pairs():
    rng = np.random.default_rng(2018)
    for _ in range(3):  # random masks reaching the array edges
        yield rng.random((6, 12, 12)) < 0.3, rng.random((6, 12, 12)) < 0.3, (2.0, 1.0, 0.5)
    for fraction in (0.02, 0.05, 0.15):  # ISLES-like slabs: blobs, 5 mm slices, 0.9 mm in plane
        yield _blobs(rng, (8, 64, 64), fraction), _blobs(rng, (8, 64, 64), fraction), SPACING
    truth = _blobs(rng, (8, 64, 64), 0.05)
    yield ndimage.binary_dilation(truth) & (rng.random(truth.shape) < 0.9), truth, SPACING  # near-miss prediction


@pytest.mark.parametrize("index", range(7))
def test_agrees_with_medpy(index):
    binary = pytest.importorskip("medpy.metric.binary")
    pred, truth, spacing = list(_medpy_pairs())[index]
    assert pred.any() and truth.any()
    result = metrics.case_metrics(pred, truth, spacing)
    assert result["dice"] == pytest.approx(binary.dc(pred, truth), abs=1e-6)
    assert result["precision"] == pytest.approx(binary.precision(pred, truth), abs=1e-6)
    assert result["recall"] == pytest.approx(binary.recall(pred, truth), abs=1e-6)
    assert result["hd_max_mm"] == pytest.approx(binary.hd(pred, truth, voxelspacing=spacing), abs=1e-6)
    assert result["hd95_mm"] == pytest.approx(binary.hd95(pred, truth, voxelspacing=spacing), abs=1e-6)
