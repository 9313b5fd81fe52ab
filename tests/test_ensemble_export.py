"""An ensemble (cross-validation folder) exported as one SavedModel: members, mirroring, calibration, report."""

import json
import os

import numpy as np
import pytest
import tensorflow as tf
from absl import flags

import serving_fixtures
from strokenet_tf import ensemble, export, inference
from strokenet_tf.serving import exporting, metadata as metadata_lib, signatures


@pytest.fixture(scope="module")
def cv_dir(tmp_path_factory):
    return serving_fixtures.write_cv_folder(str(tmp_path_factory.mktemp("cv")),
                                            calibration={"knots_p": [0.0, 0.5, 1.0], "knots_q": [0.0, 0.3, 0.9]})


@pytest.fixture(scope="module")
def exported(cv_dir, tmp_path_factory):
    config = exporting.ExportConfig(model_dir=cv_dir, export_base=str(tmp_path_factory.mktemp("exports")),
                                     warmup_depths=(2,), warmup_size=16)
    return exporting.export_run(config)


def test_cv_folder_exports_one_mirrored_calibrated_ensemble(exported, cv_dir):
    metadata = metadata_lib.read_metadata(exported.version_dir)
    assert metadata["mirror"] is True and metadata["calibration"]["method"] == "isotonic"
    assert metadata["calibration"]["knots_q"] == [0.0, 0.3, 0.9]
    summary = metadata["ensemble"]
    assert summary["n_members"] == 2 and [m["run_dir"] for m in summary["members"]] == [
        os.path.join(os.path.abspath(cv_dir), f"fold_{k}") for k in (0, 1)]
    assert all(len(m["source_sha256"]) == 64 for m in summary["members"])
    assert "not a medical device" in summary["perfusion_report"]
    assert set(signatures.EXPORTED_SIGNATURES) <= set(metadata["signatures"])


def test_exported_report_equals_the_in_process_ensemble(exported, cv_dir, make_case):
    segmenter = ensemble.load_ensemble([cv_dir])
    adapter = inference.SavedModelSegmenter(exported.version_dir)
    assert adapter.mirror and adapter.calibration == segmenter.calibration
    case = make_case(3, 20, 28)
    expected, actual = segmenter.analyse_case(case), adapter.analyse_case(case)
    np.testing.assert_allclose(actual[inference.PROBABILITIES_KEY], expected[inference.PROBABILITIES_KEY], atol=1e-5)
    np.testing.assert_array_equal(actual[inference.MASK_KEY], expected[inference.MASK_KEY])
    np.testing.assert_allclose(actual[inference.UNCERTAINTY_KEY], expected[inference.UNCERTAINTY_KEY], atol=1e-4)
    for key in ("core_volume_ml", "hypoperfusion_volume_ml", "mismatch_volume_ml", inference.MEMBER_VOLUMES_KEY):
        np.testing.assert_allclose(actual[key], expected[key], rtol=1e-5)
    assert actual[inference.MEMBER_VOLUMES_KEY].shape == (2,)
    assert int(actual["perfusion_status"]) == 0 and actual["hypoperfusion_volume_ml"] > 0


def test_export_cli_refuses_incompatible_members_in_one_line(cv_dir, tmp_path, capsys):
    other = str(tmp_path / "other")
    serving_fixtures.write_run(serving_fixtures.tiny_model(5), other)
    config_path = os.path.join(other, "config.json")
    with open(config_path) as stream:
        config = json.load(stream)
    config["model"]["in_channels"] = 5
    config["pipeline"]["multiples"] = [4, 16, 16]
    with open(config_path, "w") as stream:
        json.dump(config, stream)
    flag_values = flags.FlagValues()
    export.define_flags(flag_values)
    flag_values([
        "export", f"--model={os.path.join(cv_dir, 'fold_0')},{other}", f"--export_base={tmp_path / 'e'}"])
    with pytest.raises(SystemExit):
        export.main(["export"], flag_values)
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and "differs from" in error and "pipeline multiples" in error
    assert not os.path.exists(tmp_path / "e" / "strokenet" / "1")


def test_report_signature_input_contract(exported):
    loaded = tf.saved_model.load(exported.version_dir)
    report = loaded.signatures[signatures.REPORT]
    specs = report.structured_input_signature[1]
    assert specs[inference.VOXEL_SIZE_KEY].shape.as_list() == [None, 3]
    assert report.structured_outputs["defuse3"].dtype == tf.int32


def test_saved_model_root_lists_every_member_variable(exported, cv_dir):
    """The SavedModel's root lists every member's variables (what `ExportArchive.track` records)."""
    loaded = tf.saved_model.load(exported.version_dir)
    members = ensemble.load_ensemble([cv_dir]).models
    assert len(members) == 2
    assert len(loaded.variables) == sum(len(model.variables) for model in members)
    assert len(loaded.trainable_variables) == sum(len(model.trainable_variables) for model in members)
    saved = sorted(float(np.sum(np.abs(v.numpy()))) for v in loaded.variables)
    expected = sorted(float(np.sum(np.abs(np.asarray(v)))) for model in members for v in model.variables)
    np.testing.assert_allclose(saved, expected, rtol=1e-6)
