"""Run state, "latest" checkpoints for resuming, the best-by-validation-Dice export and config.json.

Resuming: `tf.train.Checkpoint` holds the model, the optimizer (moments, iteration count, loss scale), the
model's random state (dropout draws a new mask every step from a `keras.random.SeedGenerator` whose counter
is not a weight: without it a resumed run drops other units than the uninterrupted one), the weights of the
best validation so far (`best_export`) and the run state below; `tf.train.CheckpointManager` keeps the newest
few under MODEL_DIR/checkpoints. A TF checkpoint becomes visible only when the manager rewrites the small
`checkpoint` index file, which it does atomically (temp file + rename) after the data and index files are
complete, so a process killed mid-save leaves the previous checkpoint as the latest one. A checkpoint damaged
later (a truncated or altered file) is found by reading every tensor before restoring
(`restore_newest_intact`); the next older intact one is used instead.

Best model: MODEL_DIR/best.keras (`model.save`, the Keras v3 format) and MODEL_DIR/best.json (epoch, metrics),
each written to a temporary name in the same folder and moved into place with `os.replace`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from typing import Any, Mapping

import tensorflow as tf
from absl import logging

from strokenet_tf import cli, errors
from strokenet_tf.data import atomic

CHECKPOINT_SUBDIR = "checkpoints"
CONFIG_FILE = "config.json"
BEST_MODEL_FILE = "best.keras"
BEST_METRICS_FILE = "best.json"


class ModelDirError(errors.InputError):
    """A model_dir that cannot be used for this run; the message is one line naming the field `model_dir`."""


@dataclasses.dataclass
class RunState:
    """Counters saved with every checkpoint (plain host variables, outside any strategy scope).

    Attributes:
        epoch: 0-based epoch in progress (== number of finished epochs).
        step_in_epoch: optimizer steps already done in `epoch`.
        global_step: optimizer steps done since the start of the run.
        epoch_loss_sum: sum of the training losses of `epoch` so far (its mean is logged at the epoch's end).
        stage: curriculum stage index of `epoch` (kept for logs and checks).
        best_val_dice: best mean validation Dice so far (-1 before the first validation).
        best_epoch: epoch of `best_val_dice` (-1 before the first validation).
        best_step: global step of `best_val_dice` (-1 before the first validation, and in checkpoints written
            before the best weights were saved with the run).
    """

    epoch: tf.Variable
    step_in_epoch: tf.Variable
    global_step: tf.Variable
    epoch_loss_sum: tf.Variable
    stage: tf.Variable
    best_val_dice: tf.Variable
    best_epoch: tf.Variable
    best_step: tf.Variable

    @classmethod
    def create(cls) -> "RunState":
        def counter(name):
            return tf.Variable(0, dtype=tf.int64, trainable=False, name=name)

        return cls(
            epoch=counter("epoch"),
            step_in_epoch=counter("step_in_epoch"),
            global_step=counter("global_step"),
            epoch_loss_sum=tf.Variable(0.0, dtype=tf.float64, trainable=False, name="epoch_loss_sum"),
            stage=counter("stage"),
            best_val_dice=tf.Variable(-1.0, dtype=tf.float64, trainable=False, name="best_val_dice"),
            best_epoch=tf.Variable(-1, dtype=tf.int64, trainable=False, name="best_epoch"),
            best_step=tf.Variable(-1, dtype=tf.int64, trainable=False, name="best_step"),
        )

    def trackables(self) -> dict[str, tf.Variable]:
        return {field.name: getattr(self, field.name) for field in dataclasses.fields(self)}

    def as_dict(self) -> dict[str, float | int]:
        return {name: variable.numpy().item() for name, variable in self.trackables().items()}


def random_state_variables(model) -> list[tf.Variable]:
    """The model's random state: every variable of `model.variables` that is not a weight (the counters of the
    `keras.random.SeedGenerator`s behind dropout), as TensorFlow variables, in layer order."""
    weights = {id(weight) for weight in model.weights}
    return [variable.value for variable in model.variables if id(variable) not in weights]


def make_checkpoint(model, optimizer, state: RunState, best_weights=None) -> tf.train.Checkpoint:
    """One checkpoint object holding the model, its random state, the optimizer, the run state and (optionally)
    the best weights so far (a list of variables, see `best_export.BestWeights`)."""
    extra = {"best_weights": list(best_weights)} if best_weights is not None else {}
    return tf.train.Checkpoint(model=model, optimizer=optimizer, random_state=random_state_variables(model),
                               **extra, **state.trackables())


def make_manager(checkpoint: tf.train.Checkpoint, directory: str, max_to_keep: int) -> tf.train.CheckpointManager:
    """A manager writing `ckpt-<global step>` files under directory/checkpoints."""
    return tf.train.CheckpointManager(
        checkpoint, os.path.join(directory, CHECKPOINT_SUBDIR), max_to_keep=max_to_keep, checkpoint_name="ckpt"
    )


def latest_checkpoint(model_dir: str) -> str | None:
    """Path prefix of the newest complete checkpoint under model_dir/checkpoints, or None."""
    return tf.train.latest_checkpoint(os.path.join(model_dir, CHECKPOINT_SUBDIR))


def _step_of(path: str) -> int:
    try:
        return int(path.rsplit("-", 1)[1])
    except (IndexError, ValueError):
        return -1


def checkpoint_candidates(model_dir: str) -> list[str]:
    """Checkpoint prefixes under model_dir/checkpoints, newest (highest step) first.

    Those the `checkpoint` index lists, plus complete-looking ones (with an .index file) it does not list: a
    save killed after its files were in place but before the index named it, or an index that cannot be read.
    """
    directory = os.path.join(model_dir, CHECKPOINT_SUBDIR)
    paths = set()
    try:
        state = tf.train.get_checkpoint_state(directory)
    except Exception:  # noqa: BLE001 - a damaged index file; the .index files below still name the checkpoints
        state = None
    if state is not None:
        paths.update(os.path.join(directory, os.path.basename(p)) for p in state.all_model_checkpoint_paths)
    paths.update(p[: -len(".index")] for p in tf.io.gfile.glob(os.path.join(directory, "ckpt-*.index")))
    return sorted(paths, key=_step_of, reverse=True)


def checkpoint_read_error(path: str) -> str | None:
    """None when every tensor of the checkpoint at `path` reads back (TensorFlow checks each one's CRC32C),
    else the reason in one line, e.g. "IndexError: Read less bytes than requested"."""
    try:
        reader = tf.train.load_checkpoint(path)
        for name in reader.get_variable_to_shape_map():
            reader.get_tensor(name)
    except Exception as error:  # noqa: BLE001 - a damaged file raises IndexError, DataLossError, NotFoundError...
        return f"{type(error).__name__}: {cli.first_line(error, 'unreadable')}"
    return None


def newest_intact_checkpoint(model_dir: str, warn=logging.warning) -> str | None:
    """The newest checkpoint of model_dir that reads back completely; each newer damaged one is reported
    through `warn` in one line. None when there is no checkpoint.

    Raises:
        ModelDirError: checkpoints exist but none is intact (one line saying how to start fresh).
    """
    candidates = checkpoint_candidates(model_dir)
    damaged = []
    for path in candidates:
        reason = checkpoint_read_error(path)
        if reason is None:
            for bad, bad_reason in damaged:
                warn(f"checkpoint {bad} cannot be read ({bad_reason}); using the older intact checkpoint {path}")
            return path
        damaged.append((path, reason))
    if damaged:
        names = ", ".join(os.path.basename(path) for path, _ in damaged)
        raise ModelDirError(
            "model_dir", f"={model_dir}: no intact checkpoint to resume from ({names} cannot be read: "
            f"{damaged[0][1]}); to start fresh, delete {model_dir} or use a new {errors.ref('model_dir')}"
        )
    return None


def settle_index(model_dir: str, resumed_from: str, max_to_keep: int) -> None:
    """Makes the checkpoint index name `resumed_from` as the latest (chief only, before the manager reads it).

    Checkpoints newer than it (damaged ones that `newest_intact_checkpoint` skipped) are moved into
    model_dir/checkpoints/damaged/ so that nothing resumes from them or lists them again; an index that does
    not name `resumed_from` as its latest (unreadable, or a save killed before it updated the index) is
    rewritten. A no-op in the usual case.
    """
    directory = os.path.join(model_dir, CHECKPOINT_SUBDIR)
    candidates = checkpoint_candidates(model_dir)
    newer = [path for path in candidates if _step_of(path) > _step_of(resumed_from)]
    if newer:
        aside = os.path.join(directory, "damaged")
        os.makedirs(aside, exist_ok=True)
        for path in newer:
            for file in tf.io.gfile.glob(path + ".*"):
                os.replace(file, os.path.join(aside, os.path.basename(file)))
    try:
        state = tf.train.get_checkpoint_state(directory)
    except Exception:  # noqa: BLE001 - an unreadable index is rewritten below
        state = None
    if newer or state is None or os.path.basename(state.model_checkpoint_path) != os.path.basename(resumed_from):
        kept = list(reversed([path for path in candidates if _step_of(path) <= _step_of(resumed_from)][:max_to_keep]))
        # The index's text format, names relative to it; timestamps after last_preserved_timestamp, so that the
        # manager keeps managing (and in time deleting) these checkpoints.
        times = [os.path.getmtime(path + ".index") for path in kept]
        lines = [f'model_checkpoint_path: "{os.path.basename(resumed_from)}"']
        lines += [f'all_model_checkpoint_paths: "{os.path.basename(path)}"' for path in kept]
        lines += [f"all_model_checkpoint_timestamps: {time!r}" for time in times]
        lines.append(f"last_preserved_timestamp: {min(times) - 1.0!r}")
        atomic.atomic_write_text(os.path.join(directory, "checkpoint"), "\n".join(lines) + "\n")


def restore_newest_intact(checkpoint: tf.train.Checkpoint, model_dir: str, warn=logging.warning) -> str | None:
    """Restores the newest intact checkpoint of model_dir into `checkpoint`; returns its path (None if none).

    Every tensor is read once before restoring, so a damaged file never half-restores the model; damaged
    newer checkpoints are reported (one line each) and skipped. The model and optimizer must be built first so
    that every saved value has a variable to go to.

    Raises:
        ModelDirError: no checkpoint is intact, or one does not match the model (e.g. other widths).
    """
    path = newest_intact_checkpoint(model_dir, warn)
    if path is None:
        return None
    try:
        checkpoint.restore(path).assert_existing_objects_matched()
    except (AssertionError, ValueError, tf.errors.OpError) as error:
        raise ModelDirError("model_dir", f": cannot restore {path}: "
                            f"{cli.first_line(error, type(error).__name__)}") from None
    return path


def file_sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def save_best_model(model, directory: str, epoch: int, metrics: Mapping[str, float]) -> str:
    """Atomically writes directory/best.keras and directory/best.json (epoch, metrics, the .keras file's SHA-256
    so that a best.json never vouches for another best.keras); returns the .keras path."""
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, BEST_MODEL_FILE)
    # The temporary name ends in "best.keras", the suffix model.save wants.
    with atomic.atomic_path(path) as temporary:
        model.save(str(temporary))
        digest = file_sha256(str(temporary))
    values = {key: value if isinstance(value, int) else float(value) for key, value in metrics.items()}
    record = {"epoch": int(epoch), "model": BEST_MODEL_FILE, "model_sha256": digest, **values}
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


def _without(config: Mapping[str, Any], keys: tuple[str, ...]) -> dict[str, Any]:
    """`config` without `keys`; "a.b" names key b of the mapping under a."""
    kept = {k: v for k, v in config.items() if k not in keys}
    for key in keys:
        outer, _, inner = key.partition(".")
        if inner and isinstance(kept.get(outer), Mapping):
            kept[outer] = _without(kept[outer], (inner,))
    return kept


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
        ignored_keys: keys that may change between a run and its resumption (e.g. the strategy; "a.b" for a
            nested key).
        write: whether this process writes config.json for a new run (the chief only).

    Returns:
        True when model_dir already held this run (a resume), False for a new run.

    Raises:
        ModelDirError: one line naming model_dir and the first differing settings.
    """
    path = os.path.join(model_dir, CONFIG_FILE)
    if os.path.exists(path):
        try:
            with open(path, encoding="utf-8") as stream:
                saved = json.load(stream)
        except (OSError, ValueError) as error:
            raise ModelDirError(
                "model_dir", f"={model_dir}: cannot read {path} ({error}); use a new {errors.ref('model_dir')}"
            ) from None
        comparable_saved = _without(saved, ignored_keys)
        comparable_now = _without(json.loads(json.dumps(config_dict)), ignored_keys)
        changes = _differences(comparable_saved, comparable_now)
        if changes:
            shown = "; ".join(changes[:3]) + (f"; and {len(changes) - 3} more" if len(changes) > 3 else "")
            raise ModelDirError(
                "model_dir", f"={model_dir} holds a run with different settings ({shown}); "
                f"resume it with its original settings or use a new {errors.ref('model_dir')}"
            )
        return True
    if latest_checkpoint(model_dir) is not None:
        raise ModelDirError(
            "model_dir", f"={model_dir} holds checkpoints but no {CONFIG_FILE}; use a new {errors.ref('model_dir')}"
        )
    if write:
        os.makedirs(model_dir, exist_ok=True)
        atomic.atomic_write_text(path, json.dumps(config_dict, indent=2, sort_keys=True) + "\n")
    return False
