"""Tests for strokenet_tf.training.hparams: what TensorBoard's HParams dashboard shows for a run.

The dashboard is read the way TensorBoard serves it: an EventMultiplexer over the logdir, the multiplexer
data provider, and the HParams plugin's `/experiment` and `/session_groups` routes with the JSON requests of
its frontend.
"""

import json
import os
import time

import pytest
from conftest import write_tiny_training_set
from tensorboard.backend.event_processing import data_provider, plugin_event_multiplexer
from tensorboard.plugins import base_plugin
from tensorboard.plugins.hparams import hparams_plugin
from werkzeug import test as werkzeug_test

from strokenet_tf import curriculum as curriculum_lib
from strokenet_tf.training import hparams, loop, summaries
from test_train import make_config

STATUSES = ["STATUS_UNKNOWN", "STATUS_SUCCESS", "STATUS_FAILURE", "STATUS_RUNNING"]


def read_dashboard(logdir):
    """(experiment, session groups) as TensorBoard's HParams plugin returns them for `--logdir logdir`."""
    multiplexer = plugin_event_multiplexer.EventMultiplexer(purge_orphaned_data=True)
    multiplexer.AddRunsFromDirectory(logdir)
    multiplexer.Reload()
    context = base_plugin.TBContext(logdir=logdir, multiplexer=multiplexer,
                                    data_provider=data_provider.MultiplexerDataProvider(multiplexer, logdir))
    client = werkzeug_test.Client(hparams_plugin.HParamsPlugin(context).get_plugin_apps()["/experiment"])
    experiment = json.loads(client.post("/", json={"experimentName": "", "hparamsLimit": 1000}).get_data())
    columns = [{"hparam": info["name"]} for info in experiment.get("hparamInfos", [])]
    columns += [{"metric": info["name"]} for info in experiment.get("metricInfos", [])]
    client = werkzeug_test.Client(hparams_plugin.HParamsPlugin(context).get_plugin_apps()["/session_groups"])
    groups = json.loads(client.post("/", json={
        "experimentName": "", "allowedStatuses": STATUSES, "colParams": columns, "startIndex": 0, "sliceSize": 100,
    }).get_data())
    return experiment, groups.get("sessionGroups", [])


def ticked_hparams(experiment):
    """The hparams the dashboard ticks: its frontend sorts by `differs` and shows the first five."""
    infos = sorted(experiment["hparamInfos"], key=lambda info: not info.get("differs", False))
    return [info["name"] for info in infos[:5]]


def session_metrics(group):
    (session,) = group["sessions"]
    return {value["name"]["tag"]: value["value"] for value in session.get("metricValues", [])}


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return write_tiny_training_set(tmp_path_factory, size=32)


def test_run_hparams_lead_with_the_curriculum_and_leave_runtime_settings_out(data_dir):
    values = hparams.run_hparams(make_config(data_dir, "/runs/fold0"))
    assert values["fold"] == 0 and values["batch_size"] == 2 and values["epochs"] == 3
    assert values["learning_rate"] == "0.001, 0.0005" and values["patch_size"] == "2x8x8, 2x16x16"
    assert values["focal_gamma"] == "0, 1->2" and values["focal_alpha"] == "0.5, 0.25"
    assert values["dice_weight"] == "0, 1"
    assert values["curriculum"].startswith("name=warmup,epochs=1,") and " | name=main,epochs=2," in values["curriculum"]
    assert values["model.name"] == "strokenet_tiny" and values["optimizer"] == "adam"
    assert not {"model_dir", "verbose", "curriculum.stages", "pipeline.patch_size"} & set(values)
    assert set(hparams.SHOWN) <= set(values)
    assert hparams.flatten_hparams({"a": {"b": (1, 2)}, "c": None}) == {"a.b": "(1, 2)", "c": "None"}


def test_dashboard_shows_the_best_and_last_metrics_for_the_readme_logdir_and_its_parent(data_dir, tmp_path):
    model_dir = str(tmp_path / "runs" / "fold0")
    config = make_config(data_dir, model_dir)
    writers = summaries.SummaryWriters(model_dir, is_chief=True)
    writers.hparams(hparams.run_hparams(config), trial_id="fold0")
    for step, dice in ((3, 0.2), (6, 0.5), (9, 0.4)):  # the best is not the last
        writers.scalars(writers.val, step, {"dice": dice})
        writers.session_metrics(step, hparams.metric_scalars(
            0.5 if step >= 6 else 0.2, 2 if step >= 6 else 1, {"dice": dice, "precision": 0.7, "recall": 0.3},
            train_loss=1.0 / step))
    writers.end_session()
    writers.close()

    for logdir, session in ((model_dir, "."), (os.path.dirname(model_dir), "fold0")):
        experiment, groups = read_dashboard(logdir)
        assert ticked_hparams(experiment) == ["batch_size", "curriculum", "fold", "learning_rate", "patch_size"]
        assert [info["name"]["tag"] for info in experiment["metricInfos"]][:2] == [
            "hparams/best_val_dice", "hparams/best_epoch"]
        (group,) = groups
        assert group["sessions"][0]["name"] == session and group["sessions"][0]["status"] == "STATUS_SUCCESS"
        assert group["hparams"]["learning_rate"] == "0.001, 0.0005" and group["hparams"]["fold"] == 0
        assert session_metrics(group) == pytest.approx({
            "hparams/best_val_dice": 0.5, "hparams/best_epoch": 2, "hparams/val_dice": 0.4,
            "hparams/val_precision": 0.7, "hparams/val_recall": 0.3, "hparams/train_loss": 1.0 / 9,
        })


def test_restart_marker_drops_the_abandoned_attempts_session_metrics(data_dir, tmp_path):
    model_dir = str(tmp_path / "model")
    writers = summaries.SummaryWriters(model_dir, is_chief=True)
    writers.hparams(hparams.run_hparams(make_config(data_dir, model_dir)), trial_id="model")
    for step in (1, 2, 3):
        writers.session_metrics(step, hparams.metric_scalars(0.9, step, {"dice": 0.9}))
    writers.close()
    time.sleep(1.1)  # the marker is named one second in the past: after the abandoned attempt's files
    assert os.path.dirname(summaries.mark_restart(model_dir, 2)[-1]) == model_dir
    writers = summaries.SummaryWriters(model_dir, is_chief=True)
    writers.session_metrics(2, hparams.metric_scalars(0.3, 1, {"dice": 0.3}))
    writers.close()
    _, (group,) = read_dashboard(model_dir)
    metrics = session_metrics(group)
    assert metrics["hparams/best_val_dice"] == pytest.approx(0.3) and metrics["hparams/best_epoch"] == 1
    multiplexer = plugin_event_multiplexer.EventMultiplexer(purge_orphaned_data=True)
    multiplexer.AddRunsFromDirectory(model_dir)
    multiplexer.Reload()
    assert [event.step for event in multiplexer.Tensors(".", "hparams/best_epoch")] == [1, 2]


def test_trained_run_shows_what_training_logged(data_dir, tmp_path):
    """A tiny training run, then TensorBoard's view with MODEL_DIR as the logdir (as the trainer says)."""
    patch = make_config(data_dir, "").model.required_multiples
    config = make_config(data_dir, str(tmp_path / "fold0"), steps_per_epoch=1, curriculum=(
        curriculum_lib.Curriculum.single_stage(3, 1e-3, tuple(patch), gamma=1.0, dice_weight=0.5)))
    result = loop.train(config)
    experiment, (group,) = read_dashboard(config.model_dir)
    assert ticked_hparams(experiment) == list(hparams.SHOWN)
    assert group["hparams"]["epochs"] == 3 and group["hparams"]["focal_gamma"] == "1"
    metrics = session_metrics(group)
    assert metrics["hparams/best_val_dice"] == pytest.approx(result.best_val_dice, rel=1e-6)
    assert metrics["hparams/best_epoch"] == result.best_epoch >= 1
    assert metrics["hparams/val_dice"] == pytest.approx(result.last_val_metrics["dice"], rel=1e-6)
    best = json.load(open(os.path.join(config.model_dir, "best.json")))
    assert metrics["hparams/best_val_dice"] == pytest.approx(best["dice"], rel=1e-6)
    assert group["sessions"][0]["status"] == "STATUS_SUCCESS"
