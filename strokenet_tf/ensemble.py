"""Ensembles of training runs as one `inference.Segmenter` (nnU-Net's fold ensemble, in one graph).

`load_ensemble(["runs/cv"])` reads every finished fold of a `cross_validate` folder (or a list of run folders /
`.keras` files), checks that they take the same input (channels, padding multiples, normalisation) and builds a
`Segmenter` whose graph averages the members' probabilities, with left-right mirroring (on by default for an
ensemble) and the calibration map of the cross-validation's `calibration.json` when there is one. A single run stays today's single model (no mirroring, no calibration) unless asked otherwise: an
ensemble of one.

Example (needs a cross-validation folder, so the doctests do not run it):
```python
segmenter = load_ensemble(["runs/cv"])            # fold_0 ... fold_4, mirrored, calibrated
outputs = segmenter.analyse_case(case)           # probabilities, mask, uncertainty, report
```
"""

from __future__ import annotations

import json
import os
import re
from typing import Any, Sequence

from strokenet_tf import calibration, errors, inference
from strokenet_tf.data import preprocess
from strokenet_tf.training import checkpointing

_FOLD_PATTERN = re.compile(r"^fold_(\d+)$")
PRECISIONS = ("auto", "float32", "bfloat16", "mixed_float16")
CV_SUMMARY_FILE = "cv_summary.json"
EVAL_SUMMARY = os.path.join("evaluation", "summary.json")


def fold_dirs(path: str) -> list[str]:
    """The fold_K folders of a cross-validation folder, by K; [] for anything else."""
    if not os.path.isdir(path):
        return []
    folds = [(int(m.group(1)), name) for name in os.listdir(path)
             if (m := _FOLD_PATTERN.match(name)) and os.path.isdir(os.path.join(path, name))]
    return [os.path.join(path, name) for _, name in sorted(folds)]


def is_cross_validation_dir(path: str) -> bool:
    """A `cross_validate` MODEL_DIR: holds fold_K run folders and no run of its own."""
    return bool(fold_dirs(path)) and not os.path.isfile(os.path.join(path, checkpointing.CONFIG_FILE))


def resolve_members(paths: Sequence[str], source: str = "best") -> list[str]:
    """Run folders / `.keras` files of an ensemble: a cross-validation folder expands to its folds.

    A fold of a cross-validation folder counts as finished when cross_validate has scored it
    (fold_K/evaluation/summary.json) and its model exists.

    Raises:
        inference.ModelLoadError: no member, or a fold without a finished model (one line naming it).
    """
    members = []
    for path in paths:
        if not os.path.exists(path):
            raise inference.ModelLoadError(f"{path}: no such model folder or file (run folder, .keras file or cross-validation folder)")
        if is_cross_validation_dir(path):
            for fold in fold_dirs(path):
                if not os.path.isfile(os.path.join(fold, EVAL_SUMMARY)):
                    raise inference.ModelLoadError(
                        f"{fold}: no finished model (cross_validate has not finished this fold: no {EVAL_SUMMARY}); "
                        f"finish it or pass the finished folds as a list")
                if source == "best" and not os.path.isfile(os.path.join(fold, checkpointing.BEST_MODEL_FILE)):
                    raise inference.ModelLoadError(f"{fold}: no finished model (no {checkpointing.BEST_MODEL_FILE})")
                members.append(fold)
        else:
            members.append(path)
    if not members:
        raise inference.ModelLoadError("ensemble: no member given")
    return members


def _input_contract(trained: inference.TrainedModel) -> dict[str, Any]:
    """What must be equal for members to share one normalised, padded input."""
    in_channels = trained.model.input_shape[-1]
    return {
        "channels": tuple(trained.channels),
        "input channels": in_channels,
        "input spatial shape": tuple(trained.model.input_shape[1:-1]),
        "padding multiples": tuple(trained.multiples),
        "preprocessing": json.dumps(trained.run_config.get("preprocessing", preprocess.normalization_constants()),
                                    sort_keys=True),
        "pipeline multiples": tuple(trained.run_config.get("pipeline", {}).get("multiples", trained.multiples)),
    }


def check_compatible(members: Sequence[inference.TrainedModel], names: Sequence[str]) -> None:
    """Raises inference.ModelLoadError naming the first member and setting that differs from the first member."""
    reference = _input_contract(members[0])
    for trained, name in zip(members[1:], names[1:]):
        contract = _input_contract(trained)
        for key, value in reference.items():
            if contract[key] != value:
                raise inference.ModelLoadError(f"ensemble: {name} differs from {names[0]} in {key}: "
                                               f"{contract[key]} vs {value}; members must take the same input")


def default_calibration(paths: Sequence[str]) -> calibration.Calibration:
    """The calibration of the cross-validation folder's calibration.json (one CV folder given), else none."""
    if len(paths) == 1 and is_cross_validation_dir(paths[0]):
        try:
            fitted = calibration.read_calibration(paths[0])
        except ValueError as error:
            raise inference.ModelLoadError(str(error)) from None
        return calibration.Calibration() if fitted is None else fitted
    return calibration.Calibration()


def cpu_flags(cpuinfo: str | None = None) -> set[str]:
    """The CPU feature flags of /proc/cpuinfo (or of the given text); empty where it cannot be read."""
    if cpuinfo is None:
        try:
            with open("/proc/cpuinfo", encoding="utf-8") as stream:
                cpuinfo = stream.read()
        except OSError:
            return set()
    flags = set()
    for line in cpuinfo.splitlines():
        if line.startswith("flags"):
            flags.update(line.split(":", 1)[1].split())
    return flags


def cpu_has_bf16(cpuinfo: str | None = None) -> bool:
    """True where oneDNN runs bfloat16 natively: AVX512_BF16 or AMX-BF16 in /proc/cpuinfo's flags."""
    return bool(cpu_flags(cpuinfo) & {"avx512_bf16", "amx_bf16"})


def cpu_has_amx(cpuinfo: str | None = None) -> bool:
    """True where oneDNN has AMX tiles for bfloat16 (Sapphire Rapids and later)."""
    return "amx_bf16" in cpu_flags(cpuinfo)


def resolve_precision(precision: str, is_ensemble: bool) -> str:
    """The dtype policy of the members: "auto" is mixed_float16 on a GPU, bfloat16 on a CPU with AMX, float32
    elsewhere, and float32 for a single run (today's single model, bit for bit).

    AVX512_BF16 without AMX (AMD Zen 4) is not enough: there, 5 members with mirroring ran no faster in bfloat16
    than in float32 end to end (README, Ensembles), so "auto" keeps float32; `precision="bfloat16"` still asks for it.
    """
    if precision not in PRECISIONS:
        raise inference.ModelLoadError("precision", f": expected one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision != "auto":
        return precision
    if not is_ensemble:
        return "float32"
    import tensorflow as tf

    if tf.config.list_physical_devices("GPU"):
        return "mixed_float16"
    return "bfloat16" if cpu_has_amx() else "float32"


def with_policy(trained: inference.TrainedModel, policy: str):
    """The member's network rebuilt under a Keras dtype policy with the same weights (float32 in and out: the
    logits layer stays float32); for "float32" the model as saved (a mixed_float16 run stays so)."""
    from strokenet_tf.model import strokenet

    if policy == "float32":
        return trained.model
    model = strokenet.StrokeNet(trained.model_config, dtype=policy)  # the architecture the model carries
    try:
        model.set_weights(trained.model.get_weights())
    except ValueError as error:
        raise inference.ModelLoadError(f"{trained.source}: cannot run under {policy} ({error})") from None
    return model


def load_ensemble(paths: Sequence[str], source: str = "best", threshold: float = inference.DEFAULT_THRESHOLD,
                  mirror: bool | None = None, temperature: float | None = None,
                  calibrate: bool = True, precision: str = "float32") -> inference.Segmenter:
    """A `Segmenter` averaging every member of `paths` (see `resolve_members`).

    Args:
        paths: run folders, `.keras` files, or one cross-validation folder.
        source: "best" or "latest" weights of each run.
        threshold: mask = calibrated ensemble probability >= threshold.
        mirror: left-right test-time mirroring; None = on for an ensemble (a CV folder or several runs), off for
            a single run (today's single-model output).
        temperature: None = the CV folder's calibration.json (none without one or for a list of runs); a number:
            temperature scaling by it instead.
        calibrate: False: no calibration at all (raw averaged probabilities).
        precision: dtype policy of the members (`PRECISIONS`; "auto": see `resolve_precision`).

    Raises:
        inference.ModelLoadError: one line naming the member or setting.
    """
    member_paths = resolve_members(paths, source)
    members = [inference.load_run(path, source) for path in member_paths]
    check_compatible(members, member_paths)
    is_ensemble = len(member_paths) > 1 or any(is_cross_validation_dir(p) for p in paths)
    mirror = is_ensemble if mirror is None else bool(mirror)
    if not calibrate:
        fitted = calibration.Calibration()
    elif temperature is not None:
        try:
            fitted = calibration.Calibration(temperature=float(temperature))
        except ValueError as error:
            raise inference.ModelLoadError("temperature", f": {error}") from None
    else:
        fitted = default_calibration(paths)
    first = members[0]
    policy = resolve_precision(precision, is_ensemble)
    segmenter = inference.Segmenter([with_policy(m, policy) for m in members], first.channels, first.multiples,
                                    threshold, mirror=mirror, calibration=fitted)
    segmenter.precision = policy
    segmenter.trained = first
    segmenter.members = members
    segmenter.member_paths = member_paths
    segmenter.source = ",".join(member_paths) if len(member_paths) > 1 else first.source
    return segmenter


def best_fold(cv_dir: str, metric: str = "dice") -> str:
    """The fold folder with the highest mean `metric` in cv_summary.json (the "single best fold")."""
    path = os.path.join(cv_dir, CV_SUMMARY_FILE)
    try:
        with open(path, encoding="utf-8") as stream:
            folds = json.load(stream)["folds"]
        fold = max(folds, key=lambda k: -1.0 if folds[k].get(metric) is None else folds[k][metric])
    except (OSError, ValueError, KeyError) as error:
        raise inference.ModelLoadError(f"{path}: unreadable cross-validation summary ({error})") from None
    return os.path.join(cv_dir, f"fold_{fold}")


def uncertainty_summary(outputs: dict[str, Any], spacing_mm: Sequence[float]) -> dict[str, Any] | None:
    """Per-case uncertainty of `Segmenter.analyse_case` outputs: the members' core-volume interval (min-max),
    each member's Dice against the ensemble mask, the disagreement flag and the mean entropy inside the core.
    None for outputs without member volumes (an export made before the report signature)."""
    import numpy as np

    if inference.MEMBER_VOLUMES_KEY not in outputs:
        return None
    volumes = [float(v) for v in np.atleast_1d(outputs[inference.MEMBER_VOLUMES_KEY])]
    mask = np.asarray(outputs[inference.MASK_KEY]) > 0
    entropy = np.asarray(outputs[inference.UNCERTAINTY_KEY])
    return {
        "n_members": len(volumes),
        "member_core_volumes_ml": volumes,
        "core_volume_interval_ml": [min(volumes), max(volumes)],
        "member_dice_vs_ensemble": [float(v) for v in np.atleast_1d(outputs["member_dice"])],
        "members_disagree": bool(outputs[inference.DISAGREE_KEY]),
        "disagreement_rule": (f"core-volume range > {inference.DISAGREEMENT_RELATIVE_RANGE:g} x the ensemble core "
                              f"volume (at least {inference.DISAGREEMENT_MIN_VOLUME_ML:g} mL), or a member's Dice "
                              f"vs the ensemble mask < "
                              f"{inference.DISAGREEMENT_MIN_DICE:g}"),
        "mean_entropy_bits_in_core": float(entropy[mask].mean()) if mask.any() else None,
        "uncertain_volume_ml": float(np.count_nonzero(entropy > 0.5)) * float(np.prod(spacing_mm)) / 1000.0,
    }


def load_segmenter(path: str, source: str = "best", threshold: float = inference.DEFAULT_THRESHOLD,
                   mirror: bool | None = None, precision: str = "float32"):
    """A `Segmenter` for a training run / `.keras` file, an ensemble (a cross-validation folder, or run folders
    separated by commas; see `load_ensemble`), or an `inference.SavedModelSegmenter` for an export version folder.

    Raises:
        inference.ModelLoadError: one line naming the path.
    """
    if os.path.isdir(path) and inference.is_saved_model_dir(path):
        if mirror is not None:
            raise inference.ModelLoadError(f"{path}: an exported SavedModel fixes its mirroring in its metadata; "
                                           f"drop {errors.ref('mirror')}")
        return inference.SavedModelSegmenter(path)
    return load_ensemble([p for p in path.split(",") if p], source, threshold, mirror=mirror, precision=precision)
