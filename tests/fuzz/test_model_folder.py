"""Fuzzing a model folder's JSON files as their readers take them: a value, or a one-line refusal.

The files are spec.json (``ArchSpec.from_dict``), train_spec.json (``TrainSpec.from_dict``), preprocess.json
(``ModelInfo.from_dict``), ensemble.json, through ``search.model.folder.read_json`` and ``load_model``; and
metrics.json through ``read_optional`` (never raises) and ``search.shipping.bundle.eval_metrics_of`` (figures, or
nothing). Each example starts from the files export writes for a tiny model and mutates one of them, or replaces
it with arbitrary JSON or bytes. A refusal by ``load_model`` must be a ``ModelDirError`` whose message is one
printable line starting with the file's path (``search.cli.exit_code`` prints it as it is).
"""

from __future__ import annotations

import json
import math
import shutil
import tempfile
from pathlib import Path

import pytest
import torch
from hypothesis import example, given
from hypothesis import strategies as st

from lungct.records import PreprocessConfig, get_task
from search.model.folder import (
    ENSEMBLE,
    MAX_JSON_DEPTH,
    METRICS,
    PREPROCESS,
    SPEC,
    TRAIN_SPEC,
    Ensemble,
    ModelDirError,
    ModelInfo,
    OptionalFiles,
    load_model,
    read_json,
    read_optional,
    save_model,
)
from search.shipping.bundle import eval_metrics_of
from space import ArchSpec, LevelSpec, SpecNet, TrainSpec, build
from tests.fuzz.common import (
    MEMORY_CAP,
    assert_one_line,
    deep_nesting,
    examples,
    json_values,
    mutated_bytes,
    mutated_json,
    to_json_text,
)

SIZE = (16, 24, 20)
SPEC_ = ArchSpec(levels=(LevelSpec(2), LevelSpec(4, n_convs=2, block="residual")), padding="same", head_units=(4,))
INFO = ModelInfo.for_task(get_task("course"), PreprocessConfig(size=SIZE), threshold=0.4)
ORDINAL_INFO = ModelInfo.for_task(get_task("severity"), PreprocessConfig(size=SIZE))
METRICS_ = {"data": {"phantoms": True}, "study": {"name": "lungct"},
            "test": {"n": 12, "model": {"auc": {"estimate": 0.9, "low": 0.7, "high": 1.0}}}}
HUGE = 10**400  # an integer JSON holds and float() cannot: found by the long profile, checked on every run
ENSEMBLE_ = {"members": 1, "combine": "mean of sigmoid probabilities; the model outputs its logit"}

json_documents = st.one_of(json_values, json_values.map(lambda v: {"levels": v}))
raw_files = st.one_of(
    st.binary(max_size=64),
    json_values.map(lambda v: to_json_text(v).encode()),
    deep_nesting().map(str.encode),
    st.text(max_size=64).map(lambda t: t.encode("utf-8", "surrogatepass")),
)


@pytest.fixture(scope="module")
def template(tmp_path_factory) -> Path:
    """A folder as export writes it for a tiny binary model, with metrics.json."""
    folder = tmp_path_factory.mktemp("fuzz-model") / "model"
    torch.manual_seed(0)
    save_model(folder, build(SPEC_).eval(), SPEC_, TrainSpec(), INFO)
    (folder / METRICS).write_text(json.dumps(METRICS_))
    return folder


def with_file(template: Path, name: str, content: bytes) -> tuple[tempfile.TemporaryDirectory, Path]:
    """A copy of the template folder with ``name`` holding ``content``."""
    holder = tempfile.TemporaryDirectory(prefix="fuzz-")
    folder = Path(holder.name) / "model"
    shutil.copytree(template, folder)
    (folder / name).write_bytes(content)
    return holder, folder


def load_or_refuse(folder: Path) -> None:
    """``load_model`` gives a model, or refuses with a one-line ``ModelDirError`` naming a file of the folder."""
    try:
        model, preprocess, info = load_model(folder, max_memory_bytes=MEMORY_CAP)
    except ModelDirError as e:
        assert_one_line(str(e), folder)
        return
    assert isinstance(model, (SpecNet, Ensemble)) and not model.training
    assert preprocess == info.preprocess and math.prod(preprocess.size) > 0


# --- read_json: the bytes of any of the JSON files ----------------------------------------------------------------

@examples(3)
@given(content=st.one_of(raw_files, mutated_bytes(SPEC_.to_json().encode())))
def test_read_json_gives_a_shallow_object_or_refuses_in_one_line(template, content):
    holder, folder = with_file(template, SPEC, content)
    with holder:
        try:
            data = read_json(folder / SPEC)
        except ModelDirError as e:
            assert_one_line(str(e), folder / SPEC)
            return
    assert isinstance(data, dict)
    assert json.loads(content.decode("utf-8")) == data or _has_nan(data)


def _has_nan(value) -> bool:
    if isinstance(value, float):
        return math.isnan(value)
    items = value.values() if isinstance(value, dict) else value if isinstance(value, list) else ()
    return any(_has_nan(v) for v in items)


@examples(1)
@given(depth=st.integers(MAX_JSON_DEPTH - 2, MAX_JSON_DEPTH + 2))
def test_read_json_refuses_nesting_past_its_limit(template, depth):
    holder, folder = with_file(template, SPEC, ('{"a":' * depth + "1" + "}" * depth).encode())
    with holder:
        if depth <= MAX_JSON_DEPTH:
            assert isinstance(read_json(folder / SPEC), dict)
        else:
            with pytest.raises(ModelDirError, match="nested deeper"):
                read_json(folder / SPEC)


# --- spec.json and train_spec.json: the specs' own parsers --------------------------------------------------------

@examples(5)
@given(data=st.one_of(mutated_json(SPEC_.to_dict()), json_documents))
@example(data={"levels": [{}]})
@example(data={"levels": [{"filters": 2}], "dropout": HUGE})
def test_arch_spec_from_dict_round_trips_or_raises_a_value_error_naming_the_field(data):
    try:
        spec = ArchSpec.from_dict(data)
    except ValueError as e:
        assert str(e).startswith(("ArchSpec", "LevelSpec")), str(e)
        return
    assert ArchSpec.from_json(spec.to_json()) == spec


@examples(5)
@given(data=st.one_of(mutated_json(TrainSpec().to_dict()), json_values))
@example(data={"lr": HUGE})
def test_train_spec_from_dict_round_trips_or_raises_a_value_error_naming_the_field(data):
    try:
        spec = TrainSpec.from_dict(data)
    except ValueError as e:
        assert str(e).startswith("TrainSpec"), str(e)
        return
    assert TrainSpec.from_json(spec.to_json()) == spec


@examples(2)
@given(content=st.one_of(mutated_json(TrainSpec().to_dict()).map(to_json_text).map(str.encode), raw_files))
def test_train_spec_json_reads_as_a_spec_or_a_refusal(template, content):
    # Nothing in the package reads train_spec.json back (provenance only); a consumer would read it like this.
    holder, folder = with_file(template, TRAIN_SPEC, content)
    with holder:
        try:
            TrainSpec.from_dict(read_json(folder / TRAIN_SPEC))
        except ModelDirError as e:
            assert_one_line(str(e), folder / TRAIN_SPEC)
        except ValueError as e:
            assert str(e).startswith("TrainSpec"), str(e)


@examples(3)
@given(data=st.one_of(mutated_json(SPEC_.to_dict()), json_documents))
@example(data=SPEC_.to_dict() | {"dropout": HUGE})
def test_load_model_takes_any_spec_json_or_refuses_in_one_line(template, data):
    holder, folder = with_file(template, SPEC, to_json_text(data).encode())
    with holder:
        load_or_refuse(folder)


# --- preprocess.json ------------------------------------------------------------------------------------------------

preprocess_documents = st.one_of(mutated_json(INFO.to_dict()), mutated_json(ORDINAL_INFO.to_dict()), json_values)


@examples(5)
@given(data=preprocess_documents)
@example(data=INFO.to_dict() | {"preprocess": {"size": list(SIZE), "hu_min": -HUGE, "hu_max": 400.0}})
@example(data=INFO.to_dict() | {"threshold": HUGE})
def test_model_info_from_dict_round_trips_or_raises_what_it_documents(data):
    if not isinstance(data, dict):  # read_json gives only objects
        return
    try:
        info = ModelInfo.from_dict(data)
    except (KeyError, TypeError, ValueError):
        return
    assert ModelInfo.from_dict(json.loads(json.dumps(info.to_dict()))) == info
    assert 0.0 < info.threshold < 1.0 and info.preprocess.hu_min < info.preprocess.hu_max


@examples(3)
@given(data=preprocess_documents)
@example(data=INFO.to_dict() | {"threshold": HUGE})
def test_load_model_takes_any_preprocess_json_or_refuses_in_one_line(template, data):
    holder, folder = with_file(template, PREPROCESS, to_json_text(data).encode())
    with holder:
        load_or_refuse(folder)


# --- ensemble.json ----------------------------------------------------------------------------------------------------

@examples(2)
@given(data=st.one_of(mutated_json(ENSEMBLE_), json_values))
def test_load_model_takes_any_ensemble_json_or_refuses_in_one_line(template, data):
    holder, folder = with_file(template, ENSEMBLE, to_json_text(data).encode())
    with holder:
        load_or_refuse(folder)


# --- metrics.json: optional, so its readers never fail for its sake ---------------------------------------------------

metrics_files = st.one_of(mutated_json(METRICS_).map(to_json_text).map(str.encode), raw_files,
                          mutated_bytes(json.dumps(METRICS_).encode()))


@examples(3)
@given(content=metrics_files)
def test_read_optional_never_raises_and_says_why_a_fact_is_unknown(template, content):
    holder, folder = with_file(template, METRICS, content)
    with holder:
        optional = read_optional(folder)
    assert isinstance(optional, OptionalFiles)
    assert optional.trained_on_phantoms in (True, False, None)
    if optional.trained_on_phantoms is None:
        assert any(METRICS in note for note in optional.notes), optional.notes


@examples(3)
@given(content=metrics_files)
@example(content=to_json_text(METRICS_ | {"test": {**METRICS_["test"], "n": math.inf}}).encode())  # "n": Infinity
def test_eval_metrics_of_gives_finite_figures_or_nothing(template, content):
    holder, folder = with_file(template, METRICS, content)
    with holder:
        found = eval_metrics_of(folder)
    if found:
        assert set(found) == {"test_auc", "test_auc_ci", "test_scans"}
        assert all(math.isfinite(v) for v in (found["test_auc"], *found["test_auc_ci"]))
        assert isinstance(found["test_scans"], int)
