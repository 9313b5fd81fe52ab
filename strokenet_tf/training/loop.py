"""Custom training loop for StrokeNet over `tf.distribute` (the library half of `strokenet_tf.train`).

Why not `model.fit`: with Keras 3.15 it does not run under MultiWorkerMirroredStrategy, and the curriculum
changes the loss parameters, learning rate, augmentation and patch size between epochs, which a plain loop
expresses directly. The loop follows the TF custom-training guide
(https://www.tensorflow.org/tutorials/distribute/custom_training):

- model and optimizer are created under `strategy.scope()`; batches come from
  `strategy.experimental_distribute_dataset`; one step is `strategy.run(replica_step)` inside a `tf.function`
  whose input signature has dynamic batch/depth/height/width, so a new patch size does not retrace;
- each replica's loss is summed over its examples and divided by the GLOBAL batch size
  (`tf.nn.compute_average_loss`); the Keras optimizer all-reduces (sums) the gradients across replicas;
- focal gamma, alpha and the Dice weight enter the step as scalar tensors and the learning rate is the
  optimizer's variable, so curriculum changes never retrace;
- mixed precision: the `mixed_float16` policy and `keras.optimizers.LossScaleOptimizer`.

Resuming is exact: every random draw of training is either a pure function of (seed, epoch, case, patch) —
patch positions, augmentation, both shuffles (`pipeline`) — or saved in the checkpoint — the dropout
seed generators' counters (`checkpointing`). A run restored from a mid-epoch checkpoint skips the batches it
already trained on and continues with the ones it would have seen, with the same dropout masks; on one CPU
device it ends bit for bit where the uninterrupted run ends. Only one process trains in a run folder at a time
(`run_lock`); a damaged newest checkpoint is skipped for the next older intact one, and best.keras/best.json
are made to agree with the restored state (`best_export`).

What a run reports: one log line per event (`run_log`), a row per epoch in MODEL_DIR/history.csv with
progress.png (`history`), TensorBoard scalars and images (`summaries`) and its HParams session (`hparams`).
"""

from __future__ import annotations

import dataclasses
import datetime
import os
import time
from typing import Callable, Sequence

import keras
import numpy as np
import tensorflow as tf

from strokenet_tf import errors, losses
from strokenet_tf.config import RUNTIME_FIELDS, TrainConfig
from strokenet_tf.curriculum import CurriculumStage
from strokenet_tf.data import augment, folds, isles, pipeline, preprocess
from strokenet_tf.model import strokenet
from strokenet_tf.training import (best_export, checkpointing, distribute, hparams, history, run_lock, run_log,
                                   summaries, validation)


class TrainingError(errors.InputError):
    """A run that cannot start (no data, bad fold, ...); the message is one line naming the field or file."""


@dataclasses.dataclass
class TrainResult:
    """What a run did. Epochs are counted 1-based here (epochs_done == epochs finished); `history_path` is
    MODEL_DIR/history.csv (None on workers other than the chief)."""

    model_dir: str
    epochs_done: int
    global_step: int
    best_epoch: int
    best_val_dice: float
    last_val_metrics: dict[str, float]
    best_model_path: str | None
    resumed_from: str | None
    train_ids: list[str]
    val_ids: list[str]
    trace_count: int
    history_path: str | None = None


# ---------------------------------------------------------------------------------------------------- data


def load_fold(config: TrainConfig) -> tuple[list, list]:
    """Reads the labelled cases, splits them by fold and prepares (normalises) them.

    Returns:
        (train cases, validation cases) as `preprocess.PreparedCase` lists.

    Raises:
        TrainingError / isles.IslesFormatError / folds.FoldError: one line.
    """
    if not os.path.exists(config.data_dir):
        raise TrainingError("data_dir", f"={config.data_dir}: no such folder")
    key = _files_key(config)
    kept = _LAST_CASES.get(key)  # this process's last run read and prepared these same files
    cases = kept or isles.load_cases(config.data_dir, channels=config.channels, split=config.split,
                                     require_label=True)
    if not cases:
        raise TrainingError("data_dir", f"={config.data_dir}: no labelled {config.split} cases found")
    patient_map = None
    if config.patient_map:
        try:
            patient_map = folds.read_patient_map(config.patient_map)
        except folds.FoldError as error:
            raise TrainingError("patient_map", f": {error}") from None
    try:
        train_ids, val_ids = folds.split_folds(
            [case.case_id for case in cases], config.num_folds, config.fold, config.seed, patient_map
        )
    except folds.FoldError as error:
        fields = ("patient_map",) if "patient map" in str(error) else ("num_folds", "fold")
        raise TrainingError(f"{'/'.join(map(errors.ref, fields))}: {error} ({len(cases)} cases in {config.data_dir})"
                            ) from None
    if kept is None:
        kept = [preprocess.prepare_case(case, config.channels) for case in cases]
        _LAST_CASES.clear()
        _LAST_CASES[key] = kept
    prepared = {case.case_id: case for case in kept}
    return [prepared[i] for i in train_ids], [prepared[i] for i in val_ids]


# The last run's prepared cases, {files key: cases}: the next run of this process on the same, unchanged files
# (the folds of `cross_validate`) takes them from here (reading and normalising the 24 demo cases takes ~10 s on
# 2 CPU cores).
_LAST_CASES: dict = {}


def _files_key(config: TrainConfig) -> tuple:
    """What the run reads, with every file's size and modification time under DATA_DIR/split."""
    root = os.path.join(os.path.abspath(config.data_dir), config.split)
    listing = []
    for folder, _, names in os.walk(root):
        for name in names:
            path = os.path.join(folder, name)
            try:
                info = os.stat(path)
            except OSError:
                continue
            listing.append((path, info.st_size, info.st_mtime_ns))
    return root, tuple(config.channels), tuple(sorted(listing))


def _relax_shapes(channels: int):
    """Makes batch/depth/height/width dynamic in the dataset's element spec (one trace for all patch sizes)."""

    def relax(image, label):
        image = tf.raw_ops.PlaceholderWithDefault(input=image, shape=[None, None, None, None, channels])
        label = tf.raw_ops.PlaceholderWithDefault(input=label, shape=[None, None, None, None, 1])
        return image, label

    return relax


def stage_pipeline_config(config: TrainConfig, stage: CurriculumStage) -> pipeline.PipelineConfig:
    """The pipeline config of one stage: its patch size, the global batch, the model's multiples, the run's seed."""
    return config.pipeline.for_stage(stage.patch_size, config.batch_size, tuple(config.model.required_multiples),
                                     config.seed)


def epoch_dataset(
    train_cases: Sequence, config: TrainConfig, stage: CurriculumStage, epoch: int
) -> tuple[tf.data.Dataset, int]:
    """The batches of one epoch and their number.

    The pipeline's epoch (a pass over every case's patches, last batch possibly short) is repeated and
    re-batched to full global batches, so every step of every replica and worker gets the same number of
    examples. Without --steps_per_epoch an epoch is floor(cases * patches_per_case / batch_size) steps (>= 1).
    """
    dataset = pipeline.make_training_dataset(
        train_cases, stage_pipeline_config(config, stage), stage.augment, epoch=epoch
    )
    steps = config.steps_per_epoch or max(1, len(train_cases) * config.pipeline.patches_per_case // config.batch_size)
    dataset = dataset.unbatch().repeat().padded_batch(config.batch_size, drop_remainder=True)
    dataset = dataset.map(_relax_shapes(len(config.channels)))
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return dataset.with_options(options), steps


# ----------------------------------------------------------------------------------------------- training


def make_optimizer(config: TrainConfig) -> keras.optimizers.Optimizer:
    """Adam or AdamW at the first stage's learning rate, wrapped for loss scaling under mixed precision."""
    learning_rate = config.curriculum.stages[0].learning_rate
    if config.optimizer == "adamw":
        optimizer = keras.optimizers.AdamW(learning_rate=learning_rate, weight_decay=config.weight_decay)
    else:
        optimizer = keras.optimizers.Adam(learning_rate=learning_rate)
    if config.mixed_precision:
        optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
    return optimizer


class TrainStep:
    """Distributed train step, traced once per run (see the module docstring). Returns the global mean loss."""

    def __init__(self, strategy, model, optimizer, global_batch_size: int, mixed_precision: bool):
        self._strategy = strategy
        self._model = model
        self._optimizer = optimizer
        self._global_batch_size = global_batch_size
        self._mixed_precision = mixed_precision
        self._function = None
        self.trace_count = 0

    def _step(self, images, labels, gamma, alpha, dice_weight):
        self.trace_count += 1
        model, optimizer = self._model, self._optimizer

        def replica_step(images, labels):
            with tf.GradientTape() as tape:
                logits = model(images, training=True)
                loss = tf.nn.compute_average_loss(
                    losses.focal_dice_loss(labels, logits, alpha=alpha, gamma=gamma, dice_weight=dice_weight),
                    global_batch_size=self._global_batch_size,
                )
                if model.losses:
                    loss += tf.nn.scale_regularization_loss(tf.add_n(model.losses))
                scaled_loss = optimizer.scale_loss(loss) if self._mixed_precision else loss
            gradients = tape.gradient(scaled_loss, model.trainable_variables)
            optimizer.apply_gradients(zip(gradients, model.trainable_variables))
            return loss

        per_replica = self._strategy.run(replica_step, args=(images, labels))
        return self._strategy.reduce(tf.distribute.ReduceOp.SUM, per_replica, axis=None)

    def __call__(self, images, labels, gamma: float, alpha: float, dice_weight: float) -> tf.Tensor:
        if self._function is None:
            scalar = tf.TensorSpec([], tf.float32)
            image_spec, label_spec = self._element_spec
            self._function = tf.function(self._step, input_signature=[image_spec, label_spec, scalar, scalar, scalar])
        return self._function(
            images, labels, tf.constant(gamma, tf.float32), tf.constant(alpha, tf.float32),
            tf.constant(dice_weight, tf.float32),
        )

    def set_element_spec(self, element_spec) -> None:
        """Input signature of the distributed dataset (its dims are already dynamic)."""
        if self._function is None:
            self._element_spec = element_spec


def _set_policy(mixed_precision: bool) -> str:
    previous = keras.mixed_precision.global_policy().name
    keras.mixed_precision.set_global_policy("mixed_float16" if mixed_precision else "float32")
    return previous


def _overlay(result: validation.ValidationResult, channels: Sequence[str]) -> np.ndarray | None:
    if result.sample_image is None:
        return None
    channel = channels.index(isles.TMAX) if isles.TMAX in channels else 0
    index = summaries.pick_slice(result.sample_label, result.sample_image.shape[0])
    return summaries.overlay_slice(
        result.sample_image[index, ..., channel], result.sample_label[index], result.sample_prediction[index]
    )


def _train_epoch(config, strategy, optimizer, step_fn, train_cases, state, writers, log, epoch, save_checkpoint,
                 after_step, announce_stage: bool) -> float | None:
    """Runs the (remaining) steps of one epoch at its curriculum stage; logs the stage when it starts.

    Returns the epoch's mean training loss (None when no step was left to run).
    """
    curriculum = config.curriculum
    stage_index, stage = curriculum.stage_at(epoch)
    gamma = curriculum.gamma_at(epoch)
    if announce_stage or epoch == curriculum.stage_start(stage_index):
        log.line(f"epoch {epoch + 1}/{curriculum.total_epochs}: curriculum stage {stage_index + 1}/"
                 f"{len(curriculum.stages)}, {stage.describe()}")
    state.stage.assign(stage_index)
    optimizer.learning_rate = stage.learning_rate

    dataset, steps = epoch_dataset(train_cases, config, stage, epoch)
    done = int(state.step_in_epoch.numpy())
    distributed = strategy.experimental_distribute_dataset(dataset.skip(done).take(max(steps - done, 0)))
    step_fn.set_element_spec(distributed.element_spec)
    progress = log.progress_bar(f"Epoch {epoch + 1}/{curriculum.total_epochs} ({stage.name})", steps, done)
    if done == 0:
        state.epoch_loss_sum.assign(0.0)
    for images, labels in distributed:
        loss = float(step_fn(images, labels, gamma, stage.alpha, stage.dice_weight))
        state.epoch_loss_sum.assign_add(loss)
        state.global_step.assign_add(1)
        state.step_in_epoch.assign_add(1)
        global_step, in_epoch = int(state.global_step.numpy()), int(state.step_in_epoch.numpy())
        if progress is not None:
            progress.update(in_epoch, values=[("loss", loss), ("lr", stage.learning_rate), ("gamma", gamma)])
        if global_step % config.log_every_steps == 0:
            writers.scalars(writers.train, global_step, {
                "loss": loss, "learning_rate": stage.learning_rate, "stage": stage_index, "focal_gamma": gamma,
            })
        # The epoch's last step is checkpointed after validation, with the epoch counter advanced.
        if config.checkpoint_every_steps and global_step % config.checkpoint_every_steps == 0 and in_epoch < steps:
            save_checkpoint()
        if after_step is not None:
            after_step(global_step)
    if int(state.step_in_epoch.numpy()) == done:
        return None
    # The loss sum travels in the checkpoint, so a resumed epoch reports the mean of all its steps.
    mean_loss = float(state.epoch_loss_sum.numpy()) / int(state.step_in_epoch.numpy())
    writers.scalars(writers.train, int(state.global_step.numpy()), {
        "epoch/loss": mean_loss, "epoch/learning_rate": stage.learning_rate,
        "epoch/stage": stage_index, "epoch/focal_gamma": gamma, "epoch/epoch": epoch + 1,
    })
    return mean_loss


def _validate_and_export(config, strategy, best, predict_fn, val_cases, state, writers, epoch) -> tuple[dict, bool]:
    """Validates after `epoch` (0-based) and exports best.keras when the Dice improved.

    Returns:
        (mean metrics, whether best.keras was replaced).
    """
    global_step = int(state.global_step.numpy())
    result = validation.validate(predict_fn, val_cases, config.model.required_multiples)
    writers.scalars(writers.val, global_step, result.mean)
    overlay = _overlay(result, config.channels)
    if overlay is not None:
        writers.image(global_step, "overlay", overlay)
    dice = result.mean.get("dice", float("nan"))
    if not (np.isfinite(dice) and dice > float(state.best_val_dice.numpy())):
        return result.mean, False
    state.best_val_dice.assign(dice)
    state.best_epoch.assign(epoch + 1)
    state.best_step.assign(global_step)
    best.capture()
    # Every worker saves (to a scratch folder off the chief), as tf.distribute asks of collective saves.
    export_dir = distribute.write_dir(config.model_dir, strategy)
    best.export(export_dir, epoch + 1, {**result.mean, "global_step": global_step})
    distribute.remove_scratch_dir(export_dir, strategy)
    return result.mean, True


def train(
    config: TrainConfig,
    strategy: tf.distribute.Strategy | None = None,
    after_step: Callable[[int], None] | None = None,
) -> TrainResult:
    """Trains one fold through the whole curriculum, resuming from MODEL_DIR when it holds this run.

    Args:
        config: the run (validated here).
        strategy: a tf.distribute strategy; default: `distribute.make_strategy(config.strategy)`.
        after_step: called with the global step after every optimizer step (and its checkpoint, if any);
            tests use it to interrupt a run.

    Returns:
        TrainResult.

    Raises:
        TrainingError, ConfigError, checkpointing.ModelDirError, run_lock.RunLockError (another process trains
        in MODEL_DIR), ...: one-line errors about the inputs.
    """
    config.validate()
    config.curriculum.validate(len(augment.AUGMENTATION_STAGES), config.model.required_multiples)
    strategy = strategy or distribute.make_strategy(config.strategy)
    chief = distribute.is_chief(strategy)
    model_dir = config.model_dir
    # One writer per run folder (the chief: other workers write to scratch folders); released on return, and
    # by the operating system if the process dies.
    with run_lock.hold(model_dir, enabled=chief):
        return _train_locked(config, strategy, chief, after_step)


def _train_locked(config, strategy, chief, after_step) -> TrainResult:
    model_dir = config.model_dir
    # Refuse a model_dir of another run before reading data; record this run once its data has loaded.
    resuming = checkpointing.check_or_write_config(model_dir, config.to_dict(), RUNTIME_FIELDS, write=False)
    train_cases, val_cases = load_fold(config)
    checkpointing.check_or_write_config(model_dir, config.to_dict(), RUNTIME_FIELDS, write=chief)
    log = run_log.RunLog(to_stream=config.verbose and chief)
    log.line(f"fold {config.fold} of {config.num_folds}: {len(train_cases)} training and {len(val_cases)} "
             f"validation cases; {config.strategy} strategy with {strategy.num_replicas_in_sync} replica(s)"
             + ("" if chief else " (not the chief: no summaries or exports)"))

    previous_policy = _set_policy(config.mixed_precision)
    try:
        keras.utils.set_random_seed(config.seed)
        with strategy.scope():
            compiled = _compiled(config, strategy)
            best = best_export.BestWeights(compiled.model)
        return _run(config, strategy, chief, log, compiled, best, train_cases, val_cases, resuming, after_step)
    finally:
        keras.mixed_precision.set_global_policy(previous_policy)


@dataclasses.dataclass
class _Compiled:
    """A model, its optimizer and their traced train and validation steps."""

    key: tuple
    model: keras.Model
    optimizer: keras.optimizers.Optimizer
    step_fn: "TrainStep"
    predict_fn: Callable
    optimizer_start: list  # the optimizer's variables just after it was built


# The last run's compiled model, reused by the next run of this process with the same network, optimizer,
# batch, seed and default strategy (the folds of `cross_validate`): the train step's first call (tracing and
# graph optimisation) costs ~15 s on 2 CPU cores, the model's weights and the optimizer's state are simply
# reset. A reused run is bit for bit the run a fresh process makes (tests/test_train.py checks).
_LAST_COMPILED: list = []


def _compiled(config: TrainConfig, strategy) -> _Compiled:
    """The run's model (freshly initialised from config.seed), optimizer and steps; call under strategy.scope()
    after `keras.utils.set_random_seed(config.seed)`."""
    fresh = strokenet.build_strokenet(config.model)
    key = (repr(config.model), config.optimizer, config.weight_decay, config.mixed_precision, config.batch_size,
           config.seed, len(config.channels), config.curriculum.stages[0].learning_rate)
    reusable = strategy is tf.distribute.get_strategy() and not tf.distribute.has_strategy()
    if reusable and _LAST_COMPILED and _LAST_COMPILED[0].key == key:
        compiled = _LAST_COMPILED[0]
        # Every variable: weights and the dropout seed generators' states (`model.variables`), and the optimizer's
        # step counter, moments and learning rate.
        for target, source in zip(compiled.model.variables, fresh.variables, strict=True):
            target.assign(source.value)
        for variable, start in zip(_optimizer_variables(compiled.optimizer), compiled.optimizer_start, strict=True):
            variable.assign(start)
        return compiled
    optimizer = make_optimizer(config)
    optimizer.build(fresh.trainable_variables)
    compiled = _Compiled(key, fresh, optimizer,
                         TrainStep(strategy, fresh, optimizer, config.batch_size, config.mixed_precision),
                         validation.make_predict_fn(fresh, len(config.channels)),
                         [variable.numpy() for variable in _optimizer_variables(optimizer)])
    _LAST_COMPILED[:] = [compiled] if reusable else []
    return compiled


def _optimizer_variables(optimizer) -> list:
    """The optimizer's variables and its inner optimizer's (loss scaling), each once."""
    seen, variables = set(), []
    for variable in list(optimizer.variables) + list(getattr(getattr(optimizer, "inner_optimizer", None),
                                                             "variables", [])):
        if id(variable) not in seen:
            seen.add(id(variable))
            variables.append(variable)
    return variables


def _run(config, strategy, chief, log, compiled, best, train_cases, val_cases, resuming, after_step) -> TrainResult:
    model, optimizer = compiled.model, compiled.optimizer
    model_dir = config.model_dir
    curriculum = config.curriculum
    state = checkpointing.RunState.create()
    checkpoint = checkpointing.make_checkpoint(model, optimizer, state, best.variables)
    checkpoint_dir = distribute.write_dir(model_dir, strategy)
    resumed_from = checkpointing.restore_newest_intact(checkpoint, model_dir)
    if chief:
        if resumed_from:  # before the manager reads the index: damaged newer checkpoints are set aside
            checkpointing.settle_index(model_dir, resumed_from, config.keep_checkpoints)
        best_export.reconcile(model_dir, state, best)
        summaries.mark_restart(model_dir, int(state.global_step.numpy()) + 1)
    manager = checkpointing.make_manager(checkpoint, checkpoint_dir, config.keep_checkpoints)
    writers = summaries.SummaryWriters(model_dir, chief)
    if not resuming:
        writers.hparams(hparams.run_hparams(config), trial_id=os.path.basename(os.path.abspath(model_dir)))
    epochs = history.History(model_dir, int(state.epoch.numpy()), enabled=chief)
    if resumed_from and int(state.epoch.numpy()) >= curriculum.total_epochs:
        log.line(f"{model_dir} already finished all {curriculum.total_epochs} epochs ({resumed_from})")
    elif resumed_from:
        log.line(f"resuming from {resumed_from}: epoch {int(state.epoch.numpy()) + 1}, step "
                 f"{int(state.step_in_epoch.numpy())} of the epoch, global step {int(state.global_step.numpy())}")

    def save_checkpoint():
        manager.save(checkpoint_number=int(state.global_step.numpy()))
        distribute.remove_scratch_dir(checkpoint_dir, strategy)

    step_fn, predict_fn = compiled.step_fn, compiled.predict_fn
    last_metrics: dict[str, float] = {}
    clock = run_log.EpochClock(curriculum.total_epochs)
    first_epoch = int(state.epoch.numpy())
    try:
        while int(state.epoch.numpy()) < curriculum.total_epochs:
            epoch = int(state.epoch.numpy())
            started = time.monotonic()
            train_loss = _train_epoch(config, strategy, optimizer, step_fn, train_cases, state, writers, log, epoch,
                                      save_checkpoint, after_step, announce_stage=epoch == first_epoch)
            metrics, improved = None, False
            if (epoch + 1) % config.validate_every_epochs == 0 or epoch + 1 == curriculum.total_epochs:
                metrics, improved = _validate_and_export(
                    config, strategy, best, predict_fn, val_cases, state, writers, epoch
                )
                last_metrics = metrics
            seconds = time.monotonic() - started
            clock.add(seconds)
            _record_epoch(config, state, writers, log, epochs, clock, epoch, train_loss, metrics, improved, seconds)
            writers.flush()
            state.epoch.assign_add(1)
            state.step_in_epoch.assign(0)
            save_checkpoint()
        writers.end_session()
    finally:
        writers.close()

    best_model_path = os.path.join(model_dir, checkpointing.BEST_MODEL_FILE)
    return TrainResult(
        model_dir=model_dir,
        epochs_done=int(state.epoch.numpy()),
        global_step=int(state.global_step.numpy()),
        best_epoch=int(state.best_epoch.numpy()),
        best_val_dice=float(state.best_val_dice.numpy()),
        last_val_metrics=last_metrics,
        best_model_path=best_model_path if os.path.exists(best_model_path) else None,
        resumed_from=resumed_from,
        train_ids=[case.case_id for case in train_cases],
        val_ids=[case.case_id for case in val_cases],
        trace_count=step_fn.trace_count,
        history_path=epochs.csv_path if chief else None,
    )


def _record_epoch(config, state, writers, log, epochs, clock, epoch, train_loss, metrics, improved, seconds):
    """The epoch's line (and a "new best" line), its history row and the HParams session's metrics."""
    curriculum = config.curriculum
    _, stage = curriculum.stage_at(epoch)
    gamma = curriculum.gamma_at(epoch)
    best_dice, best_epoch = float(state.best_val_dice.numpy()), int(state.best_epoch.numpy())
    global_step = int(state.global_step.numpy())
    log.line(run_log.epoch_line(epoch + 1, curriculum.total_epochs, stage.name, seconds, train_loss, metrics,
                                stage.learning_rate, gamma, clock.eta_s(epoch + 1)))
    if improved:
        log.line(f"new best validation Dice {best_dice:.4f} at epoch {epoch + 1}, saved "
                 f"{os.path.join(config.model_dir, checkpointing.BEST_MODEL_FILE)}")
    metrics = metrics or {}
    epochs.add({
        "epoch": epoch + 1, "stage": stage.name, "global_step": global_step, "learning_rate": stage.learning_rate,
        "focal_gamma": gamma, "train_loss": train_loss, "val_dice": metrics.get("dice"),
        "val_precision": metrics.get("precision"), "val_recall": metrics.get("recall"),
        "best_val_dice": best_dice if best_epoch >= 1 else None, "epoch_s": round(seconds, 3),
        "finished_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    })
    writers.session_metrics(global_step, hparams.metric_scalars(best_dice, best_epoch, metrics, train_loss))
