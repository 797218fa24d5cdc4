"""Fuzzing the check of a safetensors file's header (``search.model.folder._safetensors_header``) and the weights
file as ``load_model`` reads it.

The header is an 8-byte length and that much JSON listing each tensor's dtype, shape and byte range. Headers are
generated with honest and lying lengths, ranges that overlap, leave gaps or run past the file, shapes whose
product is huge (declared, never allocated), unknown dtypes and metadata of any kind. The check must describe the
file exactly or refuse it with one printable line naming it; what it accepts, safetensors must load or refuse
with its own error (the one ``_read_state`` turns into a refusal).
"""

from __future__ import annotations

import json
import math
import shutil
import struct
import tempfile
from pathlib import Path

import pytest
import torch
from hypothesis import example, given
from hypothesis import strategies as st
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors

from lungct.records import PreprocessConfig, get_task
from search.model.folder import (
    MAX_SAFETENSORS_HEADER,
    WEIGHTS,
    ModelDirError,
    ModelInfo,
    _safetensors_header,
    load_model,
    save_model,
)
from space import ArchSpec, LevelSpec, TrainSpec, build
from tests.fuzz.common import (
    EDGE_NUMBERS,
    MEMORY_CAP,
    assert_one_line,
    deep_nesting,
    examples,
    json_scalars,
    json_values,
    mutated_bytes,
    mutated_json,
    to_json_text,
)

SIZES = {"F32": 4, "I64": 8}
SIZE = (16, 24, 20)
SPEC_ = ArchSpec(levels=(LevelSpec(2),), padding="same", head_units=())
PATH = Path("model") / WEIGHTS

shapes = st.one_of(
    st.lists(st.integers(0, 3), max_size=3),  # small enough to hold honestly
    st.lists(st.one_of(st.integers(), st.sampled_from(EDGE_NUMBERS)), max_size=9),
    json_values,
)


def _join(header: object, payload: bytes) -> bytes:
    """A safetensors file of that header (as JSON, unpadded) and payload."""
    text = to_json_text(header).encode()
    return struct.pack("<Q", len(text)) + text + payload


@st.composite
def safetensors_files(draw: st.DrawFn) -> bytes:
    """A safetensors file whose header may lie about anything; its data is at most a few hundred bytes."""
    header, end = {}, 0
    for name in draw(st.lists(st.text(max_size=6), max_size=4, unique=True)):
        dtype = draw(st.one_of(st.sampled_from([*SIZES, "F16", "BF16", "U8", "f32"]), json_scalars))
        shape = draw(shapes)
        holdable = (isinstance(dtype, str) and dtype in SIZES and isinstance(shape, list)
                    and all(type(d) is int and 0 <= d <= 3 for d in shape))
        if holdable and draw(st.booleans()):
            offsets = [end, end + math.prod(shape) * SIZES[dtype]]
            end = offsets[1]
        else:
            offsets = draw(st.one_of(st.lists(st.integers(-4, 300), min_size=2, max_size=2),
                                     st.lists(st.sampled_from(EDGE_NUMBERS), min_size=2, max_size=2), json_values))
        entry = {"dtype": dtype, "shape": shape, "data_offsets": offsets}
        if draw(st.integers(0, 9)) == 0:
            entry = draw(mutated_json(entry, 1))
        header[name] = entry
    if draw(st.booleans()):
        header["__metadata__"] = draw(st.one_of(
            st.dictionaries(st.text(max_size=6), st.text(max_size=6), max_size=3), json_values))
    text = to_json_text(header).encode() + b" " * draw(st.integers(0, 7))  # safetensors pads to 8 bytes
    n = len(text)
    declared = draw(st.one_of(st.just(n), st.just(n), st.sampled_from(
        [0, 1, n - 1, n + 1, MAX_SAFETENSORS_HEADER, MAX_SAFETENSORS_HEADER + 1, 2**63, 2**64 - 1]),
        st.integers(0, 2**64 - 1)))
    payload = max(0, end + draw(st.sampled_from([0, 0, 0, 1, -1, 4])))
    return struct.pack("<Q", max(0, declared)) + text + bytes(payload)


@examples(10)
@given(data=st.one_of(safetensors_files(), st.binary(max_size=40)))
@example(data=_join({"a": {"dtype": [], "shape": [], "data_offsets": [0, 0]}}, b""))  # an unhashable dtype
@example(data=_join({"\x1b[2J": {"dtype": "F16", "shape": [], "data_offsets": [0, 2]}}, bytes(2)))  # a raw escape
def test_safetensors_header_describes_the_file_exactly_or_refuses_in_one_line(data):
    try:
        found = _safetensors_header(PATH, data)
    except ModelDirError as e:
        assert_one_line(str(e), PATH)
        return
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + n])
    header.pop("__metadata__", None)
    assert found.keys() == header.keys()
    assert sum(math.prod(shape) * SIZES[dtype] for shape, dtype in found.values()) == len(data) - 8 - n
    try:  # what the check accepts, safetensors loads, or refuses with the error _read_state catches
        tensors = load_safetensors(data)
    except SafetensorError:
        return
    assert {k: (tuple(t.shape), "F32" if t.dtype == torch.float32 else "I64") for k, t in tensors.items()} == found


@pytest.fixture(scope="module")
def template(tmp_path_factory) -> Path:
    """A tiny binary model's folder, as export writes it."""
    folder = tmp_path_factory.mktemp("fuzz-weights") / "model"
    torch.manual_seed(0)
    save_model(folder, build(SPEC_).eval(), SPEC_, TrainSpec(),
               ModelInfo.for_task(get_task("course"), PreprocessConfig(size=SIZE)))
    return folder


def _split(weights: bytes) -> tuple[dict, bytes]:
    (n,) = struct.unpack("<Q", weights[:8])
    return json.loads(weights[8:8 + n]), weights[8 + n:]


metadata_specs = st.one_of(
    mutated_json(SPEC_.to_dict()).map(to_json_text),
    deep_nesting(100_000),
    json_values.map(to_json_text),
    st.text(max_size=20),
)


@examples(5)
@given(choice=st.data())
def test_load_model_takes_any_weights_file_or_refuses_in_one_line(template, choice):
    weights = (template / WEIGHTS).read_bytes()
    header, payload = _split(weights)
    how = choice.draw(st.sampled_from(["header", "metadata spec", "bytes"]), label="how")
    if how == "header":
        content = _join(choice.draw(mutated_json(header), label="header"), payload)
    elif how == "metadata spec":  # a header that matches the spec, so the stored spec is read too
        content = _join(header | {"__metadata__": {"format": "lungct-nas",
                                                   "spec": choice.draw(metadata_specs, label="spec")}}, payload)
    else:
        (n,) = struct.unpack("<Q", weights[:8])
        content = choice.draw(mutated_bytes(weights, focus=8 + n), label="bytes")
    with tempfile.TemporaryDirectory(prefix="fuzz-") as holder:
        folder = Path(holder) / "model"
        shutil.copytree(template, folder)
        (folder / WEIGHTS).write_bytes(content)
        try:
            model, _, _ = load_model(folder, max_memory_bytes=MEMORY_CAP)
        except ModelDirError as e:
            assert_one_line(str(e), folder)
            return
    assert not model.training
