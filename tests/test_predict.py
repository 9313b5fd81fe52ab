"""Tests for strokenet_tf.predict / strokenet_tf.prediction: exact geometry round-trips (flipped, oblique, odd
sizes that need padding), refusals, bad cases skipped with exit code 1, atomic outputs, explicit files."""

import json
import os
import pathlib

import keras
import nibabel as nib
import numpy as np
import pytest
from absl import flags
from scipy import ndimage

from strokenet_tf import inference, metrics, predict, prediction
from strokenet_tf import curriculum as curriculum_lib
from strokenet_tf.config import TrainConfig
from strokenet_tf.data import isles, pipeline, synthesis
from strokenet_tf.model import strokenet
from strokenet_tf.training import loop

MODALITIES = (isles.CT, isles.CBF, isles.CBV, isles.MTT, isles.TMAX)


def _rotation_z(degrees):
    angle = np.deg2rad(degrees)
    return np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]])


AFFINES = {
    "ras": np.array([[0.9, 0, 0, -10], [0, 0.9, 0, -12], [0, 0, 5.0, 3], [0, 0, 0, 1]]),
    "flipped": np.array([[-0.9, 0, 0, 20], [0, 0.9, 0, -12], [0, 0, -5.0, 30], [0, 0, 0, 1]]),
    "oblique": np.block([[_rotation_z(20) @ np.diag([0.9, 0.9, 5.0]) @ np.array([[1, 0, 0.1], [0, 1, 0], [0, 0, 1]]),
                          np.array([[4.0], [-7.0], [11.0]])], [np.zeros((1, 3)), np.ones((1, 1))]]),
}


def write_case(case_dir, maps_xyz, affine, codes=(1, 2), dtype=np.float32, skip=(), extra=None):
    """Writes an ISLES-layout case folder from NIfTI-order arrays with a chosen affine and qform/sform codes."""
    case_dir = pathlib.Path(case_dir)
    for index, (modality, volume) in enumerate({**maps_xyz, **(extra or {})}.items()):
        if modality in skip:
            continue
        name = f"SMIR.Brain.XX.O.{modality}.{100000 + index}"
        (case_dir / name).mkdir(parents=True, exist_ok=True)
        image = nib.Nifti1Image(np.asarray(volume, np.uint8 if modality == isles.LABEL else dtype), affine)
        image.set_qform(affine, code=codes[0])
        image.set_sform(affine, code=codes[1])
        image.header.set_xyzt_units("mm", "sec")
        nib.save(image, str(case_dir / name / f"{name}.nii"))
    return case_dir


def synthetic_maps(seed, size=33, depth=3, label=False):
    """Maps in NIfTI (x, y, z) order of an odd-sized synthetic case (33 x 33 x 3: padding needed)."""
    case = synthesis.synthesize_case(np.random.default_rng(seed), size=size, depths=(depth,), with_pwi=False)
    maps = {m: case["maps"][m] for m in MODALITIES}
    if label:
        maps[isles.LABEL] = case["maps"][isles.LABEL]
    return maps


def voxelwise_segmenter(threshold=0.5):
    """A Segmenter whose logits are 10 * (normalised Tmax - 0.5): its mask depends on each voxel alone, so it
    commutes with any reordering of the voxels (flips), unlike a convolutional network."""
    inputs = keras.Input((None, None, None, len(MODALITIES)))
    logits = keras.layers.Lambda(lambda x: 10.0 * (x[..., 4:5] - 0.5))(inputs)
    return inference.Segmenter(keras.Model(inputs, logits), MODALITIES, (1, 1, 1), threshold)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A tiny trained run (2 optimizer steps) to drive the command line through `load_segmenter`."""
    root = tmp_path_factory.mktemp("data")
    synthesis.write_dataset(str(root), num_cases=3, seed=0, size=32, depths=(2,), with_pwi=False)
    model = strokenet.tiny_model_config(in_channels=5)
    config = TrainConfig(
        data_dir=str(root), model_dir=str(tmp_path_factory.mktemp("run") / "model"), model=model,
        pipeline=pipeline.PipelineConfig(), num_folds=3, batch_size=2, steps_per_epoch=2, verbose=False,
        curriculum=curriculum_lib.Curriculum.single_stage(1, 1e-3, tuple(model.required_multiples)),
    )
    loop.train(config)
    return config.model_dir


@pytest.fixture(scope="module")
def tiny_segmenter(tiny_run):
    return inference.Segmenter.from_run(tiny_run)


def run_main(*argv):
    flag_values = flags.FlagValues()
    predict.define_flags(flag_values)
    flag_values(["predict", *argv])
    predict.main(["predict"], flag_values)


def _nifti(path):
    image = nib.load(str(path))
    return image, np.asarray(image.dataobj)


# --- geometry ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", sorted(AFFINES))
def test_outputs_keep_the_exact_input_geometry(tmp_path, kind):
    affine = AFFINES[kind]
    case_dir = write_case(tmp_path / "in" / "case_7", synthetic_maps(1), affine, codes=(1, 2))
    segmenter = voxelwise_segmenter()
    options = prediction.OutputOptions(str(tmp_path / "out"), save_probabilities=True)
    reports, failures = prediction.predict_cases(segmenter, prediction.find_inputs(case_dir), options)
    assert failures == [] and len(reports) == 1
    source, _ = _nifti(next(case_dir.glob("*CT_Tmax*/*.nii")))
    case = isles.read_case(case_dir)
    probabilities, mask = segmenter.predict_case(case)
    assert mask.any() and not mask.all()
    paths = prediction.output_paths(prediction.find_inputs(case_dir)[0], options)
    for kind_, dtype, expected in (("mask", np.uint8, mask), ("probability", np.float32, probabilities)):
        image, data = _nifti(paths[kind_])
        assert image.shape == source.shape == (33, 33, 3)
        np.testing.assert_array_equal(image.affine, source.affine)
        np.testing.assert_array_equal(image.get_qform(), source.get_qform())
        np.testing.assert_array_equal(image.get_sform(), source.get_sform())
        assert (int(image.header["qform_code"]), int(image.header["sform_code"])) == (1, 2)
        assert image.header.get_zooms() == source.header.get_zooms()
        assert image.header.get_xyzt_units() == ("mm", "sec")
        assert image.get_data_dtype() == dtype
        np.testing.assert_array_equal(data, isles.network_to_nifti(expected))
    report = json.loads(paths["report"].read_text())
    assert report["lesion_volume_ml"] == round(metrics.volume_ml(mask, case.spacing_mm), 3)
    assert report["connected_components"] == ndimage.label(mask, ndimage.generate_binary_structure(3, 3))[1]
    assert report["shape_xyz"] == [33, 33, 3] and report["outputs"]["mask"] == str(paths["mask"])
    assert paths["montage"].read_bytes()[:4] == b"\x89PNG"
    assert not list((tmp_path / "out").rglob(".tmp-*"))


def test_flipped_file_gives_the_flipped_mask(tmp_path):
    maps = synthetic_maps(2)
    write_case(tmp_path / "a" / "case_1", maps, AFFINES["ras"])
    flipped_affine = AFFINES["ras"] @ np.array([[-1, 0, 0, 32], [0, 1, 0, 0], [0, 0, -1, 2], [0, 0, 0, 1]])
    write_case(tmp_path / "b" / "case_1", {m: v[::-1, :, ::-1] for m, v in maps.items()}, flipped_affine)
    segmenter = voxelwise_segmenter()
    for name in "ab":
        options = prediction.OutputOptions(str(tmp_path / f"out_{name}"), save_montage=False)
        prediction.predict_cases(segmenter, prediction.find_inputs(tmp_path / name), options)
    _, mask_a = _nifti(tmp_path / "out_a" / "case_1" / "case_1_mask.nii.gz")
    image_b, mask_b = _nifti(tmp_path / "out_b" / "case_1" / "case_1_mask.nii.gz")
    assert mask_a.any()
    np.testing.assert_array_equal(mask_b, mask_a[::-1, :, ::-1])  # same world voxels are lesion
    np.testing.assert_allclose(image_b.affine, flipped_affine)


def test_network_with_padding_on_odd_sizes_via_command_line(tmp_path, tiny_run, tiny_segmenter, capsys):
    affine = AFFINES["oblique"]
    case_dir = write_case(tmp_path / "case_3", synthetic_maps(3, size=35, depth=3), affine, codes=(2, 0))
    run_main(f"--model={tiny_run}", f"--input={case_dir}", f"--output_dir={tmp_path / 'out'}",
             "--save_probabilities", "--noprogress")
    out = capsys.readouterr().out
    mask_path = tmp_path / "out" / "case_3" / "case_3_mask.nii.gz"
    assert f"mask {mask_path}" in out and "case_3_montage.png" in out
    image, data = _nifti(mask_path)
    source = nib.load(str(next(case_dir.glob("*CT.*/*.nii"))))
    assert image.shape == (35, 35, 3) and data.dtype == np.uint8
    np.testing.assert_array_equal(image.affine, source.affine)
    assert (int(image.header["qform_code"]), int(image.header["sform_code"])) == (2, 0)
    probabilities, _ = tiny_segmenter.predict_case(isles.read_case(case_dir))
    _, written = _nifti(tmp_path / "out" / "case_3" / "case_3_probability.nii.gz")
    np.testing.assert_allclose(written, isles.network_to_nifti(probabilities), rtol=1e-6, atol=1e-7)


# --- refusals and bad input -------------------------------------------------------------------------------------

def test_existing_outputs_are_refused_unless_overwrite(tmp_path, tiny_run, tiny_segmenter, capsys):
    case_dir = write_case(tmp_path / "case_1", synthetic_maps(4), AFFINES["ras"])
    args = [f"--model={tiny_run}", f"--input={case_dir}", f"--output_dir={tmp_path / 'out'}", "--noprogress"]
    run_main(*args)
    mask_path = tmp_path / "out" / "case_1" / "case_1_mask.nii.gz"
    before = mask_path.stat().st_ino  # an atomic replace makes a new inode
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        run_main(*args)
    err = capsys.readouterr().err.strip()
    assert exit_info.value.code == 2
    assert err.startswith("strokenet_tf.predict: error: output ") and "already exists" in err
    assert "--overwrite" in err and len(err.splitlines()) == 1 and "Traceback" not in err
    assert mask_path.stat().st_ino == before
    config = predict.PredictConfig(model=tiny_run, output_dir=str(tmp_path / "out"), input=str(case_dir),
                                   overwrite=True, progress=False)
    reports, failures = predict.run(config, segmenter=tiny_segmenter)
    assert failures == [] and reports[0]["outputs"]["mask"] == str(mask_path)
    assert mask_path.stat().st_ino != before


def test_output_inside_an_input_case_folder_is_refused(tmp_path):
    case_dir = write_case(tmp_path / "case_1", synthetic_maps(5), AFFINES["ras"])
    inputs = prediction.find_inputs(case_dir)
    with pytest.raises(prediction.PredictError, match="inside input case folder"):
        prediction.check_outputs(inputs, prediction.OutputOptions(str(case_dir / "predictions")))
    # The parent of a single case, or the folder holding several, would put outputs into the case folders.
    before = sorted(str(p) for p in tmp_path.rglob("*"))
    for found in (inputs, prediction.find_inputs(tmp_path)):
        with pytest.raises(prediction.PredictError, match=f"inside input case folder {case_dir}"):
            prediction.check_outputs(found, prediction.OutputOptions(str(tmp_path)))
    assert sorted(str(p) for p in tmp_path.rglob("*")) == before  # nothing was written
    prediction.check_outputs(inputs, prediction.OutputOptions(str(tmp_path / "elsewhere")))  # a sibling is fine
    files = {m: str(next(case_dir.glob(f"*.O.{m}.*/*.nii"))) for m in MODALITIES}
    with pytest.raises(prediction.PredictError, match="^input .* is a file; give a case folder, or one case's maps"):
        prediction.find_inputs(files[isles.CT])
    explicit = prediction.explicit_input(files)
    assert explicit.case_id == "case_1"
    with pytest.raises(prediction.PredictError, match="overwrite an input file"):
        prediction.check_outputs([prediction.CaseInput("x", "x", files={isles.CT: str(tmp_path / "o" / "x" /
                                                                                    "x_mask.nii.gz")})],
                                 prediction.OutputOptions(str(tmp_path / "o")))


def test_folder_run_skips_bad_cases_and_exits_1(tmp_path, tiny_run, capsys):
    root = tmp_path / "cases"
    good = synthetic_maps(6, size=32, depth=2)
    write_case(root / "case_1", good, AFFINES["ras"])
    write_case(root / "case_2", good, AFFINES["ras"], skip=(isles.CBF,))  # missing modality
    write_case(root / "case_3", {**good, isles.MTT: good[isles.MTT][:-1]}, AFFINES["ras"])  # mismatched shape
    write_case(root / "case_4", good, AFFINES["ras"])
    not_nifti = next((root / "case_4").glob("*CT_CBV*/*.nii"))
    not_nifti.write_text("this is not a NIfTI file\n")
    with_nan = {**good, isles.CBF: good[isles.CBF].copy()}
    with_nan[isles.CBF][3, 4, 1] = np.nan
    write_case(root / "case_5", with_nan, AFFINES["ras"])
    with pytest.raises(SystemExit) as exit_info:
        run_main(f"--model={tiny_run}", f"--input={root}", f"--output_dir={tmp_path / 'out'}", "--noprogress")
    captured = capsys.readouterr()
    assert exit_info.value.code == 1
    err = captured.err
    assert "case_2: skipped: case_2: missing modality CT_CBF" in err
    assert "case_3: skipped:" in err and "CT_MTT file" in err and "has shape (31, 32, 2); expected (32, 32, 2)" in err
    assert "case_4: skipped:" in err and f"{not_nifti.name}" in err and "not a readable NIfTI" in err
    cbf_file = next((root / "case_5").glob("*CT_CBF*/*.nii"))
    assert f"warning: case_5: replaced 1 NaN/Inf voxels by 0 in CT_CBF file {cbf_file}" in err
    assert err.strip().splitlines()[-1].startswith("strokenet_tf.predict: error: 3 of 5 case(s) failed: case_2")
    assert "Traceback" not in err
    done = sorted(p.parent.name for p in (tmp_path / "out").rglob("*_report.json"))
    assert done == ["case_1", "case_5"]
    assert not (tmp_path / "out" / "case_2").exists() and not list((tmp_path / "out").rglob(".tmp-*"))
    report = json.loads((tmp_path / "out" / "case_5" / "case_5_report.json").read_text())
    assert report["nonfinite_voxels_replaced"] == {isles.CBF: 1}
    assert sorted(os.listdir(root / "case_1")) == sorted(f"SMIR.Brain.XX.O.{m}.{100000 + i}"
                                                         for i, m in enumerate(MODALITIES))  # inputs untouched


def test_crash_while_writing_leaves_no_half_written_nifti(tmp_path, monkeypatch):
    case_dir = write_case(tmp_path / "case_1", synthetic_maps(7), AFFINES["ras"])

    def failing_save(image, filename):
        pathlib.Path(filename).write_bytes(b"half a header")
        raise OSError("No space left on device")

    monkeypatch.setattr(isles.nib, "save", failing_save)
    warnings = []
    reports, failures = prediction.predict_cases(voxelwise_segmenter(), prediction.find_inputs(case_dir),
                                                 prediction.OutputOptions(str(tmp_path / "out")), warn=warnings.append)
    assert reports == [] and [f.case_id for f in failures] == ["case_1"] and "No space left" in warnings[0]
    assert list((tmp_path / "out").rglob("*")) == [tmp_path / "out" / "case_1"]  # no file, no temporary


def test_explicit_files_and_their_errors(tmp_path, tiny_run, capsys):
    case_dir = write_case(tmp_path / "scan" / "case_9", synthetic_maps(8), AFFINES["flipped"])
    files = {m: next(case_dir.glob(f"*.O.{m}.*/*.nii")) for m in MODALITIES}
    flag_of = {isles.CT: "ct", isles.CBF: "cbf", isles.CBV: "cbv", isles.MTT: "mtt", isles.TMAX: "tmax"}
    args = [f"--{flag_of[m]}={p}" for m, p in files.items()]
    run_main(f"--model={tiny_run}", *args, f"--output_dir={tmp_path / 'out'}", "--case_id=patient_a", "--noprogress")
    image, _ = _nifti(tmp_path / "out" / "patient_a" / "patient_a_mask.nii.gz")
    np.testing.assert_array_equal(image.affine, nib.load(str(files[isles.CT])).affine)
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        run_main(f"--model={tiny_run}", *args[:-1], f"--output_dir={tmp_path / 'out2'}", "--noprogress")
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.strip() == ("strokenet_tf.predict: error: --tmax is required: the model reads "
                                               "CT, CT_CBF, CT_CBV, CT_MTT, CT_Tmax")
    with pytest.raises(SystemExit) as exit_info:
        run_main(f"--model={tiny_run}", f"--input={case_dir}", *args, f"--output_dir={tmp_path / 'out3'}")
    assert exit_info.value.code == 2 and "not both" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        run_main(f"--model={tmp_path / 'nowhere'}", f"--input={case_dir}", f"--output_dir={tmp_path / 'out4'}")
    err = capsys.readouterr().err.strip()
    assert exit_info.value.code == 2 and err.startswith("strokenet_tf.predict: error: ") and "nowhere" in err


def test_saved_model_gives_the_same_outputs_as_the_run(tmp_path, tiny_segmenter):
    """The SavedModel contract of inference.py (what export writes) reproduces predict's mask exactly."""
    segmenter = tiny_segmenter
    export_dir = tmp_path / "export" / "1"
    import tensorflow as tf

    tf.saved_model.save(segmenter, str(export_dir), signatures={"serving_default": segmenter.segment})
    (export_dir / "assets.extra").mkdir()
    (export_dir / inference.EXPORT_METADATA_FILE).write_text(json.dumps(
        {"channels": list(segmenter.channels), "threshold": segmenter.threshold}))
    case_dir = write_case(tmp_path / "case_2", synthetic_maps(9), AFFINES["oblique"])
    masks = []
    for name, model in (("run", segmenter), ("export", prediction.load_model(str(export_dir)))):
        options = prediction.OutputOptions(str(tmp_path / name), save_montage=False)
        prediction.predict_cases(model, prediction.find_inputs(case_dir), options)
        masks.append(_nifti(tmp_path / name / "case_2" / "case_2_mask.nii.gz")[1])
    np.testing.assert_array_equal(masks[0], masks[1])
    with pytest.raises(inference.ModelLoadError, match="fixes its threshold"):
        prediction.load_model(str(export_dir), threshold=0.3)
