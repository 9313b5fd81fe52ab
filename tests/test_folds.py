"""Tests for strokenet_tf.data.folds: deterministic, disjoint, covering, patient-grouped folds."""

import random

import pytest

from strokenet_tf.data import folds

CASE_IDS = [f"case_{index}" for index in range(1, 24)]


def _all_splits(case_ids, num_folds, seed, patient_map=None):
    return [folds.split_folds(case_ids, num_folds, fold, seed, patient_map) for fold in range(num_folds)]


def test_folds_are_disjoint_cover_all_and_balanced():
    splits = _all_splits(CASE_IDS, 5, seed=0)
    val_sets = [set(val) for _, val in splits]
    assert set().union(*val_sets) == set(CASE_IDS)
    assert sum(len(v) for v in val_sets) == len(CASE_IDS)
    assert sorted(len(v) for v in val_sets) == [4, 4, 5, 5, 5]
    for train, val in splits:
        assert set(train).isdisjoint(val)
        assert set(train) | set(val) == set(CASE_IDS)
        # Output keeps the input order.
        assert train == [c for c in CASE_IDS if c in set(train)]


def test_split_depends_on_seed_not_on_input_order():
    shuffled = list(CASE_IDS)
    random.Random(3).shuffle(shuffled)
    for fold in range(5):
        _, val_a = folds.split_folds(CASE_IDS, 5, fold, seed=7)
        _, val_b = folds.split_folds(shuffled, 5, fold, seed=7)
        assert sorted(val_a) == sorted(val_b)
    assert _all_splits(CASE_IDS, 5, seed=7) == _all_splits(CASE_IDS, 5, seed=7)
    assert [v for _, v in _all_splits(CASE_IDS, 5, 0)] != [v for _, v in _all_splits(CASE_IDS, 5, 1)]


def test_patients_with_two_slabs_stay_in_one_fold():
    case_ids = [f"case_{i}" for i in range(1, 13)]
    patient_map = {case_id: f"p{(i + 1) // 2}" for i, case_id in enumerate(case_ids, start=1)}  # pairs
    patient_map["case_12"] = "p_single"
    for seed in range(5):
        fold_of = folds.assign_folds(case_ids, 3, seed, patient_map)
        for a in case_ids:
            for b in case_ids:
                if patient_map[a] == patient_map[b]:
                    assert fold_of[a] == fold_of[b]


def test_errors_are_one_line():
    with pytest.raises(folds.FoldError, match=r"fold must be in \[0, 4\]"):
        folds.split_folds(CASE_IDS, 5, 5, 0)
    with pytest.raises(folds.FoldError, match="num_folds must be >= 2"):
        folds.split_folds(CASE_IDS, 1, 0, 0)
    with pytest.raises(folds.FoldError, match="cannot fill 5 folds"):
        folds.split_folds(CASE_IDS[:3], 5, 0, 0)
    with pytest.raises(folds.FoldError, match="duplicate case ids: case_1"):
        folds.split_folds(["case_1", "case_1", "case_2"], 2, 0, 0)
    with pytest.raises(folds.FoldError, match="missing from the patient map: case_3"):
        folds.split_folds(["case_1", "case_2", "case_3"], 2, 0, 0, {"case_1": "a", "case_2": "b"})


def test_read_patient_map(tmp_path):
    path = tmp_path / "patients.csv"
    path.write_text("patient_id,case_id,note\nP1,case_1,x\nP1,case_2,\n\nP2,case_3,y\n")
    assert folds.read_patient_map(path) == {"case_1": "P1", "case_2": "P1", "case_3": "P2"}


@pytest.mark.parametrize(
    "text, message",
    [
        ("", "empty file"),
        ("case,patient\ncase_1,P1\n", "lacks column"),
        ("case_id,patient_id\n", "no rows after the header"),
        ("case_id,patient_id\ncase_1\n", "line 2: expected 2 columns"),
        ("case_id,patient_id\ncase_1,P1\ncase_1,P2\n", "line 3: case_1 is mapped to both P1 and P2"),
        ("case_id,patient_id\n,P1\n", "line 2: empty case_id"),
    ],
)
def test_read_patient_map_errors(tmp_path, text, message):
    path = tmp_path / "bad.csv"
    path.write_text(text)
    with pytest.raises(folds.FoldError, match=message) as info:
        folds.read_patient_map(path)
    assert "\n" not in str(info.value) and str(path) in str(info.value)


def test_read_patient_map_missing_file(tmp_path):
    with pytest.raises(folds.FoldError, match="no such file"):
        folds.read_patient_map(tmp_path / "nope.csv")
