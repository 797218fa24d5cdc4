"""``python -m lungct.download --out DIR``: fetch the Keras tutorial's MosMedData archives.

The Keras example "3D image classification from CT scans" uses two archives of MosMedData scans:
``CT-0.zip`` (normal) and ``CT-23.zip`` (CT-2 and CT-3 pooled), 100 scans each, published as release
files of the tutorial's repository. They unpack to ``DIR/CT-0/`` and ``DIR/CT-23/``, a layout that
``--data DIR`` accepts. The full MosMedData release (1,110 studies, CT-0..CT-4, with
``dataset_registry.csv``) has no stable direct link: download it from https://mosmed.ai by hand and
pass its folder as ``--data``.

MosMedData is licensed CC BY-NC-ND 3.0: non-commercial use, no redistribution of modified copies.
Keep it (and anything derived from it, caches included) out of version control.

Each archive is downloaded to a ``.part`` file, its SHA-256 checked where one is known (and printed
either way), checked as a zip, and unpacked into a temporary folder that is renamed into place, so
an interrupted download never leaves a half-filled folder. A ``.part`` from a server that accepts
byte ranges is kept when a download stops and resumed by the next run; any other is removed. An
archive that fails a check is removed, so the next run downloads it anew instead of reusing it.
"""

from __future__ import annotations

import argparse
import hashlib
import http.client
import shutil
import sys
import tempfile
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from pathlib import Path, PurePosixPath

from tqdm.auto import tqdm

from lungct.errors import DataError, printable
from lungct.signals import run_terminable

KERAS_BASE_URL = "https://github.com/hasibzunair/3D-image-classification-tutorial/releases/download/v0.2"
ARCHIVES = ("CT-0", "CT-23")
# SHA-256 of each archive as published, where known. None is recorded here yet: the digest of what
# was downloaded is printed instead, so a later download can be compared with it by hand.
ARCHIVE_SHA256: dict[str, str] = {}
# Each archive unpacks to about 1 GB of .nii.gz files; a member list claiming more than this in all
# is a damaged or hostile archive (a zip bomb), refused before anything is written.
MAX_EXTRACTED_BYTES = 8 << 30
URL_SCHEMES = ("http", "https", "file")
CHUNK = 1 << 20


def check_base_url(url: str) -> str:
    """``url`` if it is an http(s) URL with a host or a file URL; otherwise a one-line :class:`DataError`."""
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError as e:
        raise DataError(f"--base-url {url!r}: not a URL ({e})") from None
    if parts.scheme not in URL_SCHEMES or (parts.scheme != "file" and not parts.hostname):
        raise DataError(f"--base-url {url!r}: expected an http://, https:// or file:// URL, "
                        f"e.g. {KERAS_BASE_URL}")
    return url


def _open(url: str, offset: int):
    """The server's response for ``url``, asking for the bytes from ``offset`` on when it is not 0."""
    headers = {"Range": f"bytes={offset}-"} if offset else {}
    return urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=60)


def _resumes_at(response, offset: int) -> bool:
    """Whether the server answered a range request with the bytes from ``offset`` on (206 Partial Content)."""
    content_range = response.headers.get("Content-Range") or ""
    return offset > 0 and response.status == 206 and content_range.startswith(f"bytes {offset}-")


def _fetch(url: str, dest: Path, progress: bool) -> None:
    """Download ``url`` to ``dest`` through ``dest.part``, resuming a ``.part`` left by an earlier run."""
    part = dest.with_name(dest.name + ".part")
    have = part.stat().st_size if part.is_file() else 0
    resumable = False
    try:
        try:
            response = _open(url, have)
        except urllib.error.HTTPError as e:
            if e.code != 416 or not have:  # 416: the range is past the end; the .part is not of this file
                raise
            part.unlink()
            have = 0
            response = _open(url, have)
        with response:
            resumed = _resumes_at(response, have)
            if response.status == 206 and not resumed:
                raise ConnectionError(f"the server sent bytes {response.headers.get('Content-Range')}, "
                                      f"not those from {have} on")
            resumable = resumed or (response.headers.get("Accept-Ranges") or "").lower() == "bytes"
            have = have if resumed else 0
            length = int(response.headers.get("Content-Length") or 0)
            total = have + length if length else None
            with part.open("ab" if resumed else "wb") as out, tqdm(
                    total=total, initial=have, unit="B", unit_scale=True, desc=dest.name, disable=not progress) as bar:
                while chunk := response.read(CHUNK):
                    out.write(chunk)
                    bar.update(len(chunk))
            got = part.stat().st_size
            if total is not None and got < total:
                raise ConnectionError(f"the connection closed after {got:,} of {total:,} bytes")
    except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError) as e:
        note = _keep_or_remove(part, resumable)
        raise DataError(f"download of {url} failed: {getattr(e, 'reason', None) or e}; {note}") from None
    except KeyboardInterrupt:
        _keep_or_remove(part, resumable)
        raise
    part.replace(dest)


def _keep_or_remove(part: Path, resumable: bool) -> str:
    """Keep a partial download the server can resume; remove any other. Says which, for the message."""
    if resumable and part.is_file() and part.stat().st_size > 0:
        return f"kept the partial download {part.name}; run again to resume it"
    part.unlink(missing_ok=True)
    return "nothing partial was kept"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _verify(archive: Path) -> None:
    """Compare the archive's SHA-256 with :data:`ARCHIVE_SHA256`; print it; remove an archive that differs."""
    actual = _sha256(archive)
    expected = ARCHIVE_SHA256.get(archive.name)
    if expected and actual != expected.lower():
        archive.unlink()
        raise DataError(f"{archive}: SHA-256 {actual} is not the published {expected}; removed it, "
                        "run again to download it anew")
    how = "matches the published checksum" if expected else "no published checksum to compare with"
    print(f"{archive.name}: sha256 {actual} ({how})")


def _check_members(archive: Path, z: zipfile.ZipFile) -> None:
    """Refuse member paths that leave the folder, and more than :data:`MAX_EXTRACTED_BYTES` in all."""
    for m in z.namelist():
        if m.startswith(("/", "\\")) or ".." in PurePosixPath(m.replace("\\", "/")).parts:
            raise DataError(f"{archive}: unsafe member path {m!r}; removed it")
    size = sum(info.file_size for info in z.infolist())
    if size > MAX_EXTRACTED_BYTES:
        raise DataError(f"{archive}: would unpack to {size:,} bytes, more than the {MAX_EXTRACTED_BYTES:,} "
                        "allowed; removed it")
    bad = z.testzip()
    if bad is not None:
        raise DataError(f"{archive}: corrupt member {bad!r}; removed it, run again to download it anew")


def _extract(archive: Path, name: str, out: Path) -> None:
    """Unpack ``archive`` into ``out/name`` through a temporary folder; a rejected archive is removed."""
    try:
        with zipfile.ZipFile(archive) as z:
            try:
                _check_members(archive, z)
            except DataError:
                archive.unlink()
                raise
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
    except OSError as e:  # a full disk, a folder we may not write: the archive itself is fine, so kept
        raise DataError(f"{archive}: cannot unpack into {out} ({e.strerror or e})") from None


def download_keras_archives(out_dir: str | Path, base_url: str = KERAS_BASE_URL, *, progress: bool = True,
                            keep_archives: bool = False) -> Path:
    """Download and unpack ``CT-0.zip`` and ``CT-23.zip`` into ``out_dir`` (skipping what is there).

    Returns:
        ``out_dir``, ready to pass as ``--data``.

    Raises:
        DataError: The URL is malformed, a download failed, or an archive is corrupt, unsafe, too
            large or not the published one.
    """
    base_url = check_base_url(base_url)
    out = Path(out_dir).expanduser()
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DataError(f"{out}: cannot create the folder ({e.strerror or e})") from None
    for name in ARCHIVES:
        if (out / name).is_dir():
            continue
        archive = out / f"{name}.zip"
        if not archive.is_file():
            _fetch(f"{base_url.rstrip('/')}/{name}.zip", archive, progress)
        _verify(archive)
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
    return run_terminable(lambda: _download(args))


def _download(args: argparse.Namespace) -> int:
    """Download and unpack; the exit status (SIGTERM arrives here as Ctrl-C does: see lungct.signals)."""
    print("MosMedData is licensed CC BY-NC-ND 3.0 (non-commercial; no redistribution of modified copies).")
    try:
        out = download_keras_archives(args.out, args.base_url, progress=sys.stderr.isatty(),
                                      keep_archives=args.keep_archives)
    except DataError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        kept = sorted(Path(args.out).expanduser().glob("*.part"))
        note = (f"kept the partial download {printable(str(kept[0]))}; run the same command again to resume it"
                if kept else "nothing partial was kept")
        print(f"interrupted: {note}", file=sys.stderr)
        return 130
    where = printable(str(out))
    print(f"done: pass --data {where} (check it with: python -m lungct.inspect {where})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
