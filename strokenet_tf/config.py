"""Typed configuration of a training run, filled from flags by `strokenet_tf.train` (and by tests directly).

`TrainConfig` aggregates the model (`model.strokenet.ModelConfig`), the input pipeline
(`data.pipeline.PipelineConfig`, whose patch size, batch size, multiples and seed the trainer overrides per
stage) and the curriculum. It round-trips through JSON: MODEL_DIR/config.json records the run, and a restart
in the same model_dir must describe the same run (fields in RUNTIME_FIELDS may differ: they change how the
run executes, not what it computes).

Example:
    >>> config = TrainConfig(data_dir="data", model_dir="runs/a", model=ModelConfig(),
    ...                      pipeline=PipelineConfig(), curriculum=Curriculum.single_stage(2, 1e-3, None))
    >>> TrainConfig.from_json(config.to_json()) == config
    True
"""

from __future__ import annotations

import dataclasses
import json
import typing
from typing import Any, Mapping

from strokenet_tf.curriculum import Curriculum
from strokenet_tf.data import isles
from strokenet_tf.data.pipeline import PipelineConfig
from strokenet_tf.model.strokenet import ModelConfig

OPTIMIZERS = ("adam", "adamw")
STRATEGIES = ("default", "mirrored", "multi_worker")
# May change between a run and its resumption without changing what is computed.
RUNTIME_FIELDS = ("model_dir", "strategy", "cpu_devices", "checkpoint_every_steps", "keep_checkpoints",
                  "log_every_steps", "verbose")


class ConfigError(ValueError):
    """An invalid setting; the message is one line naming the flag."""


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Everything a training run depends on.

    Attributes:
        data_dir: ISLES 2018 root (holding TRAINING/), a split folder or a synthetic dataset.
        model_dir: where checkpoints, TensorBoard logs, config.json and best.keras go.
        model: network architecture.
        pipeline: input pipeline settings; patch_size is the default for stages without `patch=`, and
            batch_size / multiples / seed are replaced by the fields below and the model's multiples.
        curriculum: training stages (augmentation, loss parameters, patch size, learning rate, epochs).
        split: which split folder of data_dir to read (TRAINING holds the labels).
        channels: input modalities, in network channel order (len == model.in_channels).
        num_folds: cross-validation folds; fold: the held-out fold, in [0, num_folds).
        seed: seeds the fold split, the weights and the per-epoch data order.
        patient_map: optional CSV (case_id,patient_id) that keeps a patient's slabs in one fold.
        batch_size: global batch size (all replicas together).
        learning_rate: learning rate of stages that do not set `lr=`.
        optimizer: "adam" or "adamw"; weight_decay: AdamW's decoupled weight decay.
        mixed_precision: train with the mixed_float16 policy and loss scaling.
        strategy: "default", "mirrored" or "multi_worker" (tf.distribute).
        cpu_devices: split the host CPU into this many logical devices (mirrored training without GPUs).
        steps_per_epoch: optimizer steps per epoch; 0 = one pass over the training patches.
        validate_every_epochs: validate (and maybe export best.keras) every N epochs and after the last.
        checkpoint_every_steps: also checkpoint every N steps inside an epoch (0 = only at epoch ends).
        keep_checkpoints: how many "latest" checkpoints to keep.
        log_every_steps: per-step TensorBoard scalars every N steps.
        verbose: show a progress bar per epoch.
    """

    data_dir: str
    model_dir: str
    model: ModelConfig
    pipeline: PipelineConfig
    curriculum: Curriculum
    split: str = "TRAINING"
    channels: tuple[str, ...] = isles.DEFAULT_CHANNELS
    num_folds: int = 5
    fold: int = 0
    seed: int = 0
    patient_map: str | None = None
    batch_size: int = 2
    learning_rate: float = 1e-3
    optimizer: str = "adam"
    weight_decay: float = 1e-4
    mixed_precision: bool = False
    strategy: str = "default"
    cpu_devices: int = 0
    steps_per_epoch: int = 0
    validate_every_epochs: int = 1
    checkpoint_every_steps: int = 100
    keep_checkpoints: int = 3
    log_every_steps: int = 10
    verbose: bool = True

    def validate(self) -> "TrainConfig":
        """Checks value ranges; returns self.

        Raises:
            ConfigError: one line naming the flag.
        """
        checks = [
            (self.num_folds >= 2, f"--num_folds must be >= 2, got {self.num_folds}"),
            (0 <= self.fold < self.num_folds, f"--fold must be in [0, {self.num_folds - 1}], got {self.fold}"),
            (self.batch_size >= 1, f"--batch_size must be >= 1, got {self.batch_size}"),
            (0.0 < self.learning_rate <= 1.0, f"--learning_rate must be in (0, 1], got {self.learning_rate}"),
            (self.optimizer in OPTIMIZERS,
             f"--optimizer must be one of {', '.join(OPTIMIZERS)}, got {self.optimizer!r}"),
            (self.weight_decay >= 0.0, f"--weight_decay must be >= 0, got {self.weight_decay}"),
            (self.strategy in STRATEGIES, f"--strategy must be one of {', '.join(STRATEGIES)}, got {self.strategy!r}"),
            (self.cpu_devices >= 0, f"--cpu_devices must be >= 0, got {self.cpu_devices}"),
            (self.steps_per_epoch >= 0, f"--steps_per_epoch must be >= 0, got {self.steps_per_epoch}"),
            (self.validate_every_epochs >= 1,
             f"--validate_every_epochs must be >= 1, got {self.validate_every_epochs}"),
            (self.checkpoint_every_steps >= 0,
             f"--checkpoint_every_steps must be >= 0, got {self.checkpoint_every_steps}"),
            (self.keep_checkpoints >= 1, f"--keep_checkpoints must be >= 1, got {self.keep_checkpoints}"),
            (self.log_every_steps >= 1, f"--log_every_steps must be >= 1, got {self.log_every_steps}"),
            (len(self.channels) == self.model.in_channels,
             f"--channels gives {len(self.channels)} channel(s) but the model takes {self.model.in_channels}"),
        ]
        unknown = [name for name in self.channels if name not in isles.ALL_MODALITIES or name == isles.LABEL]
        checks.append((not unknown, f"--channels: unknown modality {', '.join(unknown)}"))
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)
        return self

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready nested dict (tuples become lists)."""
        data = {field.name: getattr(self, field.name) for field in dataclasses.fields(self)}
        data["model"] = _jsonable(dataclasses.asdict(self.model))
        data["pipeline"] = _jsonable(dataclasses.asdict(self.pipeline))
        data["curriculum"] = _jsonable(self.curriculum.to_dict())
        return _jsonable(data)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "TrainConfig":
        """Inverse of `to_dict`.

        Raises:
            ConfigError: unknown or missing fields.
        """
        values = dict(data)
        try:
            values["model"] = _dataclass_from_dict(ModelConfig, values["model"], "model")
            values["pipeline"] = _dataclass_from_dict(PipelineConfig, values["pipeline"], "pipeline")
            values["curriculum"] = Curriculum.from_dict(values["curriculum"])
        except KeyError as error:
            raise ConfigError(f"config: missing field {error.args[0]!r}") from None
        return _dataclass_from_dict(cls, values, "config")

    @classmethod
    def from_json(cls, text: str) -> "TrainConfig":
        return cls.from_dict(json.loads(text))


def _jsonable(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(key): _jsonable(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(item) for item in value]
    if hasattr(value, "item") and callable(value.item):  # numpy scalars
        return value.item()
    return value


def _tuples(value: Any) -> Any:
    if isinstance(value, list):
        return tuple(_tuples(item) for item in value)
    return value


def _dataclass_from_dict(cls, data: Mapping[str, Any], where: str):
    names = {field.name for field in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(f"{where}: unknown field(s) {', '.join(unknown)}")
    try:
        hints = typing.get_type_hints(cls)
    except (NameError, TypeError):
        hints = {}
    values = {}
    for key, value in data.items():
        # Lists come back as tuples; a list-typed field (rare) keeps its list.
        is_list_field = typing.get_origin(hints.get(key)) is list
        values[key] = value if is_list_field or dataclasses.is_dataclass(value) else _tuples(value)
    try:
        return cls(**values)
    except TypeError as error:
        raise ConfigError(f"{where}: {error}") from None
