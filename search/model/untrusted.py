"""Reading a model folder's files as untrusted input, and the error that refuses one (:class:`ModelDirError`).

Each reader is bounded: a file must be a regular file inside its folder under a size cap (:func:`read_file`);
JSON may not nest deeper than :data:`MAX_JSON_DEPTH`, repeat a key, or misspell a key it knows
(:func:`read_json`, :func:`check_spelling`); a safetensors header must describe its file exactly before a
tensor is read (:func:`_safetensors_header`). A refusal's message starts with the file's path and the field.
"""

from __future__ import annotations

import difflib
import json
import math
import os
import stat
import struct
from collections.abc import Collection
from pathlib import Path

import torch

from lungct.errors import OneLineError, printable
from space import ArchSpec

# The size cap of a model folder's JSON files as read: export writes a few kB of each, so this leaves room and
# bounds what parsing costs (metrics.json, which holds tens of kB, has its own: search.model.folder).
MAX_JSON_BYTES = 1 << 20
MAX_JSON_DEPTH = 32  # export's files nest 5 deep
# A safetensors header lists each tensor in about 100 bytes; 16 MiB is 160,000 tensors, 50 ensemble members of
# a net with 3,000 (safetensors itself allows 100 MB).
MAX_SAFETENSORS_HEADER = 16 << 20
SAFETENSORS_DTYPES = {torch.float32: ("F32", 4), torch.int64: ("I64", 8)}  # the dtypes a state dict here holds
# How close (difflib's ratio, after lower-casing) an unknown key must be to a known one to be taken for a misspelling
# of it and refused: one or two letters off in a word of six or more ("treshold", "threshhold"), or another case
# ("Threshold"); difflib's default of 0.6 would also take a new key such as "version" for "format_version".
NEAR_MISS_CUTOFF = 0.8


class ModelDirError(OneLineError, ValueError):
    """A model folder is missing, incomplete, or does not match its own spec; the message says which file.

    Its text is one printable line (a tensor name or key from the folder cannot put control characters on the
    user's terminal)."""


def misspelt(key: str, known: Collection[str]) -> str | None:
    """The known key that ``key`` nearly spells (in another case, or :data:`NEAR_MISS_CUTOFF` close), else None."""
    if key in known:
        return None
    lowered = {k.lower(): k for k in known}
    close = difflib.get_close_matches(key.lower(), lowered, n=1, cutoff=NEAR_MISS_CUTOFF)
    return lowered[close[0]] if close else None


def check_spelling(data: dict, known: Collection[str], where: str = "") -> None:
    """Refuse a key of ``data`` that misspells one of ``known``; any other unknown key is left to be ignored.

    An unknown key is ignored, so that a file a later version writes still reads; but one that nearly spells a
    known key (``"Threshold"``, ``"treshold"``) was meant as that key, and ignoring it would silently fall back to
    a default (a threshold of 0.5). ``where`` prefixes the key in the message (``"preprocess."``).

    Raises:
        ValueError: A key misspells a known one; the message names both.
    """
    for key in data:
        meant = misspelt(key, known)
        if meant is not None:
            raise ValueError(f"{where}{printable(key[:60])}: unknown key; did you mean {meant!r}? (an unknown key is "
                             "ignored, one this close to a known key is refused rather than silently dropped)")


_FILE_KINDS = ((stat.S_ISDIR, "a folder"), (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
               (stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"))


def read_file(path: Path, max_bytes: int) -> bytes:
    """The bytes of a file in a model folder, read as untrusted input.

    The file must resolve to a regular file inside its folder (a symbolic link may point within the folder,
    never out of it), hold at most ``max_bytes``, and is opened without following a link and without
    blocking, then checked again on the open descriptor, so a FIFO, a device such as /dev/zero or a file
    swapped in meanwhile is refused instead of read.

    Raises:
        ModelDirError: The file is missing, not a regular file inside the folder, too big, or unreadable;
            the message starts with its path.
    """
    folder = os.path.realpath(path.parent)
    target = os.path.realpath(path)
    if not os.path.lexists(path):
        raise ModelDirError(f"{path}: missing")
    if os.path.dirname(target) != folder and not target.startswith(folder + os.sep):
        raise ModelDirError(f"{path}: a symbolic link to {target}, outside the model folder; refused")
    try:
        fd = os.open(target, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0))
    except OSError as e:
        raise ModelDirError(f"{path}: unreadable ({e.strerror or e})") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            kind = next((name for test, name in _FILE_KINDS if test(st.st_mode)), "not a regular file")
            raise ModelDirError(f"{path}: {kind}, not a regular file; refused")
        if st.st_size > max_bytes:
            raise ModelDirError(f"{path}: {st.st_size:,} bytes, more than the {max_bytes:,} such a file may hold")
        with os.fdopen(fd, "rb", closefd=False) as fh:
            data = fh.read(st.st_size + 1)  # read(n) allocates n bytes first; a byte more shows a file that grew
    except OSError as e:
        raise ModelDirError(f"{path}: unreadable ({e.strerror or e})") from None
    finally:
        os.close(fd)
    if len(data) != st.st_size:
        raise ModelDirError(f"{path}: changed size while it was read ({st.st_size:,} bytes, then {len(data):,}); "
                            "refused")
    return data


class _RepeatedKey(ValueError):
    """A JSON object holds a key twice."""


def _unique_keys(pairs: list[tuple[str, object]]) -> dict:
    """A JSON object, refusing a repeated key (readers disagree on which copy wins)."""
    data = dict(pairs)
    if len(data) != len(pairs):
        seen: set[str] = set()
        for k, _ in pairs:
            if k in seen:
                raise _RepeatedKey(f"{k}: the key appears more than once")
            seen.add(k)
    return data


def _depth(value: object) -> int:
    """How deep containers nest in parsed JSON (1 for a flat object), without recursion."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, (dict, list)):
            deepest = max(deepest, level)
            if level <= MAX_JSON_DEPTH:
                stack.extend((v, level + 1) for v in (item.values() if isinstance(item, dict) else item))
    return deepest


def read_json(path: Path, max_bytes: int = MAX_JSON_BYTES, known: Collection[str] | None = None) -> dict:
    """A JSON object from a model folder, read as untrusted input (:func:`read_file`, UTF-8, bounded depth).

    Args:
        path: The file.
        max_bytes: The most it may hold.
        known: Its keys: a top-level key that misspells one of them is refused (:func:`check_spelling`).

    Raises:
        ModelDirError: The file is unsafe or unreadable, not UTF-8, not JSON, nested deeper than
            :data:`MAX_JSON_DEPTH`, repeats a key, misspells a ``known`` key, or is not an object; the message
            starts with its path.
    """
    raw = read_file(path, max_bytes)
    try:
        data = json.loads(raw.decode("utf-8"), object_pairs_hook=_unique_keys)
    except UnicodeDecodeError as e:
        raise ModelDirError(f"{path}: not UTF-8 text (byte {raw[e.start]:#04x} at offset {e.start})") from None
    except RecursionError:
        raise ModelDirError(f"{path}: nested deeper than {MAX_JSON_DEPTH} levels; refused") from None
    except _RepeatedKey as e:
        raise ModelDirError(f"{path}: {e}") from None
    except ValueError as e:  # JSONDecodeError, a repeated key, an integer of more than 4,300 digits
        raise ModelDirError(f"{path}: unreadable ({type(e).__name__}: {str(e)[:200]})") from None
    if not isinstance(data, dict):
        raise ModelDirError(f"{path}: expected a JSON object, got {type(data).__name__}")
    if _depth(data) > MAX_JSON_DEPTH:
        raise ModelDirError(f"{path}: nested deeper than {MAX_JSON_DEPTH} levels; refused")
    if known is not None:
        _spelled(path, data, known)
    return data


def _spelled(path: Path, data: dict, known: Collection[str], where: str = "") -> None:
    """:func:`check_spelling`, its refusal a :class:`ModelDirError` naming ``path``."""
    try:
        check_spelling(data, known, where)
    except ValueError as e:
        raise ModelDirError(f"{path}: {e}") from None


def _reason(error: Exception) -> str:
    """A field error as one line: a ValueError already names its field; a missing key is named here."""
    if isinstance(error, KeyError):
        return f"missing field {error}"
    return str(error) if isinstance(error, ValueError) else f"invalid ({type(error).__name__}: {error})"


def _mismatch(expected: dict[str, tuple], stored: dict[str, tuple]) -> str | None:
    """How a state dict's names, shapes and dtypes differ from the spec's, in a few words, or None.

    Both map a tensor's name to (shape, safetensors dtype).
    """
    missing, unexpected = sorted(expected.keys() - stored.keys()), sorted(stored.keys() - expected.keys())
    if missing or unexpected:
        parts = [f"{what} {', '.join(keys[:3])}{' ...' if len(keys) > 3 else ''}"
                 for what, keys in (("missing", missing), ("unexpected", unexpected)) if keys]
        return "; ".join(parts)
    for key, (shape, dtype) in expected.items():
        if stored[key][0] != shape:
            return f"{key} has shape {list(stored[key][0])}, the spec's is {list(shape)}"
        if stored[key][1] != dtype:
            return f"{key} has dtype {stored[key][1]}, the spec's is {dtype}"
    return None


def _safetensors_header(path: Path, data: bytes) -> dict[str, tuple[tuple[int, ...], str]]:
    """Each tensor's (shape, dtype) from a safetensors file's header, checking that the header describes the file.

    The header is an 8-byte little-endian length, then that much JSON: per tensor its dtype, shape and
    byte range. Every range must hold exactly its shape's bytes, and the ranges must tile the data that
    follows the header, so no tensor reads past the file or overlaps another.

    Raises:
        ModelDirError: The header is missing, claims more than the file holds, is not JSON, or its ranges do
            not tile the data.
    """
    if len(data) < 8:
        raise ModelDirError(f"{path}: header: {len(data)} bytes, too short for a safetensors file")
    (n,) = struct.unpack("<Q", data[:8])
    if n > MAX_SAFETENSORS_HEADER or 8 + n > len(data):
        raise ModelDirError(f"{path}: header: claims {n:,} bytes, the file holds {len(data) - 8:,} after the length "
                            f"(at most {MAX_SAFETENSORS_HEADER:,} allowed): truncated, or not a safetensors file")
    try:
        header = json.loads(data[8:8 + n].decode("utf-8"), object_pairs_hook=_unique_keys)
    except (UnicodeDecodeError, RecursionError, ValueError) as e:
        raise ModelDirError(f"{path}: header: not JSON ({type(e).__name__}: {str(e)[:200]})") from None
    if not isinstance(header, dict):
        raise ModelDirError(f"{path}: header: expected a JSON object, got {type(header).__name__}")
    header.pop("__metadata__", None)
    sizes = {code: size for code, size in SAFETENSORS_DTYPES.values()}
    found, ranges = {}, []
    for name, entry in header.items():
        if not isinstance(entry, dict) or set(entry) != {"dtype", "shape", "data_offsets"}:
            raise ModelDirError(f"{path}: {name}: expected dtype, shape and data_offsets, got {str(entry)[:100]}")
        dtype, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
        if not isinstance(shape, list) or len(shape) > 8 or any(
                isinstance(d, bool) or not isinstance(d, int) or d < 0 for d in shape):
            raise ModelDirError(f"{path}: {name}: shape: expected non-negative integers, got {str(shape)[:100]}")
        if not isinstance(offsets, list) or len(offsets) != 2 or any(
                isinstance(o, bool) or not isinstance(o, int) for o in offsets):
            raise ModelDirError(f"{path}: {name}: data_offsets: expected two integers, got {str(offsets)[:100]}")
        if not isinstance(dtype, str) or dtype not in sizes:
            raise ModelDirError(f"{path}: {name}: dtype: {str(dtype)[:20]!r}; the spec's tensors are "
                                f"{' or '.join(sizes)}")
        if offsets[1] - offsets[0] != math.prod(shape) * sizes[dtype]:
            raise ModelDirError(f"{path}: {name}: data_offsets: {offsets} do not hold a {dtype} tensor of shape "
                                f"{shape}")
        found[name] = (tuple(shape), dtype)
        ranges.append(offsets)
    end = 0
    for begin, stop in sorted(ranges):
        if begin != end:
            raise ModelDirError(f"{path}: data_offsets: tensors overlap or leave a gap at byte {min(begin, end):,}")
        end = stop
    if 8 + n + end != len(data):
        raise ModelDirError(f"{path}: data_offsets: the tensors end at byte {8 + n + end:,}, the file at "
                            f"{len(data):,}: truncated or padded")
    return found


def _metadata_spec(path: Path, data: bytes) -> ArchSpec | None:
    """The spec that save_model stores in the weights' metadata, or None where the file has none."""
    (n,) = struct.unpack("<Q", data[:8])
    meta = json.loads(data[8:8 + n].decode("utf-8")).get("__metadata__")
    if not isinstance(meta, dict) or "spec" not in meta:
        return None
    try:
        return ArchSpec.from_json(meta["spec"])
    except (TypeError, ValueError, KeyError, RecursionError) as e:
        raise ModelDirError(f"{path}: __metadata__.spec: not a spec ({_reason(e)})") from None
