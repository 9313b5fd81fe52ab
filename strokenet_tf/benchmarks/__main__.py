r"""Runs the StrokeNet benchmarks and writes one JSON file to compare between commits.

Usage:
    python -m strokenet_tf.benchmarks --model demo_runs/fold0 --data_dir demo_data --output benchmarks.json
    python -m strokenet_tf.benchmarks --quick          # < 1 min: 16-slice inference only

Prints, and records in --output:
- the machine: CPU model, the derivation of its theoretical fp32 peak, a measured matmul rate, the GPU if any;
- inference (`benchmarks.inference`): seconds per 256 x 256 slab of 2, 8, 16 and 22 slices for the Keras model,
  the tf.function (with and without XLA), the exported SavedModel and the network alone, with counted FLOPs,
  GFLOP/s and the fraction of peak; peak resident memory per slab size in fresh subprocesses;
- training (`benchmarks.training`): steps/s and voxels/s of the train step at every curriculum stage of
  --experiment, beside the input pipeline's batches/s;
- the issue's targets, each with the measured value (never asserted: timings belong here, not in tests).
"""

from __future__ import annotations

import datetime
import json
import os
import subprocess
from typing import Sequence

from absl import flags, logging

from strokenet_tf import cli, curriculum, inference
from strokenet_tf import config as config_lib
from strokenet_tf.benchmarks import inference as inference_benchmark
from strokenet_tf.benchmarks import machine
from strokenet_tf.benchmarks import training as training_benchmark
from strokenet_tf.data import folds, isles
from strokenet_tf.training import loop

FLAGS = flags.FLAGS
TOOL = "strokenet_tf.benchmarks"
PARTS = ("inference", "memory", "training")
TARGETS = {
    "cpu_seconds_16_slices": 0.5,
    "cpu_seconds_16_slices_fastest": 0.5,
    "cpu_fraction_of_peak": 0.5,
    "cpu_fraction_of_peak_fastest": 0.5,
    "peak_rss_mib_22_slices": 2048.0,
    "gpu_seconds_16_slices": 0.05,
}


class BenchmarkError(ValueError):
    """Flags the benchmarks cannot run with; the message is one line naming the flag."""


def define_flags(flag_values: flags.FlagValues = FLAGS) -> None:
    """Defines the CLI flags (only when run as a program, so importing this module defines none)."""
    defined = dict(flag_values=flag_values)
    cli.define_shared(flag_values, "model", "data_dir", "experiment", "output",
                      help={"model": "Training run (or .keras file) to time; default: an untrained default network "
                                     "(same cost).",
                            "data_dir": "Labelled cases for the training benchmark (ISLES layout).",
                            "experiment": "Training flagfile whose curriculum, batch size and optimizer the training "
                                          "benchmark uses.",
                            "output": "Write the results to this JSON file."},
                      defaults={"data_dir": "demo_data"})
    flags.DEFINE_list("parts", list(PARTS), f"Which benchmarks to run, of {', '.join(PARTS)}.", **defined)
    flags.DEFINE_list("depths", [str(d) for d in inference_benchmark.DEFAULT_DEPTHS], "Slab depths (slices).",
                      **defined)
    flags.DEFINE_integer("size", 256, "In-plane slab size.", lower_bound=16, **defined)
    flags.DEFINE_list("variants", None, "Inference variants (default: all for the device): "
                      f"{', '.join(inference_benchmark.GPU_VARIANTS)}.", **defined)
    flags.DEFINE_integer("warmup", 2, "Untimed calls per inference measurement (the first is reported).",
                         lower_bound=1, **defined)
    flags.DEFINE_integer("repeats", 7, "Timed calls per inference measurement (median reported).", lower_bound=1,
                         **defined)
    flags.DEFINE_integer("train_steps", 3, "Timed train steps per curriculum stage.", lower_bound=1, **defined)
    flags.DEFINE_integer("input_batches", 8, "Timed pipeline batches per curriculum stage.", lower_bound=1,
                         **defined)
    flags.DEFINE_list("stages", None, "Curriculum stage names to time (default: all).", **defined)
    flags.DEFINE_float("cpu_ghz", None, "Clock for the CPU peak (default: cpufreq maximum or /proc/cpuinfo).",
                       **defined)
    flags.DEFINE_boolean("quick", False, "Only the 16-slice function and network rows (under a minute).",
                         **defined)
    cli.define_old_names(flag_values, TOOL, {"run_dir": "model"})


def _git_commit() -> str | None:
    try:
        completed = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                   timeout=10, cwd=os.path.dirname(os.path.abspath(__file__)))
        return completed.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def evaluate_targets(results: dict) -> dict:
    """Each target of the issue with the value measured here (None when that part did not run)."""
    rows = results.get("inference", {}).get("rows", [])
    device = results.get("inference", {}).get("device")

    def row(variant):
        return next((r for r in rows if r["variant"] == variant and r["depth"] == inference_benchmark.TARGET_DEPTH),
                    None)

    function, network = row("function"), row("network")
    memory = {m["depth"]: m for m in results.get("memory", []) if "error" not in m}
    measured = {
        "cpu_seconds_16_slices": function["median_s"] if function and device == "CPU" else None,
        "cpu_seconds_16_slices_fastest": function["min_s"] if function and device == "CPU" else None,
        "cpu_fraction_of_peak": network["fraction_of_peak"] if network and device == "CPU" else None,
        "cpu_fraction_of_peak_fastest": network["best_fraction_of_peak"] if network and device == "CPU" else None,
        "peak_rss_mib_22_slices": memory[22]["peak_mib"] if 22 in memory else None,
        "gpu_seconds_16_slices": min((r["median_s"] for r in (row("function"), row("function_fp16")) if r),
                                     default=None) if device == "GPU" else None,
    }
    targets = {}
    for name, limit in TARGETS.items():
        value = measured[name]
        met = None if value is None else (value >= limit if "fraction" in name else value <= limit)
        targets[name] = {"target": limit, "measured": value, "met": met}
    return targets


def format_targets(targets: dict) -> str:
    lines = [f"{'target (median call; fastest call)':<34}{'goal':>10}{'measured':>12}{'met':>6}"]
    for name, entry in targets.items():
        goal = f">= {entry['target']:g}" if "fraction" in name else f"<= {entry['target']:g}"
        value = "n/a" if entry["measured"] is None else f"{entry['measured']:.3g}"
        met = "n/a" if entry["met"] is None else ("yes" if entry["met"] else "no")
        lines.append(f"{name:<34}{goal:>10}{value:>12}{met:>6}")
    return "\n".join(lines)


def run(flag_values: flags.FlagValues) -> dict:
    """Runs the selected benchmarks; returns the JSON-ready results."""
    parts = set(flag_values.parts)
    unknown = sorted(parts - set(PARTS))
    if unknown:
        raise BenchmarkError(f"--parts: unknown {', '.join(unknown)}; known: {', '.join(PARTS)}")
    try:
        depths = [int(d) for d in flag_values.depths]
    except ValueError:
        raise BenchmarkError(f"--depths must be integers, got {','.join(flag_values.depths)}") from None
    variants = flag_values.variants
    if flag_values.quick:
        parts, depths, variants = {"inference"}, [inference_benchmark.TARGET_DEPTH], ["function", "network"]
    peak = machine.cpu_peak(flag_values.cpu_ghz)
    results: dict = {
        "commit": _git_commit(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": {"cpu": peak, "gpu": machine.gpu_description(), "environment": machine.environment()},
    }
    print(f"CPU peak: {peak['derivation']}")
    if not flag_values.quick:
        matmul = results["machine"]["matmul_gflops"] = machine.matmul_gflops()
        print(f"measured 2048x2048 fp32 matmul: {matmul:.1f} GFLOP/s ({100 * matmul / peak['peak_gflops']:.0f}% of "
              f"the peak above)")
        if matmul > peak["peak_gflops"]:
            implied = matmul / (peak["peak_gflops"] / peak["clock_ghz"])
            results["machine"]["implied_clock_ghz"] = implied
            print(f"  the matmul beats the derived peak: the cores ran at >= {implied:.2f} GHz (turbo), so that peak is "
                  f"a lower bound; rerun with --cpu_ghz=<max turbo> for the data-sheet peak")
    if results["machine"]["gpu"]:
        print(f"GPU: {results['machine']['gpu']}")

    if "inference" in parts:
        segmenter, model_config, source = inference_benchmark.load_segmenter(flag_values.model)
        gpu = bool(results["machine"]["gpu"])
        try:
            inference_results = inference_benchmark.benchmark_inference(
                segmenter, model_config, depths, flag_values.size, variants, flag_values.warmup, flag_values.repeats,
                peak_gflops=None if gpu else peak["peak_gflops"],
            )
        except ValueError as error:
            raise BenchmarkError(f"--variants: {error}") from None
        inference_results["weights"] = source
        results["inference"] = inference_results
    if "memory" in parts:
        results["memory"] = [inference_benchmark.measure_peak_rss(flag_values.model, depth, flag_values.size)
                             for depth in depths]
    if "inference" in parts:
        print("\nInference (seconds per slab; GFLOP counted for the network at the padded shape)")
        print(inference_benchmark.format_inference({**results["inference"], "memory": results.get("memory")}))

    if "training" in parts:
        config = training_benchmark.config_from_flagfile(flag_values.experiment, flag_values.data_dir,
                                                         mixed_precision=bool(results["machine"]["gpu"]))
        prepared, _ = loop.load_fold(config)  # the experiment's training fold
        results["training"] = training_benchmark.benchmark_training(
            config, prepared, flag_values.train_steps, flag_values.input_batches, flag_values.stages)
        results["training"]["experiment"] = flag_values.experiment
        print(f"\nTraining ({flag_values.experiment}, {len(prepared)} cases of {flag_values.data_dir})")
        print(training_benchmark.format_training(results["training"]))

    results["machine"]["load_average_1min_at_end"] = machine.environment()["load_average_1min"]
    print(f"\n1-minute load average: {results['machine']['environment']['load_average_1min']:.2f} at the start, "
          f"{results['machine']['load_average_1min_at_end']:.2f} at the end (> {peak['cores']} means shared cores)")
    results["targets"] = evaluate_targets(results)
    print("\nTargets (measured, not asserted)")
    print(format_targets(results["targets"]))
    return results


def main(argv: Sequence[str]) -> None:
    cli.reject_arguments(TOOL, argv)
    logging.set_verbosity(logging.WARNING)  # the SavedModel export logs every file it writes
    try:
        results = run(FLAGS)
        if FLAGS.output:
            with open(FLAGS.output, "w", encoding="utf-8") as stream:
                json.dump(results, stream, indent=2, default=str)
            print(f"wrote {FLAGS.output}")
    except (BenchmarkError, inference.ModelLoadError, isles.IslesFormatError, config_lib.ConfigError,
            curriculum.CurriculumError, folds.FoldError, loop.TrainingError) as error:
        cli.fail(TOOL, error)
    except OSError as error:
        cli.fail(TOOL, cli.os_error_line(error))


if __name__ == "__main__":
    cli.run(main, define_flags)
