"""Tests for strokenet_tf.data.anatomy and pathology: the brain template, slab geometry, sampling, lesions."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from strokenet_tf.data import anatomy, pathology


def test_template_comes_from_the_installed_package_and_looks_like_a_brain():
    template = anatomy.load_template()
    gm, wm, csf, outside = (template.stack[..., c] for c in range(4))
    assert template.shape == (197, 233, 189)  # MNI ICBM152 2009a at 1 mm
    brain_ml = float((gm + wm).sum()) / 1000.0
    assert 1000 < brain_ml < 1700  # an adult brain's grey + white matter
    assert 0.05 < float(csf.sum()) / float((gm + wm + csf).sum()) < 0.35
    centre = tuple(np.round(np.linalg.solve(template.affine, [0, -15, 15, 1])[:3]).astype(int))
    assert outside[centre] == 0 and outside[0, 0, 0] > 20  # inside the envelope at the centre, far out at a corner


def test_trilinear_matches_scipy_map_coordinates():
    rng = np.random.default_rng(0)
    stack = rng.standard_normal((9, 10, 11, 2)).astype(np.float32)
    affine = np.diag([2.0, 1.5, 3.0, 1.0])
    affine[:3, 3] = (-5.0, 2.0, 1.0)
    points = rng.uniform(-3, 25, (4, 5, 3)).astype(np.float32)
    sampled = anatomy.trilinear(stack, affine, points, outside=(7.0, -7.0))
    index = np.moveaxis(points @ np.linalg.inv(affine)[:3, :3].T + np.linalg.inv(affine)[:3, 3], -1, 0)
    inside = np.all((index >= 0) & (index <= np.array(stack.shape[:3]).reshape(3, 1, 1) - 1), axis=0)
    for channel, fill in enumerate((7.0, -7.0)):
        expected = ndimage.map_coordinates(stack[..., channel], index, order=1)
        np.testing.assert_allclose(sampled[..., channel][inside], expected[inside], atol=1e-4)
        assert (sampled[..., channel][~inside] == fill).all()
    assert inside.any() and (~inside).any()


def test_slab_geometry_and_head():
    rng = np.random.default_rng(1)
    slab = anatomy.make_slab(rng, 64, (8,))
    assert slab.shape == (8, 64, 64)
    slice_mm, row_mm, col_mm = slab.spacing_mm
    assert 4.0 <= slice_mm <= 6.0 and row_mm == col_mm and 3.2 <= row_mm <= 4.0  # FOV 205-256 mm
    np.testing.assert_allclose(np.abs(np.diag(slab.affine)[:3]), (col_mm, row_mm, slice_mm))
    head = anatomy.make_head(rng, slab)
    fractions = sum(head[k] for k in ("gm", "wm", "csf", "bone", "scalp"))
    assert fractions.max() <= 1.01 and fractions.min() >= 0  # soft shells may overlap by a hair
    assert head["bone"].max() > 0.9 and head["brain"].mean() > 0.2
    assert head["brain"][:, 0, 0].sum() == 0  # corners are air
    assert head["points"].shape == (8, 64, 64, 3)


@pytest.mark.parametrize("kind", pathology.LESION_TYPE_NAMES)
def test_each_lesion_type_has_a_core_inside_its_hypoperfusion(kind):
    with_core = 0
    for seed in range(3):
        case = pathology.make_pathology(np.random.default_rng(seed), lesion_types=(kind,), step=pathology.COARSE_STEP_MM)
        assert case["params"]["lesion_type"] == kind
        channels = dict(zip(pathology.CHANNELS, np.moveaxis(case["stack"], -1, 0)))
        core = channels["core"] > pathology.CORE_SEVERITY
        assert (case["label"] >= 0).all() and (case["label"] <= 1).all()
        if core.any():  # a territory's edge can keep a draw's core below the threshold (simulate draws again)
            with_core += 1
            assert np.median(channels["hypo"][core]) > 0.3  # the core lies in the hypoperfused tissue
    assert with_core >= 2


def test_physiology_core_has_low_flow_and_hypoperfusion_is_late():
    zeros = np.zeros(3, np.float32)
    fields = {"core": np.array([0.0, 0.0, 0.9], np.float32), "hypo": np.array([0.0, 0.8, 0.8], np.float32),
              "contra": zeros, "leuko": zeros, "old": zeros}
    cbf_rel, cbv_rel, delay, dispersion = pathology.physiology(fields)
    assert cbf_rel[0] == pytest.approx(1.0) and cbf_rel[2] < 0.3 * cbf_rel[0] < cbf_rel[1]
    assert delay[0] < 1.0 < 6.0 < delay[1] < delay[2]
    _, _, slow_delay, _ = pathology.physiology(fields, collateral_delay=1.5)
    assert slow_delay[1] > delay[1] and slow_delay[0] == pytest.approx(delay[0])
    assert dispersion[1] > dispersion[0] and cbv_rel[2] < 1.0
