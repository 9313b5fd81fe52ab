r"""Seconds per slab of the raw-4D perfusion maps (`strokenet_tf.perfusion.deconvolution.perfusion_maps`).

Usage:
    python -m strokenet_tf.benchmarks.perfusion                       # 256 x 256 x {2, 8, 16, 22}, 45 frames
    python -m strokenet_tf.benchmarks.perfusion --depths=16 --repeats=5 --smoothing_sigma_voxels=0

Each slab is a synthetic head (skull ring, brain ellipse, arteries and a sinus) whose tissue curves come from
`perfusion.tracer` (a pool of parameter sets spread over the voxels, so building it is quick). The maps run in
a tf.function with unknown shapes, as in the SavedModel; the first call (tracing) is reported apart, then the
median and fastest of --repeats calls, and the median process CPU time (all threads: on shared cores the
wall time mostly measures the neighbours). Also times `tracer.tissue_curves` on 500k voxels x 49 frames.
Timings are printed, never asserted.
"""

from __future__ import annotations

import statistics
import time
from typing import Sequence

import numpy as np
import tensorflow as tf
from absl import flags

from strokenet_tf import cli
from strokenet_tf.benchmarks import machine
from strokenet_tf.perfusion import deconvolution, tracer

FLAGS = flags.FLAGS
TOOL = "strokenet_tf.benchmarks.perfusion"


def define_flags(flag_values: flags.FlagValues = FLAGS) -> None:
    defined = {"flag_values": flag_values}
    flags.DEFINE_list("depths", ["2", "8", "16", "22"], "Slab depths (slices) to time.", **defined)
    flags.DEFINE_integer("frames", 45, "Frames per series (1 s apart).", lower_bound=20, **defined)
    flags.DEFINE_integer("size", 256, "Height and width of a slice.", lower_bound=32, **defined)
    flags.DEFINE_integer("repeats", 3, "Timed calls per depth after the first.", lower_bound=1, **defined)
    flags.DEFINE_float("smoothing_sigma_voxels", deconvolution.SMOOTHING_SIGMA_VOXELS,
                       "In-plane smoothing of the tissue curves.", lower_bound=0.0, **defined)


def synthetic_slab(depth: int, size: int = 256, frames: int = 45, seed: int = 0) -> np.ndarray:
    """float32 [depth, size, size, frames] in HU: air, skull, brain with tracer curves, arteries, a sinus."""
    rng = np.random.default_rng(seed)
    times = np.arange(frames, dtype=np.float64)
    aif = tracer.gamma_variate(times, 6.0, 350.0, 3.0, 1.4)
    pool = tracer.tissue_curves(aif, 1.0, rng.uniform(10, 70, 4096), rng.uniform(2, 10, 4096),
                                rng.uniform(0, 4, 4096), rng.uniform(0.6, 3, 4096))
    h, w = np.meshgrid(np.arange(size), np.arange(size), indexing="ij")
    radius = np.hypot((h - size / 2) / (0.45 * size), (w - size / 2) / (0.38 * size))
    series = np.full((depth, size, size, frames), -1000.0, np.float32)
    series[:, radius < 1.0] = 1200.0
    brain = radius < 0.93
    series[:, brain] = 35.0 + pool[rng.integers(0, pool.shape[0], (depth, int(brain.sum())))]
    series[:, size // 2 - 20: size // 2 - 17, size // 2 - 3: size // 2] = 35.0 + aif
    series[:, int(0.1 * size): int(0.1 * size) + 3, size // 2 - 2: size // 2 + 1] = 35.0 + tracer.transport(
        aif, 1.0, 4.0, 2.5)[0]
    series += rng.normal(0.0, 5.0, series.shape).astype(np.float32)
    return series


def time_slab(depth: int, size: int, frames: int, repeats: int, smoothing_sigma_voxels: float) -> dict:
    """Tracing and steady-state seconds of perfusion_maps on one synthetic slab."""
    series = tf.constant(synthetic_slab(depth, size, frames))
    spec = [tf.TensorSpec([None, None, None, None], tf.float32)]
    maps = tf.function(lambda s: deconvolution.perfusion_maps(s, 1.0, smoothing_sigma_voxels=smoothing_sigma_voxels),
                       input_signature=spec)
    start = time.perf_counter()
    result = maps(series)
    first = time.perf_counter() - start
    seconds, cpu_seconds = [], []
    for _ in range(repeats):
        start, cpu = time.perf_counter(), time.process_time()
        maps(series)["cbf"].numpy()
        seconds.append(time.perf_counter() - start)
        cpu_seconds.append(time.process_time() - cpu)
    return {"depth": depth, "first_s": first, "median_s": statistics.median(seconds), "fastest_s": min(seconds),
            "cpu_s": statistics.median(cpu_seconds),
            "brain_voxels": int(result["brain_mask"].numpy().sum()), "aif_found": bool(result["aif_found"])}


def time_tracer(voxels: int = 500_000, frames: int = 49) -> float:
    rng = np.random.default_rng(0)
    aif = tracer.gamma_variate(np.arange(frames, dtype=np.float64), 6.0, 350.0, 3.0, 1.4)
    start = time.perf_counter()
    tracer.tissue_curves(aif, 1.0, rng.uniform(10, 70, voxels), rng.uniform(2, 10, voxels),
                         rng.uniform(0, 4, voxels), rng.uniform(0.6, 3, voxels))
    return time.perf_counter() - start


def main(argv: Sequence[str]) -> None:
    del argv
    try:
        depths = [int(d) for d in FLAGS.depths]
    except ValueError:
        raise SystemExit(f"{TOOL}: --depths must be integers, got {','.join(FLAGS.depths)}") from None
    if not depths or min(depths) < 1:
        raise SystemExit(f"{TOOL}: --depths must be >= 1, got {','.join(FLAGS.depths)}")
    print(f"{TOOL}: {machine.short_cpu_name(machine.cpu_peak())}, load {machine.environment()['load_average_1min']}")
    for depth in depths:
        row = time_slab(depth, FLAGS.size, FLAGS.frames, FLAGS.repeats, FLAGS.smoothing_sigma_voxels)
        print(f"  {FLAGS.size}x{FLAGS.size}x{depth:<3d} x {FLAGS.frames} frames: median {row['median_s']:.2f} s, "
              f"fastest {row['fastest_s']:.2f} s, CPU {row['cpu_s']:.2f} s, first call {row['first_s']:.2f} s, "
              f"{row['brain_voxels']} brain voxels, AIF found {row['aif_found']}")
    cpu = time.process_time()
    wall = time_tracer()
    print(f"  tracer.tissue_curves 500k voxels x 49 frames: {wall:.2f} s, CPU {time.process_time() - cpu:.2f} s")


if __name__ == "__main__":
    cli.run(main, define_flags)
