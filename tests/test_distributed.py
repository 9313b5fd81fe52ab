"""tf.distribute tests on CPU: MirroredStrategy over two logical CPUs, MultiWorkerMirroredStrategy over two
local processes. Each runs in fresh subprocesses (devices and the collective runtime are set at start-up)."""

import json
import os
import socket
import subprocess
import sys

import pytest
from conftest import write_tiny_training_set

from strokenet_tf.model import strokenet

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SIZE = 32
TIMEOUT_S = 300


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return write_tiny_training_set(tmp_path_factory, size=SIZE)


def _train_command(data_dir, model_dir, *extra):
    depth, height, width = strokenet.tiny_model_config(in_channels=5).required_multiples
    return [
        sys.executable, "-m", "strokenet_tf.train", f"--data_dir={data_dir}", f"--model_dir={model_dir}",
        "--tiny_model", "--num_folds=3", "--epochs=2", "--steps_per_epoch=2", "--batch_size=2",
        f"--patch_size={depth}x{height}x{width}", "--checkpoint_every_steps=1", "--noverbose", *extra,
    ]


def _env(**extra):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=REPO, **extra)
    env.pop("TF_CONFIG", None)
    env.update(extra)
    return env


GRADIENT_CHECK = r"""
import numpy as np
import tensorflow as tf
from strokenet_tf.training import distribute, loop
distribute.split_cpu(2)
import keras
from strokenet_tf.model import strokenet

config = strokenet.tiny_model_config(in_channels=2)
depth, height, width = config.required_multiples
rng = np.random.default_rng(0)
images = rng.normal(size=(4, depth, 2 * height, 2 * width, 2)).astype("float32")
labels = (rng.random((4, depth, 2 * height, 2 * width, 1)) > 0.7).astype("float32")

def one_step(strategy):
    keras.utils.set_random_seed(0)
    with strategy.scope():
        model = strokenet.build_strokenet(config)
        optimizer = keras.optimizers.SGD(0.1)  # unlike Adam, SGD shows a wrongly scaled gradient
    dataset = tf.data.Dataset.from_tensors((images, labels)).map(loop._relax_shapes(2))
    distributed = strategy.experimental_distribute_dataset(dataset)
    step = loop.TrainStep(strategy, model, optimizer, global_batch_size=4, mixed_precision=False)
    step.set_element_spec(distributed.element_spec)
    for batch_images, batch_labels in distributed:
        loss = float(step(batch_images, batch_labels, 2.0, 0.25, 1.0))
    return loss, [variable.numpy() for variable in model.trainable_variables]

mirrored = distribute.make_strategy("mirrored")
assert mirrored.num_replicas_in_sync == 2, mirrored.num_replicas_in_sync
loss_mirrored, weights_mirrored = one_step(mirrored)
loss_single, weights_single = one_step(tf.distribute.get_strategy())
np.testing.assert_allclose(loss_mirrored, loss_single, rtol=1e-5)
for a, b in zip(weights_mirrored, weights_single):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
print("GRADIENTS MATCH", loss_mirrored, loss_single)
"""


def test_mirrored_step_equals_single_device_step():
    """Per-replica loss / global batch + summed gradients == the one-device gradient of the whole batch."""
    process = subprocess.run([sys.executable, "-c", GRADIENT_CHECK], cwd=REPO, env=_env(), capture_output=True,
                             text=True, timeout=TIMEOUT_S)
    assert process.returncode == 0 and "GRADIENTS MATCH" in process.stdout, process.stderr[-3000:]


def test_mirrored_training_on_two_logical_cpus(data_dir, tmp_path):
    model_dir = tmp_path / "mirrored"
    command = _train_command(data_dir, model_dir, "--strategy=mirrored", "--cpu_devices=2")
    process = subprocess.run(command, cwd=REPO, env=_env(), capture_output=True, text=True, timeout=TIMEOUT_S)
    assert process.returncode == 0, process.stderr[-3000:]
    assert "mirrored strategy with 2 replica(s)" in process.stderr
    assert "Finished 2 epochs (4 steps)" in process.stdout
    assert (model_dir / "best.keras").exists() and (model_dir / "checkpoints" / "ckpt-4.index").exists()


def _free_ports(count):
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def test_multi_worker_training_with_two_processes(data_dir, tmp_path):
    model_dir = tmp_path / "multi_worker"
    workers = [f"127.0.0.1:{port}" for port in _free_ports(2)]
    processes = []
    for index in range(2):
        tf_config = json.dumps({"cluster": {"worker": workers}, "task": {"type": "worker", "index": index}})
        processes.append(subprocess.Popen(
            _train_command(data_dir, model_dir, "--strategy=multi_worker"), cwd=REPO, env=_env(TF_CONFIG=tf_config),
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        ))
    outputs = []
    try:
        for process in processes:
            outputs.append(process.communicate(timeout=TIMEOUT_S))
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
    (chief_out, chief_err), (worker_out, worker_err) = outputs
    assert processes[0].returncode == 0, chief_err[-3000:]
    assert processes[1].returncode == 0, worker_err[-3000:]
    assert "multi_worker strategy with 2 replica(s)" in chief_err
    assert "Finished 2 epochs (4 steps)" in chief_out and "Finished" not in worker_out
    assert (model_dir / "best.keras").exists() and (model_dir / "checkpoints" / "ckpt-4.index").exists()
    # Only the chief keeps files: the other worker's scratch folder is gone, and it wrote no summaries.
    assert not (model_dir / ".workers").exists()
    assert len(list((model_dir / "train").glob("events.out.tfevents.*"))) == 1


def test_multi_worker_without_tf_config_is_a_one_line_error(data_dir, tmp_path):
    process = subprocess.run(_train_command(data_dir, tmp_path / "m", "--strategy=multi_worker"), cwd=REPO,
                             env=_env(), capture_output=True, text=True, timeout=TIMEOUT_S)
    assert process.returncode == 2
    assert process.stderr.strip().splitlines()[-1].startswith(
        "strokenet_tf.train: error: --strategy=multi_worker needs the TF_CONFIG environment variable")
    assert "Traceback" not in process.stderr
