"""TF-Serving warmup records: `<version_dir>/assets.extra/tf_serving_warmup_requests`.

TF-Serving replays these requests when it loads a version, before the version serves traffic, so CUDA,
cuDNN (including convolution autotuning for each input shape) and the graph optimiser are initialised by
the warmup rather than by the first patient. The file is a TFRecord of `PredictionLog` protos (at most 1000
records), each holding a `PredictRequest` built by `client.build_predict_request`: the same kind of
request the client sends.

The volumes are synthetic ISLES-like heads (`data.synthesize`), not zeros: an empty brain mask would skip
no op (the graph has no branches) but realistic values keep the replay representative.
"""

from __future__ import annotations

import os
from typing import Iterator, Sequence

import numpy as np
import tensorflow as tf
from tensorflow_serving.apis import prediction_log_pb2

from strokenet_tf.data import isles, synthesis
from strokenet_tf.serving import client, signatures

WARMUP_FILE = os.path.join("assets.extra", "tf_serving_warmup_requests")
MAX_RECORDS = 1000  # TF-Serving's limit
DEFAULT_DEPTHS: tuple[int, ...] = (8,)
DEFAULT_SIZE = 256


def synthetic_image(depth: int, size: int, channels: Sequence[str], seed: int = 0) -> np.ndarray:
    """A synthetic ISLES-like raw image float32 [depth, size, size, len(channels)] in physical units."""
    rng = np.random.default_rng(seed)
    case = synthesis.synthesize_case(rng, size=size, depths=(depth,), with_pwi=isles.PWI in channels)
    maps = dict(case["maps"])
    if isles.PWI in maps:
        maps[isles.PWI] = maps[isles.PWI].max(axis=-1)  # the reader's default "max" summary
    unknown = [name for name in channels if name not in maps]
    if unknown:
        raise ValueError(f"warmup: cannot synthesise channel(s) {', '.join(unknown)}")
    image = np.stack([isles.nifti_to_network(np.asarray(maps[name], np.float32)) for name in channels], axis=-1)
    return image.astype(np.float32)


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
