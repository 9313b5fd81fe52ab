"""Tests for perfusion maps from raw CT_4DPWI in the data reader, predict and the `from_4d` serving signature."""

import os
import re

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import nibabel as nib  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402

from strokenet_tf import inference, perfusion_input, prediction  # noqa: E402
from strokenet_tf.data import isles, time_series  # noqa: E402
from strokenet_tf.perfusion import tracer  # noqa: E402
from strokenet_tf.serving import exporting, signatures  # noqa: E402

FRAMES = 40
SHAPE = (2, 32, 32)  # network order [depth, height, width]
AFFINE = np.diag([0.9, 0.9, 5.0, 1.0])


def _write(path, data_xyz, interval=1.0, unit="sec"):
    image = nib.Nifti1Image(np.asarray(data_xyz), AFFINE)
    image.header.set_xyzt_units("mm", unit)
    if image.ndim == 4:
        image.header["pixdim"][4] = interval
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(image, str(path))
    return path


def _series(flat=False, seed=0):
    """CT [depth, height, width] and series [depth, height, width, time] in HU: skull ring, brain, arteries."""
    rng = np.random.default_rng(seed)
    h, w = np.meshgrid(np.arange(32), np.arange(32), indexing="ij")
    radius = np.hypot(h - 15.5, w - 15.5)
    ct = np.where(radius < 15, 1200.0, -1000.0)
    ct = np.where(radius < 13, 35.0, ct)
    ct = np.broadcast_to(ct, SHAPE).astype(np.float32)
    series = np.repeat(ct[..., None], FRAMES, axis=-1)
    if not flat:
        aif = tracer.gamma_variate(np.arange(FRAMES, dtype=np.float64), 5.0, 300.0, 3.0, 1.4)
        brain = np.broadcast_to(radius < 12, SHAPE)
        count = int(brain.sum())
        slow = np.broadcast_to(w < 12, SHAPE)[brain]  # a hypoperfused left part
        series[brain] += tracer.tissue_curves(aif, 1.0, np.where(slow, 12.0, 55.0), np.where(slow, 9.0, 4.0),
                                              np.where(slow, 4.0, 0.5), np.full(count, 1.0))
        series[:, 8, 20:22] = 35.0 + aif
        series[:, 3:5, 16] = 35.0 + tracer.transport(aif, 1.0, 4.0, 2.5)[0]
    series += rng.normal(0, 2.0, series.shape).astype(np.float32)
    return ct, series


def _case(root, name, flat=False):
    ct, series = _series(flat)
    case = root / name
    _write(case / "SMIR.Brain.XX.O.CT.11" / "SMIR.Brain.XX.O.CT.11.nii", isles.network_to_nifti(ct))
    _write(case / "SMIR.Brain.XX.O.CT_4DPWI.12" / "SMIR.Brain.XX.O.CT_4DPWI.12.nii",
           isles.network_to_nifti(series).astype(np.int16))
    return case


@pytest.fixture(scope="module")
def segmenter():
    import serving_fixtures

    model = serving_fixtures.tiny_model()
    return inference.Segmenter(model, isles.DEFAULT_CHANNELS, serving_fixtures.MODEL_CONFIG.required_multiples)


def test_time_series_reads_interval_and_refuses_bad_series(tmp_path, caplog):
    data = np.random.default_rng(0).normal(30, 5, (8, 8, 2, 25)).astype(np.float32)
    read = time_series.read_time_series(_write(tmp_path / "a.nii", data, 1.5), "case_1")
    assert read.series.shape == (2, 8, 8, 25) and read.frame_interval_s == 1.5 and read.volume.shape == (8, 8, 2)
    np.testing.assert_array_equal(read.series[1, 3, 5], data[5, 3, 1])
    assert time_series.read_time_series(_write(tmp_path / "b.nii", data, 1500, "msec"), "c").frame_interval_s == 1.5
    with caplog.at_level("WARNING"):
        assert time_series.read_time_series(_write(tmp_path / "c.nii", data, 0.0), "c").frame_interval_s == 1.0
    assert "pixdim[4] = 0" in caplog.text and "assuming 1 s" in caplog.text
    cases = [(data[..., 0], "no time axis"), (data[..., :12], "has 12 frames; expected at least 20")]
    nan = data.copy()
    nan[..., 4] = np.nan
    nan[0, 0, 0, 9] = np.inf
    cases.append((nan, re.escape("NaN/Inf values in 2 of 25 frames (first: frame 4)")))
    for number, (bad, message) in enumerate(cases):
        with pytest.raises(isles.IslesFormatError, match=message) as error:
            time_series.read_time_series(_write(tmp_path / f"bad{number}.nii", bad), "case_9")
        text = str(error.value)
        assert "\n" not in text and text.startswith("case_9: CT_4DPWI file") and f"bad{number}.nii" in text


def test_predict_reads_maps_from_the_series(tmp_path, segmenter):
    case_dir = _case(tmp_path, "case_1")
    case_input = prediction.CaseInput("case_1", "case_1", case_dir=case_dir)
    assert perfusion_input.wants_maps_from_4d(case_input, segmenter.channels)
    case = prediction.read_input(case_input, segmenter.channels)
    assert case.channels == isles.DEFAULT_CHANNELS and case.image.shape == SHAPE + (5,)
    cbf, tmax = case.image[..., 1], case.image[..., 4]
    brain = cbf > 0
    left, right = brain & (np.arange(32) < 10), brain & (np.arange(32) > 14)
    assert np.median(cbf[left]) < 0.5 * np.median(cbf[right])
    assert np.median(tmax[left]) > np.median(tmax[right]) + 2.0
    assert "deconvolved" in case.source_files[isles.CBF]
    probabilities, mask = segmenter.predict_case(case)
    assert probabilities.shape == SHAPE


def test_no_arterial_input_fails_that_case_only(tmp_path, segmenter):
    good, flat = _case(tmp_path, "case_1"), _case(tmp_path, "case_2", flat=True)
    inputs = perfusion_input.for_inputs(prediction.find_inputs(tmp_path), maps_from_4d=True)
    assert all(i.maps_from_4d for i in inputs) and {good.name, flat.name} == {i.case_id for i in inputs}
    with pytest.raises(perfusion_input.NoArterialInputError) as error:
        prediction.read_input([i for i in inputs if i.case_id == "case_2"][0], segmenter.channels)
    text = str(error.value)
    assert "\n" not in text and text.startswith("case_2: CT_4DPWI file") and "no arterial input" in text
    reports, failures = prediction.predict_cases(
        segmenter, inputs, prediction.OutputOptions(str(tmp_path / "out"), save_montage=False))
    assert [r["case_id"] for r in reports] == ["case_1"] and [f.case_id for f in failures] == ["case_2"]


def test_from_4d_signature_matches_predict(tmp_path, segmenter):
    case_dir = _case(tmp_path, "case_1")
    case = prediction.read_input(prediction.CaseInput("case_1", "case_1", case_dir=case_dir), segmenter.channels)
    expected, expected_mask = segmenter.predict_case(case)
    archive = exporting.build_export_archive(segmenter)
    archive.write_out(str(tmp_path / "export"), verbose=False)
    loaded = tf.saved_model.load(str(tmp_path / "export"))
    assert signatures.FROM_4D in loaded.signatures
    read = time_series.read_time_series(next(case_dir.glob("*CT_4DPWI*/*.nii")), "case_1")
    series_hu, ct_hu, interval = signatures.FROM_4D_KEYS
    outputs = loaded.signatures[signatures.FROM_4D](**{
        series_hu: tf.constant(read.series[None]), ct_hu: tf.constant(case.image[None, ..., 0]),
        interval: tf.constant([read.frame_interval_s], tf.float32)})
    assert bool(outputs[signatures.AIF_FOUND_KEY].numpy()[0])
    np.testing.assert_allclose(outputs[inference.PROBABILITIES_KEY].numpy()[0], expected, atol=1e-4)
    np.testing.assert_array_equal(outputs[inference.MASK_KEY].numpy()[0], expected_mask)


def test_predict_run_with_ct_and_pwi_files_only(tmp_path, segmenter):
    from strokenet_tf import predict

    case_dir = _case(tmp_path, "case_7")
    files = {isles.CT: str(next(case_dir.glob("*.CT.*/*.nii"))),
             isles.PWI: str(next(case_dir.glob("*CT_4DPWI*/*.nii")))}
    config = predict.PredictConfig(model=str(tmp_path), output_dir=str(tmp_path / "out"), files=files,
                                   case_id="case_7", montage=False, progress=False, maps_from_4d=True)
    reports, failures = predict.run(config, segmenter=segmenter)
    assert not failures and [r["case_id"] for r in reports] == ["case_7"]
    assert "deconvolved" in reports[0]["inputs"][isles.CBF]


def test_export_checks_and_describes_the_from_4d_signature(tmp_path, segmenter, monkeypatch):
    """export_segmenter reloads the SavedModel and compares `from_4d` with the in-process graph on a phantom; a
    SavedModel whose from_4d differs is refused; the metadata describes the signature's inputs."""
    from strokenet_tf.serving import metadata as metadata_lib, warmup

    ct, series = warmup.synthetic_series()
    found = signatures.from_4d_endpoint(segmenter)(
        tf.constant(series[None]), tf.constant(ct[None]), tf.constant([1.0]))[signatures.AIF_FOUND_KEY]
    assert bool(found.numpy()[0])  # the phantom has an arterial input: the check compares real maps
    summary = metadata_lib.signature_summary(len(segmenter.channels), from_4d=True)[signatures.FROM_4D]
    assert set(summary["inputs"]) == set(signatures.FROM_4D_KEYS) and signatures.AIF_FOUND_KEY in summary["outputs"]
    version_dir, difference = exporting.export_segmenter(segmenter, str(tmp_path / "base"), 1, {"model_name": "m"})
    assert difference is not None and difference <= exporting.PROBABILITY_TOLERANCE
    loaded = tf.saved_model.load(version_dir)
    original = signatures.from_4d_endpoint

    def shifted(seg):  # an in-process graph that disagrees with the saved one
        function = original(seg)
        return lambda **inputs: {**function(**inputs), inference.PROBABILITIES_KEY:
                                 function(**inputs)[inference.PROBABILITIES_KEY] + 0.1}

    monkeypatch.setattr(signatures, "from_4d_endpoint", shifted)
    with pytest.raises(exporting.ExportError, match="from_4d"):
        exporting._verify_from_4d(version_dir, loaded, segmenter)


def test_export_without_from_4d_leaves_the_signature_out(tmp_path, segmenter):
    version_dir, _ = exporting.export_segmenter(segmenter, str(tmp_path / "base"), 1, {"model_name": "m"},
                                                from_4d=False)
    loaded = tf.saved_model.load(version_dir)
    assert signatures.FROM_4D not in loaded.signatures and signatures.SERVING_DEFAULT in loaded.signatures
