"""One writer per run folder: an advisory `fcntl.flock` on MODEL_DIR/run.lock, held while a run writes there.

Two trainers on one --model_dir would interleave checkpoints, best.keras and TensorBoard events. `hold` takes
an exclusive, non-blocking lock on MODEL_DIR/run.lock and writes the holder (pid, host, start time) into it;
a second `train` or `cross_validate` on the same folder is refused with one line naming that holder. The
operating system drops a flock when its process ends in any way, `kill -9` included, so a killed run never
blocks its own resume; the file itself stays (deleting it could let two processes lock two different files).

Within one process the lock is re-entrant (`cross_validate` holds a fold folder while `train` runs in it);
flock locks belong to an open file, so a second `open` in the same process would otherwise refuse itself.
Under multi-worker training only the chief takes it (the workers write to scratch folders).
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import os
import socket
from typing import Iterator

from strokenet_tf import errors

LOCK_FILE = "run.lock"
# realpath of a held lock file -> [open file, hold count]
_HELD: dict[str, list] = {}


class RunLockError(errors.InputError):
    """The run folder is in use by another process; the message is one line naming the holder."""


def _holder_line(path: str) -> str:
    try:
        with open(path, encoding="utf-8") as stream:
            text = " ".join(stream.read().split())
    except OSError:
        text = ""
    return text or "a process that has not written its name yet"


def acquire(model_dir: str, field: str = "model_dir") -> None:
    """Locks model_dir (creating it) for this process, or adds one hold when this process has it already.

    Raises:
        RunLockError: another process holds the lock (one line: the folder, the holder, what to do).
    """
    os.makedirs(model_dir, exist_ok=True)
    path = os.path.realpath(os.path.join(model_dir, LOCK_FILE))
    if path in _HELD:
        _HELD[path][1] += 1
        return
    stream = open(path, "a+", encoding="utf-8")  # "a+": never truncates the holder's record before locking
    try:
        fcntl.flock(stream.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        stream.close()
        raise RunLockError(
            field, f"={model_dir} is in use by another run ({_holder_line(path)}; lock {path}); wait for it to "
            f"finish or use another {errors.ref(field)}"
        ) from None
    except BaseException:
        stream.close()
        raise
    started = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    stream.seek(0)
    stream.truncate()
    stream.write(f"pid {os.getpid()} on host {socket.gethostname()}, started {started}\n")
    stream.flush()
    _HELD[path] = [stream, 1]


def release(model_dir: str) -> None:
    """Drops one hold of model_dir's lock; the last one unlocks it (the file and its record stay)."""
    path = os.path.realpath(os.path.join(model_dir, LOCK_FILE))
    entry = _HELD.get(path)
    if entry is None:
        return
    entry[1] -= 1
    if entry[1] == 0:
        del _HELD[path]
        fcntl.flock(entry[0].fileno(), fcntl.LOCK_UN)
        entry[0].close()


@contextlib.contextmanager
def hold(model_dir: str, field: str = "model_dir", enabled: bool = True) -> Iterator[None]:
    """`acquire` ... `release` around a block; `enabled=False` (a non-chief worker) takes no lock."""
    if not enabled:
        yield
        return
    acquire(model_dir, field)
    try:
        yield
    finally:
        release(model_dir)
