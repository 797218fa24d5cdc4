"""The suite's parallel run, opt-in: ``python -m pytest -n auto --dist loadfile`` (pytest-xdist). How many workers
``-n auto`` starts, and each worker's cores.

Imported first by tests/conftest.py, which pytest loads before any test module, so before numpy or torch. Each
xdist worker is pinned to its own share of this process's CPU cores (``os.sched_setaffinity``): torch's thread
pool, the tests' subprocesses and ``search.selection.parallel.threads_per_worker`` all read that mask, so two
workers on a 2-core machine train with one thread each instead of four threads fighting over two cores (oneDNN's
spin-waits make oversubscription many times slower, not twice). Without ``-n`` nothing here acts.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator

import pytest

# Each worker imports torch and trains small models: about 1.5 GB at its peak.
GIB_PER_WORKER = 3
MAX_WORKERS = 8


def worker_name() -> str | None:
    """This pytest-xdist worker's name ("gw0", "gw1", ...), None outside xdist."""
    name = os.environ.get("PYTEST_XDIST_WORKER", "")
    return name if name.startswith("gw") else None


def worker_index() -> int:
    """This pytest-xdist worker's number (gw0 -> 0), 0 outside xdist."""
    name = worker_name()
    return int(name[2:]) if name else 0


def _cores() -> list[int]:
    # Read here rather than from search.selection.parallel: importing search loads torch, which must come after
    # the pinning below.
    try:
        return sorted(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return list(range(os.cpu_count() or 1))


def _memory_gib() -> float | None:
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) / 2**20
    except OSError:
        pass
    return None


def worker_count(cores: int, memory_gib: float | None) -> int:
    """``-n auto``: one worker per core, at most MAX_WORKERS, and no more than the memory holds."""
    count = min(cores, MAX_WORKERS)
    if memory_gib is not None:
        count = min(count, int(memory_gib // GIB_PER_WORKER))
    return max(1, count)


def worker_cores(cores: list[int], index: int, count: int) -> list[int]:
    """Worker ``index`` of ``count``'s share of ``cores``: disjoint runs, the remainder to the last worker."""
    if count < 2 or len(cores) < count:
        return cores
    share = len(cores) // count
    return cores[index * share:] if index == count - 1 else cores[index * share:(index + 1) * share]


@pytest.hookimpl(tryfirst=True)
def pytest_xdist_auto_num_workers(config) -> int:
    return worker_count(len(_cores()), _memory_gib())


def _pin_this_worker() -> None:
    count = os.environ.get("PYTEST_XDIST_WORKER_COUNT")
    if not (worker_name() and count and hasattr(os, "sched_setaffinity")):
        return
    mine = worker_cores(_cores(), worker_index(), int(count))
    os.sched_setaffinity(0, mine)
    os.environ["OMP_NUM_THREADS"] = str(len(mine))  # subprocesses inherit the mask; OpenMP is told as well
    if "torch" in sys.modules:  # imported before this plugin: its pool was sized for every core
        sys.modules["torch"].set_num_threads(len(mine))


# Every core this process may use before any pinning: what a test that starts --jobs 2 workers gives itself back.
UNPINNED_CORES = frozenset(_cores())
_pin_this_worker()


@contextlib.contextmanager
def every_core() -> Iterator[None]:
    """This process (and what it starts) on :data:`UNPINNED_CORES` for a while; its own share again after.

    Under ``-n`` a worker has one core of two, and ``search.run --jobs 2`` refuses more worker processes than cores;
    the tests of ``--jobs 2`` run as on the whole machine, sharing its cores with the other worker for their time.
    """
    if not hasattr(os, "sched_setaffinity"):
        yield
        return
    mine = os.sched_getaffinity(0)
    os.sched_setaffinity(0, UNPINNED_CORES)
    try:
        yield
    finally:
        os.sched_setaffinity(0, mine)


# The files that take longest (the suite's --durations, summed per file, on a 2-core CPU), longest first. Under
# ``--dist loadfile`` the files are dealt out to the workers in collection order, so a long file collected late
# can start last and run alone while the other workers idle; dealt out first, they overlap with everything else.
LONGEST_FIRST = (
    "tests/search/commands/test_run.py",
    "tests/search/selection/test_parallel.py",
    "tests/search/commands/test_export.py",
    "tests/search/commands/test_hostile_signals.py",
    "tests/search/commands/test_ablate.py",
    "tests/search/commands/test_export_severity.py",
    "tests/fuzz/test_model_folder.py",
    "tests/search/commands/test_report.py",
    "tests/search/model/test_saliency_phantoms.py",
    "tests/fuzz/test_manifest.py",
    "tests/search/benchmarks/test_bench_selection.py",
)


def longest_first(items: list) -> None:
    """Move the tests of :data:`LONGEST_FIRST`'s files to the front, in its order; the rest keep theirs."""
    rank = {path: i for i, path in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.nodeid.split("::", 1)[0], len(rank)))


def pytest_collection_modifyitems(config, items) -> None:
    if worker_name():  # the order of a run in one process stays the files' own
        longest_first(items)
