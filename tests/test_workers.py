"""tests/workers.py: how many pytest-xdist workers `-n auto` starts, and which cores each one gets."""

import pytest

from tests.workers import worker_cores, worker_count


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
