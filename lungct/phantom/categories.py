"""Which category each phantom of a set gets: the class mix, the involvement each category draws, and
the seeded, shuffled assignment of categories to phantoms ``0..n-1``.
"""

from __future__ import annotations

import numpy as np

from lungct.records import CATEGORIES

# Share of each category in a set. The course task is CT-0 against CT-2/CT-3, so both sides get most
# of the set; CT-1 and CT-4 stay present because MosMedData has them and the loader must exclude them.
CLASS_MIX = {"CT-0": 0.40, "CT-1": 0.20, "CT-2": 0.25, "CT-3": 0.12, "CT-4": 0.03}
# Which categories a small set keeps first when it cannot hold all five.
CLASS_PRIORITY = ("CT-0", "CT-2", "CT-3", "CT-1", "CT-4")
# Involvement drawn per category, a margin inside MosMedData's bounds so the exact voxel fraction
# (which the quantile threshold hits to within a voxel) never lands on the wrong side of a bound.
INVOLVEMENT_DRAW = {
    "CT-0": (0.0, 0.0),
    "CT-1": (0.04, 0.22),
    "CT-2": (0.27, 0.48),
    "CT-3": (0.52, 0.73),
    "CT-4": (0.77, 0.90),
}
INVOLVEMENT_BOUNDS = {"CT-0": (0.0, 0.0), "CT-1": (0.0, 0.25), "CT-2": (0.25, 0.5),
                      "CT-3": (0.5, 0.75), "CT-4": (0.75, 1.0)}


def class_counts(n: int) -> dict[str, int]:
    """Exact number of phantoms per category for a set of ``n``, from :data:`CLASS_MIX`.

    Largest remainders, then every category that got none takes one from the largest, as long as
    ``n`` allows; below five phantoms the categories in :data:`CLASS_PRIORITY` come first.
    """
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    if n < len(CATEGORIES):
        return {c: int(c in CLASS_PRIORITY[:n]) for c in CATEGORIES}
    quotas = {c: n * CLASS_MIX[c] for c in CATEGORIES}
    counts = {c: int(q) for c, q in quotas.items()}
    by_remainder = sorted(CATEGORIES, key=lambda c: (-(quotas[c] - counts[c]), CLASS_PRIORITY.index(c)))
    for c in by_remainder[: n - sum(counts.values())]:
        counts[c] += 1
    for c in CLASS_PRIORITY:
        if counts[c] == 0:
            counts[max(counts, key=counts.__getitem__)] -= 1
            counts[c] = 1
    return counts


def assign_categories(n: int, seed: int) -> list[str]:
    """The category of each phantom ``0..n-1``: exact counts, in an order shuffled by ``seed``.

    Shuffled so that study ids carry no class information (a split by id range stays balanced).
    """
    categories = [c for c, k in class_counts(n).items() for _ in range(k)]
    order = np.random.default_rng([seed, n]).permutation(n)
    return [categories[j] for j in order]

