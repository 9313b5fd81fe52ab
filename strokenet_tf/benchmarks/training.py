"""Training-step speed at each curriculum stage, beside the input pipeline's rate for the same stage.

For every stage of a curriculum (read from an `experiments/*.flags` file), with the run's batch size:

    step       steps/s and voxels/s of `training.loop.TrainStep` on batches already in memory (pure compute)
    input      batches/s of that stage's `training.loop.epoch_dataset` alone (`benchmarks.pipeline.time_dataset`)
    fed        steps/s when the step is fed by the pipeline as in training (both share the cores)

The input is the bottleneck when `input` batches/s is below `step` steps/s, or `fed` is more than
`FED_SLOWDOWN_TOLERANCE` below `step` (on a few CPU cores augmentation and the step compete for the same cores).
One `TrainStep` serves all stages (its signature has dynamic shapes), so it is traced once; that one-off cost is
reported as `trace_s`.
"""

from __future__ import annotations

import dataclasses
import itertools
import os
import tempfile
import time
from typing import Sequence

import keras
import numpy as np
import tensorflow as tf

from strokenet_tf import config as config_lib
from strokenet_tf.benchmarks import pipeline as pipeline_benchmark
from strokenet_tf.model import strokenet
from strokenet_tf.training import distribute, loop


FED_SLOWDOWN_TOLERANCE = 0.2
"""Fed steps this much slower than steps on batches in memory count as input-bound (the two share the cores)."""


def config_from_flagfile(path: str, data_dir: str, mixed_precision: bool = False) -> config_lib.TrainConfig:
    """The TrainConfig of an experiment file, read exactly as `strokenet_tf.train --flagfile=PATH` reads it (the
    trainer's flags and defaults), with `data_dir`, a throw-away model_dir and `mixed_precision`."""
    from strokenet_tf import train  # the one reading of an experiment file (its flag definitions)

    config = train.config_from_args([f"--flagfile={path}", f"--data_dir={data_dir}",
                                     f"--model_dir={os.path.join(tempfile.gettempdir(), 'strokenet_benchmark_unused')}"])
    return dataclasses.replace(config, mixed_precision=mixed_precision).validate()


def _voxels(images) -> int:
    return int(np.prod(images.shape[:4]))


def benchmark_training(
    config: config_lib.TrainConfig,
    train_cases: Sequence,
    steps: int = 3,
    input_batches: int = 8,
    stages: Sequence[str] | None = None,
) -> dict:
    """Times the train step, the input pipeline and the two together at every curriculum stage.

    Args:
        config: the run (model, batch size, curriculum, optimizer, mixed precision).
        train_cases: `preprocess.PreparedCase`s the pipeline draws patches from.
        steps: timed steps per stage (after one warm-up step); input_batches: timed pipeline batches.
        stages: names of the stages to time (default: all).

    Returns:
        JSON-ready dict with one row per stage.
    """
    previous_policy = keras.mixed_precision.global_policy().name
    keras.mixed_precision.set_global_policy("mixed_float16" if config.mixed_precision else "float32")
    try:
        strategy = distribute.make_strategy("default")
        keras.utils.set_random_seed(config.seed)
        model = strokenet.build_strokenet(config.model)
        optimizer = loop.make_optimizer(config)
        optimizer.build(model.trainable_variables)
        step_fn = loop.TrainStep(strategy, model, optimizer, config.batch_size, config.mixed_precision)
        rows, trace_s = [], None
        for stage in config.curriculum.stages:
            if stages and stage.name not in stages:
                continue
            dataset, _ = loop.epoch_dataset(train_cases, config, stage, epoch=0)
            distributed = strategy.experimental_distribute_dataset(dataset)
            step_fn.set_element_spec(distributed.element_spec)
            batches = list(itertools.islice(iter(distributed), steps + 1))

            def run(images, labels):
                return float(step_fn(images, labels, stage.gamma, stage.alpha, stage.dice_weight))

            start = time.perf_counter()
            run(*batches[0])
            first_s = time.perf_counter() - start
            if trace_s is None:
                trace_s = first_s
            seconds = []
            for images, labels in batches[1:]:
                start = time.perf_counter()
                run(images, labels)
                seconds.append(time.perf_counter() - start)
            step_s = float(np.median(seconds))
            voxels = float(np.median([_voxels(images) for images, _ in batches[1:]]))

            input_rate = pipeline_benchmark.time_dataset(dataset, input_batches, config.pipeline.patches_per_case)
            fed_iterator = iter(distributed)
            run(*next(fed_iterator))  # the pipeline's first batch and warm caches, not timed
            start = time.perf_counter()
            for images, labels in itertools.islice(fed_iterator, steps):
                run(images, labels)
            fed_steps_per_s = steps / (time.perf_counter() - start)
            patch = "full" if stage.patch_size is None else "x".join(str(s) for s in stage.patch_size)
            rows.append({
                "stage": stage.name,
                "augment": stage.augment,
                "patch": patch,
                "batch_size": config.batch_size,
                "image_shape": [int(d) for d in batches[1][0].shape],
                "first_step_s": first_s,
                "step_s": step_s,
                "steps_per_s": 1.0 / step_s,
                "mvoxels_per_s": voxels / step_s / 1e6,
                "input_batches_per_s": input_rate["batches_per_s"],
                "input_mvoxels_per_s": input_rate["mvoxels_per_s"],
                "fed_steps_per_s": fed_steps_per_s,
                "fed_slowdown": 1.0 - fed_steps_per_s * step_s,
                "input_bound": bool(input_rate["batches_per_s"] < 1.0 / step_s
                                    or fed_steps_per_s * step_s < 1.0 - FED_SLOWDOWN_TOLERANCE),
            })
    finally:
        keras.mixed_precision.set_global_policy(previous_policy)
    return {
        "device": "GPU" if tf.config.list_physical_devices("GPU") else "CPU",
        "mixed_precision": config.mixed_precision,
        "batch_size": config.batch_size,
        "optimizer": config.optimizer,
        "trace_s": trace_s,
        "step_traces": step_fn.trace_count,
        "num_train_cases": len(train_cases),
        "steps": steps,
        "rows": rows,
    }


def format_training(results: dict) -> str:
    """Table of `benchmark_training` rows."""
    lines = [
        f"{'stage':<12}{'aug':>4}{'patch':>12}{'steps/s':>9}{'Mvoxel/s':>10}{'input batch/s':>15}"
        f"{'fed steps/s':>13}{'slowdown':>10}{'input-bound':>13}",
    ]
    for row in results["rows"]:
        lines.append(
            f"{row['stage']:<12}{row['augment']:>4}{row['patch']:>12}{row['steps_per_s']:>9.2f}"
            f"{row['mvoxels_per_s']:>10.2f}{row['input_batches_per_s']:>15.2f}{row['fed_steps_per_s']:>13.2f}"
            f"{100 * row['fed_slowdown']:>9.0f}%"
            f"{'yes' if row['input_bound'] else 'no':>13}"
        )
    lines.append(f"batch {results['batch_size']}, {results['optimizer']}, mixed precision "
                 f"{results['mixed_precision']}; one trace of the train step ({results['step_traces']} in all, "
                 f"first step {results['trace_s'] or 0:.1f} s)")
    return "\n".join(lines)
