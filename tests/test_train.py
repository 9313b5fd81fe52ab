"""Tests for the training loop (strokenet_tf.training.*): outputs, resume after kill -9, refusal, validation."""

import dataclasses
import glob
import json
import logging
import os
import signal
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import write_tiny_training_set

from strokenet_tf import curriculum as curriculum_lib
from strokenet_tf.config import TrainConfig
from strokenet_tf.data import pipeline
from strokenet_tf.data.preprocess import PreparedCase
from strokenet_tf.model import strokenet
from strokenet_tf.training import checkpointing, loop, summaries, validation

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SIZE = 32


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return write_tiny_training_set(tmp_path_factory, size=SIZE)


def make_config(data_dir, model_dir, **overrides) -> TrainConfig:
    """Tiny run: 3 folds of 6 cases, 3 epochs of 3 steps, two stages with different patch sizes."""
    model = strokenet.tiny_model_config(in_channels=5)
    md, mh, mw = model.required_multiples
    small, large = f"{md}x{mh}x{mw}", f"{md}x{min(SIZE, 2 * mh)}x{min(SIZE, 2 * mw)}"
    curriculum = curriculum_lib.Curriculum.from_strings(
        [f"name=warmup,epochs=1,augment=0,gamma=0,alpha=0.5,dice=0,patch={small}",
         f"name=main,epochs=2,augment=1,gamma=1,gamma_end=2,lr=5e-4,patch={large}"],
        default_learning_rate=1e-3, default_patch_size=None,
    )
    values = dict(
        data_dir=data_dir, model_dir=model_dir, model=model, pipeline=pipeline.PipelineConfig(),
        curriculum=curriculum, num_folds=3, fold=0, seed=0, batch_size=2, steps_per_epoch=3,
        checkpoint_every_steps=2, log_every_steps=1, verbose=False,
    )
    values.update(overrides)
    return TrainConfig(**values)


def _event_tags(directory):
    tags = set()
    for path in glob.glob(os.path.join(directory, "events.out.tfevents.*")):
        for event in tf.compat.v1.train.summary_iterator(path):
            tags.update(value.tag for value in event.summary.value)
    return tags


def _checkpoint_values(checkpoint_path):
    """Every saved value (weights, optimizer moments, run counters) except the save counter."""
    reader = tf.train.load_checkpoint(checkpoint_path)
    names = [name for name in reader.get_variable_to_shape_map()
             if not name.startswith(("save_counter", "_CHECKPOINTABLE_OBJECT_GRAPH"))]
    return {name: reader.get_tensor(name) for name in names}


@pytest.fixture(scope="module")
def finished_run(data_dir, tmp_path_factory):
    config = make_config(data_dir, str(tmp_path_factory.mktemp("run") / "model"))
    return config, loop.train(config)


def test_run_writes_checkpoints_summaries_and_best_model(finished_run):
    config, result = finished_run
    model_dir = config.model_dir
    assert (result.epochs_done, result.global_step) == (3, 9)
    assert len(result.train_ids) + len(result.val_ids) == 6 and len(result.val_ids) == 2
    assert result.trace_count == 1  # two patch sizes, gamma/lr changes: one trace
    assert checkpointing.latest_checkpoint(model_dir).endswith("ckpt-9")
    assert TrainConfig.from_json(open(os.path.join(model_dir, "config.json")).read()) == config
    assert {"loss", "learning_rate", "stage", "focal_gamma", "epoch/loss", "epoch/focal_gamma"} <= _event_tags(
        os.path.join(model_dir, "train"))
    assert {"dice", "precision", "recall", "overlay"} <= _event_tags(os.path.join(model_dir, "val"))
    assert any(tag.startswith("_hparams_/") for tag in _event_tags(model_dir))
    best = json.load(open(os.path.join(model_dir, "best.json")))
    assert best["epoch"] == result.best_epoch and best["dice"] == pytest.approx(result.best_val_dice)
    assert result.best_model_path == os.path.join(model_dir, "best.keras")
    model = keras.saving.load_model(result.best_model_path)
    image = np.zeros((1, *config.model.required_multiples, 5), np.float32)
    assert model(image).shape == (1, *config.model.required_multiples, 1)
    assert not glob.glob(os.path.join(model_dir, ".tmp-*"))


def test_finished_run_restarts_as_no_op_and_other_settings_are_refused(finished_run):
    config, result = finished_run
    again = loop.train(config)
    assert again.global_step == result.global_step and again.resumed_from.endswith("ckpt-9")
    with pytest.raises(checkpointing.ModelDirError, match=r"^model_dir=.* different settings \(fold: 0 -> 1\).*new model_dir"):
        loop.train(dataclasses.replace(config, fold=1))
    # Runtime-only settings may change on resume.
    checkpointing.check_or_write_config(
        config.model_dir, dataclasses.replace(config, log_every_steps=5).to_dict(),
        ignored_keys=("log_every_steps",), write=False,
    )


def test_resume_after_kill_matches_uninterrupted_run(data_dir, finished_run, tmp_path, caplog):
    reference_config, _ = finished_run
    config = make_config(data_dir, str(tmp_path / "model"))
    config_path = tmp_path / "config.json"
    config_path.write_text(config.to_json())
    # kill -9 right after global step 5: epoch 2, step 2 of 3, checkpointed at step 4 (mid-epoch).
    script = (
        "import os, signal, sys\n"
        "from strokenet_tf.config import TrainConfig\n"
        "from strokenet_tf.training import loop\n"
        "config = TrainConfig.from_json(open(sys.argv[1]).read())\n"
        "def after_step(step):\n"
        "    if step == 5:\n"
        "        os.kill(os.getpid(), signal.SIGKILL)\n"
        "loop.train(config, after_step=after_step)\n"
    )
    process = subprocess.run([sys.executable, "-c", script, str(config_path)], cwd=REPO, capture_output=True,
                             text=True, timeout=300)
    assert process.returncode == -signal.SIGKILL, process.stderr[-2000:]
    assert checkpointing.latest_checkpoint(config.model_dir).endswith("ckpt-4")

    steps_seen = []
    # absl's logger may have been set above INFO by earlier tests; capture it explicitly.
    with caplog.at_level(logging.INFO, logger="absl"):
        result = loop.train(config, after_step=steps_seen.append)
    assert result.resumed_from.endswith("ckpt-4")
    assert "resuming from" in caplog.text and "epoch 2, step 1 of the epoch, global step 4" in caplog.text
    assert caplog.text.count("curriculum stage") == 1 and "epoch 2/3: curriculum stage 2/2, stage 'main'" in caplog.text
    assert steps_seen == [5, 6, 7, 8, 9]  # the rest of epoch 2, then epoch 3
    assert (result.epochs_done, result.global_step) == (3, 9)
    resumed = _checkpoint_values(checkpointing.latest_checkpoint(config.model_dir))
    reference = _checkpoint_values(checkpointing.latest_checkpoint(reference_config.model_dir))
    assert resumed.keys() == reference.keys() and len(resumed) > 10
    for name in reference:  # bit for bit on one CPU device (kills at random steps, dropout: test_resume.py)
        np.testing.assert_array_equal(resumed[name], reference[name], err_msg=name)


def test_next_run_in_the_process_reuses_the_trace_and_equals_a_fresh_run(data_dir, finished_run, tmp_path):
    """cross_validate's folds: the second run takes the first's traced step and prepared cases, resets weights,
    dropout seeds and optimizer state, and ends bit for bit where a run in a fresh state ends."""
    config, _ = finished_run
    loop.train(config)  # the finished run (a no-op) makes its model and cases the last ones
    compiled, cases = loop._LAST_COMPILED[0], list(loop._LAST_CASES.values())[0]
    reused = loop.train(make_config(data_dir, str(tmp_path / "reused"), fold=1))
    assert loop._LAST_COMPILED[0] is compiled and compiled.step_fn.trace_count == 1
    assert list(loop._LAST_CASES.values())[0] is cases
    loop._LAST_COMPILED.clear()
    loop._LAST_CASES.clear()
    fresh = loop.train(make_config(data_dir, str(tmp_path / "fresh"), fold=1))
    assert loop._LAST_COMPILED[0] is not compiled and list(loop._LAST_CASES.values())[0] is not cases
    assert (reused.best_val_dice, reused.best_epoch, reused.val_ids) == (fresh.best_val_dice, fresh.best_epoch,
                                                                       fresh.val_ids)
    reused_values = _checkpoint_values(checkpointing.latest_checkpoint(str(tmp_path / "reused")))
    fresh_values = _checkpoint_values(checkpointing.latest_checkpoint(str(tmp_path / "fresh")))
    assert reused_values.keys() == fresh_values.keys() and len(fresh_values) > 10
    for name in fresh_values:
        np.testing.assert_array_equal(reused_values[name], fresh_values[name], err_msg=name)
    # Another seed, batch or network is built anew (not trained here: the mixed-precision test trains another).
    latest = loop._LAST_COMPILED[0]
    for change in ({"seed": 1}, {"batch_size": 3}, {"model": dataclasses.replace(config.model, dropout=0.0)}):
        other = dataclasses.replace(config, **change)
        keras.utils.set_random_seed(other.seed)
        assert loop._compiled(other, tf.distribute.get_strategy()) is not latest, change
        latest = loop._LAST_COMPILED[0]


def test_changed_data_files_are_read_again(data_dir, tmp_path):
    config = make_config(data_dir, str(tmp_path / "model"))
    first = loop.load_fold(config)
    again = loop.load_fold(config)
    assert [case.image is other.image for case, other in zip(first[0], again[0])] == [True] * len(first[0])
    some_file = sorted(glob.glob(os.path.join(data_dir, "TRAINING", "*", "*", "*.nii*")))[0]
    info = os.stat(some_file)
    try:
        os.utime(some_file, ns=(info.st_atime_ns, info.st_mtime_ns + 1_000_000_000))
        changed = loop.load_fold(config)
    finally:
        os.utime(some_file, ns=(info.st_atime_ns, info.st_mtime_ns))
    assert not any(case.image is other.image for case, other in zip(first[0], changed[0]))
    np.testing.assert_array_equal(first[0][0].image, changed[0][0].image)


def test_validation_pads_and_crops_back():
    label = np.zeros((3, 10, 12), np.uint8)
    label[1, 2:6, 3:9] = 1
    case = PreparedCase(case_id="case_1", image=np.zeros((3, 10, 12, 2), np.float32), label=label,
                        spacing_mm=(5.0, 1.0, 1.0))
    shapes = []

    def predict_fn(padded):  # padded image -> logits
        shapes.append(tuple(padded.shape))
        logits = np.full(padded.shape[:-1] + (1,), -20.0, np.float32)
        logits[0, :3, :10, :12, 0] = np.where(label > 0, 20.0, -20.0)  # perfect prediction in the unpadded corner
        return tf.constant(logits)

    result = validation.validate(predict_fn, [case], multiples=(2, 8, 8))
    assert shapes == [(1, 4, 16, 16, 2)]
    assert result.mean == {"dice": 1.0, "precision": 1.0, "recall": 1.0}
    assert result.sample_prediction.shape == (3, 10, 12)


def test_overlay_colours():
    image = np.arange(16, dtype=np.float32).reshape(4, 4)
    label = np.zeros((4, 4), np.uint8)
    prediction = np.zeros((4, 4), np.uint8)
    label[0, 0] = prediction[0, 0] = 1
    prediction[1, 1] = 1
    rgb = summaries.overlay_slice(image, label, prediction)
    assert rgb.shape == (4, 4, 3) and rgb.min() >= 0.0 and rgb.max() <= 1.0
    np.testing.assert_allclose(rgb[0, 0, :2], [1.0, 1.0])  # both: yellow
    assert rgb[1, 1, 0] == 1.0 and rgb[1, 1, 1] < 1.0  # prediction only: red
    assert rgb[3, 3, 0] == rgb[3, 3, 1] == rgb[3, 3, 2]  # background: grey
    assert summaries.pick_slice(np.array([[[0]], [[1]], [[0]]]), 3) == 1


def test_mixed_precision_run_keeps_loss_scale_and_restores_policy(data_dir, tmp_path):
    patch = strokenet.tiny_model_config(in_channels=5).required_multiples
    config = make_config(data_dir, str(tmp_path / "model"), mixed_precision=True, steps_per_epoch=1,
                         curriculum=curriculum_lib.Curriculum.single_stage(1, 1e-3, tuple(patch)))
    result = loop.train(config)
    assert result.global_step == 1 and np.isfinite(result.best_val_dice)
    saved = tf.train.load_checkpoint(checkpointing.latest_checkpoint(config.model_dir)).get_variable_to_shape_map()
    assert any("dynamic_scale" in name for name in saved)
    assert keras.mixed_precision.global_policy().name == "float32"
