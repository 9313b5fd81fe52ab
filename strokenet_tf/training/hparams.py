"""The run's session on TensorBoard's HParams dashboard: the settings it records, the five it shows, its metrics.

TensorBoard names runs after their folder relative to `--logdir`, and looks a session's metric up in the run
`<session>/<group>`. The session lives in MODEL_DIR itself, which is the run `.` when MODEL_DIR is the logdir
(as the README and the trainer's last line say): `./val` is no run there, so the metrics are written beside the
session, in MODEL_DIR, under `hparams/` tags with no group. They resolve with MODEL_DIR or any folder above it
as the logdir.

The dashboard ticks the first five settings after sorting them by `differs`, then by name; `SHOWN` are marked
as differing so that those five are the ones ticked (the others are listed, unticked).
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping

import tensorflow as tf
from tensorboard.plugins.hparams import api as hp
from tensorboard.plugins.hparams import api_pb2, metadata, plugin_data_pb2
from tensorboard.plugins.hparams import summary as hp_summary

from strokenet_tf.config import RUNTIME_FIELDS

SHOWN = ("batch_size", "curriculum", "fold", "learning_rate", "patch_size")
METRIC_TAG_PREFIX = "hparams/"
# (name, display name), in the dashboard's column order; its first five are ticked.
METRICS = (
    ("best_val_dice", "best val Dice"),
    ("best_epoch", "best epoch"),
    ("val_dice", "last val Dice"),
    ("val_precision", "last val precision"),
    ("val_recall", "last val recall"),
    ("train_loss", "last train loss"),
)
# Besides the runtime fields: the stages, which the per-stage values replace.
_LEFT_OUT = RUNTIME_FIELDS + ("curriculum.stages",)


def flatten_hparams(values: Mapping[str, Any], prefix: str = "") -> dict[str, bool | int | float | str]:
    """Nested config -> {"a.b": scalar}; lists, tuples and None become strings (HParams takes scalars only)."""
    flat: dict[str, bool | int | float | str] = {}
    for key, value in values.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten_hparams(value, f"{name}."))
        elif isinstance(value, (bool, int, float, str)):
            flat[name] = value
        else:
            flat[name] = str(value)
    return flat


def _per_stage(values: Iterable[str]) -> str:
    """One value when every stage has it, else the stages' values in order, comma-separated."""
    values = list(values)
    return values[0] if len(set(values)) == 1 else ", ".join(values)


def run_hparams(config) -> dict[str, bool | int | float | str]:
    """The settings of a `TrainConfig` as HParams: the curriculum's per-stage values first, then the rest
    (without `config.RUNTIME_FIELDS`, which do not change what a run computes).

    Per-stage settings (learning rate, patch size, focal gamma/alpha, Dice weight) are strings holding one value,
    or one per stage in order ("0.001, 0.0005"), so runs with and without a curriculum compare in one column.
    """
    stages = config.curriculum.stages
    values: dict[str, bool | int | float | str] = {
        "fold": config.fold,
        "batch_size": config.batch_size,
        "learning_rate": _per_stage(f"{stage.learning_rate:g}" for stage in stages),
        "patch_size": _per_stage(
            "full" if stage.patch_size is None else "x".join(map(str, stage.patch_size)) for stage in stages
        ),
        "curriculum": " | ".join(config.curriculum.to_strings()),
        "epochs": config.curriculum.total_epochs,
        "focal_gamma": _per_stage(
            f"{stage.gamma:g}" if stage.gamma == stage.gamma_end else f"{stage.gamma:g}->{stage.gamma_end:g}"
            for stage in stages
        ),
        "focal_alpha": _per_stage(f"{stage.alpha:g}" for stage in stages),
        "dice_weight": _per_stage(f"{stage.dice_weight:g}" for stage in stages),
    }
    for name, value in flatten_hparams(config.to_dict()).items():
        if name not in _LEFT_OUT and name not in values:
            values[name] = value
    return values


def _experiment_summary(names: Iterable[str]):
    """The `hp.hparams_config` summary with `SHOWN` marked as differing (the dashboard ticks those)."""
    summary = hp.hparams_config_pb(
        hparams=[hp.HParam(name) for name in names],
        metrics=[hp.Metric(METRIC_TAG_PREFIX + name, display_name=display) for name, display in METRICS],
    )
    value = summary.value[0]
    experiment = metadata.parse_experiment_plugin_data(value.metadata.plugin_data.content)
    for info in experiment.hparam_infos:
        info.differs = info.name in SHOWN
    value.metadata.CopyFrom(metadata.create_summary_metadata(plugin_data_pb2.HParamsPluginData(
        experiment=experiment)))
    return summary


def write_session(writer, values: Mapping[str, Any], trial_id: str) -> None:
    """Writes the experiment (settings and metric columns) and this run's session start to `writer`."""
    with writer.as_default():
        tf.summary.experimental.write_raw_pb(_experiment_summary(values).SerializeToString(), step=0)
        hp.hparams(dict(values), trial_id=trial_id)


def write_session_end(writer) -> None:
    """Marks the session finished (the dashboard's status column reads "success")."""
    with writer.as_default():
        summary = hp_summary.session_end_pb(api_pb2.STATUS_SUCCESS)
        tf.summary.experimental.write_raw_pb(summary.SerializeToString(), step=0)


def metric_scalars(best_val_dice: float, best_epoch: int, val_metrics: Mapping[str, float] | None = None,
                   train_loss: float | None = None) -> dict[str, float]:
    """The session's metric values as {tag: value}; the dashboard shows each tag's last value.

    `best_epoch` is 1-based; below 1 (no validation with a finite Dice yet) the best values are left out.
    """
    values = {"best_val_dice": best_val_dice, "best_epoch": best_epoch} if best_epoch >= 1 else {}
    for name, value in (val_metrics or {}).items():
        values[f"val_{name}"] = value
    if train_loss is not None:
        values["train_loss"] = train_loss
    known = {name for name, _ in METRICS}
    return {METRIC_TAG_PREFIX + name: float(value) for name, value in values.items() if name in known}
