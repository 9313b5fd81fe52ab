"""Tests for strokenet_tf.data.preprocess: brain mask, normalisation invariances, pad/crop, resampling."""

import dataclasses

import numpy as np
import pytest
import tensorflow as tf

from strokenet_tf.data import isles, preprocess

CHANNELS = isles.DEFAULT_CHANNELS


def test_brain_mask_sums_perfusion_maps_and_falls_back_to_ct():
    image = np.zeros((1, 2, 3, 5), np.float32)
    image[..., 0] = -1000.0
    image[0, 0, 0, 1] = 5.0  # CBF only
    image[0, 1, 2, 4] = 0.5  # Tmax only
    image[0, 1, 1, 2] = 2.0
    image[0, 1, 1, 3] = -3.0  # sums to <= 0
    image[0, 0, 1, 0] = 40.0  # CT alone does not count when perfusion maps exist
    expected = np.array([[[True, False, False], [False, False, True]]])
    np.testing.assert_array_equal(preprocess.brain_mask(image, CHANNELS).numpy(), expected)
    batch = np.stack([image, image])
    np.testing.assert_array_equal(preprocess.brain_mask(batch, CHANNELS).numpy(), np.stack([expected, expected]))
    ct = image[..., :1]
    np.testing.assert_array_equal(preprocess.brain_mask(ct, (isles.CT,)).numpy()[0],
                                  [[False, True, False], [False, False, False]])


def test_masked_percentiles_match_numpy():
    rng = np.random.default_rng(1)
    values = rng.normal(size=(3, 5, 7, 2)).astype(np.float32)
    mask = rng.uniform(size=(3, 5, 7)) < 0.6
    result = preprocess.masked_percentiles(values, mask, (0.0, 1.0, 37.5, 99.0, 100.0)).numpy()
    expected = np.percentile(values[mask], [0.0, 1.0, 37.5, 99.0, 100.0], axis=0)
    np.testing.assert_allclose(result, expected, rtol=1e-6, atol=1e-6)
    empty = preprocess.masked_percentiles(values, np.zeros_like(mask), (1.0, 99.0)).numpy()
    np.testing.assert_array_equal(empty, np.zeros((2, 2)))


def test_normalize_image_exact_values():
    # One CBF channel: brain voxels 1..101 (p1 = 2, p99 = 100), one background voxel (0: outside the mask).
    image = np.zeros((1, 1, 102, 1), np.float32)
    image[0, 0, :101, 0] = np.arange(1, 102)
    image[0, 0, 50, 0] = 1000.0  # an outlier moves the 99th percentile by one rank only, and is clipped
    out = preprocess.normalize_image(image, (isles.CBF,)).numpy()[0, 0, :, 0]
    values = image[0, 0, :101, 0]
    p1, p99 = np.percentile(values, [1, 99])
    assert (p1, p99) == (2.0, 101.0)
    np.testing.assert_allclose(out[:101], np.clip((values - 2.0) / 99.0, -0.5, 1.5), atol=1e-6)
    assert out[50] == 1.5 and out[0] == pytest.approx(-1.0 / 99.0) and out[101] == 0.0


@pytest.mark.parametrize("factor", [10.0, 100.0, 0.01])
def test_normalize_image_is_invariant_to_linear_scale(make_case, factor):
    case = make_case(4, 32, 32)
    reference = preprocess.normalize_image(case.image, CHANNELS).numpy()
    scaled = case.image.copy()
    scaled[..., 1:3] *= factor  # CBF and CBV in another vendor scale
    scaled[..., 0] += 1024.0  # CT stored without the intercept
    scaled[..., 3] *= factor
    out = preprocess.normalize_image(scaled, CHANNELS).numpy()
    np.testing.assert_allclose(out, reference, atol=2e-5)
    uint16 = np.round(case.image[..., 1:3] * 10).astype(np.uint16)  # vendor integers, any dtype accepted
    np.testing.assert_allclose(preprocess.normalize_image(uint16, CHANNELS[1:3]).numpy(),
                               preprocess.normalize_image(uint16.astype(np.float32) * 7, CHANNELS[1:3]).numpy(),
                               atol=2e-5)


def test_normalize_image_range_background_and_bad_values(make_case):
    case = make_case(4, 32, 32)
    image = case.image.copy()
    image[0, 10, 10, 1] = np.nan
    image[1, 12, 12, 4] = np.inf
    image[2, 15, 15, 2] = 1e9  # extreme vessel-like outlier is clipped
    out = preprocess.normalize_image(image, CHANNELS).numpy()
    assert np.all(np.isfinite(out)) and out.dtype == np.float32
    assert out.min() >= preprocess.CLIP_RANGE[0] and out.max() <= preprocess.CLIP_RANGE[1]
    assert out[2, 15, 15, 2] == preprocess.CLIP_RANGE[1]
    brain = preprocess.brain_mask(image, CHANNELS).numpy()
    assert np.all(out[~brain] == 0.0) and brain.mean() > 0.3
    lesion = case.label.astype(bool)
    # Tmax is high in the lesion, CBF low: the normalised maps keep that contrast.
    assert out[..., 4][lesion].mean() > 0.9 and out[..., 4][brain & ~lesion].mean() < 0.2
    assert out[..., 1][lesion].mean() < out[..., 1][brain & ~lesion].mean() - 0.4


def test_normalize_image_empty_mask_and_constant_channel():
    zeros = np.zeros((2, 4, 4, 5), np.float32)
    np.testing.assert_array_equal(preprocess.normalize_image(zeros, CHANNELS).numpy(), zeros)
    constant = np.full((2, 4, 4, 2), 7.0, np.float32)
    np.testing.assert_array_equal(preprocess.normalize_image(constant, (isles.CBF, isles.CBV)).numpy(), 0.0 * constant)


def test_normalize_image_batch_is_per_case_and_traceable(make_case):
    first = make_case(4, 32, 32, np.random.default_rng(1)).image
    second = make_case(4, 32, 32, np.random.default_rng(2)).image
    batch = np.stack([first, second * 50.0])
    expected = np.stack([preprocess.normalize_image(first, CHANNELS), preprocess.normalize_image(second, CHANNELS)])

    @tf.function(input_signature=[tf.TensorSpec([None, None, None, None, 5], tf.float32)])
    def serve(image):
        return preprocess.normalize_image(image, CHANNELS)

    np.testing.assert_allclose(serve(batch).numpy(), expected, atol=2e-5)
    with pytest.raises(ValueError, match="channel"):
        preprocess.normalize_image(first[..., :3], CHANNELS)


def test_percentiles_use_a_subsample_of_large_masks(monkeypatch):
    monkeypatch.setattr(preprocess, "MAX_PERCENTILE_SAMPLES", 10)
    values = np.arange(1, 101, dtype=np.float32).reshape(1, 1, 100, 1)
    result = preprocess.masked_percentiles(values, np.ones((1, 1, 100), bool), (0.0, 100.0)).numpy()
    np.testing.assert_array_equal(result[:, 0], [1.0, 91.0])  # stride 10: 1, 11, ..., 91


@pytest.mark.parametrize("shape", [(3, 37, 41, 2), (2, 3, 37, 41, 1), (4, 32, 16, 5)])
def test_pad_to_multiple_round_trip(shape):
    x = np.random.default_rng(0).normal(size=shape).astype(np.float32)
    padded, original = preprocess.pad_to_multiple(x, (2, 16, 8))
    spatial = shape[-4:-1]
    expected = tuple(preprocess.padded_size(s, m) for s, m in zip(spatial, (2, 16, 8)))
    assert tuple(padded.shape[-4:-1]) == expected
    assert padded.shape[:-4] == shape[:-4] and padded.shape[-1] == shape[-1]
    np.testing.assert_array_equal(original.numpy(), spatial)
    assert float(tf.reduce_sum(tf.abs(padded))) == pytest.approx(float(np.abs(x).sum()), rel=1e-5)  # zeros only
    np.testing.assert_array_equal(preprocess.crop_to_shape(padded, original).numpy(), x)
    np.testing.assert_array_equal(preprocess.crop_to_shape(padded, spatial).numpy(), x)


def test_pad_and_crop_with_dynamic_shapes():
    @tf.function(input_signature=[tf.TensorSpec([None, None, None, None, 1], tf.float32)])
    def round_trip(x):
        padded, original = preprocess.pad_to_multiple(x, (2, 8, 8))
        return tf.shape(padded), preprocess.crop_to_shape(padded * 2.0, original)

    x = np.ones((1, 3, 37, 41, 1), np.float32)
    shape, back = round_trip(x)
    np.testing.assert_array_equal(shape.numpy(), [1, 4, 40, 48, 1])
    np.testing.assert_array_equal(back.numpy(), 2.0 * x)
    with pytest.raises(ValueError, match="multiples"):
        preprocess.pad_to_multiple(x, (2, 8))


def test_resample_inplane_and_inverse():
    label = np.zeros((2, 20, 30), np.uint8)
    label[:, 4:12, 6:18] = 1
    image = np.random.default_rng(0).uniform(size=(2, 20, 30, 3)).astype(np.float32)
    spacing = (5.0, 0.5, 0.5)
    small = preprocess.resample_inplane(image, spacing, 1.0)
    small_label = preprocess.resample_inplane(label, spacing, 1.0, method="nearest")
    assert small.shape == (2, 10, 15, 3) and small.dtype == tf.float32
    assert small_label.shape == (2, 10, 15) and small_label.dtype == tf.uint8
    np.testing.assert_array_equal(np.unique(small_label.numpy()), [0, 1])
    assert preprocess.resampled_spacing_mm(spacing, (2, 20, 30), (2, 10, 15)) == (5.0, 1.0, 1.0)
    back = preprocess.resize_inplane_to_shape(small_label, (20, 30), method="nearest").numpy()
    assert back.shape == (2, 20, 30) and np.mean(back == label) > 0.97
    with pytest.raises(ValueError, match="method"):
        preprocess.resample_inplane(image, spacing, 1.0, method="cubic")


def test_prepare_case_selects_channels_and_types(make_case):
    case = make_case(2, 16, 16)
    prepared = preprocess.prepare_case(case, (isles.TMAX, isles.CBF))
    assert prepared.image.shape == (2, 16, 16, 2) and prepared.image.dtype == np.float32
    np.testing.assert_allclose(
        prepared.image, preprocess.normalize_image(case.image[..., [4, 1]], (isles.TMAX, isles.CBF)).numpy()
    )
    assert prepared.label.dtype == np.uint8 and prepared.spacing_mm == (5.0, 1.0, 1.0)
    unlabelled = preprocess.prepare_case(dataclasses.replace(case, label=None))
    assert unlabelled.label is None and unlabelled.image.shape[-1] == 5
    with pytest.raises(ValueError, match="case_1: channels CT_4DPWI"):
        preprocess.prepare_case(case, (isles.PWI,))
    assert preprocess.normalization_constants()["percentiles"] == list(preprocess.PERCENTILES)


def test_normalize_and_pad_survive_a_saved_model(tmp_path, make_case):
    class Serving(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None, None, None, None, 5], tf.float32)])
        def prepare(self, image):
            return preprocess.pad_to_multiple(preprocess.normalize_image(image, CHANNELS), (2, 16, 16))

    tf.saved_model.save(Serving(), str(tmp_path / "serving"))
    loaded = tf.saved_model.load(str(tmp_path / "serving"))
    image = make_case(3, 20, 24).image
    padded, shape = loaded.prepare(tf.constant(image[np.newaxis]))
    assert tuple(padded.shape) == (1, 4, 32, 32, 5) and tuple(shape.numpy()) == (3, 20, 24)
    np.testing.assert_allclose(preprocess.crop_to_shape(padded, shape).numpy()[0],
                               preprocess.normalize_image(image, CHANNELS).numpy(), atol=1e-6)


@pytest.mark.parametrize("count", [1, 2, 3, 7, 1000])
def test_masked_percentiles_small_masks_ties_and_both_tails_match_numpy(count):
    # Ranks come from the smallest values for percentiles <= 50 and from the largest above 50.
    rng = np.random.default_rng(count)
    values = rng.normal(size=(1, 2, 600, 3)).astype(np.float32)
    values[0, 0, :200] = 0.25  # ties
    mask = np.zeros((1, 2, 600), bool)
    mask.reshape(-1)[rng.choice(1200, size=count, replace=False)] = True
    percentiles = (0.0, 1.0, 49.9, 50.0, 50.1, 99.0, 100.0)
    result = preprocess.masked_percentiles(values, mask, percentiles).numpy()
    np.testing.assert_allclose(result, np.percentile(values[mask], percentiles, axis=0), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("rows, columns, multiple, expected", [
    ((40, 60), (100, 130), 16, (26, 91, 48, 48)),   # 20 + 2 x 8 margin = 36 -> 48 and 46 -> 48, grown evenly
    ((0, 3), (0, 3), 16, (0, 0, 16, 16)),           # the margin clipped at the top-left corner
    ((250, 256), (0, 256), 16, (240, 0, 16, 256)),  # kept inside at the bottom; full width: the whole axis
    (None, None, 16, (0, 0, 256, 256)),             # no brain: the whole plane
    ((0, 256), (120, 121), 16, (0, 105, 256, 32)),
])
def test_head_box_holds_the_brain_plus_margin_grown_to_the_multiples(rows, columns, multiple, expected):
    image = np.zeros((2, 3, 256, 256, 2), np.float32)
    if rows is not None:
        image[1, 2, rows[0]:rows[1], columns[0]:columns[1], 1] = -0.25
    box = preprocess.head_box(image, (1, multiple, multiple), margin=8).numpy()
    assert tuple(box) == expected
    cropped = preprocess.crop_box(tf.constant(image[..., 0]), box)
    assert tuple(cropped.shape[2:]) == tuple(box[2:])
    back = preprocess.uncrop_box(preprocess.crop_box(tf.constant(image[..., 1]), box), box, (256, 256)).numpy()
    np.testing.assert_array_equal(back, image[..., 1])  # every brain voxel is inside the box
