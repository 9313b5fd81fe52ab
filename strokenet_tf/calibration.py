"""Probability calibration: temperature scaling (Guo et al. 2017), expected calibration error, reliability diagram.

Segmentation networks trained with focal/Dice losses are over- or under-confident; a single temperature T on
the logit, p' = sigmoid(logit(p) / T), is monotone (the mask at threshold 0.5 does not change), has one
parameter (cannot over-fit 20 cases) and runs in the graph (`apply_temperature`, inside
`inference.Segmenter`). It is fitted by minimising the voxel NLL on the out-of-fold probabilities of a
cross-validation (`cross_validate` keeps them in `fold_K/evaluation/out_of_fold.npz`), inside the brain mask.

ECE (Naeini et al. 2015) here is the calibration error of the lesion probability: brain voxels are put in
`NUM_BINS` equal-width bins of p, and ECE = sum_b (n_b / n) |mean p_b - lesion fraction_b|.
"""

from __future__ import annotations

import io
import json
import math
import os
from typing import Any, Sequence

import numpy as np

NUM_BINS = 15
CALIBRATION_FILE = "calibration.json"
RELIABILITY_FILE = "reliability.png"
OUT_OF_FOLD_FILE = "out_of_fold.npz"
_EPSILON = 1e-7
_FIT_SAMPLES = 2_000_000


def apply_temperature(probabilities, temperature: float):
    """tf: p -> sigmoid(logit(p) / temperature); the identity (no op at all) for temperature 1."""
    import tensorflow as tf

    if float(temperature) == 1.0:
        return probabilities
    clipped = tf.clip_by_value(probabilities, _EPSILON, 1.0 - _EPSILON)
    logits = tf.math.log(clipped) - tf.math.log1p(-clipped)
    return tf.sigmoid(logits / float(temperature))


def apply_temperature_np(probabilities: np.ndarray, temperature: float) -> np.ndarray:
    """numpy twin of `apply_temperature` (float64)."""
    p = np.clip(np.asarray(probabilities, np.float64), _EPSILON, 1.0 - _EPSILON)
    if temperature == 1.0:
        return p
    return 1.0 / (1.0 + np.exp(-(np.log(p) - np.log1p(-p)) / temperature))


def reliability_bins(probabilities: np.ndarray, labels: np.ndarray, num_bins: int = NUM_BINS) -> dict[str, Any]:
    """Per-bin voxel count, mean probability and lesion fraction, and the ECE.

    Args:
        probabilities: lesion probabilities of the voxels to score (brain voxels), any shape.
        labels: the same shape, > 0 is lesion.
    """
    p = np.asarray(probabilities, np.float64).ravel()
    y = (np.asarray(labels).ravel() > 0).astype(np.float64)
    if p.size == 0:
        raise ValueError("calibration: no voxels to score")
    index = np.minimum((p * num_bins).astype(np.int64), num_bins - 1)
    count = np.bincount(index, minlength=num_bins).astype(np.float64)
    sum_p = np.bincount(index, weights=p, minlength=num_bins)
    sum_y = np.bincount(index, weights=y, minlength=num_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_p = np.where(count > 0, sum_p / count, np.nan)
        fraction = np.where(count > 0, sum_y / count, np.nan)
    ece = float(np.sum(np.abs(sum_p - sum_y)) / p.size)
    return {"ece": ece, "count": count.astype(int).tolist(), "mean_probability": mean_p.tolist(),
            "lesion_fraction": fraction.tolist(), "num_bins": num_bins, "n_voxels": int(p.size)}


def expected_calibration_error(probabilities: np.ndarray, labels: np.ndarray, num_bins: int = NUM_BINS) -> float:
    return reliability_bins(probabilities, labels, num_bins)["ece"]


def _nll(p: np.ndarray, y: np.ndarray, temperature: float) -> float:
    q = np.clip(apply_temperature_np(p, temperature), _EPSILON, 1.0 - _EPSILON)
    return float(-np.mean(y * np.log(q) + (1.0 - y) * np.log1p(-q)))


def fit_temperature(probabilities: np.ndarray, labels: np.ndarray, seed: int = 0) -> float:
    """The temperature in [0.05, 20] that minimises the NLL of `labels` (golden-section search on log T;
    at most `_FIT_SAMPLES` voxels, an even random sample)."""
    p = np.asarray(probabilities, np.float64).ravel()
    y = (np.asarray(labels).ravel() > 0).astype(np.float64)
    if p.size > _FIT_SAMPLES:
        keep = np.random.default_rng(seed).choice(p.size, _FIT_SAMPLES, replace=False)
        p, y = p[keep], y[keep]
    low, high = math.log(0.05), math.log(20.0)
    ratio = (math.sqrt(5.0) - 1.0) / 2.0
    a, b = high - ratio * (high - low), low + ratio * (high - low)
    fa, fb = _nll(p, y, math.exp(a)), _nll(p, y, math.exp(b))
    for _ in range(40):
        if fa < fb:
            high, b, fb = b, a, fa
            a = high - ratio * (high - low)
            fa = _nll(p, y, math.exp(a))
        else:
            low, a, fa = a, b, fb
            b = low + ratio * (high - low)
            fb = _nll(p, y, math.exp(b))
    return float(math.exp((low + high) / 2.0))


def reliability_png(before: dict[str, Any], after: dict[str, Any] | None = None, title: str = "") -> bytes:
    """A reliability diagram (mean probability vs lesion fraction per bin, diagonal = perfect) as PNG bytes:
    before in red, after in blue, with their ECE."""
    from PIL import Image, ImageDraw

    size, margin = 360, 40
    image = Image.new("RGB", (size + 2 * margin, size + 2 * margin), "white")
    draw = ImageDraw.Draw(image)

    def xy(px, py):
        return margin + px * size, margin + (1.0 - py) * size

    draw.rectangle([xy(0, 1), xy(1, 0)], outline="black")
    draw.line([xy(0, 0), xy(1, 1)], fill=(150, 150, 150))
    for tick in (0.0, 0.5, 1.0):
        draw.text((xy(tick, 0)[0] - 6, margin + size + 4), f"{tick:g}", fill="black")
        draw.text((6, xy(0, tick)[1] - 6), f"{tick:g}", fill="black")
    series = [(before, (220, 30, 30), "before")] + ([(after, (30, 60, 220), "after")] if after else [])
    for row, (bins, colour, name) in enumerate(series):
        points = [xy(p, f) for p, f, n in zip(bins["mean_probability"], bins["lesion_fraction"], bins["count"])
                  if n > 0]
        if len(points) > 1:
            draw.line(points, fill=colour, width=2)
        for x, y in points:
            draw.ellipse([x - 3, y - 3, x + 3, y + 3], fill=colour)
        draw.text((margin + 6, margin + 6 + 14 * row), f"{name}: ECE {bins['ece']:.4f}", fill=colour)
    draw.text((margin, 8), title or f"reliability, {before['num_bins']} bins, brain voxels", fill="black")
    draw.text((margin + size // 2 - 60, margin + size + 20), "mean predicted probability", fill="black")
    draw.text((2, margin - 16), "lesion fraction", fill="black")
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


# ------------------------------------------------------------------------------------ out-of-fold probabilities


def brain_voxels(case, probabilities: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(probabilities, labels) of the brain voxels of an `isles.Case` (`preprocess.brain_mask`)."""
    from strokenet_tf.data import preprocess

    brain = np.asarray(preprocess.brain_mask(case.image, case.channels))
    return np.asarray(probabilities, np.float32)[brain], np.asarray(case.label)[brain] > 0


def write_out_of_fold(eval_dir: str, segmenter, case_dirs: Sequence) -> str:
    """Predicts the held-out cases of one fold and keeps their brain voxels' probabilities and labels in
    `eval_dir/out_of_fold.npz` (float16 probabilities, bool labels, per-case offsets), atomically."""
    from strokenet_tf.data import atomic, isles

    probabilities, labels, case_ids, offsets = [], [], [], [0]
    for case_dir in case_dirs:
        case = isles.read_case(case_dir, segmenter.channels, require_label=True)
        p, y = brain_voxels(case, segmenter.predict_case(case)[0])
        probabilities.append(p.astype(np.float16))
        labels.append(y)
        case_ids.append(case.case_id)
        offsets.append(offsets[-1] + p.size)
    buffer = io.BytesIO()
    np.savez_compressed(buffer, probabilities=np.concatenate(probabilities), labels=np.concatenate(labels),
                        case_ids=np.asarray(case_ids), offsets=np.asarray(offsets, np.int64),
                        mirror=np.asarray(bool(getattr(segmenter, "mirror", False))))
    path = os.path.join(eval_dir, OUT_OF_FOLD_FILE)
    os.makedirs(eval_dir, exist_ok=True)
    atomic.atomic_write_bytes(path, buffer.getvalue())
    return path


def read_out_of_fold(paths: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """The concatenated (probabilities float32, labels bool) of several out_of_fold.npz files."""
    probabilities, labels = [], []
    for path in paths:
        try:
            with np.load(path) as data:
                probabilities.append(data["probabilities"].astype(np.float32))
                labels.append(data["labels"].astype(bool))
        except (OSError, ValueError, KeyError) as error:
            raise ValueError(f"{path}: unreadable out-of-fold probabilities ({error})") from None
    return np.concatenate(probabilities), np.concatenate(labels)


def calibrate(out_of_fold_paths: Sequence[str], output_dir: str) -> dict[str, Any]:
    """Fits the temperature on out-of-fold probabilities and writes `calibration.json` and `reliability.png`
    (before/after) to `output_dir`; returns the JSON document."""
    from strokenet_tf.data import atomic

    probabilities, labels = read_out_of_fold(out_of_fold_paths)
    temperature = fit_temperature(probabilities, labels)
    before = reliability_bins(probabilities, labels)
    after = reliability_bins(apply_temperature_np(probabilities, temperature), labels)
    document = {"method": "temperature scaling of the logit, fitted by NLL on out-of-fold brain voxels",
                "temperature": temperature, "ece_before": before["ece"], "ece_after": after["ece"],
                "num_bins": NUM_BINS, "n_voxels": before["n_voxels"],
                "out_of_fold_files": [os.path.abspath(p) for p in out_of_fold_paths],
                "reliability_before": before, "reliability_after": after}
    os.makedirs(output_dir, exist_ok=True)
    atomic.atomic_write_bytes(os.path.join(output_dir, RELIABILITY_FILE),
                              reliability_png(before, after, "out-of-fold reliability, brain voxels"))
    atomic.atomic_write_text(os.path.join(output_dir, CALIBRATION_FILE),
                             json.dumps(_strict(document), indent=2, allow_nan=False) + "\n")
    return document


def _strict(value):
    if isinstance(value, dict):
        return {k: _strict(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_strict(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def read_temperature(folder: str) -> float | None:
    """The temperature in `folder/calibration.json`, or None when there is none.

    Raises:
        ValueError: a calibration file that is unreadable or holds no positive temperature (one line).
    """
    path = os.path.join(folder, CALIBRATION_FILE)
    if not os.path.isfile(path):
        return None
    try:
        with open(path, encoding="utf-8") as stream:
            temperature = float(json.load(stream)["temperature"])
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise ValueError(f"{path}: unreadable calibration ({error})") from None
    if not temperature > 0.0 or not math.isfinite(temperature):
        raise ValueError(f"{path}: temperature must be a positive number, got {temperature}")
    return temperature
