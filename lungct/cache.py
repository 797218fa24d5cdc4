"""The on-disk cache of preprocessed scans, so that a second run decodes no NIfTI.

Layout under the cache folder (by default ``studies/cache``)::

    meta/<file key>.json            what reading the scan found: its geometry, or why it was skipped
    <preprocess key>/<file key>.npz the windowed, resized float16 (D, H, W) volume

The file key hashes the scan's identity (resolved path, size, modification time), a sample of its bytes
(its first and last 64 KiB and 16 blocks of 4 KiB spread between, so a same-size replacement whose
modification time was kept, as ``cp -p`` or a sync tool keeps it, is not mistaken for the cached scan,
while a run reads about 0.2 MB of each scan rather than all of it) and the reader's version; the preprocess
key hashes every :class:`~lungct.records.PreprocessConfig` field. Entries are
written to a temporary name and renamed, so two processes filling the cache at once, or a crash
mid-write, never leave a partial entry under a real name. A ``.npz`` is a zip whose members carry a
CRC-32, so a truncated or corrupted entry fails to load; it is then deleted and rebuilt.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import stat
import zipfile
from pathlib import Path

import numpy as np

from lungct.errors import DataError
from lungct.files import atomic_write_bytes
from lungct.nifti import ScanMeta
from lungct.records import PreprocessConfig

# Bump when reading or preprocessing changes meaning, so old entries are not reused.
# 2: headers with a NaN or zero voxel size or a degenerate affine are refused (1 read some of them).
# 3: scans too short along the body axis to be a chest are refused; the metadata records that axis.
# 4: the file key also hashes a sample of the file's bytes.
CACHE_VERSION = 4
EDGE_BYTES = 64 * 1024
SAMPLE_BLOCKS = 16
BLOCK_BYTES = 4096


def _sample_digest(path: Path, size: int) -> str:
    """SHA-256 of the file's first and last EDGE_BYTES and SAMPLE_BLOCKS blocks spread between (all of a small file)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        if size <= 2 * EDGE_BYTES + SAMPLE_BLOCKS * BLOCK_BYTES:
            h.update(fh.read(size))
            return h.hexdigest()
        offsets = [0, *(EDGE_BYTES + (size - 2 * EDGE_BYTES) * i // SAMPLE_BLOCKS for i in range(SAMPLE_BLOCKS)),
                   size - EDGE_BYTES]
        for off in offsets:
            fh.seek(off)
            h.update(fh.read(EDGE_BYTES if off in (0, size - EDGE_BYTES) else BLOCK_BYTES))
    return h.hexdigest()


def file_key(path: str | Path) -> str:
    """A key for a file's identity: its resolved path, size, modification time and a sample of its bytes."""
    p = Path(path).resolve()
    st = p.stat()
    # Only a regular file is sampled: opening a FIFO would wait for a writer (the reader refuses it anyway).
    sample = _sample_digest(p, st.st_size) if stat.S_ISREG(st.st_mode) else "not a regular file"
    ident = f"{p}|{st.st_size}|{st.st_mtime_ns}|{sample}|v{CACHE_VERSION}"
    # surrogateescape: a file name that is not valid UTF-8 (held as lone surrogates) still hashes.
    return hashlib.sha256(ident.encode("utf-8", "surrogateescape")).hexdigest()[:32]


def preprocess_key(config: PreprocessConfig) -> str:
    """A readable folder name for a preprocessing configuration, unique to all of its fields."""
    digest = hashlib.sha256(json.dumps(config.to_dict(), sort_keys=True).encode()).hexdigest()[:10]
    d, h, w = config.size
    return f"{d}x{h}x{w}_hu{config.hu_min:g}_{config.hu_max:g}_{digest}"


class ScanCache:
    """Preprocessed volumes and scan metadata for one preprocessing configuration."""

    def __init__(self, cache_dir: str | Path, config: PreprocessConfig):
        self.root = Path(cache_dir)
        self.config = config
        self.volume_dir = self.root / preprocess_key(config)
        self.meta_dir = self.root / "meta"

    def check_writable(self) -> None:
        """Create the cache folder; one that cannot be created or written is a :class:`DataError`."""
        try:
            self.meta_dir.mkdir(parents=True, exist_ok=True)
            if not os.access(self.meta_dir, os.W_OK):
                raise PermissionError(13, "Permission denied")
        except OSError as e:
            raise DataError(f"cache folder {self.root}: cannot write there ({e.strerror or e})") from None

    def volume_path(self, key: str) -> Path:
        """Where the volume for a file key lives."""
        return self.volume_dir / f"{key}.npz"

    def load_volume(self, key: str) -> np.ndarray | None:
        """The cached volume, or None on a miss; a corrupt or mis-shaped entry is deleted, so it is rebuilt."""
        path = self.volume_path(key)
        if not path.is_file():
            return None
        try:
            with np.load(path, allow_pickle=False) as entry:
                volume = entry["volume"]
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
            path.unlink(missing_ok=True)
            return None
        if volume.shape != self.config.size or volume.dtype != np.float16 or not np.isfinite(volume).all():
            path.unlink(missing_ok=True)
            return None
        return volume

    def save_volume(self, key: str, volume: np.ndarray) -> None:
        """Store a preprocessed float16 (D, H, W) volume."""
        buffer = io.BytesIO()
        np.savez(buffer, volume=np.ascontiguousarray(volume, dtype=np.float16))
        atomic_write_bytes(self.volume_path(key), buffer.getvalue())

    def load_meta(self, key: str) -> ScanMeta | str | None:
        """The scan's metadata, the reason it was skipped (a str), or None if it was never read."""
        path = self.meta_dir / f"{key}.json"
        try:
            entry = json.loads(path.read_text())
            return entry["skip"] if "skip" in entry else ScanMeta.from_dict(entry["meta"])
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError):
            path.unlink(missing_ok=True)
            return None

    def save_meta(self, key: str, meta: ScanMeta | str) -> None:
        """Record what reading the scan found: its metadata, or the reason (a str) it cannot be used."""
        entry = {"skip": meta} if isinstance(meta, str) else {"meta": meta.to_dict()}
        atomic_write_bytes(self.meta_dir / f"{key}.json", json.dumps(entry).encode())
