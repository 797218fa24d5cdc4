"""search.model.folder's keys: an unknown key is ignored, one that misspells a known key is refused naming the
file, and a preprocess.json without a threshold predicts at 0.5 with a one-line warning.

Each JSON file the folder's readers read is covered: spec.json, preprocess.json (and its "preprocess" entry),
ensemble.json, and metrics.json (optional, so its refusal is a warning that leaves the phantom flag unknown).
"""

import json

import pytest
import torch

from lungct.records import TASKS, PreprocessConfig
from search.model.folder import (
    CARD,
    ENSEMBLE,
    METRICS,
    PREPROCESS,
    SPEC,
    Ensemble,
    ModelDirError,
    ModelInfo,
    check_spelling,
    load_model,
    misspelt,
    read_optional,
    save_model,
)
from space import ArchSpec, LevelSpec, TrainSpec, build

SIZE = (16, 24, 20)
SPEC_ = ArchSpec(levels=(LevelSpec(4), LevelSpec(8)), padding="same", head_units=(8,))
INFO = ModelInfo.for_task(TASKS["course"], PreprocessConfig(size=SIZE), threshold=0.3)


@pytest.fixture
def folder(tmp_path):
    torch.manual_seed(0)
    save_model(tmp_path / "model", build(SPEC_).eval(), SPEC_, TrainSpec(), INFO)
    return tmp_path / "model"


def _edit(path, change) -> None:
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


def _rename(key: str, to: str, within: str | None = None):
    def change(data: dict) -> None:
        target = data[within] if within else data
        target[to] = target.pop(key)
    return change


@pytest.mark.parametrize("spelling", ["Threshold", "THRESHOLD", "treshold", "threshhold", "thresold"])
def test_load_model_refuses_a_misspelt_threshold_naming_the_file_and_the_key_meant(folder, spelling):
    _edit(folder / PREPROCESS, _rename("threshold", spelling))
    with pytest.raises(ModelDirError) as raised:
        load_model(folder)
    line = str(raised.value)
    assert line.startswith(f"{folder / PREPROCESS}: {spelling}: unknown key; did you mean 'threshold'?")
    assert "\n" not in line


def test_load_model_refuses_a_misspelt_key_of_the_preprocess_entry(folder):
    _edit(folder / PREPROCESS, _rename("size", "Size", within="preprocess"))
    with pytest.raises(ModelDirError, match=r"preprocess\.json: preprocess\.Size: unknown key; did you mean 'size'\?"):
        load_model(folder)


def test_load_model_ignores_an_unknown_key_that_misspells_none(folder):
    _edit(folder / PREPROCESS, lambda d: d.update({"calibration": {"method": "isotonic"}, "notes": "x"}))
    _, _, info = load_model(folder)
    assert info.threshold == 0.3 and info.warnings == ()


def test_load_model_refuses_a_misspelt_spec_field_naming_spec_json(folder):
    _edit(folder / SPEC, _rename("dropout", "Dropout"))
    with pytest.raises(ModelDirError, match=rf"^{folder / SPEC}: .*'Dropout'; did you mean 'dropout'\?"):
        load_model(folder)


def test_load_model_refuses_a_misspelt_ensemble_key_naming_ensemble_json(tmp_path):
    torch.manual_seed(0)
    save_model(tmp_path, Ensemble([build(SPEC_), build(SPEC_)]).eval(), SPEC_, TrainSpec(), INFO)
    _edit(tmp_path / ENSEMBLE, _rename("members", "Members"))
    with pytest.raises(ModelDirError, match=rf"^{tmp_path / ENSEMBLE}: Members: unknown key; did you mean 'members'\?"):
        load_model(tmp_path)


def test_load_model_without_a_threshold_predicts_at_half_with_a_one_line_warning_naming_the_file(folder):
    _edit(folder / PREPROCESS, lambda d: d.pop("threshold"))
    _, _, info = load_model(folder)
    assert info.threshold == 0.5
    (line,) = info.warnings
    assert line.startswith(f"{folder / PREPROCESS}: threshold: missing") and "0.5" in line and "\n" not in line


def test_model_info_with_a_threshold_has_no_warning_and_warnings_do_not_change_equality():
    assert ModelInfo.from_dict(INFO.to_dict()).warnings == ()
    d = INFO.to_dict()
    del d["threshold"]
    assert ModelInfo.from_dict(d) == ModelInfo.for_task(TASKS["course"], PreprocessConfig(size=SIZE))


@pytest.mark.parametrize("metrics, key, meant", [
    ({"Data": {"phantoms": True}}, "Data", "data"),
    ({"data": {"Phantoms": True}}, "data.Phantoms", "phantoms"),
    ({"data": {"phantom": True}}, "data.phantom", "phantoms"),
])
def test_read_optional_warns_of_a_misspelt_metrics_key_and_leaves_the_phantom_flag_unknown(tmp_path, metrics, key,
                                                                                           meant):
    (tmp_path / METRICS).write_text(json.dumps(metrics))
    (tmp_path / CARD).write_text("# card\n")
    optional = read_optional(tmp_path)
    (note,) = optional.notes
    assert optional.trained_on_phantoms is None
    assert note.startswith(f"warning: {tmp_path / METRICS}: {key}: unknown key; did you mean {meant!r}?")
    assert "whether this model was trained on the synthetic phantoms is unknown" in note


def test_read_optional_ignores_metrics_keys_that_misspell_none(tmp_path):
    (tmp_path / METRICS).write_text(json.dumps({"data": {"phantoms": False, "scanner": "x"}, "reviewer": "y"}))
    (tmp_path / CARD).write_text("# card\n")
    assert read_optional(tmp_path).trained_on_phantoms is False and read_optional(tmp_path).notes == ()


@pytest.mark.parametrize("key, meant", [("Threshold", "threshold"), ("treshold", "threshold"),
                                        ("task_descripton", "task_description"), ("grade", "grades"),
                                        ("threshold", None), ("version", None), ("calibration", None)])
def test_misspelt_finds_the_key_meant_in_any_case_and_leaves_new_keys_alone(key, meant):
    known = ("format_version", "threshold", "task_description", "grades", "task")
    assert misspelt(key, known) == meant


def test_check_spelling_escapes_a_key_that_would_break_the_line():
    with pytest.raises(ValueError) as raised:
        check_spelling({"thresh\nold": 0.1}, ("threshold",))
    assert "\n" not in str(raised.value) and "did you mean 'threshold'?" in str(raised.value)


def test_model_info_of_an_ordinal_task_without_a_threshold_has_no_warning():
    """A severity model predicts the median grade: its threshold is 0.5 by that rule, not by a default."""
    d = ModelInfo.for_task(TASKS["severity"], PreprocessConfig(size=SIZE)).to_dict()
    del d["threshold"]
    assert ModelInfo.from_dict(d).warnings == ()
