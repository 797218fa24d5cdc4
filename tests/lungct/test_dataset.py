import threading

import numpy as np
import pytest
import torch

from lungct import nifti
from lungct.cache import ScanCache, file_key
from lungct.dataset import load_scans, read_metas
from lungct.records import PreprocessConfig, ScanRecord
from tests.conftest import synthetic_ct, write_nifti

CONFIG = PreprocessConfig(size=(8, 12, 10))


@pytest.fixture
def records(tmp_path):
    out = []
    for i in range(4):
        path = write_nifti(tmp_path / "scans" / f"s{i}.nii.gz", synthetic_ct(seed=i))
        out.append(ScanRecord(f"s{i}", str(path), "CT-0" if i % 2 else "CT-2", i % 2 == 0))
    return [ScanRecord(r.study_id, r.path, r.category, int(r.label)) for r in out]


@pytest.fixture
def count_reads(monkeypatch):
    calls = []
    real = nifti.read_scan

    def counting(path):
        calls.append(path)
        return real(path)

    monkeypatch.setattr(nifti, "read_scan", counting)
    return calls


def test_load_scans_stacks_float16_volumes_with_labels(records, tmp_path):
    data = load_scans(records, CONFIG, tmp_path / "cache", workers=1, progress=False)
    assert data.volumes.shape == (4, 1, 8, 12, 10) and data.volumes.dtype == torch.float16
    assert data.labels.tolist() == [1.0, 0.0, 1.0, 0.0]
    assert data.study_ids == ["s0", "s1", "s2", "s3"]
    assert data.stats.decoded == 4 and data.stats.cached == 0


def test_load_scans_cache_hit_decodes_nothing(records, tmp_path, count_reads):
    first = load_scans(records, CONFIG, tmp_path / "cache", workers=1, progress=False)
    assert len(count_reads) == 4
    second = load_scans(records, CONFIG, tmp_path / "cache", workers=1, progress=False)
    assert len(count_reads) == 4  # nothing more was read
    assert second.stats.decoded == 0 and second.stats.cached == 4
    assert torch.equal(first.volumes, second.volumes)


def test_load_scans_other_preprocessing_misses_the_cache(records, tmp_path, count_reads):
    load_scans(records, CONFIG, tmp_path / "cache", workers=1, progress=False)
    other = PreprocessConfig(size=(8, 12, 10), hu_min=-1000, hu_max=200)
    load_scans(records, other, tmp_path / "cache", workers=1, progress=False)
    assert len(count_reads) == 8


def test_load_scans_modified_file_misses_the_cache(records, tmp_path, count_reads):
    load_scans(records, CONFIG, tmp_path / "cache", workers=1, progress=False)
    write_nifti(tmp_path / "scans" / "s1.nii.gz", synthetic_ct(seed=99, shape_xyz=(20, 24, 17)))
    load_scans(records, CONFIG, tmp_path / "cache", workers=1, progress=False)
    assert count_reads[4:] == [records[1].path]


@pytest.mark.parametrize("damage", [
    lambda b: b[: len(b) // 2],                                   # a partial write
    lambda b: b[:200] + bytes([b[200] ^ 0xFF]) + b[201:],          # one flipped byte (CRC-32 catches it)
    lambda b: b"garbage",
])
def test_load_scans_rebuilds_a_corrupt_cache_entry(records, tmp_path, count_reads, damage):
    first = load_scans(records, CONFIG, tmp_path / "cache", workers=1, progress=False)
    entry = ScanCache(tmp_path / "cache", CONFIG).volume_path(file_key(records[2].path))
    entry.write_bytes(damage(entry.read_bytes()))
    second = load_scans(records, CONFIG, tmp_path / "cache", workers=1, progress=False)
    assert count_reads[4:] == [records[2].path]
    assert torch.equal(first.volumes, second.volumes)
    assert second.stats.decoded == 1


def test_load_scans_skips_bad_files_with_reason_and_goes_on(records, tmp_path):
    bad = tmp_path / "scans" / "bad.nii.gz"
    bad.write_bytes(b"not an image")
    mr = write_nifti(tmp_path / "scans" / "mr.nii.gz", np.random.default_rng(0).uniform(0, 900, (20, 24, 16)))
    mixed = [*records[:2], ScanRecord("bad", str(bad), "CT-0", 0), ScanRecord("mr", str(mr), "CT-2", 1), records[2]]
    data = load_scans(mixed, CONFIG, tmp_path / "cache", workers=1, progress=False)
    assert data.study_ids == ["s0", "s1", "s2"]
    assert [(s.path, s.reason.split(" (")[0]) for s in data.skipped] == [
        (str(bad), "not a readable NIfTI file"),
        (str(mr), "intensity range 0..900 does not look like CT in HU")]


def test_load_scans_remembers_bad_files_without_reading_them_again(records, tmp_path, count_reads):
    bad = tmp_path / "scans" / "bad.nii.gz"
    bad.write_bytes(b"not an image")
    mixed = [*records, ScanRecord("bad", str(bad), "CT-0", 0)]
    load_scans(mixed, CONFIG, tmp_path / "cache", workers=1, progress=False)
    again = load_scans(mixed, CONFIG, tmp_path / "cache", workers=1, progress=False)
    assert len(count_reads) == 5 and len(again.skipped) == 1


def test_load_scans_in_worker_processes_matches_one_process(records, tmp_path):
    serial = load_scans(records, CONFIG, None, workers=1, progress=False)
    parallel = load_scans(records, CONFIG, tmp_path / "cache", workers=2, progress=False)
    assert torch.equal(serial.volumes, parallel.volumes)
    assert parallel.stats.decoded == 4


def test_cache_writers_racing_on_one_entry_leave_a_whole_entry(records, tmp_path):
    cache = ScanCache(tmp_path / "cache", CONFIG)
    volumes = [np.full(CONFIG.size, v, dtype=np.float16) for v in (0.25, 0.75)]
    threads = [threading.Thread(target=cache.save_volume, args=("k", volumes[i % 2])) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    loaded = cache.load_volume("k")
    assert loaded is not None and float(loaded[0, 0, 0]) in (0.25, 0.75) and len(np.unique(loaded)) == 1
    assert [p.name for p in cache.volume_dir.iterdir()] == ["k.npz"]  # no temporary files left behind


def test_loaded_scans_select_returns_the_requested_studies_in_order(records, tmp_path):
    data = load_scans(records, CONFIG, None, workers=1, progress=False)
    volumes, labels = data.select(["s3", "s0"])
    assert torch.equal(volumes[0], data.volumes[3]) and labels.tolist() == [0.0, 1.0]


def test_read_metas_reports_geometry_and_reasons_then_answers_from_cache(records, tmp_path, count_reads):
    bad = tmp_path / "scans" / "bad.nii.gz"
    bad.write_bytes(b"junk")
    mixed = [*records, ScanRecord("bad", str(bad), "CT-0", 0)]
    metas = read_metas(mixed, tmp_path / "cache", workers=1, progress=False)
    assert metas[records[0].path].shape == (20, 24, 16)
    assert metas[str(bad)].startswith("not a readable NIfTI file")
    assert read_metas(mixed, tmp_path / "cache", workers=1, progress=False) == metas
    assert len(count_reads) == 5


def test_atomic_write_bytes_gives_default_file_permissions(tmp_path):
    import os

    from lungct.cache import atomic_write_bytes

    atomic_write_bytes(tmp_path / "f.json", b"{}")
    umask = os.umask(0)
    os.umask(umask)
    assert (tmp_path / "f.json").stat().st_mode & 0o777 == 0o666 & ~umask


def _signals_after_worker_init(_: int) -> tuple:
    import signal

    from lungct.dataset import _worker_init
    _worker_init()
    return signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)


def test_decoding_workers_leave_ctrl_c_and_sigterm_to_the_parent():
    # Both signals go to the whole process group; a worker killed mid-write would leave a cache .tmp behind.
    import multiprocessing
    import signal
    from concurrent.futures import ProcessPoolExecutor

    # As load_scans does: the executor's shutdown tells the worker to exit. (multiprocessing.Pool's exit
    # sends SIGTERM, which the worker now ignores: that hung this test whenever the worker had not yet
    # read its stop sentinel.)
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        assert pool.submit(_signals_after_worker_init, 0).result(timeout=120) == (signal.SIG_IGN, signal.SIG_IGN)
