"""Tests for strokenet_tf.montage: slice choice, outlines (halo, rings round small lesions), display windows,
the text band (case, model, volume, colour key, windows; scalable font, nothing outside the image), radiological
orientation under any affine, PNG bytes."""

import dataclasses
import io

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

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
    rgb = montage.render_montage(case, mask, truth=case.label, annotate=False)
    assert rgb.dtype == np.uint8 and rgb.ndim == 3 and rgb.shape[2] == 3
    # The prediction outline is drawn last, so identical masks show red only.
    assert _red(rgb).any() and not _green(rgb).any()
    rgb = montage.render_montage(case, np.zeros_like(mask), truth=case.label, annotate=False)
    assert _green(rgb).any() and not _red(rgb).any()
    assert not _red(montage.render_montage(case, np.zeros_like(mask), annotate=False)).any()


def test_layout_one_row_per_slice_one_column_per_map(make_case):
    case = make_case(depth=8, height=24, width=20)
    wide = montage.render_montage(case, case.label, max_slices=2)
    tall = montage.render_montage(case, case.label, max_slices=4)
    assert wide.shape[1] == tall.shape[1]
    tile_step = (tall.shape[0] - wide.shape[0]) // 2  # two more rows
    assert tile_step > 0 and tall.shape[0] - wide.shape[0] == 2 * tile_step
    two_maps = montage.render_montage(case, case.label, channels=(isles.CBF, isles.TMAX), max_slices=2)
    assert two_maps.shape[1] < wide.shape[1]
    bare = [montage.render_montage(case, case.label, channels=channels, max_slices=2, annotate=False)
            for channels in ((isles.CBF, isles.TMAX), None)]
    tile_h = (bare[0].shape[0] - montage._GAP_PX) // 2
    assert bare[0].shape[0] == bare[1].shape[0] and tile_h >= montage.MIN_TILE_PX
    assert bare[1].shape[1] - bare[0].shape[1] == 3 * (bare[0].shape[1] + montage._GAP_PX) // 2
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
    rgb = montage.render_montage(case, case.label, channels=(isles.TMAX,), annotate=False)
    columns = np.flatnonzero(_red(rgb).any(axis=0))
    assert columns.size and columns.max() < rgb.shape[1] // 2


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


# --- outlines that stay visible ---------------------------------------------------------------------------------

def _bright_case(make_case, lesion_voxels):
    """A case whose maps are all one bright value in the brain (white tiles), lesion voxels given as (z, y, x)."""
    case = make_case(depth=2, height=40, width=40, lesion=False)
    image = np.where(case.image > 0, 1000.0, 0.0).astype(np.float32)
    image[..., case.channels.index(isles.CT)] = np.where(case.image[..., 1] > 0, 80.0, -1000.0)  # top of W80 L40
    label = np.zeros(image.shape[:3], np.uint8)
    for voxel in lesion_voxels:
        label[voxel] = 1
    return dataclasses.replace(case, image=image, label=label, affine=np.diag([1.0, 1.0, 5.0, 1.0]))


def test_outline_has_a_dark_halo_on_bright_tissue(make_case):
    case = _bright_case(make_case, [(0, y, x) for y in range(14, 26) for x in range(14, 26)])  # 144 voxels
    rgb = montage.render_montage(case, case.label, channels=(isles.CT,), max_slices=1, annotate=False)
    red = _red(rgb)
    assert red.any() and (rgb == 255).all(axis=-1).any()  # the tile is white around the outline
    dark = np.all(rgb == montage.HALO_RGB, axis=-1)
    assert ndimage.binary_dilation(dark, np.ones((3, 3), bool))[red].all()  # every outline pixel touches the halo
    rows, cols = np.nonzero(red)  # a big lesion gets no ring: the outline hugs it
    scale = rgb.shape[0] // 40
    assert np.ptp(rows) <= (12 + 2) * scale and np.ptp(cols) <= (12 + 2) * scale


def test_one_voxel_lesion_is_ringed_on_every_tile(make_case, monkeypatch):
    case = _bright_case(make_case, [(0, 20, 20)])
    rgb = montage.render_montage(case, case.label, max_slices=1, annotate=False)
    tile_w = (rgb.shape[1] - 4 * montage._GAP_PX) // 5
    for c in range(5):
        tile = _red(rgb[:, c * (tile_w + montage._GAP_PX):c * (tile_w + montage._GAP_PX) + tile_w])
        rows, cols = np.nonzero(tile)
        assert rows.size > 40, c  # a ring, not just the few pixels of the voxel's outline
        assert np.ptp(rows) >= 16 and np.ptp(cols) >= 16
    monkeypatch.setattr(montage, "SMALL_LESION_AREA_VOXELS", 0)  # no ring: the outline alone is a few pixels
    assert _red(montage.render_montage(case, case.label, max_slices=1, annotate=False)).sum() < _red(rgb).sum() / 3


# --- display windows --------------------------------------------------------------------------------------------

def test_cbf_and_cbv_windows_leave_out_vessels():
    rng = np.random.default_rng(0)
    brain = np.zeros((4, 40, 40), bool)
    brain[:, 5:35, 5:35] = True
    vessels = brain & (rng.random(brain.shape) < 0.04)
    cbf = np.where(brain, rng.normal(50.0, 5.0, brain.shape), 0.0)
    cbf[vessels] = 600.0
    cbv = np.where(brain, rng.normal(4.0, 0.4, brain.shape), 0.0)
    cbv[vessels] = 40.0
    found = montage.vessel_mask(cbv, brain)
    np.testing.assert_array_equal(found, vessels)
    window = montage.display_window(isles.CBF, cbf, brain, found)
    assert 35.0 < window.low < 45.0 and 55.0 < window.high < 65.0 and "vessels" in window.rule
    assert montage.percentile_window(cbf, brain).high == pytest.approx(600.0)  # what 1st-99th would show
    assert montage.display_window(isles.CBV, cbv, brain, found).high < 6.0
    assert montage.display_window(isles.TMAX, cbf, brain, found).high == pytest.approx(600.0)


def test_ct_brain_window_in_hu_else_percentiles():
    brain = np.ones((2, 8, 8), bool)
    hu = np.full(brain.shape, 35.0)
    window = montage.display_window(isles.CT, hu, brain, np.zeros_like(brain))
    assert (window.low, window.high, window.rule) == (0.0, 80.0, "W80 L40") and window.label(" HU") == "0-80 HU"
    shifted = hu + 1024.0  # stored without the rescale intercept: not HU
    window = montage.display_window(isles.CT, shifted + np.arange(shifted.size).reshape(shifted.shape), brain,
                                    np.zeros_like(brain))
    assert window.rule == "p1-p99" and window.low > 1000.0
    assert montage.DisplayWindow(167.2, 2941.6, "p1-p99").label() == "167-2942"
    assert montage.DisplayWindow(0.25, 13.26, "p1-p99").label(" s") == "0.25-13.3 s"


# --- the text band ----------------------------------------------------------------------------------------------

@pytest.fixture()
def drawn_text(monkeypatch):
    """Records (text, bounding box, font size) of every string the montage draws."""
    from PIL import ImageDraw

    drawn = []
    real = ImageDraw.ImageDraw.text

    def text(self, xy, string, *args, **kwargs):
        face = kwargs.get("font")
        drawn.append((string, self.textbbox(xy, string, font=face), getattr(face, "size", 0)))
        return real(self, xy, string, *args, **kwargs)

    monkeypatch.setattr(ImageDraw.ImageDraw, "text", text)
    return drawn


def test_text_names_case_model_volume_key_and_windows(make_case, drawn_text):
    case = make_case(depth=3, height=32, width=32)
    rgb = montage.render_montage(case, case.label, truth=case.label, hypoperfusion=case.label,
                                 caption="core 1.0 mL, Tmax>6s 2.0 mL", model="runs/fold0")
    strings = [t for t, _, _ in drawn_text]
    volume = np.count_nonzero(case.label) * np.prod(case.spacing_mm) / 1000.0
    for expected in (case.case_id, "model runs/fold0", f"lesion {volume:.2f} mL", "predicted lesion",
                     "ground truth", "Tmax > 6 s", "core 1.0 mL,", "Tmax>6s 2.0 mL", "CT", "CBF", "Tmax",
                     "(p1-p98 w/o vessels)", "z1/3"):
        assert expected in strings, expected
    assert any(s.startswith("radiological view") for s in strings)
    assert sum(s.endswith(" s") and "-" in s for s in strings) == 2  # MTT and Tmax windows in seconds
    assert all(size >= 12 for _, _, size in drawn_text)  # the scalable font, not the 10 px bitmap
    height, width = rgb.shape[:2]
    assert all(0 <= box[0] and box[2] <= width and 0 <= box[1] and box[3] <= height for _, box, _ in drawn_text)
    # the swatches of the key are the outline colours
    for colour in (montage.PREDICTION_RGB, montage.TRUTH_RGB, montage.HYPOPERFUSION_RGB):
        assert np.all(rgb[:60] == colour, axis=-1).sum() >= 50


def test_text_stays_inside_a_narrow_montage(make_case, drawn_text):
    case = make_case(depth=2, height=16, width=16)
    long_model = "/very/long/path/to/a/cross/validation/folder/" * 4 + "fold_0"
    rgb = montage.render_montage(case, case.label, channels=(isles.TMAX,), model=long_model)
    assert rgb.shape[1] == montage.MIN_WIDTH_PX
    assert all(box[2] <= rgb.shape[1] for _, box, _ in drawn_text)
    model_text = next(t for t, _, _ in drawn_text if t.endswith("fold_0"))
    assert model_text.startswith("...") and len(model_text) < len(long_model)  # cut at the left, the end kept


def test_font_is_scalable_and_bundled():
    from PIL import ImageFont

    small, large = montage.font(10), montage.font(20)
    assert isinstance(large, ImageFont.FreeTypeFont)
    assert large.getbbox("Hg")[3] > 1.6 * small.getbbox("Hg")[3]
    assert small.getlength("R on left") > small.getlength("Ronleft")  # spaces are kept apart


def test_no_rings_round_specks_beside_a_large_lesion(make_case):
    block = [(0, y, x) for y in range(10, 20) for x in range(10, 20)]
    alone = _bright_case(make_case, [(0, 30, 30)])
    beside = _bright_case(make_case, block + [(0, 30, 30)])
    block_only = _bright_case(make_case, block)
    count = [_red(montage.render_montage(c, c.label, channels=(isles.CT,), max_slices=1, annotate=False)).sum()
             for c in (alone, beside, block_only)]
    # The speck alone is ringed (more red than the block's outline minus its own); beside a large lesion it only
    # adds its outline (at most 8 x scale pixels).
    scale = montage.MIN_TILE_PX // 40 + 1
    assert count[0] > 40 and 0 < count[1] - count[2] <= 8 * scale
