"""K-fold cross-validation splits that keep each patient's slabs in one fold.

ISLES 2018 has 94 training cases from 63 patients: a patient whose lesion spans more than one slab contributes
two cases. Putting one slab in training and the other in validation leaks the patient, so folds are made of
*groups*: patients when a case-to-patient map is given, else single cases.

The split depends only on the seed and the group ids, not on the order the cases were listed in:
groups are ordered by a hash of (seed, group id) and then dealt greedily to the fold with the fewest cases,
which keeps fold sizes within one patient of each other.

Example:
    >>> train_ids, val_ids = split_folds(["case_1", "case_2", "case_3"], num_folds=3, fold=0, seed=0)
    >>> len(val_ids)
    1
"""

from __future__ import annotations

import collections
import csv
import hashlib
import os
from typing import Mapping, Sequence

PATIENT_MAP_COLUMNS = ("case_id", "patient_id")


class FoldError(ValueError):
    """Bad fold settings or patient map; the message is one line."""


def read_patient_map(csv_path: str | os.PathLike) -> dict[str, str]:
    """Reads a case-to-patient CSV with a header row holding the columns `case_id,patient_id`.

    Extra columns are ignored; blank lines are skipped; a case listed twice must name the same patient.

    Args:
        csv_path: path of the CSV file.

    Returns:
        case_id -> patient_id.

    Raises:
        FoldError: one line naming the file (and line) when it is missing, unreadable or malformed.
    """
    path = os.fspath(csv_path)
    try:
        with open(path, newline="", encoding="utf-8-sig") as handle:
            rows = list(csv.reader(handle))
    except FileNotFoundError:
        raise FoldError(f"patient map {path}: no such file") from None
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        raise FoldError(f"patient map {path}: cannot read it ({type(error).__name__}: {error})") from None
    rows = [(number, row) for number, row in enumerate(rows, start=1) if any(cell.strip() for cell in row)]
    if not rows:
        raise FoldError(f"patient map {path}: empty file, expected a header 'case_id,patient_id'")
    header = [cell.strip().lower() for cell in rows[0][1]]
    missing = [column for column in PATIENT_MAP_COLUMNS if column not in header]
    if missing:
        raise FoldError(
            f"patient map {path}: header {','.join(header)!r} lacks column(s) {', '.join(missing)}; "
            "expected 'case_id,patient_id'"
        )
    case_column, patient_column = (header.index(column) for column in PATIENT_MAP_COLUMNS)
    patient_of: dict[str, str] = {}
    for number, row in rows[1:]:
        if len(row) <= max(case_column, patient_column):
            raise FoldError(f"patient map {path} line {number}: expected {len(header)} columns, got {len(row)}")
        case_id, patient_id = row[case_column].strip(), row[patient_column].strip()
        if not case_id or not patient_id:
            raise FoldError(f"patient map {path} line {number}: empty case_id or patient_id")
        if patient_of.get(case_id, patient_id) != patient_id:
            raise FoldError(
                f"patient map {path} line {number}: {case_id} is mapped to both "
                f"{patient_of[case_id]} and {patient_id}"
            )
        patient_of[case_id] = patient_id
    if not patient_of:
        raise FoldError(f"patient map {path}: no rows after the header")
    return patient_of


def _group_order_key(seed: int, group_id: str) -> bytes:
    return hashlib.sha256(f"{seed}\x00{group_id}".encode("utf-8")).digest()


def assign_folds(
    case_ids: Sequence[str],
    num_folds: int,
    seed: int,
    patient_map: Mapping[str, str] | None = None,
) -> dict[str, int]:
    """Assigns every case to one of `num_folds` folds, whole patients at a time.

    Args:
        case_ids: unique case ids (e.g. "case_12").
        num_folds: number of folds, >= 2.
        seed: any integer; the same seed and ids give the same folds on every machine.
        patient_map: optional case_id -> patient_id; when given, every case must be in it.

    Returns:
        case_id -> fold index in [0, num_folds).

    Raises:
        FoldError: duplicate ids, a case missing from the patient map, or fewer groups than folds.
    """
    if num_folds < 2:
        raise FoldError(f"num_folds must be >= 2, got {num_folds}")
    if len(set(case_ids)) != len(case_ids):
        duplicates = sorted(case_id for case_id, count in collections.Counter(case_ids).items() if count > 1)
        raise FoldError(f"duplicate case ids: {', '.join(duplicates)}")
    if patient_map is not None:
        unmapped = [case_id for case_id in case_ids if case_id not in patient_map]
        if unmapped:
            shown = ", ".join(unmapped[:5]) + (", ..." if len(unmapped) > 5 else "")
            raise FoldError(f"{len(unmapped)} case(s) missing from the patient map: {shown}")
    groups: dict[str, list[str]] = {}
    for case_id in case_ids:
        group_id = patient_map[case_id] if patient_map is not None else case_id
        groups.setdefault(group_id, []).append(case_id)
    if len(groups) < num_folds:
        raise FoldError(f"{len(groups)} patient(s)/case(s) cannot fill {num_folds} folds")
    fold_sizes = [0] * num_folds
    fold_of: dict[str, int] = {}
    # Larger groups first so two-slab patients do not all land in the last, already-full folds.
    for group_id in sorted(groups, key=lambda g: (-len(groups[g]), _group_order_key(seed, g))):
        fold = min(range(num_folds), key=lambda index: (fold_sizes[index], index))
        fold_sizes[fold] += len(groups[group_id])
        for case_id in groups[group_id]:
            fold_of[case_id] = fold
    return fold_of


def split_folds(
    case_ids: Sequence[str],
    num_folds: int,
    fold: int,
    seed: int,
    patient_map: Mapping[str, str] | None = None,
) -> tuple[list[str], list[str]]:
    """Splits cases into training and validation ids for one cross-validation fold.

    Args:
        case_ids: unique case ids.
        num_folds: number of folds, >= 2.
        fold: which fold is held out for validation, in [0, num_folds).
        seed: split seed.
        patient_map: optional case_id -> patient_id (see `read_patient_map`).

    Returns:
        (train_ids, val_ids), each in the order of `case_ids`; disjoint, together all of `case_ids`.

    Raises:
        FoldError: one line, for a fold out of range or the errors of `assign_folds`.
    """
    if not 0 <= fold < num_folds:
        raise FoldError(f"fold must be in [0, {num_folds - 1}] for num_folds={num_folds}, got {fold}")
    fold_of = assign_folds(case_ids, num_folds, seed, patient_map)
    train_ids = [case_id for case_id in case_ids if fold_of[case_id] != fold]
    val_ids = [case_id for case_id in case_ids if fold_of[case_id] == fold]
    return train_ids, val_ids
