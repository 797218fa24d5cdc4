"""``python -m lungct.download --out DIR``: fetch the Keras tutorial's MosMedData archives.

The Keras example "3D image classification from CT scans" uses two archives of MosMedData scans:
``CT-0.zip`` (normal) and ``CT-23.zip`` (CT-2 and CT-3 pooled), 100 scans each, published as release
files of the tutorial's repository. They unpack to ``DIR/CT-0/`` and ``DIR/CT-23/``, a layout that
``--data DIR`` accepts. The full MosMedData release (1,110 studies, CT-0..CT-4, with
``dataset_registry.csv``) has no stable direct link: download it from https://mosmed.ai by hand and
pass its folder as ``--data``.

MosMedData is licensed CC BY-NC-ND 3.0: non-commercial use, no redistribution of modified copies.
Keep it (and anything derived from it, caches included) out of version control.

Each archive is downloaded to a ``.part`` file, checked as a zip, and unpacked into a temporary
folder that is renamed into place, so an interrupted download never leaves a half-filled folder.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import urllib.error
import urllib.request
import zipfile
from pathlib import Path, PurePosixPath

from tqdm.auto import tqdm

from lungct.errors import DataError

KERAS_BASE_URL = "https://github.com/hasibzunair/3D-image-classification-tutorial/releases/download/v0.2"
ARCHIVES = ("CT-0", "CT-23")
CHUNK = 1 << 20


def _fetch(url: str, dest: Path, progress: bool) -> None:
    part = dest.with_name(dest.name + ".part")
    try:
        with urllib.request.urlopen(url, timeout=60) as response, part.open("wb") as out:
            total = int(response.headers.get("Content-Length") or 0) or None
            with tqdm(total=total, unit="B", unit_scale=True, desc=dest.name, disable=not progress) as bar:
                while chunk := response.read(CHUNK):
                    out.write(chunk)
                    bar.update(len(chunk))
    except (urllib.error.URLError, OSError, TimeoutError) as e:
        part.unlink(missing_ok=True)
        raise DataError(f"download of {url} failed: {getattr(e, 'reason', e)}") from None
    part.replace(dest)


def _extract(archive: Path, name: str, out: Path) -> None:
    try:
        with zipfile.ZipFile(archive) as z:
            bad = z.testzip()
            if bad is not None:
                archive.unlink()
                raise DataError(f"{archive}: corrupt member {bad}; removed it, run again to download it anew")
            members = z.namelist()
            for m in members:
                parts = PurePosixPath(m).parts
                if m.startswith("/") or ".." in parts:
                    raise DataError(f"{archive}: unsafe member path {m!r}")
            tmp = Path(tempfile.mkdtemp(dir=out, prefix=f".{name}."))
            try:
                z.extractall(tmp)
                # The archives hold a top folder named like the archive; accept a flat archive too.
                inner = tmp / name if (tmp / name).is_dir() else tmp
                inner.rename(out / name)
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
    except zipfile.BadZipFile:
        archive.unlink()
        raise DataError(f"{archive}: not a zip archive; removed it, run again to download it anew") from None


def download_keras_archives(out_dir: str | Path, base_url: str = KERAS_BASE_URL, *, progress: bool = True,
                            keep_archives: bool = False) -> Path:
    """Download and unpack ``CT-0.zip`` and ``CT-23.zip`` into ``out_dir`` (skipping what is there).

    Returns:
        ``out_dir``, ready to pass as ``--data``.

    Raises:
        DataError: A download failed or an archive is corrupt.
    """
    out = Path(out_dir).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    for name in ARCHIVES:
        if (out / name).is_dir():
            continue
        archive = out / f"{name}.zip"
        if not archive.is_file():
            _fetch(f"{base_url.rstrip('/')}/{name}.zip", archive, progress)
        _extract(archive, name, out)
        if not keep_archives:
            archive.unlink()
    return out


def main(argv: list[str] | None = None) -> int:
    """Download the Keras tutorial's MosMedData archives. Returns the exit code."""
    p = argparse.ArgumentParser(prog="python -m lungct.download", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--out", required=True, help="folder to unpack CT-0/ and CT-23/ into")
    p.add_argument("--base-url", default=KERAS_BASE_URL, help="where CT-0.zip and CT-23.zip are published")
    p.add_argument("--keep-archives", action="store_true", help="keep the .zip files after unpacking")
    args = p.parse_args(argv)
    print("MosMedData is licensed CC BY-NC-ND 3.0 (non-commercial; no redistribution of modified copies).",
          file=sys.stderr)
    try:
        out = download_keras_archives(args.out, args.base_url, progress=sys.stderr.isatty(),
                                      keep_archives=args.keep_archives)
    except DataError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"done: pass --data {out} (check it with: python -m lungct.inspect {out})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
