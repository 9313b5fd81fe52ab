r"""Measures the training input pipeline: what it yields and how fast, per augmentation stage and case store.

Usage:
    python -m strokenet_tf.benchmarks.pipeline --data_dir demo_data [--num_batches 8 \
        --patch_size 16x128x128 --batch_size 2 --output results.json]

Reads the labelled cases under --data_dir (ISLES 2018 layout), normalises them once, prints one batch's
shapes, dtypes and label fraction, then a table of throughput (batches, patches, cases and voxels per second)
for every augmentation stage, and the cost of the two case stores (in-memory tensors vs cache files).
"""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
import time
from typing import Sequence

import numpy as np
import tensorflow as tf
from absl import flags

from strokenet_tf import cli, curriculum
from strokenet_tf.data import augment, isles, pipeline, preprocess

FLAGS = flags.FLAGS
TOOL = "strokenet_tf.benchmarks.pipeline"


def define_flags(flag_values: flags.FlagValues = FLAGS) -> None:
    """Defines the CLI flags (only when run as a program, so importing this module defines none)."""
    defined = dict(flag_values=flag_values)
    defaults = pipeline.PipelineConfig()  # the pipeline's own defaults, except the patch (a larger one to time)
    cli.define_shared(flag_values, "data_dir", "output", help={"output": "Also write the results to this JSON file."})
    flags.DEFINE_string("split", "TRAINING", "Split folder of --data_dir to read (labels are needed).", **defined)
    flags.DEFINE_list("channels", list(isles.DEFAULT_CHANNELS), "Input modalities in network channel order.",
                      **defined)
    flags.DEFINE_integer("num_batches", 8, "Timed batches per stage (after one warm-up batch).", lower_bound=1,
                         **defined)
    flags.DEFINE_string("patch_size", "16x128x128", "Patch DEPTHxHEIGHTxWIDTH (16,128,128 is read too), or 'full' "
                        "for whole slabs.", **defined)
    flags.DEFINE_integer("batch_size", defaults.batch_size, "Patches per batch.", lower_bound=1, **defined)
    flags.DEFINE_integer("patches_per_case", defaults.patches_per_case, "Patches per case and epoch.", **defined)
    flags.DEFINE_float("foreground_fraction", defaults.foreground_fraction, "Fraction of lesion-centred patches.",
                       **defined)
    flags.DEFINE_string("multiples", "x".join(str(n) for n in defaults.multiples), "Spatial multiples "
                        "DEPTHxHEIGHTxWIDTH the model needs (2,16,16 is read too).", **defined)
    flags.DEFINE_list("stages", None, "Augmentation stages to time (default: all).", **defined)
    flags.DEFINE_integer("seed", defaults.seed, "Pipeline seed.", **defined)
    flags.DEFINE_integer("num_parallel_calls", defaults.num_parallel_calls, "Parallel map calls (default "
                         "AUTOTUNE).", **defined)
    flags.DEFINE_string("cache_dir", None, "Folder for the cache-file measurement (default: a temporary folder).",
                        **defined)
    cli.define_old_names(flag_values, TOOL, {"json": "output"})


def _timed(function):
    start = time.perf_counter()
    result = function()
    return result, time.perf_counter() - start


def describe_batches(batches: Sequence[tuple[np.ndarray, np.ndarray]]) -> dict:
    """Shapes and dtypes of the first batch; value range and lesion statistics over all given batches."""
    image, label = batches[0]
    labels = [np.asarray(b[1]) for b in batches]
    per_patch = np.concatenate([lab.reshape(len(lab), -1).max(axis=1) for lab in labels])
    return {
        "image_shape": list(image.shape),
        "image_dtype": str(image.dtype),
        "label_shape": list(label.shape),
        "label_dtype": str(label.dtype),
        "image_min": float(min(np.min(b[0]) for b in batches)),
        "image_max": float(max(np.max(b[0]) for b in batches)),
        "label_values": sorted({float(v) for lab in labels for v in np.unique(lab)}),
        "label_fraction": float(np.mean([lab.mean() for lab in labels])),
        "patches_with_lesion": float(np.mean(per_patch > 0)),
        "described_batches": len(batches),
    }


def time_dataset(dataset: tf.data.Dataset, num_batches: int, patches_per_case: int) -> dict:
    """Throughput of `num_batches` batches of a repeated dataset, after one warm-up batch (reported apart)."""
    iterator = iter(dataset.repeat())
    _, first_s = _timed(lambda: next(iterator))
    patches = voxels = 0
    start = time.perf_counter()
    for _ in range(num_batches):
        image, _ = next(iterator)
        patches += int(image.shape[0])
        voxels += int(np.prod(image.shape[:4]))
    seconds = time.perf_counter() - start
    return {
        "first_batch_s": first_s,
        "seconds": seconds,
        "batches_per_s": num_batches / seconds,
        "patches_per_s": patches / seconds,
        "cases_per_s": patches / patches_per_case / seconds,
        "mvoxels_per_s": voxels / seconds / 1e6,
    }


def time_store(cases: Sequence[preprocess.PreparedCase], cache: str, repeats: int = 3) -> dict:
    """Cost of building a case store and of reading every case out of it (the pipeline's source)."""
    pipeline._STORES.pop(next((k for k in pipeline._STORES if k[0] == cache), None), None)
    store, build_s = _timed(lambda: pipeline.case_store(cases, cache))
    source = tf.data.Dataset.range(store.num_cases).map(store.load, num_parallel_calls=tf.data.AUTOTUNE)
    nbytes = sum(case.image.nbytes + case.label.nbytes for case in cases)
    for _ in source:  # warm-up (traces, page cache)
        pass
    _, read_s = _timed(lambda: [None for _ in source.repeat(repeats)])
    return {
        "kind": store.kind,
        "build_s": build_s,
        "cases_per_s": repeats * store.num_cases / read_s,
        "mb_per_s": repeats * nbytes / read_s / 1e6,
    }


def run_benchmark(
    cases: Sequence[preprocess.PreparedCase],
    config: pipeline.PipelineConfig,
    stages: Sequence[int],
    num_batches: int,
    cache_dir: str,
) -> dict:
    """Describes one batch and times every stage and both case stores; returns a JSON-ready dict."""
    results: dict = {"config": dataclasses.asdict(config), "num_cases": len(cases)}
    described = pipeline.make_training_dataset(cases, config, 0).repeat().take(num_batches)
    results["batch"] = describe_batches([(np.asarray(image), np.asarray(label)) for image, label in described])
    results["stages"] = {}
    for stage in stages:
        dataset = pipeline.make_training_dataset(cases, config, stage)
        results["stages"][str(stage)] = time_dataset(dataset, num_batches, config.patches_per_case)
    results["stores"] = {
        "memory": time_store(cases, pipeline.CACHE_MEMORY),
        "files": time_store(cases, cache_dir),
    }
    file_config = dataclasses.replace(config, cache=cache_dir)
    results["stores"]["files"]["stage_0"] = time_dataset(
        pipeline.make_training_dataset(cases, file_config, 0), num_batches, config.patches_per_case
    )
    results["stores"]["memory"]["stage_0"] = results["stages"].get("0")
    return results


def format_results(results: dict) -> str:
    """Human-readable report of `run_benchmark`'s results."""
    config, batch = results["config"], results["batch"]
    patch = "whole slab" if config["patch_size"] is None else "x".join(map(str, config["patch_size"]))
    lines = [
        f"cases: {results['num_cases']}   load {results.get('load_s', 0.0):.2f} s   "
        f"prepare (normalise) {results.get('prepare_s', 0.0):.2f} s",
        f"patch {patch}, batch {config['batch_size']}, {config['patches_per_case']} patches/case, "
        f"foreground fraction {config['foreground_fraction']}, multiples {tuple(config['multiples'])}",
        f"yields image {tuple(batch['image_shape'])} {batch['image_dtype']} in "
        f"[{batch['image_min']:.2f}, {batch['image_max']:.2f}], label {tuple(batch['label_shape'])} "
        f"{batch['label_dtype']} values {batch['label_values']}",
        f"over {batch['described_batches']} unaugmented batches: lesion voxel fraction "
        f"{batch['label_fraction']:.4f}, patches containing lesion {batch['patches_with_lesion']:.2f}",
        "",
        f"{'stage':>5} {'batches/s':>10} {'patches/s':>10} {'cases/s':>9} {'Mvoxel/s':>9} {'first batch s':>14}",
    ]
    for stage, row in results["stages"].items():
        lines.append(f"{stage:>5} {row['batches_per_s']:>10.2f} {row['patches_per_s']:>10.2f} "
                     f"{row['cases_per_s']:>9.2f} {row['mvoxels_per_s']:>9.2f} {row['first_batch_s']:>14.2f}")
    lines += ["", f"{'store':>7} {'build s':>8} {'read cases/s':>13} {'read MB/s':>10} {'stage-0 batches/s':>18}"]
    for name, row in results["stores"].items():
        stage0 = row.get("stage_0") or {}
        lines.append(f"{name:>7} {row['build_s']:>8.2f} {row['cases_per_s']:>13.1f} {row['mb_per_s']:>10.1f} "
                     f"{stage0.get('batches_per_s', float('nan')):>18.2f}")
    lines.append(f"pipeline default store: {pipeline.PipelineConfig().cache}")
    return "\n".join(lines)


def _triple(text: str, flag: str) -> tuple[int, int, int] | None:
    """DxHxW (or D,H,W) as train's --patch_size reads it; None for 'full'."""
    try:
        return curriculum.parse_patch_size(text, flag)
    except curriculum.CurriculumError as error:
        cli.fail(TOOL, error)


def main(argv: Sequence[str]) -> None:
    cli.reject_arguments(TOOL, argv)
    if not FLAGS.data_dir:
        cli.fail(TOOL, "--data_dir is required (e.g. the output of strokenet_tf.data.synthesize)")
    overrides = {
        "patch_size": _triple(FLAGS.patch_size, "patch_size"),
        "batch_size": FLAGS.batch_size,
        "multiples": _triple(FLAGS.multiples, "multiples"),
        "seed": FLAGS.seed,
        "num_parallel_calls": FLAGS.num_parallel_calls,
        "patches_per_case": FLAGS.patches_per_case,
        "foreground_fraction": FLAGS.foreground_fraction,
    }
    if overrides["multiples"] is None:
        cli.fail(TOOL, f"--multiples={FLAGS.multiples}: expected DEPTHxHEIGHTxWIDTH of positive integers")
    try:
        config = dataclasses.replace(pipeline.PipelineConfig(), **overrides)
        stages = [int(s) for s in FLAGS.stages] if FLAGS.stages else list(range(augment.num_stages()))
        for stage in stages:
            augment.strength_of(stage)
    except ValueError as error:
        cli.fail(TOOL, f"pipeline flags: {error}")
    load_cases = getattr(isles, "load_cases", None)
    if load_cases is None:
        cli.fail(TOOL, "strokenet_tf.data.isles.load_cases is missing: the ISLES reader is not installed here")
    try:
        cases, load_s = _timed(lambda: load_cases(FLAGS.data_dir, channels=FLAGS.channels, split=FLAGS.split,
                                                  require_label=True))
    except isles.IslesFormatError as error:
        cli.fail(TOOL, f"--data_dir={FLAGS.data_dir}: {error}")
    prepared, prepare_s = _timed(lambda: [preprocess.prepare_case(case, FLAGS.channels) for case in cases])
    with tempfile.TemporaryDirectory(prefix="strokenet_cache_") as temporary:
        cache_dir = FLAGS.cache_dir or os.path.join(temporary, "cases")
        results = run_benchmark(prepared, config, stages, FLAGS.num_batches, cache_dir)
    device = "GPU" if tf.config.list_physical_devices("GPU") else "CPU"
    results.update(load_s=load_s, prepare_s=prepare_s, data_dir=FLAGS.data_dir, device=device,
                   cpu_count=os.cpu_count())
    print(format_results(results))
    if FLAGS.output:
        with open(FLAGS.output, "w") as handle:
            json.dump(results, handle, indent=2, default=str)
        print(f"wrote {FLAGS.output}")


if __name__ == "__main__":
    cli.run(main, define_flags)
