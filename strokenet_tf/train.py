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
import inspect
import logging
import os

from absl import flags
from absl import logging as absl_logging

from strokenet_tf import cli
from strokenet_tf import config as config_lib
from strokenet_tf import curriculum as curriculum_lib
from strokenet_tf.data import isles

FLAGS = flags.FLAGS
TOOL = "strokenet_tf.train"
MODEL_FLAGS = ("widths", "blocks_per_stage", "refinement_width", "norm")
# Flags that build the curriculum rather than being config fields (the --epochs run's loss defaults are
# `Curriculum.single_stage`'s).
_ONE_STAGE = inspect.signature(curriculum_lib.Curriculum.single_stage).parameters


def define_flags(flag_values: flags.FlagValues = FLAGS) -> None:
    """Defines the trainer's flags on `flag_values` (by `__main__`; tests use their own FlagValues).

    The run's settings are the fields of `config.TrainConfig` and `config.InputConfig` (defaults and help
    there); the curriculum and the architecture flags are defined here.
    """
    from strokenet_tf.model import strokenet

    fv = {"flag_values": flag_values}
    cli.define_config_flags(config_lib.TrainConfig, flag_values)
    cli.define_config_flags(config_lib.InputConfig, flag_values)
    flags.DEFINE_multi_string(
        "stage", [],
        "Curriculum stage, repeatable, in order: name=N,epochs=E[,augment=A][,gamma=G][,gamma_end=G2][,alpha=A]"
        "[,dice=W][,lr=LR][,patch=DxHxW|full]. Overrides --epochs.", **fv,
    )
    flags.DEFINE_integer("epochs", None, "Length of a one-stage run (used when no --stage is given).", **fv)
    flags.DEFINE_integer("augment", 1, "Augmentation stage of a one-stage --epochs run.", **fv)
    flags.DEFINE_float("focal_gamma", _ONE_STAGE["gamma"].default, "Focal gamma of a one-stage --epochs run "
                       "(0 = cross-entropy).", **fv)
    flags.DEFINE_float("focal_alpha", _ONE_STAGE["alpha"].default, "Focal alpha (lesion weight) of a one-stage "
                       "--epochs run.", **fv)
    flags.DEFINE_float("dice_weight", _ONE_STAGE["dice_weight"].default, "Weight of the soft Dice term in a "
                       "one-stage --epochs run.", **fv)
    flags.DEFINE_string("patch_size", "x".join(str(n) for n in config_lib.DEFAULT_PATCH_SIZE), "Training patch of stages "
                        "without patch=: DEPTHxHEIGHTxWIDTH (8,128,128 is read too), or 'full' for whole slabs.",
                        **fv)
    flags.DEFINE_boolean("tiny_model", False, "Use a tiny network (tests, smoke runs) instead of the model flags "
                         "below.", **fv)
    model = strokenet.ModelConfig()
    flags.DEFINE_list("widths", [str(w) for w in model.widths], "Feature widths per encoder level.", **fv)
    flags.DEFINE_list("blocks_per_stage", [str(b) for b in model.blocks_per_stage], "Residual blocks per encoder "
                      "level.", **fv)
    flags.DEFINE_integer("refinement_width", model.refinement_width, "Most channels of the multi-level "
                         "refinement.", **fv)
    flags.DEFINE_enum("norm", model.norm, ["group", "batch", "instance"], "Normalisation layers.", **fv)


def _model_config(flag_values):
    from strokenet_tf.model import strokenet

    in_channels = len(flag_values.channels)
    given = [f"--{name}" for name in MODEL_FLAGS if flag_values[name].present]
    if flag_values.tiny_model:
        if given:
            raise config_lib.ConfigError(f"--tiny_model fixes the architecture; drop {', '.join(given)}")
        return strokenet.tiny_model_config(in_channels=in_channels)
    overrides = {"in_channels": in_channels}
    for name in ("widths", "blocks_per_stage"):
        values = flag_values[name].value
        if flag_values[name].present:
            try:
                overrides[name] = tuple(int(value) for value in values)
            except ValueError:
                raise config_lib.ConfigError(f"--{name}: expected integers, got {','.join(values)}") from None
    for name in ("refinement_width", "norm"):
        if flag_values[name].present:
            overrides[name] = flag_values[name].value
    try:
        return dataclasses.replace(strokenet.ModelConfig(), **overrides)
    except (TypeError, ValueError) as error:
        raise config_lib.ConfigError(f"model flags: {error}") from None


def config_from_flags(flag_values) -> config_lib.TrainConfig:
    """Turns parsed flags into a validated TrainConfig (the only place that reads flags).

    Raises:
        config_lib.ConfigError / curriculum.CurriculumError: one line naming the flag.
    """
    if flag_values.model_dir and os.path.exists(flag_values.model_dir) and not os.path.isdir(flag_values.model_dir):
        raise config_lib.ConfigError(f"--model_dir={flag_values.model_dir}: exists and is not a folder")
    patch_size = curriculum_lib.parse_patch_size(flag_values.patch_size)
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
    try:
        pipeline = config_lib.InputConfig(**cli.config_values(config_lib.InputConfig, flag_values))
    except (TypeError, ValueError) as error:
        raise config_lib.ConfigError(f"pipeline flags: {error}") from None
    config = config_lib.TrainConfig(model=_model_config(flag_values), pipeline=pipeline, curriculum=curriculum,
                                    **cli.config_values(config_lib.TrainConfig, flag_values))
    return config.validate()


def config_from_args(args: list[str]) -> config_lib.TrainConfig:
    """The TrainConfig of a train command line without the program name (e.g. ["--flagfile=F", ...]), parsed
    on a fresh FlagValues (the global FLAGS stay untouched)."""
    flag_values = flags.FlagValues()
    define_flags(flag_values)
    flag_values(["train", *args])
    return config_from_flags(flag_values)


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


def _fail(message) -> None:
    cli.fail(TOOL, message)


def main(argv, flag_values: flags.FlagValues = FLAGS):
    cli.reject_arguments(TOOL, argv)
    try:
        config = config_from_flags(flag_values)
    except (config_lib.ConfigError, curriculum_lib.CurriculumError) as error:
        _fail(error)
    # TensorFlow is initialised from here on: devices and the multi-worker runtime come first.
    from strokenet_tf.training import distribute, loop

    absl_logging.get_absl_handler().addFilter(package_info_filter)

    try:
        distribute.split_cpu(config.cpu_devices)
        strategy = distribute.make_strategy(config.strategy)
        result = loop.train(config, strategy=strategy)
    except user_errors() as error:
        _fail(error)
    except OSError as error:  # an unwritable --model_dir, a full disk, ...
        _fail(cli.os_error_line(error, config.model_dir))
    if distribute.is_chief(strategy):
        # The run's one summary line (the trainer's log has one line per epoch, none at the end).
        print(
            f"Finished {result.epochs_done} epochs ({result.global_step} steps). Best validation Dice "
            f"{result.best_val_dice:.4f} at epoch {result.best_epoch}: {result.best_model_path}. "
            f"History: {result.history_path} and progress.png. Checkpoints: {config.model_dir}/checkpoints. "
            f"TensorBoard: tensorboard --logdir {config.model_dir}", flush=True,
        )


if __name__ == "__main__":
    cli.run(main, define_flags)
