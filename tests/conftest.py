"""Shared test helpers: small hand-made ISLES-like cases (no files, no reader, no synthetic generator)."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import pytest

from strokenet_tf.data import isles


def build_case(depth=4, height=32, width=32, rng=None, case_id="case_1", lesion=True, channels=isles.DEFAULT_CHANNELS):
    """An `isles.Case` with an elliptical brain, ISLES-like value ranges and a spherical lesion blob.

    CT in HU (~30 in brain, -1000 outside), CBF/CBV in a vendor-like scale (0 outside the brain, low in the
    lesion), MTT/Tmax in seconds (high in the lesion). The label is the blob (all zeros with lesion=False).
    """
    rng = np.random.default_rng(0) if rng is None else rng
    d, h, w = np.meshgrid(np.arange(depth), np.arange(height), np.arange(width), indexing="ij")
    brain = ((h - (height - 1) / 2) / (0.42 * height)) ** 2 + ((w - (width - 1) / 2) / (0.36 * width)) ** 2 < 1.0
    centre = (rng.integers(0, depth), rng.uniform(0.35, 0.65) * height, rng.uniform(0.3, 0.45) * width)
    radius = max(2.0, 0.12 * min(height, width))
    blob = ((d - centre[0]) * 0.5) ** 2 + (h - centre[1]) ** 2 + (w - centre[2]) ** 2 < radius**2
    blob &= brain
    if not lesion:
        blob[:] = False
    noise = lambda scale: rng.normal(0.0, scale, brain.shape)  # noqa: E731
    maps = {
        isles.CT: np.where(brain, 30.0 + noise(5.0), -1000.0),
        isles.CBF: np.where(brain, np.where(blob, 600.0, 3000.0) + noise(200.0), 0.0),
        isles.CBV: np.where(brain, np.where(blob, 100.0, 400.0) + noise(30.0), 0.0),
        isles.MTT: np.where(brain, np.where(blob, 12.0, 5.0) + noise(0.5), 0.0),
        isles.TMAX: np.where(brain, np.where(blob, 14.0, 2.0) + noise(0.5), 0.0),
    }
    for name in isles.PERFUSION_MAPS:
        maps[name] = np.where(brain, np.maximum(maps[name], 0.01), 0.0)
    image = np.stack([maps[name] for name in channels], axis=-1).astype(np.float32)
    return isles.Case(
        case_id=case_id,
        image=image,
        channels=tuple(channels),
        label=blob.astype(np.uint8),
        affine=np.diag([1.0, 1.0, 5.0, 1.0]),
        spacing_mm=(5.0, 1.0, 1.0),
        source_files={},
    )


@pytest.fixture
def make_case():
    """Factory fixture: make_case(depth, height, width, rng=None, **kwargs) -> isles.Case (see `build_case`)."""
    return build_case


def write_tiny_training_set(tmp_path_factory, size: int = 32) -> str:
    """Six labelled synthetic cases of 2-4 slices of size x size (the trainer tests' dataset); returns the root."""
    from strokenet_tf.data import synthesis

    root = tmp_path_factory.mktemp("isles")
    synthesis.write_dataset(str(root), num_cases=6, seed=0, split="TRAINING", size=size, depths=(2, 4),
                             with_pwi=False)
    return str(root)
