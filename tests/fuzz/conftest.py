"""The fuzz tests' Hypothesis profiles: "ci" by default, "long" with ``LUNGCT_FUZZ=long``.

- ``ci``: seeded (``derandomize``), so every run tries the same examples and a failure reproduces; few enough
  examples that all of tests/fuzz runs in under a minute on 2 slow cores, inside the normal ``python -m pytest``.
- ``long``: random seeds and many examples, run by hand (``LUNGCT_FUZZ=long python -m pytest tests/fuzz
  --hypothesis-show-statistics``); a failure prints the example and a blob that ``@reproduce_failure`` replays.

Both give every example a deadline, so a parser that hangs or crawls on some input fails instead of stalling.
No example database is kept: nothing is written into the working tree.
"""

from __future__ import annotations

import os
from datetime import timedelta

from hypothesis import HealthCheck, settings

PROFILE_ENV = "LUNGCT_FUZZ"
# A parse takes milliseconds; the deadline leaves room for 2 cores shared with other work, and still catches a hang.
DEADLINE = timedelta(seconds=5)
# What each test's share (tests.fuzz.common.examples) multiplies; "long" runs about 10 minutes on 2 cores.
CI_EXAMPLES = 20
LONG_EXAMPLES = 500

_COMMON = {"deadline": DEADLINE, "database": None, "print_blob": True,
           "suppress_health_check": (HealthCheck.too_slow,)}  # generating a scan or a folder takes a while
settings.register_profile("ci", derandomize=True, max_examples=CI_EXAMPLES, **_COMMON)
settings.register_profile("long", max_examples=LONG_EXAMPLES, **_COMMON)
# Loaded here, before the test modules are imported, so their per-test settings inherit it.
settings.load_profile(os.environ.get(PROFILE_ENV, "ci"))
