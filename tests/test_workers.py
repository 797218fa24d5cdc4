"""tests/workers.py: how many pytest-xdist workers `-n auto` starts, which cores each one gets, and the order
the files are dealt out in."""

from pathlib import Path

import pytest

from tests.workers import LONGEST_FIRST, longest_first, worker_cores, worker_count


@pytest.mark.parametrize(("cores", "memory", "expected"), [
    (2, 24.0, 2),    # this project's CI machine: one worker per core
    (16, 24.0, 8),   # at most MAX_WORKERS
    (16, 128.0, 8),
    (8, 10.0, 3),    # no more than the memory holds, 3 GiB each
    (4, 2.0, 1),     # always at least one
    (1, None, 1),    # memory unknown (not Linux): by cores alone
])
def test_worker_count(cores, memory, expected):
    assert worker_count(cores, memory) == expected


def test_worker_cores_are_disjoint_and_cover_every_core():
    cores = [0, 1, 2, 3, 4, 6, 7]  # an affinity mask with a gap
    shares = [worker_cores(cores, i, 3) for i in range(3)]
    assert shares == [[0, 1], [2, 3], [4, 6, 7]]


@pytest.mark.parametrize(("cores", "count"), [([0, 1], 1), ([0], 2)])
def test_worker_cores_keep_the_whole_mask_when_it_cannot_be_shared(cores, count):
    assert worker_cores(cores, 0, count) == cores


def test_longest_first_moves_the_long_files_ahead_in_their_order_and_keeps_the_rest_in_theirs():
    class Item:
        def __init__(self, nodeid):
            self.nodeid = nodeid

    long_a, long_b = LONGEST_FIRST[0], LONGEST_FIRST[1]
    items = [Item(n) for n in ("tests/a.py::t1", f"{long_b}::t", "tests/b.py::t2", f"{long_a}::x", f"{long_a}::y",
                               "tests/a.py::t3")]
    longest_first(items)
    assert [i.nodeid for i in items] == [f"{long_a}::x", f"{long_a}::y", f"{long_b}::t", "tests/a.py::t1",
                                         "tests/b.py::t2", "tests/a.py::t3"]


def test_every_longest_first_file_exists():
    root = Path(__file__).resolve().parents[1]
    assert [p for p in LONGEST_FIRST if not (root / p).is_file()] == []
