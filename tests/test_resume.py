"""Exact resume after kill -9 at random steps, damaged checkpoints, and best.keras/best.json kept consistent.

The model here has dropout (the tiny test network has none by default): its random state must travel in the
checkpoint for a resumed run to end bit for bit where the uninterrupted one ends (one CPU device).
"""

import dataclasses
import json
import logging
import os
import shutil
import signal

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import write_tiny_training_set
from tensorboard.backend.event_processing import plugin_event_accumulator as event_accumulator

import fork_runner
from strokenet_tf import cli, inference
from strokenet_tf.model import strokenet
from strokenet_tf.training import checkpointing, history, loop
from test_train import make_config

DROPOUT = 0.25
TOTAL_STEPS = 9  # make_config: 3 epochs of 3 steps, checkpoints every 2 steps and at each epoch end
KILL_HOOK = (
    "import os, signal\n"
    "from strokenet_tf.config import TrainConfig\n"
    "from strokenet_tf.training import loop\n"
    "config = TrainConfig.from_json(open({config!r}).read())\n"
    "def after_step(step):\n"
    "    if step == {kill_at}:\n"
    "        os.kill(os.getpid(), signal.SIGKILL)\n"
    "loop.train(config, after_step=after_step)\n"
    "os._exit(0)\n"
)


class Interrupted(Exception):
    pass


def interrupt_at(step_to_stop):
    def after_step(step):
        if step == step_to_stop:
            raise Interrupted(step)
    return after_step


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return write_tiny_training_set(tmp_path_factory, size=32)


def dropout_config(data_dir, model_dir):
    model = dataclasses.replace(strokenet.tiny_model_config(in_channels=5), dropout=DROPOUT)
    return make_config(data_dir, str(model_dir), model=model)


@pytest.fixture(scope="module")
def reference(data_dir, tmp_path_factory):
    """The uninterrupted run and every value of its last checkpoint."""
    config = dropout_config(data_dir, tmp_path_factory.mktemp("reference") / "model")
    result = loop.train(config)
    return config, result, checkpoint_values(config.model_dir)


def checkpoint_values(model_dir):
    """Every saved value of the newest checkpoint (weights, optimizer slots, random state, counters, best
    weights) except the save counter."""
    reader = tf.train.load_checkpoint(checkpointing.latest_checkpoint(model_dir))
    return {name: reader.get_tensor(name) for name in reader.get_variable_to_shape_map()
            if not name.startswith(("save_counter", "_CHECKPOINTABLE_OBJECT_GRAPH"))}


def max_difference(values, reference_values):
    assert values.keys() == reference_values.keys()
    return max(float(np.max(np.abs(values[name].astype(np.float64) - reference_values[name].astype(np.float64))))
               for name in reference_values)


def assert_best_files_match_state(model_dir):
    record = json.load(open(os.path.join(model_dir, checkpointing.BEST_METRICS_FILE)))
    assert record["model_sha256"] == checkpointing.file_sha256(os.path.join(model_dir, checkpointing.BEST_MODEL_FILE))
    reader = tf.train.load_checkpoint(checkpointing.latest_checkpoint(model_dir))
    assert record["epoch"] == reader.get_tensor("best_epoch/.ATTRIBUTES/VARIABLE_VALUE")
    assert record["global_step"] == reader.get_tensor("best_step/.ATTRIBUTES/VARIABLE_VALUE")
    assert record["dice"] == reader.get_tensor("best_val_dice/.ATTRIBUTES/VARIABLE_VALUE")


def test_checkpoint_holds_the_dropout_random_state(reference):
    _, _, values = reference
    random_state = [name for name in values if name.startswith("random_state/")]
    assert len(random_state) == 1
    # The seed generator's counter advanced once per training step (dropout draws once per call).
    assert values[random_state[0]][1] == TOTAL_STEPS


def test_kills_at_random_steps_resume_to_the_same_weights_and_optimizer_slots(data_dir, reference, tmp_path):
    reference_config, reference_result, reference_values = reference
    config = dropout_config(data_dir, tmp_path / "model")
    config_path = tmp_path / "config.json"
    config_path.write_text(config.to_json())
    # Three SIGKILLs at seeded random steps (repeatable), each restart resuming from what the last one left,
    # then a run to the end; one job at a time, in order.
    kill_steps = sorted(np.random.default_rng(7).choice(np.arange(1, TOTAL_STEPS), size=3, replace=False).tolist())
    jobs = [fork_runner.Job(f"kill_{k}", "strokenet_tf.train", [], hook=KILL_HOOK.format(config=str(config_path),
                                                                                   kill_at=k))
            for k in kill_steps]
    jobs.append(fork_runner.Job("finish", "strokenet_tf.train", [], hook=KILL_HOOK.format(config=str(config_path),
                                                                                    kill_at=-1)))
    results = fork_runner.run_jobs(jobs, tmp_path / "jobs", workers=1)
    for k in kill_steps:
        assert results[f"kill_{k}"].returncode == -signal.SIGKILL, results[f"kill_{k}"].stderr[-2000:]
    assert results["finish"].returncode == 0, results["finish"].stderr[-2000:]

    values = checkpoint_values(config.model_dir)
    assert any(name.startswith("optimizer/") for name in values) and any("random_state" in n for n in values)
    assert max_difference(values, reference_values) == 0.0  # bit for bit, optimizer slots included
    assert_best_files_match_state(config.model_dir)
    record = json.load(open(os.path.join(config.model_dir, checkpointing.BEST_METRICS_FILE)))
    assert (record["epoch"], record["dice"]) == (reference_result.best_epoch, reference_result.best_val_dice)
    reference_history = history_without_times(reference_config.model_dir)
    assert len(reference_history) == 3 and history_without_times(config.model_dir) == reference_history


def logged_scalars(model_dir):
    """{(log, tag): [(step, value), ...]} as TensorBoard shows them (after it purges orphaned events)."""
    scalars = {}
    for log in ("train", "val", ""):  # "": MODEL_DIR, the HParams session's metrics
        accumulator = event_accumulator.EventAccumulator(os.path.join(model_dir, log),
                                                         size_guidance={event_accumulator.TENSORS: 0})
        accumulator.Reload()
        for tag in accumulator.Tags()["tensors"]:
            if tag != "overlay" and not tag.startswith("_hparams_/"):
                scalars[(log, tag)] = [(event.step, float(tf.make_ndarray(event.tensor_proto)))
                                       for event in accumulator.Tensors(tag)]
    return scalars


def history_without_times(model_dir):
    """The rows of MODEL_DIR/history.csv without the columns that time the attempt that ran the epoch."""
    return [{column: value for column, value in row.items() if column not in ("epoch_s", "finished_at")}
            for row in history.read_history(os.path.join(model_dir, history.HISTORY_FILE))]


def truncate(path):
    data = open(path, "rb").read()
    open(path, "wb").write(data[: len(data) // 2])


def copy_run(reference, tmp_path):
    """A copy of the finished reference run, as a config on the copy."""
    reference_config, _, _ = reference
    model_dir = str(tmp_path / "model")
    shutil.copytree(reference_config.model_dir, model_dir)
    return dataclasses.replace(reference_config, model_dir=model_dir)


def test_damaged_newest_checkpoint_falls_back_to_an_older_one_and_ends_like_the_uninterrupted_run(
        reference, tmp_path, caplog):
    _, _, reference_values = reference
    config = copy_run(reference, tmp_path)  # checkpoints 6, 8 and 9 kept
    newest = checkpointing.latest_checkpoint(config.model_dir)
    assert newest.endswith("ckpt-9")
    truncate(newest + ".data-00000-of-00001")

    with caplog.at_level(logging.INFO, logger="absl"):
        result = loop.train(config)
    fallback = [r.getMessage() for r in caplog.records if "cannot be read" in r.getMessage()]
    assert fallback == [f"checkpoint {newest} cannot be read (IndexError: Read less bytes than requested); using "
                        f"the older intact checkpoint {newest[:-1]}8"]
    assert result.resumed_from.endswith("ckpt-8") and result.global_step == TOTAL_STEPS
    assert max_difference(checkpoint_values(config.model_dir), reference_values) == 0.0
    # TensorBoard shows each step once (the rolled-back step 9 of the first attempt is purged), as uninterrupted.
    reference_scalars = logged_scalars(reference[0].model_dir)
    assert len(reference_scalars) > 5 and logged_scalars(config.model_dir) == reference_scalars
    assert ("", "hparams/best_val_dice") in reference_scalars
    assert history_without_times(config.model_dir) == history_without_times(reference[0].model_dir)
    damaged = os.path.join(config.model_dir, checkpointing.CHECKPOINT_SUBDIR, "damaged")
    assert sorted(os.listdir(damaged)) == ["ckpt-9.data-00000-of-00001", "ckpt-9.index"]
    state = tf.train.get_checkpoint_state(os.path.join(config.model_dir, checkpointing.CHECKPOINT_SUBDIR))
    assert [os.path.basename(p) for p in state.all_model_checkpoint_paths] == ["ckpt-6", "ckpt-8", "ckpt-9"]
    for path in state.all_model_checkpoint_paths:
        assert checkpointing.checkpoint_read_error(path) is None
    assert_best_files_match_state(config.model_dir)


def test_no_intact_checkpoint_is_one_line_saying_how_to_start_fresh(reference, tmp_path):
    config = copy_run(reference, tmp_path)
    for path in checkpointing.checkpoint_candidates(config.model_dir):
        truncate(path + ".data-00000-of-00001")
    with pytest.raises(checkpointing.ModelDirError) as error:
        loop.train(config)
    message = str(error.value)
    assert "\n" not in message
    assert "no intact checkpoint to resume from (ckpt-9, ckpt-8, ckpt-6 cannot be read" in message
    assert message.endswith(f"to start fresh, delete {config.model_dir} or use a new model_dir")
    assert cli.error_line(error.value).endswith("or use a new --model_dir")


def test_damaged_or_stale_best_files_are_rewritten_from_the_checkpoint(reference, tmp_path, caplog):
    config = copy_run(reference, tmp_path)
    model_dir = config.model_dir
    best_path = os.path.join(model_dir, checkpointing.BEST_MODEL_FILE)
    weights = [w.numpy() for w in keras.saving.load_model(best_path, compile=False).weights]
    truncate(best_path)
    with pytest.raises(inference.ModelLoadError, match=r"best\.keras: cannot load Keras model") as error:
        inference.load_run(model_dir)
    assert "\n" not in str(error.value)

    with caplog.at_level(logging.INFO, logger="absl"):
        loop.train(config)  # finished: nothing to train, but the best files are put right
    assert any(r.getMessage().startswith("rewrote best.keras and best.json") for r in caplog.records)
    assert_best_files_match_state(model_dir)
    reloaded = inference.load_run(model_dir).model
    for before, after in zip(weights, reloaded.weights):
        np.testing.assert_array_equal(before, after.numpy())


def test_best_files_of_an_abandoned_attempt_are_moved_aside_on_a_fresh_start(reference, tmp_path, caplog):
    reference_config, _, _ = reference
    model_dir = str(tmp_path / "model")
    os.makedirs(model_dir)
    for name in (checkpointing.CONFIG_FILE, checkpointing.BEST_MODEL_FILE, checkpointing.BEST_METRICS_FILE):
        shutil.copy(os.path.join(reference_config.model_dir, name), model_dir)
    config = dataclasses.replace(reference_config, model_dir=model_dir)
    with caplog.at_level(logging.INFO, logger="absl"), pytest.raises(Interrupted):
        loop.train(config, after_step=interrupt_at(1))  # no checkpoint, no validation yet
    assert any(r.getMessage().startswith("moved best.keras and best.json") for r in caplog.records)
    assert not os.path.exists(os.path.join(model_dir, checkpointing.BEST_MODEL_FILE))
    assert not os.path.exists(os.path.join(model_dir, checkpointing.BEST_METRICS_FILE))
    assert sorted(os.listdir(os.path.join(model_dir, "abandoned"))) == ["best.json", "best.keras"]


def test_loading_a_run_from_its_latest_checkpoint_skips_a_damaged_one(reference, tmp_path, caplog):
    config = copy_run(reference, tmp_path)
    newest = checkpointing.latest_checkpoint(config.model_dir)
    truncate(newest + ".index")
    with caplog.at_level(logging.INFO, logger="absl"):
        trained = inference.load_run(config.model_dir, source="latest")
    assert trained.source.endswith("ckpt-8")
    assert [r.getMessage() for r in caplog.records if "cannot be read" in r.getMessage()] == [
        f"checkpoint {newest} cannot be read ({checkpointing.checkpoint_read_error(newest)}); using the older "
        f"intact checkpoint {newest[:-1]}8"]
