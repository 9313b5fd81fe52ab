"""SIGKILL during `python -m strokenet_tf.export` and `python -m strokenet_tf.predict` leaves nothing half-written.

Export: killed after the SavedModel is written, while writing warmup requests, while verifying, just before the
complete (fsynced) staging folder is renamed, just before and just after an --overwrite swaps it with the old
version (and between the two renames of the fallback without an atomic swap), right after publishing,
and when the k-th file (k seeded at random) appears in the staging folder. Afterwards every integer-named folder under EXPORT_BASE/<model_name>/ (what
TF-Serving would load) holds exactly the files of a complete export, and rerunning the same command succeeds.

Predict: killed in the middle of writing a NIfTI, just before a finished NIfTI is renamed into place, while
encoding a montage, just before a report, and when the k-th output file (k seeded) appears. Afterwards every file under its final
name is complete (NIfTI readable to the last voxel, JSON parsing, PNG up to its IEND chunk), a case with a
report has all its outputs, the inputs are byte-identical, and a rerun with --overwrite completes.

The kills run in forked children of one process that imported TensorFlow once (`fork_runner`); each child
SIGKILLs itself from a hook at the chosen point (or from a watcher thread), so no Python cleanup code runs.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import pathlib
import shutil
import signal

import nibabel as nib
import numpy as np
import pytest

import fork_runner
import serving_fixtures
from strokenet_tf.data import synthesis
from strokenet_tf.serving import exporting, metadata as metadata_lib

KILLED = -signal.SIGKILL
DIE = "import os, signal, threading\n\ndef _die(*args, **kwargs):\n    os.kill(os.getpid(), signal.SIGKILL)\n\n"
EXPORT_ARGS = ("--warmup_depths=2", "--warmup_size=16", "--nofrom_4d")  # kill points do not need the 4D graph
_EXPORTING = "from strokenet_tf.serving import exporting\n"
_RENAME = ("_real_rename = os.rename\n\ndef _rename(src, dst):\n{body}\n\nos.rename = _rename\n")

# point -> (hook, extra flags, version folder present before the run)
EXPORT_KILLS = {
    "savedmodel_written": (_EXPORTING + "exporting.metadata_lib.write_metadata = _die\n", (), False),
    "writing_warmup": (_EXPORTING + "exporting.warmup.write_warmup_file = _die\n", (), False),
    "verifying": (_EXPORTING + "exporting.verify_export = _die\n", (), False),
    "before_rename": (_RENAME.format(body="    if '.tmp-export-' in str(src):\n        _die()\n"
                                          "    return _real_rename(src, dst)"), (), False),
    "overwrite_before_swap": (_EXPORTING + "exporting.exchange_paths = _die\n", ("--version=1", "--overwrite"),
                              True),
    "overwrite_after_swap": (_EXPORTING + "_real = exporting.exchange_paths\n"
                             "exporting.exchange_paths = lambda a, b: (_real(a, b), _die())\n",
                             ("--version=1", "--overwrite"), True),
    # Where the atomic swap is unavailable: the old version is renamed aside, then the new one into place.
    "overwrite_fallback_between_renames": (_EXPORTING + "exporting.exchange_paths = lambda a, b: False\n" +
                                           _RENAME.format(body="    _real_rename(src, dst)\n"
                                                               "    if '.tmp-replaced-' in str(dst):\n"
                                                               "        _die()"),
                                           ("--version=1", "--overwrite"), True),
    "after_publish": (_EXPORTING + "_real = exporting._publish\n"
                      "exporting._publish = lambda *a: (_real(*a), _die())\n", (), False),
}
EXPORT_RANDOM_KILLS = 1  # plus the 8 named points; each kill and its rerun is an export (~15 s on 2 cores)
PREDICT_RANDOM_KILLS = 1
# point -> hook. Outputs in order: case_1 mask, probability, uncertainty, montage, report; case_2 mask, ...
PREDICT_KILLS = {
    "mid_nifti": ("import nibabel\n_real_save, _calls = nibabel.save, []\n\n"
                  "def _save(image, filename):\n"
                  "    _calls.append(filename)\n"
                  "    _real_save(image, filename)\n"
                  "    if len(_calls) == 4:  # case_2's mask: leave half of it in the temporary file\n"
                  "        data = open(filename, 'rb').read()\n"
                  "        open(filename, 'wb').write(data[: len(data) // 2])\n"
                  "        _die()\n\n"
                  "nibabel.save = _save\n"),
    "before_replace": ("_real_replace = os.replace\n\n"
                       "def _replace(src, dst):\n"
                       "    if str(dst).endswith('case_2_probability.nii.gz'):\n        _die()\n"
                       "    return _real_replace(src, dst)\n\n"
                       "os.replace = _replace\n"),
    "encoding_montage": "from strokenet_tf import montage\nmontage.encode_png = _die\n",
    "before_report": ("from strokenet_tf.data import atomic\n_real_text = atomic.atomic_write_text\n\n"
                      "def _text(path, text, *args, **kwargs):\n"
                      "    if str(path).endswith('case_2_report.json'):\n        _die()\n"
                      "    return _real_text(path, text, *args, **kwargs)\n\n"
                      "atomic.atomic_write_text = _text\n"),
}


def _watcher(seed: int, root: pathlib.Path, marker: str, most_files: int) -> str:
    """Hook: SIGKILL as soon as the k-th file (k seeded in [1, most_files]) shows up in a folder under `root`
    whose path contains `marker`: a random point of the writing, whatever the machine's speed."""
    k = int(np.random.default_rng(seed).integers(1, most_files, endpoint=True))
    return (f"def _watch():\n"
            f"    while sum(len(f) for d, _, f in os.walk({str(root)!r}) if {marker!r} in d) < {k}:\n"
            f"        threading.Event().wait(0.001)\n"
            f"    _die()\n\n"
            f"threading.Thread(target=_watch, daemon=True).start()\n")


def _sha256_tree(root) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(pathlib.Path(root).rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def setting(tmp_path_factory):
    """A tiny run, a complete reference export of it, three small cases."""
    root = tmp_path_factory.mktemp("killed")
    run_dir = serving_fixtures.write_run(serving_fixtures.tiny_model(), str(root / "run"))
    reference = exporting.export_run(exporting.ExportConfig(
        model_dir=run_dir, export_base=str(root / "reference"), warmup_depths=(2,), warmup_size=16, verify=False,
        from_4d=False))
    data = root / "data"
    synthesis.write_dataset(str(data), num_cases=3, seed=1, size=32, depths=(2,), with_pwi=False)
    return {"root": root, "run": run_dir, "reference": reference.version_dir, "data": data / "TRAINING"}


def _export_jobs(setting, prefix: str, with_hooks: bool) -> list[fork_runner.Job]:
    jobs = []
    points = [(name, hook, flags) for name, (hook, flags, _) in EXPORT_KILLS.items()]
    for k in range(EXPORT_RANDOM_KILLS):  # a complete export has 6 files: .pb x 2, variables x 2, metadata, warmup
        hook = _watcher(k, setting["root"] / "exports" / f"random_{k}" / "strokenet", ".tmp-export-", 6)
        points.append((f"random_{k}", hook, ()))
    for name, hook, flags in points:
        base = setting["root"] / "exports" / name
        # Verification (reload, compare, replay the warmup: ~half an export) runs where it is killed and in the
        # random kills; the other points are in the publishing that follows it, which it does not change.
        verify = with_hooks and (name == "verifying" or name.startswith("random_"))
        jobs.append(fork_runner.Job(f"{prefix}-export-{name}", "strokenet_tf.export",
                                    [f"--model={setting['run']}", f"--export_base={base}", *EXPORT_ARGS, *flags,
                                     *([] if verify else ["--noverify"])],
                                    DIE + hook if with_hooks else ""))
    return jobs


def _predict_jobs(setting, prefix: str, with_hooks: bool) -> list[fork_runner.Job]:
    points = list(PREDICT_KILLS.items())
    for k in range(PREDICT_RANDOM_KILLS):  # 3 cases x 5 outputs, each written as a temporary file and renamed
        points.append((f"random_{k}", _watcher(100 + k, setting["root"] / "predictions" / f"random_{k}", "", 15)))
    return [fork_runner.Job(f"{prefix}-predict-{name}", "strokenet_tf.predict",
                            [f"--model={setting['run']}", f"--input={setting['data']}",
                             f"--output_dir={setting['root'] / 'predictions' / name}", "--save_probabilities",
                             "--noprogress", *([] if with_hooks else ["--overwrite"])],
                            DIE + hook if with_hooks else "") for name, hook in points]


@pytest.fixture(scope="module")
def runs(setting, tmp_path_factory):
    """(killed results, listings right after the kills, input hashes before/after, rerun results)."""
    for name, (_, _, existing) in EXPORT_KILLS.items():
        if existing:
            shutil.copytree(setting["reference"], setting["root"] / "exports" / name / "strokenet" / "1")
    inputs_before = _sha256_tree(setting["data"])
    streams = tmp_path_factory.mktemp("streams")
    killed = fork_runner.run_jobs(_export_jobs(setting, "kill", True) + _predict_jobs(setting, "kill", True),
                                  streams / "kill")
    after_kill = {name: _version_state(setting["root"] / "exports" / name / "strokenet", setting["reference"])
                  for name in _names(EXPORT_KILLS, EXPORT_RANDOM_KILLS)}
    predictions = {name: _prediction_state(setting["root"] / "predictions" / name)
                   for name in _names(PREDICT_KILLS, PREDICT_RANDOM_KILLS)}
    inputs_after_kill = _sha256_tree(setting["data"])
    reruns = fork_runner.run_jobs(_export_jobs(setting, "rerun", False) + _predict_jobs(setting, "rerun", False),
                                  streams / "rerun")
    return {"killed": killed, "versions": after_kill, "predictions": predictions, "reruns": reruns,
            "inputs": (inputs_before, inputs_after_kill, _sha256_tree(setting["data"]))}


def _names(points, random_kills):
    return list(points) + [f"random_{k}" for k in range(random_kills)]


def _version_state(model_base: pathlib.Path, reference: str) -> dict:
    """Versions TF-Serving would load, whether each is complete, and the hidden leftovers."""
    expected = sorted(_sha256_tree(reference))
    names = sorted(os.listdir(model_base)) if model_base.is_dir() else []
    versions = {}
    for name in names:
        if exporting.is_version_name(name):
            folder = model_base / name
            complete = sorted(_sha256_tree(folder)) == expected
            if complete:
                metadata_lib.read_metadata(str(folder))  # parses
                complete = (folder / "variables" / "variables.index").stat().st_size > 0
            versions[int(name)] = complete
    identical = [int(n) for n in names if exporting.is_version_name(n)
                 and _sha256_tree(model_base / n) == _sha256_tree(reference)]
    return {"versions": versions, "identical_to_reference": identical,
            "other": [n for n in names if not exporting.is_version_name(n)]}


def _complete(path: pathlib.Path) -> bool:
    """A finished output: the NIfTI decodes to its last voxel, the JSON parses, the PNG ends with IEND, the batch
    CSV has its header and one row per case (3)."""
    try:
        if path.name.endswith(".nii.gz"):
            data = np.asarray(nib.load(path).dataobj)
            return data.shape == (32, 32, 2) and bool(np.isfinite(data).all())
        if path.suffix == ".json":
            return isinstance(json.loads(path.read_text()), dict)
        if path.suffix == ".png":
            content = path.read_bytes()
            return content.startswith(b"\x89PNG") and content.endswith(b"IEND\xaeB`\x82")
        if path.suffix == ".csv":
            rows = list(csv.DictReader(path.read_text().splitlines()))
            return len(rows) == 3 and all(row.get("case_id") for row in rows)
    except Exception:  # any failure to decode is an incomplete file
        return False
    return False


def _prediction_state(out: pathlib.Path) -> dict:
    files = [p for p in out.rglob("*") if p.is_file()] if out.is_dir() else []
    visible = [p for p in files if not p.name.startswith(".")]
    reports = {p.parent.name: json.loads(p.read_text()) for p in visible if p.name.endswith("_report.json")
               and _complete(p)}
    return {
        "incomplete": sorted(str(p.relative_to(out)) for p in visible if not _complete(p)),
        "hidden": sorted(str(p.relative_to(out)) for p in files if p.name.startswith(".")),
        "visible": sorted(str(p.relative_to(out)) for p in visible),
        "reports_missing_outputs": sorted(case for case, report in reports.items()
                                          if not all(os.path.isfile(f) for f in report["outputs"].values())),
    }


# --------------------------------------------------------------------------------------------- export

@pytest.mark.parametrize("point", _names(EXPORT_KILLS, EXPORT_RANDOM_KILLS))
def test_killed_export_leaves_no_incomplete_version_and_rerun_succeeds(runs, setting, point):
    killed, state = runs["killed"][f"kill-export-{point}"], runs["versions"][point]
    if point.startswith("random_"):
        assert killed.returncode in (0, KILLED), killed.stderr
    else:
        assert killed.returncode == KILLED, killed.stderr
    assert all(state["versions"].values()), state  # every folder TF-Serving would load is a complete export
    assert all(name.startswith(".tmp-") for name in state["other"]), state  # leftovers are hidden
    if point in ("after_publish", "overwrite_after_swap"):
        assert state["versions"] == {1: True} and state["identical_to_reference"] == [], state  # the new export
    elif point == "overwrite_before_swap":
        assert state["versions"] == {1: True} and state["identical_to_reference"] == [1], state  # the old one
    elif not point.startswith("random_"):
        # Killed before the rename: no version. The fallback for --overwrite without an atomic swap, killed
        # between its renames: the old version 1 is set aside (hidden), so TF-Serving sees no version 1.
        assert state["versions"] == {}, state
    rerun = runs["reruns"][f"rerun-export-{point}"]
    assert rerun.returncode == 0, rerun.stderr
    final = _version_state(setting["root"] / "exports" / point / "strokenet", setting["reference"])
    published = 1 if "--overwrite" in rerun.args else max(state["versions"], default=0) + 1
    assert final["versions"].get(published) is True and all(final["versions"].values()), final
    assert f"as strokenet version {published}:" in rerun.stdout


# -------------------------------------------------------------------------------------------- predict

@pytest.mark.parametrize("point", _names(PREDICT_KILLS, PREDICT_RANDOM_KILLS))
def test_killed_predict_leaves_only_complete_files_and_rerun_completes(runs, setting, point):
    killed, state = runs["killed"][f"kill-predict-{point}"], runs["predictions"][point]
    if point.startswith("random_"):
        assert killed.returncode in (0, KILLED), killed.stderr
    else:
        assert killed.returncode == KILLED, killed.stderr
        assert "case_3" not in " ".join(state["visible"])  # it died on case_2 (or case_1 for the montage)
    assert state["incomplete"] == [], state  # nothing half-written under a final name
    assert state["reports_missing_outputs"] == [], state  # the report is written last
    assert all(".tmp-" in name for name in state["hidden"]), state
    if point == "mid_nifti":
        assert any(name.endswith("case_2_mask.nii.gz") for name in state["hidden"]), state  # the half file
        assert not any(name.endswith("case_2_mask.nii.gz") for name in state["visible"]), state
    rerun = runs["reruns"][f"rerun-predict-{point}"]
    assert rerun.returncode == 0, rerun.stderr
    final = _prediction_state(setting["root"] / "predictions" / point)
    assert final["incomplete"] == [] and final["reports_missing_outputs"] == []
    assert final["hidden"] == []  # the killed run's temporaries were removed when their case was redone
    assert sorted(n for n in final["visible"] if n.endswith("_report.json")) == [
        f"case_{k}/case_{k}_report.json" for k in (1, 2, 3)]


def test_inputs_are_untouched_by_killed_and_rerun_predictions(runs):
    before, after_kill, after_rerun = runs["inputs"]
    assert before and before == after_kill == after_rerun
