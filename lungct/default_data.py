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

from lungct.discover import REGISTRY_NAME

DEFAULT_N = 200
DEFAULT_SEED = 0


def default_phantom_root(studies_dir: str | Path = "studies", n: int = DEFAULT_N, seed: int = DEFAULT_SEED,
                         *, progress: bool = True) -> Path:
    """The folder of the default phantom set, generating it first if it is not there yet.

    Args:
        studies_dir: Where every run writes (``studies/``).
        n: Number of phantoms.
        seed: Phantom seed; each (n, seed) pair has its own folder.
        progress: Show the generator's progress bar.
    """
    from lungct.phantom import generate_phantoms

    root = Path(studies_dir) / f"phantoms-n{n}-seed{seed}"
    if (root / REGISTRY_NAME).is_file():
        return root
    root.parent.mkdir(parents=True, exist_ok=True)
    print(f"No --data given: generating the default set of {n} synthetic phantoms (seed {seed}) "
          f"into {root}, once.", file=sys.stderr)
    tmp = Path(tempfile.mkdtemp(dir=root.parent, prefix=f".{root.name}."))
    try:
        generate_phantoms(tmp, n=n, seed=seed, progress=progress)
        try:
            tmp.rename(root)
        except OSError:
            # Another process finished the same set first; theirs is as good as ours.
            if not (root / REGISTRY_NAME).is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return root
