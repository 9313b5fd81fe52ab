"""Tests for strokenet_tf.errors: library errors name config fields; `cli` spells them as each tool's flags."""

import pickle

import pytest

from strokenet_tf import cli, errors
from strokenet_tf.serving import exporting


def test_field_and_references_read_as_fields_in_the_library():
    error = errors.InputError("data_dir", "/x: no such folder")
    assert str(error) == "data_dir /x: no such folder" and error.field == "data_dir"
    assert str(errors.InputError("fold", ": bad")) == "fold: bad"
    assert str(errors.InputError("model_dir", "=/r holds checkpoints")) == "model_dir=/r holds checkpoints"
    assert str(errors.InputError(f"output /o exists; pass {errors.ref('overwrite')}")) == "output /o exists; pass overwrite"
    assert errors.InputError("no field at all").field is None
    with pytest.raises(TypeError):
        errors.InputError("a", "b", "c")


def test_entry_points_spell_fields_as_their_flags():
    error = errors.InputError("source", f": expected best or latest; or drop {errors.ref('model_dir')}")
    assert cli.error_line(error) == "--source: expected best or latest; or drop --model_dir"
    assert cli.error_line(error, {"source": "model_source", "model_dir": "model"}) == \
        "--model_source: expected best or latest; or drop --model"
    assert cli.error_line(ValueError("plain")) == "plain"


def test_fail_prints_the_flag_spelling(capsys):
    with pytest.raises(SystemExit) as info:
        cli.fail("tool", exporting.ExportError("version", ": expected a positive integer, got 0"))
    assert info.value.code == 2
    assert capsys.readouterr().err == "tool: error: --version: expected a positive integer, got 0\n"


def test_library_errors_are_input_errors_and_survive_pickling():
    error = exporting.ExportError("warmup_size", f": too small; see {errors.ref('warmup_depths')}")
    assert isinstance(error, errors.InputError) and isinstance(error, ValueError)
    copy = pickle.loads(pickle.dumps(error))
    assert type(copy) is exporting.ExportError and copy.field == "warmup_size"
    assert cli.error_line(copy) == "--warmup_size: too small; see --warmup_depths"
