r"""Trains StrokeNet on one cross-validation fold of ISLES 2018 (or synthetic ISLES-like data).

Usage:
    python -m strokenet_tf.train --flagfile=experiments/default.flags \
        --data_dir=/data/ISLES2018 --model_dir=runs/fold0 --fold=0

Runs the curriculum given by repeated --stage flags (or one stage of --epochs epochs), validates on the
held-out fold, writes TensorBoard logs, checkpoints and MODEL_DIR/best.keras. Re-running the same command
resumes an interrupted run exactly (from the newest intact checkpoint); a model_dir holding a run with other
settings, or in use by another trainer, is refused.
"""

from __future__ import annotations

import dataclasses
import logging
import os

from absl import app, flags
from absl import logging as absl_logging

from strokenet_tf import cli
from strokenet_tf import config as config_lib
from strokenet_tf import curriculum as curriculum_lib
from strokenet_tf.data import isles

FLAGS = flags.FLAGS
TOOL = "strokenet_tf.train"
MODEL_FLAGS = ("widths", "blocks_per_stage", "refinement_width", "norm")


def define_flags(flag_values: flags.FlagValues = FLAGS) -> None:
    """Defines the trainer's flags on `flag_values` (by `__main__`; tests use their own FlagValues)."""
    fv = {"flag_values": flag_values}
    flags.DEFINE_string("data_dir", None, "ISLES 2018 root (holding TRAINING/), a TRAINING folder, or synthetic "
                        "data.", **fv)
    flags.DEFINE_string("model_dir", None, "Run folder: checkpoints, TensorBoard logs, config.json, best.keras.", **fv)
    flags.DEFINE_string("split", "TRAINING", "Split folder of --data_dir to train on (it must have labels).", **fv)
    flags.DEFINE_list("channels", list(isles.DEFAULT_CHANNELS), "Input modalities in network channel order.", **fv)
    flags.DEFINE_integer("num_folds", 5, "Number of cross-validation folds.", **fv)
    flags.DEFINE_integer("fold", 0, "Held-out validation fold, in [0, num_folds).", **fv)
    flags.DEFINE_integer("seed", 0, "Seed of the fold split, the initial weights and the per-epoch data order.", **fv)
    flags.DEFINE_string("patient_map", None, "Optional CSV with columns case_id,patient_id: a patient's slabs share "
                        "a fold.", **fv)
    flags.DEFINE_multi_string(
        "stage", [],
        "Curriculum stage, repeatable, in order: name=N,epochs=E[,augment=A][,gamma=G][,gamma_end=G2][,alpha=A]"
        "[,dice=W][,lr=LR][,patch=DxHxW|full]. Overrides --epochs.", **fv,
    )
    flags.DEFINE_integer("epochs", None, "Length of a one-stage run (used when no --stage is given).", **fv)
    flags.DEFINE_integer("augment", 1, "Augmentation stage of a one-stage --epochs run.", **fv)
    flags.DEFINE_float("focal_gamma", 2.0, "Focal gamma of a one-stage --epochs run (0 = cross-entropy).", **fv)
    flags.DEFINE_float("focal_alpha", 0.25, "Focal alpha (lesion weight) of a one-stage --epochs run.", **fv)
    flags.DEFINE_float("dice_weight", 1.0, "Weight of the soft Dice term in a one-stage --epochs run.", **fv)
    flags.DEFINE_string("patch_size", "8x128x128", "Default training patch DEPTHxHEIGHTxWIDTH, or 'full' for whole "
                        "slabs.", **fv)
    flags.DEFINE_integer("batch_size", 2, "Global batch size (summed over all replicas and workers).", **fv)
    flags.DEFINE_float("learning_rate", 1e-3, "Learning rate of stages that do not set lr=.", **fv)
    flags.DEFINE_enum("optimizer", "adam", list(config_lib.OPTIMIZERS), "Optimizer.", **fv)
    flags.DEFINE_float("weight_decay", 1e-4, "Decoupled weight decay (--optimizer=adamw only).", **fv)
    flags.DEFINE_boolean("mixed_precision", False, "Train with the mixed_float16 policy and loss scaling.", **fv)
    flags.DEFINE_enum("strategy", "default", list(config_lib.STRATEGIES),
                      "tf.distribute strategy: default (one device), mirrored (local GPUs or --cpu_devices), "
                      "multi_worker (TF_CONFIG).", **fv)
    flags.DEFINE_integer("cpu_devices", 0, "Split the CPU into this many logical devices (mirrored without GPUs).",
                         **fv)
    flags.DEFINE_integer("steps_per_epoch", 0, "Optimizer steps per epoch; 0 = one pass over the training patches.",
                         **fv)
    flags.DEFINE_integer("patches_per_case", None, "Training patches drawn per case and epoch (pipeline default if "
                         "unset).", **fv)
    flags.DEFINE_float("foreground_fraction", None, "Fraction of patches centred on lesion (pipeline default if "
                       "unset).", **fv)
    flags.DEFINE_integer("validate_every_epochs", 1, "Validate on the held-out fold every N epochs (and after the "
                         "last).", **fv)
    flags.DEFINE_integer("checkpoint_every_steps", 100, "Also checkpoint every N steps inside an epoch (0 = epoch "
                         "ends only).", **fv)
    flags.DEFINE_integer("keep_checkpoints", 3, "Number of latest checkpoints kept.", **fv)
    flags.DEFINE_integer("log_every_steps", 10, "Write per-step TensorBoard scalars every N steps.", **fv)
    flags.DEFINE_boolean("verbose", True, "Show a progress bar per epoch.", **fv)
    flags.DEFINE_boolean("tiny_model", False, "Use a tiny network (tests, smoke runs) instead of the model flags "
                         "below.", **fv)
    flags.DEFINE_list("widths", None, "Feature widths per encoder level, e.g. 12,24,48,96 (model default if unset).",
                      **fv)
    flags.DEFINE_list("blocks_per_stage", None, "Residual blocks per encoder level, e.g. 1,1,1,1 (model default if "
                      "unset).", **fv)
    flags.DEFINE_integer("refinement_width", None, "Most channels of the multi-level refinement (model default if "
                         "unset).", **fv)
    flags.DEFINE_enum("norm", None, ["group", "batch", "instance"], "Normalisation layers (model default if unset).",
                      **fv)
    flags.mark_flags_as_required(["data_dir", "model_dir"], flag_values=flag_values)


def _model_config(flag_values):
    from strokenet_tf.model import strokenet

    in_channels = len(flag_values.channels)
    if flag_values.tiny_model:
        given = [f"--{name}" for name in MODEL_FLAGS if flag_values[name].value is not None]
        if given:
            raise config_lib.ConfigError(f"--tiny_model fixes the architecture; drop {', '.join(given)}")
        return strokenet.tiny_model_config(in_channels=in_channels)
    overrides = {"in_channels": in_channels}
    for name in ("widths", "blocks_per_stage"):
        values = flag_values[name].value
        if values:
            try:
                overrides[name] = tuple(int(value) for value in values)
            except ValueError:
                raise config_lib.ConfigError(f"--{name}: expected integers, got {','.join(values)}") from None
    for name in ("refinement_width", "norm"):
        if flag_values[name].value is not None:
            overrides[name] = flag_values[name].value
    try:
        return dataclasses.replace(strokenet.ModelConfig(), **overrides)
    except (TypeError, ValueError) as error:
        raise config_lib.ConfigError(f"model flags: {error}") from None


def _pipeline_config(flag_values, patch_size):
    from strokenet_tf.data import pipeline

    overrides = {"patch_size": patch_size, "batch_size": flag_values.batch_size, "seed": flag_values.seed}
    if flag_values.patches_per_case is not None:
        overrides["patches_per_case"] = flag_values.patches_per_case
    if flag_values.foreground_fraction is not None:
        overrides["foreground_fraction"] = flag_values.foreground_fraction
    try:
        return dataclasses.replace(pipeline.PipelineConfig(), **overrides)
    except (TypeError, ValueError) as error:
        raise config_lib.ConfigError(f"pipeline flags: {error}") from None


def config_from_flags(flag_values) -> config_lib.TrainConfig:
    """Turns parsed flags into a validated TrainConfig (the only place that reads flags).

    Raises:
        config_lib.ConfigError / curriculum.CurriculumError: one line naming the flag.
    """
    if flag_values.model_dir and os.path.exists(flag_values.model_dir) and not os.path.isdir(flag_values.model_dir):
        raise config_lib.ConfigError(f"--model_dir={flag_values.model_dir}: exists and is not a folder")
    patch_size = curriculum_lib.parse_patch_size(flag_values.patch_size, "--patch_size")
    if flag_values.stage:
        if flag_values["epochs"].present:
            raise config_lib.ConfigError("give either --stage (a curriculum) or --epochs (one stage), not both")
        curriculum = curriculum_lib.Curriculum.from_strings(flag_values.stage, flag_values.learning_rate, patch_size)
    elif flag_values.epochs is not None:
        curriculum = curriculum_lib.Curriculum.single_stage(
            flag_values.epochs, flag_values.learning_rate, patch_size, augment=flag_values.augment,
            gamma=flag_values.focal_gamma, alpha=flag_values.focal_alpha, dice_weight=flag_values.dice_weight,
        )
    else:
        raise config_lib.ConfigError("give the curriculum as --stage flags (see experiments/*.flags) or --epochs")
    model = _model_config(flag_values)
    config = config_lib.TrainConfig(
        data_dir=flag_values.data_dir,
        model_dir=flag_values.model_dir,
        model=model,
        pipeline=_pipeline_config(flag_values, patch_size),
        curriculum=curriculum,
        split=flag_values.split,
        channels=tuple(flag_values.channels),
        num_folds=flag_values.num_folds,
        fold=flag_values.fold,
        seed=flag_values.seed,
        patient_map=flag_values.patient_map,
        batch_size=flag_values.batch_size,
        learning_rate=flag_values.learning_rate,
        optimizer=flag_values.optimizer,
        weight_decay=flag_values.weight_decay,
        mixed_precision=flag_values.mixed_precision,
        strategy=flag_values.strategy,
        cpu_devices=flag_values.cpu_devices,
        steps_per_epoch=flag_values.steps_per_epoch,
        validate_every_epochs=flag_values.validate_every_epochs,
        checkpoint_every_steps=flag_values.checkpoint_every_steps,
        keep_checkpoints=flag_values.keep_checkpoints,
        log_every_steps=flag_values.log_every_steps,
        verbose=flag_values.verbose,
    )
    return config.validate()


def user_errors() -> tuple[type[Exception], ...]:
    from strokenet_tf.data import folds
    from strokenet_tf.training import checkpointing, distribute, loop, run_lock

    return (
        config_lib.ConfigError, curriculum_lib.CurriculumError, folds.FoldError, isles.IslesFormatError,
        checkpointing.ModelDirError, distribute.StrategyError, loop.TrainingError, run_lock.RunLockError,
    )


def package_info_filter(record: logging.LogRecord) -> bool:
    """Keeps INFO lines from this package; TensorFlow's own INFO chatter (checkpoint sharding, ...) is dropped."""
    return record.levelno >= logging.WARNING or f"{os.sep}strokenet_tf{os.sep}" in record.pathname


def _fail(message: str) -> None:
    cli.fail(TOOL, message)


def main(argv, flag_values: flags.FlagValues = FLAGS):
    cli.reject_arguments(TOOL, argv)
    try:
        config = config_from_flags(flag_values)
    except (config_lib.ConfigError, curriculum_lib.CurriculumError) as error:
        _fail(str(error))
    # TensorFlow is initialised from here on: devices and the multi-worker runtime come first.
    from strokenet_tf.training import distribute, loop

    absl_logging.get_absl_handler().addFilter(package_info_filter)

    try:
        distribute.split_cpu(config.cpu_devices)
        strategy = distribute.make_strategy(config.strategy)
        result = loop.train(config, strategy=strategy)
    except user_errors() as error:
        _fail(str(error))
    except OSError as error:  # an unwritable --model_dir, a full disk, ...
        _fail(cli.os_error_line(error, config.model_dir))
    if distribute.is_chief(strategy):
        print(
            f"Finished {result.epochs_done} epochs ({result.global_step} steps). Best validation Dice "
            f"{result.best_val_dice:.4f} at epoch {result.best_epoch}: {result.best_model_path}. "
            f"Checkpoints: {config.model_dir}/checkpoints. TensorBoard: tensorboard --logdir {config.model_dir}"
        )


if __name__ == "__main__":
    define_flags()
    app.run(main)
