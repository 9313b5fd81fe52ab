"""Tests for strokenet_tf.data.isles: the ISLES 2018 reader and geometry-preserving writer."""

from __future__ import annotations

import logging
import os
import pathlib

import nibabel as nib
import numpy as np
import pytest

from strokenet_tf.data import isles, synthesis

SHAPE = (8, 6, 3)  # NIfTI (x, y, z)
AFFINE = np.array([[-0.9, 0, 0, 90.0], [0, 0.9, 0, -100.0], [0, 0, 5.0, -20.0], [0, 0, 0, 1]])
# One distinct value per modality, so a mix-up between e.g. CT and CT_CBF shows.
VALUE = {isles.CT: 30.0, isles.CBF: 55.0, isles.CBV: 3.5, isles.MTT: 4.25, isles.TMAX: 1.5}


def _write(case_dir, modality, data, affine=AFFINE, ident=None, suffix=".nii", folder=True, dtype=None):
    """Writes one modality in the ISLES layout and returns the file path."""
    case_dir = pathlib.Path(case_dir)
    ident = ident if ident is not None else 100000 + 7919 * isles.ALL_MODALITIES.index(modality)
    name = f"SMIR.Brain.XX.O.{modality}.{ident}"
    directory = case_dir / name if folder else case_dir
    directory.mkdir(parents=True, exist_ok=True)
    data = np.asarray(data, dtype=dtype) if dtype is not None else np.asarray(data)
    image = nib.Nifti1Image(data, affine)
    image.set_qform(affine, code=1)
    image.set_sform(affine, code=1)
    image.header.set_xyzt_units("mm", "sec")
    path = directory / (name + suffix)
    nib.save(image, str(path))
    return path


def _make_case(case_dir, modalities=isles.DEFAULT_CHANNELS, label=True, **kwargs):
    paths = {m: _write(case_dir, m, np.full(SHAPE, VALUE[m], np.float32), **kwargs) for m in modalities}
    if label:
        ot = np.zeros(SHAPE, np.uint8)
        ot[2:4, 1:3, 1] = 1
        paths[isles.LABEL] = _write(case_dir, isles.LABEL, ot, **kwargs)
    return paths


def _patch_header(path, **fields):
    """Rewrites header fields of an uncompressed .nii in place (to make files nibabel would not write)."""
    with open(path, "r+b") as handle:
        header = nib.Nifti1Header.from_fileobj(handle)
        for key, value in fields.items():
            header[key] = value
        handle.seek(0)
        handle.write(header.binaryblock)


# ----------------------------------------------------------------------------------- round trips


def test_synthetic_round_trip_matches_generator(tmp_path):
    synthesis.write_dataset(tmp_path, 2, seed=3, size=24, depths=(2, 4), with_pwi=False)
    cases = isles.load_cases(tmp_path, require_label=True)
    assert [c.case_id for c in cases] == ["case_1", "case_2"]
    for index, case in enumerate(cases, start=1):
        expected = synthesis.synthesize_case(
            synthesis.case_rng(3, "TRAINING", index), size=24, depths=(2, 4), with_pwi=False
        )
        depth = expected["maps"][isles.CT].shape[2]
        assert case.image.shape == (depth, 24, 24, 5)
        assert case.image.dtype == np.float32 and case.image.flags.c_contiguous
        assert case.channels == isles.DEFAULT_CHANNELS
        for c, modality in enumerate(isles.DEFAULT_CHANNELS):
            np.testing.assert_array_equal(case.image[..., c], isles.nifti_to_network(expected["maps"][modality]))
        assert case.label.dtype == np.uint8 and set(np.unique(case.label)) <= {0, 1}
        np.testing.assert_array_equal(case.label, isles.nifti_to_network(expected["maps"][isles.LABEL]))
        np.testing.assert_allclose(case.affine, expected["affine"], atol=1e-4)
        np.testing.assert_allclose(case.spacing_mm, tuple(reversed(expected["zooms_mm"])), rtol=1e-6)
        assert case.nifti_shape == expected["maps"][isles.CT].shape
        assert set(case.source_files) == set(isles.DEFAULT_CHANNELS) | {isles.LABEL}
        assert case.nonfinite_voxels == {}


def test_isles_storage_reads_vendor_scaled_integers(tmp_path):
    synthesis.write_dataset(tmp_path, 1, seed=4, size=24, depths=(2,), storage="isles", with_pwi=False)
    case = isles.read_case(tmp_path / "TRAINING" / "case_1")
    expected = synthesis.synthesize_case(synthesis.case_rng(4, "TRAINING", 1), size=24, depths=(2,), with_pwi=False)
    maps, scale = expected["maps"], expected["vendor_scale"]
    assert nib.load(case.source_files[isles.CBF]).get_data_dtype() == np.uint16
    np.testing.assert_array_equal(case.image[..., 1], isles.nifti_to_network(np.rint(maps[isles.CBF] * scale[isles.CBF])))
    np.testing.assert_array_equal(case.image[..., 2], isles.nifti_to_network(np.rint(maps[isles.CBV] * scale[isles.CBV])))
    np.testing.assert_array_equal(case.image[..., 0], isles.nifti_to_network(np.rint(maps[isles.CT])))
    np.testing.assert_allclose(case.image[..., 3], isles.nifti_to_network(maps[isles.MTT]), rtol=1e-6)


@pytest.mark.parametrize("summary", ["max", "mean"])
def test_pwi_channel_is_summarised_over_time(tmp_path, summary):
    synthesis.write_dataset(tmp_path, 1, seed=5, size=16, depths=(2,), with_pwi=True)
    case = isles.read_case(tmp_path / "TRAINING" / "case_1", channels=(isles.CT, isles.PWI), pwi_summary=summary)
    pwi = synthesis.synthesize_case(synthesis.case_rng(5, "TRAINING", 1), size=16, depths=(2,))["maps"][isles.PWI]
    assert pwi.ndim == 4 and 43 <= pwi.shape[3] <= 49
    reduced = pwi.max(axis=3) if summary == "max" else pwi.mean(axis=3)
    np.testing.assert_allclose(case.image[..., 1], isles.nifti_to_network(reduced).astype(np.float32), rtol=1e-6)


def test_scaled_int16_reads_physical_values(tmp_path):
    raw = np.arange(np.prod(SHAPE), dtype=np.int16).reshape(SHAPE)
    path = _write(tmp_path / "case_1", isles.CT, raw)
    _patch_header(path, scl_slope=2.0, scl_inter=10.0)
    case = isles.read_case(tmp_path / "case_1", channels=(isles.CT,))
    np.testing.assert_array_equal(case.image[..., 0], isles.nifti_to_network(raw * 2.0 + 10.0))


def test_gz_flipped_affine_and_two_slice_slab(tmp_path):
    shape = (8, 6, 2)
    affine = np.diag([-0.85, -0.85, 5.0, 1.0])
    affine[:3, 3] = [100.0, 110.0, -5.0]
    data = np.random.default_rng(0).normal(size=shape).astype(np.float32)
    for modality in isles.DEFAULT_CHANNELS:
        _write(tmp_path / "case_1", modality, data + VALUE[modality], affine=affine, suffix=".nii.gz")
    case = isles.read_case(tmp_path / "case_1")
    assert case.image.shape == (2, 6, 8, 5)
    np.testing.assert_allclose(case.affine, affine, atol=1e-5)
    np.testing.assert_allclose(case.spacing_mm, (5.0, 0.85, 0.85), rtol=1e-6)
    np.testing.assert_allclose(case.image[..., 2], isles.nifti_to_network(data + VALUE[isles.CBV]), rtol=1e-6)


def test_ct_is_not_confused_with_ct_cbf_and_ids_are_ignored(tmp_path):
    case_dir = tmp_path / "case_1"
    # CT_CBF sorts before CT's folder by id; ids are arbitrary.
    for modality, ident in zip(isles.DEFAULT_CHANNELS, (999999, 100001, 523412, 345678, 100000)):
        _write(case_dir, modality, np.full(SHAPE, VALUE[modality], np.float32), ident=ident)
    case = isles.read_case(case_dir)
    assert [float(case.image[..., c].mean()) for c in range(5)] == [VALUE[m] for m in isles.DEFAULT_CHANNELS]
    assert isles.parse_modality_name("SMIR.Brain.XX.O.CT.345562") == isles.CT
    assert isles.parse_modality_name("SMIR.Brain.XX.O.CT_CBF.345563.nii.gz") == isles.CBF
    assert isles.parse_modality_name("SMIR.Brain.XX.O.CT_4DPWI.1.nii") == isles.PWI
    assert isles.parse_modality_name("notes.txt") is None


def test_case_folder_with_files_directly(tmp_path):
    _make_case(tmp_path / "case_7", folder=False)
    case = isles.read_case(tmp_path / "case_7", require_label=True)
    assert case.label.sum() == 4
    assert isles.find_case_dirs(tmp_path / "case_7") == [tmp_path / "case_7"]


def test_find_case_dirs_splits_letter_case_and_natural_order(tmp_path):
    for name in ("case_10", "case_2", "case_1"):
        _make_case(tmp_path / "training" / name)
    _make_case(tmp_path / "TESTING" / "case_3", label=False)
    (tmp_path / "training" / "__MACOSX").mkdir()
    names = [(p.parent.name, p.name) for p in isles.find_case_dirs(tmp_path)]
    assert names == [("training", "case_1"), ("training", "case_2"), ("training", "case_10"), ("TESTING", "case_3")]
    assert [p.name for p in isles.find_case_dirs(tmp_path, split="testing")] == ["case_3"]
    assert [p.name for p in isles.find_case_dirs(tmp_path / "training")] == ["case_1", "case_2", "case_10"]
    assert isles.find_case_dirs(tmp_path / "training", split="TESTING") == []
    cases = isles.load_cases(tmp_path, split="TRAINING", require_label=True)
    assert [c.case_id for c in cases] == ["case_1", "case_2", "case_10"]
    testing = isles.load_cases(tmp_path, split="TESTING")
    assert testing[0].label is None and isles.LABEL not in testing[0].source_files


def test_non_finite_voxels_are_zeroed_counted_and_logged(tmp_path, caplog):
    _make_case(tmp_path / "case_1")
    bad = np.full(SHAPE, VALUE[isles.MTT], np.float32)
    bad[0, 0, 0], bad[1, 0, 0], bad[2, 0, 0] = np.nan, np.inf, -np.inf
    bad_path = _write(tmp_path / "case_1", isles.MTT, bad)
    with caplog.at_level(logging.WARNING):
        case = isles.read_case(tmp_path / "case_1")
    assert case.nonfinite_voxels == {isles.MTT: 3}
    mtt = isles.network_to_nifti(case.image[..., 3])
    assert mtt[0, 0, 0] == mtt[1, 0, 0] == mtt[2, 0, 0] == 0.0
    assert np.isfinite(case.image).all()
    assert any(bad_path.name in r.getMessage() and "3" in r.getMessage() for r in caplog.records)


def test_five_dimensional_trailing_singletons_are_squeezed(tmp_path):
    _make_case(tmp_path / "case_1")
    _write(tmp_path / "case_1", isles.TMAX, np.full(SHAPE + (1, 1), 2.0, np.float32))
    case = isles.read_case(tmp_path / "case_1")
    assert case.image.shape == (3, 6, 8, 5) and float(case.image[..., 4].max()) == 2.0


# --------------------------------------------------------------------------------------- errors


def _missing_modality(case_dir):
    _make_case(case_dir)
    for p in case_dir.glob("SMIR.Brain.XX.O.CT_MTT.*"):
        for f in p.iterdir():
            f.unlink()
        p.rmdir()
    return "CT_MTT"


def _shape_mismatch(case_dir):
    _make_case(case_dir)
    return _write(case_dir, isles.CBV, np.zeros((8, 6, 4), np.float32)).name


def _affine_mismatch(case_dir):
    _make_case(case_dir)
    shifted = AFFINE.copy()
    shifted[0, 3] += 0.5
    return _write(case_dir, isles.TMAX, np.zeros(SHAPE, np.float32), affine=shifted).name


def _four_d_ct(case_dir):
    _make_case(case_dir)
    return _write(case_dir, isles.CT, np.zeros(SHAPE + (3,), np.float32)).name


def _truncated(case_dir):
    paths = _make_case(case_dir)
    data = paths[isles.CBF].read_bytes()
    paths[isles.CBF].write_bytes(data[: len(data) - 100])
    return paths[isles.CBF].name


def _truncated_gz(case_dir):
    paths = _make_case(case_dir, suffix=".nii.gz")
    noisy = np.random.default_rng(0).normal(size=(32, 32, 4)).astype(np.float32)  # incompressible
    for modality in isles.DEFAULT_CHANNELS:
        path = _write(case_dir, modality, noisy, suffix=".nii.gz")
    _write(case_dir, isles.LABEL, np.zeros((32, 32, 4), np.uint8), suffix=".nii.gz")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 2000])  # header intact, voxel data cut short
    return path.name


def _truncated_gz_header(case_dir):
    paths = _make_case(case_dir, suffix=".nii.gz")
    data = paths[isles.CBF].read_bytes()
    paths[isles.CBF].write_bytes(data[:40])
    return paths[isles.CBF].name


def _garbage(case_dir):
    paths = _make_case(case_dir)
    paths[isles.CT].write_bytes(b"not a nifti file" * 40)
    return paths[isles.CT].name


def _empty_case(case_dir):
    case_dir.mkdir(parents=True)
    return "empty"


def _two_files_one_modality(case_dir):
    _make_case(case_dir)
    _write(case_dir, isles.CBF, np.zeros(SHAPE, np.float32), ident=777777)
    return "two files"


def _non_finite_affine(case_dir):
    paths = _make_case(case_dir)
    _patch_header(paths[isles.CBV], srow_x=[np.nan, 0, 0, 90.0])
    return paths[isles.CBV].name


def _zero_voxel_size(case_dir):
    paths = _make_case(case_dir)
    pixdim = nib.load(paths[isles.MTT]).header["pixdim"].copy()
    pixdim[2] = 0.0
    _patch_header(paths[isles.MTT], pixdim=pixdim)
    return paths[isles.MTT].name


def _negative_voxel_size(case_dir):
    paths = _make_case(case_dir)
    pixdim = nib.load(paths[isles.CBF]).header["pixdim"].copy()
    pixdim[3] = -5.0
    _patch_header(paths[isles.CBF], pixdim=pixdim)
    return paths[isles.CBF].name


def _label_shape_mismatch(case_dir):
    _make_case(case_dir)
    return _write(case_dir, isles.LABEL, np.zeros((8, 6, 2), np.uint8)).name


ERROR_CASES = [
    _missing_modality, _shape_mismatch, _affine_mismatch, _four_d_ct, _truncated, _truncated_gz,
    _truncated_gz_header, _garbage,
    _empty_case, _two_files_one_modality, _non_finite_affine, _zero_voxel_size, _negative_voxel_size,
    _label_shape_mismatch,
]


@pytest.mark.parametrize("make", ERROR_CASES, ids=[f.__name__.strip("_") for f in ERROR_CASES])
def test_bad_input_raises_one_line_error_naming_case_and_file(tmp_path, make):
    case_dir = tmp_path / "TRAINING" / "case_4"
    needle = make(case_dir)
    with pytest.raises(isles.IslesFormatError) as raised:
        isles.load_cases(tmp_path)
    message = str(raised.value)
    assert "\n" not in message
    assert message.startswith("case_4:")
    assert needle in message


def test_missing_label_when_required_and_empty_root(tmp_path):
    _make_case(tmp_path / "case_1", label=False)
    with pytest.raises(isles.IslesFormatError, match=r"case_1: no ground truth \(OT\)"):
        isles.read_case(tmp_path / "case_1", require_label=True)
    (tmp_path / "nothing").mkdir()
    with pytest.raises(isles.IslesFormatError, match="no ISLES case folders"):
        isles.load_cases(tmp_path / "nothing")
    with pytest.raises(isles.IslesFormatError, match="does not exist"):
        isles.find_case_dirs(tmp_path / "absent")


def test_problems_with_unrequested_modalities_are_ignored(tmp_path):
    _make_case(tmp_path / "case_1")
    (tmp_path / "case_1" / "SMIR.Brain.XX.O.CT_4DPWI.123456").mkdir()  # empty, but not asked for
    assert isles.read_case(tmp_path / "case_1").image.shape[-1] == 5
    with pytest.raises(isles.IslesFormatError, match="holds no .nii"):
        isles.read_case(tmp_path / "case_1", channels=(isles.CT, isles.PWI))


# --------------------------------------------------------------------------------------- writing


@pytest.mark.parametrize("suffix", [".nii", ".nii.gz"])
def test_write_nifti_like_keeps_reference_geometry(tmp_path, suffix):
    case_dir = tmp_path / "case_1"
    paths = _make_case(case_dir)
    # A reference with different qform and sform codes, as scanners write them.
    reference_image = nib.load(paths[isles.CT])
    reference_image.set_qform(AFFINE, code=1)
    reference_image.set_sform(AFFINE, code=2)
    nib.save(reference_image, str(paths[isles.CT]))
    case = isles.read_case(case_dir, require_label=True)
    mask = np.zeros(case.image.shape[:3], np.uint8)
    mask[1, 2:4, 3:6] = 1

    (tmp_path / "out").mkdir()
    out = isles.write_nifti_like(mask, case, tmp_path / "out" / f"prediction{suffix}")
    written = nib.load(out)
    reference = nib.load(paths[isles.CT]).header
    assert written.get_data_dtype() == np.uint8
    np.testing.assert_array_equal(np.asarray(written.dataobj), isles.network_to_nifti(mask))
    np.testing.assert_allclose(written.affine, case.affine, atol=1e-6)
    assert int(written.header["qform_code"]) == 1 and int(written.header["sform_code"]) == 2
    np.testing.assert_allclose(written.header.get_qform(), reference.get_qform())
    np.testing.assert_allclose(written.header.get_sform(), reference.get_sform())
    assert written.header.get_zooms() == reference.get_zooms()
    assert written.header.get_xyzt_units() == ("mm", "sec")
    assert sorted(os.listdir(tmp_path / "out")) == [f"prediction{suffix}"]
    # And the written file reads back through the reader as the same label.
    relabel = isles.read_modality_files({isles.CT: paths[isles.CT]}, "case_1", label_file=out)
    np.testing.assert_array_equal(relabel.label, mask)


def test_write_nifti_like_without_stored_header_and_float_output(tmp_path):
    _make_case(tmp_path / "case_1")
    case = isles.read_case(tmp_path / "case_1")
    bare = isles.Case(case.case_id, case.image, case.channels, None, case.affine, case.spacing_mm, case.source_files)
    probabilities = np.linspace(0, 1, case.image[..., 0].size, dtype=np.float32).reshape(case.image.shape[:3])
    out = isles.write_nifti_like(probabilities, bare, tmp_path / "p.nii.gz", dtype=np.float32)
    np.testing.assert_array_equal(nib.load(out).get_fdata(dtype=np.float32), isles.network_to_nifti(probabilities))


def test_write_nifti_like_refuses_inputs_and_bad_shapes(tmp_path):
    paths = _make_case(tmp_path / "case_1")
    case = isles.read_case(tmp_path / "case_1", require_label=True)
    before = paths[isles.LABEL].read_bytes()
    for target in (paths[isles.LABEL], paths[isles.CT].parent / ".." / paths[isles.CT].parent.name / paths[isles.CT].name):
        with pytest.raises(ValueError, match="refusing to overwrite input"):
            isles.write_nifti_like(case.label, case, target)
    assert paths[isles.LABEL].read_bytes() == before
    with pytest.raises(ValueError, match=r"expected \(3, 6, 8\)"):
        isles.write_nifti_like(np.zeros((3, 6, 7)), case, tmp_path / "x.nii")
    with pytest.raises(ValueError, match=r"\.nii or \.nii\.gz"):
        isles.write_nifti_like(case.label, case, tmp_path / "x.mha")
