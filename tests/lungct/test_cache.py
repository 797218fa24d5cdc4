import os

import nibabel as nib
import numpy as np

from lungct.cache import EDGE_BYTES, file_key


def _write(path, fill: int, shape=(40, 48, 36)) -> None:
    data = np.full(shape, fill, dtype=np.int16)
    data[::3] = -1000
    nib.save(nib.Nifti1Image(data, np.eye(4)), str(path))


def test_file_key_changes_for_a_same_size_replacement_with_the_same_modification_time(tmp_path):
    path = tmp_path / "scan.nii"  # uncompressed: a replacement of the same shape has exactly the same size
    _write(path, 40)
    before = file_key(path)
    st = os.stat(path)
    _write(path, 41)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))  # what cp -p or a sync tool keeps
    assert os.stat(path).st_size == st.st_size and os.stat(path).st_mtime_ns == st.st_mtime_ns
    assert file_key(path) != before


def test_file_key_samples_a_large_file_at_its_edges_and_between(tmp_path):
    path = tmp_path / "big.bin"
    size = 8 * EDGE_BYTES
    path.write_bytes(bytes(size))
    st = os.stat(path)
    keys = {file_key(path)}
    for offset in (0, size // 2, size - 1):  # the head, a middle block, the tail
        data = bytearray(bytes(size))
        data[offset] = 1
        path.write_bytes(bytes(data))
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
        keys.add(file_key(path))
    assert len(keys) == 4


def test_file_key_is_stable_for_an_unchanged_file(tmp_path):
    path = tmp_path / "scan.nii.gz"
    _write(path, 40)
    assert file_key(path) == file_key(path)


def test_file_key_does_not_open_a_fifo(tmp_path):
    fifo = tmp_path / "scan.nii.gz"
    os.mkfifo(fifo)
    assert len(file_key(fifo)) == 32  # returns at once: opening it would wait for a writer
