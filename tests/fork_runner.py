"""Runs entry points as `python -m` would, in forked children of one process that imported TensorFlow once.

Importing TensorFlow costs seconds per process on a small machine; tests that start many commands (bad flags
for every tool, kills at many points) pay it once here. The driver imports TensorFlow, Keras and the package's
library modules but runs no TensorFlow op, then forks one child per job. Each child optionally runs the job's
`hook` (Python source, e.g. to SIGKILL itself at a chosen point), then executes the module exactly as
`python -m` does (`runpy.run_module(module, run_name="__main__", alter_sys=True)`, with the module not imported
before), with its own argv, stdout/stderr files and exit status; an uncaught exception prints its traceback and
exits 1 as the interpreter would.

Example:
    results = run_jobs([Job("bad", "strokenet_tf.predict", ["--model=/nowhere"])], tmp_path)
    results["bad"].returncode, results["bad"].stderr
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import re
import subprocess
import sys
from typing import Sequence

REPO = pathlib.Path(__file__).resolve().parents[1]
# TensorFlow's C++ logging before absl::InitializeLog (printed whatever TF_CPP_MIN_LOG_LEVEL says).
TF_NOISE = re.compile(r"^(WARNING: All log messages before absl::InitializeLog\(\)|[IWEF]\d{4} \d\d:\d\d:\d\d)")

_DRIVER = r"""
import json, os, runpy, sys, traceback
import tensorflow, keras  # noqa: F401  (the expensive imports, done once; no op runs before the fork)
from strokenet_tf import config, evaluation, inference, montage, prediction  # noqa: F401
from strokenet_tf.serving import client, exporting  # noqa: F401
from strokenet_tf.training import loop  # noqa: F401
jobs, out_dir, workers = json.loads(sys.stdin.read()), sys.argv[1], int(sys.argv[2])
codes, running = {}, {}
def reap():
    pid, status = os.wait()
    codes[running.pop(pid)] = os.waitstatus_to_exitcode(status)
for job in jobs:
    while len(running) >= workers:
        reap()
    pid = os.fork()
    if pid == 0:
        for fd, name in ((1, "out"), (2, "err")):
            os.dup2(os.open(os.path.join(out_dir, job["id"] + "." + name), os.O_WRONLY | os.O_CREAT), fd)
        os.dup2(os.open(os.devnull, os.O_RDONLY), 0)
        sys.argv, code = [job["module"]] + job["args"], 1
        sys.modules.pop(job["module"], None)  # as under `python -m`: not imported before it runs as __main__
        try:
            exec(job["hook"], {"__name__": "hook"})
            runpy.run_module(job["module"], run_name="__main__", alter_sys=True)
            code = 0
        except SystemExit as exit_:
            code = exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 1)
            if not isinstance(exit_.code, (int, type(None))):
                print(exit_.code, file=sys.stderr)
        except BaseException:
            traceback.print_exc()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    running[pid] = job["id"]
while running:
    reap()
print(json.dumps(codes))
"""


@dataclasses.dataclass(frozen=True)
class Job:
    """`python -m module *args`, after running `hook` (Python source) in the same process."""

    id: str
    module: str
    args: Sequence[str]
    hook: str = ""


def environment() -> dict:
    """The environment of every child: quiet TensorFlow, no GPU, this checkout importable."""
    return dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="",
                PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))


def run_jobs(jobs: Sequence[Job], out_dir: str | os.PathLike, workers: int = 2,
             timeout_s: float = 600) -> dict[str, subprocess.CompletedProcess]:
    """Runs `jobs` (at most `workers` at a time); id -> CompletedProcess. A child killed by signal N has
    returncode -N, as with subprocess."""
    out_dir = pathlib.Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    payload = [{"id": job.id, "module": job.module, "args": list(job.args), "hook": job.hook} for job in jobs]
    driver = subprocess.run([sys.executable, "-c", _DRIVER, str(out_dir), str(workers)], input=json.dumps(payload),
                            cwd=REPO, env=environment(), capture_output=True, text=True, timeout=timeout_s)
    if driver.returncode != 0:
        raise RuntimeError(f"fork runner failed ({driver.returncode}): {driver.stderr[-3000:]}")
    codes = json.loads(driver.stdout.strip().splitlines()[-1])
    return {job.id: subprocess.CompletedProcess([job.module, *job.args], codes[job.id],
                                                (out_dir / f"{job.id}.out").read_text(),
                                                (out_dir / f"{job.id}.err").read_text()) for job in jobs}


def error_lines(stderr: str) -> list[str]:
    """stderr without TensorFlow's C++ start-up log lines and blank lines."""
    return [line for line in stderr.splitlines() if line.strip() and not TF_NOISE.match(line)]
