"""Tests for strokenet_tf.data.atomic: files appear whole under their final name or not at all."""

import os

import pytest

from strokenet_tf.data import atomic


def test_atomic_path_replaces_or_leaves_no_trace(tmp_path):
    target = tmp_path / "result.json"
    atomic.atomic_write_text(target, "old")
    with pytest.raises(RuntimeError):
        with atomic.atomic_path(target) as temporary:
            assert temporary.parent == tmp_path and temporary.name.endswith("result.json")
            temporary.write_text("half")
            raise RuntimeError("writer crashed")
    assert target.read_text() == "old"
    assert os.listdir(tmp_path) == ["result.json"]
    atomic.atomic_write_bytes(target, b"new")
    assert target.read_text() == "new" and os.listdir(tmp_path) == ["result.json"]
    with pytest.raises(FileNotFoundError):
        atomic.atomic_write_text(tmp_path / "missing" / "x.txt", "x")


def test_remove_stale_temporaries_removes_only_the_targets_leftovers(tmp_path):
    target = tmp_path / "case_1_mask.nii.gz"
    stale = atomic.temporary_sibling(target)
    stale.write_bytes(b"half")
    others = [tmp_path / ".tmp-0123456789ab-case_1_report.json", tmp_path / ".tmp-short-case_1_mask.nii.gz",
              tmp_path / "case_1_mask.nii.gz"]
    for path in others:
        path.write_text("keep")
    assert atomic.remove_stale_temporaries(target) == [stale]
    assert not stale.exists() and all(path.read_text() == "keep" for path in others)
    assert atomic.remove_stale_temporaries(tmp_path / "absent" / "x.nii") == []
