r"""The single-map threshold baseline: the best one-map, one-threshold rule, fitted on training cases.

Thresholding one perfusion map (e.g. relative CBF below a cut-off, or Tmax above one) is the classic
non-learned way to outline the ischaemic core; on ISLES 2018 it reaches ~0.29-0.30 Dice, against ~0.51-0.57
for trained networks. A network result is only worth reporting next to it, so this module fits the rule on
the training fold and scores it on the validation fold, with the same Dice as validation.

The rule is searched over every channel of the normalised input (`preprocess.normalize_image`, per-case
percentile scaling, so vendor scales do not matter), both directions (below / above) and thresholds at
`NUM_THRESHOLDS` quantiles of the pooled brain voxels; voxels outside the brain mask are never lesion.

Usage:
    python -m strokenet_tf.baselines --model=demo_runs/fold0      # the fold of a training run
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Sequence

import numpy as np
from absl import flags

from strokenet_tf import cli, metrics

TOOL = "strokenet_tf.baselines"

NUM_THRESHOLDS = 99


def _brain(image: np.ndarray) -> np.ndarray:
    """Brain voxels of a normalised image: `normalize_image` sets every channel to 0 outside the brain mask."""
    return np.any(image != 0.0, axis=-1)


@dataclasses.dataclass(frozen=True)
class ThresholdRule:
    """lesion = brain & (image[..., channel] < threshold) when direction is "below", "> threshold" for "above"."""

    channel: str
    direction: str
    threshold: float
    train_dice: float

    def apply(self, image: np.ndarray, channels: Sequence[str]) -> np.ndarray:
        """uint8 [depth, height, width] mask of one normalised image [depth, height, width, channels]."""
        values = image[..., list(channels).index(self.channel)]
        brain = _brain(image)
        lesion = values < self.threshold if self.direction == "below" else values > self.threshold
        return (brain & lesion).astype(np.uint8)

    def describe(self) -> str:
        sign = "<" if self.direction == "below" else ">"
        return f"{self.channel} {sign} {self.threshold:.3f} (normalised)"


RAPID_RELATIVE_CBF = 0.30
RAPID_TMAX_S = 6.0
NORMAL_TMAX_S = 4.0


def rapid_core(cbf: np.ndarray, tmax_s: np.ndarray, brain: np.ndarray) -> np.ndarray:
    """The RAPID-like core rule: relative CBF < 30 % of normal tissue, inside Tmax > 6 s.

    Normal tissue is the brain with Tmax < 4 s; its median CBF is the reference, so the rule works in any
    vendor scale (ISLES CBF is uint16 in arbitrary units). Tmax must be in seconds.

    Args:
        cbf, tmax_s: [depth, height, width] maps as stored; brain: bool mask of the same shape.

    Returns:
        uint8 mask, 0 everywhere when no normal tissue is found.
    """
    normal = brain & (tmax_s < NORMAL_TMAX_S) & (cbf > 0)
    if not np.any(normal):
        return np.zeros(cbf.shape, np.uint8)
    reference = float(np.median(cbf[normal]))
    return (brain & (cbf < RAPID_RELATIVE_CBF * reference) & (tmax_s > RAPID_TMAX_S)).astype(np.uint8)


def rapid_core_of_case(case) -> np.ndarray | None:
    """`rapid_core` on an `isles.Case`'s stored maps, inside the ISLES brain mask (summed perfusion maps > 0);
    None when the case has no CT_CBF or CT_Tmax channel."""
    from strokenet_tf.data import isles

    channels = list(case.channels)
    if isles.CBF not in channels or isles.TMAX not in channels:
        return None
    maps = [case.image[..., channels.index(m)] for m in isles.PERFUSION_MAPS if m in channels]
    return rapid_core(case.image[..., channels.index(isles.CBF)], case.image[..., channels.index(isles.TMAX)],
                      np.sum(maps, axis=0) > 0)


@dataclasses.dataclass(frozen=True)
class SortedValues:
    """One case's brain voxel values per channel, sorted, and those of its lesion voxels (what a threshold fit
    reads); made once per case by `sorted_values` and reusable by several fits (e.g. the folds of a split)."""

    brain: tuple[np.ndarray, ...]
    lesion: tuple[np.ndarray, ...]
    lesion_total: int


def sorted_values(case) -> SortedValues:
    """`SortedValues` of a labelled `preprocess.PreparedCase`."""
    brain = _brain(case.image)
    lesion = brain & (case.label > 0)
    channels = range(case.image.shape[-1])
    return SortedValues(tuple(np.sort(case.image[..., i][brain]) for i in channels),
                        tuple(np.sort(case.image[..., i][lesion]) for i in channels),
                        int(np.count_nonzero(case.label)))


def _dice_curves(values: Sequence[SortedValues], index: int, thresholds: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean Dice over cases of "below t" and "above t" for every t, from sorted values (no mask per threshold).

    For one case: predicted(t) = brain voxels below t, true positives(t) = lesion voxels among them, and
    Dice = 2 TP / (predicted + lesion voxels); "above" uses the complementary counts (strictly above t).
    """
    below, above = np.zeros(len(thresholds)), np.zeros(len(thresholds))
    for case in values:
        brain_values, lesion_values = case.brain[index], case.lesion[index]
        predicted_below = np.searchsorted(brain_values, thresholds, side="left")
        hits_below = np.searchsorted(lesion_values, thresholds, side="left")
        predicted_above = len(brain_values) - np.searchsorted(brain_values, thresholds, side="right")
        hits_above = len(lesion_values) - np.searchsorted(lesion_values, thresholds, side="right")
        for total, predicted, hits in ((below, predicted_below, hits_below), (above, predicted_above, hits_above)):
            denominator = predicted + case.lesion_total
            # Both empty: Dice 1, as `metrics.dice` scores it.
            total += np.where(denominator > 0, 2.0 * hits / np.maximum(denominator, 1), 1.0)
    return below / len(values), above / len(values)


def fit_threshold_rule(cases: Sequence, channels: Sequence[str],
                       values: Sequence[SortedValues] | None = None) -> ThresholdRule:
    """The rule with the best mean Dice over `cases` (`preprocess.PreparedCase` with labels).

    `values`: the cases' `sorted_values`, when already made (several fits over overlapping cases).

    Raises:
        ValueError: no cases, or cases without labels.
    """
    if not cases or any(case.label is None for case in cases):
        raise ValueError("fit_threshold_rule needs labelled cases")
    values = [sorted_values(case) for case in cases] if values is None else list(values)
    best = ThresholdRule(channels[0], "below", -np.inf, -1.0)
    quantiles = np.linspace(0.5, 99.5, NUM_THRESHOLDS)
    for index, channel in enumerate(channels):
        pooled = np.concatenate([case.brain[index] for case in values])
        thresholds = np.unique(np.percentile(pooled, quantiles))
        for direction, curve in zip(("below", "above"), _dice_curves(values, index, thresholds)):
            position = int(np.argmax(curve))
            if curve[position] > best.train_dice:
                best = ThresholdRule(channel, direction, float(thresholds[position]), float(curve[position]))
    return best


def evaluate_threshold_baseline(train_cases: Sequence, val_cases: Sequence, channels: Sequence[str]) -> dict:
    """Fits on `train_cases`, scores on `val_cases`; returns the rule and per-case / mean validation Dice."""
    rule = fit_threshold_rule(train_cases, channels)
    per_case = {case.case_id: float(metrics.dice(rule.apply(case.image, channels), case.label)) for case in val_cases}
    return {
        "rule": rule.describe(),
        "channel": rule.channel,
        "direction": rule.direction,
        "threshold": rule.threshold,
        "train_dice": rule.train_dice,
        "val_dice": float(np.mean(list(per_case.values()))),
        "val_dice_per_case": per_case,
    }


def score_held_out(rule: ThresholdRule, cases: Sequence, channels: Sequence[str]) -> dict:
    """The fitted rule and the RAPID-like rule on held-out labelled `isles.Case`s (raw maps, as stored)."""
    from strokenet_tf.data import preprocess

    channels = list(channels)
    rule_dice, rapid_dice = [], []
    for case in cases:
        prepared = preprocess.prepare_case(case, channels)
        rule_dice.append(float(metrics.dice(rule.apply(prepared.image, channels), case.label)))
        core = rapid_core_of_case(case)
        if core is not None:
            rapid_dice.append(float(metrics.dice(core, case.label)))
    summary = lambda v: {"mean": float(np.mean(v)), "std": float(np.std(v, ddof=1)) if len(v) > 1 else 0.0,  # noqa: E731
                         "n": len(v)} if v else None
    return {"rule_dice": summary(rule_dice), "rapid_dice": summary(rapid_dice)}


def define_flags(flag_values: flags.FlagValues = flags.FLAGS) -> None:
    """Defines the command's flags (by `__main__` only, so importing this module defines none)."""
    cli.define_shared(flag_values, "model", "output",
                      help={"model": "Training run folder: its config.json names the data, fold and channels.",
                            "output": "JSON file for the result (default: MODEL/threshold_baseline.json)."})
    flags.DEFINE_string("eval_data_dir", None, "Optional root of held-out labelled cases: the fitted rule and the "
                        "RAPID-like rule are scored on them too.", flag_values=flag_values)
    flags.DEFINE_string("eval_split", "TRAINING", "Split folder of --eval_data_dir (labelled cases).",
                        flag_values=flag_values)
    flags.mark_flag_as_required("model", flag_values=flag_values)
    cli.define_old_names(flag_values, TOOL, {"model_dir": "model"})


def main(argv):
    cli.reject_arguments(TOOL, argv)
    from strokenet_tf.config import ConfigError, TrainConfig
    from strokenet_tf.data import atomic, isles
    from strokenet_tf.training import checkpointing, loop

    model_dir = flags.FLAGS.model
    config_path = os.path.join(model_dir or "", checkpointing.CONFIG_FILE)
    if not model_dir or not os.path.isfile(config_path):
        cli.fail(TOOL, f"--model={model_dir}: not a training run (no config.json)")
    output = flags.FLAGS.output or os.path.join(model_dir, "threshold_baseline.json")
    if not os.path.isdir(os.path.dirname(os.path.abspath(output))):
        cli.fail(TOOL, f"--output={output}: folder {os.path.dirname(os.path.abspath(output))} does not exist")
    try:
        with open(config_path, encoding="utf-8") as stream:
            config = TrainConfig.from_json(stream.read())
        train_cases, val_cases = loop.load_fold(config)
    except (ConfigError, ValueError, isles.IslesFormatError) as error:
        cli.fail(TOOL, f"{config_path}: {error}")
    result = evaluate_threshold_baseline(train_cases, val_cases, config.channels)
    held_out_dir = flags.FLAGS.eval_data_dir
    if held_out_dir:
        try:
            held_out = isles.load_cases(held_out_dir, channels=config.channels, split=flags.FLAGS.eval_split,
                                        require_label=True)
        except (ValueError, isles.IslesFormatError) as error:
            cli.fail(TOOL, f"--eval_data_dir={held_out_dir}: {cli.first_line(str(error))}")
        rule = ThresholdRule(result["channel"], result["direction"], result["threshold"], result["train_dice"])
        result["held_out"] = {"data_dir": os.path.abspath(held_out_dir), **score_held_out(rule, held_out, config.channels)}
    try:
        atomic.atomic_write_text(output, json.dumps(result, indent=2) + "\n")
    except OSError as error:
        cli.fail(TOOL, cli.os_error_line(error, output))
    print(f"Best single-map threshold on fold {config.fold} ({len(train_cases)} training cases): {result['rule']}; "
          f"training Dice {result['train_dice']:.4f}, validation Dice {result['val_dice']:.4f} "
          f"({len(val_cases)} cases). Written to {output}")
    for name, scores in result.get("held_out", {}).items():
        if isinstance(scores, dict) and scores.get("n"):
            print(f"Held out ({held_out_dir}, {scores['n']} cases): {name.replace('_dice', '')} Dice "
                  f"{scores['mean']:.4f} +- {scores['std']:.4f}")


if __name__ == "__main__":
    cli.run(main, define_flags)
