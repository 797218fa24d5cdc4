from lungct.inspect import main
from tests.conftest import make_mosmed


def test_inspect_main_counts_categories_and_labels(tmp_path, capsys):
    root = make_mosmed(tmp_path / "d", {"CT-0": 3, "CT-1": 2, "CT-2": 1, "CT-3": 1, "CT-4": 1})
    assert main([str(root), "--cache-dir", str(tmp_path / "cache"), "--workers", "1"]) == 0
    out = capsys.readouterr().out
    rows = {line.split()[0]: line.split()[1:] for line in out.splitlines() if line.startswith(("CT-", "total"))}
    assert rows["CT-0"] == ["3", "0", "label", "0"]
    assert rows["CT-1"] == ["2", "0", "excluded"]
    assert rows["CT-3"] == ["1", "0", "label", "1"]
    assert rows["total"] == ["8", "0"]
    assert "usable under the task: 5 (label 0: 3, label 1: 2); excluded by the task: 3; skipped: 0" in out
    assert "shape: 20x24x16 (8)" in out and "orientation: RAS (8)" in out


def test_inspect_main_lists_every_skipped_file_with_its_reason(tmp_path, capsys):
    root = make_mosmed(tmp_path / "d", {"CT-0": 2, "CT-2": 2})
    (root / "studies/CT-2/study_0003.nii.gz").write_bytes(b"broken")
    (root / "studies/CT-0/readme.txt").write_text("x")
    assert main([str(root), "--cache-dir", str(tmp_path / "cache"), "--workers", "1"]) == 0
    out = capsys.readouterr().out
    assert "readme.txt: not a .nii or .nii.gz file" in out
    assert "study_0003.nii.gz: not a readable NIfTI file" in out
    assert "usable under the task: 3 (label 0: 2, label 1: 1)" in out


def test_inspect_main_task_option_changes_the_labels(tmp_path, capsys):
    root = make_mosmed(tmp_path / "d", {"CT-0": 1, "CT-1": 1})
    assert main([str(root), "--task", "any", "--no-read"]) == 0
    assert "usable under the task: 2 (label 0: 1, label 1: 1)" in capsys.readouterr().out


def test_inspect_main_bad_root_is_a_one_line_error(tmp_path, capsys):
    assert main([str(tmp_path / "nothing")]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and len(captured.err.strip().splitlines()) == 1
    assert captured.err.startswith("error: ") and "accepted layouts" in captured.err
