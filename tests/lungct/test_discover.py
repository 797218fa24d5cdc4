import pytest

from lungct.discover import discover
from lungct.errors import DataError
from lungct.records import TASKS
from tests.conftest import make_mosmed, synthetic_ct, write_nifti


def test_discover_mosmeddata_with_bom_registry(tmp_path):
    found = discover(make_mosmed(tmp_path))
    assert found.layout == "mosmeddata"
    assert [(r.study_id, r.category, r.label) for r in found.records] == [
        ("study_0001", "CT-0", 0), ("study_0002", "CT-0", 0), ("study_0004", "CT-2", 1), ("study_0005", "CT-3", 1)]
    assert not found.skipped


def test_discover_excludes_categories_outside_the_task_and_reports_them(tmp_path):
    found = discover(make_mosmed(tmp_path))
    assert [(r.study_id, r.category, r.label) for r in found.excluded] == [("study_0003", "CT-1", None)]


def test_discover_mosmeddata_without_registry_uses_folders(tmp_path):
    found = discover(make_mosmed(tmp_path, registry=False))
    assert found.layout == "mosmeddata"
    assert len(found.records) == 4 and len(found.excluded) == 1


def test_discover_registry_entry_without_file_is_skipped_with_reason(tmp_path):
    root = make_mosmed(tmp_path)
    (root / "studies/CT-2/study_0004.nii.gz").unlink()
    found = discover(root)
    assert [s.reason for s in found.skipped] == ["listed in dataset_registry.csv but not found"]
    assert "study_0004" not in [r.study_id for r in found.records]


def test_discover_registry_category_conflict_is_skipped(tmp_path):
    root = make_mosmed(tmp_path)
    registry = (root / "dataset_registry.csv").read_text(encoding="utf-8-sig")
    text = registry.replace("CT-2,/studies/CT-2", "CT-3,/studies/CT-2")
    (root / "dataset_registry.csv").write_text(text, encoding="utf-8-sig")
    found = discover(root)
    assert any("says CT-3 but it is in CT-2/" in s.reason for s in found.skipped)


def test_discover_keras_tutorial_folders_pool_ct23_as_positive(tmp_path):
    write_nifti(tmp_path / "CT-0/study_0001.nii.gz", synthetic_ct())
    write_nifti(tmp_path / "CT-23/study_0939.nii.gz", synthetic_ct())
    found = discover(tmp_path)
    assert found.layout == "folders"
    assert [(r.category, r.label) for r in found.records] == [("CT-0", 0), ("CT-23", 1)]


def test_discover_ct23_is_excluded_by_a_task_that_separates_ct2_from_ct3(tmp_path):
    write_nifti(tmp_path / "CT-0/a.nii.gz", synthetic_ct())
    write_nifti(tmp_path / "CT-23/b.nii.gz", synthetic_ct())
    found = discover(tmp_path, TASKS["severe"])
    assert [r.category for r in found.excluded] == ["CT-23"]


def test_discover_non_nifti_file_in_a_category_folder_is_skipped(tmp_path):
    write_nifti(tmp_path / "CT-0/a.nii", synthetic_ct())
    (tmp_path / "CT-0/notes.txt").write_text("hello")
    found = discover(tmp_path)
    assert [s.reason for s in found.skipped] == ["not a .nii or .nii.gz file"]
    assert [r.study_id for r in found.records] == ["a"]


def test_discover_manifest_with_categories_and_relative_paths(tmp_path):
    write_nifti(tmp_path / "scans/x.nii.gz", synthetic_ct())
    write_nifti(tmp_path / "scans/y.nii.gz", synthetic_ct())
    (tmp_path / "m.csv").write_text("path,category\nscans/x.nii.gz,CT-0\nscans/y.nii.gz,ct-3\n")
    found = discover(tmp_path / "m.csv")
    assert found.layout == "manifest"
    assert [(r.study_id, r.label) for r in found.records] == [("x", 0), ("y", 1)]


def test_discover_manifest_with_labels_and_bad_rows(tmp_path):
    write_nifti(tmp_path / "x.nii.gz", synthetic_ct())
    write_nifti(tmp_path / "y.nii.gz", synthetic_ct())
    (tmp_path / "m.csv").write_text("path,label\nx.nii.gz,1\ny.nii.gz,2\nmissing.nii.gz,0\n")
    found = discover(tmp_path / "m.csv")
    assert [(r.study_id, r.label) for r in found.records] == [("x", 1)]
    reasons = sorted(s.reason for s in found.skipped)
    assert reasons == ["file not found", "label must be 0 or 1, got '2' (line 3)"]


def test_discover_manifest_without_required_columns_is_one_line_error(tmp_path):
    (tmp_path / "m.csv").write_text("file,grade\na,1\n")
    with pytest.raises(DataError, match="path,category or path,label"):
        discover(tmp_path / "m.csv")


def test_discover_duplicate_study_ids_are_skipped(tmp_path):
    write_nifti(tmp_path / "CT-0/same.nii.gz", synthetic_ct())
    write_nifti(tmp_path / "CT-23/same.nii.gz", synthetic_ct())
    found = discover(tmp_path)
    assert len(found.records) == 1
    assert "duplicate study id 'same'" in found.skipped[0].reason


@pytest.mark.parametrize("make, expected", [
    (lambda p: p / "missing", "no such file or folder"),
    (lambda p: p, "empty folder"),
    (lambda p: (p / "other").mkdir() or p, "unknown layout"),
    (lambda p: (p / "CT-0").mkdir() or p, "no NIfTI scans found"),
])
def test_discover_unusable_root_names_the_accepted_layouts(tmp_path, make, expected):
    with pytest.raises(DataError) as err:
        discover(make(tmp_path))
    message = str(err.value)
    assert expected in message and "\n" not in message
    assert "MosMedData" in message and "CT-23" in message and "manifest" in message


def test_discover_unknown_task_suggests_the_nearest(tmp_path):
    with pytest.raises(ValueError, match="did you mean 'course'"):
        discover(tmp_path, "corse")


def test_discover_severity_labels_each_grade_and_pools_ct4_with_ct3(tmp_path):
    found = discover(make_mosmed(tmp_path, {"CT-0": 1, "CT-1": 1, "CT-2": 1, "CT-3": 1, "CT-4": 1}), "severity")
    assert [(r.category, r.label) for r in found.records] == [
        ("CT-0", 0), ("CT-1", 1), ("CT-2", 2), ("CT-3", 3), ("CT-4", 3)]
    assert not found.excluded and not found.skipped


def test_discover_severity_refuses_the_keras_archives_pooled_ct23_folder_in_one_line(tmp_path):
    write_nifti(tmp_path / "CT-0/a.nii.gz", synthetic_ct())
    write_nifti(tmp_path / "CT-23/b.nii.gz", synthetic_ct())
    with pytest.raises(DataError) as e:
        discover(tmp_path, "severity")
    message = str(e.value)
    assert "\n" not in message and "CT-23" in message and "CT-2 and CT-3" in message
    assert message.startswith(str(tmp_path / "CT-23"))
    # the binary course task still pools it as its positive class
    assert [r.label for r in discover(tmp_path, "course").records] == [0, 1]


def test_discover_severity_skips_manifest_rows_with_a_label_but_no_grade(tmp_path):
    write_nifti(tmp_path / "a.nii.gz", synthetic_ct())
    write_nifti(tmp_path / "b.nii.gz", synthetic_ct())
    (tmp_path / "m.csv").write_text("path,category,label\na.nii.gz,CT-1,\nb.nii.gz,,1\n")
    found = discover(tmp_path / "m.csv", "severity")
    assert [(r.study_id, r.label) for r in found.records] == [("a", 1)]
    assert len(found.skipped) == 1 and "does not give the grade" in found.skipped[0].reason


def test_task_grades_are_disjoint_ordered_and_binary_tasks_keep_their_classes():
    severity = TASKS["severity"]
    assert severity.ordinal and severity.n_grades == 4 and severity.label("CT-4") == 3
    assert severity.splits_pooled("CT-23") and not TASKS["course"].splits_pooled("CT-23")
    course = TASKS["course"]
    assert not course.ordinal and course.negative == ("CT-0",) and course.positive == ("CT-2", "CT-3")
    assert course.label("CT-1") is None and course.label("CT-23") == 1
    from lungct.records import Task
    with pytest.raises(ValueError, match="in two grades"):
        Task("bad", (("CT-0",), ("CT-0", "CT-1")))
    with pytest.raises(ValueError, match="at least two"):
        Task("bad", (("CT-0",),))
