"""python -m search.export on a severity (ordinal) study: model folder, metrics.json, card, pictures, predict.

One tiny study (two trials and a confirmation of trial 1 against the seed baseline on two folds, 16x16x32
volumes, one epoch) is exported with ``--trial 1``, a searched spec, so the seed baseline is trained beside it
with the same ordinal head; and with ``--ensemble`` after its recommendation is set to trial 1, so the
confirmation's fold models of the ordinal head are shipped as one ensemble.
"""

import copy
import json
import re

import numpy as np
import optuna
import pytest
import torch
from safetensors.torch import load_file

import search.shipping.export
from lungct.records import TASKS
from search import predict, run
from search.export import BASELINE_DIR, main
from search.model.folder import ONNX, TOLERANCE, Ensemble, fixed_input, load_model, logits, onnx_logits
from search.model.routing import ROUTING
from search.shipping.figures import ORDINAL_FIGURES
from search.stats.metrics import grade_distribution
from search.training.precision import PRECISION_ENV
from tests.conftest import make_mosmed, synthetic_ct, write_nifti

SIZE = (16, 16, 32)
SEVERITY = TASKS["severity"]
NAMES = ["CT-0", "CT-1", "CT-2", "CT-3 or CT-4"]
IMAGE_LINK = r"!\[[^\]]+\]\(([^)]+)\)"
FOLDS = 2


def _export(mp: pytest.MonkeyPatch, argv: list[str]) -> torch.nn.Module:
    """Run ``search.export.main(argv)``; the in-memory model it wrote."""
    saved = []
    real_save = search.shipping.export.save_model

    def keep_model(directory, model, *args):
        saved.append(model)
        real_save(directory, model, *args)

    mp.setattr(search.shipping.export, "save_model", keep_model)
    assert main(argv) == 0
    return saved[0]


@pytest.fixture(scope="module")
def severity_study(tmp_path_factory):
    """A confirmed two-trial severity study: its studies folder."""
    data = make_mosmed(tmp_path_factory.mktemp("severity-data"),
                       {"CT-0": 8, "CT-1": 7, "CT-2": 7, "CT-3": 6, "CT-4": 1})
    root = tmp_path_factory.mktemp("severity-study")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(PRECISION_ENV, "float32")
        assert run.main(["--task", "severity", "--size", *map(str, SIZE), "--epochs", "1", "--trials", "2",
                         "--confirm-top", "1", "--confirm-folds", str(FOLDS), "--confirm-epochs", "1",
                         "--pruner", "none", "--budget", "none", "--workers", "1", "--studies-dir", str(root),
                         "--data", str(data)]) == 0
    return root


@pytest.fixture(scope="module")
def severity_export(severity_study):
    """The study exported once with --trial 1 (and the in-memory model export wrote)."""
    root = severity_study
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(PRECISION_ENV, "float32")
        model = _export(mp, ["--studies-dir", str(root), "--workers", "1", "--trial", "1", "--epochs", "1",
                             "--bootstrap", "200"])
    return root, root / "lungct" / "model", model


@pytest.fixture(scope="module")
def severity_ensemble(severity_study, tmp_path_factory):
    """The study, its recommendation set to trial 1, exported with --ensemble: the folder and the in-memory model."""
    root = severity_study
    db = tmp_path_factory.mktemp("severity-ensemble") / "lungct.db"
    db.write_bytes((root / "lungct.db").read_bytes())
    study = optuna.load_study(study_name="lungct", storage=f"sqlite:///{db}")
    decision = copy.deepcopy(study.user_attrs["confirmation"])
    row = next(r for r in decision["candidates"] if not r["baseline"])
    decision["recommended"] = {"key": row["key"], "trial": row["trial"], "baseline": False,
                               "confirmed": row["confirmed"], "spec": row["spec"], "train_spec": row["train_spec"],
                               "members": row["members"], "why": "set by the test"}
    study.set_user_attr("confirmation", decision)
    out = db.parent / "model"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(PRECISION_ENV, "float32")
        model = _export(mp, ["--studies-dir", str(root), "--storage", f"sqlite:///{db}", "--workers", "1",
                             "--ensemble", "--bootstrap", "200", "--out", str(out)])
    return out, model


def _metrics(out) -> dict:
    # parse_constant refuses NaN and Infinity: metrics.json must be strict JSON
    return json.loads((out / "metrics.json").read_text(), parse_constant=lambda c: pytest.fail(f"{c} in metrics"))


def test_export_severity_preprocess_json_lists_the_grades_and_their_names(severity_export):
    _, out, _ = severity_export
    pre = json.loads((out / "preprocess.json").read_text())
    assert pre["task"] == "severity" and pre["classes"] == NAMES
    assert pre["grades"] == [["CT-0"], ["CT-1"], ["CT-2"], ["CT-3", "CT-4"]]
    assert pre["output"]["shape"] == ["batch", 3] and "grade >= k" in pre["output"]["meaning"]
    assert "negative" not in pre and "positive" not in pre


def test_export_severity_weights_hold_the_cutpoints_and_reload_with_onnx_within_tolerance(severity_export):
    _, out, in_memory = severity_export
    state = load_file(str(out / "weights.safetensors"))
    assert state["head.cuts.first"].shape == (1,) and state["head.cuts.gaps"].shape == (2,)
    x = fixed_input(SIZE, n=3, seed=7)
    expected = logits(in_memory, x)
    reloaded, _, info = load_model(out)
    assert info.ordinal and info.n_grades == 4 and expected.shape == (3, 3)
    assert np.max(np.abs(logits(reloaded, x) - expected)) <= TOLERANCE
    assert np.max(np.abs(onnx_logits(out / ONNX, x) - expected)) <= TOLERANCE
    p = torch.sigmoid(torch.from_numpy(expected)).numpy()
    assert np.all(np.diff(p, axis=1) < 0)  # P(grade >= k) falls with k
    assert np.allclose(grade_distribution(p).sum(axis=1), 1.0)
    # The baseline beside it is a severity model folder too.
    base, _, base_info = load_model(out / BASELINE_DIR)
    assert base_info.ordinal and logits(base, x).shape == (3, 3)


def test_export_severity_metrics_hold_the_ordinal_metrics_with_intervals(severity_export):
    root, out, _ = severity_export
    metrics = _metrics(out)
    assert metrics["task"]["ordinal"] and metrics["task"]["classes"] == NAMES
    test = metrics["test"]
    split = json.loads(next((root / "splits").glob("split-*.json")).read_text())
    assert test["n"] == len(split["test"]) == sum(test["n_per_grade"]) and test["grades"] == NAMES
    assert not test["baseline_is_model"]
    for key in ("model", "baseline"):
        entry = test[key]
        for name in ("auc", "qwk", "mae"):
            interval = entry[name]
            assert interval["low"] <= interval["estimate"] <= interval["high"], (key, name)
            assert "200 resamples" in interval["method"]
        assert 0.0 <= entry["auc"]["estimate"] <= 1.0 and entry["mae"]["low"] >= 0.0
        assert entry["balanced_accuracy"] is None or 0.0 <= entry["balanced_accuracy"] <= 1.0
        assert "macro_auc" in entry
        cm = entry["confusion_matrix"]
        counts = np.array(cm["counts"])
        assert counts.shape == (4, 4) and counts.sum() == test["n"]
        assert counts.sum(axis=1).tolist() == test["n_per_grade"]
        assert np.allclose(np.array(cm["row_normalised"]).sum(axis=1)[counts.sum(axis=1) > 0], 1.0, atol=1e-4)
        assert [t["grade"] for t in entry["at_least"]] == NAMES[1:]
        for t in entry["at_least"]:
            if t["roc"] is not None:
                assert t["roc"]["fpr"][0] == 0.0 and t["roc"]["tpr"][-1] == 1.0
                assert len(t["roc"]["band"]["tpr_low"]) == len(t["roc"]["band"]["fpr"])
                assert t["auc"]["low"] <= t["auc"]["estimate"] <= t["auc"]["high"]
    difference = test["auc_difference"]
    gain = test["model"]["auc"]["estimate"] - test["baseline"]["auc"]["estimate"]
    assert difference["estimate"] == pytest.approx(gain)
    assert "paired" in difference["method"]
    assert metrics["selection"]["test_auc"] == test["model"]["auc"]["estimate"]


def test_export_severity_card_and_pictures_report_the_grading(severity_export):
    _, out, _ = severity_export
    assert {p.name for p in out.iterdir()} >= {*ORDINAL_FIGURES, "MODEL_CARD.md", "metrics.json", ONNX}
    assert not (out / "calibration.png").exists()
    card = (out / "MODEL_CARD.md").read_text()
    assert card.startswith("# Model card: severity grading CT-0 < CT-1 < CT-2 < CT-3/CT-4")
    links = re.findall(IMAGE_LINK, card)
    assert sorted(links) == sorted(ORDINAL_FIGURES)
    assert all((out / link).read_bytes().startswith(b"\x89PNG") for link in links)
    assert "quadratic weighted kappa" in card and "mean absolute error" in card and "ROC AUC of grade >= CT-2" in card
    assert "Difference in mean grade>=k AUC" in card
    # The routing decision of each grade; the pooled top grade lists CT-3's and CT-4's.
    assert f"| CT-1 | {ROUTING['CT-1']} |" in card
    assert f"| CT-3 or CT-4 | if CT-3: {ROUTING['CT-3']}; if CT-4: {ROUTING['CT-4']} |" in card


def test_export_severity_attaches_the_roc_the_confusion_matrix_and_grade_examples_to_the_study(severity_export):
    root, _, _ = severity_export
    study = optuna.load_study(study_name="lungct", storage=f"sqlite:///{root}/lungct.db")
    names = {m.filename for m in optuna.artifacts.get_all_artifact_meta(study)}
    assert {"export_trial1_roc.png", "export_trial1_confusion.png"} <= names
    examples = {n.removeprefix("export_trial1_") for n in names if n.startswith("export_trial1_saliency_")}
    # The surest correct scan of the lowest and of the highest grade, and the worst miss, where the test part has them.
    assert examples and examples <= {"saliency_lowest_grade.png", "saliency_highest_grade.png",
                                     "saliency_worst_miss.png"}
    exported = study.user_attrs["exported"]
    assert exported["trial"] == 1 and 0.0 <= exported["test"]["model"]["auc"]["estimate"] <= 1.0


def test_predict_on_the_exported_severity_folder_gives_a_grade_the_model_can_output(severity_export, tmp_path,
                                                                                    capsys):
    _, out, _ = severity_export
    scan = write_nifti(tmp_path / "s.nii.gz", synthetic_ct())
    assert predict.main([str(out), str(scan), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)["results"][0]
    assert result["predicted_grade"] in NAMES and list(result["grade_probabilities"]) == NAMES
    assert sum(result["grade_probabilities"].values()) == pytest.approx(1.0)


def test_export_severity_ensemble_ships_the_confirmations_ordinal_fold_models(severity_ensemble):
    out, model = severity_ensemble
    assert isinstance(model, Ensemble) and len(model.members) == FOLDS and model.grades == 4
    assert json.loads((out / "ensemble.json").read_text())["members"] == FOLDS
    x = fixed_input(SIZE, n=2, seed=5)
    expected = logits(model, x)
    reloaded, _, info = load_model(out)
    assert isinstance(reloaded, Ensemble) and info.ordinal and expected.shape == (2, 3)
    assert np.max(np.abs(logits(reloaded, x) - expected)) <= TOLERANCE
    assert np.max(np.abs(onnx_logits(out / ONNX, x) - expected)) <= TOLERANCE
    assert np.all(np.diff(torch.sigmoid(torch.from_numpy(expected)).numpy(), axis=1) < 0)
    metrics = _metrics(out)
    assert metrics["model"]["members"] == FOLDS and metrics["test"]["auc_difference"] is not None
    assert "ensemble of 2" in (out / "MODEL_CARD.md").read_text()
