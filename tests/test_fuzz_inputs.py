"""Odd and damaged NIfTI inputs for the ISLES reader (`strokenet_tf.data.isles`) and for `strokenet_tf.predict`.

Hand-made files, seeded: corrupt, truncated and header-only files, random bytes, broken gzip streams, voxel
types the reader cannot use, zero-size and oversized dimensions, absurd voxel sizes, 2D/4D/5D volumes where 3D
is expected. Each either raises `isles.IslesFormatError` with one line naming the case and the file, or has a
documented behaviour pinned here (1-slice slabs, integer types, NaN/Inf and out-of-float32-range voxels, label
values other than 0/1, a 3D CT_4DPWI). A `python -m strokenet_tf.predict` run over a folder mixing good and bad
cases writes the good ones, reports and skips the bad ones, exits 1, and leaves every input byte-identical.
(test_isles.py covers the basic refusals: missing modality, mismatched grids, 4D CT, truncated data, zero or
negative voxel size, non-finite affine; they are not repeated here.)
"""

from __future__ import annotations

import gzip
import hashlib
import json
import logging
import os
import pathlib
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest

from strokenet_tf.data import isles

REPO = pathlib.Path(__file__).resolve().parents[1]
SHAPE = (20, 18, 2)  # NIfTI (x, y, z)
AFFINE = np.array([[-0.9, 0, 0, 90.0], [0, 0.9, 0, -100.0], [0, 0, 5.0, -20.0], [0, 0, 0, 1]])
MODALITIES = isles.DEFAULT_CHANNELS


def _rng(name: str) -> np.random.Generator:
    return np.random.default_rng(int.from_bytes(hashlib.sha256(name.encode()).digest()[:4], "little"))


def write_nifti(path, data, affine=AFFINE, dtype=None) -> pathlib.Path:
    data = np.asarray(data)
    image = nib.Nifti1Image(data, affine, dtype=dtype or data.dtype)
    image.set_qform(affine, code=1)
    image.set_sform(affine, code=1)
    image.header.set_xyzt_units("mm", "sec")
    nib.save(image, str(path))
    return pathlib.Path(path)


def modality_path(case_dir, modality, suffix=".nii") -> pathlib.Path:
    ident = 200000 + isles.ALL_MODALITIES.index(modality)
    folder = pathlib.Path(case_dir) / f"SMIR.Brain.XX.O.{modality}.{ident}"
    folder.mkdir(parents=True, exist_ok=True)
    return folder / f"SMIR.Brain.XX.O.{modality}.{ident}{suffix}"


def write_case(case_dir, rng, shape=SHAPE, suffix=".nii", label=True) -> dict[str, pathlib.Path]:
    """A plausible case: a bright disc of brain with a darker lesion in the perfusion maps."""
    x, y = np.meshgrid(np.arange(shape[0]), np.arange(shape[1]), indexing="ij")
    brain = ((x - shape[0] / 2) / (0.4 * shape[0])) ** 2 + ((y - shape[1] / 2) / (0.4 * shape[1])) ** 2 < 1
    lesion = brain & (x < shape[0] / 2) & (y < shape[1] / 2)
    brain, lesion = (np.repeat(m[..., None], shape[2], axis=2) for m in (brain, lesion))
    base = {isles.CT: (30.0, -1000.0, 30.0), isles.CBF: (3000.0, 0.0, 600.0), isles.CBV: (400.0, 0.0, 100.0),
            isles.MTT: (5.0, 0.0, 12.0), isles.TMAX: (2.0, 0.0, 14.0)}
    paths = {}
    for modality in MODALITIES:
        inside, outside, in_lesion = base[modality]
        volume = np.where(brain, np.where(lesion, in_lesion, inside), outside) + rng.normal(0, 0.5, shape)
        paths[modality] = write_nifti(modality_path(case_dir, modality, suffix), volume.astype(np.float32))
    if label:
        paths[isles.LABEL] = write_nifti(modality_path(case_dir, isles.LABEL, suffix), lesion.astype(np.uint8))
    return paths


def patch_header(path, **fields) -> None:
    """Rewrites header fields of an uncompressed .nii in place (files nibabel would refuse to write)."""
    with open(path, "r+b") as handle:
        header = nib.Nifti1Header.from_fileobj(handle, check=False)
        for key, value in fields.items():
            header[key] = value
        handle.seek(0)
        handle.write(header.binaryblock)


def sha256_tree(root) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(pathlib.Path(root).rglob("*")) if p.is_file()}


# ------------------------------------------------------------------------------ damaged files: refused

def _random_bytes_nii(paths, rng):
    paths[isles.CBF].write_bytes(rng.integers(0, 256, 3000, dtype=np.uint8).tobytes())
    return isles.CBF


def _random_bytes_nii_gz(paths, rng):
    target = paths[isles.CBV].with_name(paths[isles.CBV].name + ".gz")
    paths[isles.CBV].rename(target)
    target.write_bytes(rng.integers(0, 256, 3000, dtype=np.uint8).tobytes())
    paths[isles.CBV] = target
    return isles.CBV


def _empty_file(paths, rng):
    paths[isles.MTT].write_bytes(b"")
    return isles.MTT


def _header_only(paths, rng):
    paths[isles.TMAX].write_bytes(paths[isles.TMAX].read_bytes()[:352])  # header + extension flag, no voxels
    return isles.TMAX


def _gzip_corrupt_stream(paths, rng):
    noisy = rng.normal(size=SHAPE).astype(np.float32)  # incompressible, so the damage lands in voxel data
    target = write_nifti(paths[isles.CT].with_name(paths[isles.CT].name + ".gz"), noisy)
    paths[isles.CT].unlink()
    data = bytearray(target.read_bytes())
    middle = len(data) // 2
    data[middle:middle + 64] = rng.integers(0, 256, 64, dtype=np.uint8).tobytes()
    target.write_bytes(bytes(data))
    paths[isles.CT] = target
    return isles.CT


def _gzip_bad_checksum(paths, rng):
    target = write_nifti(paths[isles.CBF].with_name(paths[isles.CBF].name + ".gz"),
                         np.asarray(nib.load(paths[isles.CBF]).dataobj))
    paths[isles.CBF].unlink()
    data = bytearray(target.read_bytes())
    data[-8] ^= 0xFF  # CRC32 of the uncompressed data
    target.write_bytes(bytes(data))
    paths[isles.CBF] = target
    return isles.CBF


def _complex64(paths, rng):
    write_nifti(paths[isles.CBF], np.zeros(SHAPE, np.complex64))
    return isles.CBF


def _rgb24(paths, rng):
    rgb = np.zeros(SHAPE, dtype=[("R", "u1"), ("G", "u1"), ("B", "u1")])
    write_nifti(paths[isles.CT], rgb)
    return isles.CT


def _binary_datatype(paths, rng):
    patch_header(paths[isles.MTT], datatype=1, bitpix=1)  # DT_BINARY (1-bit bool): nibabel has no reader
    return isles.MTT


def _unknown_datatype(paths, rng):
    patch_header(paths[isles.CBV], datatype=4242)  # e.g. a float16 writer's private code
    return isles.CBV


def _zero_size_dimension(paths, rng):
    write_nifti(paths[isles.CT], np.zeros((SHAPE[0], 0, SHAPE[2]), np.float32))
    return isles.CT


def _two_dimensional(paths, rng):
    write_nifti(paths[isles.TMAX], np.zeros(SHAPE[:2], np.float32))
    return isles.TMAX


def _five_dimensional(paths, rng):
    write_nifti(paths[isles.CBF], np.zeros(SHAPE + (1, 3), np.float32))
    return isles.CBF


def _oversized_dimensions(paths, rng):
    patch_header(paths[isles.CBF], dim=[3, 30000, 30000, 30000, 1, 1, 1, 1])  # 2.7e13 voxels: never allocated
    return isles.CBF


def _negative_dimension(paths, rng):
    patch_header(paths[isles.CBV], dim=[3, SHAPE[0], -SHAPE[1], SHAPE[2], 1, 1, 1, 1])
    return isles.CBV


def _pixdim(index, value, modality):
    def make(paths, rng):
        pixdim = nib.load(paths[modality]).header["pixdim"].copy()
        pixdim[index] = value
        patch_header(paths[modality], pixdim=pixdim)
        return modality
    make.__name__ = f"_voxel_size_{value}"
    return make


def _label_four_dimensional(paths, rng):
    write_nifti(paths[isles.LABEL], np.zeros(SHAPE + (2,), np.uint8))
    return isles.LABEL


REFUSED = [
    _random_bytes_nii, _random_bytes_nii_gz, _empty_file, _header_only, _gzip_corrupt_stream, _gzip_bad_checksum,
    _complex64, _rgb24, _binary_datatype, _unknown_datatype, _zero_size_dimension, _two_dimensional,
    _five_dimensional, _oversized_dimensions, _negative_dimension,
    _pixdim(1, float("nan"), isles.CT), _pixdim(2, float("inf"), isles.CBF), _pixdim(3, 1e6, isles.MTT),
    _pixdim(1, 1e-6, isles.TMAX), _label_four_dimensional,
]


@pytest.mark.parametrize("damage", REFUSED, ids=[f.__name__.strip("_") for f in REFUSED])
def test_damaged_file_raises_one_line_naming_case_and_file(tmp_path, capfd, damage):
    case_dir = tmp_path / "TRAINING" / "case_3"
    paths = write_case(case_dir, _rng(damage.__name__))
    modality = damage(paths, _rng(damage.__name__ + "/damage"))
    before = sha256_tree(tmp_path)
    with pytest.raises(isles.IslesFormatError) as raised:
        isles.read_case(case_dir, require_label=True)
    message = str(raised.value)
    assert "\n" not in message and len(message) < 600, message
    assert message.startswith(f"case_3: {modality} file ") and paths[modality].name in message, message
    assert sha256_tree(tmp_path) == before  # reading never modifies an input
    assert capfd.readouterr().err == ""  # the error says it all: no extra lines from nibabel's header checks


# ------------------------------------------------------------------------------ documented behaviours

def test_one_slice_slab_is_read_as_depth_one(tmp_path):
    paths = write_case(tmp_path / "case_1", _rng("one-slice"), shape=(20, 18, 1))
    case = isles.read_case(tmp_path / "case_1", require_label=True)
    assert case.image.shape == (1, 18, 20, 5) and case.label.shape == (1, 18, 20)
    expected = np.asarray(nib.load(paths[isles.CBF]).dataobj)[..., 0].T
    np.testing.assert_array_equal(case.image[0, ..., 1], expected)
    assert case.spacing_mm == pytest.approx((5.0, 0.9, 0.9))


@pytest.mark.parametrize("dtype", [np.int8, np.uint8, np.int16, np.uint16, np.int32, np.int64, np.float64])
def test_integer_and_double_maps_read_as_the_same_float32_values(tmp_path, dtype):
    paths = write_case(tmp_path / "case_1", _rng(f"dtype-{np.dtype(dtype).name}"))
    info = np.iinfo(dtype) if np.dtype(dtype).kind in "iu" else None
    low, high = (info.min, min(info.max, 2**24)) if info else (-1e6, 1e6)  # exact in float32
    values = _rng(np.dtype(dtype).name).integers(max(low, -2**24), high, SHAPE, endpoint=True).astype(dtype)
    write_nifti(paths[isles.CBV], values, dtype=dtype)
    case = isles.read_case(tmp_path / "case_1")
    assert case.image.dtype == np.float32
    np.testing.assert_array_equal(case.image[..., 2], isles.nifti_to_network(values.astype(np.float64)))


def test_all_nan_and_out_of_float32_range_maps_become_zero_and_are_counted(tmp_path, caplog):
    paths = write_case(tmp_path / "case_1", _rng("nan"))
    write_nifti(paths[isles.MTT], np.full(SHAPE, np.nan, np.float32))
    huge = np.ones(SHAPE, np.float64)
    huge[0, 0, 0], huge[1, 0, 0] = 1e300, -1e300  # finite in float64, infinite in float32
    write_nifti(paths[isles.TMAX], huge)
    with caplog.at_level(logging.WARNING):
        case = isles.read_case(tmp_path / "case_1")
    assert case.nonfinite_voxels == {isles.MTT: int(np.prod(SHAPE)), isles.TMAX: 2}
    assert not case.image[..., 3].any() and np.isfinite(case.image).all()
    tmax = isles.network_to_nifti(case.image[..., 4])
    assert tmax[0, 0, 0] == tmax[1, 0, 0] == 0.0 and tmax[2, 0, 0] == 1.0


def test_label_voxels_above_zero_are_lesion_and_other_values_are_reported(tmp_path, caplog):
    paths = write_case(tmp_path / "case_1", _rng("label"))
    values = np.zeros(SHAPE, np.float32)
    values[0, 0, 0], values[1, 0, 0], values[2, 0, 0], values[3, 0, 0], values[4, 0, 0] = 1, 2, 255, 0.5, -1
    write_nifti(paths[isles.LABEL], values)
    with caplog.at_level(logging.WARNING):
        case = isles.read_case(tmp_path / "case_1", require_label=True)
    label = isles.network_to_nifti(case.label)
    assert case.label.dtype == np.uint8
    assert [int(label[i, 0, 0]) for i in range(5)] == [1, 1, 1, 1, 0] and int(label.sum()) == 4
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("case_1" in w and paths[isles.LABEL].name in w and "4 voxel(s)" in w for w in warnings), warnings


def test_binary_label_reads_without_warning(tmp_path, caplog):
    write_case(tmp_path / "case_1", _rng("binary-label"))
    with caplog.at_level(logging.WARNING):
        case = isles.read_case(tmp_path / "case_1", require_label=True)
    assert case.label.any() and not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_damaged_label_is_a_label_error_and_can_be_left_out(tmp_path):
    paths = write_case(tmp_path / "case_1", _rng("bad-label"))
    _label_four_dimensional(paths, None)
    with pytest.raises(isles.LabelFormatError, match=f"case_1: OT file .*{paths[isles.LABEL].name}"):
        isles.read_case(tmp_path / "case_1")
    case = isles.read_case(tmp_path / "case_1", read_label=False)
    assert case.label is None and isles.LABEL not in case.source_files and case.image.shape == (2, 18, 20, 5)
    with pytest.raises(ValueError, match="require_label needs read_label"):
        isles.read_case(tmp_path / "case_1", require_label=True, read_label=False)


def test_three_dimensional_pwi_is_used_as_its_own_summary(tmp_path):
    paths = write_case(tmp_path / "case_1", _rng("pwi"))
    pwi = _rng("pwi-values").uniform(0, 100, SHAPE).astype(np.float32)
    paths[isles.PWI] = write_nifti(modality_path(tmp_path / "case_1", isles.PWI), pwi)
    case = isles.read_case(tmp_path / "case_1", channels=(isles.CT, isles.PWI))
    np.testing.assert_array_equal(case.image[..., 1], isles.nifti_to_network(pwi))


# ------------------------------------------------------------------------------ predict over a mixed folder

def _write_mixed_folder(root) -> dict[str, str]:
    """Good and bad cases; returns case_id -> what the run must report ("ok" or a phrase of the error)."""
    expected = {}
    write_case(root / "case_1", _rng("good-1"))
    expected["case_1"] = "ok"
    write_case(root / "case_2", _rng("good-2"), shape=(20, 18, 1), suffix=".nii.gz")
    expected["case_2"] = "ok"  # 1-slice slab: padded for the network, cropped back
    paths = write_case(root / "case_3", _rng("nan-map"))
    write_nifti(paths[isles.CBF], np.full(SHAPE, np.inf, np.float32))
    expected["case_3"] = "ok"  # warned about, predicted
    for index, damage in enumerate((_header_only, _gzip_corrupt_stream, _complex64, _zero_size_dimension,
                                    _pixdim(3, 1e6, isles.MTT), _five_dimensional, _random_bytes_nii), start=4):
        case_paths = write_case(root / f"case_{index}", _rng(f"bad-{index}"))
        modality = damage(case_paths, _rng(f"bad-{index}/damage"))
        expected[f"case_{index}"] = case_paths[modality].name
    paths = write_case(root / "case_12", _rng("bad-label"))
    write_nifti(paths[isles.LABEL], np.zeros(SHAPE[:2], np.uint8))
    expected["case_12"] = "ok"  # a 2D label: reported, predicted without it
    paths = write_case(root / "case_11", _rng("mismatch"))
    shifted = AFFINE.copy()
    shifted[1, 3] += 3.0
    write_nifti(paths[isles.CBV], np.asarray(nib.load(paths[isles.CBV]).dataobj), affine=shifted)
    expected["case_11"] = "affine that differs"
    return expected


def test_predict_folder_run_writes_good_cases_skips_bad_ones_and_never_touches_inputs(tmp_path):
    import serving_fixtures

    run_dir = serving_fixtures.write_run(serving_fixtures.tiny_model(), str(tmp_path / "run"))
    root = tmp_path / "inputs"
    expected = _write_mixed_folder(root)
    before = sha256_tree(root)
    out = tmp_path / "out"
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="",
               PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    result = subprocess.run([sys.executable, "-m", "strokenet_tf.predict", f"--model={run_dir}", f"--input={root}",
                             f"--output_dir={out}", "--noprogress", "--save_probabilities"],
                            cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert sha256_tree(root) == before  # no input byte changed, no file added or removed
    skipped = {line.split(": skipped: ")[0].split("warning: ")[1]: line for line in result.stderr.splitlines()
               if ": skipped: " in line}
    bad = sorted(case for case, outcome in expected.items() if outcome != "ok")
    assert sorted(skipped) == bad
    for case in bad:
        assert expected[case] in skipped[case], skipped[case]
        assert not (out / case).exists()
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith(f"strokenet_tf.predict: error: {len(bad)} of {len(expected)} case(s) failed: ")
    assert "replaced 720 NaN/Inf voxels by 0 in CT_CBF file" in result.stderr
    assert "warning: case_12: OT file " in result.stderr and "predicting without it" in result.stderr
    for case in (c for c, outcome in expected.items() if outcome == "ok"):
        report = json.loads((out / case / f"{case}_report.json").read_text())
        source = nib.load(report["inputs"][isles.CT])
        for kind in ("mask", "probability"):
            written = nib.load(out / case / f"{case}_{kind}.nii.gz")
            assert written.shape == source.shape and np.array_equal(written.affine, source.affine)
            assert np.isfinite(np.asarray(written.dataobj, np.float64)).all()
    assert not list(out.rglob(".tmp-*"))
