"""ISLES 2018 evaluation metrics on numpy masks, one case at a time, plus a NaN-aware summary.

ISLES 2018 ranked methods on Dice, Hausdorff distance and absolute volume difference, and reported precision and
recall (Hakim et al. 2021, "Predicting infarct core from computed tomography perfusion in acute ischemia with
machine learning: lessons from the ISLES challenge", Stroke). Public implementations disagree on details, so this
module fixes them:

- Overlap scores (`dice`, `precision`, `recall`) count voxels.
- Volumes are in mL: `voxels * prod(spacing_mm) / 1000`; `absolute_volume_difference_ml` is `|V_pred - V_true|`.
- Hausdorff distances are in mm and follow MedPy (`medpy.metric.binary.hd` / `hd95`) exactly: the surface of a
  mask is `mask XOR binary_erosion(mask, 6-connected cross)` (voxels on the array edge count as surface), the
  distance of a surface voxel to the other surface is `scipy.ndimage.distance_transform_edt(sampling=spacing)`,
  `hd_max = max(max d_pred->true, max d_true->pred)` and `hd95 = percentile(concat(d_pred->true, d_true->pred), 95)`
  (numpy's linear interpolation). Note MONAI's `percentile=95` takes the max of the two directed percentiles
  instead, which can differ.
- Lesion-wise detection labels connected components (`scipy.ndimage.label`, 26-connectivity by default). A
  ground-truth lesion is *detected* (TP) when the prediction covers at least `min_overlap_fraction` of its voxels
  (and at least one voxel); a predicted component is a *false positive* (FP) when the ground truth covers less
  than that fraction of it; missed lesions are FN. `lesion_recall = TP / n_true`,
  `lesion_precision = (n_pred - FP) / n_pred` and `lesion_f1 = TP / (TP + (FP + FN) / 2)` as in the ISLES 2022 /
  ATLAS 2.0 evaluation; with one-to-one matches it is the harmonic mean of the two.

Axes and units: masks are [depth, height, width] (network order) with `spacing_mm = (depth, height, width)` mm,
e.g. `isles.spacing_to_network(...)`. Only the pairing of spacing with array axes matters to the math: NIfTI order
(x, y, z) with (dx, dy, dz) gives the same numbers. Masks may be bool or numbers in {0, 1}; probabilities must be
thresholded first.

Empty masks (|P| = predicted voxels, |T| = ground-truth voxels; `empty_score` and `empty_distance` are arguments):

| case           | dice | precision   | recall      | hd95 / hd max  | lesion P    | lesion R    | lesion F1 |
| -------------- | ---- | ----------- | ----------- | -------------- | ----------- | ----------- | --------- |
| |P|=0, |T|=0   | 1    | 1           | 1           | 0              | 1           | 1           | 1         |
| |P|=0, |T|>0   | 0    | empty_score | 0           | empty_distance | empty_score | 0           | 0         |
| |P|>0, |T|=0   | 0    | 0           | empty_score | empty_distance | 0           | empty_score | 0         |

`empty_score` is "nan" (default, as MONAI's confusion-matrix metrics: the ratio is undefined, and `summarize`
leaves it out and counts it), "zero", "one" or a number; `empty_distance` is "nan" (default), "inf", "zero" or a
number in mm (e.g. the image diagonal, as some challenges use). Volumes and AVD are always defined. MedPy differs
only where it must: it scores both-empty precision/recall 0 and raises for Hausdorff with an empty mask.

Example:
>>> pred = np.zeros((4, 8, 8), bool); pred[1:3, 2:6, 2:6] = True
>>> truth = np.zeros((4, 8, 8), bool); truth[1:3, 3:7, 2:6] = True
>>> m = case_metrics(pred, truth, spacing_mm=(5.0, 0.9, 0.9))
>>> float(m["dice"]), float(m["avd_ml"])
(0.75, 0.0)
>>> summarize([m, m])["dice"]
{'mean': 0.75, 'std': 0.0, 'median': 0.75, 'n': 2, 'n_nan': 0}
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
from scipy import ndimage

CASE_METRIC_KEYS = (
    "dice", "precision", "recall", "avd_ml", "volume_pred_ml", "volume_true_ml", "hd95_mm", "hd_max_mm",
    "lesion_precision", "lesion_recall", "lesion_f1", "n_lesions_pred", "n_lesions_true", "n_lesions_detected",
    "n_lesions_false_positive",
)
_SCORE_RULES = {"nan": math.nan, "zero": 0.0, "one": 1.0}
_DISTANCE_RULES = {"nan": math.nan, "inf": math.inf, "zero": 0.0}
_CONNECTIVITY_RANK = {6: 1, 18: 2, 26: 3}


def _resolve_rule(rule, table: Mapping[str, float], name: str) -> float:
    if isinstance(rule, str) and rule in table:
        return table[rule]
    if isinstance(rule, (int, float, np.integer, np.floating)) and not isinstance(rule, bool):
        return float(rule)
    raise ValueError(f"metrics: {name} must be one of {', '.join(table)} or a number, got {rule!r}")


def _as_mask(mask, name: str) -> np.ndarray:
    mask = np.asarray(mask)
    if mask.ndim != 3:
        raise ValueError(f"metrics: {name} must be a 3-D [depth, height, width] mask, got shape {mask.shape}")
    if mask.dtype == bool:
        return mask
    if not (np.issubdtype(mask.dtype, np.number)):
        raise ValueError(f"metrics: {name} must be bool or numeric 0/1, got dtype {mask.dtype}")
    if np.any((mask != 0) & (mask != 1)):
        raise ValueError(f"metrics: {name} must hold only 0 and 1 (threshold probabilities first)")
    return mask != 0


def _as_pair(pred, truth) -> tuple[np.ndarray, np.ndarray]:
    pred, truth = _as_mask(pred, "pred"), _as_mask(truth, "truth")
    if pred.shape != truth.shape:
        raise ValueError(f"metrics: pred shape {pred.shape} differs from truth shape {truth.shape}")
    return pred, truth


def _as_spacing(spacing_mm) -> tuple[float, float, float]:
    try:
        spacing = tuple(float(s) for s in spacing_mm)
    except (TypeError, ValueError):
        raise ValueError(f"metrics: spacing_mm must be 3 positive numbers (depth, height, width), got {spacing_mm!r}")
    if len(spacing) != 3 or not all(math.isfinite(s) and s > 0 for s in spacing):
        raise ValueError(f"metrics: spacing_mm must be 3 positive numbers (depth, height, width), got {spacing_mm!r}")
    return spacing


def _ratio(numerator: int, denominator: int, other_empty: bool, empty_value: float) -> float:
    if denominator:
        return numerator / denominator
    return 1.0 if other_empty else empty_value


def dice(pred, truth) -> float:
    """Dice coefficient `2 |P & T| / (|P| + |T|)` (Dice 1945); 1 when both masks are empty.

    Args:
        pred: predicted mask [depth, height, width], bool or 0/1.
        truth: ground-truth mask, same shape.
    """
    pred, truth = _as_pair(pred, truth)
    return _dice(pred, truth)


def _dice(pred, truth) -> float:
    total = np.count_nonzero(pred) + np.count_nonzero(truth)
    return 2.0 * np.count_nonzero(pred & truth) / total if total else 1.0


def precision(pred, truth, empty_score="nan") -> float:
    """Voxel precision `|P & T| / |P|`; see the module table for empty masks.

    Args:
        pred: predicted mask [depth, height, width], bool or 0/1.
        truth: ground-truth mask, same shape.
        empty_score: value when `pred` is empty and `truth` is not: "nan", "zero", "one" or a number.
    """
    pred, truth = _as_pair(pred, truth)
    empty = _resolve_rule(empty_score, _SCORE_RULES, "empty_score")
    return _ratio(np.count_nonzero(pred & truth), np.count_nonzero(pred), not truth.any(), empty)


def recall(pred, truth, empty_score="nan") -> float:
    """Voxel recall (sensitivity) `|P & T| / |T|`; see the module table for empty masks.

    Args:
        pred: predicted mask [depth, height, width], bool or 0/1.
        truth: ground-truth mask, same shape.
        empty_score: value when `truth` is empty and `pred` is not: "nan", "zero", "one" or a number.
    """
    pred, truth = _as_pair(pred, truth)
    empty = _resolve_rule(empty_score, _SCORE_RULES, "empty_score")
    return _ratio(np.count_nonzero(pred & truth), np.count_nonzero(truth), not pred.any(), empty)


def volume_ml(mask, spacing_mm) -> float:
    """Volume of a mask in mL: `voxels * prod(spacing_mm) / 1000` (1 mL = 1000 mm^3).

    Args:
        mask: [depth, height, width], bool or 0/1.
        spacing_mm: voxel size (depth, height, width) in mm, matching the array axes.
    """
    return np.count_nonzero(_as_mask(mask, "mask")) * math.prod(_as_spacing(spacing_mm)) / 1000.0


def absolute_volume_difference_ml(pred, truth, spacing_mm) -> float:
    """Absolute volume difference `|V_pred - V_true|` in mL (the ISLES 2018 AVD, not relative).

    Args:
        pred: predicted mask [depth, height, width], bool or 0/1.
        truth: ground-truth mask, same shape.
        spacing_mm: voxel size (depth, height, width) in mm.
    """
    pred, truth = _as_pair(pred, truth)
    voxel_ml = math.prod(_as_spacing(spacing_mm)) / 1000.0
    return abs(np.count_nonzero(pred) - np.count_nonzero(truth)) * voxel_ml


def _surface(mask: np.ndarray, connectivity: int) -> np.ndarray:
    footprint = ndimage.generate_binary_structure(mask.ndim, connectivity)
    return mask ^ ndimage.binary_erosion(mask, structure=footprint, iterations=1)


def _surface_distances(pred, truth, spacing, connectivity=1) -> tuple[np.ndarray, np.ndarray]:
    # The Euclidean transform is exact, so cropping to the box holding both masks changes no distance; outside
    # the box both masks are 0, which is also what erosion assumes beyond the array edge.
    union = pred | truth
    box = tuple(slice(idx.min(), idx.max() + 1) for idx in np.nonzero(union))
    pred_surface, truth_surface = _surface(pred[box], connectivity), _surface(truth[box], connectivity)
    to_truth = ndimage.distance_transform_edt(~truth_surface, sampling=spacing)[pred_surface]
    to_pred = ndimage.distance_transform_edt(~pred_surface, sampling=spacing)[truth_surface]
    return to_truth, to_pred


def surface_distances_mm(pred, truth, spacing_mm, connectivity: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Directed surface distances in mm, as MedPy's `__surface_distances` (both masks must be non-empty).

    Args:
        pred: predicted mask [depth, height, width], bool or 0/1, non-empty.
        truth: ground-truth mask, same shape, non-empty.
        spacing_mm: voxel size (depth, height, width) in mm.
        connectivity: rank of the erosion structure that defines the surface (1 = 6-neighbour cross, MedPy's).

    Returns:
        `(pred_to_truth, truth_to_pred)`: float64 [n_pred_surface_voxels] and [n_truth_surface_voxels].
    """
    pred, truth = _as_pair(pred, truth)
    if not (pred.any() and truth.any()):
        raise ValueError("metrics: surface_distances_mm needs non-empty pred and truth masks")
    return _surface_distances(pred, truth, _as_spacing(spacing_mm), connectivity)


def _hausdorff(pred, truth, spacing, empty_distance) -> tuple[float, float]:
    has_pred, has_truth = pred.any(), truth.any()
    if not (has_pred or has_truth):
        return 0.0, 0.0
    if not (has_pred and has_truth):
        empty = _resolve_rule(empty_distance, _DISTANCE_RULES, "empty_distance")
        return empty, empty
    to_truth, to_pred = _surface_distances(pred, truth, spacing)
    hd95 = float(np.percentile(np.concatenate((to_truth, to_pred)), 95))
    return hd95, float(max(to_truth.max(), to_pred.max()))


def hausdorff_95_mm(pred, truth, spacing_mm, empty_distance="nan") -> float:
    """95th percentile of the pooled symmetric surface distances in mm (MedPy `hd95`); see module table.

    Args:
        pred: predicted mask [depth, height, width], bool or 0/1.
        truth: ground-truth mask, same shape.
        spacing_mm: voxel size (depth, height, width) in mm.
        empty_distance: value when exactly one mask is empty: "nan", "inf", "zero" or a number (mm).
    """
    pred, truth = _as_pair(pred, truth)
    return _hausdorff(pred, truth, _as_spacing(spacing_mm), empty_distance)[0]


def hausdorff_max_mm(pred, truth, spacing_mm, empty_distance="nan") -> float:
    """Symmetric Hausdorff distance (maximum surface distance) in mm (MedPy `hd`); see module table.

    Args:
        pred: predicted mask [depth, height, width], bool or 0/1.
        truth: ground-truth mask, same shape.
        spacing_mm: voxel size (depth, height, width) in mm.
        empty_distance: value when exactly one mask is empty: "nan", "inf", "zero" or a number (mm).
    """
    pred, truth = _as_pair(pred, truth)
    return _hausdorff(pred, truth, _as_spacing(spacing_mm), empty_distance)[1]


def _matched_components(labels: np.ndarray, n: int, other: np.ndarray, min_fraction: float) -> np.ndarray:
    sizes = np.bincount(labels.ravel(), minlength=n + 1)[1:]
    overlaps = np.bincount(labels[other], minlength=n + 1)[1:]
    return (overlaps > 0) & (overlaps >= min_fraction * sizes)


def _label_components(mask: np.ndarray, connectivity: int) -> tuple[np.ndarray, int]:
    if connectivity not in _CONNECTIVITY_RANK:
        raise ValueError(f"metrics: lesion connectivity must be 6, 18 or 26, got {connectivity!r}")
    return ndimage.label(mask, structure=ndimage.generate_binary_structure(3, _CONNECTIVITY_RANK[connectivity]))


def lesion_components(mask, connectivity: int = 26) -> tuple[np.ndarray, int]:
    """Connected components of a mask, the lesions that `lesion_detection` counts.

    Args:
        mask: [depth, height, width], bool or 0/1.
        connectivity: 6, 18 or 26 neighbours define a component.

    Returns:
        (labels int32 [depth, height, width] with 0 = background and 1..n the components, n).
    """
    return _label_components(_as_mask(mask, "mask"), connectivity)


def _lesion_detection(pred, truth, connectivity, min_overlap_fraction, empty) -> dict[str, float]:
    if not 0.0 <= min_overlap_fraction <= 1.0:
        raise ValueError(f"metrics: min_overlap_fraction must be in [0, 1], got {min_overlap_fraction!r}")
    pred_labels, n_pred = _label_components(pred, connectivity)
    truth_labels, n_true = _label_components(truth, connectivity)
    detected = int(_matched_components(truth_labels, n_true, pred, min_overlap_fraction).sum())
    pred_hits = int(_matched_components(pred_labels, n_pred, truth, min_overlap_fraction).sum())
    false_pos, false_neg = n_pred - pred_hits, n_true - detected
    f1_denominator = detected + (false_pos + false_neg) / 2.0
    return {
        "lesion_precision": _ratio(pred_hits, n_pred, n_true == 0, empty),
        "lesion_recall": _ratio(detected, n_true, n_pred == 0, empty),
        "lesion_f1": detected / f1_denominator if f1_denominator else 1.0,
        "n_lesions_pred": n_pred,
        "n_lesions_true": n_true,
        "n_lesions_detected": detected,
        "n_lesions_false_positive": false_pos,
    }


def lesion_detection(pred, truth, connectivity: int = 26, min_overlap_fraction: float = 0.0,
                     empty_score="nan") -> dict[str, float]:
    """Lesion-wise detection scores from connected components (rule in the module docstring).

    Args:
        pred: predicted mask [depth, height, width], bool or 0/1.
        truth: ground-truth mask, same shape.
        connectivity: 6, 18 or 26 neighbours define a component.
        min_overlap_fraction: fraction of a component's voxels the other mask must cover for a match, in [0, 1];
            0 means any single voxel of overlap.
        empty_score: lesion precision with no predicted component / recall with no true lesion (see table).

    Returns:
        dict with lesion_precision, lesion_recall, lesion_f1 (floats) and n_lesions_pred, n_lesions_true,
        n_lesions_detected, n_lesions_false_positive (ints).
    """
    pred, truth = _as_pair(pred, truth)
    empty = _resolve_rule(empty_score, _SCORE_RULES, "empty_score")
    return _lesion_detection(pred, truth, connectivity, min_overlap_fraction, empty)


def voxel_metrics(pred, truth, empty_score="nan") -> dict[str, float]:
    """Voxel Dice, precision and recall of one case (the overlap part of `case_metrics`, no spacing needed).

    Validation during training scores these with `empty_score="zero"`: an empty prediction of a case with a
    lesion scores precision 0, so a model that misses lesions cannot raise its mean precision by predicting
    nothing; two empty masks score 1 on all three.

    Args:
        pred: predicted mask [depth, height, width], bool or 0/1.
        truth: ground-truth mask, same shape.
        empty_score: undefined precision/recall value (see the module table).
    """
    pred, truth = _as_pair(pred, truth)
    return _voxel_metrics(pred, truth, _resolve_rule(empty_score, _SCORE_RULES, "empty_score"))


def _voxel_metrics(pred: np.ndarray, truth: np.ndarray, score_empty: float) -> dict[str, float]:
    n_pred, n_true, n_both = np.count_nonzero(pred), np.count_nonzero(truth), np.count_nonzero(pred & truth)
    return {
        "dice": 2.0 * n_both / (n_pred + n_true) if n_pred + n_true else 1.0,
        "precision": _ratio(n_both, n_pred, n_true == 0, score_empty),
        "recall": _ratio(n_both, n_true, n_pred == 0, score_empty),
    }


def case_metrics(pred, truth, spacing_mm, empty_score="nan", empty_distance="nan", lesion_connectivity: int = 26,
                 min_overlap_fraction: float = 0.0) -> dict[str, float]:
    """All ISLES metrics of one case, each mask converted and validated once.

    Args:
        pred: predicted mask [depth, height, width], bool or 0/1.
        truth: ground-truth mask, same shape.
        spacing_mm: voxel size (depth, height, width) in mm, matching the array axes.
        empty_score: undefined precision/recall value (see the module table).
        empty_distance: Hausdorff value when exactly one mask is empty (see the module table).
        lesion_connectivity: 6, 18 or 26, for lesion-wise detection.
        min_overlap_fraction: lesion match threshold, see `lesion_detection`.

    Returns:
        dict keyed by `CASE_METRIC_KEYS`: dice, precision, recall, avd_ml, volume_pred_ml, volume_true_ml,
        hd95_mm, hd_max_mm, lesion_precision, lesion_recall, lesion_f1 and the lesion counts.
    """
    pred, truth = _as_pair(pred, truth)
    spacing = _as_spacing(spacing_mm)
    score_empty = _resolve_rule(empty_score, _SCORE_RULES, "empty_score")
    _resolve_rule(empty_distance, _DISTANCE_RULES, "empty_distance")
    n_pred, n_true = np.count_nonzero(pred), np.count_nonzero(truth)
    voxel_ml = math.prod(spacing) / 1000.0
    hd95, hd_max = _hausdorff(pred, truth, spacing, empty_distance)
    result = _voxel_metrics(pred, truth, score_empty)
    result.update({
        "avd_ml": abs(n_pred - n_true) * voxel_ml,
        "volume_pred_ml": n_pred * voxel_ml,
        "volume_true_ml": n_true * voxel_ml,
        "hd95_mm": hd95,
        "hd_max_mm": hd_max,
    })
    result.update(_lesion_detection(pred, truth, lesion_connectivity, min_overlap_fraction, score_empty))
    return result


def _is_number(value) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)


def summarize(per_case: Sequence[Mapping[str, float]]) -> dict[str, dict[str, float]]:
    """NaN-aware summary of per-case metrics, as MONAI's reductions over not-NaN values.

    Keys are taken in first-seen order; non-numeric entries (a case id) are skipped; a key missing from a case
    counts as NaN. `std` is the population standard deviation (ddof=0); with no finite-or-infinite value left
    `mean`, `std` and `median` are NaN.

    Args:
        per_case: e.g. a list of `case_metrics` results.

    Returns:
        `{metric: {"mean", "std", "median", "n" (values used), "n_nan" (values left out)}}`.
    """
    keys: dict[str, None] = {}
    for case in per_case:
        keys.update((k, None) for k, v in case.items() if _is_number(v))
    summary = {}
    for key in keys:
        values = np.array([float(case[key]) if _is_number(case.get(key)) else math.nan for case in per_case])
        kept = values[~np.isnan(values)]
        if kept.size:
            with np.errstate(invalid="ignore"):
                stats = (float(np.mean(kept)), float(np.std(kept)), float(np.median(kept)))
        else:
            stats = (math.nan, math.nan, math.nan)
        summary[key] = {"mean": stats[0], "std": stats[1], "median": stats[2], "n": int(kept.size),
                        "n_nan": int(values.size - kept.size)}
    return summary
