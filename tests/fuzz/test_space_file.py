"""Fuzzing ``search.run --space FILE.toml`` (``search.selection.settings.load_space_file``).

A space file comes from a user, or from whoever the user copied it from. Examples are the default bounds with a few
values changed (written as TOML: any type, edge numbers, NaN and infinity, dates), arbitrary TOML, deep nesting,
and bytes that are not UTF-8 or not TOML at all. The loader must give bounds that ``SpaceBounds`` takes back
unchanged, or a ``UsageError``: one printable line that starts with ``--space``.
"""

from __future__ import annotations

import datetime
import json
import math
import tempfile
from pathlib import Path
from typing import Any

from hypothesis import example, given
from hypothesis import strategies as st

from lungct.errors import UsageError, printable
from search.selection.settings import load_space_file
from space import SpaceBounds
from tests.fuzz.common import examples, json_values, mutated_bytes, mutated_json

DEFAULT = SpaceBounds().to_dict()
TOML_DATE = datetime.date(1979, 5, 27)


def toml_value(value: Any) -> str:
    """``value`` as a TOML value; None (which TOML lacks) becomes a date, another type no field takes."""
    if value is None:
        return TOML_DATE.isoformat()
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf") if math.isinf(value) else repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # JSON's string escapes are TOML's (a lone surrogate is a TOML error, as it should be)
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    return "{" + ", ".join(f"{json.dumps(k)} = {toml_value(v)}" for k, v in value.items()) + "}"


def toml_document(table: Any) -> str:
    """A TOML document of top-level ``key = value`` lines (a non-table becomes the value of one key)."""
    table = table if isinstance(table, dict) else {"n_levels": table}
    return "".join(f"{json.dumps(k)} = {toml_value(v)}\n" for k, v in table.items())


space_files = st.one_of(
    mutated_json(DEFAULT).map(toml_document).map(str.encode),
    json_values.map(toml_document).map(lambda t: t.encode("utf-8", "surrogatepass")),
    mutated_bytes(toml_document(DEFAULT).encode()),
    st.integers(1, 5000).map(lambda depth: f"n_levels = {'[' * depth}{']' * depth}\n".encode()),
    st.integers(1, 5000).map(lambda depth: ("n_levels = " + "{a = " * depth + "1" + "}" * depth + "\n").encode()),
    st.text(max_size=40).map(lambda t: t.encode("utf-16")),
    st.binary(max_size=60),
)


@examples(6)
@given(content=space_files)
@example(content=b"lr = [0.001, 1" + b"0" * 400 + b"]\n")  # found by hand beside the long profile: no float holds it
def test_load_space_file_gives_bounds_that_round_trip_or_a_one_line_usage_error(content):
    with tempfile.TemporaryDirectory(prefix="fuzz-") as holder:
        path = Path(holder) / "space.toml"
        path.write_bytes(content)
        try:
            bounds = load_space_file(path)
        except UsageError as e:
            assert str(e).startswith("--space"), str(e)
            assert printable(str(e)) == str(e)
            return
    assert SpaceBounds.from_dict(bounds).to_dict() == bounds
    assert bounds.keys() == DEFAULT.keys()
