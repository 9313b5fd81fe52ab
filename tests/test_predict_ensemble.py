"""predict with an ensemble (a cross_validate folder): uncertainty NIfTI, perfusion report, batch CSV, montage."""

import csv
import json
import os
import pathlib

import nibabel as nib
import numpy as np
import pytest

import serving_fixtures
from conftest import build_case
from strokenet_tf import inference, perfusion_report, predict, prediction
from strokenet_tf.data import isles


def _write_case(case_dir: pathlib.Path, case: isles.Case) -> None:
    affine = np.diag([1.0, 1.0, 5.0, 1.0])
    volumes = {name: case.image[..., i] for i, name in enumerate(case.channels)}
    volumes[isles.LABEL] = case.label
    for index, (modality, volume) in enumerate(volumes.items()):
        name = f"SMIR.Brain.XX.O.{modality}.{100000 + index}"
        (case_dir / name).mkdir(parents=True)
        dtype = np.uint8 if modality == isles.LABEL else np.float32
        nib.save(nib.Nifti1Image(isles.network_to_nifti(np.asarray(volume, dtype)), affine),
                 str(case_dir / name / f"{name}.nii"))


@pytest.fixture(scope="module")
def cv_dir(tmp_path_factory):
    return serving_fixtures.write_cv_folder(str(tmp_path_factory.mktemp("cv")))


@pytest.fixture(scope="module")
def cases_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("cases")
    for index in (1, 2):
        _write_case(root / f"case_{index}", build_case(3, 24, 24, rng=np.random.default_rng(index),
                                                      case_id=f"case_{index}"))
    return root


def test_ensemble_predict_writes_uncertainty_report_csv_and_montage(cv_dir, cases_dir, tmp_path):
    config = predict.PredictConfig(model=cv_dir, output_dir=str(tmp_path / "out"), input=str(cases_dir),
                                   progress=False, precision="float32")
    reports, failures = predict.run(config)
    assert not failures and len(reports) == 2
    report = json.loads(pathlib.Path(reports[0]["outputs"]["report"]).read_text())
    assert report["ensemble"] == {"n_members": 2, "mirror": True, "calibration": "identity"}
    section = report["perfusion_report"]
    assert section["disclaimer"] == perfusion_report.DISCLAIMER and section["status"] == "ok"
    assert section["core_volume_ml"] == pytest.approx(report["lesion_volume_ml"], abs=1e-3)
    assert section["hypoperfusion_volume_ml"] > 0 and section["defuse3"]["met"] in (True, False)
    uncertainty = report["uncertainty"]
    low, high = uncertainty["core_volume_interval_ml"]
    assert len(uncertainty["member_core_volumes_ml"]) == 2 and low <= high
    assert isinstance(uncertainty["members_disagree"], bool)
    entropy = nib.load(report["outputs"]["uncertainty"])
    values = np.asarray(entropy.dataobj)
    assert values.dtype == np.float32 and values.min() >= 0 and values.max() <= 1
    assert entropy.shape == nib.load(report["outputs"]["mask"]).shape
    rows = list(csv.DictReader((tmp_path / "out" / prediction.BATCH_CSV).read_text().splitlines()))
    assert set(perfusion_report.CSV_COLUMNS) <= set(rows[0])  # the perfusion report's columns keep their names
    assert sorted(row["case_id"] for row in rows) == ["case_1", "case_2"]
    row = next(r for r in rows if r["case_id"] == report["case_id"])
    assert float(row["core_volume_ml"]) == pytest.approx(section["core_volume_ml"], abs=1e-3)
    assert float(row["core_interval_low_ml"]) == pytest.approx(low, abs=1e-3) and row["status"] == "ok"
    assert os.path.getsize(report["outputs"]["montage"]) > 1000
    caption = prediction.montage_caption(section, uncertainty)
    assert "Tmax>6s" in caption and "not a medical device" in caption


def test_batch_csv_is_not_overwritten_without_overwrite(cv_dir, cases_dir, tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / prediction.BATCH_CSV).write_text("old\n")
    config = predict.PredictConfig(model=cv_dir, output_dir=str(tmp_path / "out"), input=str(cases_dir),
                                   progress=False)
    with pytest.raises(prediction.PredictError, match="summary.csv already exists"):
        predict.run(config)


def test_single_run_predicts_as_before_with_the_report(cv_dir, cases_dir, tmp_path):
    run = os.path.join(cv_dir, "fold_0")
    config = predict.PredictConfig(model=run, output_dir=str(tmp_path / "out"), input=str(cases_dir / "case_1"),
                                   progress=False, save_probabilities=True)
    (report,), _ = predict.run(config)
    single = inference.Segmenter.from_run(run)
    case = isles.read_case(cases_dir / "case_1", single.channels)
    probabilities, mask = single.predict_case(case)
    written = isles.nifti_to_network(np.asarray(nib.load(report["outputs"]["probability"]).dataobj))
    np.testing.assert_allclose(written, probabilities, atol=1e-6)
    assert report["ensemble"] == {"n_members": 1, "mirror": False, "calibration": "identity"}
    assert report["uncertainty"]["n_members"] == 1 and not report["uncertainty"]["members_disagree"]
    assert not (tmp_path / "out" / prediction.BATCH_CSV).exists()  # one case: no batch CSV
