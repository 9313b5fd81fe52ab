"""The trainer's log: one plain line per event (start, resume, stage change, epoch end, new best model).

Lines go to stdout with a timestamp when the run is verbose (the chief of a `--verbose` run), else to absl's
INFO log: one place each, never both. A Keras progress bar runs during an epoch only when stdout is a terminal,
so a log redirected to a file holds plain lines without carriage returns, backspaces or colour codes.
"""

from __future__ import annotations

import datetime
import sys
from typing import Mapping, TextIO

import keras
from absl import logging


def format_duration(seconds: float) -> str:
    """`42 s`, `7 min 05 s`, `2 h 03 min`."""
    seconds = max(0, int(round(seconds)))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


class RunLog:
    """Writes the run's event lines to `stream` (stdout) or, when `to_stream` is False, to absl's INFO log.

    Args:
        to_stream: True on the chief of a verbose run.
        stream: where lines go; default `sys.stdout` (read at call time, so pytest's capture sees them).
    """

    def __init__(self, to_stream: bool, stream: TextIO | None = None):
        self._to_stream = to_stream
        self._stream = stream

    @property
    def stream(self) -> TextIO:
        return self._stream or sys.stdout

    def line(self, text: str) -> None:
        if self._to_stream:
            stamp = datetime.datetime.now().strftime("%Y-%m-%d %H:%M:%S")
            print(f"{stamp} {text}", file=self.stream, flush=True)
        else:
            logging.info("%s", text)

    def progress_bar(self, title: str, steps: int, done: int) -> keras.utils.Progbar | None:
        """A live per-step bar on a terminal (after a `title` line), else None."""
        isatty = getattr(self.stream, "isatty", None)
        if not (self._to_stream and isatty is not None and isatty()):
            return None
        print(title, file=self.stream, flush=True)
        bar = keras.utils.Progbar(steps, stateful_metrics=["lr", "gamma"], unit_name="step")
        bar.update(done)
        return bar


class EpochClock:
    """Epoch durations of this process and the whole-run ETA: the mean of the latest `window` epochs times the
    epochs left. The process's first epoch (which traces the step function) counts only while it is the only one.
    """

    def __init__(self, total_epochs: int, window: int = 5):
        self.total_epochs = total_epochs
        self.window = window
        self._seconds: list[float] = []

    def add(self, seconds: float) -> None:
        self._seconds.append(seconds)

    def eta_s(self, epochs_done: int) -> float:
        recent = (self._seconds[1:] or self._seconds)[-self.window:]
        if not recent:
            return float("nan")
        return sum(recent) / len(recent) * max(self.total_epochs - epochs_done, 0)


def epoch_line(epoch: int, total_epochs: int, stage: str, seconds: float, train_loss: float | None,
               val_metrics: Mapping[str, float] | None, learning_rate: float, gamma: float, eta_s: float) -> str:
    """`epoch 3/40 (main) 12 s: loss 0.4123, val dice 0.5012 precision ... recall ..., lr 0.0005, gamma 2;
    ETA 7 min 30 s` (`epoch` is 1-based; no validation part when the epoch was not validated)."""
    parts = [f"loss {train_loss:.4f}" if train_loss is not None else "no steps left"]
    if val_metrics:
        parts.append("val " + " ".join(f"{name} {value:.4f}" for name, value in val_metrics.items()))
    parts.append(f"lr {learning_rate:g}, gamma {gamma:g}")
    eta = "done" if epoch >= total_epochs else f"ETA {format_duration(eta_s)}" if eta_s == eta_s else "ETA ?"
    return f"epoch {epoch}/{total_epochs} ({stage}) {format_duration(seconds)}: {', '.join(parts)}; {eta}"
