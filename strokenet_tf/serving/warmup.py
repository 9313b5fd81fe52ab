"""TF-Serving warmup records: `<version_dir>/assets.extra/tf_serving_warmup_requests`.

TF-Serving replays these requests when it loads a version, before the version serves traffic, so CUDA,
cuDNN (including convolution autotuning for each input shape) and the graph optimiser are initialised by
the warmup rather than by the first patient. The file is a TFRecord of `PredictionLog` protos (at most 1000
records), each holding a `PredictRequest` built by `client.build_predict_request`: the same kind of
request the client sends.

The volumes are synthetic ISLES-like heads (`synthetic_image`), not zeros: an empty brain mask would skip no op
(the graph has no branches) but realistic values keep the replay representative, and the brain's in-plane extent
decides the box the members run on (`preprocess.head_box`), hence the convolution shapes TF-Serving tunes.
"""

from __future__ import annotations

import os
from typing import Iterator, Sequence

import numpy as np
import tensorflow as tf
from tensorflow_serving.apis import prediction_log_pb2

from strokenet_tf.data import isles
from strokenet_tf.serving import client, signatures

WARMUP_FILE = os.path.join("assets.extra", "tf_serving_warmup_requests")
MAX_RECORDS = 1000  # TF-Serving's limit
DEFAULT_DEPTHS: tuple[int, ...] = (8,)
DEFAULT_SIZE = 256


# The brain's in-plane half-extent (rows, columns) and centre as fractions of the plane: those of the ISLES-like
# heads of `data.synthesize` at 256 x 256 (brain rows 29-216, columns 42-203).
_BRAIN_HALF_EXTENT = (0.367, 0.316)
_BRAIN_CENTRE = (0.478, 0.479)
# Tissue values in physical units, one row per tissue label: CT (HU), CBF (mL/100g/min), CBV (mL/100g), Tmax (s).
# MTT = 60 CBV / CBF (central volume theorem).
_WHITE, _GREY, _CSF, _PENUMBRA, _CORE = range(5)
_TISSUE_VALUES = np.array([
    [28.0, 22.0, 2.2, 3.0],  # white matter
    [38.0, 55.0, 4.0, 2.0],  # grey matter
    [8.0, 6.0, 1.0, 4.0],  # CSF
    [33.0, 20.0, 4.4, 10.0],  # penumbra: Tmax > 6 s
    [22.0, 7.0, 1.3, 18.0],  # core: hypodense, CBF and CBV low
])
_SYNTHETIC_CHANNELS = (isles.CT, isles.CBF, isles.CBV, isles.MTT, isles.TMAX, isles.PWI)


def synthetic_image(depth: int, size: int, channels: Sequence[str], seed: int = 0) -> np.ndarray:
    """A synthetic ISLES-like raw image float32 [depth, size, size, len(channels)] in physical units.

    A head phantom built with numpy in milliseconds: air (-1000 HU), scalp, skull and a brain of the extent of
    the ISLES-like heads (`_BRAIN_HALF_EXTENT`), narrowing towards the top of the slab, with a grey-matter
    ribbon, white matter, deep grey nuclei, ventricles, a few bright vessels and an MCA-territory lesion (core
    inside penumbra); CBF, CBV, MTT and Tmax in their usual ranges inside the brain and 0 outside (the brain
    mask of `preprocess`), CT_4DPWI as the reader's "max" summary (CT plus the bolus peak). `seed` varies the
    noise, the outline and the lesion's side.
    """
    unknown = [name for name in channels if name not in _SYNTHETIC_CHANNELS]
    if unknown:
        raise ValueError(f"warmup: cannot synthesise channel(s) {', '.join(unknown)}")
    rng = np.random.default_rng(seed)
    rows = (np.arange(size, dtype=np.float64) + 0.5)[:, None] / size - _BRAIN_CENTRE[0]
    cols = (np.arange(size, dtype=np.float64) + 0.5)[None, :] / size - _BRAIN_CENTRE[1]
    angle = np.arctan2(rows, cols)
    outline = 1.0 + 0.025 * np.cos(3.0 * angle + rng.uniform(0, 2 * np.pi)) + 0.015 * np.cos(5.0 * angle)
    lesion_angle = np.abs(np.arctan2(rows, cols if rng.random() < 0.5 else -cols))  # 0 towards the lesion's side
    planes = []
    for k in range(depth):
        scale = 1.0 - 0.15 * (k / max(depth - 1, 1)) ** 2  # the brain narrows towards the vertex
        r = np.hypot(rows / (_BRAIN_HALF_EXTENT[0] * scale), cols / (_BRAIN_HALF_EXTENT[1] * scale)) / outline
        y, x = rows / scale, np.abs(cols / scale)
        brain = r < 1.0
        tissue = np.full((size, size), _WHITE)
        tissue[(r > 0.80) | (np.hypot(y / 0.08, (x - 0.09) / 0.04) < 1.0)] = _GREY  # cortex, deep nuclei
        tissue[(np.hypot((y + 0.02) / 0.10, (x - 0.035) / 0.022) < 1.0) | (r > 0.96)] = _CSF  # ventricles, sulci
        territory = brain & (lesion_angle < 0.75) & (r > 0.25)
        tissue[territory] = _PENUMBRA
        tissue[territory & (lesion_angle < 0.4) & (r > 0.45) & (r < 0.95)] = _CORE
        ct, cbf, cbv, tmax = np.moveaxis(_TISSUE_VALUES[tissue], -1, 0)
        vessels = brain & (rng.random((size, size)) < 0.015)
        cbf, cbv = np.where(vessels, 8.0 * cbf, cbf), np.where(vessels, 8.0 * cbv, cbv)
        cbf, cbv, tmax = [np.where(brain, value * rng.lognormal(0.0, 0.15, (size, size)), 0.0)
                          for value in (cbf, cbv, tmax)]
        mtt = np.where(brain, np.clip(60.0 * cbv / np.maximum(cbf, 1e-3), 0.5, 40.0), 0.0)
        skull = ~brain & (r < 1.09)
        scalp = ~brain & (r >= 1.09) & (r < 1.14)
        ct = np.where(brain, ct, np.where(skull, 1100.0 + 250.0 * np.cos(4.0 * angle), np.where(scalp, 40.0, -1000.0)))
        ct = ct + rng.normal(0.0, 4.0, (size, size))
        maps = {isles.CT: ct, isles.CBF: cbf, isles.CBV: cbv, isles.MTT: mtt, isles.TMAX: tmax,
                isles.PWI: ct + np.where(brain, 10.0 * cbv, 0.0)}
        planes.append(np.stack([maps[name] for name in channels], axis=-1))
    return np.stack(planes).astype(np.float32)


def warmup_images(channels: Sequence[str], depths: Sequence[int] = DEFAULT_DEPTHS,
                  size: int = DEFAULT_SIZE) -> list[np.ndarray]:
    """One synthetic image per depth, `size` x `size` in-plane."""
    return [synthetic_image(int(depth), int(size), channels, seed=index) for index, depth in enumerate(depths)]


def write_warmup_file(version_dir: str, images: Sequence[np.ndarray], model_name: str,
                      signature: str = signatures.SERVING_DEFAULT) -> str:
    """Writes one PredictionLog per image to `<version_dir>/assets.extra/tf_serving_warmup_requests`."""
    if len(images) > MAX_RECORDS:
        raise ValueError(f"warmup: at most {MAX_RECORDS} records, got {len(images)}")
    path = os.path.join(version_dir, WARMUP_FILE)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with tf.io.TFRecordWriter(path) as writer:
        for image in images:
            request = client.build_predict_request(image, model_name, signature)
            log = prediction_log_pb2.PredictionLog(predict_log=prediction_log_pb2.PredictLog(request=request))
            writer.write(log.SerializeToString())
    return path


def read_warmup_requests(version_dir: str) -> Iterator:
    """The PredictRequests of a version's warmup file, in order."""
    path = os.path.join(version_dir, WARMUP_FILE)
    for record in tf.data.TFRecordDataset(path):
        log = prediction_log_pb2.PredictionLog.FromString(record.numpy())
        yield log.predict_log.request


def synthetic_series(depth: int = 2, size: int = 32, frames: int = 40, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A small raw CTP phantom (CT [depth, size, size] and series [depth, size, size, frames] in HU, 1 s frames):
    skull ring, brain with a delayed, hypoperfused half, an artery and a draining vein. Enough for the `from_4d`
    signature to find an arterial input and make non-trivial maps; used by the export's check of that signature."""
    from strokenet_tf.perfusion import tracer

    rng = np.random.default_rng(seed)
    h, w = np.meshgrid(np.arange(size), np.arange(size), indexing="ij")
    centre = (size - 1) / 2.0
    radius = np.hypot(h - centre, w - centre) / (size / 32.0)
    ct = np.where(radius < 13, 35.0, np.where(radius < 15, 1200.0, -1000.0))
    ct = np.broadcast_to(ct, (depth, size, size)).astype(np.float32)
    series = np.repeat(ct[..., None], frames, axis=-1)
    aif = tracer.gamma_variate(np.arange(frames, dtype=np.float64), 5.0, 300.0, 3.0, 1.4)
    brain = np.broadcast_to(radius < 12, ct.shape)
    slow = np.broadcast_to(w < size * 3 // 8, ct.shape)[brain]
    series[brain] += tracer.tissue_curves(aif, 1.0, np.where(slow, 12.0, 55.0), np.where(slow, 9.0, 4.0),
                                          np.where(slow, 4.0, 0.5), np.full(int(brain.sum()), 1.0))
    row = size // 4
    series[:, row, size * 5 // 8:size * 5 // 8 + 2] = 35.0 + aif
    series[:, size // 10:size // 10 + 2, size // 2] = 35.0 + tracer.transport(aif, 1.0, 4.0, 2.5)[0]
    series += rng.normal(0, 2.0, series.shape)
    return ct, series.astype(np.float32)
