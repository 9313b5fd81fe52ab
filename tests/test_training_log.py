"""Tests for the trainer's log (training.run_log) and per-epoch history (training.history)."""

import csv
import glob
import io
import logging
import os
import re
import subprocess
import sys

import numpy as np
import pytest
from conftest import write_tiny_training_set
from PIL import Image

from strokenet_tf.model import strokenet
from strokenet_tf.training import history, run_log

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STAMP = r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d "


def _row(epoch, **values):
    row = {"epoch": epoch, "stage": "main", "global_step": 3 * epoch, "learning_rate": 1e-3, "focal_gamma": 2.0,
           "train_loss": 1.0 / epoch, "epoch_s": 2.5, "finished_at": "2026-01-01T00:00:00+00:00"}
    row.update(values)
    return row


def test_format_duration_and_epoch_line():
    assert [run_log.format_duration(s) for s in (0.4, 42, 425, 7380)] == ["0 s", "42 s", "7 min 05 s", "2 h 03 min"]
    line = run_log.epoch_line(3, 40, "main", 12.3, 0.41234, {"dice": 0.5, "precision": 0.25, "recall": 1.0},
                              5e-4, 1.5, 450.0)
    assert line == ("epoch 3/40 (main) 12 s: loss 0.4123, val dice 0.5000 precision 0.2500 recall 1.0000, "
                    "lr 0.0005, gamma 1.5; ETA 7 min 30 s")
    assert run_log.epoch_line(40, 40, "main", 1.0, 0.5, None, 1e-3, 2.0, 0.0).endswith("lr 0.001, gamma 2; done")


def test_epoch_clock_leaves_out_the_tracing_epoch_once_others_exist():
    clock = run_log.EpochClock(total_epochs=10, window=2)
    assert np.isnan(clock.eta_s(0))
    clock.add(30.0)
    assert clock.eta_s(1) == 9 * 30.0
    for seconds in (4.0, 2.0, 4.0):
        clock.add(seconds)
    assert clock.eta_s(4) == 6 * 3.0  # mean of the last two


def test_run_log_writes_one_plain_line_per_event_to_a_file_and_absl_otherwise(caplog):
    stream = io.StringIO()
    log = run_log.RunLog(to_stream=True, stream=stream)
    assert log.progress_bar("Epoch 1/2", steps=3, done=0) is None  # not a terminal
    log.line("epoch 1/2 (main) 3 s: loss 0.5")
    assert re.fullmatch(STAMP + r"epoch 1/2 \(main\) 3 s: loss 0\.5\n", stream.getvalue())
    with caplog.at_level(logging.INFO, logger="absl"):
        run_log.RunLog(to_stream=False, stream=stream).line("resuming from ckpt-4")
    assert "resuming from ckpt-4" in caplog.text and stream.getvalue().count("\n") == 1


def test_run_log_shows_a_progress_bar_on_a_terminal():
    class Terminal(io.StringIO):
        def isatty(self):
            return True

    terminal = Terminal()
    assert run_log.RunLog(to_stream=True, stream=terminal).progress_bar("Epoch 1/2 (main)", 3, 1) is not None
    assert terminal.getvalue() == "Epoch 1/2 (main)\n"
    assert run_log.RunLog(to_stream=False, stream=terminal).progress_bar("Epoch 1/2", 3, 1) is None


def test_history_rows_replace_redone_epochs_and_drop_unfinished_ones(tmp_path):
    model_dir = str(tmp_path)
    epochs = history.History(model_dir, finished_epochs=0)
    epochs.add(_row(1, val_dice=0.25, val_precision=0.5, val_recall=0.125, best_val_dice=0.25))
    epochs.add(_row(2))  # not validated: empty validation columns
    epochs.add(_row(3, train_loss=0.3))
    epochs.add(_row(3, train_loss=0.2))  # redone after a restart: replaces the row
    rows = history.read_history(os.path.join(model_dir, history.HISTORY_FILE))
    assert [row["epoch"] for row in rows] == ["1", "2", "3"] and rows[2]["train_loss"] == "0.2"
    assert list(rows[0]) == list(history.HISTORY_COLUMNS)
    assert rows[0]["val_dice"] == "0.25" and rows[1]["val_dice"] == "" and rows[1]["best_val_dice"] == ""
    assert float(rows[1]["train_loss"]) == 0.5  # full precision
    # A resume from a checkpoint that finished 2 epochs: the row of epoch 3 belongs to an abandoned attempt.
    resumed = history.History(model_dir, finished_epochs=2)
    assert [row["epoch"] for row in resumed.rows] == ["1", "2"]
    assert [row["epoch"] for row in history.read_history(resumed.csv_path)] == ["1", "2"]
    assert not glob.glob(os.path.join(model_dir, ".tmp-*"))
    with Image.open(resumed.png_path) as image:
        assert image.size == (760, 560) and image.mode == "RGB"
    assert history.History(model_dir, finished_epochs=5, enabled=False).rows == []


def test_progress_png_draws_every_panel_and_handles_no_rows():
    rows = [{column: str(value) for column, value in _row(epoch, val_dice=0.1 * epoch, best_val_dice=0.1 * epoch)
             .items()} for epoch in (1, 2, 3)]
    with Image.open(io.BytesIO(history.progress_png(rows))) as image:
        pixels = np.asarray(image)
    for colour in ((200, 40, 40), (30, 120, 30), (40, 60, 200), (120, 70, 160)):  # the four series' colours
        assert np.all(pixels == colour, axis=-1).sum() > 20, colour
    with Image.open(io.BytesIO(history.progress_png([]))) as image:
        assert image.size == (760, 560)


@pytest.fixture(scope="module")
def logged_run(tmp_path_factory):
    """`python -m strokenet_tf.train` with stdout and stderr redirected to files, as a user logs a run."""
    data_dir = write_tiny_training_set(tmp_path_factory, size=32)
    root = tmp_path_factory.mktemp("logged")
    depth, height, width = strokenet.tiny_model_config(in_channels=5).required_multiples
    command = [
        sys.executable, "-m", "strokenet_tf.train", f"--data_dir={data_dir}", f"--model_dir={root / 'run'}",
        "--tiny_model", "--num_folds=3", "--batch_size=2", "--steps_per_epoch=2",
        f"--stage=name=warmup,epochs=1,augment=0,gamma=0,dice=0,patch={depth}x{height}x{width}",
        f"--stage=name=main,epochs=2,augment=1,gamma=1,gamma_end=2,lr=5e-4,patch={depth}x{2 * height}x{2 * width}",
    ]
    with open(root / "train.log", "w") as stdout, open(root / "train.err", "w") as stderr:
        process = subprocess.run(command, cwd=REPO, stdout=stdout, stderr=stderr, timeout=600,
                                 env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=REPO))
    assert process.returncode == 0, (root / "train.err").read_text()[-3000:]
    return root


def test_log_written_to_a_file_has_one_plain_line_per_event(logged_run):
    text = (logged_run / "train.log").read_text()
    assert not re.search(r"[\r\b\x1b]", text)
    lines = text.splitlines()
    assert len(lines) == len(set(lines))
    assert lines[-1].startswith("Finished 3 epochs (6 steps). Best validation Dice ")
    assert f"tensorboard --logdir {logged_run / 'run'}" in lines[-1]
    events = [re.sub(STAMP, "", line, count=1) for line in lines[:-1]]
    assert all(re.match(STAMP, line) for line in lines[:-1])
    assert events[0].startswith("fold 0 of 3: 4 training and 2 validation cases")
    assert [e.split(":")[0] for e in events if "curriculum stage" in e] == ["epoch 1/3", "epoch 2/3"]
    epoch_lines = [e for e in events if re.match(r"epoch \d/3 \(\w+\) \d+ s: loss ", e)]
    assert len(epoch_lines) == 3 and "; ETA " in epoch_lines[0] and epoch_lines[-1].endswith("; done")
    assert all(", val dice " in e for e in epoch_lines)
    new_best = [e for e in events if e.startswith("new best validation Dice ")]
    assert new_best and all(e.endswith(f"saved {logged_run / 'run' / 'best.keras'}") for e in new_best)
    assert len(events) == 1 + 2 + 3 + len(new_best)
    # Nothing of it again on stderr (absl): one place per line.
    assert "epoch 1/3" not in (logged_run / "train.err").read_text()


def test_history_csv_of_the_logged_run(logged_run):
    model_dir = logged_run / "run"
    with open(model_dir / history.HISTORY_FILE, newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [(row["epoch"], row["stage"], row["global_step"]) for row in rows] == [
        ("1", "warmup", "2"), ("2", "main", "4"), ("3", "main", "6")]
    assert [float(row["learning_rate"]) for row in rows] == [1e-3, 5e-4, 5e-4]
    assert [float(row["focal_gamma"]) for row in rows] == [0.0, 1.0, 2.0]
    assert all(float(row["epoch_s"]) > 0 and float(row["train_loss"]) > 0 for row in rows)
    best = max(float(row["val_dice"]) for row in rows)
    assert float(rows[-1]["best_val_dice"]) == best
    assert (model_dir / history.PROGRESS_FILE).stat().st_size > 1000
