"""python -m search.predict on a severity (ordinal) model folder: each grade's probability, the median grade, its
routing decision, on the console and in --json; and its saliency montage."""

import json
import math

import numpy as np
import pytest
import torch

import search.model.prediction
from lungct.records import PreprocessConfig, get_task
from search.model.folder import ModelInfo, save_model
from search.model.routing import CLINICAL_NOTE, DISCLAIMER, ROUTING
from search.model.saliency import ORDINAL_TARGET
from search.predict import main
from space import ArchSpec, LevelSpec, TrainSpec, build
from tests.conftest import synthetic_ct, write_nifti

SIZE = (16, 24, 20)
NAMES = ["CT-0", "CT-1", "CT-2", "CT-3 or CT-4"]
GAP = 2.0  # cutpoints 0, -2, -4: a severity score of 3 gives logits 3, 1, -1, the median grade CT-2


def _severity_dir(path, score: float | None = None):
    """A severity model folder; with ``score``, its severity logit is that constant for every scan."""
    spec = ArchSpec(levels=(LevelSpec(4), LevelSpec(8)), padding="same", head_units=(8,))
    torch.manual_seed(0)
    model = build(spec, grades=4).eval()
    with torch.no_grad():
        model.head.cuts.first.zero_()
        model.head.cuts.gaps.fill_(math.log(math.expm1(GAP)))  # softplus(gaps) = GAP
        if score is not None:
            model.head.out.weight.zero_()
            model.head.out.bias.fill_(score)
    save_model(path, model, spec, TrainSpec(), ModelInfo.for_task(get_task("severity"), PreprocessConfig(size=SIZE)))
    return path


@pytest.fixture
def scan(tmp_path):
    return write_nifti(tmp_path / "s.nii.gz", synthetic_ct())


def _json(capsys) -> dict:
    return json.loads(capsys.readouterr().out)


def _sigmoid(x):
    return 1 / (1 + np.exp(-np.asarray(x, dtype=float)))


def test_predict_severity_json_gives_each_grades_probability_the_median_grade_and_its_decision(tmp_path, scan,
                                                                                               capsys):
    model = _severity_dir(tmp_path / "m", score=3.0)
    assert main([str(model), str(scan), "--json"]) == 0
    out = _json(capsys)
    assert out["task"] == "severity" and out["classes"] == NAMES and out["routing_note"] == CLINICAL_NOTE
    assert out["grades"] == [["CT-0"], ["CT-1"], ["CT-2"], ["CT-3", "CT-4"]] and "median" in out["grade_rule"]
    result = out["results"][0]
    at_least = _sigmoid([3.0, 1.0, -1.0])
    expected = np.diff(np.r_[1.0, at_least, 0.0]) * -1
    assert list(result["grade_probabilities"]) == NAMES
    assert np.allclose(list(result["grade_probabilities"].values()), expected, atol=1e-5)
    assert sum(result["grade_probabilities"].values()) == pytest.approx(1.0)
    assert np.allclose(list(result["probability_at_least"].values()), at_least, atol=1e-5)
    assert result["predicted_grade"] == "CT-2" and result["grade"] == 2
    assert result["decision"] == ROUTING["CT-2"] and result["decisions"] == {"CT-2": ROUTING["CT-2"]}
    assert result["expected_grade"] == pytest.approx(at_least.sum(), abs=1e-5)


def test_predict_severity_top_grade_gives_both_ct3_and_ct4_decisions(tmp_path, scan, capsys):
    model = _severity_dir(tmp_path / "m", score=12.0)
    assert main([str(model), str(scan), "--json"]) == 0
    result = _json(capsys)["results"][0]
    assert result["predicted_grade"] == "CT-3 or CT-4" and result["grade"] == 3
    assert result["decisions"] == {"CT-3": ROUTING["CT-3"], "CT-4": ROUTING["CT-4"]}
    assert result["decision"] == f"if CT-3: {ROUTING['CT-3']}; if CT-4: {ROUTING['CT-4']}"


def test_predict_severity_lowest_grade_gives_the_ct0_decision(tmp_path, scan, capsys):
    model = _severity_dir(tmp_path / "m", score=-12.0)
    assert main([str(model), str(scan), "--json"]) == 0
    result = _json(capsys)["results"][0]
    assert result["predicted_grade"] == "CT-0" and result["decision"] == ROUTING["CT-0"]
    assert result["grade_probabilities"]["CT-0"] > 0.99


def test_predict_severity_never_gives_a_grade_the_model_cannot_output(tmp_path, capsys):
    model = _severity_dir(tmp_path / "m")
    scans = [str(write_nifti(tmp_path / f"s{i}.nii.gz", synthetic_ct(seed=i))) for i in range(3)]
    assert main([str(model), *scans, "--json"]) == 0
    for result in _json(capsys)["results"]:
        assert result["predicted_grade"] in NAMES and 0 <= result["grade"] <= 3
        assert NAMES[result["grade"]] == result["predicted_grade"]
        # the median grade: the number of k with P(grade >= k) >= 0.5
        assert result["grade"] == sum(p >= 0.5 for p in result["probability_at_least"].values())


def test_predict_severity_table_shows_each_grade_the_median_grade_and_its_decision(tmp_path, scan, capsys):
    model = _severity_dir(tmp_path / "m", score=3.0)
    assert main([str(model), str(scan)]) == 0
    out = capsys.readouterr().out
    assert DISCLAIMER in out and CLINICAL_NOTE in out
    assert "grades CT-0 < CT-1 < CT-2 < CT-3 or CT-4" in out and "the median grade" in out
    header = next(line for line in out.splitlines() if line.startswith("scan"))
    assert header.split()[:6] == ["scan", "P(CT-0)", "P(CT-1)", "P(CT-2)", "P(CT-3", "or"]
    assert "median grade" in header and "decision" in header
    row = next(line for line in out.splitlines() if line.startswith(str(scan)))
    p = -np.diff(np.r_[1.0, _sigmoid([3.0, 1.0, -1.0]), 0.0])
    assert row.split()[1:5] == [f"{v:.3f}" for v in p]
    assert row.split()[5] == "CT-2" and row.endswith(ROUTING["CT-2"])


def test_predict_severity_saliency_maps_the_shared_severity_logit(tmp_path, scan, capsys, monkeypatch):
    model = _severity_dir(tmp_path / "m", score=12.0)
    titles = []
    real = search.model.prediction.plot_montage

    def keep_title(volume, saliency, title, subtitle):
        titles.append(subtitle)
        assert saliency.shape == SIZE and np.all(saliency >= 0)
        return real(volume, saliency, title, subtitle)

    monkeypatch.setattr(search.model.prediction, "plot_montage", keep_title)
    assert main([str(model), str(scan), "--saliency", str(tmp_path / "maps"), "--json"]) == 0
    result = _json(capsys)["results"][0]
    assert (tmp_path / "maps" / "s.saliency.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert result["saliency"] == str(tmp_path / "maps" / "s.saliency.png")
    (subtitle,) = titles
    assert "median grade CT-3 or CT-4" in subtitle and ORDINAL_TARGET in subtitle and "P(CT-0) 0.00" in subtitle
