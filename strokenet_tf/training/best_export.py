"""best.keras and best.json kept in step with the run state, whatever was killed or rolled back.

The loop exports MODEL_DIR/best.keras when the validation Dice improves, but the run state that says which
epoch is best lives in the checkpoints, which are written later (after the epoch) and may be older still when
a damaged checkpoint forces a resume from an earlier one. A run resumed from step S therefore finds best files
written after S (by the attempt that died) or none at all for its best epoch. So the weights of the best
validation are also kept in the checkpoint (`BestWeights`, one copy of the model's weights), and on every
start `reconcile` makes the files agree with the restored state: rewritten from those weights when best.json
names another epoch or step or its SHA-256 does not match best.keras, moved to MODEL_DIR/abandoned/ when the
restored run has not validated yet. A resumed run thus never keeps a best.json pointing at a model the
abandoned attempt wrote.
"""

from __future__ import annotations

import os

import tensorflow as tf
from absl import logging

from strokenet_tf.training import checkpointing

ABANDONED_SUBDIR = "abandoned"  # best files of an attempt the run rolled back past, kept for inspection

class BestWeights:
    """A copy of `model.weights` at the best validation so far; create it under the strategy's scope.

    Its `variables` go into the checkpoint (`checkpointing.make_checkpoint(..., best_weights=...)`).
    """

    def __init__(self, model):
        self._model = model
        self.variables = [tf.Variable(weight.value, trainable=False, name=f"best_{index}")
                          for index, weight in enumerate(model.weights)]

    def capture(self) -> None:
        """Copies the model's current weights (call when the validation Dice improved)."""
        for copy, weight in zip(self.variables, self._model.weights):
            copy.assign(weight.value)

    def export(self, directory: str, epoch: int, metrics) -> str:
        """Writes directory/best.keras + best.json from the kept weights; the model's own weights are unchanged."""
        current = [weight.numpy() for weight in self._model.weights]
        self._model.set_weights([copy.numpy() for copy in self.variables])
        try:
            return checkpointing.save_best_model(self._model, directory, epoch, metrics)
        finally:
            self._model.set_weights(current)


def _matches(model_dir: str, record, state: checkpointing.RunState) -> bool:
    if not record or record.get("epoch") != int(state.best_epoch.numpy()):
        return False
    if record.get("global_step") != int(state.best_step.numpy()):
        return False
    if record.get("dice") is None or abs(record["dice"] - float(state.best_val_dice.numpy())) > 1e-9:
        return False
    path = os.path.join(model_dir, checkpointing.BEST_MODEL_FILE)
    return os.path.isfile(path) and record.get("model_sha256") == checkpointing.file_sha256(path)


def reconcile(model_dir: str, state: checkpointing.RunState, best: BestWeights) -> str | None:
    """Makes model_dir/best.keras and best.json describe the restored state's best epoch (chief only).

    Returns:
        What was done, in one line (also logged), or None when the files already matched.
    """
    model_path = os.path.join(model_dir, checkpointing.BEST_MODEL_FILE)
    record_path = os.path.join(model_dir, checkpointing.BEST_METRICS_FILE)
    try:
        record = checkpointing.read_best_record(model_dir)
    except (OSError, ValueError):
        record = None
    best_epoch, best_step = int(state.best_epoch.numpy()), int(state.best_step.numpy())
    if best_epoch < 0:
        present = [path for path in (model_path, record_path) if os.path.exists(path)]
        if not present:
            return None
        aside = os.path.join(model_dir, ABANDONED_SUBDIR)
        os.makedirs(aside, exist_ok=True)
        for path in present:
            os.replace(path, os.path.join(aside, os.path.basename(path)))
        line = (f"moved {' and '.join(os.path.basename(p) for p in present)} of {model_dir} to {aside}: written "
                f"after the checkpoint this run resumes from (or by an earlier run), before any validation of this one")
    elif best_step < 0:  # a checkpoint from before the best weights were kept: nothing to rewrite from
        return None
    elif _matches(model_dir, record, state):
        return None
    else:
        metrics = {key: value for key, value in (record or {}).items()
                   if key not in ("epoch", "model", "model_sha256", "global_step", "dice")}
        if record is None or record.get("epoch") != best_epoch:
            metrics = {}  # the record describes another epoch: keep only what the state knows
        best.export(model_dir, best_epoch,
                    {"dice": float(state.best_val_dice.numpy()), **metrics, "global_step": best_step})
        line = (f"rewrote best.keras and best.json in {model_dir} from the checkpoint's best weights (epoch "
                f"{best_epoch}, Dice {float(state.best_val_dice.numpy()):.4f}): the files on disk were "
                f"{'missing' if record is None else 'from another point of the run'}")
    logging.warning(line)
    return line
