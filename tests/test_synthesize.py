"""Tests for strokenet_tf.data.synthesis (and its command data.synthesize): layout, determinism, storage, labels."""

from __future__ import annotations

import json
import os
import pathlib
import re
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest
from absl import app, flags
from scipy import stats

from strokenet_tf.data import isles, synthesis, synthesize

NAME = re.compile(r"^SMIR\.Brain\.XX\.O\.(?P<mod>CT|CT_4DPWI|CT_CBF|CT_CBV|CT_MTT|CT_Tmax|OT)\.(?P<id>\d{6})$")
REPO = pathlib.Path(__file__).resolve().parents[1]


def _dice(prediction: np.ndarray, truth: np.ndarray) -> float:
    total = prediction.sum() + truth.sum()
    return 2.0 * np.logical_and(prediction, truth).sum() / total if total else 1.0


def _files(root: pathlib.Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("split", ["TRAINING", "TESTING"])
def test_layout_is_exactly_isles(tmp_path, split):
    case_dirs = synthesis.write_dataset(tmp_path, 2, seed=1, split=split, size=16, depths=(2,), start_index=9)
    assert [p.relative_to(tmp_path).as_posix() for p in case_dirs] == [f"{split}/case_9", f"{split}/case_10"]
    expected = set(isles.ALL_MODALITIES) - ({isles.LABEL} if split == "TESTING" else set())
    for case_dir in case_dirs:
        folders = [p for p in case_dir.iterdir() if not p.name.startswith(".")]
        matches = [NAME.match(p.name) for p in folders]
        assert all(matches) and {m["mod"] for m in matches} == expected
        assert len({m["id"] for m in matches}) == len(matches)  # one id per modality, all different
        for folder in folders:
            assert [p.name for p in folder.iterdir()] == [folder.name + ".nii"]
        pwi = nib.load(next(case_dir.glob("*CT_4DPWI*/*.nii")))
        assert pwi.ndim == 4 and 43 <= pwi.shape[3] <= 49 and pwi.shape[:3] == (16, 16, 2)
        assert pwi.header.get_zooms()[3] == 1.0 and pwi.header.get_xyzt_units() == ("mm", "sec")


def test_determinism_by_seed_split_and_index(tmp_path):
    kwargs = dict(size=16, depths=(2, 4), with_pwi=False)
    synthesis.write_dataset(tmp_path / "a", 2, seed=7, **kwargs)
    synthesis.write_dataset(tmp_path / "b", 2, seed=7, **kwargs)
    synthesis.write_dataset(tmp_path / "c", 1, seed=7, start_index=2, **kwargs)
    synthesis.write_dataset(tmp_path / "d", 1, seed=8, start_index=2, **kwargs)
    a = _files(tmp_path / "a")
    assert a == _files(tmp_path / "b")
    case_2 = {k: v for k, v in a.items() if k.startswith("TRAINING/case_2/")}
    assert case_2 == _files(tmp_path / "c")
    other_seed = {k for k in _files(tmp_path / "d") if k.endswith(".nii")}
    assert len(other_seed) == 6 and other_seed.isdisjoint(case_2)  # other seed: other ids
    training = synthesis.synthesize_case(synthesis.case_rng(7, "TRAINING", 1), **kwargs)
    testing = synthesis.synthesize_case(synthesis.case_rng(7, "TESTING", 1), **kwargs)
    assert training["ids"] != testing["ids"]


@pytest.mark.parametrize(
    "storage, dtypes",
    [
        ("isles", {isles.CT: np.int32, isles.CBF: np.uint16, isles.CBV: np.uint16, isles.MTT: np.float64,
                   isles.TMAX: np.float64, isles.LABEL: np.uint8, isles.PWI: np.int16}),
        ("physical", {isles.CT: np.float32, isles.CBF: np.float32, isles.CBV: np.float32, isles.MTT: np.float32,
                      isles.TMAX: np.float32, isles.LABEL: np.uint8, isles.PWI: np.int16}),
    ],
)
def test_storage_dtypes_and_geometry(tmp_path, storage, dtypes):
    (case_dir,) = synthesis.write_dataset(tmp_path, 1, seed=2, size=16, depths=(4,), storage=storage, compress=True)
    expected = synthesis.synthesize_case(synthesis.case_rng(2, "TRAINING", 1), size=16, depths=(4,))
    files = isles.find_modality_files(case_dir)
    assert all(p.name.endswith(".nii.gz") for p in files.values())
    for modality, dtype in dtypes.items():
        image = nib.load(files[modality])
        assert image.get_data_dtype() == dtype, modality
        assert image.dataobj.slope == 1.0 and image.dataobj.inter == 0.0
        np.testing.assert_allclose(image.affine, expected["affine"], atol=1e-4)
        assert (int(image.header["qform_code"]), int(image.header["sform_code"])) == expected["codes"]
    if storage == "isles":
        cbf = np.asarray(nib.load(files[isles.CBF]).dataobj)
        assert cbf.max() < 65535 and np.mean(cbf[expected["tissue"]] > 0) > 0.9


def test_maps_are_anatomically_plausible():
    for index in range(3):
        case = synthesis.synthesize_case(synthesis.case_rng(0, "TRAINING", index), size=64, depths=(8,), with_pwi=False)
        maps, tissue = case["maps"], case["tissue"]
        perfusion = sum(maps[m] for m in isles.PERFUSION_MAPS)
        np.testing.assert_array_equal(perfusion > 0, tissue)  # the ISLES brain mask: summed maps > 0
        assert all((maps[m][~tissue] == 0).all() for m in isles.PERFUSION_MAPS)
        assert maps[isles.CT][0, 0].max() < -900  # air in the corner
        assert maps[isles.CT].max() > 700  # skull
        assert 15 < np.median(maps[isles.CT][tissue]) < 50
        assert (maps[isles.TMAX] <= 40).all() and (maps[isles.MTT] <= 40).all()
        truth = case["truth"]
        healthy = tissue & ~case["territory"]
        assert 20 < np.median(truth["cbf"][healthy]) < 60 and 1.5 < np.median(truth["cbv"][healthy]) < 5
        np.testing.assert_allclose(truth["cbv"], truth["cbf"] * truth["mtt"] / 60.0, rtol=1e-4, atol=1e-5)
        # Deconvolved maps follow the truth inside the brain, away from the vessels' hot spots (noise, smoothing
        # and the deconvolution's bias keep them apart).
        parenchyma = tissue & (truth["vessel"] < 0.05) & (truth["cbf"] > 0)
        for name, modality in (("cbf", isles.CBF), ("cbv", isles.CBV)):
            rho = stats.spearmanr(truth[name][parenchyma], maps[modality][parenchyma])[0]
            assert rho > 0.2, (index, name, rho)  # ~0.75-0.85 at 256 x 256 (README)
        if case["territory"].sum() > 20:
            assert np.median(maps[isles.TMAX][case["territory"] & tissue]) > np.median(maps[isles.TMAX][healthy])


def test_label_is_a_later_dwi_lesion_not_the_ct_core():
    cases = [synthesis.synthesize_case(synthesis.case_rng(3, "TRAINING", k), size=48, depths=(8, 16), with_pwi=False)
             for k in range(8)]
    dice_with_core = []
    for case in cases:
        label = case["maps"][isles.LABEL] > 0
        assert case["lesion_volume_ml"] == pytest.approx(label.sum() * np.prod(case["zooms_mm"]) / 1000.0)
        assert label.any()
        dice_with_core.append(_dice(label, case["core"]))
        params = case["params"]
        assert 1.0 <= np.linalg.norm(params["dwi_shift_mm"][:2]) <= 3.0  # DWI-to-CT misregistration, in-plane
    # The label overlaps the CT-time core in most cases, yet is never simply the core.
    assert np.median(dice_with_core) > 0.2 and max(dice_with_core) < 0.97, dice_with_core
    assert max(c["lesion_volume_ml"] for c in cases) > 3 * min(c["lesion_volume_ml"] for c in cases)


def test_centres_and_lesion_types_can_be_chosen_and_are_recorded(tmp_path):
    case_dirs = synthesis.write_dataset(tmp_path, 3, seed=4, size=32, depths=(2,), with_pwi=False,
                                         centres=("centre_2",), lesion_types=("lacune", "pca"), with_truth=True)
    for case_dir in case_dirs:
        record = json.loads((case_dir / synthesis.MARKER_FILE).read_text())
        assert record["centre"] == "centre_2" and record["lesion_type"] in ("lacune", "pca")
        truth = sorted(p.name for p in (case_dir / synthesis.TRUTH_FOLDER).iterdir())
        assert truth == sorted(f"{k}.nii.gz" for k in ("cbf", "cbv", "mtt", "tmax", "delay", "core", "vessel"))
        isles.read_case(case_dir, require_label=True)  # the hidden truth folder is invisible to the reader
    with pytest.raises(ValueError, match="^centres: unknown centre 'centre_9'"):
        synthesis.write_dataset(tmp_path, 1, size=16, depths=(2,), centres=("centre_9",))
    with pytest.raises(ValueError, match="^lesion_types: unknown type 'mcaa'"):
        synthesis.write_dataset(tmp_path, 1, size=16, depths=(2,), lesion_types=("mcaa",))


def test_parallel_workers_write_the_same_cases(tmp_path, monkeypatch, capfd):
    """Same bytes serial or parallel; the spawned workers of a tool (which marks itself with
    cli_startup.QUIET_ENV) print no TensorFlow start-up notices either."""
    from strokenet_tf import cli_startup

    kwargs = dict(size=24, depths=(2,), with_pwi=False)
    synthesis.write_dataset(tmp_path / "serial", 2, seed=5, **kwargs)
    monkeypatch.setenv(cli_startup.QUIET_ENV, "1")
    capfd.readouterr()
    synthesis.write_dataset(tmp_path / "parallel", 2, seed=5, workers=2, **kwargs)
    assert _files(tmp_path / "serial") == _files(tmp_path / "parallel")
    assert not [line for line in capfd.readouterr().err.splitlines() if cli_startup.is_startup_notice(line)]


def test_refuses_to_replace_foreign_folders_and_replaces_its_own(tmp_path):
    foreign = tmp_path / "TRAINING" / "case_1"
    foreign.mkdir(parents=True)
    (foreign / "keep.txt").write_text("real data")
    with pytest.raises(ValueError, match="refusing to replace"):
        synthesis.write_dataset(tmp_path, 1, size=16, depths=(2,), with_pwi=False)
    assert (foreign / "keep.txt").read_text() == "real data"
    (case_dir,) = synthesis.write_dataset(tmp_path, 1, size=16, depths=(2,), with_pwi=False, start_index=2)
    synthesis.write_dataset(tmp_path, 1, size=16, depths=(2,), with_pwi=False, start_index=2, compress=True)
    assert sorted(p.name for p in case_dir.rglob("*.nii*")) == sorted(p.name for p in case_dir.rglob("*.nii.gz"))
    assert [p.name for p in (tmp_path / "TRAINING").iterdir() if p.name.startswith(".")] == []
    isles.read_case(case_dir, require_label=True)


def test_flags_become_a_config():
    flag_values = flags.FlagValues()
    synthesize.define_flags(flag_values)
    flag_values(["synthesize", "--output_dir=/tmp/x", "--depths=2,4", "--no_pwi", "--storage=isles", "--size=32"])
    config = synthesize.config_from_flags(flag_values)
    assert config == synthesis.SynthesisConfig(
        output_dir="/tmp/x", depths=(2, 4), with_pwi=False, storage="isles", size=32
    )
    flag_values.depths = ["2", "x"]
    with pytest.raises(app.UsageError, match="--depths"):
        synthesize.config_from_flags(flag_values)


def test_command_line_writes_a_readable_dataset(tmp_path):
    command = [
        sys.executable, "-m", "strokenet_tf.data.synthesize", f"--output_dir={tmp_path}", "--num_cases=1",
        "--seed=3", "--split=TESTING", "--storage=isles", "--size=16", "--depths=2", "--no_pwi", "--compress",
    ]
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    (case,) = isles.load_cases(tmp_path, split="TESTING")
    assert case.image.shape == (2, 16, 16, 5) and case.label is None
