"""Typed configuration of a training run, filled from flags by `strokenet_tf.train` (and by tests directly).

`TrainConfig` aggregates the model (`model.strokenet.ModelConfig`), the input settings that hold for the
whole run (`InputConfig`; the patch size, batch size, multiples and seed of each stage's
`data.pipeline.PipelineConfig` come from the curriculum stage, the fields below and the model) and the
curriculum. Each field that is a flag carries its help in `metadata["help"]`: `strokenet_tf.train` defines
its flags from the fields (`cli.define_config_flags`), so every default is written once, here. A config
round-trips through JSON: MODEL_DIR/config.json records the run, and a restart in the same model_dir must
describe the same run (fields in RUNTIME_FIELDS may differ: they change how the run executes, not what it
computes).

Example:
    >>> config = TrainConfig(data_dir="data", model_dir="runs/a", model=ModelConfig(),
    ...                      pipeline=InputConfig(), curriculum=Curriculum.single_stage(2, 1e-3, None))
    >>> TrainConfig.from_json(config.to_json()) == config
    True
"""

from __future__ import annotations

import dataclasses
import json
import typing
from typing import Any, Mapping

from strokenet_tf import errors
from strokenet_tf.curriculum import Curriculum
from strokenet_tf.data import isles
from strokenet_tf.data.pipeline import PipelineConfig
from strokenet_tf.model.strokenet import ModelConfig

OPTIMIZERS = ("adam", "adamw")
STRATEGIES = ("default", "mirrored", "multi_worker")
# PipelineConfig fields each curriculum stage sets (its patch, the run's batch size and seed, the model's
# multiples); config.json files written before InputConfig hold them under "pipeline", with no effect.
STAGE_PIPELINE_FIELDS = ("patch_size", "batch_size", "multiples", "seed")
# May change between a run and its resumption without changing what is computed ("a.b": key b of a).
RUNTIME_FIELDS = ("model_dir", "strategy", "cpu_devices", "checkpoint_every_steps", "keep_checkpoints",
                  "log_every_steps", "verbose") + tuple(f"pipeline.{name}" for name in STAGE_PIPELINE_FIELDS)
_PIPELINE_DEFAULTS = {field.name: field.default for field in dataclasses.fields(PipelineConfig)}
DEFAULT_PATCH_SIZE = _PIPELINE_DEFAULTS["patch_size"]  # of stages without patch= (train's --patch_size)


def setting(default: Any = dataclasses.MISSING, help: str = "", **flag) -> Any:  # noqa: A002
    """A dataclass field that is also a command-line flag: its default and help live here only.

    `flag` may hold "choices" (an enum flag) and "flag" (a flag name other than the field's); see
    `cli.define_config_flags`.
    """
    return dataclasses.field(default=default, metadata={"help": help, **flag})


class ConfigError(errors.InputError):
    """An invalid setting; the message is one line naming the field (each tool spells it as its flag)."""


@dataclasses.dataclass(frozen=True)
class InputConfig:
    """The input pipeline settings that hold for a whole run (`data.pipeline.PipelineConfig` minus the fields
    each stage sets, `STAGE_PIPELINE_FIELDS`); defaults are PipelineConfig's.

    Attributes:
        patches_per_case, foreground_fraction: patch sampling (flags of the same names).
        shuffle_buffer, cache, num_parallel_calls: see `PipelineConfig`.
    """

    patches_per_case: int = setting(_PIPELINE_DEFAULTS["patches_per_case"],
                                    "Training patches drawn per case and epoch.")
    foreground_fraction: float = setting(_PIPELINE_DEFAULTS["foreground_fraction"],
                                         "Fraction of training patches centred on a lesion voxel.")
    shuffle_buffer: int = _PIPELINE_DEFAULTS["shuffle_buffer"]
    cache: str | None = _PIPELINE_DEFAULTS["cache"]
    num_parallel_calls: int | None = _PIPELINE_DEFAULTS["num_parallel_calls"]

    def __post_init__(self):
        self.for_stage(None, 1, (1, 1, 1), 0)  # PipelineConfig checks the values (one line naming the field)

    @classmethod
    def of(cls, config: PipelineConfig) -> "InputConfig":
        """The run-wide part of a PipelineConfig (its stage fields are dropped)."""
        return cls(**{field.name: getattr(config, field.name) for field in dataclasses.fields(cls)})

    def for_stage(self, patch_size, batch_size: int, multiples, seed: int) -> PipelineConfig:
        """The PipelineConfig of one curriculum stage."""
        return PipelineConfig(patch_size=patch_size, batch_size=batch_size, multiples=multiples, seed=seed,
                              **dataclasses.asdict(self))


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Everything a training run depends on; each flag field's help is its `metadata["help"]`.

    Attributes:
        data_dir, model_dir: where the cases are read and the run is written.
        model: network architecture.
        pipeline: run-wide input settings (a `PipelineConfig` given here is cut to its `InputConfig`).
        curriculum: training stages (augmentation, loss parameters, patch size, learning rate, epochs).
        the rest: see each field's help (also the --help of the flag of the same name).
    """

    data_dir: str = setting(help="ISLES 2018 root (holding TRAINING/), a split folder, or synthetic data.")
    model_dir: str = setting(help="Run folder written by training: checkpoints, TensorBoard logs, config.json, "
                             "best.keras.")
    model: ModelConfig
    pipeline: InputConfig
    curriculum: Curriculum
    split: str = setting("TRAINING", "Split folder of --data_dir to train on (it must have labels).")
    channels: tuple[str, ...] = setting(isles.DEFAULT_CHANNELS, "Input modalities in network channel order.")
    num_folds: int = setting(5, "Number of cross-validation folds.")
    fold: int = setting(0, "Held-out validation fold, in [0, num_folds).")
    seed: int = setting(0, "Seed of the fold split, the initial weights and the per-epoch data order.")
    patient_map: str | None = setting(None, "Optional CSV with columns case_id,patient_id: a patient's slabs "
                                      "share a fold.")
    batch_size: int = setting(2, "Global batch size (summed over all replicas and workers).")
    learning_rate: float = setting(1e-3, "Learning rate of stages that do not set lr=.")
    optimizer: str = setting("adam", "Optimizer (adamw: decoupled weight decay).", choices=OPTIMIZERS)
    weight_decay: float = setting(1e-4, "Decoupled weight decay (--optimizer=adamw only).")
    mixed_precision: bool = setting(False, "Train with the mixed_float16 policy and loss scaling.")
    strategy: str = setting("default", "tf.distribute strategy: default (one device), mirrored (local GPUs or "
                            "--cpu_devices), multi_worker (TF_CONFIG).", choices=STRATEGIES)
    cpu_devices: int = setting(0, "Split the CPU into this many logical devices (mirrored without GPUs).")
    steps_per_epoch: int = setting(0, "Optimizer steps per epoch; 0 = one pass over the training patches.")
    validate_every_epochs: int = setting(1, "Validate on the held-out fold every N epochs (and after the last).")
    checkpoint_every_steps: int = setting(100, "Also checkpoint every N steps inside an epoch (0 = epoch ends "
                                          "only).")
    keep_checkpoints: int = setting(3, "Number of latest checkpoints kept.")
    log_every_steps: int = setting(10, "Write per-step TensorBoard scalars every N steps.")
    verbose: bool = setting(True, "Show a progress bar per epoch.")

    def __post_init__(self):
        if isinstance(self.pipeline, PipelineConfig):
            object.__setattr__(self, "pipeline", InputConfig.of(self.pipeline))

    def validate(self) -> "TrainConfig":
        """Checks value ranges; returns self.

        Raises:
            ConfigError: one line naming the field.
        """
        checks = [
            (self.num_folds >= 2, "num_folds", f"must be >= 2, got {self.num_folds}"),
            (0 <= self.fold < self.num_folds, "fold", f"must be in [0, {self.num_folds - 1}], got {self.fold}"),
            (self.batch_size >= 1, "batch_size", f"must be >= 1, got {self.batch_size}"),
            (0.0 < self.learning_rate <= 1.0, "learning_rate", f"must be in (0, 1], got {self.learning_rate}"),
            (self.optimizer in OPTIMIZERS, "optimizer",
             f"must be one of {', '.join(OPTIMIZERS)}, got {self.optimizer!r}"),
            (self.weight_decay >= 0.0, "weight_decay", f"must be >= 0, got {self.weight_decay}"),
            (self.strategy in STRATEGIES, "strategy",
             f"must be one of {', '.join(STRATEGIES)}, got {self.strategy!r}"),
            (self.cpu_devices >= 0, "cpu_devices", f"must be >= 0, got {self.cpu_devices}"),
            (self.steps_per_epoch >= 0, "steps_per_epoch", f"must be >= 0, got {self.steps_per_epoch}"),
            (self.validate_every_epochs >= 1, "validate_every_epochs",
             f"must be >= 1, got {self.validate_every_epochs}"),
            (self.checkpoint_every_steps >= 0, "checkpoint_every_steps",
             f"must be >= 0, got {self.checkpoint_every_steps}"),
            (self.keep_checkpoints >= 1, "keep_checkpoints", f"must be >= 1, got {self.keep_checkpoints}"),
            (self.log_every_steps >= 1, "log_every_steps", f"must be >= 1, got {self.log_every_steps}"),
            (len(self.channels) == self.model.in_channels, "channels",
             f"gives {len(self.channels)} channel(s) but the model takes {self.model.in_channels}"),
        ]
        unknown = [name for name in self.channels if name not in isles.ALL_MODALITIES or name == isles.LABEL]
        checks.append((not unknown, "channels", f": unknown modality {', '.join(unknown)}"))
        for ok, field, message in checks:
            if not ok:
                raise ConfigError(field, message)
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
            pipeline = {k: v for k, v in values["pipeline"].items() if k not in STAGE_PIPELINE_FIELDS}
            values["pipeline"] = _dataclass_from_dict(InputConfig, pipeline, "pipeline")
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
