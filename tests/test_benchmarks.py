"""Smoke tests of strokenet_tf.benchmarks: structure and consistency of the results, never their timings."""

import json

import numpy as np
import pytest
from absl import flags

from strokenet_tf import inference
from strokenet_tf.benchmarks import __main__ as runner
from strokenet_tf.benchmarks import inference as inference_benchmark
from strokenet_tf.benchmarks import machine
from strokenet_tf.benchmarks import pipeline as pipeline_benchmark
from strokenet_tf.benchmarks import training as training_benchmark
from strokenet_tf.data import isles, preprocess
from strokenet_tf.model import flops, strokenet

from conftest import build_case

ZEN4 = """processor : 0
vendor_id : AuthenticAMD
cpu family : 25
model name : AMD EPYC 9654
cpu MHz : 2400.000
siblings : 2
cpu cores : 2
flags : fpu sse avx fma avx2 avx512f
"""
SKYLAKE = ZEN4.replace("AuthenticAMD", "GenuineIntel").replace("cpu family : 25", "cpu family : 6")


def _tiny_segmenter():
    config = strokenet.tiny_model_config()
    model = strokenet.build_strokenet(config)
    return inference.Segmenter(model, isles.DEFAULT_CHANNELS, config.required_multiples), config


def test_cpu_peak_derivation_per_microarchitecture():
    zen4 = machine.cpu_peak(ghz=2.0, cpuinfo=ZEN4)
    skylake = machine.cpu_peak(ghz=2.0, cpuinfo=SKYLAKE)
    assert (zen4["lanes"], zen4["fma_units"]) == (8, 2)  # AVX-512 split into 256-bit halves
    assert (skylake["lanes"], skylake["fma_units"]) == (16, 2)
    for peak in (zen4, skylake):
        expected = peak["cores"] * peak["lanes"] * peak["fma_units"] * 2 * 2.0
        assert peak["peak_gflops"] == pytest.approx(expected)
        assert f"{expected:.1f} GFLOP/s" in peak["derivation"] and "given" in peak["clock_source"]
    assert machine.fma_datapath("GenuineIntel", 6, {"avx", "avx2", "fma"})[:2] == (8, 2)
    assert machine.fma_datapath("GenuineIntel", 6, {"sse"})[:2] == (4, 1)


def test_cpu_peak_reads_the_clock_from_cpuinfo_without_cpufreq(monkeypatch):
    monkeypatch.setattr(machine, "_CPUFREQ_MAX", "/nonexistent/cpuinfo_max_freq")
    peak = machine.cpu_peak(cpuinfo=ZEN4)
    assert peak["clock_ghz"] == pytest.approx(2.4) and "cpu MHz" in peak["clock_source"]


def test_inference_benchmark_rows_are_consistent(tmp_path):
    segmenter, config = _tiny_segmenter()
    variants = ["keras", "function", "saved_model", "network", "function_fp16"]
    results = inference_benchmark.benchmark_inference(
        segmenter, config, depths=(2, 4), size=16, variants=variants, warmup=1, repeats=2, peak_gflops=100.0,
        work_dir=str(tmp_path),
    )
    json.dumps(results)
    ran = [v for v in variants if v != "function_fp16"]
    assert results["device"] == "CPU" and results["variants"] == ran
    assert results["skipped_variants"] == {"function_fp16": "needs a GPU"}
    assert results["segment_traces"] <= 1  # one dynamic-shape trace serves every depth
    assert [(r["depth"], r["variant"]) for r in results["rows"]] == [(d, v) for d in (2, 4) for v in ran]
    for row in results["rows"]:
        assert row["padded_shape"] == [1, row["depth"], 16, 16, 5]
        assert row["flops"] == flops.count_flops(segmenter.model, row["padded_shape"]) > 0
        assert 0 < row["min_s"] <= row["median_s"] <= row["max_s"] and row["repeats"] == 2
        assert row["gflops_per_s"] == pytest.approx(row["flops"] / row["median_s"] / 1e9)
        assert row["fraction_of_peak"] == pytest.approx(row["gflops_per_s"] / 100.0)
        assert row["best_fraction_of_peak"] >= row["fraction_of_peak"]
    text = inference_benchmark.format_inference(results)
    assert all(v in text for v in ran) and "4x16x16x5" in text
    with pytest.raises(ValueError, match="unknown inference variant"):
        inference_benchmark.benchmark_inference(segmenter, config, depths=(2,), size=16, variants=["bogus"])


def test_runners_agree_with_the_segmenter(tmp_path):
    segmenter, config = _tiny_segmenter()
    runners = inference_benchmark.Runners(segmenter, config, str(tmp_path / "export"), gpu=False)
    image = inference_benchmark.synthetic_slab(2, 16, segmenter.channels)
    assert image.shape == (2, 16, 16, 5) and image.dtype == np.float32
    expected = segmenter.predict_image(image)[1]
    for variant in ("keras", "function", "function_xla", "saved_model"):
        np.testing.assert_array_equal(runners.runners[variant](image[np.newaxis])[0], expected)


def test_memory_child_reports_peak_rss(capsys, tmp_path):
    image_path = str(tmp_path / "slab.npy")
    np.save(image_path, inference_benchmark.synthetic_slab(2, 16, isles.DEFAULT_CHANNELS))
    inference_benchmark._memory_child([image_path, "1", ""])
    record = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert record["peak_mib"] >= record["baseline_mib"] > 0
    assert record["segment_mib"] == pytest.approx(record["peak_mib"] - record["baseline_mib"])


def test_training_benchmark_one_row_per_stage(tmp_path):
    flagfile = tmp_path / "tiny.flags"
    flagfile.write_text("# tiny\n--batch_size=2\n--patch_size=2x16x16\n--patches_per_case=2\n"
                        "--stage=name=a,epochs=1,augment=0\n--stage=name=b,epochs=1,augment=1,patch=2x32x32\n")
    config = training_benchmark.config_from_flagfile(str(flagfile), str(tmp_path))
    assert [s.name for s in config.curriculum.stages] == ["a", "b"] and config.batch_size == 2
    config = config.__class__(**{**config.__dict__, "model": strokenet.tiny_model_config()})
    cases = [preprocess.prepare_case(build_case(2, 32, 32, rng=np.random.default_rng(i), case_id=f"case_{i}"),
                                     isles.DEFAULT_CHANNELS) for i in range(3)]
    results = training_benchmark.benchmark_training(config, cases, steps=1, input_batches=1)
    json.dumps(results)
    assert [row["stage"] for row in results["rows"]] == ["a", "b"]
    assert results["step_traces"] == 1  # the curriculum's patch change does not retrace
    assert [row["image_shape"] for row in results["rows"]] == [[2, 2, 16, 16, 5], [2, 2, 32, 32, 5]]
    for row in results["rows"]:
        assert row["mvoxels_per_s"] == pytest.approx(np.prod(row["image_shape"][:4]) * row["steps_per_s"] / 1e6)
        assert row["input_batches_per_s"] > 0 and row["fed_steps_per_s"] > 0 and isinstance(row["input_bound"], bool)
        assert row["fed_slowdown"] == pytest.approx(1.0 - row["fed_steps_per_s"] * row["step_s"])
    assert "input-bound" in training_benchmark.format_training(results)


def test_runner_writes_targets_and_pipeline_flags_stay_separate():
    flag_values = flags.FlagValues()
    runner.define_flags(flag_values)
    flag_values(["benchmarks", "--parts=inference", "--size=16", "--depths=2", "--variants=function,network",
                 "--warmup=1", "--repeats=1"])
    results = runner.run(flag_values)
    json.dumps(results, default=str)
    assert set(results) >= {"commit", "date", "machine", "inference", "targets"}
    assert set(results["targets"]) == set(runner.TARGETS)
    assert all(entry["measured"] is None and entry["met"] is None for entry in results["targets"].values())
    pipeline_flags = flags.FlagValues()
    pipeline_benchmark.define_flags(pipeline_flags)
    assert "data_dir" in pipeline_flags and "json" in pipeline_flags


def test_targets_use_the_16_slice_rows():
    rows = [{"variant": v, "depth": d, "median_s": s, "min_s": s / 2, "fraction_of_peak": f,
             "best_fraction_of_peak": 2 * f}
            for v, d, s, f in [("function", 16, 0.3, 0.2), ("network", 16, 0.2, 0.3), ("function", 2, 0.1, 0.1)]]
    targets = runner.evaluate_targets({"inference": {"device": "CPU", "rows": rows},
                                       "memory": [{"depth": 22, "peak_mib": 3000.0}]})
    assert targets["cpu_seconds_16_slices"] == {"target": 0.5, "measured": 0.3, "met": True}
    assert targets["cpu_fraction_of_peak"]["measured"] == 0.3 and targets["cpu_fraction_of_peak"]["met"] is False
    assert targets["cpu_fraction_of_peak_fastest"] == {"target": 0.5, "measured": 0.6, "met": True}
    assert targets["cpu_seconds_16_slices_fastest"]["measured"] == 0.15
    assert targets["peak_rss_mib_22_slices"]["met"] is False and targets["gpu_seconds_16_slices"]["met"] is None


def test_runner_rejects_bad_flags_with_one_line_errors():
    flag_values = flags.FlagValues()
    runner.define_flags(flag_values)
    flag_values(["benchmarks", "--parts=everything"])
    with pytest.raises(runner.BenchmarkError, match="--parts: unknown everything"):
        runner.run(flag_values)
    flag_values(["benchmarks", "--parts=inference", "--depths=2,x"])
    with pytest.raises(runner.BenchmarkError, match="--depths"):
        runner.run(flag_values)
