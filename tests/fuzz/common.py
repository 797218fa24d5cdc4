"""What the fuzz tests share: JSON values, mutations of a valid document or file, per-test example counts, and the
shape of a refusal a user sees.

A mutation starts from what the project writes (a spec, a preprocess.json, a safetensors file) and changes a
few things in it, so that most examples get past the first checks and reach the deeper ones; arbitrary values
and bytes cover the rest. Sizes stay small: a cap is exercised by a large *declared* size, never by large data.
"""

from __future__ import annotations

import copy
import json
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from hypothesis import settings
from hypothesis import strategies as st

from lungct.errors import printable

# The most memory load_model may let a fuzzed model folder's network take for one scan.
MEMORY_CAP = 512 << 20


def assert_one_line(message: str, starts: Path | str) -> None:
    """The shape of every refusal a user sees: one printable line that names the file first."""
    assert message.startswith(str(starts)), message
    assert printable(message) == message, f"not one printable line: {message!r}"


def examples(share: float) -> settings:
    """Settings giving a test ``share`` of the loaded profile's example count (at least 5)."""
    return settings(max_examples=max(5, round(settings.default.max_examples * share)))


# Numbers where checks tend to break: the edges of int16/int32/int64, float extremes, a bool where an int goes,
# integers too long for float() (and, past 4,300 digits, for int(str)).
EDGE_NUMBERS = (0, 1, -1, 2, 7, 255, 256, 32767, -32768, 65535, 2**31 - 1, -(2**31), 2**63 - 1, 2**63, 2**64,
                10**400, -(10**400), 0.0, -0.0, 0.5, 1.0, 2.0, 1e-320, 1e308, -1e308, math.inf, -math.inf, math.nan,
                True, False)

json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.sampled_from(EDGE_NUMBERS),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
    # Control characters, a right-to-left override, a lone surrogate: what must not reach a terminal raw.
    st.sampled_from(["", " ", "\n", "\x1b[31m", "\u202e", "\x00", "CT-0", "CT-2", "course", "severity", "F32", "I64"]),
)
json_values = st.recursive(
    json_scalars,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12,
)


def deep_nesting(max_depth: int = 5000) -> st.SearchStrategy[str]:
    """JSON text nested ``depth`` levels deep (arrays or objects): small files that exhaust a recursive parser."""
    return st.builds(
        lambda depth, kind: ("[" * depth + "]" * depth) if kind == "array" else ('{"a":' * depth + "1" + "}" * depth),
        st.integers(1, max_depth), st.sampled_from(["array", "object"]))


def _paths(value: Any, path: tuple = ()) -> Iterator[tuple]:
    """Every path (keys and indices) to a value inside ``value``, the root excluded."""
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, child in items:
        yield (*path, key)
        yield from _paths(child, (*path, key))


def _strings(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    items = value.values() if isinstance(value, dict) else value if isinstance(value, list) else ()
    return [s for item in items for s in _strings(item)]


@st.composite
def mutated_json(draw: st.DrawFn, base: dict, max_changes: int = 3) -> Any:
    """A deep copy of ``base`` with 1..``max_changes`` changes: a value replaced (by an arbitrary value, an edge
    number, a float where an int was, or another string of the document), a key or item deleted, or one added."""
    data = copy.deepcopy(base)
    pool = sorted(set(_strings(base))) or [""]
    for _ in range(draw(st.integers(1, max_changes))):
        paths = list(_paths(data))
        if not paths:
            return draw(json_values)
        path = draw(st.sampled_from(paths))
        parent = data
        for key in path[:-1]:
            parent = parent[key]
        key, old = path[-1], parent[path[-1]]
        op = draw(st.sampled_from(["replace", "edge", "nudge", "swap", "delete", "add"]))
        if op == "replace":
            parent[key] = draw(json_values)
        elif op == "edge":
            parent[key] = draw(st.sampled_from(EDGE_NUMBERS))
        elif op == "nudge" and isinstance(old, (int, float)) and not isinstance(old, bool):
            as_float = float(old) if abs(old) < 1e308 or isinstance(old, float) else math.inf  # 10**400 has no float
            parent[key] = draw(st.sampled_from([as_float, old + 1, old - 1, -old, old * 1000, str(old)]))
        elif op == "swap":
            parent[key] = draw(st.sampled_from(pool))
        elif op == "delete":
            del parent[key]
        elif op == "add" and isinstance(parent, dict):
            parent[draw(st.one_of(st.text(max_size=8), st.sampled_from(pool)))] = draw(json_values)
        elif op == "add":
            parent.insert(key, draw(json_values))
        else:  # a nudge of a value that is no number: make it a list of itself
            parent[key] = [old]
    return data


def to_json_text(value: Any) -> str:
    """``value`` as JSON text as Python writes it (NaN and Infinity included, as a careless writer would)."""
    return json.dumps(value)


@st.composite
def mutated_bytes(draw: st.DrawFn, base: bytes, max_changes: int = 4, focus: int | None = None) -> bytes:
    """``base`` with a few byte-level changes: a bit flipped, a byte set, bytes inserted or deleted, or cut short.

    Args:
        focus: Changes land in the first ``focus`` bytes (a header), else anywhere.
    """
    data = bytearray(base)
    for _ in range(draw(st.integers(1, max_changes))):
        end = min(len(data), focus or len(data))
        if end == 0:
            data += draw(st.binary(min_size=1, max_size=8))
            continue
        at = draw(st.integers(0, end - 1))
        op = draw(st.sampled_from(["flip", "set", "insert", "delete", "truncate"]))
        if op == "flip":
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif op == "set":
            data[at] = draw(st.sampled_from([0, 1, 0x7F, 0x80, 0xFF, ord("["), ord('"'), ord("9")]))
        elif op == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=8))
        elif op == "delete":
            del data[at:at + draw(st.integers(1, 8))]
        else:
            del data[at:]
    return bytes(data)
