"""Loading a set of scans into memory as one float16 tensor, through the on-disk cache.

Call :func:`load_scans` once per process (in ``main``) and hand the result to whatever trains; never
once per trial. Cache hits are read in this process; misses are decoded in worker processes, since
gunzipping and resampling a MosMedData scan is CPU-bound.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from lungct import nifti
from lungct.cache import ScanCache, file_key
from lungct.errors import ScanError
from lungct.records import PreprocessConfig, ScanRecord, Skipped


@dataclass
class LoadStats:
    """How a load went: scans decoded from NIfTI, scans read from the cache, seconds taken."""

    decoded: int = 0
    cached: int = 0
    seconds: float = 0.0


@dataclass
class LoadedScans:
    """Scans in memory, in the order of ``records``.

    Attributes:
        records: The scans that loaded (skipped ones removed).
        volumes: (N, 1, D, H, W) float16 in [0, 1], on the CPU.
        labels: (N,) float32 labels under the task.
        skipped: Scans that could not be used, with the reason.
        config: The preprocessing that produced ``volumes``.
        stats: Decoded and cached counts, and the time taken.
    """

    records: list[ScanRecord]
    volumes: torch.Tensor
    labels: torch.Tensor
    skipped: list[Skipped] = field(default_factory=list)
    config: PreprocessConfig = field(default_factory=PreprocessConfig)
    stats: LoadStats = field(default_factory=LoadStats)

    @property
    def study_ids(self) -> list[str]:
        """Study ids in tensor order."""
        return [r.study_id for r in self.records]

    def select(self, study_ids: list[str] | tuple[str, ...]) -> tuple[torch.Tensor, torch.Tensor]:
        """Volumes and labels of the given studies that loaded, in the order given."""
        index = {sid: i for i, sid in enumerate(self.study_ids)}
        rows = torch.tensor([index[s] for s in study_ids if s in index], dtype=torch.long)
        return self.volumes[rows], self.labels[rows]


def _decode(path: str, config: PreprocessConfig) -> tuple[np.ndarray | None, nifti.ScanMeta | str]:
    """Read and preprocess one scan; a :class:`ScanError` becomes its reason string."""
    try:
        volume_hu, meta = nifti.read_scan(path)
    except ScanError as e:
        return None, str(e)
    return nifti.preprocess(volume_hu, config), meta


def _decode_and_cache(path: str, config: PreprocessConfig, cache_dir: str | None) -> tuple[np.ndarray | None, str]:
    """Worker: decode a scan, fill both cache entries, return (volume or None, skip reason or "")."""
    # Workers share the machine's cores; one thread each avoids oversubscription.
    torch.set_num_threads(1)
    volume, meta = _decode(path, config)
    if cache_dir is not None and (key := _key(path)) is not None:
        cache = ScanCache(cache_dir, config)
        cache.save_meta(key, meta)
        if volume is not None:
            cache.save_volume(key, volume)
    return volume, meta if isinstance(meta, str) else ""


def _key(path: str) -> str | None:
    """The scan's cache key, or None where the file cannot be looked at (gone since it was found)."""
    try:
        return file_key(path)
    except OSError:
        return None


def _run_each(fn, arg_tuples: list[tuple], workers: int | None, bar: tqdm) -> list:
    """``[fn(*args) for args in arg_tuples]``, in worker processes when there are several to do."""
    workers = min(workers or os.cpu_count() or 1, len(arg_tuples))
    if workers <= 1:
        out = []
        for args in arg_tuples:
            out.append(fn(*args))
            bar.update()
        return out
    results: dict[int, object] = {}
    # spawn, not fork: forking a process that has run torch's OpenMP threads can deadlock.
    pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"), initializer=_worker_init)
    try:
        futures = {pool.submit(fn, *args): n for n, args in enumerate(arg_tuples)}
        for fut in as_completed(futures):
            results[futures[fut]] = fut.result()
            bar.update()
    except BaseException:
        # Ctrl-C or SIGTERM in the parent: the scans not started are dropped, each worker finishes (and caches,
        # through a temporary name) the one in hand, so no half-written cache entry is left behind.
        pool.shutdown(wait=True, cancel_futures=True)
        raise
    pool.shutdown()
    return [results[n] for n in range(len(arg_tuples))]


def _worker_init() -> None:
    """Decoding workers leave Ctrl-C and SIGTERM to the parent: both go to the whole process group, and a worker
    killed mid-write would leave a temporary cache file behind."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def _read_meta(path: str, cache_dir: str | None) -> nifti.ScanMeta | str:
    """Worker: read and validate one scan, cache what was found, return its metadata or skip reason."""
    torch.set_num_threads(1)
    try:
        meta: nifti.ScanMeta | str = nifti.read_scan(path)[1]
    except ScanError as e:
        meta = str(e)
    if cache_dir is not None and (key := _key(path)) is not None:
        ScanCache(cache_dir, PreprocessConfig()).save_meta(key, meta)
    return meta


def read_metas(records: list[ScanRecord], cache_dir: str | Path | None = "studies/cache", *,
               workers: int | None = None, progress: bool = True) -> dict[str, nifti.ScanMeta | str]:
    """Every scan's metadata, or the reason it cannot be used, keyed by path (the cache answers first).

    This reads and validates each image in full, since truncation or non-finite voxels only show there.

    Raises:
        DataError: The cache folder cannot be written.
    """
    cache = ScanCache(cache_dir, PreprocessConfig()) if cache_dir is not None else None
    if cache is not None:
        cache.check_writable()
    found: dict[str, nifti.ScanMeta | str] = {}
    todo = []
    for record in records:
        key = _key(record.path) if cache is not None else None
        known = cache.load_meta(key) if cache is not None and key is not None else None
        if known is None:
            todo.append(record.path)
        else:
            found[record.path] = known
    cache_arg = str(cache.root) if cache is not None else None
    with tqdm(total=len(todo), desc="reading scans", unit="scan", disable=not progress or not todo,
              leave=False) as bar:
        metas = _run_each(_read_meta, [(path, cache_arg) for path in todo], workers, bar)
    found.update(zip(todo, metas, strict=True))
    return found


def load_scans(
    records: list[ScanRecord],
    config: PreprocessConfig,
    cache_dir: str | Path | None = "studies/cache",
    *,
    workers: int | None = None,
    progress: bool = True,
) -> LoadedScans:
    """Load scans as one tensor, from the cache where possible, decoding and caching the rest.

    Args:
        records: The scans to load (their labels must not be None).
        config: Window and output size.
        cache_dir: Cache folder; None disables the cache (every scan is decoded).
        workers: Processes for decoding cache misses; default: the machine's cores. 1 decodes in
            this process.
        progress: Show a progress bar with an ETA.

    Returns:
        The scans that loaded, and the ones skipped with their reasons.

    Raises:
        DataError: The cache folder cannot be written.
    """
    start = time.perf_counter()
    cache = ScanCache(cache_dir, config) if cache_dir is not None else None
    if cache is not None:
        cache.check_writable()
    volumes: dict[int, np.ndarray] = {}
    skipped: dict[int, Skipped] = {}
    misses: list[int] = []
    stats = LoadStats()
    bar = tqdm(total=len(records), desc="loading scans", unit="scan", disable=not progress, leave=False)
    for i, record in enumerate(records):
        if cache is None:
            misses.append(i)
            continue
        key = _key(record.path)
        known = cache.load_meta(key) if key is not None else None
        if isinstance(known, str):
            skipped[i] = Skipped(record.path, known)
        elif known is not None and key is not None and (volume := cache.load_volume(key)) is not None:
            volumes[i] = volume
        else:
            misses.append(i)
            continue
        stats.cached += 1
        bar.update()

    cache_arg = str(cache.root) if cache is not None else None
    decoded = _run_each(_decode_and_cache, [(records[i].path, config, cache_arg) for i in misses], workers, bar)
    bar.close()
    for i, (volume, reason) in zip(misses, decoded, strict=True):
        stats.decoded += 1
        if volume is None:
            skipped[i] = Skipped(records[i].path, reason)
        else:
            volumes[i] = volume

    kept = [i for i in range(len(records)) if i in volumes]
    d, h, w = config.size
    stacked = torch.from_numpy(np.stack([volumes[i] for i in kept])) if kept else torch.empty(0, d, h, w)
    labels = torch.tensor([records[i].label for i in kept], dtype=torch.float32)
    stats.seconds = time.perf_counter() - start
    return LoadedScans(
        records=[records[i] for i in kept],
        volumes=stacked.to(torch.float16).unsqueeze(1),  # (N, 1, D, H, W)
        labels=labels,
        skipped=[skipped[i] for i in sorted(skipped)],
        config=config,
        stats=stats,
    )
