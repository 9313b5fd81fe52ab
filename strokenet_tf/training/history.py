"""The run's per-epoch history: MODEL_DIR/history.csv and a progress plot, MODEL_DIR/progress.png.

One CSV row per finished epoch (1-based `epoch`); columns `HISTORY_COLUMNS`, validation columns empty on
epochs that were not validated, floats written in full precision. Both files are rewritten atomically after
every epoch (`data.atomic`), so a reader never sees half a file. After a resume the rows of epochs the
checkpoint had not finished are dropped and those epochs are written again as the run redoes them, so the CSV
of a resumed run has the rows of an uninterrupted one (`epoch_s`, the time this process spent on the epoch,
and `finished_at` aside).

The plot (Pillow, as `calibration.reliability_png`) has four panels over the epochs: training loss,
validation Dice (best ringed), learning rate and epoch time, with the curriculum's stage changes marked, in
the spirit of nnU-Net's `progress.png`.
"""

from __future__ import annotations

import csv
import io
import math
import os
from typing import Any, Mapping, Sequence

from strokenet_tf.data import atomic

HISTORY_FILE = "history.csv"
PROGRESS_FILE = "progress.png"
HISTORY_COLUMNS = ("epoch", "stage", "global_step", "learning_rate", "focal_gamma", "train_loss", "val_dice",
                   "val_precision", "val_recall", "best_val_dice", "epoch_s", "finished_at")


def read_history(path: str) -> list[dict[str, str]]:
    """The rows of a history CSV as {column: text}; [] when the file does not exist."""
    if not os.path.exists(path):
        return []
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return "" if math.isnan(value) else repr(value)
    return str(value)


class History:
    """The history of the run in `model_dir`; a no-op when `enabled` is False (workers other than the chief).

    Args:
        model_dir: the run folder (it exists).
        finished_epochs: epochs the restored checkpoint has finished; later rows (written by an attempt that
            stopped before its next checkpoint) are dropped.
        enabled: write the files.
    """

    def __init__(self, model_dir: str, finished_epochs: int, enabled: bool = True):
        self.csv_path = os.path.join(model_dir, HISTORY_FILE)
        self.png_path = os.path.join(model_dir, PROGRESS_FILE)
        self._enabled = enabled
        self.rows = read_history(self.csv_path) if enabled else []
        kept = [row for row in self.rows if int(row["epoch"]) <= finished_epochs]
        if len(kept) != len(self.rows):
            self.rows = kept
            self._write()

    def add(self, row: Mapping[str, Any]) -> None:
        """Records one finished epoch (replacing a row of the same or a later epoch) and rewrites both files."""
        if not self._enabled:
            return
        epoch = int(row["epoch"])
        self.rows = [old for old in self.rows if int(old["epoch"]) < epoch]
        self.rows.append({column: _text(row.get(column)) for column in HISTORY_COLUMNS})
        self._write()

    def _write(self) -> None:
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=HISTORY_COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(self.rows)
        atomic.atomic_write_text(self.csv_path, buffer.getvalue())
        atomic.atomic_write_bytes(self.png_path, progress_png(self.rows))


def _numbers(rows: Sequence[Mapping[str, str]], column: str) -> list[tuple[float, float]]:
    return [(float(row["epoch"]), float(row[column])) for row in rows if row.get(column)]


def progress_png(rows: Sequence[Mapping[str, str]], width: int = 760, height: int = 560) -> bytes:
    """Four line charts over the epochs of history `rows` (as `read_history` returns them), as PNG bytes."""
    from PIL import Image, ImageDraw, ImageFont

    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    fonts = ImageFont.load_default(size=14), ImageFont.load_default(size=12)
    panels = (
        ("training loss", "train_loss", (200, 40, 40), None),
        ("validation Dice (ring: best)", "val_dice", (30, 120, 30), (0.0, 1.0)),
        ("learning rate", "learning_rate", (40, 60, 200), None),
        ("epoch time (s)", "epoch_s", (120, 70, 160), None),
    )
    last_epoch = max([int(row["epoch"]) for row in rows] + [1])
    best = _numbers(rows, "best_val_dice")
    best_epoch = next((epoch for epoch, value in _numbers(rows, "val_dice") if best and value == best[-1][1]), None)
    stage_starts = [int(row["epoch"]) for previous, row in zip(rows, rows[1:]) if row["stage"] != previous["stage"]]
    half_w, half_h = width // 2, height // 2
    for index, (title, column, colour, value_range) in enumerate(panels):
        left, top = (index % 2) * half_w, (index // 2) * half_h
        box = (left + 64, top + 30, left + half_w - 20, top + half_h - 40)
        _panel(draw, fonts, box, title, _numbers(rows, column), colour, last_epoch, value_range,
               best_epoch if column == "val_dice" else None, stage_starts)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _panel(draw, fonts, box, title, points, colour, last_epoch, value_range, ring_epoch, stage_starts) -> None:
    """One chart; grey verticals mark the first epoch of each later curriculum stage."""
    x0, y0, x1, y1 = box
    title_font, label_font = fonts
    draw.text((x0, y0 - 22), title, fill="black", font=title_font)
    draw.rectangle(box, outline=(120, 120, 120))
    for epoch in stage_starts:
        x = x0 + (x1 - x0) * (epoch - 1) / max(last_epoch - 1, 1)
        draw.line([(x, y0 + 1), (x, y1 - 1)], fill=(200, 200, 200))
    if not points:
        draw.text((x0 + 8, y0 + 8), "no values yet", fill=(120, 120, 120), font=label_font)
        return
    values = [value for _, value in points]
    low, high = value_range or (min(values), max(values))
    if high - low < 1e-12:
        low, high = low - 0.5 * abs(low or 1.0), high + 0.5 * abs(high or 1.0)

    def xy(epoch, value):
        x = x0 + (x1 - x0) * ((epoch - 1) / (last_epoch - 1) if last_epoch > 1 else 0.5)
        return x, y1 - (y1 - y0) * (value - low) / (high - low)

    for value, y in ((high, y0), (low, y1)):
        draw.text((x0 - 6, y), f"{value:.3g}", fill="black", font=label_font, anchor="rm")
    draw.text((x0, y1 + 4), "epoch 1", fill="black", font=label_font)
    draw.text((x1, y1 + 4), str(last_epoch), fill="black", font=label_font, anchor="ra")
    line = [xy(epoch, value) for epoch, value in points]
    if len(line) > 1:
        draw.line(line, fill=colour, width=2)
    for (epoch, _), (x, y) in zip(points, line):
        draw.ellipse([x - 2, y - 2, x + 2, y + 2], fill=colour)
        if epoch == ring_epoch:
            draw.ellipse([x - 6, y - 6, x + 6, y + 6], outline="black", width=2)
