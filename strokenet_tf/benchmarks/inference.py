"""Inference speed, compute efficiency and peak memory of StrokeNet on ISLES-sized slabs.

For each slab size (default 256 x 256 with 2, 8, 16 and 22 slices, 5 channels) and each way of running the
model, the median wall time of `repeats` calls after `warmup` calls (the first call, with its tracing or XLA
compilation, is reported apart):

    keras         `Segmenter._segment` run eagerly: the Keras model's `__call__` and the preprocessing op by op
    function      `Segmenter.segment`: the tf.function that predict and the SavedModel export use
    function_xla  preprocessing in a tf.function, the network in a `jit_compile=True` tf.function (the whole
                  `segment` cannot be compiled: the brain-mask percentiles have data-dependent shapes)
    saved_model   the `serving_default` signature of the exported SavedModel, loaded back
    network       the network alone (normalised, padded input) in a tf.function: what the FLOPs count covers
    network_xla   the same with `jit_compile=True`
    *_fp16        on a GPU only: the same weights under the `mixed_float16` policy

Efficiency is FLOPs (counted by `model.flops.count_flops` at the padded input shape; preprocessing not
counted) over the median time, as GFLOP/s and as a fraction of `machine.cpu_peak` (CPU); the same over the
fastest call is reported too, since on shared cores the median mostly measures the neighbours. Peak resident memory
is measured per slab size in a fresh subprocess (`ru_maxrss`), so sizes do not contaminate each other.

Run through `python -m strokenet_tf.benchmarks` (which also times training); the functions here are the library.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from typing import Callable, Sequence

import keras
import numpy as np
import tensorflow as tf

from strokenet_tf import inference
from strokenet_tf.benchmarks import machine
from strokenet_tf.data import isles, preprocess, synthesis
from strokenet_tf.model import flops, postprocess, strokenet
from strokenet_tf.training import checkpointing

CPU_VARIANTS = ("keras", "function", "function_xla", "saved_model", "network", "network_xla")
GPU_VARIANTS = CPU_VARIANTS + ("function_fp16", "network_fp16", "network_xla_fp16")
DEFAULT_DEPTHS = (2, 8, 16, 22)
TARGET_DEPTH = 16
"""The slab size the issue's targets refer to: 256 x 256 x 16 x 5."""


def load_segmenter(run_dir: str | None) -> tuple[inference.Segmenter, strokenet.ModelConfig, str]:
    """The Segmenter of a training run, or of an untrained default network when `run_dir` is None.

    Returns:
        (segmenter, its architecture, a description of where the weights came from).
    """
    if run_dir:
        segmenter = inference.Segmenter.from_run(run_dir)
        return segmenter, segmenter.trained.model_config, segmenter.trained.source
    config = strokenet.ModelConfig()
    model = strokenet.build_strokenet(config)
    return inference.Segmenter(model, isles.DEFAULT_CHANNELS, config.required_multiples), config, "untrained"


def synthetic_slab(depth: int, size: int, channels: Sequence[str], seed: int = 0) -> np.ndarray:
    """A raw slab float32 [depth, size, size, channels] in physical units (`data.synthesize`, no 4D series)."""
    case = synthesis.synthesize_case(np.random.default_rng(seed), size=size, depths=(depth,), with_pwi=False)
    maps = [isles.nifti_to_network(np.asarray(case["maps"][name], np.float32)) for name in channels]
    return np.stack(maps, axis=-1)


def time_calls(function: Callable[[], object], warmup: int, repeats: int) -> dict:
    """Wall time of `function()` (which must block until its result exists): first call, then the median."""
    start = time.perf_counter()
    function()
    first_s = time.perf_counter() - start
    for _ in range(max(warmup - 1, 0)):
        function()
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        seconds.append(time.perf_counter() - start)
    return {"first_s": first_s, "median_s": float(np.median(seconds)), "min_s": float(np.min(seconds)),
            "max_s": float(np.max(seconds)), "repeats": repeats}


def export_saved_model(segmenter: inference.Segmenter, directory: str) -> str:
    """Exports `segmenter.segment` as a SavedModel `serving_default` signature; returns how it was exported.

    Uses the export module's archive (`serving.exporting.build_export_archive`, what `strokenet_tf.export`
    writes) when it exists, else a Keras `ExportArchive` of the same `serving_default` signature.
    """
    try:
        from strokenet_tf.serving import exporting  # the export module; may be absent in older checkouts
        archive, via = exporting.build_export_archive(segmenter), "serving.exporting.build_export_archive"
    except (ImportError, AttributeError):
        archive, via = keras.export.ExportArchive(), "keras.export.ExportArchive (no serving.exporting)"
        archive.track(segmenter.model)
        archive.add_endpoint("serving_default", segmenter.segment,
                             input_signature=[tf.TensorSpec([None, None, None, None, len(segmenter.channels)],
                                                            tf.float32, name=inference.INPUT_KEY)])
    with open(os.devnull, "w") as quiet, contextlib.redirect_stdout(quiet):  # ExportArchive prints a summary
        archive.write_out(directory)
    return via


def mixed_precision_model(model: keras.Model, config: strokenet.ModelConfig) -> keras.Model:
    """The same architecture and weights under the `mixed_float16` policy (float16 compute, float32 logits)."""
    half = strokenet.StrokeNet(config, dtype="mixed_float16")
    half.set_weights(model.get_weights())
    return half


class Runners:
    """One callable per variant (see the module docstring); each takes a raw image [1, d, h, w, c] tensor."""

    def __init__(self, segmenter: inference.Segmenter, config: strokenet.ModelConfig, saved_model_dir: str | None,
                 gpu: bool):
        self.segmenter = segmenter
        model, multiples, channels = segmenter.model, segmenter.multiples, segmenter.channels

        def prepare(image):
            padded, _ = preprocess.pad_to_multiple(preprocess.normalize_image(image, channels), multiples)
            return padded

        spec = tf.TensorSpec([None, None, None, None, len(channels)], tf.float32)
        self.prepare = tf.function(prepare, input_signature=[spec])
        self._network = tf.function(lambda x: model(x, training=False), input_signature=[spec])
        self._network_xla = tf.function(lambda x: model(x, training=False), jit_compile=True)
        self.runners: dict[str, Callable] = {
            "keras": lambda image: segmenter._segment(image)[inference.MASK_KEY].numpy(),
            "function": lambda image: segmenter.segment(image)[inference.MASK_KEY].numpy(),
            "function_xla": lambda image: self._segment_with(self._network_xla, image),
            "network": lambda padded: self._network(padded).numpy(),
            "network_xla": lambda padded: self._network_xla(padded).numpy(),
        }
        self.export_via = None
        if saved_model_dir:
            self.export_via = export_saved_model(segmenter, saved_model_dir)
            loaded = tf.saved_model.load(saved_model_dir)
            signature = loaded.signatures["serving_default"]
            self._loaded = loaded
            self.runners["saved_model"] = lambda image: signature(**{inference.INPUT_KEY: image})[
                inference.MASK_KEY].numpy()
        if gpu:
            half = mixed_precision_model(model, config)
            half_segmenter = inference.Segmenter(half, channels, multiples, segmenter.threshold)
            half_network = tf.function(lambda x: half(x, training=False), input_signature=[spec])
            half_xla = tf.function(lambda x: half(x, training=False), jit_compile=True)
            self.runners["function_fp16"] = lambda image: half_segmenter.segment(image)[inference.MASK_KEY].numpy()
            self.runners["network_fp16"] = lambda padded: half_network(padded).numpy()
            self.runners["network_xla_fp16"] = lambda padded: half_xla(padded).numpy()

    def _segment_with(self, network, image):
        spatial = tf.shape(image)[1:4]
        probabilities = postprocess.probabilities_from_logits(network(self.prepare(image)), spatial)
        return postprocess.lesion_mask(probabilities, self.segmenter.threshold).numpy()


def benchmark_inference(
    segmenter: inference.Segmenter,
    config: strokenet.ModelConfig,
    depths: Sequence[int] = DEFAULT_DEPTHS,
    size: int = 256,
    variants: Sequence[str] | None = None,
    warmup: int = 2,
    repeats: int = 5,
    peak_gflops: float | None = None,
    work_dir: str | None = None,
) -> dict:
    """Times every variant on one synthetic slab per depth; returns a JSON-ready dict (see the module docstring).

    Args:
        segmenter: what to time.
        config: its architecture (for the GPU's mixed-precision copy).
        depths: slice counts; every slab is `size` x `size` in-plane.
        variants: subset of CPU_VARIANTS / GPU_VARIANTS (default: all that apply to the device).
        warmup, repeats: calls before timing, timed calls (the median is reported).
        peak_gflops: the device's theoretical peak, for the efficiency fraction (None: not reported).
        work_dir: where the SavedModel is written (default: a temporary folder).
    """
    gpu = bool(tf.config.list_physical_devices("GPU"))
    available = GPU_VARIANTS if gpu else CPU_VARIANTS
    requested = list(variants or available)
    unknown = sorted(set(requested) - set(GPU_VARIANTS))
    if unknown:
        raise ValueError(f"unknown inference variant(s) {', '.join(unknown)}; known: {', '.join(GPU_VARIANTS)}")
    variants = [v for v in requested if v in available]
    skipped = {v: "needs a GPU" for v in requested if v not in available}
    channels = segmenter.channels
    with tempfile.TemporaryDirectory(prefix="strokenet_bench_") as temporary:
        export_dir = os.path.join(work_dir or temporary, "saved_model")
        runners = Runners(segmenter, config, export_dir if "saved_model" in variants else None, gpu)
        traces_before = segmenter.segment.experimental_get_tracing_count()
        rows = []
        for depth in depths:
            raw = tf.constant(synthetic_slab(depth, size, channels, seed=depth)[np.newaxis])
            padded = runners.prepare(raw)
            flop_count = flops.count_flops(segmenter.model, tuple(padded.shape))
            for variant in variants:
                network_only = variant.startswith("network")
                argument = padded if network_only else raw
                timing = time_calls(lambda: runners.runners[variant](argument), warmup, repeats)
                gflops = flop_count / timing["median_s"] / 1e9
                best_gflops = flop_count / timing["min_s"] / 1e9
                rows.append({
                    "variant": variant,
                    "depth": int(depth), "height": size, "width": size, "channels": len(channels),
                    "padded_shape": [int(d) for d in padded.shape],
                    "flops": flop_count,
                    **timing,
                    "gflops_per_s": gflops,
                    "fraction_of_peak": gflops / peak_gflops if peak_gflops else None,
                    "best_gflops_per_s": best_gflops,
                    "best_fraction_of_peak": best_gflops / peak_gflops if peak_gflops else None,
                })
    return {
        "device": "GPU" if gpu else "CPU",
        "variants": variants,
        "skipped_variants": skipped,
        "export_via": runners.export_via,
        "segment_traces": int(segmenter.segment.experimental_get_tracing_count() - traces_before),
        "warmup": warmup,
        "repeats": repeats,
        "rows": rows,
    }


def measure_peak_rss(run_dir: str | None, depth: int, size: int, calls: int = 2, timeout_s: float = 600) -> dict:
    """Peak resident memory of a fresh process that loads the model and segments one slab `calls` times.

    The slab is synthesised here and handed over as a .npy file: synthesis needs far more memory than the slab,
    and `ru_maxrss` is a high-water mark.

    Returns:
        {"depth", "baseline_mib" (after loading TensorFlow, the model and the slab), "peak_mib", "segment_mib"
        (the difference)}, or {"depth", "error"} when the subprocess failed.
    """
    channels = load_run_channels(run_dir)
    with tempfile.TemporaryDirectory(prefix="strokenet_rss_") as temporary:
        image_path = os.path.join(temporary, "slab.npy")
        np.save(image_path, synthetic_slab(depth, size, channels, seed=depth))
        command = [sys.executable, "-m", "strokenet_tf.benchmarks.inference", image_path, str(calls), run_dir or ""]
        environment = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
        try:
            completed = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s, env=environment)
        except subprocess.TimeoutExpired:
            return {"depth": depth, "error": f"timed out after {timeout_s:.0f} s"}
    lines = [line for line in completed.stdout.splitlines() if line.startswith("{")]
    if completed.returncode != 0 or not lines:
        tail = (completed.stderr.strip().splitlines() or ["no output"])[-1]
        return {"depth": depth, "error": f"exit {completed.returncode}: {tail}"}
    return {"depth": depth, **json.loads(lines[-1])}


def load_run_channels(run_dir: str | None) -> tuple[str, ...]:
    """Channel order of a run (config.json), or the default order for None / a bare .keras file."""
    config_path = os.path.join(run_dir or "", checkpointing.CONFIG_FILE)
    if run_dir and os.path.isfile(config_path):
        with open(config_path, encoding="utf-8") as stream:
            return tuple(json.load(stream).get("channels", isles.DEFAULT_CHANNELS))
    return isles.DEFAULT_CHANNELS


def _memory_child(argv: Sequence[str]) -> None:
    """Subprocess body of `measure_peak_rss`: IMAGE.npy CALLS [RUN_DIR]; prints one JSON line."""
    image_path, calls = argv[0], int(argv[1])
    run_dir = argv[2] if len(argv) > 2 and argv[2] else None
    segmenter, _, _ = load_segmenter(run_dir)
    image = np.load(image_path)
    baseline = machine.peak_rss_mib()
    for _ in range(calls):
        segmenter.predict_image(image)
    peak = max(machine.peak_rss_mib(), baseline)  # the kernel's per-thread RSS counters lag by a few pages
    print(json.dumps({"baseline_mib": baseline, "peak_mib": peak, "segment_mib": peak - baseline}))


def format_inference(results: dict) -> str:
    """Table of `benchmark_inference` rows (seconds per slab, GFLOP/s, % of peak) and the memory rows."""
    lines = [
        f"{'variant':<17}{'slab':>16}{'GFLOP':>8}{'first s':>9}{'median s':>10}{'min s':>8}{'GFLOP/s':>9}"
        f"{'% peak':>8}{'% peak (min s)':>16}",
    ]
    for row in results["rows"]:
        slab = f"{row['depth']}x{row['height']}x{row['width']}x{row['channels']}"
        fraction, best = (row["fraction_of_peak"], row["best_fraction_of_peak"])
        lines.append(
            f"{row['variant']:<17}{slab:>16}{row['flops'] / 1e9:>8.2f}{row['first_s']:>9.2f}{row['median_s']:>10.3f}"
            f"{row['min_s']:>8.3f}{row['gflops_per_s']:>9.1f}{'' if fraction is None else f'{100 * fraction:.0f}%':>8}"
            f"{'' if best is None else f'{100 * best:.0f}%':>16}"
        )
    for variant, why in results.get("skipped_variants", {}).items():
        lines.append(f"{variant:<17} skipped: {why}")
    depths = sorted({row["depth"] for row in results["rows"]})
    lines.append(f"Segmenter.segment traced {results['segment_traces']} time(s) while timing depths {depths}; "
                 f"SavedModel via {results.get('export_via')}")
    memory = results.get("memory") or []
    if memory:
        lines += ["", f"{'slab depth':>10}{'baseline MiB':>14}{'peak RSS MiB':>14}{'segment MiB':>13}"]
        for row in memory:
            if "error" in row:
                lines.append(f"{row['depth']:>10}  error: {row['error']}")
            else:
                lines.append(f"{row['depth']:>10}{row['baseline_mib']:>14.0f}{row['peak_mib']:>14.0f}"
                             f"{row['segment_mib']:>13.0f}")
    return "\n".join(lines)


if __name__ == "__main__":
    _memory_child(sys.argv[1:])
