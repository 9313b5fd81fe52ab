"""The command-line surface shared by every entry point (strokenet_tf.cli, cli_flags, cli_startup).

--help exits 0 and lists every flag a tool takes; old flag names still work and set the new ones (with one
note on stderr); the experiment flagfiles give exactly the configs they gave before the flags were derived
from the config fields (tests/data/experiment_configs.json, written by the previous flag code); TensorFlow's
start-up notices are filtered and nothing else.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import os
import subprocess
import sys

import pytest
from absl import flags

from strokenet_tf import cli, config as config_lib, cross_validate, train
from strokenet_tf.cli_startup import is_startup_notice, started_as_entry_point
from strokenet_tf.training import checkpointing

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENTRY_POINTS = (
    "strokenet_tf.train", "strokenet_tf.cross_validate", "strokenet_tf.evaluate", "strokenet_tf.predict",
    "strokenet_tf.export", "strokenet_tf.serving_client", "strokenet_tf.baselines", "strokenet_tf.calibrate",
    "strokenet_tf.data.synthesize", "strokenet_tf.data.difficulty", "strokenet_tf.benchmarks.__main__",
    "strokenet_tf.benchmarks.pipeline", "strokenet_tf.benchmarks.ensemble", "strokenet_tf.benchmarks.generalisation",
    "strokenet_tf.benchmarks.perfusion", "strokenet_tf.benchmarks.perfusion_agreement",
)
EXPERIMENTS = json.load(open(os.path.join(REPO, "tests", "data", "experiment_configs.json"), encoding="utf-8"))

# tool -> {old name: new name} (README "Renamed flags" lists the same).
RENAMED = {
    "strokenet_tf.export": {"model_dir": "model", "source": "model_source"},
    "strokenet_tf.serving_client": {"model": "model_name"},
    "strokenet_tf.cross_validate": {"eval_model_source": "model_source"},
    "strokenet_tf.baselines": {"model_dir": "model"},
    "strokenet_tf.calibrate": {"cv_dir": "model", "source": "model_source"},
    "strokenet_tf.data.synthesize": {"no_pwi": "nopwi"},
    "strokenet_tf.benchmarks.__main__": {"run_dir": "model"},
    "strokenet_tf.benchmarks.pipeline": {"json": "output"},
    "strokenet_tf.benchmarks.ensemble": {"cv_dir": "model"},
    "strokenet_tf.benchmarks.generalisation": {"work_dir": "output_dir", "recipe": "experiment"},
}


def _defined(module_name: str) -> tuple[object, flags.FlagValues]:
    module = importlib.import_module(module_name)
    flag_values = flags.FlagValues()
    module.define_flags(flag_values)
    return module, flag_values


@pytest.mark.parametrize("module_name", ENTRY_POINTS)
def test_help_exits_0_and_lists_every_flag(module_name, capsys):
    module = importlib.import_module(module_name)
    flag_values = flags.FlagValues()
    with pytest.raises(SystemExit) as exit_info:
        cli.run(module.main, module.define_flags, argv=[module_name, "--help"], flag_values=flag_values)
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(module.__doc__.strip().splitlines()[0])
    listed = {line.split(":")[0].strip().replace("--[no]", "--") for line in out.split("\nFlags:\n")[1].splitlines()
              if line.startswith("  --")}
    current = {f"--{name}" for name in flag_values if not cli.cli_flags.is_old_name(flag_values[name])
               and flag_values[name].name == name and cli._ours(flag_values, name)}
    assert listed == current
    for old, new in cli.old_names(flag_values, list(flag_values)):
        assert f"--{old} -> --{new}" in out


def test_cross_validate_help_lists_the_train_flags(capsys):
    with pytest.raises(SystemExit):
        cli.run(cross_validate.main, cross_validate.define_flags, argv=["cv", "-h"], flag_values=flags.FlagValues())
    out = capsys.readouterr().out
    for name in ("--stage", "--patch_size", "--learning_rate", "--data_dir", "--folds", "--model_source"):
        assert f"\n  {name}:" in out, name


def test_help_and_flags_are_read_the_same_before_a_double_dash():
    assert cli.help_requested(["t", "--x=1", "--helpfull"]) == "full"
    assert cli.help_requested(["t", "-?"]) == "short"
    assert cli.help_requested(["t", "--", "--help"]) is None


@pytest.mark.parametrize("module_name, args", [("strokenet_tf.calibrate", ["--help"]),
                                               ("strokenet_tf.train", ["--helpshort"])])
def test_help_exits_0_in_a_real_process_without_tensorflow_notices(module_name, args):
    env = {key: value for key, value in os.environ.items() if key != "TF_CPP_MIN_LOG_LEVEL"}
    result = subprocess.run([sys.executable, "-m", module_name, *args], cwd=REPO, env=env, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "Flags:" in result.stdout and result.stderr == ""


@pytest.mark.parametrize("module_name", sorted(RENAMED))
def test_old_names_still_set_the_new_flags_with_one_note(module_name, capsys):
    _, flag_values = _defined(module_name)
    renamed = RENAMED[module_name]
    assert dict(cli.old_names(flag_values, list(flag_values))) == renamed
    required = sorted(cli.cli_flags.required_names(flag_values))
    for old, new in renamed.items():
        flag_values.unparse_flags()
        others = [f"--{name}=r" for name in required if name != new]
        if new.startswith("no"):  # an inverted boolean: --no_pwi means --nopwi
            flag_values(["tool", f"--{old}", *others])
            assert flag_values[new[2:]].value is False
        else:
            choices = getattr(flag_values[new].parser, "enum_values", None)
            value = choices[-1] if choices else "x/y"
            flag_values(["tool", f"--{old}={value}", *others])
            assert flag_values[new].value == value and flag_values[new].present
        note = capsys.readouterr().err.strip()
        assert note == f"{module_name.removesuffix('.__main__')}: warning: --{old} is an old name; use --{new}"


def test_synthesize_pwi_flag_and_its_old_double_negative():
    _, flag_values = _defined("strokenet_tf.data.synthesize")
    for argv, pwi in ([], True), (["--nopwi"], False), (["--no_pwi"], False), (["--nono_pwi"], True):
        flag_values.unparse_flags()
        flag_values(["synthesize", "--output_dir=o", *argv])
        assert flag_values.pwi is pwi, argv


@pytest.mark.parametrize("name", sorted(EXPERIMENTS))
@pytest.mark.parametrize("tool", [train, cross_validate])
def test_experiment_flagfiles_give_the_configs_they_always_gave(name, tool):
    flag_values = flags.FlagValues()
    tool.define_flags(flag_values)
    flag_values(["tool", f"--flagfile={REPO}/experiments/{name}.flags", "--data_dir=DATA", "--model_dir=RUN"])
    config = tool.config_from_flags(flag_values)
    config = config.train if tool is cross_validate else config
    assert json.loads(json.dumps(config.to_dict())) == EXPERIMENTS[name]
    assert config_lib.TrainConfig.from_json(config.to_json()) == config


def test_train_flag_defaults_and_help_are_the_config_fields():
    flag_values = flags.FlagValues()
    train.define_flags(flag_values)
    for cls in (config_lib.TrainConfig, config_lib.InputConfig):
        for field in cli.cli_flags.flag_fields(cls):
            flag = flag_values[cli.cli_flags.flag_name(field)]
            default = None if field.default is dataclasses.MISSING else field.default
            assert flag.default == (list(default) if isinstance(default, tuple) else default), field.name
            assert flag.help.endswith(field.metadata["help"]), field.name
    config = train.config_from_args(["--data_dir=d", "--model_dir=m", "--epochs=1"])
    assert config.pipeline == config_lib.InputConfig() and config.batch_size == config_lib.TrainConfig.batch_size
    assert config.model.widths == tuple(int(w) for w in flag_values["widths"].default)


def test_a_config_json_from_before_input_config_still_resumes(tmp_path):
    config = train.config_from_args([f"--flagfile={REPO}/experiments/demo.flags", "--data_dir=DATA",
                                     f"--model_dir={tmp_path}"])
    old = config.to_dict()
    old["pipeline"].update(patch_size=[4, 96, 96], batch_size=4, multiples=[2, 16, 16], seed=0)
    (tmp_path / checkpointing.CONFIG_FILE).write_text(json.dumps(old))
    assert config_lib.TrainConfig.from_dict(old) == config
    assert checkpointing.check_or_write_config(str(tmp_path), config.to_dict(), config_lib.RUNTIME_FIELDS)
    with pytest.raises(checkpointing.ModelDirError, match="patches_per_case"):
        moved = dataclasses.replace(config, pipeline=config_lib.InputConfig(patches_per_case=9))
        checkpointing.check_or_write_config(str(tmp_path), moved.to_dict(), config_lib.RUNTIME_FIELDS)


def test_patch_sizes_read_both_spellings():
    from strokenet_tf.benchmarks import pipeline as pipeline_benchmark

    assert pipeline_benchmark._triple("16,128,128", "patch_size") == pipeline_benchmark._triple("16x128x128", "p")
    assert train.config_from_args(["--data_dir=d", "--model_dir=m", "--epochs=1", "--patch_size=4,96,96"]) \
        .curriculum.stages[0].patch_size == (4, 96, 96)


def test_model_sources_are_the_inference_ones():
    from strokenet_tf import inference

    assert cli.MODEL_SOURCES == inference.MODEL_SOURCES


def test_only_tensorflow_start_up_notices_are_filtered():
    notices = [
        "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR",
        "I0000 00:00:1796145654.328319   14659 port.cc:153] oneDNN custom operations are on. You may see ...",
        "To enable the following instructions: AVX2 FMA, in other operations, rebuild TensorFlow with the "
        "appropriate compiler flags.",
    ]
    kept = ["W0000 00:00:1796145654.328319   14659 gpu_device.cc:2] Cannot dlopen some GPU libraries.",
            "E0000 00:00:1796145654.328319   14659 cuda_dnn.cc:8] Unable to register cuDNN factory",
            "UserWarning: something", "Traceback (most recent call last):"]
    assert all(is_startup_notice(line) for line in notices)
    assert not any(is_startup_notice(line) for line in kept)


@pytest.mark.parametrize("argv, expected", [
    (["python", "-m", "strokenet_tf.train", "--help"], True),
    (["python", "-W", "ignore", "-mstrokenet_tf.predict"], True),
    (["python", "-m", "pytest", "tests"], False),
    (["python", "script.py", "-m", "strokenet_tf.train"], False),
])
def test_entry_point_processes_are_recognised(argv, expected):
    assert started_as_entry_point(argv) is expected
