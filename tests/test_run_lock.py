"""One writer per run folder (strokenet_tf.training.run_lock): refusal line, kill -9 release, re-entrance."""

import os
import signal
import socket
import subprocess
import sys

import pytest
from conftest import write_tiny_training_set

import fork_runner
from strokenet_tf.training import loop, run_lock
from test_train import make_config

HOLDER = ("import sys, time\n"
          "from strokenet_tf.training import run_lock\n"
          "run_lock.acquire(sys.argv[1])\n"
          "print('locked', flush=True)\n"
          "time.sleep(600)\n")
TRY_LOCK = ("import fcntl, sys\n"
            "stream = open(sys.argv[1], 'a+')\n"
            "try:\n"
            "    fcntl.flock(stream, fcntl.LOCK_EX | fcntl.LOCK_NB)\n"
            "except BlockingIOError:\n"
            "    sys.exit(3)\n")


@pytest.fixture
def holder(tmp_path):
    """Another process holding tmp_path/model's lock; yields (folder, process)."""
    model_dir = str(tmp_path / "model")
    process = subprocess.Popen([sys.executable, "-c", HOLDER, model_dir], cwd=fork_runner.REPO,
                               env=fork_runner.environment(), stdout=subprocess.PIPE, text=True)
    assert process.stdout.readline().strip() == "locked"
    yield model_dir, process
    process.kill()
    process.wait()


def lock_is_free(model_dir):
    path = os.path.join(model_dir, run_lock.LOCK_FILE)
    return subprocess.run([sys.executable, "-c", TRY_LOCK, path]).returncode == 0


def test_second_trainer_and_cross_validation_are_refused_with_one_line_naming_the_holder(holder, tmp_path,
                                                                                         tmp_path_factory):
    model_dir, process = holder
    data_dir = write_tiny_training_set(tmp_path_factory)
    common = [f"--data_dir={data_dir}", "--tiny_model", "--epochs=1", "--num_folds=3", "--verbose=false"]
    results = fork_runner.run_jobs([
        fork_runner.Job("train", "strokenet_tf.train", common + [f"--model_dir={model_dir}"]),
        fork_runner.Job("cv", "strokenet_tf.cross_validate", common + [f"--model_dir={model_dir}"]),
    ], tmp_path / "jobs")
    holder_record = f"pid {process.pid} on host {socket.gethostname()}, started "
    for tool in ("train", "cv"):
        lines = fork_runner.error_lines(results[tool].stderr)
        assert results[tool].returncode == 2 and len(lines) == 1, results[tool].stderr[-2000:]
        module = "strokenet_tf.train" if tool == "train" else "strokenet_tf.cross_validate"
        assert lines[0].startswith(f"{module}: error: --model_dir={model_dir} is in use by another run "
                                   f"({holder_record}")
        assert lines[0].endswith(f"lock {os.path.realpath(model_dir)}/run.lock); wait for it to finish or use "
                                 f"another --model_dir")
    assert os.listdir(model_dir) == ["run.lock"]  # nothing written by the refused runs


def test_a_killed_holder_never_blocks_its_own_resume(holder, tmp_path):
    model_dir, process = holder
    with pytest.raises(run_lock.RunLockError, match=f"pid {process.pid} "):
        loop.train(make_config(str(tmp_path / "no_data_needed"), model_dir))
    process.send_signal(signal.SIGKILL)
    process.wait()
    run_lock.acquire(model_dir)
    try:
        record = open(os.path.join(model_dir, run_lock.LOCK_FILE)).read()
        assert record.startswith(f"pid {os.getpid()} on host {socket.gethostname()}, started ")
        assert not lock_is_free(model_dir)
    finally:
        run_lock.release(model_dir)
    assert lock_is_free(model_dir)


def test_lock_is_reentrant_within_a_process_and_optional_for_non_chief_workers(holder, tmp_path):
    mine = str(tmp_path / "mine")
    with run_lock.hold(mine):
        with run_lock.hold(mine):  # cross_validate holds a folder that train then locks again
            assert not lock_is_free(mine)
        assert not lock_is_free(mine)
    assert lock_is_free(mine)
    model_dir, _ = holder
    with run_lock.hold(model_dir, enabled=False):  # a non-chief worker takes no lock
        pass
