"""Run state, "latest" checkpoints for resuming, the best-by-validation-Dice export and config.json.

Resuming: `tf.train.Checkpoint` holds the model, the optimizer (moments, iteration count, loss scale) and the
run state below; `tf.train.CheckpointManager` keeps the newest few under MODEL_DIR/checkpoints. A TF checkpoint
becomes visible only when the manager rewrites the small `checkpoint` index file, which it does atomically
(temp file + rename) after the data and index files are complete, so a process killed mid-save leaves the
previous checkpoint as the latest one.

Best model: MODEL_DIR/best.keras (`model.save`, the Keras v3 format) and MODEL_DIR/best.json (epoch, metrics),
each written to a temporary name in the same folder and moved into place with `os.replace`.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Mapping

import tensorflow as tf

from strokenet_tf import cli
from strokenet_tf.data import atomic

CHECKPOINT_SUBDIR = "checkpoints"
CONFIG_FILE = "config.json"
BEST_MODEL_FILE = "best.keras"
BEST_METRICS_FILE = "best.json"


class ModelDirError(ValueError):
    """A model_dir that cannot be used for this run; the message is one line naming --model_dir."""


@dataclasses.dataclass
class RunState:
    """Counters saved with every checkpoint (plain host variables, outside any strategy scope).

    Attributes:
        epoch: 0-based epoch in progress (== number of finished epochs).
        step_in_epoch: optimizer steps already done in `epoch`.
        global_step: optimizer steps done since the start of the run.
        stage: curriculum stage index of `epoch` (kept for logs and checks).
        best_val_dice: best mean validation Dice so far (-1 before the first validation).
        best_epoch: epoch of `best_val_dice` (-1 before the first validation).
    """

    epoch: tf.Variable
    step_in_epoch: tf.Variable
    global_step: tf.Variable
    stage: tf.Variable
    best_val_dice: tf.Variable
    best_epoch: tf.Variable

    @classmethod
    def create(cls) -> "RunState":
        def counter(name):
            return tf.Variable(0, dtype=tf.int64, trainable=False, name=name)

        return cls(
            epoch=counter("epoch"),
            step_in_epoch=counter("step_in_epoch"),
            global_step=counter("global_step"),
            stage=counter("stage"),
            best_val_dice=tf.Variable(-1.0, dtype=tf.float64, trainable=False, name="best_val_dice"),
            best_epoch=tf.Variable(-1, dtype=tf.int64, trainable=False, name="best_epoch"),
        )

    def trackables(self) -> dict[str, tf.Variable]:
        return {field.name: getattr(self, field.name) for field in dataclasses.fields(self)}

    def as_dict(self) -> dict[str, float | int]:
        return {name: variable.numpy().item() for name, variable in self.trackables().items()}


def make_checkpoint(model, optimizer, state: RunState) -> tf.train.Checkpoint:
    """One checkpoint object holding the model, the optimizer and the run state."""
    return tf.train.Checkpoint(model=model, optimizer=optimizer, **state.trackables())


def make_manager(checkpoint: tf.train.Checkpoint, directory: str, max_to_keep: int) -> tf.train.CheckpointManager:
    """A manager writing `ckpt-<global step>` files under directory/checkpoints."""
    return tf.train.CheckpointManager(
        checkpoint, os.path.join(directory, CHECKPOINT_SUBDIR), max_to_keep=max_to_keep, checkpoint_name="ckpt"
    )


def latest_checkpoint(model_dir: str) -> str | None:
    """Path prefix of the newest complete checkpoint under model_dir/checkpoints, or None."""
    return tf.train.latest_checkpoint(os.path.join(model_dir, CHECKPOINT_SUBDIR))


def restore_latest(checkpoint: tf.train.Checkpoint, model_dir: str) -> str | None:
    """Restores the newest checkpoint of model_dir into `checkpoint`; returns its path (None if none).

    The model and optimizer must be built first so that every saved value has a variable to go to.

    Raises:
        ModelDirError: when the checkpoint does not match the model (e.g. other widths).
    """
    path = latest_checkpoint(model_dir)
    if path is None:
        return None
    try:
        checkpoint.restore(path).assert_existing_objects_matched()
    except (AssertionError, ValueError, tf.errors.OpError) as error:
        raise ModelDirError(f"--model_dir: cannot restore {path}: "
                            f"{cli.first_line(error, type(error).__name__)}") from None
    return path


def save_best_model(model, directory: str, epoch: int, metrics: Mapping[str, float]) -> str:
    """Atomically writes directory/best.keras and directory/best.json (epoch, metrics); returns the .keras path."""
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, BEST_MODEL_FILE)
    # The temporary name ends in "best.keras", the suffix model.save wants.
    with atomic.atomic_path(path) as temporary:
        model.save(str(temporary))
    values = {key: value if isinstance(value, int) else float(value) for key, value in metrics.items()}
    record = {"epoch": int(epoch), "model": BEST_MODEL_FILE, **values}
    atomic.atomic_write_text(os.path.join(directory, BEST_METRICS_FILE), json.dumps(record, indent=2) + "\n")
    return path


def read_best_record(model_dir: str) -> dict[str, Any] | None:
    """Contents of model_dir/best.json, or None when there is none yet."""
    path = os.path.join(model_dir, BEST_METRICS_FILE)
    if not os.path.exists(path):
        return None
    with open(path, encoding="utf-8") as stream:
        return json.load(stream)


def _differences(saved: Mapping[str, Any], current: Mapping[str, Any], prefix: str = "") -> list[str]:
    changes = []
    for key in sorted(set(saved) | set(current)):
        old, new = saved.get(key, "<unset>"), current.get(key, "<unset>")
        if isinstance(old, Mapping) and isinstance(new, Mapping):
            changes.extend(_differences(old, new, f"{prefix}{key}."))
        elif old != new:
            changes.append(f"{prefix}{key}: {json.dumps(old)} -> {json.dumps(new)}")
    return changes


def check_or_write_config(
    model_dir: str,
    config_dict: Mapping[str, Any],
    ignored_keys: tuple[str, ...] = (),
    write: bool = True,
) -> bool:
    """Refuses a model_dir that holds a different run; records the config of a new one.

    Args:
        model_dir: the run's folder.
        config_dict: JSON-ready config of this run (`TrainConfig.to_dict()`).
        ignored_keys: top-level keys that may change between a run and its resumption (e.g. the strategy).
        write: whether this process writes config.json for a new run (the chief only).

    Returns:
        True when model_dir already held this run (a resume), False for a new run.

    Raises:
        ModelDirError: one line naming --model_dir and the first differing settings.
    """
    path = os.path.join(model_dir, CONFIG_FILE)
    if os.path.exists(path):
        try:
            with open(path, encoding="utf-8") as stream:
                saved = json.load(stream)
        except (OSError, ValueError) as error:
            raise ModelDirError(
                f"--model_dir={model_dir}: cannot read {path} ({error}); use a new --model_dir"
            ) from None
        comparable_saved = {k: v for k, v in saved.items() if k not in ignored_keys}
        comparable_now = {k: v for k, v in json.loads(json.dumps(config_dict)).items() if k not in ignored_keys}
        changes = _differences(comparable_saved, comparable_now)
        if changes:
            shown = "; ".join(changes[:3]) + (f"; and {len(changes) - 3} more" if len(changes) > 3 else "")
            raise ModelDirError(
                f"--model_dir={model_dir} holds a run with different settings ({shown}); "
                "resume it with its original flags or use a new --model_dir"
            )
        return True
    if latest_checkpoint(model_dir) is not None:
        raise ModelDirError(
            f"--model_dir={model_dir} holds checkpoints but no {CONFIG_FILE}; use a new --model_dir"
        )
    if write:
        os.makedirs(model_dir, exist_ok=True)
        atomic.atomic_write_text(path, json.dumps(config_dict, indent=2, sort_keys=True) + "\n")
    return False
