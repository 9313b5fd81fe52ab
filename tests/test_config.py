"""Tests for strokenet_tf.config and the flag -> config path of strokenet_tf.train."""

import dataclasses
import os
import re

import pytest
from absl import flags

from strokenet_tf import curriculum as curriculum_lib
from strokenet_tf import train
from strokenet_tf.config import RUNTIME_FIELDS, ConfigError, InputConfig, TrainConfig
from strokenet_tf.data import augment, pipeline
from strokenet_tf.model import strokenet
from strokenet_tf.training import checkpointing

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def parse_flags():
    """Parses argv into a fresh FlagValues holding the trainer's flags (the global FLAGS stay untouched)."""

    def parse(*argv):
        flag_values = flags.FlagValues()
        train.define_flags(flag_values)
        flag_values(["train", *argv])
        return flag_values

    return parse


def _config(**overrides):
    values = dict(
        data_dir="data", model_dir="runs/a", model=strokenet.tiny_model_config(in_channels=5),
        pipeline=pipeline.PipelineConfig(),
        curriculum=curriculum_lib.Curriculum.from_strings(
            ["name=warmup,epochs=1,gamma=0,patch=full", "name=main,epochs=2,gamma=1,gamma_end=2"], 1e-3, (2, 32, 32)),
    )
    values.update(overrides)
    return TrainConfig(**values)


def test_json_round_trip_keeps_types():
    config = _config(patient_map="patients.csv", mixed_precision=True, strategy="mirrored")
    again = TrainConfig.from_json(config.to_json())
    assert again == config
    assert isinstance(again.channels, tuple) and isinstance(again.curriculum.stages[1].patch_size, tuple)
    assert again.to_dict() == config.to_dict()


def test_from_dict_rejects_unknown_fields():
    data = _config().to_dict()
    data["learning_rat"] = 1.0
    with pytest.raises(ConfigError, match="unknown field.*learning_rat"):
        TrainConfig.from_dict(data)
    data = _config().to_dict()
    del data["model"]
    with pytest.raises(ConfigError, match="missing field 'model'"):
        TrainConfig.from_dict(data)


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"fold": 5}, r"^fold must be in \[0, 4\]"),
        ({"num_folds": 1, "fold": 0}, "^num_folds must be >= 2"),
        ({"batch_size": 0}, "^batch_size must be >= 1"),
        ({"optimizer": "sgd"}, "^optimizer must be one of adam, adamw"),
        ({"strategy": "tpu"}, "^strategy must be one of"),
        ({"channels": ("CT", "CT_CBF")}, "^channels gives 2 channel"),
        ({"channels": ("CT", "CT_CBF", "CT_CBV", "CT_MTT", "OT")}, "^channels: unknown modality OT"),
        ({"validate_every_epochs": 0}, "^validate_every_epochs must be >= 1"),
    ],
)
def test_validate_errors_name_the_field(overrides, message):
    with pytest.raises(ConfigError, match=message) as info:
        _config(**overrides).validate()
    assert info.value.field == message.split()[0].strip("^:")


def test_model_dir_check_ignores_runtime_fields_only(tmp_path):
    config = _config(model_dir=str(tmp_path))
    assert not checkpointing.check_or_write_config(str(tmp_path), config.to_dict(), RUNTIME_FIELDS)
    assert (tmp_path / "config.json").exists()
    moved = dataclasses.replace(config, strategy="mirrored", checkpoint_every_steps=7, verbose=False)
    assert checkpointing.check_or_write_config(str(tmp_path), moved.to_dict(), RUNTIME_FIELDS)
    other = dataclasses.replace(config, seed=3, batch_size=8)
    with pytest.raises(checkpointing.ModelDirError, match=r"batch_size: 2 -> 8; seed: 0 -> 3"):
        checkpointing.check_or_write_config(str(tmp_path), other.to_dict(), RUNTIME_FIELDS)
    stages = curriculum_lib.Curriculum.single_stage(5, 1e-3, None)
    with pytest.raises(checkpointing.ModelDirError, match=r"curriculum\.stages"):
        checkpointing.check_or_write_config(
            str(tmp_path), dataclasses.replace(config, curriculum=stages).to_dict(), RUNTIME_FIELDS)


@pytest.mark.parametrize("name", ["demo", "default"])
def test_experiment_flagfiles_parse_and_fit_the_model(parse_flags, name):
    flag_values = parse_flags(f"--flagfile={REPO}/experiments/{name}.flags", "--data_dir=d", "--model_dir=m")
    config = train.config_from_flags(flag_values)
    assert len(config.curriculum.stages) >= 3
    assert config.curriculum.stages[0].gamma == 0.0 and config.curriculum.stages[-1].gamma_end == 2.0
    config.curriculum.validate(len(augment.AUGMENTATION_STAGES), config.model.required_multiples)
    assert TrainConfig.from_json(config.to_json()) == config


def test_flags_to_config(parse_flags):
    flag_values = parse_flags(
        "--data_dir=d", "--model_dir=m", "--tiny_model", "--epochs=3", "--patch_size=full", "--focal_gamma=1.5",
        "--fold=2", "--num_folds=4", "--seed=9", "--batch_size=3", "--learning_rate=0.01", "--optimizer=adamw",
        "--mixed_precision", "--strategy=mirrored", "--cpu_devices=2", "--patient_map=p.csv",
    )
    config = train.config_from_flags(flag_values)
    assert config.model == strokenet.tiny_model_config(in_channels=5)
    (stage,) = config.curriculum.stages
    assert (stage.epochs, stage.patch_size, stage.gamma, stage.learning_rate) == (3, None, 1.5, 0.01)
    assert (config.fold, config.num_folds, config.seed, config.batch_size) == (2, 4, 9, 3)
    assert (config.optimizer, config.mixed_precision, config.strategy, config.cpu_devices) == (
        "adamw", True, "mirrored", 2)
    assert config.patient_map == "p.csv" and config.pipeline == InputConfig()


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--epochs=2", "--stage=name=a,epochs=1"], "either --stage"),
        ([], "give the curriculum as --stage"),
        (["--epochs=2", "--patch_size=8x8"], "--patch_size: expected DEPTHxHEIGHTxWIDTH"),
        (["--epochs=2", "--fold=7"], r"--fold must be in \[0, 4\]"),
        (["--epochs=2", "--widths=4,8"], "--tiny_model fixes the architecture; drop --widths"),
        (["--stage=name=a,epochs=1,gamma=-2"], r"--stage='name=a,epochs=1,gamma=-2': gamma must be in \[0, 10\]"),
    ],
)
def test_bad_flags_exit_with_one_line(parse_flags, capsys, argv, message):
    flag_values = parse_flags("--data_dir=d", "--model_dir=m", "--tiny_model", *argv)
    with pytest.raises(SystemExit) as info:
        train.main(["train"], flag_values)
    assert info.value.code == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and error.startswith("strokenet_tf.train: error: ")
    assert re.search(message, error), error


def test_missing_data_dir_is_refused_before_writing_anything(parse_flags, capsys, tmp_path):
    model_dir = tmp_path / "run"
    flag_values = parse_flags(f"--data_dir={tmp_path / 'nope'}", f"--model_dir={model_dir}", "--tiny_model",
                              "--epochs=1")
    with pytest.raises(SystemExit) as info:
        train.main(["train"], flag_values)
    assert info.value.code == 2
    error = capsys.readouterr().err
    assert re.search(r"error: --data_dir=\S+nope: no such folder", error), error
    assert not (model_dir / "config.json").exists()
