"""Tests for strokenet_tf.evaluate / strokenet_tf.evaluation: the fold split of training, CSV and JSON contents
consistent with metrics.case_metrics, refusals, a bad case skipped with exit code 1."""

import csv
import json
import math
import shutil

import numpy as np
import pytest
from absl import flags

from strokenet_tf import curriculum as curriculum_lib
from strokenet_tf import evaluate, evaluation, inference, metrics
from strokenet_tf.config import TrainConfig
from strokenet_tf.data import isles, pipeline, synthesis
from strokenet_tf.model import strokenet
from strokenet_tf.training import loop


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """6 labelled cases, 3 folds, a tiny network trained for 3 steps on fold 1."""
    root = tmp_path_factory.mktemp("data")
    synthesis.write_dataset(str(root), num_cases=6, seed=3, size=32, depths=(2, 3), with_pwi=False)
    model = strokenet.tiny_model_config(in_channels=5)
    config = TrainConfig(
        data_dir=str(root), model_dir=str(tmp_path_factory.mktemp("run") / "model"), model=model,
        pipeline=pipeline.PipelineConfig(), num_folds=3, fold=1, seed=5, batch_size=2, steps_per_epoch=3,
        verbose=False, curriculum=curriculum_lib.Curriculum.single_stage(1, 1e-3, tuple(model.required_multiples)),
    )
    return config, loop.train(config)


def run_main(*argv):
    flag_values = flags.FlagValues()
    evaluate.define_flags(flag_values)
    flag_values(["evaluate", *argv])
    evaluate.main(["evaluate"], flag_values)


def test_fold_selection_recreates_the_training_split(tiny_run):
    config, result = tiny_run
    run_config = json.load(open(f"{config.model_dir}/config.json"))
    spec = evaluation.fold_spec_from_run(run_config, 1, {})
    assert (spec.num_folds, spec.seed, spec.patient_map) == (3, 5, None)
    selected = evaluation.select_case_dirs(config.data_dir, "TRAINING", spec)
    assert [d.name for d in selected] == result.val_ids and len(result.val_ids) == 2
    other = evaluation.select_case_dirs(config.data_dir, "TRAINING", evaluation.FoldSpec(0, 3, 5))
    assert not {d.name for d in other} & set(result.val_ids)
    with pytest.raises(evaluation.EvaluationError, match="^fold needs num_folds"):
        evaluation.fold_spec_from_run({}, 0, {})


def test_command_line_writes_csv_and_json_consistent_with_metrics(tiny_run, tmp_path, capsys):
    config, result = tiny_run
    out = tmp_path / "eval"
    run_main(f"--model={config.model_dir}", "--fold=1", f"--output_dir={out}", "--noprogress")
    printed = capsys.readouterr().out
    assert "fold 1 of 3" in printed and "dice" in printed
    with open(out / "per_case.csv", newline="") as stream:
        rows = list(csv.DictReader(stream))
    assert [row["case_id"] for row in rows] == result.val_ids
    assert list(rows[0]) == list(evaluation.CSV_COLUMNS)
    segmenter = inference.Segmenter.from_run(config.model_dir)
    for row in rows:
        case = isles.read_case(f"{config.data_dir}/TRAINING/{row['case_id']}", require_label=True)
        _, mask = segmenter.predict_case(case)
        expected = metrics.case_metrics(mask, case.label, case.spacing_mm, empty_score="zero")
        for key in metrics.CASE_METRIC_KEYS:
            value = float(row[key])
            assert (math.isnan(value) and math.isnan(expected[key])) or value == expected[key], key

    def strict(text):
        raise AssertionError(f"non-standard JSON constant {text}")

    summary = json.loads((out / "summary.json").read_text(), parse_constant=strict)
    assert summary["n_cases"] == 2 and summary["fold"] == {"fold": 1, "num_folds": 3, "seed": 5, "patient_map": None}
    assert summary["empty_score"] == "zero" and summary["empty_distance"] == "nan" and summary["failed"] == []
    for key in metrics.CASE_METRIC_KEYS:
        values = np.array([float(row[key]) for row in rows])
        kept = values[~np.isnan(values)]
        stats = summary["metrics"][key]
        assert stats["n"] == kept.size and stats["n_nan"] == values.size - kept.size
        if kept.size:
            assert stats["mean"] == pytest.approx(np.mean(kept), rel=1e-12, abs=1e-12)
            assert stats["std"] == pytest.approx(np.std(kept), rel=1e-12, abs=1e-12)
            assert stats["median"] == pytest.approx(np.median(kept), rel=1e-12, abs=1e-12)
        else:
            assert stats["mean"] is None

    with pytest.raises(SystemExit) as exit_info:
        run_main(f"--model={config.model_dir}", "--fold=1", f"--output_dir={out}", "--noprogress")
    err = capsys.readouterr().err.strip()
    assert exit_info.value.code == 2
    assert err == f"strokenet_tf.evaluate: error: output {out / 'per_case.csv'} already exists; pass --overwrite to " \
                  "replace it"


def test_bad_case_is_skipped_and_exit_code_is_1(tiny_run, tmp_path, capsys):
    config, _ = tiny_run
    data = tmp_path / "data"
    shutil.copytree(config.data_dir, data)
    label_dir = next((data / "TRAINING" / "case_2").glob("*.O.OT.*"))
    shutil.rmtree(label_dir)
    out = tmp_path / "eval"
    with pytest.raises(SystemExit) as exit_info:
        run_main(f"--model={config.model_dir}", f"--data_dir={data}", f"--output_dir={out}", "--noprogress",
                 "--empty_score=nan")
    captured = capsys.readouterr()
    assert exit_info.value.code == 1
    assert "warning: case_2: skipped: case_2: no ground truth (OT)" in captured.err
    assert captured.err.strip().splitlines()[-1].startswith("strokenet_tf.evaluate: error: 1 case(s) failed: case_2")
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n_cases"] == 5 and summary["fold"] is None
    assert [f["case_id"] for f in summary["failed"]] == ["case_2"] and summary["empty_score"] == "nan"
    assert "case_2" not in (out / "per_case.csv").read_text()


def test_user_errors_are_one_line(tiny_run, tmp_path, capsys):
    config, _ = tiny_run
    for argv, message in (
        ([f"--model={tmp_path / 'none'}"], "no such model folder or file"),
        ([f"--model={config.model_dir}", "--empty_score=maybe"], "--empty_score must be one of"),
        ([f"--model={config.model_dir}", "--fold=7"], "fold must be in [0, 2]"),
    ):
        with pytest.raises(SystemExit) as exit_info:
            run_main(*argv, f"--output_dir={tmp_path / 'out'}", "--noprogress")
        err = capsys.readouterr().err.strip()
        assert exit_info.value.code == 2 and len(err.splitlines()) == 1, err
        assert err.startswith("strokenet_tf.evaluate: error: ") and message in err
