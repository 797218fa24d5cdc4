"""Writing files so that nothing half-written ever sits under a real name: the one atomic-write helper.

Every command writes through here (cache entries, splits, phantoms, reports, figures, model folders):
a temporary file in the target's folder, then a rename, which is atomic on one file system, so a crash
or Ctrl-C leaves either the old file or the new one. Files and folders get the permissions a plain
``open()`` or ``mkdir()`` would give under the process's umask: ``mkstemp`` and ``mkdtemp`` make them
owner-only, and what these commands write is meant to be shared.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path


def shareable_mode(is_dir: bool = False) -> int:
    """The mode a plain ``open()`` (0o666) or ``mkdir()`` (0o777) gives under this process's umask."""
    umask = os.umask(0)
    os.umask(umask)
    return (0o777 if is_dir else 0o666) & ~umask


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """A temporary path beside ``path`` to write to; renamed onto ``path`` when the block ends without error.

    For writers that want a file name (``Figure.savefig``, ``np.savez``); on an error, or Ctrl-C, the
    temporary file is removed and ``path`` is left as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, shareable_mode())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder and a rename."""
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write ``text`` as UTF-8 to ``path`` atomically (see :func:`atomic_write_bytes`)."""
    atomic_write_bytes(path, text.encode("utf-8"))


def make_shareable(folder: str | Path) -> None:
    """Give a folder made with ``mkdtemp`` and everything inside it the modes of plain files and folders."""
    folder = Path(folder)
    folder.chmod(shareable_mode(is_dir=True))
    for path in folder.rglob("*"):
        path.chmod(shareable_mode(path.is_dir()))
