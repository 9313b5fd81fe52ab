"""TensorBoard output: scalars under MODEL_DIR/train and MODEL_DIR/val, overlay images, the HParams session.

Tags: `loss`, `learning_rate`, `stage`, `focal_gamma` per step (train); `epoch/loss` and the same per epoch;
`dice`, `precision`, `recall` per validation (val) plus `overlay`, an axial slice of one validation case with
the input map in grey, the label in green and the prediction in red (yellow where they agree). MODEL_DIR itself
holds the HParams session and its metrics (`hparams/best_val_dice`, ...; see `training.hparams`).

A resumed run re-logs the steps after its checkpoint; `mark_restart` tells TensorBoard to drop what the
abandoned attempt logged there, so every step shows one value.
"""

from __future__ import annotations

import os
import socket
import time
from typing import Any, Mapping

import numpy as np
import tensorflow as tf
from tensorboard.compat.proto import event_pb2

from strokenet_tf.training import hparams as hparams_lib


class SummaryWriters:
    """File writers on the chief (MODEL_DIR/train, MODEL_DIR/val and MODEL_DIR for HParams), no-op elsewhere."""

    def __init__(self, model_dir: str, is_chief: bool):
        self._is_chief = is_chief
        if is_chief:
            self.train = tf.summary.create_file_writer(os.path.join(model_dir, "train"))
            self.val = tf.summary.create_file_writer(os.path.join(model_dir, "val"))
            self.run = tf.summary.create_file_writer(model_dir)
        else:
            self.train = self.val = self.run = tf.summary.create_noop_writer()
        self._writers = [self.train, self.val, self.run]

    def scalars(self, writer, step: int, values: Mapping[str, float]) -> None:
        with writer.as_default(step=int(step)):
            for name, value in values.items():
                tf.summary.scalar(name, float(value))

    def image(self, step: int, name: str, rgb: np.ndarray) -> None:
        with self.val.as_default(step=int(step)):
            tf.summary.image(name, rgb[np.newaxis], max_outputs=1)

    def hparams(self, values: Mapping[str, Any], trial_id: str) -> None:
        """Starts the run's HParams session (once per run, not on resume); `values` from `hparams.run_hparams`."""
        hparams_lib.write_session(self.run, values, trial_id)

    def session_metrics(self, step: int, values: Mapping[str, float]) -> None:
        """The HParams metrics (`hparams.metric_scalars`) at `step`; the dashboard shows the last values."""
        self.scalars(self.run, step, values)

    def end_session(self) -> None:
        hparams_lib.write_session_end(self.run)

    def flush(self) -> None:
        for writer in self._writers:
            writer.flush()

    def close(self) -> None:
        if self._is_chief:
            for writer in self._writers:
                writer.close()


def mark_restart(model_dir: str, step: int) -> list[str]:
    """Writes a SessionLog START event at `step` into the train/, val/ and MODEL_DIR logs that hold events.

    TensorBoard (`purge_orphaned_data`, on by default) then discards every event of those logs at `step` or
    later written before the marker: what a killed or rolled-back attempt logged after the checkpoint a run
    resumes from (call it with that checkpoint's step + 1, before `SummaryWriters` opens its files). The
    marker file is named one second in the past so that it sorts after the older event files and before the
    writers' new ones. Returns the files written.
    """
    written = []
    stamp = int(time.time()) - 1
    for name in ("train", "val", ""):
        directory = os.path.join(model_dir, name) if name else model_dir
        if not tf.io.gfile.glob(os.path.join(directory, "events.out.tfevents.*")):
            continue
        path = os.path.join(directory, f"events.out.tfevents.{stamp:010d}.{socket.gethostname()}.restart")
        start = event_pb2.Event(wall_time=time.time(), step=int(step),
                                session_log=event_pb2.SessionLog(status=event_pb2.SessionLog.START))
        with tf.io.TFRecordWriter(path) as records:
            records.write(event_pb2.Event(wall_time=time.time(), file_version="brain.Event:2").SerializeToString())
            # TensorBoard takes a log's first START for the session's beginning and purges on later ones; TF2's
            # writers write none, so the marker holds two.
            records.write(start.SerializeToString())
            records.write(start.SerializeToString())
        written.append(path)
    return written


def _to_unit_range(image: np.ndarray) -> np.ndarray:
    low, high = np.percentile(image, [1.0, 99.0]) if image.size else (0.0, 1.0)
    if high <= low:
        high = low + 1.0
    return np.clip((image - low) / (high - low), 0.0, 1.0)


def pick_slice(label: np.ndarray | None, depth: int) -> int:
    """The axial slice with the most lesion voxels, or the middle slice when there is no lesion."""
    if label is not None and label.any():
        return int(np.argmax(label.reshape(label.shape[0], -1).sum(axis=1)))
    return depth // 2


def overlay_slice(image_slice: np.ndarray, label_slice: np.ndarray | None, prediction_slice: np.ndarray) -> np.ndarray:
    """RGB overlay of one axial slice.

    Args:
        image_slice: float [height, width], one input map (e.g. Tmax).
        label_slice: {0, 1} [height, width] or None.
        prediction_slice: {0, 1} [height, width].

    Returns:
        float32 [height, width, 3] in [0, 1]: grey map, label in green, prediction in red.
    """
    grey = _to_unit_range(np.asarray(image_slice, np.float32))
    rgb = np.repeat(grey[..., np.newaxis], 3, axis=-1) * 0.6
    prediction = np.asarray(prediction_slice) > 0
    rgb[..., 0] = np.where(prediction, 1.0, rgb[..., 0])
    if label_slice is not None:
        label = np.asarray(label_slice) > 0
        rgb[..., 1] = np.where(label, 1.0, rgb[..., 1])
    return rgb.astype(np.float32)
