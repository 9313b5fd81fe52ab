"""Tests for strokenet_tf.data.pipeline: patch sampling, shapes, padding, determinism, stores, eval slabs."""

import dataclasses
import os

import numpy as np
import pytest
import tensorflow as tf

from strokenet_tf.data import pipeline, preprocess

HEIGHT = WIDTH = 32


def coded_cases(depths=(2, 4, 3), channels=2):
    """Prepared cases whose channel 0 encodes (case, depth, row, column) so any patch can be located exactly."""
    cases = []
    for index, depth in enumerate(depths):
        d, h, w = np.meshgrid(np.arange(depth), np.arange(HEIGHT), np.arange(WIDTH), indexing="ij")
        image = np.zeros((depth, HEIGHT, WIDTH, channels), np.float32)
        image[..., 0] = 1 + index * 100000 + d * 1024 + h * 32 + w
        image[..., 1] = index
        label = np.zeros((depth, HEIGHT, WIDTH), np.uint8)
        label[depth // 2, 10 + 3 * index:14 + 3 * index, 20:23] = 1
        cases.append(preprocess.PreparedCase(f"case_{index}", image, label, (5.0, 1.0, 1.0)))
    return cases


def decode(code):
    case, code = divmod(int(code) - 1, 100000)
    return case, code // 1024, (code % 1024) // 32, code % 32


def expected_window(case, start, size):
    """case.image / label at [start, start + size), zero outside (what the pipeline cuts)."""
    shape = (case.image.shape[0] + 2 * size[0], HEIGHT + 2 * size[1], WIDTH + 2 * size[2], 2)
    padded_image = np.zeros(shape, np.float32)
    padded_label = np.zeros(padded_image.shape[:3], np.float32)
    padded_image[size[0]:size[0] + case.image.shape[0], size[1]:size[1] + HEIGHT, size[2]:size[2] + WIDTH] = case.image
    padded_label[size[0]:size[0] + case.image.shape[0], size[1]:size[1] + HEIGHT, size[2]:size[2] + WIDTH] = case.label
    window = tuple(slice(s + n, s + n + n) for s, n in zip(start, size))
    return padded_image[window], padded_label[window]


def to_numpy(dataset):
    return [tuple(np.asarray(t) for t in batch) for batch in dataset]


def test_patches_are_exact_windows_of_their_case_and_label():
    cases = coded_cases()
    config = pipeline.PipelineConfig(patch_size=(3, 8, 12), batch_size=2, patches_per_case=3, multiples=(1, 4, 4),
                                     foreground_fraction=0.5, seed=3)
    dataset = pipeline.make_training_dataset(cases, config, augmentation_stage=0)
    assert dataset.cardinality() == 5  # ceil(3 cases * 3 patches / 2)
    seen = []
    for image, label in to_numpy(dataset):
        assert image.dtype == np.float32 and label.dtype == np.float32
        assert image.shape[1:] == (3, 8, 12, 2) and label.shape[1:] == (3, 8, 12, 1)
        for patch_image, patch_label in zip(image, label):
            index, d, h, w = decode(patch_image[0, 0, 0, 0])
            seen.append(index)
            want_image, want_label = expected_window(cases[index], (d, h, w), (3, 8, 12))
            np.testing.assert_array_equal(patch_image, want_image)
            np.testing.assert_array_equal(patch_label[..., 0], want_label)
            last_depth = max(cases[index].image.shape[0] - 3, 0)  # inside the case where it fits
            assert 0 <= d <= last_depth and 0 <= h <= HEIGHT - 8 and 0 <= w <= WIDTH - 12
    assert sorted(seen) == [0, 0, 0, 1, 1, 1, 2, 2, 2]


def test_sample_patch_starts_centres_lesion_voxels_and_clips():
    label = np.zeros((6, 32, 32), np.uint8)
    label[3, 10, 20] = 1
    starts = pipeline.sample_patch_starts(label, (2, 8, 8), 4, 1.0, tf.constant([1, 2], tf.int64)).numpy()
    np.testing.assert_array_equal(starts, [[2, 6, 16]] * 4)
    label[:] = 0
    label[0, 1, 31] = 1
    starts = pipeline.sample_patch_starts(label, (2, 8, 8), 2, 1.0, tf.constant([1, 2], tf.int64)).numpy()
    np.testing.assert_array_equal(starts, [[0, 0, 24]] * 2)
    starts = pipeline.sample_patch_starts(np.zeros((2, 32, 32), np.uint8), (4, 8, 8), 200, 1.0,
                                          tf.constant([3, 4], tf.int64)).numpy()  # no lesion: uniform
    assert np.all(starts[:, 0] == 0) and starts[:, 1:].min() == 0 and starts[:, 1:].max() == 24


def test_foreground_fraction_controls_lesion_patches():
    cases = coded_cases(depths=(4, 4, 4, 4))
    fractions = []
    for fraction in (0.0, 1.0):
        config = pipeline.PipelineConfig(patch_size=(2, 8, 8), batch_size=4, patches_per_case=8, multiples=(1, 1, 1),
                                         foreground_fraction=fraction, seed=0)
        labels = np.concatenate([label for _, label in to_numpy(pipeline.make_training_dataset(cases, config, 1))])
        fractions.append(np.mean(labels.reshape(len(labels), -1).max(axis=1)))
    assert fractions[1] == 1.0 and fractions[0] < 0.5


def test_same_seed_and_epoch_replay_and_other_epochs_differ():
    cases = coded_cases()
    config = pipeline.PipelineConfig(patch_size=(2, 16, 16), batch_size=2, patches_per_case=2, multiples=(2, 16, 16))
    first = to_numpy(pipeline.make_training_dataset(cases, config, 3, epoch=1))
    serial = dataclasses.replace(config, num_parallel_calls=1)
    again = to_numpy(pipeline.make_training_dataset(cases, serial, 3, epoch=1))
    other = to_numpy(pipeline.make_training_dataset(cases, config, 3, epoch=2))
    for (image, label), (image2, label2) in zip(first, again):
        np.testing.assert_array_equal(image, image2)
        np.testing.assert_array_equal(label, label2)
    assert not all(np.array_equal(a[0], b[0]) for a, b in zip(first, other))
    assert all(set(np.unique(label)) <= {0.0, 1.0} for _, label in first)


def test_padding_to_multiples_in_patch_and_slab_mode():
    cases = coded_cases()
    patches = pipeline.PipelineConfig(patch_size=(3, 10, 12), batch_size=3, patches_per_case=1, multiples=(2, 8, 8))
    for image, label in to_numpy(pipeline.make_training_dataset(cases, patches, 2)):
        assert image.shape == (3, 4, 16, 16, 2) and label.shape == (3, 4, 16, 16, 1)
        assert np.all(image[:, 3:] == 0) and np.all(image[:, :, 10:] == 0) and np.all(label[:, :, :, 12:] == 0)
    slabs = dataclasses.replace(patches, patch_size=None, batch_size=2, multiples=(4, 16, 16))
    dataset = pipeline.make_training_dataset(cases, slabs, 0)
    shapes = sorted(tuple(image.shape) for image, _ in to_numpy(dataset))
    assert shapes == [(1, 4, 32, 32, 2), (2, 4, 32, 32, 2)]
    assert dataset.element_spec[0].shape.as_list() == [None, None, None, None, 2]


def test_whole_slab_stage_zero_returns_the_cases():
    cases = coded_cases()
    config = pipeline.PipelineConfig(patch_size=None, batch_size=1, patches_per_case=1, multiples=(1, 1, 1))
    found = {}
    for image, label in to_numpy(pipeline.make_training_dataset(cases, config, 0)):
        index = decode(image[0, 0, 0, 0, 0])[0]
        found[index] = True
        np.testing.assert_array_equal(image[0], cases[index].image)
        np.testing.assert_array_equal(label[0, ..., 0], cases[index].label)
    assert sorted(found) == [0, 1, 2]


def test_eval_dataset_pads_and_crops_back():
    cases = coded_cases()
    config = pipeline.PipelineConfig(multiples=(2, 16, 16))
    batches = to_numpy(pipeline.make_eval_dataset(cases, config))
    assert [b[0].shape for b in batches] == [(1, 2, 32, 32, 2), (1, 4, 32, 32, 2), (1, 4, 32, 32, 2)]
    for case, (image, label, shape) in zip(cases, batches):
        assert shape.dtype == np.int32 and tuple(shape) == case.image.shape[:3]
        np.testing.assert_array_equal(preprocess.crop_to_shape(image, shape).numpy()[0], case.image)
        np.testing.assert_array_equal(preprocess.crop_to_shape(label, shape).numpy()[0, ..., 0], case.label)


def test_file_cache_matches_memory_and_is_written_once(tmp_path):
    cases = coded_cases()
    config = pipeline.PipelineConfig(patch_size=(2, 16, 16), batch_size=2, patches_per_case=2, multiples=(2, 16, 16))
    memory = to_numpy(pipeline.make_training_dataset(cases, config, 2))
    folder = str(tmp_path / "cache")
    files = to_numpy(pipeline.make_training_dataset(cases, dataclasses.replace(config, cache=folder), 2))
    for (image, label), (image2, label2) in zip(memory, files):
        np.testing.assert_array_equal(image, image2)
        np.testing.assert_array_equal(label, label2)
    written = sorted(os.listdir(folder))
    assert len(written) == 6 and all(name.endswith(".tensor") for name in written)
    times = [os.path.getmtime(os.path.join(folder, name)) for name in written]
    pipeline._STORES.clear()  # a new process: files are found, not rewritten
    to_numpy(pipeline.make_training_dataset(cases, dataclasses.replace(config, cache=folder), 2))
    assert [os.path.getmtime(os.path.join(folder, name)) for name in written] == times


def test_memory_store_is_reused_for_the_same_cases():
    cases = coded_cases()
    assert pipeline.case_store(cases, "memory") is pipeline.case_store(list(cases), "memory")
    assert pipeline.case_store(cases, "memory") is not pipeline.case_store(cases[:2], "memory")
    assert pipeline.case_store(cases, None) is not pipeline.case_store(cases, None)


def test_errors_are_one_line_and_name_the_problem():
    cases = coded_cases()
    unlabelled = [dataclasses.replace(cases[0], label=None)]
    with pytest.raises(ValueError, match="case case_0 has no label"):
        pipeline.make_training_dataset(unlabelled, pipeline.PipelineConfig(), 0)
    with pytest.raises(ValueError, match="no cases"):
        pipeline.make_eval_dataset([], pipeline.PipelineConfig())
    with pytest.raises(ValueError, match="augmentation stage"):
        pipeline.make_training_dataset(cases, pipeline.PipelineConfig(), 9)
    with pytest.raises(ValueError, match="foreground_fraction"):
        pipeline.PipelineConfig(foreground_fraction=1.5)
    with pytest.raises(ValueError, match="patch_size"):
        pipeline.PipelineConfig(patch_size=(8, 128))
    assert pipeline.PipelineConfig(patch_size=[4, 8, 8], multiples=[1, 2, 2]).patch_size == (4, 8, 8)
    assert pipeline.steps_per_epoch(3, pipeline.PipelineConfig(patches_per_case=3, batch_size=2)) == 5


def test_benchmark_reports_stages_and_stores(tmp_path):
    from strokenet_tf.benchmarks import pipeline as benchmark

    cases = coded_cases()
    config = pipeline.PipelineConfig(patch_size=(2, 16, 16), batch_size=2, patches_per_case=2, multiples=(2, 16, 16))
    results = benchmark.run_benchmark(cases, config, stages=[0, 2], num_batches=2, cache_dir=str(tmp_path / "c"))
    assert results["batch"]["image_shape"] == [2, 2, 16, 16, 2] and results["batch"]["label_dtype"] == "float32"
    assert set(results["stages"]) == {"0", "2"} and results["stages"]["2"]["patches_per_s"] > 0
    assert results["stores"]["files"]["kind"] == "files" and results["stores"]["memory"]["kind"] == "memory"
    text = benchmark.format_results(results)
    assert "batches/s" in text and "memory" in text and "files" in text


def test_store_of_dead_cases_is_released():
    cases = coded_cases()
    pipeline.case_store(cases, "memory")
    key = ("memory", tuple(id(case) for case in cases))
    assert key in pipeline._STORES
    del cases
    pipeline.case_store(coded_cases(depths=(2,)), "memory")
    assert key not in pipeline._STORES
