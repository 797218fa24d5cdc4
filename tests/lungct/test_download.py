import zipfile

import pytest

from lungct.discover import discover
from lungct.download import download_keras_archives, main
from lungct.errors import DataError
from tests.conftest import synthetic_ct, write_nifti


@pytest.fixture
def archives(tmp_path):
    """CT-0.zip and CT-23.zip laid out as the tutorial publishes them, served from a file:// URL."""
    served = tmp_path / "served"
    served.mkdir()
    for name, ids in (("CT-0", (1, 2)), ("CT-23", (939, 940))):
        with zipfile.ZipFile(served / f"{name}.zip", "w") as z:
            for i in ids:
                path = write_nifti(tmp_path / "src" / name / f"study_{i:04d}.nii.gz", synthetic_ct(seed=i))
                z.write(path, f"{name}/{path.name}")
    return served.as_uri()


def test_download_keras_archives_unpacks_a_discoverable_layout(tmp_path, archives):
    out = download_keras_archives(tmp_path / "data", archives, progress=False)
    found = discover(out)
    assert found.layout == "folders"
    assert [(r.study_id, r.label) for r in found.records] == [
        ("study_0001", 0), ("study_0002", 0), ("study_0939", 1), ("study_0940", 1)]
    assert sorted(p.name for p in out.iterdir()) == ["CT-0", "CT-23"]  # archives and temporaries removed


def test_download_keras_archives_skips_what_is_already_there(tmp_path, archives):
    out = download_keras_archives(tmp_path / "data", archives, progress=False)
    (out / "CT-0" / "marker").write_text("kept")
    download_keras_archives(out, "file:///nowhere", progress=False)  # would fail if it fetched again
    assert (out / "CT-0" / "marker").read_text() == "kept"


def test_download_keras_archives_failed_fetch_is_a_data_error_and_leaves_nothing(tmp_path):
    with pytest.raises(DataError, match=r"download of file:///nowhere/CT-0\.zip failed"):
        download_keras_archives(tmp_path / "data", "file:///nowhere", progress=False)
    assert list((tmp_path / "data").iterdir()) == []


def test_download_keras_archives_rejects_a_corrupt_archive(tmp_path):
    served = tmp_path / "served"
    served.mkdir()
    (served / "CT-0.zip").write_bytes(b"PK not really a zip")
    with pytest.raises(DataError, match="not a zip archive"):
        download_keras_archives(tmp_path / "data", served.as_uri(), progress=False)
    assert list((tmp_path / "data").iterdir()) == []


def test_download_main_prints_a_one_line_error(tmp_path, capsys):
    assert main(["--out", str(tmp_path / "d"), "--base-url", "file:///nowhere"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: download of") and "Traceback" not in "".join(err)
