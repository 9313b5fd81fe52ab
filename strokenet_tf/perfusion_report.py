"""Perfusion-mismatch report: core, Tmax > 6 s hypoperfusion, mismatch and the DEFUSE-3 / EXTEND-IA criteria.

Research output, not a medical device: the numbers are for studying the model, never for treatment decisions.

The volumes are computed in the graph (`graph_report`, part of `inference.Segmenter.report` and of the exported
`report` signature) from the raw Tmax map, the brain mask of the normalisation (`preprocess.brain_mask`) and the
predicted core mask:

    core_ml            = volume(predicted mask)
    hypoperfusion_ml   = volume(Tmax > 6 s inside the brain)
    mismatch_ml        = hypoperfusion_ml - core_ml,   mismatch_ratio = hypoperfusion_ml / core_ml (inf for no core)
    hir                = volume(Tmax > 10 s) / volume(Tmax > 6 s)        (hypoperfusion intensity ratio)
    DEFUSE-3  (Albers et al. 2018):     core < 70 mL, ratio >= 1.8, mismatch >= 15 mL
    EXTEND-IA (Campbell et al. 2015):   core < 70 mL, ratio >  1.2, mismatch >  10 mL

A Tmax map that is not in seconds (99th percentile inside the brain outside `PLAUSIBLE_TMAX_P99_S`: a map in
milliseconds, a normalised map, an empty map) gets NaN volumes, flags -1 and status `STATUS_IMPLAUSIBLE_TMAX`;
a model without a Tmax channel reports the core only (`STATUS_NO_TMAX`). `describe` turns the graph's outputs
into the JSON of one case, with the reason in words.
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import numpy as np
import tensorflow as tf

from strokenet_tf.data import isles, preprocess

DISCLAIMER = "Research output, not a medical device: not for diagnosis or treatment decisions."
HYPOPERFUSION_TMAX_S = 6.0
SEVERE_TMAX_S = 10.0
PLAUSIBLE_TMAX_P99_S = (1.5, 150.0)
"""The 99th percentile of a Tmax map in seconds inside the brain lies here (ISLES 2018: up to ~40 s)."""
CRITERIA = {
    "defuse3": {"core_lt_ml": 70.0, "ratio_ge": 1.8, "mismatch_ge_ml": 15.0},
    "extend_ia": {"core_lt_ml": 70.0, "ratio_gt": 1.2, "mismatch_gt_ml": 10.0},
}
STATUS_OK, STATUS_NO_TMAX, STATUS_IMPLAUSIBLE_TMAX = 0, 1, 2
STATUS_TEXT = {
    STATUS_OK: "ok",
    STATUS_NO_TMAX: "no Tmax map: the model does not read CT_Tmax, so only the core volume is reported",
    STATUS_IMPLAUSIBLE_TMAX: (f"Tmax does not look like seconds (99th percentile inside the brain outside "
                              f"{PLAUSIBLE_TMAX_P99_S[0]}-{PLAUSIBLE_TMAX_P99_S[1]} s): no hypoperfusion volume "
                              f"and no criteria"),
}
HYPOPERFUSION_MASK_KEY = "hypoperfusion_mask"
"""uint8 [batch, depth, height, width]: Tmax > 6 s inside the brain (all 0 when not evaluable); for the montage."""
REPORT_KEYS = ("core_volume_ml", "hypoperfusion_volume_ml", "severe_hypoperfusion_volume_ml", "mismatch_volume_ml",
               "mismatch_ratio", "hypoperfusion_intensity_ratio", "tmax_p99_s", "defuse3", "extend_ia",
               "perfusion_status")


def _volume_ml(mask: tf.Tensor, voxel_ml: tf.Tensor) -> tf.Tensor:
    """bool [batch, depth, height, width], float32 [batch] -> float32 [batch]."""
    return tf.reduce_sum(tf.cast(mask, tf.float32), axis=[1, 2, 3]) * voxel_ml


def tmax_p99(tmax: tf.Tensor, brain: tf.Tensor) -> tf.Tensor:
    """99th percentile of Tmax inside the brain, per case: float32 [batch] (0 for an empty brain)."""
    def one_case(values_and_mask):  # [d, h, w, 2]: Tmax and the brain mask as 0/1
        return preprocess.masked_percentiles(values_and_mask[..., :1], values_and_mask[..., 1] > 0.5, (99.0,))[0, 0]

    stacked = tf.stack([tmax, tf.cast(brain, tf.float32)], axis=-1)
    return tf.map_fn(one_case, stacked, fn_output_signature=tf.float32)


def graph_report(image: tf.Tensor, channels: Sequence[str], core_mask: tf.Tensor,
                 voxel_size_mm: tf.Tensor) -> dict[str, tf.Tensor]:
    """The report's numbers, in the graph.

    Args:
        image: raw maps float32 [batch, depth, height, width, channels] (Tmax in seconds).
        channels: modality per channel.
        core_mask: predicted core, [batch, depth, height, width] (any dtype, > 0 is core).
        voxel_size_mm: float32 [batch, 3] (any axis order).

    Returns:
        float32 [batch] volumes (mL) and ratios (NaN where not evaluable), int32 [batch] flags `defuse3`,
        `extend_ia` (1 met, 0 not met, -1 not evaluable) and `perfusion_status`, and the uint8
        `hypoperfusion_mask`.
    """
    voxel_ml = tf.reduce_prod(tf.cast(voxel_size_mm, tf.float32), axis=-1) / 1000.0
    core_ml = _volume_ml(core_mask > 0, voxel_ml)
    batch = tf.shape(image)[0]
    if isles.TMAX not in channels:
        nan = tf.fill([batch], float("nan"))
        unknown = tf.fill([batch], -1)
        return {"core_volume_ml": core_ml, "hypoperfusion_volume_ml": nan, "severe_hypoperfusion_volume_ml": nan,
                "mismatch_volume_ml": nan, "mismatch_ratio": nan, "hypoperfusion_intensity_ratio": nan,
                "tmax_p99_s": nan, "defuse3": unknown, "extend_ia": unknown,
                "perfusion_status": tf.fill([batch], STATUS_NO_TMAX),
                HYPOPERFUSION_MASK_KEY: tf.zeros_like(core_mask, tf.uint8)}
    finite = tf.where(tf.math.is_finite(image), image, tf.zeros_like(image))
    brain = preprocess.brain_mask(finite, channels)
    tmax = finite[..., list(channels).index(isles.TMAX)]
    p99 = tmax_p99(tmax, brain)
    plausible = (p99 >= PLAUSIBLE_TMAX_P99_S[0]) & (p99 <= PLAUSIBLE_TMAX_P99_S[1])
    hypo_ml = _volume_ml(brain & (tmax > HYPOPERFUSION_TMAX_S), voxel_ml)
    severe_ml = _volume_ml(brain & (tmax > SEVERE_TMAX_S), voxel_ml)
    mismatch_ml = hypo_ml - core_ml
    ratio = tf.where(core_ml > 0, hypo_ml / tf.maximum(core_ml, 1e-12), tf.fill([batch], float("inf")))
    hir = tf.where(hypo_ml > 0, severe_ml / tf.maximum(hypo_ml, 1e-12), tf.fill([batch], float("nan")))
    defuse = CRITERIA["defuse3"]
    extend = CRITERIA["extend_ia"]
    defuse3 = ((core_ml < defuse["core_lt_ml"]) & (ratio >= defuse["ratio_ge"])
               & (mismatch_ml >= defuse["mismatch_ge_ml"]))
    extend_ia = ((core_ml < extend["core_lt_ml"]) & (ratio > extend["ratio_gt"])
                 & (mismatch_ml > extend["mismatch_gt_ml"]))
    nan = tf.fill([batch], float("nan"))

    def gated(value):
        return tf.where(plausible, value, nan)

    def flag(value):
        return tf.where(plausible, tf.cast(value, tf.int32), -1)

    return {"core_volume_ml": core_ml, "hypoperfusion_volume_ml": gated(hypo_ml),
            "severe_hypoperfusion_volume_ml": gated(severe_ml), "mismatch_volume_ml": gated(mismatch_ml),
            "mismatch_ratio": gated(ratio), "hypoperfusion_intensity_ratio": gated(hir), "tmax_p99_s": p99,
            "defuse3": flag(defuse3), "extend_ia": flag(extend_ia),
            "perfusion_status": tf.where(plausible, STATUS_OK, STATUS_IMPLAUSIBLE_TMAX),
            HYPOPERFUSION_MASK_KEY: tf.cast(brain & (tmax > HYPOPERFUSION_TMAX_S)
                                            & plausible[:, tf.newaxis, tf.newaxis, tf.newaxis], tf.uint8)}


def _number(value) -> float | None:
    value = float(value)
    if math.isnan(value):
        return None
    return value


def describe(outputs: Mapping[str, Any], index: int = 0) -> dict[str, Any]:
    """The JSON of case `index` of a batch of `graph_report` outputs (numpy or tensors), with the criteria's
    thresholds, the status in words and the disclaimer. Flags are true/false, or null when not evaluable."""
    def value(key):
        return np.asarray(outputs[key])[index]

    status = int(value("perfusion_status"))
    report = {"disclaimer": DISCLAIMER, "status": STATUS_TEXT.get(status, f"unknown status {status}"),
              "core_volume_ml": _number(value("core_volume_ml"))}
    for key in ("hypoperfusion_volume_ml", "severe_hypoperfusion_volume_ml", "mismatch_volume_ml",
                "mismatch_ratio", "hypoperfusion_intensity_ratio", "tmax_p99_s"):
        number = _number(value(key))
        report[key] = "inf" if number is not None and math.isinf(number) else number
    for name in ("defuse3", "extend_ia"):
        flag = int(value(name))
        report[name] = {"met": None if flag < 0 else bool(flag), "thresholds": dict(CRITERIA[name])}
    report["definitions"] = {"hypoperfusion": f"Tmax > {HYPOPERFUSION_TMAX_S:g} s inside the brain mask",
                             "hypoperfusion_intensity_ratio": f"volume(Tmax > {SEVERE_TMAX_S:g} s) / "
                                                              f"volume(Tmax > {HYPOPERFUSION_TMAX_S:g} s)",
                             "core": "the predicted lesion mask"}
    return report


def reference_volumes_ml(tmax_s: np.ndarray, brain: np.ndarray, core: np.ndarray,
                         spacing_mm: Sequence[float]) -> dict[str, float]:
    """The same volumes in numpy, from maps directly (to check the graph against ground truth maps)."""
    voxel_ml = float(np.prod(spacing_mm)) / 1000.0
    hypo = float(np.count_nonzero(brain & (tmax_s > HYPOPERFUSION_TMAX_S))) * voxel_ml
    core_ml = float(np.count_nonzero(core)) * voxel_ml
    return {"core_volume_ml": core_ml, "hypoperfusion_volume_ml": hypo, "mismatch_volume_ml": hypo - core_ml,
            "mismatch_ratio": hypo / core_ml if core_ml > 0 else math.inf}


CSV_COLUMNS = ("case_id", "core_volume_ml", "core_interval_low_ml", "core_interval_high_ml", "members_disagree",
               "hypoperfusion_volume_ml", "mismatch_volume_ml", "mismatch_ratio", "hypoperfusion_intensity_ratio",
               "defuse3", "extend_ia", "status")


def csv_row(case_id: str, report: Mapping[str, Any], uncertainty: Mapping[str, Any] | None = None) -> list[str]:
    """One row of the batch CSV of a folder run (`CSV_COLUMNS`); empty cells where not evaluable."""
    def cell(value):
        if value is None:
            return ""
        if isinstance(value, bool):
            return "1" if value else "0"
        if isinstance(value, float):
            return f"{value:.3f}"
        return str(value)

    interval = (uncertainty or {}).get("core_volume_interval_ml") or [None, None]
    status = report["status"].replace(",", ";")
    return [case_id, cell(report.get("core_volume_ml")), cell(interval[0]), cell(interval[1]),
            cell((uncertainty or {}).get("members_disagree")), cell(report.get("hypoperfusion_volume_ml")),
            cell(report.get("mismatch_volume_ml")), cell(report.get("mismatch_ratio")),
            cell(report.get("hypoperfusion_intensity_ratio")), cell(report.get("defuse3", {}).get("met")),
            cell(report.get("extend_ia", {}).get("met")), status]
