"""Head anatomy for synthetic CT perfusion slabs, cut from a real brain template.

The template is the MNI ICBM 2009a symmetric grey- and white-matter probability maps and T1 image (Fonov et
al. 2011, NeuroImage 54:313) as shipped inside nilearn's wheel (`nilearn/datasets/data`), so nothing is
downloaded at run time and nilearn itself is never imported. CSF is what the brain's filled envelope holds
beyond grey and white matter (ventricles, sulci, cisterns); skull and scalp are shells at a random,
smoothly varying distance outside that envelope.

Per case the head is posed in the scanner (random tilt, yaw, roll, scale and a smooth elastic warp) and a
slab of 256 x 256 x Z voxels (~1 mm in-plane, ~5 mm slices) is cut at a random height. Each slab voxel
samples the template blurred along z by a 5 mm slice profile, so thick slices carry partial volumes as real
ones do (a gantry tilt of up to ~18 degrees keeps the slab normal close to the template's z).
All arrays are in network order [depth, height, width]; world coordinates are in mm (scanner RAS).
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.util
import pathlib
from typing import Callable, Sequence

import nibabel as nib
import numpy as np
from scipy import ndimage

TEMPLATE_FILES = {
    "gm": "mni_icbm152_gm_tal_nlin_sym_09a_converted.nii.gz",
    "wm": "mni_icbm152_wm_tal_nlin_sym_09a_converted.nii.gz",
}
TEMPLATE_STEP_MM = 1.0
SLICE_PROFILE_SIGMA_MM = 5.0 / np.sqrt(12.0)  # a 5 mm slice's box profile as a Gaussian, applied along z once
CHANNELS = ("gm", "wm", "csf", "outside_mm")


class TemplateMissingError(RuntimeError):
    """The brain template files (shipped in nilearn's wheel) are not installed."""


def template_dir() -> pathlib.Path:
    """Folder holding the MNI ICBM152 files inside the installed nilearn package (not imported)."""
    spec = importlib.util.find_spec("nilearn")
    if spec is None or not spec.submodule_search_locations:
        raise TemplateMissingError("the brain template needs the nilearn package: pip install nilearn")
    folder = pathlib.Path(list(spec.submodule_search_locations)[0]) / "datasets" / "data"
    missing = [name for name in TEMPLATE_FILES.values() if not (folder / name).is_file()]
    if missing:
        raise TemplateMissingError(f"nilearn's template file {folder / missing[0]} is missing; reinstall nilearn")
    return folder


@dataclasses.dataclass(frozen=True)
class Template:
    """Template channels (`CHANNELS`) stacked on the template grid, [x, y, z, channel] in MNI voxel order.

    gm, wm, csf are fractions; outside_mm is the distance outside the brain envelope (0 inside). All are
    blurred along z by the slice profile. `affine` maps template voxels to MNI mm.
    """

    stack: np.ndarray
    affine: np.ndarray

    @property
    def shape(self) -> tuple[int, int, int]:
        return self.stack.shape[:3]

    def world_grid(self, step: int = 1) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """MNI mm coordinates of every `step`-th template voxel, broadcastable [x, y, z]."""
        axes = [self.affine[a, a] * np.arange(0, n, step) + self.affine[a, 3] for a, n in enumerate(self.shape)]
        return (axes[0].reshape(-1, 1, 1).astype(np.float32), axes[1].reshape(1, -1, 1).astype(np.float32),
                axes[2].reshape(1, 1, -1).astype(np.float32))


@functools.lru_cache(maxsize=1)
def load_template() -> Template:
    """Reads and derives the template once per process (a few seconds)."""
    folder = template_dir()
    images = {key: nib.load(str(folder / name)) for key, name in TEMPLATE_FILES.items()}
    gm = np.asarray(images["gm"].dataobj, dtype=np.float32) / 255.0
    wm = np.asarray(images["wm"].dataobj, dtype=np.float32) / 255.0
    tissue = gm + wm
    # The envelope: brain tissue closed over sulci and filled (ventricles), at 2 mm for speed.
    coarse = ndimage.zoom(tissue, 0.5, order=1) > 0.3
    solid = ndimage.binary_closing(coarse, structure=np.ones((3, 3, 3)), iterations=2)
    solid = ndimage.binary_opening(ndimage.binary_fill_holes(solid), iterations=1)
    outside_mm = ndimage.distance_transform_edt(~solid).astype(np.float32) * 2 * TEMPLATE_STEP_MM
    zoom = [n / c for n, c in zip(gm.shape, solid.shape)]
    outside_mm = ndimage.zoom(outside_mm, zoom, order=1)[: gm.shape[0], : gm.shape[1], : gm.shape[2]]
    outside_mm -= 1.0
    np.clip(outside_mm, 0.0, None, out=outside_mm)
    # In place, the same arithmetic: envelope = max(clip(1 - outside, 0, 1), clip(tissue, 0, 1)), csf = clip(envelope
    # - tissue, 0, 1).
    csf = np.subtract(1.0, outside_mm, dtype=np.float32)
    np.clip(csf, 0.0, 1.0, out=csf)
    np.maximum(csf, np.clip(tissue, 0.0, 1.0), out=csf)
    csf -= tissue
    np.clip(csf, 0.0, 1.0, out=csf)
    # Each channel is blurred along z straight into its place in the stack (the same lines as blurring the stack).
    stack = np.empty(gm.shape + (len(CHANNELS),), np.float32)
    for c, channel in enumerate((gm, wm, csf, outside_mm)):
        ndimage.gaussian_filter1d(channel, SLICE_PROFILE_SIGMA_MM / TEMPLATE_STEP_MM, axis=2, mode="nearest",
                                  output=stack[..., c])
    return Template(stack=np.ascontiguousarray(stack, dtype=np.float32), affine=images["gm"].affine.astype(np.float64))


_POINT_CHUNK = 8192  # points per block in `trilinear`: its temporaries stay in cache


def trilinear(stack: np.ndarray, affine: np.ndarray, points_mm: np.ndarray, outside: Sequence[float]) -> np.ndarray:
    """Samples all channels of `stack` [x, y, z, C] (grid `affine`) at points [..., 3] mm: [..., C].

    One pass of eight gathers serves every channel (map_coordinates would walk the points once per channel).
    Points outside the grid take the channel's `outside` value. Each corner's weight is (wx wy) wz in float64
    and the result is rounded to float32 after each (x, y) corner pair; points go a block at a time, each
    channel a row of float64 temporaries.
    """
    inverse = np.linalg.inv(affine).astype(np.float32)
    indices = points_mm.reshape(-1, 3) @ inverse[:3, :3].T + inverse[:3, 3]
    shape = np.asarray(stack.shape[:3])
    channels = stack.shape[3]
    flat = stack.reshape(-1, channels)
    strides = (int(shape[1] * shape[2]), int(shape[2]), 1)
    fill = np.asarray(outside, np.float32)
    out = np.empty((indices.shape[0], channels), np.float32)
    chunk = max(1, min(_POINT_CHUNK, indices.shape[0]))
    total = np.empty((channels, chunk), np.float32)
    low, high = np.empty((channels, chunk)), np.empty((channels, chunk))  # the corners at z and z + 1
    for start in range(0, indices.shape[0], chunk):
        index = indices[start:start + chunk]
        n = index.shape[0]
        block_total, block_low, block_high = total[:, :n], low[:, :n], high[:, :n]
        block_total.fill(0.0)
        inside = np.all((index >= 0) & (index <= shape - 1), axis=1)
        index = np.clip(index, 0, shape - 1.001)
        base = index.astype(np.int32)
        frac = index - base
        origin = base[:, 0] * strides[0] + base[:, 1] * strides[1] + base[:, 2]
        weights = [(1.0 - frac[:, a], frac[:, a]) for a in range(3)]
        for dx in (0, 1):
            for dy in (0, 1):
                wxy = weights[0][dx] * weights[1][dy]
                row = origin + (dx * strides[0] + dy * strides[1])
                block_low[...] = np.take(flat, row, axis=0).T
                block_high[...] = np.take(flat, row + 1, axis=0).T
                block_low *= wxy * weights[2][0]
                block_high *= wxy * weights[2][1]
                block_low += block_high
                np.add(block_total, block_low, out=block_total, casting="same_kind")
        block = out[start:start + n]
        block[...] = block_total.T
        block[~inside] = fill
    return out.reshape(points_mm.shape[:-1] + (channels,))


# ------------------------------------------------------------------------------------------- pose


def _rotation(angles_deg: Sequence[float]) -> np.ndarray:
    """Rotation about x (pitch), y (roll) and z (yaw), applied in that order."""
    ax, ay, az = np.deg2rad(angles_deg)
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    return rz @ ry @ rx


def smooth_displacement(rng: np.random.Generator, extent_mm: float, sigma_mm: float, amplitude_mm: float):
    """A smooth random vector field (mm -> mm) on a coarse lattice covering +-extent_mm, cubic-interpolated."""
    step = sigma_mm / 2.0
    n = int(np.ceil(2 * extent_mm / step)) + 1
    fields = ndimage.gaussian_filter(rng.standard_normal((3, n, n, n)).astype(np.float32), (0, 2, 2, 2))
    fields *= amplitude_mm / max(float(fields.std()), 1e-6)

    stack = np.ascontiguousarray(np.moveaxis(fields, 0, -1))
    affine = np.diag([step, step, step, 1.0])
    affine[:3, 3] = -extent_mm

    def displace(points_mm: np.ndarray) -> np.ndarray:
        return trilinear(stack, affine, points_mm, outside=(0.0, 0.0, 0.0))

    return displace


@dataclasses.dataclass
class Slab:
    """A slab's scanner grid and the map from its voxels to template mm.

    shape: (depth, height, width); spacing_mm: (slice, row, column); affine: NIfTI voxel (x, y, z) -> scanner mm.
    to_template: scanner mm [..., 3] -> template (MNI) mm [..., 3] (pose and elastic warp).
    """

    shape: tuple[int, int, int]
    spacing_mm: tuple[float, float, float]
    affine: np.ndarray
    codes: tuple[int, int]
    to_template: Callable[[np.ndarray], np.ndarray]
    linear: np.ndarray  # the pose's 3x3 part: a small scanner shift d moves template points by linear @ d
    params: dict

    def scanner_points(self) -> np.ndarray:
        """Scanner mm of every voxel centre, [depth, height, width, 3]."""
        depth, height, width = self.shape
        k, j, i = np.meshgrid(np.arange(depth, dtype=np.float32), np.arange(height, dtype=np.float32),
                              np.arange(width, dtype=np.float32), indexing="ij")
        voxels = np.stack([i, j, k], axis=-1)
        return voxels @ self.affine[:3, :3].T.astype(np.float32) + self.affine[:3, 3].astype(np.float32)

    def template_points(self, shift_mm: Sequence[float] = (0.0, 0.0, 0.0)) -> np.ndarray:
        """Template mm of every voxel centre, [depth, height, width, 3], optionally shifted in the scanner."""
        return self.to_template(self.scanner_points() + np.asarray(shift_mm, np.float32))


def make_slab(rng: np.random.Generator, size: int, depths: Sequence[int], elastic: bool = True) -> Slab:
    """Draws the slab geometry and the head's pose in the scanner."""
    depth = int(rng.choice(np.asarray(depths)))
    inplane_mm = float(rng.uniform(0.8, 1.0)) * 256.0 / size  # constant field of view at any size
    slice_mm = 5.0 if rng.random() < 0.6 else round(float(rng.uniform(4.0, 6.0)), 1)
    signs = (-1.0 if rng.random() < 0.5 else 1.0, -1.0 if rng.random() < 0.25 else 1.0, 1.0)
    nifti_shape = (size, size, depth)
    affine = np.eye(4)
    for axis, (n, step, sign) in enumerate(zip(nifti_shape, (inplane_mm, inplane_mm, slice_mm), signs)):
        affine[axis, axis] = sign * step
        affine[axis, 3] = -sign * step * (n - 1) / 2.0
    # Pose: the slab centre sits at a random height of the supratentorial brain (thin slabs nearer the
    # basal ganglia, where clinicians place them), tilted like a gantry along the orbito-meatal line.
    span_mm = depth * slice_mm
    low, high = -20.0 + min(span_mm, 100.0) * 0.35, 45.0 - min(span_mm, 100.0) * 0.3
    centre = np.array([rng.uniform(-4, 4), rng.uniform(-22, -8), rng.uniform(min(low, high), max(low, high))])
    angles = (rng.uniform(-18, 12), rng.uniform(-5, 5), rng.uniform(-7, 7))
    scale = rng.uniform(0.9, 1.1, 3) * rng.uniform(0.95, 1.05)
    linear = _rotation(angles) @ np.diag(1.0 / scale)
    displace = smooth_displacement(rng, 140.0, 24.0, float(rng.uniform(1.5, 4.0))) if elastic else None

    def to_template(points_mm: np.ndarray) -> np.ndarray:
        moved = points_mm @ linear.T.astype(np.float32) + centre.astype(np.float32)
        return moved + displace(points_mm) if displace is not None else moved

    codes = (1, 0) if rng.random() < 0.2 else (1, 1)
    params = {"depth": depth, "spacing_mm": (slice_mm, inplane_mm, inplane_mm), "pose_deg": [round(a, 1) for a in angles],
              "centre_mm": [round(float(c), 1) for c in centre], "scale": [round(float(s), 3) for s in scale]}
    return Slab((depth, size, size), (slice_mm, inplane_mm, inplane_mm), affine, codes, to_template, linear, params)


def make_head(rng: np.random.Generator, slab: Slab, template: Template | None = None) -> dict:
    """Tissue fractions of one slab: grey, white, CSF, bone, scalp (they sum to <= 1; the rest is air).

    Returns dict of float32 [depth, height, width] arrays plus "points" (template mm of each voxel, for
    sampling pathology in the same pose), "outside_mm" and "brain" (bool: grey + white + CSF > 0.5).
    """
    template = template or load_template()
    points = slab.template_points()
    sampled = trilinear(template.stack, template.affine, points, outside=(0.0, 0.0, 0.0, 60.0))
    out = {key: np.ascontiguousarray(sampled[..., c]) for c, key in enumerate(CHANNELS)}
    outside = out["outside_mm"]
    # Skull: a shell 1-3 mm outside the envelope, 5-9 mm thick, thickness varying smoothly around the head.
    gap = 1.0 + 2.0 * rng.random()
    thickness = rng.uniform(5.0, 9.0) * (1.0 + 0.25 * _coarse_field(rng, slab.shape))
    inner = np.clip(outside - gap, 0.0, None)
    bone = np.clip(inner, 0.0, 1.0) * np.clip(thickness - inner, 0.0, 1.0)
    scalp_start = gap + thickness
    scalp = np.clip(outside - scalp_start, 0.0, 1.0) * np.clip(scalp_start + rng.uniform(4, 7) - outside, 0.0, 1.0)
    rest = np.clip(1.0 - out["gm"] - out["wm"] - out["csf"], 0.0, 1.0)
    out["csf"] = out["csf"] + rest * np.clip(gap - outside, 0.0, 1.0) * (outside > 0)
    out["bone"], out["scalp"] = bone.astype(np.float32), scalp.astype(np.float32)
    out["points"] = points
    out["brain"] = (out["gm"] + out["wm"] + out["csf"]) > 0.5
    return out


def _coarse_field(rng: np.random.Generator, shape: Sequence[int]) -> np.ndarray:
    """A smooth unit-std field over a slab (features ~ a quarter of the field of view)."""
    coarse = rng.standard_normal((max(2, shape[0] // 4 + 2), 6, 6)).astype(np.float32)
    zoom = [s / c for s, c in zip(shape, coarse.shape)]
    field = ndimage.zoom(coarse, zoom, order=1)[: shape[0], : shape[1], : shape[2]]
    return (field - field.mean()) / max(float(field.std()), 1e-6)
