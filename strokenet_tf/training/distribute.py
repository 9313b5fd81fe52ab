"""tf.distribute strategy from a name, and which process is the chief.

`default` is the single-device default strategy; `mirrored` is synchronous data parallelism over the local
GPUs (or, without GPUs, over the logical CPU devices made by `split_cpu`, which is how the tests run it);
`multi_worker` is `MultiWorkerMirroredStrategy` configured from the TF_CONFIG environment variable. Only the
chief holds the run folder's lock (`run_lock`) and writes summaries, config.json and best.keras; other workers write checkpoints to a scratch folder that is
deleted right after (every worker must take part in a save, see
https://www.tensorflow.org/tutorials/distribute/multi_worker_with_ctl).
"""

from __future__ import annotations

import json
import os

import tensorflow as tf

from strokenet_tf import errors

STRATEGIES = ("default", "mirrored", "multi_worker")


class StrategyError(errors.InputError):
    """A strategy that cannot be made here; the message is one line naming the field (strategy, cpu_devices)."""


def split_cpu(num_devices: int) -> None:
    """Splits the host CPU into `num_devices` logical devices; must run before TensorFlow initialises.

    Raises:
        StrategyError: when TensorFlow is already initialised (devices can no longer be changed).
    """
    if num_devices <= 1:
        return
    cpu = tf.config.list_physical_devices("CPU")[0]
    try:
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * num_devices)
    except RuntimeError:
        if len(tf.config.list_logical_devices("CPU")) != num_devices:
            raise StrategyError(
                "cpu_devices", f"={num_devices}: TensorFlow is already initialised; set it before anything runs"
            ) from None


def _check_tf_config() -> None:
    text = os.environ.get("TF_CONFIG")
    if not text:
        raise StrategyError(
            "strategy", "=multi_worker needs the TF_CONFIG environment variable, e.g. "
            '{"cluster": {"worker": ["host1:12345", "host2:12345"]}, "task": {"type": "worker", "index": 0}}'
        )
    try:
        tf_config = json.loads(text)
        workers = tf_config["cluster"]
        task = tf_config["task"]
        task_type, index = task["type"], int(task["index"])
    except (ValueError, KeyError, TypeError) as error:
        raise StrategyError(
            "strategy", f"=multi_worker: TF_CONFIG is not valid ({type(error).__name__}: {error})"
        ) from None
    if task_type not in workers or not 0 <= index < len(workers[task_type]):
        raise StrategyError("strategy", f"=multi_worker: TF_CONFIG task {task_type}:{index} is not in its cluster")


def make_strategy(name: str) -> tf.distribute.Strategy:
    """Returns the strategy called `name` (one of STRATEGIES).

    Call it first thing in the program: MultiWorkerMirroredStrategy must be created before other TF ops run.

    Raises:
        StrategyError: unknown name, or multi_worker without a usable TF_CONFIG.
    """
    if name == "default":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        gpus = tf.config.list_logical_devices("GPU")
        devices = [device.name for device in (gpus or tf.config.list_logical_devices("CPU"))]
        return tf.distribute.MirroredStrategy(devices=devices)
    if name == "multi_worker":
        _check_tf_config()
        options = tf.distribute.experimental.CommunicationOptions(
            implementation=tf.distribute.experimental.CommunicationImplementation.AUTO
        )
        return tf.distribute.MultiWorkerMirroredStrategy(communication_options=options)
    raise StrategyError("strategy", f"must be one of {', '.join(STRATEGIES)}, got {name!r}")


def task_of(strategy: tf.distribute.Strategy) -> tuple[str | None, int | None]:
    """(task type, task index) of this process in a multi-worker cluster, (None, None) otherwise."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None:
        return None, None
    return resolver.task_type, resolver.task_id


def is_chief(strategy: tf.distribute.Strategy) -> bool:
    """True for the one process that writes summaries and exports (always True on one machine)."""
    task_type, task_id = task_of(strategy)
    if task_type is None:
        return True
    cluster = strategy.cluster_resolver.cluster_spec().as_dict()
    return task_type == "chief" or (task_type == "worker" and task_id == 0 and "chief" not in cluster)


def write_dir(directory: str, strategy: tf.distribute.Strategy) -> str:
    """Where this process writes what would go to `directory`: itself on the chief, a scratch folder elsewhere."""
    if is_chief(strategy):
        return directory
    task_type, task_id = task_of(strategy)
    return os.path.join(directory, ".workers", f"{task_type}_{task_id}")


def remove_scratch_dir(path: str, strategy: tf.distribute.Strategy) -> None:
    """Deletes a non-chief worker's scratch folder made by `write_dir` (no-op on the chief)."""
    if is_chief(strategy):
        return
    if tf.io.gfile.exists(path):
        tf.io.gfile.rmtree(path)
    try:  # the shared parent goes once the last worker's folder has gone
        os.rmdir(os.path.dirname(path))
    except OSError:
        pass
