"""Every entry point, run as `python -m ...`, refuses bad flags and bad paths with one line and a non-zero exit.

One line means `<tool>: error: <message naming the flag or path>` on stderr and no traceback. absl's own flag
parser is accepted as it is: "FATAL Flags parsing error: ..." (one indented line per missing required flag)
followed by its "Pass --helpshort or --helpfull" hint. TensorFlow's C++ start-up log lines are not ours and
are ignored.

Importing TensorFlow costs seconds per process on a small machine, so the commands run through
`fork_runner`: forked children of one process that imported TensorFlow once, each executing the entry point as
`python -m` does, with its own argv, exit status and stderr. `test_fork_runner_matches_real_python_dash_m`
checks that real `python -m` processes print the same lines.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
import subprocess
import sys

import pytest

import fork_runner
from strokenet_tf.data import synthesis

REPO = fork_runner.REPO
WORKERS = 2
ABSL_FLAG_ERROR = "FATAL Flags parsing error:"
ABSL_HINT = "Pass --helpshort or --helpfull to see help on flags."


@dataclasses.dataclass(frozen=True)
class Check:
    """One command: `python -m module *args` (paths as {placeholders}) and what its one error line must contain."""

    id: str
    module: str
    args: tuple[str, ...]
    needles: tuple[str, ...]
    absl: bool = False  # the error comes from absl's flag parser


def _c(id_, module, args, *needles, absl=False):
    return Check(id_, module, tuple(args), tuple(needles), absl)


TRAIN, CV, SYN, BASE = "strokenet_tf.train", "strokenet_tf.cross_validate", "strokenet_tf.data.synthesize", \
    "strokenet_tf.baselines"
EVAL, PRED, EXP, CLIENT = "strokenet_tf.evaluate", "strokenet_tf.predict", "strokenet_tf.export", \
    "strokenet_tf.serving_client"
BENCH, BENCH_PIPE = "strokenet_tf.benchmarks", "strokenet_tf.benchmarks.pipeline"
DIFF, LOCO = "strokenet_tf.data.difficulty", "strokenet_tf.benchmarks.generalisation"
TRAIN_OK = ("--data_dir={data}", "--epochs=1", "--tiny_model", "--num_folds=3")

CHECKS = [
    # --- train
    _c("train-missing-required", TRAIN, [], "--data_dir", "--model_dir", absl=True),
    _c("train-bad-enum", TRAIN, ["--data_dir={data}", "--model_dir={tmp}/r0", "--optimizer=sgd9"], "--optimizer",
       absl=True),
    _c("train-no-data-dir", TRAIN, ["--data_dir={missing}", "--model_dir={tmp}/r1", "--epochs=1"], "{missing}"),
    _c("train-data-dir-is-file", TRAIN, ["--data_dir={file}", "--model_dir={tmp}/r2", "--epochs=1"], "{file}"),
    _c("train-model-dir-is-file", TRAIN, ["--model_dir={file}", *TRAIN_OK], "--model_dir", "{file}",
       "not a folder"),
    _c("train-model-dir-unwritable", TRAIN, ["--model_dir={file}/run", *TRAIN_OK], "{file}", "Not a directory"),
    _c("train-positional", TRAIN, ["--model_dir={tmp}/r3", *TRAIN_OK, "fold0"], "unexpected arguments: fold0"),
    # --- cross_validate
    _c("cv-bad-int", CV, ["--data_dir={data}", "--model_dir={tmp}/cv0", "--epochs=x"], "--epochs", absl=True),
    _c("cv-bad-folds", CV, ["--model_dir={tmp}/cv1", *TRAIN_OK, "--folds=0,9"], "--folds", "9"),
    _c("cv-model-dir-unwritable", CV, ["--model_dir={file}/cv", *TRAIN_OK], "{file}",
       "Not a directory"),
    # --- data.synthesize (no TensorFlow)
    _c("synth-missing-required", SYN, [], "--output_dir", absl=True),
    _c("synth-bad-enum", SYN, ["--output_dir={tmp}/s0", "--split=VALIDATION"], "--split", absl=True),
    _c("synth-bad-depths", SYN, ["--output_dir={tmp}/s1", "--depths=2,x"], "--depths"),
    _c("synth-zero-depth", SYN, ["--output_dir={tmp}/s2", "--depths=0", "--num_cases=1", "--size=16", "--nopwi"],
       "--depths"),
    _c("synth-output-is-file", SYN, ["--output_dir={file}", "--num_cases=1", "--size=16", "--depths=2",
                                     "--nopwi"], "{file}", "Not a directory"),
    _c("synth-foreign-folder", SYN, ["--output_dir={foreign}", "--num_cases=1", "--size=16", "--depths=2",
                                     "--nopwi"], "refusing to replace", "case_1"),
    _c("synth-positional", SYN, ["--output_dir={tmp}/s3", "extra"], "unexpected arguments: extra"),
    _c("synth-unknown-centre", SYN, ["--output_dir={tmp}/s4", "--centres=centre_7", "--num_cases=1"], "--centres",
       "centre_7"),
    _c("synth-unknown-lesion-type", SYN, ["--output_dir={tmp}/s5", "--lesion_types=mca,stroke", "--num_cases=1"],
       "--lesion_types", "stroke"),
    _c("synth-bad-workers", SYN, ["--output_dir={tmp}/s6", "--workers=0"], "--workers", absl=True),
    # --- data.difficulty
    _c("difficulty-missing-required", DIFF, [], "--data_dir", absl=True),
    _c("difficulty-no-data-dir", DIFF, ["--data_dir={missing}"], "--data_dir={missing}", "not a folder"),
    _c("difficulty-too-few-cases", DIFF, ["--data_dir={data}", "--num_folds=5"], "--num_folds=5", "3 labelled cases"),
    _c("difficulty-positional", DIFF, ["--data_dir={data}", "x"], "unexpected arguments: x"),
    # --- benchmarks.generalisation
    _c("loco-missing-required", LOCO, [], "--pool_dir", "--test_dir", "--output_dir", absl=True),
    _c("loco-no-pool", LOCO, ["--pool_dir={missing}", "--test_dir={data}", "--output_dir={tmp}/l0"], "--pool_dir",
       "{missing}"),
    _c("loco-no-recipe", LOCO, ["--pool_dir={data}", "--test_dir={data}", "--output_dir={tmp}/l1",
                                "--experiment={missing}.flags"], "--experiment", "{missing}.flags"),
    # --- baselines
    _c("baselines-missing-required", BASE, [], "--model", absl=True),
    _c("baselines-no-run", BASE, ["--model={missing}"], "--model={missing}", "not a training run"),
    _c("baselines-run-is-file", BASE, ["--model={file}"], "--model={file}", "not a training run"),
    _c("baselines-output-folder-missing", BASE, ["--model={run}", "--output={missing}/b.json"], "--output",
       "{missing}"),
    _c("baselines-positional", BASE, ["--model={run}", "x"], "unexpected arguments: x"),
    # --- evaluate
    _c("evaluate-missing-required", EVAL, [], "--model", "--output_dir", absl=True),
    _c("evaluate-bad-enum", EVAL, ["--model={run}", "--output_dir={tmp}/e0", "--model_source=worst"],
       "--model_source", absl=True),
    _c("evaluate-bad-rule", EVAL, ["--model={run}", "--output_dir={tmp}/e1", "--empty_score=maybe"],
       "--empty_score", "maybe"),
    _c("evaluate-no-model", EVAL, ["--model={missing}", "--output_dir={tmp}/e2"], "{missing}"),
    _c("evaluate-no-data-dir", EVAL, ["--model={run}", "--output_dir={tmp}/e3", "--data_dir={missing}"],
       "--data_dir", "{missing}"),
    _c("evaluate-output-is-file", EVAL, ["--model={run}", "--output_dir={file}", "--data_dir={data}"],
       "--output_dir", "{file}"),
    _c("evaluate-output-unwritable", EVAL, ["--model={run}", "--output_dir={file}/eval", "--data_dir={data}"],
       "{file}", "Not a directory"),
    _c("evaluate-bad-fold", EVAL, ["--model={run}", "--output_dir={tmp}/e4", "--data_dir={data}", "--fold=7"],
       "--fold", "7"),
    # --- predict
    _c("predict-missing-required", PRED, ["--input={case}"], "--model", "--output_dir", absl=True),
    _c("predict-bad-int", PRED, ["--model={run}", "--input={case}", "--output_dir={tmp}/p0", "--montage_slices=0"],
       "--montage_slices", absl=True),
    _c("predict-no-model", PRED, ["--model={missing}", "--input={case}", "--output_dir={tmp}/p1"], "--model",
       "{missing}"),
    _c("predict-no-input", PRED, ["--model={run}", "--input={missing}", "--output_dir={tmp}/p2"], "--input",
       "{missing}"),
    _c("predict-input-is-file", PRED, ["--model={run}", "--input={file}", "--output_dir={tmp}/p3"], "--input",
       "{file}", "is a file"),
    _c("predict-no-ct-file", PRED, ["--model={run}", "--ct={missing}.nii", "--cbf={file}", "--output_dir={tmp}/p4"],
       "--ct", "{missing}.nii", "no such file"),
    _c("predict-output-is-file", PRED, ["--model={run}", "--input={case}", "--output_dir={file}"], "--output_dir",
       "{file}"),
    _c("predict-output-unwritable", PRED, ["--model={run}", "--input={case}", "--output_dir={file}/out"], "{file}",
       "Not a directory"),
    _c("predict-bad-threshold", PRED, ["--model={run}", "--input={case}", "--output_dir={tmp}/p5",
                                       "--threshold=1.5"], "--threshold", "1.5"),
    _c("predict-positional", PRED, ["--model={run}", "--input={case}", "--output_dir={tmp}/p6", "case_2"],
       "unexpected arguments: case_2"),
    # --- export
    _c("export-missing-required", EXP, [], "--model", "--export_base", absl=True),
    _c("export-bad-enum", EXP, ["--model={run}", "--export_base={tmp}/x0", "--model_source=oldest"],
       "--model_source", absl=True),
    _c("export-no-run", EXP, ["--model={missing}", "--export_base={tmp}/x1"], "{missing}"),
    _c("export-base-is-file", EXP, ["--model={run}", "--export_base={file}", "--warmup_depths=", "--noverify"],
       "{file}", "Not a directory"),
    _c("export-bad-version", EXP, ["--model={run}", "--export_base={tmp}/x2", "--version=0"], "--version"),
    # --- serving_client
    _c("client-missing-required", CLIENT, ["--server=localhost:1"], "--model_name", "--input", "--output",
       absl=True),
    _c("client-bad-enum", CLIENT, ["--server=localhost:1", "--model_name=m", "--input={case}", "--output={tmp}/m.nii.gz",
                                   "--protocol=ftp"], "--protocol", absl=True),
    _c("client-no-input", CLIENT, ["--server=localhost:1", "--model_name=m", "--input={missing}",
                                   "--output={tmp}/m.nii.gz"], "--input", "{missing}"),
    _c("client-output-folder-missing", CLIENT, ["--server=localhost:1", "--model_name=m", "--input={case}",
                                                "--output={missing}/m.nii.gz"], "--output", "{missing}"),
    _c("client-output-suffix", CLIENT, ["--server=localhost:1", "--model_name=m", "--input={case}",
                                        "--output={tmp}/m.png"], "--output", ".nii"),
    _c("client-unreachable-server", CLIENT, ["--server=localhost:1", "--model_name=m", "--input={case}",
                                             "--output={out}/m.nii.gz", "--timeout_s=5"], "localhost:1"),
    # --- benchmarks
    _c("bench-bad-int", BENCH, ["--size=4"], "--size", absl=True),
    _c("bench-bad-parts", BENCH, ["--parts=everything"], "--parts"),
    _c("bench-no-run", BENCH, ["--quick", "--model={missing}"], "{missing}"),
    _c("bench-pipeline-missing-data", BENCH_PIPE, [], "--data_dir"),
    _c("bench-pipeline-no-data-dir", BENCH_PIPE, ["--data_dir={missing}"], "{missing}"),
    _c("bench-pipeline-bad-patch", BENCH_PIPE, ["--data_dir={data}", "--patch_size=x"], "--patch_size"),
]


@pytest.fixture(scope="module")
def places(tmp_path_factory):
    """Placeholder -> path: tiny data, a tiny run, a plain file, a missing path, a folder synthesize did not write."""
    root = tmp_path_factory.mktemp("cli")
    data = root / "data"
    synthesis.write_dataset(str(data), num_cases=3, seed=0, size=32, depths=(2,), with_pwi=False)
    import serving_fixtures

    run = serving_fixtures.write_run(serving_fixtures.tiny_model(), str(root / "run"))
    a_file = root / "a_file.txt"
    a_file.write_text("not a folder\n")
    (root / "client_out").mkdir()
    foreign = root / "foreign"
    (foreign / "TRAINING" / "case_1").mkdir(parents=True)
    return {"data": str(data), "run": run, "file": str(a_file), "missing": str(root / "does_not_exist"),
            "tmp": str(root / "outputs"), "case": str(data / "TRAINING" / "case_1"), "foreign": str(foreign),
            "out": str(root / "client_out")}


def _arguments(check: Check, places: dict) -> list[str]:
    return [arg.format(**places) for arg in check.args]


@pytest.fixture(scope="module")
def results(places, tmp_path_factory):
    """Runs every check once through the fork runner; id -> CompletedProcess (returncode, stdout, stderr)."""
    jobs = [fork_runner.Job(c.id, c.module, _arguments(c, places)) for c in CHECKS]
    return fork_runner.run_jobs(jobs, tmp_path_factory.mktemp("cli_streams"), workers=WORKERS)


def assert_one_line_error(check: Check, result: subprocess.CompletedProcess, places: dict) -> str:
    """Checks exit status, no traceback and the one-line form; returns the error text."""
    stderr = result.stderr
    assert result.returncode != 0, f"{check.id}: exit 0\n{stderr}"
    assert "Traceback" not in stderr, stderr
    lines = fork_runner.error_lines(stderr)
    assert lines, f"{check.id}: nothing on stderr"
    if check.absl:
        # absl: the FATAL line, then one indented line per offending flag when several, then the hint.
        assert lines[0].startswith(ABSL_FLAG_ERROR) and lines[-1] == ABSL_HINT, stderr
        assert all(line.startswith("  flag --") for line in lines[1:-1]), stderr
        text = " ".join(lines[:-1])
    else:
        assert len(lines) == 1, f"{check.id}: {len(lines)} lines\n{stderr}"
        text = lines[0]
        assert text.startswith(f"{check.module}: error: "), text
    for needle in check.needles:
        assert needle.format(**places) in text, f"{check.id}: {needle!r} not in {text!r}"
    return text


@pytest.mark.parametrize("check", CHECKS, ids=[c.id for c in CHECKS])
def test_bad_flag_or_path_gives_one_line_and_non_zero_exit(check, results, places):
    assert_one_line_error(check, results[check.id], places)


def test_user_errors_exit_2_and_flag_parse_errors_exit_1(results):
    for check in CHECKS:
        assert results[check.id].returncode == (1 if check.absl else 2), check.id


def test_nothing_was_written_for_refused_commands(results, places):
    outputs = pathlib.Path(places["tmp"])
    written = sorted(str(p.relative_to(outputs)) for p in outputs.rglob("*")) if outputs.exists() else []
    # train/cross_validate create their model_dir and write config.json only once the data were read.
    assert not [p for p in written if not p.startswith(("r", "cv"))], written
    assert pathlib.Path(places["file"]).read_text() == "not a folder\n"
    assert not pathlib.Path(places["missing"]).exists()
    assert sorted(os.listdir(places["foreign"])) == ["TRAINING"]
    assert os.listdir(pathlib.Path(places["foreign"]) / "TRAINING" / "case_1") == []


@pytest.mark.parametrize("check_id", ["predict-no-model", "export-missing-required", "train-model-dir-is-file"])
def test_fork_runner_matches_real_python_dash_m(check_id, results, places):
    """The harness is faithful: a real `python -m` process prints the same error lines and exit status."""
    check = next(c for c in CHECKS if c.id == check_id)
    real = subprocess.run([sys.executable, "-m", check.module, *_arguments(check, places)], cwd=REPO,
                          env=fork_runner.environment(), capture_output=True, text=True, timeout=300)
    assert real.returncode == results[check_id].returncode != 0
    assert fork_runner.error_lines(real.stderr) == fork_runner.error_lines(results[check_id].stderr)
    assert_one_line_error(check, real, places)
