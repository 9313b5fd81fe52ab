"""Tests for strokenet_tf.cross_validate and cross_validation: every fold trained and scored on its own held-out cases, the summary
over folds, resuming (a scored fold is skipped), refusals."""

import json
import math

import numpy as np
import pytest
from absl import flags

from strokenet_tf import cross_validate, cross_validation, evaluation
from strokenet_tf.data import folds, synthesis
from strokenet_tf.training import loop


def parse(*argv):
    flag_values = flags.FlagValues()
    cross_validate.define_flags(flag_values)
    flag_values(["cross_validate", *argv])
    return flag_values


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    synthesis.write_dataset(str(root), num_cases=4, seed=1, size=32, depths=(2,), with_pwi=False)
    return str(root)


def tiny_args(data_dir, model_dir):
    return [f"--data_dir={data_dir}", f"--model_dir={model_dir}", "--num_folds=2", "--seed=4", "--tiny_model",
            "--epochs=1", "--steps_per_epoch=1", "--patch_size=2x16x16", "--batch_size=2", "--noverbose"]


@pytest.fixture(scope="module")
def cv_run(data_dir, tmp_path_factory):
    model_dir = tmp_path_factory.mktemp("cv") / "runs"
    flag_values = parse(*tiny_args(data_dir, model_dir))
    return model_dir, flag_values


def test_every_fold_is_trained_scored_and_summarised(cv_run, data_dir, capsys):
    model_dir, flag_values = cv_run
    cross_validate.main(["cross_validate"], flag_values)
    printed = capsys.readouterr().out
    assert "Dice %" in printed and "threshold Dice %" in printed and "Recall %" in printed and "Precision %" in printed and "HD95 mm" in printed
    assert "StrokeNet report" in printed and "52.26%" in printed
    case_ids = [f"case_{k}" for k in range(1, 5)]
    summary = json.loads((model_dir / cross_validation.CV_SUMMARY_JSON).read_text())
    assert sorted(summary["folds"]) == ["0", "1"] and summary["n_cases"] == 4
    fold_means = []
    for fold in (0, 1):
        document = json.loads((model_dir / f"fold_{fold}" / "evaluation" / "summary.json").read_text())
        _, val_ids = folds.split_folds(case_ids, 2, fold, 4)
        assert document["case_ids"] == val_ids and document["fold"]["fold"] == fold
        assert (model_dir / f"fold_{fold}" / "best.keras").is_file()
        assert (model_dir / f"fold_{fold}" / "evaluation" / "per_case.csv").is_file()
        with np.load(model_dir / f"fold_{fold}" / "evaluation" / "out_of_fold.npz") as kept:  # for the calibration
            assert list(kept["case_ids"]) == val_ids and kept["probabilities"].size == kept["labels"].size > 0
            assert bool(kept["mirror"])
        fold_means.append(document["metrics"]["dice"]["mean"])
        baseline = document["threshold_baseline"]  # fitted on the fold's training cases, scored on its own
        assert sorted(baseline["dice_per_case"]) == sorted(val_ids) and " (normalised)" in baseline["rule"]
        assert baseline["dice"] == pytest.approx(np.mean(list(baseline["dice_per_case"].values())))
        assert summary["folds"][str(fold)]["threshold_dice"] == baseline["dice"]
        assert summary["folds"][str(fold)]["dice"] == document["metrics"]["dice"]["mean"]
    over = summary["mean_over_folds"]["dice"]
    assert over["mean"] == pytest.approx(sum(fold_means) / 2) and over["n_folds"] == 2
    assert over["std"] == pytest.approx(abs(fold_means[0] - fold_means[1]) / 2)
    lines = (model_dir / cross_validation.CV_SUMMARY_CSV).read_text().splitlines()
    assert lines[0].split(",") == cross_validation.CSV_HEADER and [line.split(",")[0] for line in lines[1:]] == \
        ["0", "1", "mean", "std"]
    assert lines[3].split(",")[2] == f"{100 * over['mean']:.2f}"


def test_rerun_skips_finished_folds(cv_run, monkeypatch, capsys):
    model_dir, flag_values = cv_run
    before = (model_dir / cross_validation.CV_SUMMARY_JSON).read_text()

    def no_training(config, *args, **kwargs):
        raise AssertionError(f"fold {config.fold} was trained again")

    monkeypatch.setattr(loop, "train", no_training)
    cross_validate.main(["cross_validate"], flag_values)
    assert (model_dir / cross_validation.CV_SUMMARY_JSON).read_text() == before


def test_settings_of_another_run_and_bad_flags_are_refused(cv_run, data_dir, capsys):
    model_dir, _ = cv_run
    for extra, message in (
        (["--learning_rate=0.01"], "different settings"),
        (["--folds=a"], "--folds: expected integers, got a"),
        (["--folds=2"], "--folds: 2 is not in [0, 1]"),
    ):
        with pytest.raises(SystemExit) as exit_info:
            cross_validate.main(["cross_validate"], parse(*tiny_args(data_dir, model_dir), *extra))
        err = capsys.readouterr().err.strip()
        assert exit_info.value.code == 2 and len(err.splitlines()) == 1, err
        assert err.startswith("strokenet_tf.cross_validate: error: ") and message in err


def test_aggregate_ignores_nan_folds_and_formats_percent():
    documents = {
        0: {"n_cases": 2, "metrics": {"dice": {"mean": 0.5}, "recall": {"mean": 0.25}, "hd95_mm": {"mean": None}}},
        1: {"n_cases": 3, "metrics": {"dice": {"mean": 0.7}, "recall": {"mean": 0.75}, "hd95_mm": {"mean": 4.0}}},
    }
    summary = cross_validation.aggregate(documents)
    assert summary["n_cases"] == 5 and summary["mean_over_folds"]["dice"]["mean"] == pytest.approx(0.6)
    assert summary["mean_over_folds"]["hd95_mm"] == {"mean": 4.0, "std": 0.0, "n_folds": 1}
    assert math.isnan(summary["folds"][0]["hd95_mm"])
    table = cross_validation.format_cv_table(summary)
    assert table.splitlines()[0].split()[:6] == ["fold", "cases", "Dice", "%", "threshold", "Dice"]
    assert table.splitlines()[3].split()[:6] == ["mean", "5", "60.00", "nan", "50.00", "nan"]
    assert evaluation.json_safe(summary)["folds"]["0"]["hd95_mm"] is None
