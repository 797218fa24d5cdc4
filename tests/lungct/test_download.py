import hashlib
import http.server
import io
import threading
import urllib.request
import zipfile

import pytest

from lungct.discover import discover
from lungct.download import ARCHIVE_SHA256, download_keras_archives, main
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


@pytest.fixture
def range_server():
    """A local HTTP server that honours Range requests; ``cut`` makes it drop a response after N bytes."""
    state = {"files": {}, "cut": {}, "ranges": []}

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            name = self.path.lstrip("/")
            data = state["files"].get(name)
            if data is None:
                self.send_error(404)
                return
            wanted = self.headers.get("Range")
            state["ranges"].append(wanted)
            start = int(wanted.removeprefix("bytes=").split("-")[0]) if wanted else 0
            self.send_response(206 if wanted else 200)
            if wanted:
                self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
            self.send_header("Accept-Ranges", "bytes")
            self.send_header("Content-Length", str(len(data) - start))
            self.end_headers()
            self.wfile.write(data[start:start + state["cut"].pop(name, len(data))])

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    state["url"] = f"http://127.0.0.1:{server.server_address[1]}"
    yield state
    server.shutdown()
    server.server_close()


def _serve_archives(state, served_dir):
    for name in ("CT-0", "CT-23"):
        state["files"][f"{name}.zip"] = (served_dir / f"{name}.zip").read_bytes()


def test_download_resumes_a_dropped_download_with_a_range_request(tmp_path, archives, range_server):
    _serve_archives(range_server, tmp_path / "served")
    range_server["cut"]["CT-0.zip"] = 700
    with pytest.raises(DataError, match=r"closed after 700 of .* kept the partial download CT-0\.zip\.part; "
                                        "run again to resume it"):
        download_keras_archives(tmp_path / "data", range_server["url"], progress=False)
    assert (tmp_path / "data" / "CT-0.zip.part").stat().st_size == 700
    out = download_keras_archives(tmp_path / "data", range_server["url"], progress=False)
    assert range_server["ranges"] == [None, "bytes=700-", None]
    assert sorted(p.name for p in out.iterdir()) == ["CT-0", "CT-23"]
    assert len(discover(out).records) == 4


def test_download_restarts_when_the_server_ignores_the_range(tmp_path, archives, monkeypatch):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "CT-0.zip.part").write_bytes(b"stale bytes of another file")
    out = download_keras_archives(tmp_path / "data", archives, progress=False)  # file:// answers 200 in full
    assert len(discover(out).records) == 4


def test_download_prints_the_sha256_when_none_is_published(tmp_path, archives, capsys):
    download_keras_archives(tmp_path / "data", archives, progress=False)
    expected = hashlib.sha256((tmp_path / "served" / "CT-0.zip").read_bytes()).hexdigest()
    assert f"CT-0.zip: sha256 {expected} (no published checksum to compare with)" in capsys.readouterr().out


def test_download_verifies_a_published_sha256(tmp_path, archives, capsys, monkeypatch):
    digest = hashlib.sha256((tmp_path / "served" / "CT-0.zip").read_bytes()).hexdigest()
    monkeypatch.setitem(ARCHIVE_SHA256, "CT-0.zip", digest)
    download_keras_archives(tmp_path / "data", archives, progress=False)
    assert f"CT-0.zip: sha256 {digest} (matches the published checksum)" in capsys.readouterr().out


def test_download_removes_an_archive_whose_sha256_differs(tmp_path, archives, monkeypatch):
    monkeypatch.setitem(ARCHIVE_SHA256, "CT-0.zip", "0" * 64)
    with pytest.raises(DataError, match=r"CT-0\.zip: SHA-256 [0-9a-f]{64} is not the published 0{64}; removed it"):
        download_keras_archives(tmp_path / "data", archives, progress=False, keep_archives=True)
    assert list((tmp_path / "data").iterdir()) == []


def test_download_drop_from_a_server_without_ranges_keeps_nothing(tmp_path, archives, monkeypatch):
    served = (tmp_path / "served" / "CT-0.zip").read_bytes()

    class Dropped(io.BytesIO):
        status, headers = 200, {"Content-Length": str(len(served))}

    monkeypatch.setattr(urllib.request, "urlopen", lambda *a, **k: Dropped(served[:100]))
    with pytest.raises(DataError, match=r"closed after 100 of .*; nothing partial was kept"):
        download_keras_archives(tmp_path / "data", "https://example.org/x", progress=False)
    assert list((tmp_path / "data").iterdir()) == []
