"""Probability calibration: a monotone map fitted on out-of-fold probabilities, ECE, reliability diagram.

Segmentation networks trained with focal/Dice losses are over- or under-confident. Three monotone maps of the
ensemble's lesion probability are fitted on the out-of-fold probabilities of a cross-validation
(`cross_validate` keeps them in `fold_K/evaluation/out_of_fold.npz`, brain voxels only): temperature scaling
sigmoid(logit(p) / T) (Guo et al. 2017), Platt scaling sigmoid(logit(p) / T + b) (Platt 1999), both by voxel
NLL, and isotonic regression on quantile bins (Zadrozny & Elkan 2002). The one with the lowest out-of-fold ECE
is kept (`Calibration`) and runs in the graph (inside `inference.Segmenter`) after the mask is taken, so
calibration never changes the segmentation. Why not a temperature alone: on the demo data its NLL optimum
raised the ECE (0.0096 -> 0.0164): the network is over-confident at high probabilities but slightly
under-confident in the ~95% of brain voxels near 0, which one scale cannot fix.

ECE (Naeini et al. 2015) here is the calibration error of the lesion probability: brain voxels are put in
`NUM_BINS` equal-width bins of p, and ECE = sum_b (n_b / n) |mean p_b - lesion fraction_b|.
"""

from __future__ import annotations

import dataclasses
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


@dataclasses.dataclass(frozen=True)
class Calibration:
    """A monotone map of the lesion probability, applied in the graph after the mask is taken.

    Either Platt / temperature scaling, p -> sigmoid(logit(p) / temperature + bias), or, when `knots_p` is given,
    a non-decreasing piecewise-linear map through (knots_p, knots_q) (isotonic regression, Zadrozny & Elkan
    2002), constant beyond the first and last knot. The default is the identity.
    """

    temperature: float = 1.0
    bias: float = 0.0
    knots_p: tuple[float, ...] = ()
    knots_q: tuple[float, ...] = ()

    def __post_init__(self):
        if not (self.temperature > 0.0 and math.isfinite(self.temperature)) or not math.isfinite(self.bias):
            raise ValueError(f"calibration: temperature must be positive and bias finite, got {self.temperature}, "
                             f"{self.bias}")
        p, q = np.asarray(self.knots_p, np.float64), np.asarray(self.knots_q, np.float64)
        if p.shape != q.shape or (p.size and (p.size < 2 or np.any(np.diff(p) <= 0) or np.any(np.diff(q) < 0)
                                               or p.min() < 0 or p.max() > 1 or q.min() < 0 or q.max() > 1)):
            raise ValueError("calibration: knots must be two equally long lists in [0, 1], p increasing and q "
                             "non-decreasing")

    @property
    def method(self) -> str:
        return "isotonic" if self.knots_p else ("identity" if self.is_identity else "platt")

    @property
    def is_identity(self) -> bool:
        return not self.knots_p and self.temperature == 1.0 and self.bias == 0.0

    def apply(self, probabilities):
        """tf: the map (no op at all for the identity)."""
        import tensorflow as tf

        if self.knots_p:
            knots_p = tf.constant(self.knots_p, tf.float32)
            knots_q = tf.constant(self.knots_q, tf.float32)
            flat = tf.reshape(probabilities, [1, -1])
            upper = tf.clip_by_value(tf.searchsorted(knots_p[tf.newaxis], flat, side="right")[0], 1,
                                     len(self.knots_p) - 1)
            x0, x1 = tf.gather(knots_p, upper - 1), tf.gather(knots_p, upper)
            y0, y1 = tf.gather(knots_q, upper - 1), tf.gather(knots_q, upper)
            weight = tf.clip_by_value((flat[0] - x0) / (x1 - x0), 0.0, 1.0)
            return tf.reshape(y0 + weight * (y1 - y0), tf.shape(probabilities))
        return apply_temperature(probabilities, self.temperature, self.bias)

    def apply_np(self, probabilities: np.ndarray) -> np.ndarray:
        """numpy twin of `apply` (float64)."""
        if self.knots_p:
            return np.interp(np.asarray(probabilities, np.float64), self.knots_p, self.knots_q)
        return apply_temperature_np(probabilities, self.temperature, self.bias)

    def to_dict(self) -> dict[str, Any]:
        return {"method": self.method, **dataclasses.asdict(self)}

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "Calibration":
        return cls(float(values.get("temperature", 1.0)), float(values.get("bias", 0.0)),
                   tuple(float(v) for v in values.get("knots_p", ())), tuple(float(v) for v in values.get("knots_q", ())))


def apply_temperature(probabilities, temperature: float, bias: float = 0.0):
    """tf: p -> sigmoid(logit(p) / temperature + bias); the identity (no op at all) for (1, 0)."""
    import tensorflow as tf

    if float(temperature) == 1.0 and float(bias) == 0.0:
        return probabilities
    clipped = tf.clip_by_value(probabilities, _EPSILON, 1.0 - _EPSILON)
    logits = tf.math.log(clipped) - tf.math.log1p(-clipped)
    return tf.sigmoid(logits / float(temperature) + float(bias))


def apply_temperature_np(probabilities: np.ndarray, temperature: float, bias: float = 0.0) -> np.ndarray:
    """numpy twin of `apply_temperature` (float64)."""
    p = np.clip(np.asarray(probabilities, np.float64), _EPSILON, 1.0 - _EPSILON)
    if temperature == 1.0 and bias == 0.0:
        return p
    return 1.0 / (1.0 + np.exp(-((np.log(p) - np.log1p(-p)) / temperature + bias)))


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


def fit_platt(probabilities: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    """(temperature, bias) minimising the NLL of sigmoid(logit(p) / T + b) (Newton's method on slope 1/T and b).

    Raises:
        ValueError: the fit gives a non-positive slope (probabilities that anti-correlate with the labels).
    """
    p = np.clip(np.asarray(probabilities, np.float64).ravel(), _EPSILON, 1.0 - _EPSILON)
    y = (np.asarray(labels).ravel() > 0).astype(np.float64)
    logits = np.log(p) - np.log1p(-p)
    slope, bias = 1.0, 0.0
    for _ in range(50):
        q = 1.0 / (1.0 + np.exp(-(slope * logits + bias)))
        weight = q * (1.0 - q)
        gradient = np.array([np.sum((q - y) * logits), np.sum(q - y)])
        hessian = np.array([[np.sum(weight * logits * logits), np.sum(weight * logits)],
                            [np.sum(weight * logits), np.sum(weight)]]) + 1e-9 * np.eye(2)
        step = np.linalg.solve(hessian, gradient)
        slope, bias = slope - step[0], bias - step[1]
        if np.max(np.abs(step)) < 1e-9:
            break
    if not slope > 0.0:
        raise ValueError(f"calibration: fitted slope {slope:.3g} is not positive (probabilities do not rank lesion)")
    return float(1.0 / slope), float(bias)


def fit_isotonic(probabilities: np.ndarray, labels: np.ndarray, num_knots: int = 48) -> Calibration:
    """Isotonic regression of the lesion fraction on p over `num_knots` quantile bins of p (fine where most
    voxels are, near 0), pooled adjacent violators for monotonicity; the knots are the bins' mean p."""
    p = np.asarray(probabilities, np.float64).ravel()
    y = (np.asarray(labels).ravel() > 0).astype(np.float64)
    edges = np.unique(np.quantile(p, np.linspace(0.0, 1.0, num_knots + 1)))
    index = np.clip(np.searchsorted(edges, p, side="right") - 1, 0, max(len(edges) - 2, 0))
    count = np.bincount(index, minlength=len(edges) - 1).astype(np.float64)
    keep = count > 0
    mean_p = (np.bincount(index, weights=p, minlength=len(edges) - 1)[keep] / count[keep]).tolist()
    fraction = (np.bincount(index, weights=y, minlength=len(edges) - 1)[keep] / count[keep]).tolist()
    weights = count[keep].tolist()
    blocks = []  # pooled adjacent violators: [value, weight, mean p's]
    for x_value, y_value, w in zip(mean_p, fraction, weights):
        blocks.append([y_value, w, [x_value]])
        while len(blocks) > 1 and blocks[-2][0] > blocks[-1][0]:
            value, weight, xs = blocks.pop()
            blocks[-1] = [(blocks[-1][0] * blocks[-1][1] + value * weight) / (blocks[-1][1] + weight),
                          blocks[-1][1] + weight, blocks[-1][2] + xs]
    knots_p, knots_q = [], []
    for value, _, xs in blocks:
        for x_value in xs:
            if not knots_p or x_value > knots_p[-1]:
                knots_p.append(float(x_value))
                knots_q.append(float(value))
    if len(knots_p) < 2:
        raise ValueError("calibration: too few distinct probabilities for an isotonic map")
    return Calibration(knots_p=tuple(knots_p), knots_q=tuple(knots_q))


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


def calibrate(out_of_fold_paths: Sequence[str], output_dir: str, method: str | None = None) -> dict[str, Any]:
    """Fits temperature, Platt and isotonic maps on out-of-fold probabilities, keeps `method` (default: the one
    with the lowest ECE on them) and writes `calibration.json` and `reliability.png` (before/after) to
    `output_dir`; returns the JSON document."""
    from strokenet_tf.data import atomic

    probabilities, labels = read_out_of_fold(out_of_fold_paths)
    fitters = {"temperature": lambda: Calibration(temperature=fit_temperature(probabilities, labels)),
               "platt": lambda: Calibration(*fit_platt(probabilities, labels)),
               "isotonic": lambda: fit_isotonic(probabilities, labels)}
    candidates, failed = {}, {}
    for name, fit in fitters.items():
        try:
            candidates[name] = fit()
        except ValueError as error:  # e.g. an untrained network whose probabilities do not rank lesion voxels
            failed[name] = str(error)
    if not candidates:
        raise ValueError(f"calibration: no map could be fitted ({'; '.join(failed.values())})")
    before = reliability_bins(probabilities, labels)
    fits = {name: {**fitted.to_dict(), "ece": expected_calibration_error(fitted.apply_np(probabilities), labels)}
            for name, fitted in candidates.items()}
    chosen = method if method is not None else min(fits, key=lambda name: fits[name]["ece"])
    if chosen not in candidates:
        raise ValueError(f"calibration method must be one of {', '.join(candidates)}, got {chosen!r}")
    fitted = candidates[chosen]
    after = reliability_bins(fitted.apply_np(probabilities), labels)
    document = {"description": "monotone map of the ensemble's lesion probability fitted on out-of-fold brain "
                               "voxels (the lowest out-of-fold ECE of the candidates unless chosen); applied in "
                               "the graph after the mask is taken, so it never changes the segmentation",
                "calibration": fitted.to_dict(), "candidates": fits, "failed_candidates": failed,
                "ece_before": before["ece"], "ece_after": after["ece"],
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


def read_calibration(folder: str) -> Calibration | None:
    """The `Calibration` of `folder/calibration.json`, or None when there is none.

    Raises:
        ValueError: a calibration file that is unreadable or holds a bad map (one line).
    """
    path = os.path.join(folder, CALIBRATION_FILE)
    if not os.path.isfile(path):
        return None
    try:
        with open(path, encoding="utf-8") as stream:
            document = json.load(stream)
        return Calibration.from_dict(document["calibration"])
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:
        raise ValueError(f"{path}: unreadable calibration ({cli_line(error)})") from None


def cli_line(error: Exception) -> str:
    return " ".join(str(error).split()) or type(error).__name__


def out_of_fold_path(fold_dir: str) -> str:
    return os.path.join(fold_dir, "evaluation", OUT_OF_FOLD_FILE)
