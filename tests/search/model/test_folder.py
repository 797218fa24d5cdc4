"""search.model.folder's units called directly: ModelInfo, the bounded readers, save/load, memory, optional files.

tests/search/model/test_folder_hostile.py hands hostile folders to ``search.predict``;
tests/search/commands/test_predict.py
checks the ensemble's combination and tests/search/shipping/test_models.py batch-norm statistics and ONNX. These
test each reader on its own, at its edges.
"""

import json
import os

import numpy as np
import pytest
import torch

import search.model.folder
from lungct.records import TASKS, PreprocessConfig
from search.model.folder import (
    CARD,
    ENSEMBLE,
    MAX_JSON_DEPTH,
    METRICS,
    PREPROCESS,
    REQUIRED,
    SPEC,
    Ensemble,
    ModelDirError,
    ModelInfo,
    build_model,
    check_memory,
    default_memory_cap,
    fixed_input,
    is_model_dir,
    load_model,
    logits,
    members_of,
    read_file,
    read_json,
    read_optional,
    save_model,
)
from space import ArchSpec, LevelSpec, SpecNet, TrainSpec, build, memory

SIZE = (16, 24, 20)
SPEC_ = ArchSpec(levels=(LevelSpec(4), LevelSpec(8)), padding="same", head_units=(8,))
INFO = ModelInfo.for_task(TASKS["course"], PreprocessConfig(size=SIZE, hu_min=-1000.0, hu_max=300.0), threshold=0.4)


@pytest.fixture
def folder(tmp_path):
    torch.manual_seed(0)
    model = build(SPEC_).eval()
    save_model(tmp_path / "model", model, SPEC_, TrainSpec(), INFO)
    return tmp_path / "model", model


# --- ModelInfo ------------------------------------------------------------------------------------------------

def test_model_info_for_task_takes_the_tasks_categories_and_class_names():
    assert (INFO.task, INFO.negative, INFO.positive, INFO.classes) == ("course", ("CT-0",), ("CT-2", "CT-3"),
                                                                       ("CT-0", "CT-2 or CT-3"))
    assert INFO.task_description == TASKS["course"].description and INFO.threshold == 0.4


def test_model_info_round_trips_through_json():
    assert ModelInfo.from_dict(json.loads(json.dumps(INFO.to_dict()))) == INFO


def test_model_info_to_dict_describes_the_input_in_d_h_w_order():
    d = INFO.to_dict()
    assert d["input"]["shape"] == ["batch", 1, 16, 24, 20] and d["output"]["shape"] == ["batch"]
    assert d["preprocess"] == {"size": [16, 24, 20], "hu_min": -1000.0, "hu_max": 300.0}


def test_model_info_from_dict_defaults_threshold_and_description_when_absent():
    d = INFO.to_dict()
    del d["threshold"], d["task_description"]
    info = ModelInfo.from_dict(d)
    assert info.threshold == 0.5 and info.task_description == TASKS["course"].description


@pytest.mark.parametrize("field, value, message", [
    ("format_version", None, r"^format_version: missing;"),
    ("format_version", True, r"^format_version: unknown True;"),
    ("threshold", 1, r"^threshold: expected a number strictly between 0 and 1, got 1"),
    ("threshold", 1.5, r"^threshold: expected a finite number in \[0, 1\], got 1.5"),
    ("preprocess", {"size": [16, 24, 20], "hu_min": 300, "hu_max": -1000},
     r"^preprocess.hu_min: the HU window must run upwards, got \[300, -1000\]"),
    ("preprocess", {"size": [16, 24], "hu_min": -1000, "hu_max": 300}, r"^preprocess.size: expected three positive"),
    ("preprocess", {"size": [16, 24, 20], "hu_min": -1000}, r"^preprocess: expected an object with exactly size"),
    ("task_description", "something else", r"^task_description: 'something else' is not task 'course'"),
    ("classes", ["CT-0"], r"^classes: expected the names of label 0 and label 1"),
])
def test_model_info_from_dict_refuses_a_bad_field_naming_it(field, value, message):
    d = INFO.to_dict()
    if value is None:
        del d[field]
    else:
        d[field] = value
    with pytest.raises(ValueError, match=message):
        ModelInfo.from_dict(d)


def test_model_info_from_dict_refuses_another_tasks_categories():
    d = {**INFO.to_dict(), "task": "severe"}
    with pytest.raises(ValueError, match=r"^negative: \['CT-0'\] contradicts task 'severe'"):
        ModelInfo.from_dict(d)


# --- the bounded readers ---------------------------------------------------------------------------------------

def test_read_file_reads_a_file_of_exactly_its_cap_and_refuses_one_byte_more(tmp_path):
    (tmp_path / "a").write_bytes(b"x" * 10)
    assert read_file(tmp_path / "a", 10) == b"x" * 10
    with pytest.raises(ModelDirError, match=r"a: 10 bytes, more than the 9 such a file may hold"):
        read_file(tmp_path / "a", 9)


def test_read_file_refuses_a_missing_file_and_a_folder_naming_the_path(tmp_path):
    with pytest.raises(ModelDirError, match=rf"^{tmp_path / 'gone'}: missing$"):
        read_file(tmp_path / "gone", 10)
    (tmp_path / "sub").mkdir()
    with pytest.raises(ModelDirError, match=r"sub: a folder, not a regular file; refused$"):
        read_file(tmp_path / "sub", 10)


def test_read_file_follows_a_link_within_the_folder_but_not_one_out_of_it(tmp_path):
    inside, outside = tmp_path / "m", tmp_path / "elsewhere"
    inside.mkdir()
    (inside / "real").write_bytes(b"in")
    outside.write_bytes(b"out")
    os.symlink("real", inside / "near")
    os.symlink(outside, inside / "far")
    assert read_file(inside / "near", 10) == b"in"
    with pytest.raises(ModelDirError, match=r"far: a symbolic link to .*elsewhere, outside the model folder"):
        read_file(inside / "far", 10)


def test_read_json_reads_an_object_nested_to_the_limit_and_refuses_one_level_more(tmp_path):
    deepest = {}
    for _ in range(MAX_JSON_DEPTH - 1):
        deepest = {"k": deepest}
    (tmp_path / "ok.json").write_text(json.dumps(deepest))
    assert read_json(tmp_path / "ok.json") == deepest
    (tmp_path / "deep.json").write_text(json.dumps({"k": deepest}))
    with pytest.raises(ModelDirError, match=rf"deep.json: nested deeper than {MAX_JSON_DEPTH} levels"):
        read_json(tmp_path / "deep.json")


def test_read_json_refuses_a_repeated_key_naming_it(tmp_path):
    (tmp_path / "a.json").write_text('{"x": {"threshold": 0.5, "threshold": 0.9}}')
    with pytest.raises(ModelDirError, match=r"a.json: threshold: the key appears more than once$"):
        read_json(tmp_path / "a.json")


@pytest.mark.parametrize("content, message", [
    (b"[1, 2]", r"expected a JSON object, got list"),
    (b'{"a": "\xff"}', r"not UTF-8 text \(byte 0xff at offset 7\)"),
    (b'{"a": NaN', r"unreadable \(JSONDecodeError: "),
])
def test_read_json_refuses_what_is_not_a_utf8_json_object(tmp_path, content, message):
    (tmp_path / "a.json").write_bytes(content)
    with pytest.raises(ModelDirError, match=message):
        read_json(tmp_path / "a.json")


def test_read_json_honours_its_byte_cap(tmp_path):
    (tmp_path / "a.json").write_text('{"a": 1}')
    with pytest.raises(ModelDirError, match="more than the 4 such a file may hold"):
        read_json(tmp_path / "a.json", max_bytes=4)


# --- save, load, build --------------------------------------------------------------------------------------

def test_is_model_dir_needs_every_required_file(folder):
    path, _ = folder
    assert is_model_dir(path)
    (path / REQUIRED[-1]).unlink()
    assert not is_model_dir(path)


def test_save_model_writes_plain_json_files_and_no_ensemble_file_for_one_model(folder):
    path, _ = folder
    assert ArchSpec.from_dict(json.loads((path / SPEC).read_text())) == SPEC_
    assert json.loads((path / PREPROCESS).read_text()) == INFO.to_dict()
    assert not (path / ENSEMBLE).exists()


def test_load_model_returns_the_same_network_in_eval_mode_with_its_info(folder):
    path, model = folder
    loaded, preprocess, info = load_model(path)
    assert isinstance(loaded, SpecNet) and not loaded.training
    assert preprocess == INFO.preprocess and info == INFO
    x = fixed_input(SIZE, n=2)
    np.testing.assert_array_equal(logits(loaded, x), logits(model, x))


def test_load_model_refuses_a_folder_that_is_not_there_or_is_incomplete(tmp_path):
    with pytest.raises(ModelDirError, match=r"nowhere: no such folder$"):
        load_model(tmp_path / "nowhere")
    with pytest.raises(ModelDirError, match=r"missing spec.json, weights.safetensors, preprocess.json"):
        load_model(tmp_path)


def test_save_and_load_model_keep_an_ensembles_members(tmp_path):
    torch.manual_seed(1)
    ensemble = build_model(SPEC_, members=3).eval()
    save_model(tmp_path, ensemble, SPEC_, TrainSpec(), INFO)
    assert json.loads((tmp_path / ENSEMBLE).read_text())["members"] == 3
    loaded, _, _ = load_model(tmp_path)
    assert isinstance(loaded, Ensemble) and members_of(loaded) == 3
    x = fixed_input(SIZE, n=2, seed=4)
    np.testing.assert_allclose(logits(loaded, x), logits(ensemble, x), rtol=0, atol=0)


def test_build_model_is_one_network_or_an_ensemble_of_independent_copies():
    assert isinstance(build_model(SPEC_), SpecNet) and members_of(build_model(SPEC_)) == 1
    pair = build_model(SPEC_, members=2)
    assert members_of(pair) == 2 and pair.spec == SPEC_
    first, second = (next(iter(m.parameters())) for m in pair.members)
    assert first.data_ptr() != second.data_ptr()


def test_ensemble_refuses_no_members():
    with pytest.raises(ValueError, match=r"^ensemble: needs at least one member$"):
        Ensemble([])


# --- memory -------------------------------------------------------------------------------------------------

def test_check_memory_returns_the_members_memory_and_counts_a_backward_pass(tmp_path):
    one = memory(SPEC_, SIZE).total(False)
    assert check_memory(tmp_path, SPEC_, SIZE, 1, max_memory_bytes=1 << 40) == one
    assert check_memory(tmp_path, SPEC_, SIZE, 3, max_memory_bytes=1 << 40) == 3 * one
    assert check_memory(tmp_path, SPEC_, SIZE, 1, max_memory_bytes=1 << 40, gradients=True) > one


def test_check_memory_above_the_cap_names_the_spec_and_the_flag(tmp_path):
    need = memory(SPEC_, SIZE).total(True)
    assert check_memory(tmp_path, SPEC_, SIZE, 1, max_memory_bytes=need, gradients=True) == need
    with pytest.raises(ModelDirError) as caught:
        check_memory(tmp_path, SPEC_, SIZE, 1, max_memory_bytes=need - 1, gradients=True)
    message = str(caught.value)
    assert message.startswith(f"{tmp_path / SPEC}: levels: the network needs about ")
    assert "at 16x24x20 (preprocess.json) with a saliency map" in message and "--max-memory-gb" in message
    assert "of the memory this machine gives it" not in message  # an explicit cap is not the machine's share


def test_default_memory_cap_is_half_the_known_memory_or_8_gib(monkeypatch):
    monkeypatch.setattr(search.model.folder, "machine_memory_bytes", lambda: 10_000)
    assert default_memory_cap() == 5_000
    monkeypatch.setattr(search.model.folder, "machine_memory_bytes", lambda: None)
    assert default_memory_cap() == 8 << 30


def test_machine_memory_bytes_is_at_most_the_physical_memory():
    found = search.model.folder.machine_memory_bytes()
    assert found is None or 0 < found <= os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


# --- optional files ------------------------------------------------------------------------------------------

def test_read_optional_reads_the_phantom_flag_without_notes(tmp_path):
    (tmp_path / METRICS).write_text(json.dumps({"data": {"phantoms": False}}))
    (tmp_path / CARD).write_text("# card\n")
    assert read_optional(tmp_path) == search.model.folder.OptionalFiles(False, ())


def test_read_optional_says_what_each_absent_file_leaves_unknown(tmp_path):
    optional = read_optional(tmp_path)
    assert optional.trained_on_phantoms is None and len(optional.notes) == 2
    assert optional.notes[0].startswith(f"note: no {METRICS} in {tmp_path}: its training data")
    assert optional.notes[1].startswith(f"note: no {CARD} in {tmp_path}: the model card")


@pytest.mark.parametrize("metrics", [{"data": {"phantoms": 1}}, {"data": "x"}, {}])
def test_read_optional_warns_when_the_phantom_flag_is_not_a_boolean(tmp_path, metrics):
    (tmp_path / METRICS).write_text(json.dumps(metrics))
    (tmp_path / CARD).write_text("# card\n")
    optional = read_optional(tmp_path)
    (note,) = optional.notes
    assert optional.trained_on_phantoms is None
    assert note.startswith(f"warning: {tmp_path / METRICS}: data.phantoms: expected true or false")


def test_read_optional_notes_a_card_that_is_not_utf8(tmp_path):
    (tmp_path / METRICS).write_text(json.dumps({"data": {"phantoms": True}}))
    (tmp_path / CARD).write_bytes(b"\xff\xfe card")
    optional = read_optional(tmp_path)
    assert optional.trained_on_phantoms is True
    assert optional.notes == (f"note: {tmp_path / CARD}: not UTF-8 text: the model card is unreadable",)


# --- inputs and logits ----------------------------------------------------------------------------------------

def test_fixed_input_is_seeded_non_cubic_and_in_the_unit_interval():
    x = fixed_input(SIZE, n=3, seed=2)
    assert x.shape == (3, 1, 16, 24, 20) and x.dtype == torch.float32
    assert float(x.min()) >= 0 and float(x.max()) < 1
    assert torch.equal(x, fixed_input(SIZE, n=3, seed=2)) and not torch.equal(x, fixed_input(SIZE, n=3, seed=3))


def test_logits_are_float32_one_per_scan_in_eval_mode_whatever_the_input_dtype():
    torch.manual_seed(0)
    model = build(SPEC_).train()
    out = logits(model, fixed_input(SIZE, n=3).half())
    assert out.shape == (3,) and out.dtype == np.float32 and np.isfinite(out).all()
    assert not model.training
