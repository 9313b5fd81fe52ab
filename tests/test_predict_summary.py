"""Tests for what strokenet_tf.prediction writes about a run: the per-case report JSON (package version, UTC time,
absolute paths, rounded numbers) and the batch summary CSV of a folder run (one row per case, failures included)."""

import csv
import datetime
import json
import math
import os

import numpy as np
import pytest

import strokenet_tf
from strokenet_tf import metrics, perfusion_report, prediction
from strokenet_tf.data import isles
from test_predict import AFFINES, synthetic_maps, voxelwise_segmenter, write_case


def _decimals(number: float) -> int:
    text = repr(number)
    return len(text.split(".")[1]) if "." in text and "e" not in text else 0


def _floats(value, key=""):
    """(key, float) of every float in a JSON value."""
    if isinstance(value, dict):
        return [pair for k, v in value.items() for pair in _floats(v, k)]
    if isinstance(value, list):
        return [pair for v in value for pair in _floats(v, key)]
    return [(key, value)] if isinstance(value, float) else []


def test_rounded_volumes_and_other_floats():
    report = {"lesion_volume_ml": 17.123456789012345, "component_volumes_ml": [10.0004999, 7.1229, -0.0001],
              "voxel_size_mm_xyz": [0.8999999761581421, 5.0], "max_probability": 0.99999988079071045,
              "mismatch_ratio": "inf", "threshold": float("nan"), "lesion_voxels": 5351, "flag": True,
              "nested": {"core_volume_ml": None, "hypoperfusion_volume_ml": 60.80000305175781}}
    out = prediction.rounded(report)
    assert out["lesion_volume_ml"] == 17.123 and out["component_volumes_ml"] == [10.0, 7.123, 0.0]
    assert math.copysign(1.0, out["component_volumes_ml"][2]) == 1.0  # no "-0.0" in the JSON
    assert out["voxel_size_mm_xyz"] == [0.9, 5.0] and out["max_probability"] == 1.0
    assert out["mismatch_ratio"] == "inf" and math.isnan(out["threshold"])
    assert out["lesion_voxels"] == 5351 and out["flag"] is True
    assert out["nested"] == {"core_volume_ml": None, "hypoperfusion_volume_ml": 60.8}


def test_report_has_version_utc_time_absolute_paths_and_rounded_numbers(tmp_path, monkeypatch):
    write_case(tmp_path / "in" / "case_7", synthetic_maps(1), AFFINES["ras"])
    monkeypatch.chdir(tmp_path)  # relative --input and --output_dir, as a user types them
    before = datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0)
    segmenter = voxelwise_segmenter()
    reports, failures = prediction.predict_cases(segmenter, prediction.find_inputs("in/case_7"),
                                                 prediction.OutputOptions("out", save_montage=False))
    assert failures == []
    path = tmp_path / "out" / "case_7" / "case_7_report.json"
    text = path.read_text()
    report = json.loads(text)
    assert report == reports[0]  # what predict_cases returns is what was written
    assert report["strokenet_tf_version"] == strokenet_tf.__version__
    created = datetime.datetime.fromisoformat(report["created_utc"])
    assert created.utcoffset() == datetime.timedelta(0)
    assert before <= created <= datetime.datetime.now(datetime.timezone.utc)
    assert report["output_dir"] == str(tmp_path / "out")
    assert report["outputs"]["report"] == str(path) and report["outputs"]["mask"] == str(
        tmp_path / "out" / "case_7" / "case_7_mask.nii.gz")
    assert all(os.path.isabs(p) and os.path.isfile(p) for p in report["outputs"].values())
    assert all(os.path.isabs(p) and os.path.isfile(p) for p in report["inputs"].values())
    assert sorted(report["inputs"]) == sorted(segmenter.channels)
    case = isles.read_case(tmp_path / "in" / "case_7")
    mask = isles.nifti_to_network(np.asarray(__import__("nibabel").load(report["outputs"]["mask"]).dataobj))
    assert report["lesion_volume_ml"] == round(metrics.volume_ml(mask, case.spacing_mm), 3) > 0
    assert report["voxel_size_mm_xyz"] == [0.9, 0.9, 5.0]  # float32 header zooms, shown as written
    floats = _floats(report)
    assert any(key.endswith("_ml") for key, _ in floats)
    assert all(_decimals(v) <= 3 for key, v in floats if key.endswith("_ml")), floats
    assert all(len(repr(v).lstrip("-0.").replace(".", "")) <= 7 for _, v in floats if math.isfinite(v)), floats


def test_folder_run_writes_one_summary_row_per_case_failures_included(tmp_path):
    root = tmp_path / "cases"
    maps = synthetic_maps(6, size=32, depth=2)
    write_case(root / "case_1", maps, AFFINES["ras"])
    write_case(root / "case_2", maps, AFFINES["ras"], skip=(isles.CBF,))  # fails: its error holds commas
    write_case(root / "case_3", synthetic_maps(7, size=32, depth=2), AFFINES["ras"])
    out = tmp_path / "out"
    out.mkdir()
    stale = out / ".tmp-0123456789ab-summary.csv"  # left by a run killed while writing the summary
    stale.write_text("half")
    warnings = []
    reports, failures = prediction.predict_cases(voxelwise_segmenter(), prediction.find_inputs(root),
                                                 prediction.OutputOptions(str(out), save_montage=False),
                                                 warn=warnings.append)
    assert [f.case_id for f in failures] == ["case_2"] and len(reports) == 2
    assert prediction.BATCH_CSV == "summary.csv" and not stale.exists()
    lines = (out / "summary.csv").read_text().splitlines()
    rows = list(csv.DictReader(lines))
    assert tuple(csv.reader(lines[:1]).__next__()) == prediction.SUMMARY_COLUMNS
    assert set(perfusion_report.CSV_COLUMNS) <= set(prediction.SUMMARY_COLUMNS)  # old column names still work
    assert [r["case_id"] for r in rows] == ["case_1", "case_2", "case_3"]  # input order
    failed = rows[1]
    assert failed["case_status"] == "failed" and failed["error"] == failures[0].message
    assert "missing modality CT_CBF" in failed["error"] and "," in failed["error"]
    assert failed["lesion_volume_ml"] == "" and failed["status"] == ""
    for row, report in zip((rows[0], rows[2]), reports):
        assert row["case_status"] == "ok" and row["error"] == ""
        assert float(row["lesion_volume_ml"]) == pytest.approx(report["lesion_volume_ml"], abs=5e-4)
        assert int(row["lesion_voxels"]) == report["lesion_voxels"] > 0
        assert int(row["connected_components"]) == report["connected_components"] >= 1
        assert float(row["seconds"]) == pytest.approx(sum(report["seconds"].values()), abs=0.006)
        assert float(row["seconds"]) > 0
        assert row["status"] == report["perfusion_report"]["status"].replace(",", ";")
        assert float(row["core_volume_ml"]) == pytest.approx(report["perfusion_report"]["core_volume_ml"], abs=1e-3)


def test_montage_names_the_model_and_gets_the_report_caption(tmp_path, monkeypatch):
    case_dir = write_case(tmp_path / "in" / "case_4", synthetic_maps(4), AFFINES["ras"])
    segmenter = voxelwise_segmenter()
    segmenter.source = str(tmp_path / "runs" / "fold0")
    seen = {}
    real = prediction.montage.render_montage

    def render(case, mask, **kwargs):
        seen.update(kwargs)
        return real(case, mask, **kwargs)

    monkeypatch.setattr(prediction.montage, "render_montage", render)
    (report,), _ = prediction.predict_cases(segmenter, prediction.find_inputs(case_dir),
                                            prediction.OutputOptions(str(tmp_path / "out")))
    assert seen["model"] == segmenter.source and report["model"] == segmenter.source
    assert seen["caption"] == prediction.montage_caption(report["perfusion_report"], report["uncertainty"])
    assert seen["hypoperfusion"] is not None and os.path.getsize(report["outputs"]["montage"]) > 1000
