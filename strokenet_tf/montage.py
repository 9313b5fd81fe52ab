"""PNG montage of a prediction: axial slices of every input map with the predicted lesion outlined.

What a clinician or researcher looks at first: one row per axial slice, one column per map (CT, CBF, CBV, MTT,
Tmax), each map windowed from its own 1st-99th percentile inside the brain (summed perfusion > 0, the ISLES
brain mask), so vendor-scaled CBF/CBV display like calibrated ones. The predicted lesion is outlined in red
(its outer boundary, `skimage.segmentation.find_boundaries(mode="outer")`, so the tissue under the outline stays
visible); a ground truth, when given, in green; the Tmax > 6 s hypoperfusion of the perfusion report, when
given, in yellow, with the report's volumes in the top band. Tiles are cropped to the head (brain mask plus a
margin).

Orientation: slices are shown in radiological convention (patient right on the image left, anterior up)
whatever the affine: the arrays are reoriented to the closest RAS axes (`nibabel.orientations.io_orientation`)
for display only. Oblique affines are shown in their closest canonical orientation.

Example:
    >>> rgb = render_montage(case, mask)            # uint8 [rows, cols, 3]
    >>> png = encode_png(rgb)                       # bytes, written atomically by the caller
"""

from __future__ import annotations

import io
from typing import Sequence

import nibabel as nib
import numpy as np
from PIL import Image, ImageDraw
from skimage.segmentation import find_boundaries

from strokenet_tf.data import isles

PREDICTION_RGB = (255, 40, 40)
TRUTH_RGB = (40, 230, 40)
HYPOPERFUSION_RGB = (255, 220, 0)
DEFAULT_MAX_SLICES = 6
_LABEL_BAND_PX = 14
_SHORT_NAMES = {isles.CT: "CT", isles.CBF: "CBF", isles.CBV: "CBV", isles.MTT: "MTT", isles.TMAX: "Tmax",
                isles.PWI: "4DPWI max"}


def choose_slices(mask: np.ndarray, max_slices: int = DEFAULT_MAX_SLICES) -> list[int]:
    """Axial slice indices to show: all when there are at most `max_slices`; else evenly spread over the slices
    that hold the lesion (over all slices when the mask is empty).

    Args:
        mask: [depth, height, width] predicted mask.
        max_slices: most slices to show, >= 1.
    """
    if max_slices < 1:
        raise ValueError(f"max_slices must be >= 1, got {max_slices}")
    depth = mask.shape[0]
    if depth <= max_slices:
        return list(range(depth))
    with_lesion = np.flatnonzero(np.asarray(mask).reshape(depth, -1).any(axis=1))
    first, last = (int(with_lesion[0]), int(with_lesion[-1])) if with_lesion.size else (0, depth - 1)
    if last - first + 1 < max_slices:  # widen the range around the lesion to fill the rows
        first = max(0, min(first - (max_slices - (last - first + 1)) // 2, depth - max_slices))
        last = first + max_slices - 1
    return sorted({int(round(i)) for i in np.linspace(first, last, max_slices)})


def window(values: np.ndarray, inside: np.ndarray) -> np.ndarray:
    """Maps values to [0, 1] between their 1st and 99th percentile inside `inside` (all voxels if it is empty)."""
    sample = values[inside] if inside.any() else values.ravel()
    low, high = np.percentile(sample, [1.0, 99.0]) if sample.size else (0.0, 1.0)
    if not high > low:
        high = low + 1.0
    return np.clip((values - low) / (high - low), 0.0, 1.0)


def _display_transform(affine: np.ndarray):
    """Returns f: [depth, height, width] network-order volume -> [z, y, x] RAS-ordered volume (for display)."""
    ornt = nib.orientations.io_orientation(affine)  # NIfTI axes (i, j, k) -> closest RAS axes

    def transform(volume_dhw: np.ndarray) -> np.ndarray:
        xyz = isles.network_to_nifti(volume_dhw)
        ras = nib.orientations.apply_orientation(xyz, ornt)
        return np.transpose(ras, (2, 1, 0))  # [z (inferior->superior), y (posterior->anterior), x (left->right)]

    return transform


def _crop_box(foreground_zyx: np.ndarray, margin: int = 6) -> tuple[slice, slice]:
    """In-plane (y, x) box around the foreground of any slice, with a margin; the whole plane if it is empty."""
    plane = foreground_zyx.any(axis=0)
    if not plane.any():
        return (slice(None), slice(None))
    box = []
    for axis in (1, 0):
        index = np.flatnonzero(plane.any(axis=axis))
        box.append(slice(max(0, index[0] - margin), min(plane.shape[1 - axis], index[-1] + margin + 1)))
    return tuple(box)


def _radiological(slice_yx: np.ndarray) -> np.ndarray:
    """[y, x] RAS slice -> image rows top=anterior, columns left=patient right."""
    return slice_yx[::-1, ::-1]


def render_montage(case: isles.Case, mask: np.ndarray, truth: np.ndarray | None = None,
                   channels: Sequence[str] | None = None, max_slices: int = DEFAULT_MAX_SLICES,
                   title: str | None = None, hypoperfusion: np.ndarray | None = None,
                   caption: str | None = None) -> np.ndarray:
    """RGB montage of `case` with `mask` outlined.

    Args:
        case: the input case (its image in raw units, its affine decides the display orientation).
        mask: predicted mask [depth, height, width] (network order, like `case.image`).
        truth: optional ground truth, same shape, outlined in green.
        channels: maps to show, in column order; default: every channel of the case.
        max_slices: most axial slices (rows), see `choose_slices`.
        title: text of the top band (default: the case id).
        hypoperfusion: optional Tmax > 6 s mask, same shape, outlined in yellow (under the lesion outlines).
        caption: optional second line of text (e.g. the perfusion report's volumes).

    Returns:
        uint8 [height, width, 3].
    """
    mask = np.asarray(mask) > 0
    if mask.shape != case.image.shape[:3]:
        raise ValueError(f"{case.case_id}: mask shape {mask.shape} differs from image shape {case.image.shape[:3]}")
    channels = tuple(case.channels if channels is None else channels)
    to_display = _display_transform(case.affine)
    perfusion = [case.channels.index(c) for c in isles.PERFUSION_MAPS if c in case.channels]
    brain = (case.image[..., perfusion].sum(axis=-1) > 0) if perfusion else np.ones(mask.shape, bool)
    brain_d, mask_d = to_display(brain), to_display(mask)
    truth_d = None if truth is None else to_display(np.asarray(truth) > 0)
    hypo_d = None if hypoperfusion is None else to_display(np.asarray(hypoperfusion) > 0)
    slices = choose_slices(mask_d, max_slices)
    crop = _crop_box(brain_d | mask_d | (truth_d if truth_d is not None else False))
    windowed = [window(to_display(case.image[..., case.channels.index(c)]), brain_d) for c in channels]
    tiles_by_row = []
    for z in slices:
        row = []
        for grey in windowed:
            rgb = np.repeat(grey[z][..., np.newaxis], 3, axis=-1) * 255.0
            if hypo_d is not None:
                rgb[find_boundaries(hypo_d[z], mode="outer")] = HYPOPERFUSION_RGB
            # Outer boundaries: the outline sits just outside the lesion, so the tissue under it stays visible.
            if truth_d is not None:
                rgb[find_boundaries(truth_d[z], mode="outer")] = TRUTH_RGB
            rgb[find_boundaries(mask_d[z], mode="outer")] = PREDICTION_RGB
            row.append(_radiological(rgb[crop]).astype(np.uint8))
        tiles_by_row.append(row)
    return _assemble(tiles_by_row, [_SHORT_NAMES.get(c, c) for c in channels], slices, mask_d.shape[0],
                     title if title is not None else case.case_id, truth is not None, hypo_d is not None, caption)


def _assemble(tiles, column_names, slices, depth, title, with_truth, with_hypoperfusion=False,
              caption=None) -> np.ndarray:
    tile_h, tile_w = tiles[0][0].shape[:2]
    gap, band = 2, _LABEL_BAND_PX
    left = 34
    top_band = 3 * band if caption else 2 * band
    width = left + len(column_names) * (tile_w + gap)
    height = top_band + len(slices) * (tile_h + gap)
    canvas = np.zeros((height, width, 3), np.uint8)
    for r, row in enumerate(tiles):
        top = top_band + r * (tile_h + gap)
        for c, tile in enumerate(row):
            x = left + c * (tile_w + gap)
            canvas[top:top + tile_h, x:x + tile_w] = tile
    image = Image.fromarray(canvas)
    draw = ImageDraw.Draw(image)
    legend = ("red: predicted lesion" + (", green: ground truth" if with_truth else "")
              + (", yellow: Tmax > 6 s" if with_hypoperfusion else ""))
    draw.text((2, 1), f"{title}   {legend}   (R on left, anterior up)", fill=(255, 255, 255))
    if caption:
        draw.text((2, band + 1), caption, fill=HYPOPERFUSION_RGB)
    for c, name in enumerate(column_names):
        draw.text((left + c * (tile_w + gap) + 2, top_band - band + 1), name, fill=(255, 255, 0))
    for r, z in enumerate(slices):
        draw.text((2, top_band + r * (tile_h + gap) + 2), f"z{z + 1}/{depth}", fill=(255, 255, 0))
    return np.asarray(image)


def encode_png(rgb: np.ndarray) -> bytes:
    """uint8 [height, width, 3] -> PNG bytes (to be written with `data.atomic.atomic_write_bytes`)."""
    buffer = io.BytesIO()
    # zlib level 6 without PIL's `optimize` pass: ~5x faster for ~8% larger files on noisy perfusion maps.
    Image.fromarray(np.asarray(rgb, np.uint8)).save(buffer, format="PNG", compress_level=6)
    return buffer.getvalue()
