"""Tests for strokenet_tf.curriculum: stage parsing, round trips, stage_at and validation."""

import pytest

from strokenet_tf import cli, curriculum as cl

STAGES = [
    "name=warmup,epochs=2,augment=0,gamma=0.0,alpha=0.5,dice=0,lr=1e-3,patch=8x128x128",
    "name=focal,epochs=3,augment=1,gamma=0.5,gamma_end=2.0,patch=full",
    "name=main,epochs=1",
]


def _curriculum():
    return cl.Curriculum.from_strings(STAGES, default_learning_rate=2e-4, default_patch_size=(4, 64, 64))


def test_parse_stage_values_and_defaults():
    warmup, focal, main = _curriculum().stages
    assert warmup == cl.CurriculumStage(
        name="warmup", epochs=2, augment=0, gamma=0.0, gamma_end=0.0, alpha=0.5, dice_weight=0.0,
        learning_rate=1e-3, patch_size=(8, 128, 128),
    )
    assert (focal.gamma, focal.gamma_end, focal.patch_size, focal.learning_rate) == (0.5, 2.0, None, 2e-4)
    assert (main.gamma, main.gamma_end, main.alpha, main.dice_weight) == (2.0, 2.0, 0.25, 1.0)
    assert main.patch_size == (4, 64, 64) and main.augment == 0


def test_stage_at_and_total_epochs():
    curriculum = _curriculum()
    assert curriculum.total_epochs == 6
    assert [curriculum.stage_at(epoch)[0] for epoch in range(6)] == [0, 0, 1, 1, 1, 2]
    assert curriculum.stage_at(4)[1].name == "focal"
    assert [curriculum.stage_start(i) for i in range(3)] == [0, 2, 5]
    with pytest.raises(ValueError):
        curriculum.stage_at(6)
    with pytest.raises(ValueError):
        curriculum.stage_at(-1)


def test_gamma_ramps_linearly_inside_a_stage():
    curriculum = _curriculum()
    assert [curriculum.gamma_at(epoch) for epoch in range(6)] == [0.0, 0.0, 0.5, 1.25, 2.0, 2.0]


def test_string_and_dict_round_trips():
    curriculum = _curriculum()
    again = cl.Curriculum.from_strings(curriculum.to_strings(), default_learning_rate=9.0, default_patch_size=None)
    assert again == curriculum
    assert cl.Curriculum.from_dict(curriculum.to_dict()) == curriculum


def test_single_stage():
    curriculum = cl.Curriculum.single_stage(3, 1e-3, (4, 32, 32), gamma=1.0)
    assert curriculum.total_epochs == 3 and curriculum.stages[0].gamma == 1.0
    with pytest.raises(cl.CurriculumError, match="^epochs must be >= 1"):
        cl.Curriculum.single_stage(0, 1e-3, None)


@pytest.mark.parametrize(
    "text, message",
    [
        ("epochs=2", "missing required key 'name'"),
        ("name=a", "missing required key 'epochs'"),
        ("name=a,epochs=two", "epochs must be an integer, got 'two'"),
        ("name=a,epochs=0", "epochs must be >= 1"),
        ("name=a,epochs=1,speed=3", "unknown key 'speed'"),
        ("name=a,epochs=1,epochs=2", "key 'epochs' given twice"),
        ("name=a,epochs=1,gamma", "expected key=value"),
        ("name=a,epochs=1,alpha=1.5", r"alpha must be in \(0, 1\)"),
        ("name=a,epochs=1,gamma=-1", r"gamma must be in \[0, 10\]"),
        ("name=a,epochs=1,lr=0", r"lr must be in \(0, 1\]"),
        ("name=a,epochs=1,lr=nan", "lr must be finite"),
        ("name=a,epochs=1,dice=-1", "dice must be >= 0"),
        ("name=a,epochs=1,patch=8x128", "expected DEPTHxHEIGHTxWIDTH"),
        ("name=a,epochs=1,augment=-1", "augment must be >= 0"),
    ],
)
def test_parse_errors_are_one_line_and_name_the_field(text, message):
    with pytest.raises(cl.CurriculumError, match=message) as info:
        cl.parse_stage(text, 1e-3, None)
    assert str(info.value).startswith("stage=") and "\n" not in str(info.value)
    assert info.value.field == "stage" and cli.error_line(info.value).startswith("--stage=")


def test_validate_against_augmentation_and_multiples():
    curriculum = _curriculum()
    curriculum.validate(num_augmentation_stages=2, multiples=(2, 16, 16))
    with pytest.raises(cl.CurriculumError, match=r"augment must be in \[0, 0\]"):
        curriculum.validate(num_augmentation_stages=1)
    with pytest.raises(cl.CurriculumError, match="patch 8x128x128 must be a multiple of the model's 1x48x48"):
        curriculum.validate(multiples=(1, 48, 48))
    with pytest.raises(cl.CurriculumError, match="names must be unique"):
        cl.Curriculum.from_strings(["name=a,epochs=1", "name=a,epochs=1"], 1e-3, None)
    with pytest.raises(cl.CurriculumError, match="at least one stage"):
        cl.Curriculum(())


def test_describe_is_one_line():
    line = _curriculum().stages[1].describe()
    assert "focal gamma 0.5->2" in line and "whole slab" in line and "\n" not in line
