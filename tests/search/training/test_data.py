"""search.training.data: discover, split once, load only the parts a command may see; the tensors, folds and summary."""

import json
from collections import Counter

import pytest
import torch

import search.training.data
from lungct.errors import DataError
from lungct.records import PreprocessConfig
from search.training.data import Tensors, cv_records, describe, prepare_data, resolve_data_root, search_folds
from tests.conftest import make_mosmed

SIZE = (16, 24, 20)


@pytest.fixture(scope="module")
def studies(tmp_path_factory):
    return tmp_path_factory.mktemp("data-studies")


@pytest.fixture(scope="module")
def prepared(tiny_data, studies):
    return prepare_data(tiny_data, PreprocessConfig(size=SIZE), studies_dir=studies, workers=1, progress=False)


def test_tensors_length_is_its_label_count():
    assert len(Tensors(torch.zeros(3, 1, *SIZE, dtype=torch.float16), torch.zeros(3))) == 3


def test_prepare_data_loads_train_and_val_only_never_test(prepared):
    loaded = set(prepared.loaded.study_ids)
    assert loaded == set(prepared.split.train) | set(prepared.split.val)
    assert not loaded & set(prepared.split.test) and prepared.parts == ("train", "val")


def test_prepare_data_tensors_are_non_cubic_float16_volumes_and_float32_binary_labels(prepared):
    data = prepared.tensors("train")
    assert data.volumes.shape == (len(prepared.split.train), 1, *SIZE)
    assert data.volumes.dtype == torch.float16 and data.labels.dtype == torch.float32
    assert set(data.labels.tolist()) == {0.0, 1.0} and torch.isfinite(data.volumes).all()


def test_prepared_tensors_of_two_parts_concatenate_in_the_order_asked(prepared):
    both = prepared.tensors("val", "train")
    val, train = prepared.tensors("val"), prepared.tensors("train")
    assert torch.equal(both.volumes, torch.cat([val.volumes, train.volumes]))
    assert torch.equal(both.labels, torch.cat([val.labels, train.labels]))


def test_prepared_tensors_refuse_a_part_that_was_not_loaded_naming_it(prepared):
    with pytest.raises(ValueError, match=r"^parts: \['test'\] were not loaded \(loaded: \['train', 'val'\]\)"):
        prepared.tensors("train", "test")


def test_prepared_counts_are_the_labels_of_the_part(prepared):
    labels = prepared.tensors("val").labels.tolist()
    assert prepared.counts("val") == Counter(int(v) for v in labels)
    assert sum(prepared.counts("train").values()) == len(prepared.split.train)


def test_prepared_summary_is_json_and_describes_task_size_split_and_exclusions(prepared, tiny_data):
    s = prepared.summary()
    stored = json.loads(json.dumps(s))  # as a study attribute keeps it: label keys become strings
    assert stored == {**s, "loaded": {part: {str(k): n for k, n in c.items()} for part, c in s["loaded"].items()}}
    assert (s["root"], s["task"], s["size"], s["excluded"], s["skipped"]) == (str(tiny_data), "course", [16, 24, 20],
                                                                            2, 0)
    assert s["n_train"] + s["n_val"] + s["n_test"] == 24  # 30 scans less the two CT-1 (excluded by the task)
    assert set(s["loaded"]) == {"train", "val"}
    assert sum(s["loaded"]["train"].values()) == s["n_train"]
    assert s["split_seed"] == 0 and s["split_file"] == str(prepared.split_path) and prepared.split_path.is_file()


def test_describe_is_one_line_on_what_was_loaded_and_held_out(prepared):
    line = describe(prepared)
    s = prepared.summary()
    assert "\n" not in line and "16x24x20 voxels" in line and "task course" in line
    assert f"test part ({s['n_test']}) held out" in line
    c = s["loaded"]["val"]
    assert f"val {s['n_val']} ({c.get(0, 0)}/{c.get(1, 0)})" in line and "skipped" not in line


def test_prepare_data_reuses_the_saved_split(prepared, tiny_data, studies):
    again = prepare_data(tiny_data, PreprocessConfig(size=SIZE), studies_dir=studies, workers=1, progress=False)
    assert again.split == prepared.split and again.split_path == prepared.split_path


def test_cv_records_are_the_loaded_train_and_val_scans(prepared):
    ids = {r.study_id for r in cv_records(prepared)}
    assert ids == set(prepared.split.train) | set(prepared.split.val)


def test_cv_records_never_include_a_test_scan_even_when_test_was_loaded(tiny_data, studies):
    everything = prepare_data(tiny_data, PreprocessConfig(size=SIZE), parts=("train", "val", "test"),
                              studies_dir=studies, workers=1, progress=False)
    assert set(everything.split.test) <= set(everything.loaded.study_ids)
    assert not {r.study_id for r in cv_records(everything)} & set(everything.split.test)


def test_search_folds_partition_the_cv_scans_into_k_validation_parts(prepared, studies):
    folds = search_folds(prepared, 2, studies, fold_seed=3)
    cv = {r.study_id for r in cv_records(prepared)}
    assert len(folds) == 2
    for fold, train, val in folds:
        assert set(fold.train) | set(fold.val) == cv and not set(fold.train) & set(fold.val)
        assert train.volumes.shape == (len(fold.train), 1, *SIZE) and len(val) == len(fold.val)
        assert set(val.labels.tolist()) == {0.0, 1.0}  # stratified: both classes in every validation part
    assert set(folds[0][0].val) | set(folds[1][0].val) == cv


def test_search_folds_are_saved_and_reproducible_by_seed(prepared, studies):
    first = [f for f, _, _ in search_folds(prepared, 2, studies, fold_seed=7)]
    assert [f for f, _, _ in search_folds(prepared, 2, studies, fold_seed=7)] == first
    assert list((studies / "splits").glob("folds-*-k2-r1-seed7.json"))


def test_resolve_data_root_returns_a_given_folder_without_generating_phantoms(tmp_path, monkeypatch):
    def no_phantoms(*args, **kwargs):
        raise AssertionError("phantoms generated although --data was given")

    monkeypatch.setattr(search.training.data, "default_phantom_root", no_phantoms)
    assert resolve_data_root(str(tmp_path / "mine"), tmp_path) == tmp_path / "mine"


def test_resolve_data_root_without_data_asks_for_the_default_phantom_set(tmp_path, monkeypatch):
    asked = []
    monkeypatch.setattr(search.training.data, "default_phantom_root",
                        lambda studies_dir, n, seed, progress: asked.append((studies_dir, n, seed)) or tmp_path / "p")
    assert resolve_data_root(None, tmp_path / "studies", n_phantoms=12, phantom_seed=5) == tmp_path / "p"
    assert asked == [(tmp_path / "studies", 12, 5)]


def test_prepare_data_refuses_a_part_left_with_one_label_after_unreadable_scans(tmp_path):
    root = make_mosmed(tmp_path / "data", {"CT-0": 8, "CT-2": 8})
    for scan in (root / "studies" / "CT-2").iterdir():
        scan.write_bytes(b"not a nifti file")
    with pytest.raises(DataError, match=r"too few usable scans: the train part holds \d+ of label 0 and 0 of label 1 "
                                        r"after skipping \d+ unreadable scans"):
        prepare_data(root, PreprocessConfig(size=SIZE), studies_dir=tmp_path / "studies", workers=1, progress=False)
