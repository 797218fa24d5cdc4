"""A severity (ordinal) model folder: written from a built model, read back, run under ONNX, and refused when it lies.

The folder's preprocess.json names the task's K = 4 grades and their categories; ``load_model`` builds the
network with its ordinal head (K-1 cumulative logits) and expects the cutpoints in the weights. Binary folders
read exactly as before (tests/search/model/test_folder.py).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from lungct.records import TASKS, PreprocessConfig
from search.model.folder import (
    ENSEMBLE,
    ONNX,
    PREPROCESS,
    TOLERANCE,
    WEIGHTS,
    Ensemble,
    ModelDirError,
    ModelInfo,
    export_onnx,
    fixed_input,
    load_model,
    logits,
    onnx_logits,
    save_model,
)
from search.predict import main
from search.stats.metrics import grade_distribution
from space import ArchSpec, LevelSpec, TrainSpec, build
from tests.conftest import synthetic_ct, write_nifti

SIZE = (16, 32, 32)
SEVERITY = TASKS["severity"]
NAMES = ("CT-0", "CT-1", "CT-2", "CT-3 or CT-4")
SPEC = ArchSpec(levels=(LevelSpec(4), LevelSpec(8)), padding="same", head_units=(8,))


def severity_model(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = build(SPEC, grades=SEVERITY.n_grades).eval()
    with torch.no_grad():  # cutpoints spread apart, so the grades' probabilities differ visibly
        model.head.cuts.first.fill_(1.0)
        model.head.cuts.gaps.fill_(1.5)
    return model


def info() -> ModelInfo:
    return ModelInfo.for_task(SEVERITY, PreprocessConfig(size=SIZE))


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """A severity model folder with its ONNX file, and the in-memory model written into it."""
    path = tmp_path_factory.mktemp("severity-model")
    model = severity_model()
    save_model(path, model, SPEC, TrainSpec(), info())
    export_onnx(model, SIZE, path / ONNX)
    return path, model


def test_model_info_of_severity_names_the_four_grades_and_pools_ct3_with_ct4():
    i = info()
    assert i.classes == NAMES and i.ordinal and i.n_grades == 4
    assert i.grades == (("CT-0",), ("CT-1",), ("CT-2",), ("CT-3", "CT-4"))
    assert ModelInfo.from_dict(json.loads(json.dumps(i.to_dict()))) == i


def test_model_info_of_a_binary_task_writes_no_grades():
    binary = ModelInfo.for_task(TASKS["course"], PreprocessConfig(size=SIZE))
    d = binary.to_dict()
    assert "grades" not in d and d["classes"] == ["CT-0", "CT-2 or CT-3"] and not binary.ordinal
    assert list(d) == ["format_version", "preprocess", "task", "task_description", "negative", "positive", "classes",
                       "threshold", "input", "output"]


def test_severity_folder_round_trip_gives_the_models_cumulative_logits(folder):
    path, model = folder
    loaded, pre, i = load_model(path)
    assert pre.size == SIZE and i == info() and loaded.grades == 4
    x = fixed_input(SIZE, n=3, seed=1)
    out = logits(loaded, x)
    assert out.shape == (3, 3) and np.array_equal(out, logits(model, x))
    assert set(load_file(str(path / WEIGHTS))) >= {"head.cuts.first", "head.cuts.gaps"}


def test_severity_folder_onnx_agrees_with_torch_within_the_tolerance(folder):
    path, model = folder
    x = fixed_input(SIZE, n=3, seed=2)
    expected = logits(model, x)
    onnx_out = onnx_logits(path / ONNX, x)
    assert onnx_out.shape == (3, 3)
    assert np.max(np.abs(onnx_out - expected)) <= TOLERANCE


def test_severity_folder_probabilities_fall_with_the_grade_and_the_distribution_sums_to_one(folder):
    path, _ = folder
    loaded, _, _ = load_model(path)
    cumulative = torch.sigmoid(torch.from_numpy(logits(loaded, fixed_input(SIZE, n=4, seed=3)))).numpy()
    assert np.all(np.diff(cumulative, axis=1) < 0)
    dist = grade_distribution(cumulative)
    assert dist.shape == (4, 4) and np.all(dist >= 0) and np.allclose(dist.sum(axis=1), 1.0)


def test_severity_ensemble_averages_each_cumulative_probability_and_exports_to_onnx(tmp_path):
    members = [severity_model(seed) for seed in range(3)]
    ensemble = Ensemble(members).eval()
    x = fixed_input(SIZE, n=2, seed=4)
    with torch.no_grad():
        mean = torch.stack([torch.sigmoid(m(x)) for m in members]).mean(dim=0)  # (B, K-1)
        out = ensemble(x)
    assert out.shape == (2, 3)
    assert torch.allclose(torch.sigmoid(out), mean, atol=1e-6)
    assert torch.all(torch.diff(torch.sigmoid(out), dim=1) < 0)  # still monotone
    save_model(tmp_path, ensemble, SPEC, TrainSpec(), info())
    assert json.loads((tmp_path / ENSEMBLE).read_text())["members"] == 3
    loaded, _, _ = load_model(tmp_path)
    assert isinstance(loaded, Ensemble) and np.array_equal(logits(loaded, x), logits(ensemble, x))
    export_onnx(ensemble, SIZE, tmp_path / ONNX)
    assert np.max(np.abs(onnx_logits(tmp_path / ONNX, x) - logits(ensemble, x))) <= TOLERANCE


def test_severity_folder_holding_a_binary_models_weights_is_refused(tmp_path):
    torch.manual_seed(0)
    save_model(tmp_path, build(SPEC).eval(), SPEC, TrainSpec(), info())
    with pytest.raises(ModelDirError, match=r"weights\.safetensors: does not match spec\.json \(missing head\.cuts"):
        load_model(tmp_path)


def test_binary_folder_holding_a_severity_models_weights_is_refused(tmp_path):
    save_model(tmp_path, severity_model(), SPEC, TrainSpec(), ModelInfo.for_task(TASKS["course"],
                                                                                 PreprocessConfig(size=SIZE)))
    with pytest.raises(ModelDirError, match=r"does not match spec\.json \(unexpected head\.cuts"):
        load_model(tmp_path)


def test_severity_folder_with_shuffled_cutpoint_shapes_is_refused(tmp_path):
    save_model(tmp_path, severity_model(), SPEC, TrainSpec(), info())
    state = load_file(str(tmp_path / WEIGHTS))
    state["head.cuts.gaps"] = torch.zeros(5)
    save_file(state, str(tmp_path / WEIGHTS))
    with pytest.raises(ModelDirError, match=r"head\.cuts\.gaps has shape \[5\], the spec's is \[2\]"):
        load_model(tmp_path)


def _put(*keys_value):
    *keys, value = keys_value

    def change(d: dict) -> None:
        for key in keys[:-1]:
            d = d[key]
        d[keys[-1]] = value
    return change


def _drop(key):
    return lambda d: d.pop(key)


HOSTILE = {
    "grades_reordered": (_put("grades", [["CT-3", "CT-4"], ["CT-2"], ["CT-1"], ["CT-0"]]),
                         "grades: [['CT-3', 'CT-4'], ['CT-2'], ['CT-1'], ['CT-0']] contradicts task 'severity'"),
    "ct4_moved_into_ct0": (_put("grades", [["CT-0", "CT-4"], ["CT-1"], ["CT-2"], ["CT-3"]]),
                           "grades: [['CT-0', 'CT-4'], ['CT-1'], ['CT-2'], ['CT-3']] contradicts task 'severity'"),
    "grades_unknown_category": (_put("grades", [["CT-0"], ["CT-1"], ["CT-2"], ["CT-9"]]),
                                "grades: unknown categories ['CT-9']"),
    "grades_three": (_put("grades", [["CT-0"], ["CT-1"], ["CT-2", "CT-3", "CT-4"]]),
                     "grades: expected the categories of each of task 'severity''s 4 grades"),
    "grades_not_lists": (_put("grades", ["CT-0", "CT-1", "CT-2", "CT-3"]), "grades[0]: expected a list"),
    "grades_missing": (_drop("grades"), "missing field 'grades'"),
    "class_names_swapped": (_put("classes", ["CT-0", "CT-2", "CT-1", "CT-3 or CT-4"]),
                            "classes: ['CT-0', 'CT-2', 'CT-1', 'CT-3 or CT-4'] contradicts task 'severity'"),
    "top_grade_named_ct0": (_put("classes", ["CT-0", "CT-1", "CT-2", "CT-0"]), "classes: "),
    "two_classes": (_put("classes", ["CT-0", "CT-1 or more"]), "classes: expected the names of task 'severity''s 4"),
    "negative_contradicts": (_put("negative", ["CT-3"]), "negative: ['CT-3'] contradicts task 'severity'"),
    "threshold_moved": (_put("threshold", 0.3), "threshold: an ordinal model predicts the median grade"),
    "binary_task_with_four_classes": (_put("task", "course"), "classes: expected the names of label 0 and label 1"),
    "description_changed": (_put("task_description", "CT-3 is mild"), "task_description"),
}


@pytest.mark.parametrize("case", list(HOSTILE))
def test_hostile_severity_preprocess_json_is_a_one_line_error_naming_the_field(case, tmp_path, capsys):
    change, message = HOSTILE[case]
    save_model(tmp_path / "m", severity_model(), SPEC, TrainSpec(), info())
    data = json.loads((tmp_path / "m" / PREPROCESS).read_text())
    change(data)
    (tmp_path / "m" / PREPROCESS).write_text(json.dumps(data))
    with pytest.raises(ModelDirError) as caught:
        load_model(tmp_path / "m")
    assert str(caught.value).startswith(f"{tmp_path / 'm' / PREPROCESS}: ") and message in str(caught.value)
    scan = write_nifti(tmp_path / "s.nii.gz", synthetic_ct())
    assert main([str(tmp_path / "m"), str(scan)]) == 2
    captured = capsys.readouterr()
    assert len(captured.err.strip().splitlines()) == 1 and message in captured.err
    assert "Traceback" not in captured.err and captured.out == ""
