"""The embedded default data set: phantoms generated once under ``studies/`` and reused.

Commands that need data and get no ``--data`` call :func:`default_phantom_root`. The set is written
into a temporary folder and renamed into place when complete, so a crash or Ctrl-C during
generation never leaves a half-made set that a later run would mistake for a whole one.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

from lungct.errors import printable

DEFAULT_N = 200
DEFAULT_SEED = 0


def default_phantom_root(studies_dir: str | Path = "studies", n: int = DEFAULT_N, seed: int = DEFAULT_SEED,
                         *, matrix: int = 256, progress: bool = True) -> Path:
    """The folder of the default phantom set, generating it first if it is not there yet.

    Args:
        studies_dir: Where every run writes (``studies/``).
        n: Number of phantoms.
        seed: Phantom seed; each (n, seed) pair has its own folder.
        matrix: In-plane voxels of the phantoms (tests use small ones).
        progress: Show the generator's progress bar.
    """
    from lungct.phantom import GENERATOR_VERSION, generate_phantoms, phantom_set_is_current

    # The generator's version is in the name: a newer generator makes a new set beside the old one,
    # which studies made on the old one may still need.
    root = Path(studies_dir) / f"phantoms-v{GENERATOR_VERSION}-n{n}-seed{seed}"
    if phantom_set_is_current(root, n=n, seed=seed, matrix=matrix):
        return root
    root.parent.mkdir(parents=True, exist_ok=True)
    print(f"No --data given: generating the default set of {n} synthetic phantoms (seed {seed}) "
          f"into {printable(str(root))}, once.", file=sys.stderr)
    tmp = Path(tempfile.mkdtemp(dir=root.parent, prefix=f".{root.name}."))
    try:
        generate_phantoms(tmp, n=n, seed=seed, matrix=matrix, progress=progress)
        if root.exists():  # an incomplete set (interrupted before this folder-level rename existed)
            stale = root.with_name(f".{root.name}.stale")
            shutil.rmtree(stale, ignore_errors=True)
            root.rename(stale)
            shutil.rmtree(stale, ignore_errors=True)
        try:
            tmp.rename(root)
        except OSError:
            # Another process finished the same set first; theirs is as good as ours.
            if not phantom_set_is_current(root, n=n, seed=seed, matrix=matrix):
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return root
