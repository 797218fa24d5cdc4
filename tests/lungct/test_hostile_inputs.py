"""Hostile inputs, generated here, run through the commands a user would run on them.

Each case asserts the exit code, one line naming the culprit, no traceback, and that the good scans
beside the bad one are still counted. Bad scans are malformed headers a crafted or damaged file can
carry, or slabs too short along the body axis to be a chest; bad manifests and registries are
conflicting or not UTF-8; bad names carry control characters.
"""

from __future__ import annotations

import gzip
import os
import tracemalloc
import zipfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from lungct import dataset, download, inspect, nifti
from lungct.discover import discover
from lungct.errors import ScanError
from lungct.records import PreprocessConfig
from tests.conftest import make_mosmed, synthetic_ct, write_nifti

CONFIG = PreprocessConfig(size=(8, 12, 10))
ZERO_ROWS = {"srow_x": [0.0] * 4, "srow_y": [0.0] * 4, "srow_z": [0.0] * 4}
NAN_ROW = [np.nan, 0.0, 0.0, 0.0]


def patch_header(path: Path, **fields) -> Path:
    """Overwrite header fields of a NIfTI file as stored, bypassing nibabel's fixes and checks."""
    data = path.read_bytes()
    gz = path.name.endswith(".gz")
    raw = gzip.decompress(data) if gz else data
    header = nib.Nifti1Header(raw[:348], check=False)
    for name, value in fields.items():
        header[name] = value
    raw = header.binaryblock + raw[348:]
    path.write_bytes(gzip.compress(raw) if gz else raw)
    return path


def bad_scan(path: Path, **fields) -> Path:
    """A scan whose voxels are fine CT and whose header is patched with ``fields``."""
    return patch_header(write_nifti(path, synthetic_ct(seed=9)), **fields)


# name -> (header fields, words the reason must hold)
MALFORMED = {
    "zero_affine": ({**ZERO_ROWS, "qform_code": 0}, "degenerate sform"),
    "nan_sform": ({"srow_x": NAN_ROW}, "sform voxel-to-world matrix holds NaN"),
    "nan_qform": ({"sform_code": 0, "qform_code": 1, "quatern_b": np.nan}, "qform voxel-to-world matrix holds NaN"),
    "nan_pixdim": ({"pixdim": [1, np.nan, 0.7, 8, 1, 1, 1, 1]}, "voxel size pixdim[1:4] = (nan, 0.7, 8)"),
    "zero_pixdim": ({"pixdim": [1, 0, 0.7, 8, 1, 1, 1, 1]}, "voxel size pixdim[1:4] = (0, 0.7, 8)"),
    "axes_in_a_plane": ({"srow_y": [0.7, 0.0, 0.0, 0.0]}, "degenerate sform"),
    "claims_4000_cubed": ({"dim": [3, 4000, 4000, 4000, 1, 1, 1, 1]}, "64,000,000,000 voxels"),
    "claims_800_cubed": ({"dim": [3, 800, 800, 800, 1, 1, 1, 1]}, "more than a"),
    "rgb_voxels": ({"datatype": 128, "bitpix": 24}, "not real numbers"),
}


def good_folders(root: Path) -> Path:
    """Category folders holding three good scans: two CT-0 and one CT-23."""
    for name, seed in (("CT-0/good_1", 1), ("CT-0/good_2", 2), ("CT-23/good_3", 3)):
        write_nifti(root / f"{name}.nii.gz", synthetic_ct(seed=seed))
    return root


def run_inspect(capsys, *argv: str) -> tuple[int, str, str]:
    code = inspect.main([*argv, "--workers", "1"])
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    return code, out, err


def one_line(text: str) -> str:
    lines = text.strip().splitlines()
    assert len(lines) == 1, lines
    return lines[0]


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_inspect_skips_a_malformed_scan_and_counts_the_good_ones(tmp_path, capsys, case):
    fields, reason = MALFORMED[case]
    root = good_folders(tmp_path / "data")
    bad_scan(root / "CT-0" / f"{case}.nii.gz", **fields)
    code, out, _ = run_inspect(capsys, str(root), "--cache-dir", str(tmp_path / "cache"))
    assert code == 0
    assert "usable under the task: 3 (label 0: 2, label 1: 1)" in out
    assert reason in one_line("\n".join(line for line in out.splitlines() if f"{case}.nii.gz" in line))


@pytest.mark.parametrize("case", ["zero_affine", "nan_sform", "nan_pixdim", "claims_4000_cubed"])
def test_inspect_caches_a_malformed_scan_as_skipped(tmp_path, capsys, monkeypatch, case):
    root = good_folders(tmp_path / "data")
    bad_scan(root / "CT-0" / f"{case}.nii.gz", **MALFORMED[case][0])
    argv = (str(root), "--cache-dir", str(tmp_path / "cache"))
    first = run_inspect(capsys, *argv)
    assert "skipped (1):" in first[1]

    def no_reading(path):
        raise AssertionError(f"read again: {path}")

    monkeypatch.setattr(nifti, "read_scan", no_reading)
    assert run_inspect(capsys, *argv) == first


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_inspect_of_one_malformed_scan_is_a_one_line_error_naming_it(tmp_path, capsys, case):
    path = bad_scan(tmp_path / f"{case}.nii.gz", **MALFORMED[case][0])
    code, out, err = run_inspect(capsys, str(path))
    assert code == 2 and out == ""
    line = one_line(err)
    assert line.startswith(f"error: {path}: ") and MALFORMED[case][1] in line


def test_inspect_of_one_good_scan_prints_its_geometry(tmp_path, capsys):
    path = write_nifti(tmp_path / "a.nii.gz", synthetic_ct())
    code, out, _ = run_inspect(capsys, str(path))
    assert code == 0 and "shape: 20x24x16" in out and "orientation: RAS" in out


def test_load_scans_skips_malformed_scans_caches_them_and_loads_the_rest(tmp_path, monkeypatch):
    root = good_folders(tmp_path / "data")
    for case in ("zero_affine", "nan_sform", "zero_pixdim", "claims_800_cubed"):
        bad_scan(root / "CT-23" / f"{case}.nii.gz", **MALFORMED[case][0])
    records = discover(root).records
    loaded = dataset.load_scans(records, CONFIG, tmp_path / "cache", workers=1, progress=False)
    assert loaded.study_ids == ["good_1", "good_2", "good_3"]
    assert sorted(Path(s.path).name for s in loaded.skipped) == [
        "claims_800_cubed.nii.gz", "nan_sform.nii.gz", "zero_affine.nii.gz", "zero_pixdim.nii.gz"]
    monkeypatch.setattr(nifti, "read_scan", lambda path: pytest.fail(f"read again: {path}"))
    again = dataset.load_scans(records, CONFIG, tmp_path / "cache", workers=1, progress=False)
    assert again.stats.cached == 7 and again.stats.decoded == 0
    assert [s.reason for s in again.skipped] == [s.reason for s in loaded.skipped]


@pytest.mark.parametrize("dim", [[3, 4000, 4000, 4000, 1, 1, 1, 1], [3, 800, 800, 800, 1, 1, 1, 1]])
def test_read_scan_refuses_a_huge_claim_before_allocating(tmp_path, dim):
    path = bad_scan(tmp_path / "huge.nii.gz", dim=dim)
    assert path.stat().st_size < 16_000
    tracemalloc.start()
    try:
        with pytest.raises(ScanError, match=r"voxels|more than a"):
            nifti.read_scan(str(path))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 32 << 20


def test_read_scan_refuses_an_uncompressed_file_shorter_than_its_header_claims(tmp_path):
    path = patch_header(write_nifti(tmp_path / "a.nii", synthetic_ct()), dim=[3, 200, 240, 160, 1, 1, 1, 1])
    with pytest.raises(ScanError, match=r"truncated: header claims 15,360,352 bytes"):
        nifti.read_scan(str(path))


def test_read_scan_keeps_nibabels_header_messages_off_the_terminal(tmp_path, capfd):
    path = bad_scan(tmp_path / "a.nii.gz", vox_offset=10)
    with pytest.raises(ScanError):
        nifti.read_scan(str(path))
    out, err = capfd.readouterr()
    assert out == "" and err == ""


# name -> (shape x, y, z; voxel size in mm; words the reason must hold). The body axis is z unless the
# affine says otherwise (see the sagittal case).
SLABS = {
    "two_slices_of_3_mm": ((20, 24, 2), (0.7, 0.7, 3.0), "2 slices covering 6 mm"),
    "seven_slices_of_10_mm": ((20, 24, 7), (0.7, 0.7, 10.0), "7 slices covering 70 mm"),
    "two_slices_of_200_mm": ((20, 24, 2), (0.7, 0.7, 200.0), "2 slices covering 400 mm"),
    "forty_slices_of_1_mm": ((20, 24, 40), (0.7, 0.7, 1.0), "40 slices covering 40 mm"),
}


def slab(path: Path, case: str) -> Path:
    shape, zooms, _ = SLABS[case]
    return write_nifti(path, synthetic_ct(shape, seed=5), np.diag([*zooms, 1.0]))


@pytest.mark.parametrize("case", sorted(SLABS))
def test_inspect_of_a_slab_is_a_one_line_error_saying_it_cannot_be_a_chest(tmp_path, capsys, case):
    path = slab(tmp_path / f"{case}.nii.gz", case)
    code, out, err = run_inspect(capsys, str(path))
    assert code == 2 and out == ""
    line = one_line(err)
    assert line.startswith(f"error: {path}: {SLABS[case][2]} along the body axis cannot be a chest CT")


def test_inspect_and_training_skip_slabs_with_the_reason_and_keep_the_rest(tmp_path, capsys):
    root = good_folders(tmp_path / "data")
    for case in SLABS:
        slab(root / "CT-23" / f"{case}.nii.gz", case)
    code, out, _ = run_inspect(capsys, str(root), "--cache-dir", str(tmp_path / "cache"))
    assert code == 0 and "usable under the task: 3 (label 0: 2, label 1: 1)" in out
    for case, (_, _, words) in SLABS.items():
        assert f"{words} along the body axis" in one_line("\n".join(x for x in out.splitlines() if case in x))
    loaded = dataset.load_scans(discover(root).records, CONFIG, tmp_path / "cache2", workers=1, progress=False)
    assert loaded.study_ids == ["good_1", "good_2", "good_3"]
    assert sorted(Path(s.path).stem.removesuffix(".nii") for s in loaded.skipped) == sorted(SLABS)
    assert all("cannot be a chest CT" in s.reason for s in loaded.skipped)


def test_read_scan_measures_the_body_axis_whichever_voxel_axis_holds_it(tmp_path):
    # Stored sagittally: voxel axis i runs inferior-superior (2 voxels of 3 mm), k left-right (16 of 8 mm).
    sagittal = np.array([[0, 0, 8.0, 0], [0, 0.7, 0, 0], [3.0, 0, 0, 0], [0, 0, 0, 1]])
    path = write_nifti(tmp_path / "sagittal_slab.nii.gz", synthetic_ct((2, 24, 16)), sagittal)
    with pytest.raises(ScanError, match=r"^2 slices covering 6 mm along the body axis"):
        nifti.read_scan(str(path))
    tall = write_nifti(tmp_path / "sagittal.nii.gz", synthetic_ct((40, 24, 16)),
                       np.array([[0, 0, 0.7, 0], [0, 0.7, 0, 0], [8.0, 0, 0, 0], [0, 0, 0, 1]]))
    meta = nifti.read_scan(str(tall))[1]
    assert (meta.body_axis_slices, meta.body_axis_mm) == (40, 320.0) and nifti.coverage_warning(meta) is None


def test_a_crop_of_part_of_a_chest_is_read_with_a_one_line_warning(tmp_path, capsys):
    path = write_nifti(tmp_path / "crop.nii.gz", synthetic_ct((20, 24, 12)), np.diag([0.7, 0.7, 8.0, 1.0]))
    code, out, _ = run_inspect(capsys, str(path))
    assert code == 0 and "body axis: 12 slices, 96 mm" in out
    warning, = [line for line in out.splitlines() if "warning" in line]
    assert "covers 96 mm along the body axis (12 slices), less than the 120 mm of half a chest" in warning


def test_inspect_lists_a_crop_as_used_with_a_warning(tmp_path, capsys):
    root = good_folders(tmp_path / "data")
    write_nifti(root / "CT-0" / "crop.nii.gz", synthetic_ct((20, 24, 12)), np.diag([0.7, 0.7, 8.0, 1.0]))
    code, out, _ = run_inspect(capsys, str(root), "--cache-dir", str(tmp_path / "cache"))
    assert code == 0 and "usable under the task: 4 (label 0: 3, label 1: 1)" in out
    assert "used, with a warning (1):" in out and "crop.nii.gz: covers 96 mm" in out


def test_the_bounds_sit_far_below_the_geometry_of_mosmeddata_and_the_phantoms():
    from lungct.phantom import N_SLICES, SLICE_SPACING_MM

    assert N_SLICES[0] >= 3 * nifti.MIN_SLICES
    assert N_SLICES[0] * SLICE_SPACING_MM[0] >= 2 * nifti.CHEST_BODY_AXIS_MM > 2 * nifti.MIN_BODY_AXIS_MM


def write_manifest(root: Path, text: str, encoding: str = "utf-8") -> Path:
    for name, seed in (("a", 1), ("b", 2), ("c", 3)):
        write_nifti(root / "scans" / f"{name}.nii.gz", synthetic_ct(seed=seed))
    (root / "m.csv").write_bytes(text.encode(encoding))
    return root / "m.csv"


def test_manifest_row_whose_label_contradicts_its_category_is_skipped(tmp_path, capsys):
    manifest = write_manifest(tmp_path, "path,category,label\nscans/a.nii.gz,CT-0,1\n"
                                        "scans/b.nii.gz,CT-0,0\nscans/c.nii.gz,CT-2,1\n")
    code, out, _ = run_inspect(capsys, str(manifest), "--cache-dir", str(tmp_path / "cache"))
    assert code == 0
    assert "usable under the task: 2 (label 0: 1, label 1: 1)" in out
    line = one_line("\n".join(line for line in out.splitlines() if "a.nii.gz" in line))
    assert line.endswith("the manifest gives category CT-0 and label 1, but CT-0 is label 0 under task course")


def test_inspect_counts_exactly_what_training_loads_from_a_manifest(tmp_path, capsys):
    manifest = write_manifest(tmp_path, "path,category,label\nscans/a.nii.gz,CT-0,1\nscans/b.nii.gz,CT-1,1\n"
                                        "scans/c.nii.gz,,1\n")
    _, out, _ = run_inspect(capsys, str(manifest), "--cache-dir", str(tmp_path / "cache"))
    loaded = dataset.load_scans(discover(manifest).records, CONFIG, tmp_path / "cache", workers=1, progress=False)
    n1 = int(loaded.labels.sum())
    assert f"usable under the task: {len(loaded.labels)} (label 0: {len(loaded.labels) - n1}, label 1: {n1})" in out
    assert loaded.study_ids == ["c"]  # a contradicts CT-0; b is CT-1, which the course task excludes


def test_latin1_manifest_is_a_one_line_error_naming_file_offset_and_line(tmp_path, capsys):
    text = "path,category\nscans/a.nii.gz,CT-0\nscans/café.nii.gz,CT-2\n"
    manifest = write_manifest(tmp_path, text, "latin-1")
    code, out, err = run_inspect(capsys, str(manifest))
    assert code == 2 and out == ""
    assert one_line(err) == (f"error: {manifest}: not UTF-8 text (byte 0xe9 at offset {text.index('é')}, line 3); "
                             "save it as UTF-8")


def test_latin1_registry_is_a_one_line_error_naming_it(tmp_path, capsys):
    root = make_mosmed(tmp_path / "d", {"CT-0": 1, "CT-2": 1})
    with (root / "dataset_registry.csv").open("ab") as fh:
        fh.write("9,CT-0,/studies/CT-0/Ivan_Pétrov.nii.gz,\n".encode("latin-1"))
    code, out, err = run_inspect(capsys, str(root), "--no-read")
    assert code == 2 and out == ""
    assert "dataset_registry.csv: not UTF-8 text (byte 0xe9" in one_line(err)


@pytest.mark.parametrize("cell", ["scans/a\x00.nii.gz", "x" * 5000 + ".nii.gz", "~no_such_user_here/a.nii.gz"],
                         ids=["nul_byte", "name_too_long", "unknown_user"])
def test_manifest_row_with_an_impossible_path_is_skipped(tmp_path, capsys, cell):
    manifest = write_manifest(tmp_path, f"path,category\n{cell},CT-0\nscans/b.nii.gz,CT-0\nscans/c.nii.gz,CT-2\n")
    code, out, _ = run_inspect(capsys, str(manifest), "--no-read")
    assert code == 0 and "usable under the task: 2 (label 0: 1, label 1: 1)" in out
    assert "skipped (1):" in out


def test_control_characters_in_names_reach_the_terminal_escaped(tmp_path, capsys):
    root = good_folders(tmp_path / "data")
    (root / "CT-0" / "red\x1b[31m.nii.gz").write_bytes(b"not an image")
    (root / "CT-0" / "two\nlines.txt").write_text("x")
    os.close(os.open(os.fsencode(root / "CT-23") + b"/caf\xe9.nii.gz", os.O_CREAT | os.O_WRONLY))
    manifest = write_manifest(tmp_path / "m", "path,category\nscans/a.nii.gz,CT-\x1b[2J0\n"
                                              "scans/b.nii.gz,CT-0\nscans/c.nii.gz,CT-2\n")
    _, folders_out, _ = run_inspect(capsys, str(root), "--cache-dir", str(tmp_path / "cache"))
    _, manifest_out, _ = run_inspect(capsys, str(manifest), "--no-read")
    for out in (folders_out, manifest_out):
        assert "\x1b" not in out and all(c.isprintable() for line in out.splitlines() for c in line)
    assert "red\\x1b[31m.nii.gz: not a readable NIfTI file" in folders_out
    assert "two\\nlines.txt: not a .nii or .nii.gz file" in folders_out
    assert "caf\\udce9.nii.gz: not a readable NIfTI file" in folders_out
    assert "usable under the task: 3 (label 0: 2, label 1: 1)" in folders_out
    assert "unknown category 'CT-\\x1b[2J0'" in manifest_out


def test_control_characters_in_a_bad_root_are_escaped_in_its_error(tmp_path, capsys):
    code, _, err = run_inspect(capsys, str(tmp_path / "no\x1b]0;pwned\x07where"))
    assert code == 2 and "\x1b" not in err and "\x07" not in err
    assert "no\\x1b]0;pwned\\x07where: no such file or folder" in one_line(err)


def test_unwritable_cache_dir_is_a_one_line_error(tmp_path, capsys):
    root = good_folders(tmp_path / "data")
    (tmp_path / "cache").write_text("a file, not a folder")
    code, out, err = run_inspect(capsys, str(root), "--cache-dir", str(tmp_path / "cache"))
    assert code == 2 and out == ""
    assert one_line(err).startswith(f"error: cache folder {tmp_path / 'cache'}: cannot write there")


def serve_zip(folder: Path, members: dict[str, bytes]) -> str:
    """``CT-0.zip`` holding ``members`` in ``folder``, and the file:// base URL serving it."""
    folder.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(folder / "CT-0.zip", "w") as z:
        for name, data in members.items():
            z.writestr(name, data)
    return folder.as_uri()


def run_download(capsys, *argv: str) -> tuple[int, str, str]:
    code = download.main(list(argv))
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    return code, out, err


@pytest.mark.parametrize("url", ["example.com", "ftp://example.com/x", "http://", "http://[::1", "https:///nohost"])
def test_download_malformed_base_url_is_a_one_line_error(tmp_path, capsys, url):
    code, _, err = run_download(capsys, "--out", str(tmp_path / "d"), "--base-url", url)
    assert code == 2
    assert one_line(err).startswith(f"error: --base-url {url!r}: ")


def test_download_removes_an_archive_with_an_unsafe_member(tmp_path, capsys):
    base = serve_zip(tmp_path / "served", {"CT-0/ok.nii.gz": b"x", "../../escape.nii.gz": b"x"})
    code, _, err = run_download(capsys, "--out", str(tmp_path / "d"), "--base-url", base)
    assert code == 2 and "unsafe member path '../../escape.nii.gz'; removed it" in one_line(err)
    assert sorted(p.name for p in (tmp_path / "d").iterdir()) == []
    assert not (tmp_path / "escape.nii.gz").exists()


def test_download_refuses_an_archive_that_would_unpack_past_the_cap(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(download, "MAX_EXTRACTED_BYTES", 1000)
    base = serve_zip(tmp_path / "served", {"CT-0/big.nii.gz": bytes(1500)})
    code, _, err = run_download(capsys, "--out", str(tmp_path / "d"), "--base-url", base)
    assert code == 2 and "would unpack to 1,500 bytes, more than the 1,000 allowed; removed it" in one_line(err)
    assert list((tmp_path / "d").iterdir()) == []


class _InterruptedResponse:
    """A response that delivers one chunk, then the user presses Ctrl-C."""

    def __init__(self, accept_ranges: bool):
        self.status = 200
        self.headers = {"Content-Length": "2000", **({"Accept-Ranges": "bytes"} if accept_ranges else {})}
        self.chunks = [b"x" * 1000]

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def read(self, _n: int) -> bytes:
        if self.chunks:
            return self.chunks.pop()
        raise KeyboardInterrupt


@pytest.mark.parametrize("accept_ranges, kept", [(True, True), (False, False)])
def test_download_ctrl_c_keeps_only_a_resumable_part_and_says_so(tmp_path, capsys, monkeypatch, accept_ranges, kept):
    monkeypatch.setattr(download.urllib.request, "urlopen", lambda *a, **k: _InterruptedResponse(accept_ranges))
    code, _, err = run_download(capsys, "--out", str(tmp_path / "d"), "--base-url", "https://example.org/x")
    assert code == 130
    part = tmp_path / "d" / "CT-0.zip.part"
    assert part.is_file() == kept
    line = one_line(err)
    assert ("run the same command again to resume it" in line) == kept
    if kept:
        assert part.stat().st_size == 1000
