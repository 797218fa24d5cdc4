import json
from collections import Counter

import pytest

from lungct.errors import DataError
from lungct.records import ScanRecord
from lungct.splits import kfold, load_or_make_folds, load_or_make_split, make_split


def _records(n0=60, n1=40):
    return [ScanRecord(f"study_{i:04d}", f"/x/{i}.nii.gz", "CT-0" if i < n0 else "CT-2", int(i >= n0))
            for i in range(n0 + n1)]


def test_make_split_is_stratified_and_disjoint():
    records = _records()
    split = make_split(records, 0.15, 0.15, seed=0)
    labels = {r.study_id: r.label for r in records}
    assert not set(split.train) & set(split.val) and not set(split.train) & set(split.test)
    assert not set(split.val) & set(split.test)
    assert len(split.train) + len(split.val) + len(split.test) == 100
    for part, size in ((split.train, 70), (split.val, 15), (split.test, 15)):
        assert abs(len(part) - size) <= 1
        share = Counter(labels[s] for s in part)[1] / len(part)
        assert abs(share - 0.4) < 0.08


def test_make_split_is_reproducible_by_seed():
    records = _records()
    assert make_split(records, seed=3) == make_split(list(reversed(records)), seed=3)
    assert make_split(records, seed=3).test != make_split(records, seed=4).test


def test_make_split_with_too_few_scans_in_a_class_says_so():
    with pytest.raises(DataError, match="label 1 has 3 usable scans"):
        make_split(_records(30, 3))


def test_load_or_make_split_saves_json_and_reuses_it(tmp_path):
    records = _records()
    split, path = load_or_make_split(records, tmp_path, seed=1)
    saved = json.loads(path.read_text())
    assert saved["test"] == list(split.test) and saved["seed"] == 1
    path.write_text(path.read_text())  # unchanged content, new mtime: still reused
    again, same_path = load_or_make_split(records, tmp_path, seed=1)
    assert again == split and same_path == path


def test_load_or_make_split_keeps_a_different_file_per_data_set(tmp_path):
    _, a = load_or_make_split(_records(), tmp_path)
    _, b = load_or_make_split(_records(61, 40), tmp_path)
    assert a != b


def test_load_or_make_split_rejects_a_tampered_file(tmp_path):
    records = _records()
    _, path = load_or_make_split(records, tmp_path)
    saved = json.loads(path.read_text())
    saved["train"] = saved["train"][1:]
    path.write_text(json.dumps(saved))
    with pytest.raises(DataError, match="does not match this data set"):
        load_or_make_split(records, tmp_path)


def _tamper(path, change):
    saved = json.loads(path.read_text())
    change(saved)
    path.write_text(json.dumps(saved))


def _move_test_id_into_train(saved):
    saved["train"].append(saved["test"][0])


def _duplicate_a_train_id(saved):
    saved["train"].append(saved["train"][0])


def _duplicate_a_val_id_in_test(saved):
    saved["test"].append(saved["val"][0])


def _test_ids_as_a_string(saved):
    saved["test"] = "study_0001"


@pytest.mark.parametrize("change, message", [
    (_move_test_id_into_train, r"test part shares 1 id with train \(study_\d+\)"),
    (_duplicate_a_train_id, r"train part lists study_\d+ twice"),
    (_duplicate_a_val_id_in_test, r"test part shares 1 id with val"),
    (_test_ids_as_a_string, r"test: expected a list of study ids"),
])
def test_load_or_make_split_rejects_parts_that_overlap_or_repeat_an_id(tmp_path, change, message):
    records = _records()
    _, path = load_or_make_split(records, tmp_path)
    _tamper(path, change)
    with pytest.raises(DataError, match=message) as caught:
        load_or_make_split(records, tmp_path)
    assert str(caught.value).startswith(f"{path}: ") and len(str(caught.value).splitlines()) == 1


def test_load_or_make_folds_rejects_a_fold_whose_parts_overlap(tmp_path):
    records = _records()
    _, path = load_or_make_folds(records, tmp_path, k=3)
    _tamper(path, lambda saved: saved["folds"][1]["train"].append(saved["folds"][1]["val"][0]))
    with pytest.raises(DataError, match=r"fold 2 of repeat 1: the val part shares 1 id with train") as caught:
        load_or_make_folds(records, tmp_path, k=3)
    assert str(caught.value).startswith(f"{path}: ")


def test_kfold_puts_each_study_in_validation_once_per_repeat():
    records = _records()
    folds = kfold(records, k=5, repeats=2, seed=0)
    assert len(folds) == 10
    for repeat in (0, 1):
        val = [s for f in folds if f.repeat == repeat for s in f.val]
        assert sorted(val) == sorted(r.study_id for r in records)
    labels = {r.study_id: r.label for r in records}
    for f in folds:
        assert Counter(labels[s] for s in f.val) == {0: 12, 1: 8}
        assert not set(f.train) & set(f.val)
    assert [f.val for f in folds[:5]] != [f.val for f in folds[5:]]


def test_kfold_is_reproducible_and_saved(tmp_path):
    records = _records()
    folds, path = load_or_make_folds(records, tmp_path, k=3, repeats=1, seed=2)
    assert folds == kfold(records, k=3, seed=2)
    assert load_or_make_folds(records, tmp_path, k=3, repeats=1, seed=2) == (folds, path)


def _graded(counts=(40, 20, 25, 15)):
    records, i = [], 0
    for grade, n in enumerate(counts):
        for _ in range(n):
            records.append(ScanRecord(f"study_{i:04d}", f"/x/{i}.nii.gz", f"CT-{grade}", grade))
            i += 1
    return records


def test_split_and_folds_are_stratified_by_every_severity_grade():
    records = _graded()
    labels = {r.study_id: r.label for r in records}
    split = make_split(records, 0.15, 0.15, seed=0)
    for part in (split.train, split.val, split.test):
        shares = Counter(labels[s] for s in part)
        for grade, n in enumerate((40, 20, 25, 15)):
            assert abs(shares[grade] / len(part) - n / 100) < 0.07, (grade, shares)
    rest = [r for r in records if r.study_id not in split.test]
    for fold in kfold(rest, k=3, seed=1):
        held = Counter(labels[s] for s in fold.val)
        assert set(held) == {0, 1, 2, 3}
        for grade in range(4):
            expected = sum(r.label == grade for r in rest) / 3
            assert abs(held[grade] - expected) <= 1


def test_split_with_too_few_scans_in_one_grade_names_that_grade():
    with pytest.raises(DataError, match="label 2 has 3 usable scans") as e:
        make_split(_graded((40, 20, 3, 15)))
    assert "label 3 = 15" in str(e.value)
