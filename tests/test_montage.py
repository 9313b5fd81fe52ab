"""Tests for strokenet_tf.montage: slice choice, outlines, radiological orientation under any affine, PNG bytes."""

import dataclasses
import io

import numpy as np
import pytest
from PIL import Image

from strokenet_tf import montage
from strokenet_tf.data import isles


def _red(rgb):
    return np.all(rgb == montage.PREDICTION_RGB, axis=-1)


def _green(rgb):
    return np.all(rgb == montage.TRUTH_RGB, axis=-1)


def test_choose_slices_all_when_few():
    assert montage.choose_slices(np.zeros((4, 8, 8)), max_slices=6) == [0, 1, 2, 3]


def test_choose_slices_spread_over_the_lesion():
    mask = np.zeros((22, 8, 8), bool)
    mask[9:16, 3, 3] = True
    slices = montage.choose_slices(mask, max_slices=4)
    assert slices == [9, 11, 13, 15]
    mask[:] = False
    mask[10, 3, 3] = True  # one lesion slice: the range is widened around it to fill the rows
    slices = montage.choose_slices(mask, max_slices=4)
    assert len(slices) == 4 and 10 in slices and slices == sorted(slices)
    assert montage.choose_slices(np.zeros((22, 8, 8)), max_slices=3) == [0, 10, 21]  # empty: whole slab


def test_outlines_drawn_around_prediction_and_truth(make_case):
    case = make_case(depth=3, height=32, width=32)
    mask = case.label.copy()
    rgb = montage.render_montage(case, mask, truth=case.label)
    assert rgb.dtype == np.uint8 and rgb.ndim == 3 and rgb.shape[2] == 3
    # The prediction outline is drawn last, so identical masks show red only.
    assert _red(rgb).any() and not _green(rgb).any()
    rgb = montage.render_montage(case, np.zeros_like(mask), truth=case.label)
    assert _green(rgb).any() and not _red(rgb).any()
    assert not _red(montage.render_montage(case, np.zeros_like(mask))).any()


def test_layout_one_row_per_slice_one_column_per_map(make_case):
    case = make_case(depth=8, height=24, width=20)
    wide = montage.render_montage(case, case.label, max_slices=2)
    tall = montage.render_montage(case, case.label, max_slices=4)
    assert wide.shape[1] == tall.shape[1]
    tile_step = (tall.shape[0] - wide.shape[0]) // 2  # two more rows
    assert tile_step > 0 and tall.shape[0] - wide.shape[0] == 2 * tile_step
    two_maps = montage.render_montage(case, case.label, channels=(isles.CBF, isles.TMAX), max_slices=2)
    assert two_maps.shape[0] == wide.shape[0] and two_maps.shape[1] < wide.shape[1]
    with pytest.raises(ValueError, match="mask shape"):
        montage.render_montage(case, case.label[:, :-1])


def _marker_case(make_case, affine, flip_x=False):
    """A case whose lesion is one voxel column at high NIfTI x (i = width - 2), optionally stored x-flipped."""
    case = make_case(depth=2, height=24, width=24, lesion=False)
    label = np.zeros(case.image.shape[:3], np.uint8)
    label[:, 12, 20] = 1
    image = case.image
    if flip_x:
        image, label = image[:, :, ::-1], label[:, :, ::-1]
    return dataclasses.replace(case, image=np.ascontiguousarray(image), label=np.ascontiguousarray(label),
                               affine=affine)


def test_radiological_orientation_patient_right_on_image_left(make_case):
    # RAS affine: i = 20 of 24 is towards the patient's right, so it is drawn in the left half of each tile.
    case = _marker_case(make_case, np.diag([1.0, 1.0, 5.0, 1.0]))
    rgb = montage.render_montage(case, case.label, channels=(isles.TMAX,))
    columns = np.flatnonzero(_red(rgb).any(axis=0))
    assert columns.size and columns.max() < 34 + rgb[:, 34:].shape[1] // 2


def test_same_world_image_gives_same_montage_whatever_the_voxel_order(make_case):
    reference = _marker_case(make_case, np.diag([1.0, 1.0, 5.0, 1.0]))
    flipped_affine = np.diag([-1.0, 1.0, 5.0, 1.0])
    flipped_affine[0, 3] = 23.0  # voxel i of the flipped file is voxel 23 - i of the reference: same world points
    flipped = _marker_case(make_case, flipped_affine, flip_x=True)
    np.testing.assert_array_equal(montage.render_montage(reference, reference.label),
                                  montage.render_montage(flipped, flipped.label))


def test_png_round_trip(make_case):
    case = make_case(depth=2, height=16, width=16)
    rgb = montage.render_montage(case, case.label)
    png = montage.encode_png(rgb)
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(png)).convert("RGB")), rgb)
