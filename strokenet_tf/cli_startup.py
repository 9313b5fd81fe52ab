"""Keeps TensorFlow's start-up notices off the terminal of the entry points; its warnings and errors still show.

`import tensorflow` prints, whatever TF_CPP_MIN_LOG_LEVEL says, C++ INFO lines logged before absl's logging
is initialised ("oneDNN custom operations are on ...", "This TensorFlow binary is optimized to use available
CPU instructions ..." and absl's "All log messages before absl::InitializeLog() ..." banner), twice. They
carry no news for a user, so while `tensorflow` is first imported stderr goes to a temporary file and every
line but those notices is written back. Later C++ INFO lines are dropped by TF_CPP_MIN_LOG_LEVEL=1 (set
unless the user chose a level); W/E/F lines, Python warnings and tracebacks are untouched.
"""

from __future__ import annotations

import contextlib
import importlib.abc
import importlib.machinery
import os
import re
import sys
import tempfile

_NOTICE = re.compile(r"^(WARNING: All log messages before absl::InitializeLog\(\)"
                     r"|I\d{4} \d\d:\d\d:\d+\.\d+\s+\d+ \S+\] "
                     r"|To enable the following instructions: .* rebuild TensorFlow)")


def is_startup_notice(line: str) -> bool:
    """Whether `line` is one of TensorFlow's start-up INFO notices (see the module docstring)."""
    return bool(_NOTICE.match(line))


@contextlib.contextmanager
def filtered_stderr():
    """Sends file descriptor 2 to a temporary file for the block, then writes back all but the notices."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as capture:
        os.dup2(capture.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            capture.seek(0)
            kept = [line for line in capture.read().decode(errors="replace").splitlines()
                    if not is_startup_notice(line)]
            if kept:
                sys.stderr.write("\n".join(kept) + "\n")
                sys.stderr.flush()


class _QuietLoader(importlib.abc.Loader):
    def __init__(self, loader):
        self._loader = loader

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module):
        with filtered_stderr():
            self._loader.exec_module(module)


class _QuietTensorFlowFinder(importlib.abc.MetaPathFinder):
    """Wraps the first import of the `tensorflow` package in `filtered_stderr`, then steps aside."""

    def find_spec(self, name, path, target=None):
        if name != "tensorflow":
            return None
        if self in sys.meta_path:
            sys.meta_path.remove(self)
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is not None and spec.loader is not None:
            spec.loader = _QuietLoader(spec.loader)
        return spec


QUIET_ENV = "STROKENET_TF_QUIET_STARTUP"
"""Set by `quiet_tensorflow`; a process that finds it set (a tool's spawned worker) is quiet too."""


def quiet_tensorflow() -> None:
    """Sets TF_CPP_MIN_LOG_LEVEL=1 unless set, and filters the start-up notices of a later `import tensorflow`
    (a no-op once TensorFlow is imported). The entry points call it before anything imports TensorFlow."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")
    os.environ[QUIET_ENV] = "1"  # worker processes a tool spawns (synthesize --workers) inherit it
    if "tensorflow" in sys.modules or any(isinstance(f, _QuietTensorFlowFinder) for f in sys.meta_path):
        return
    sys.meta_path.insert(0, _QuietTensorFlowFinder())


def started_as_entry_point(orig_argv=None) -> bool:
    """Whether this process is `python -m strokenet_tf...` (read from sys.orig_argv, which is right even while
    the package itself is being imported, before the module runs)."""
    if orig_argv is None and os.environ.get(QUIET_ENV) == "1":
        return True  # a worker spawned by an entry point (multiprocessing "spawn" runs `python -c ...`)
    argv = list(getattr(sys, "orig_argv", []) if orig_argv is None else orig_argv)[1:]
    while argv:
        argument = argv.pop(0)
        if argument == "-m":
            return bool(argv) and argv[0].startswith("strokenet_tf")
        if argument.startswith("-m"):
            return argument[2:].startswith("strokenet_tf")
        if argument in ("-W", "-X"):  # options that take a value
            argv = argv[1:]
        elif not argument.startswith("-"):
            return False
    return False
