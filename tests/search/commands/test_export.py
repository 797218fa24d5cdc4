import copy
import json
import os
import re
import stat
import sys
from pathlib import Path

import numpy as np
import optuna
import pytest
import torch
from optuna.artifacts import FileSystemArtifactStore, download_artifact
from optuna_dashboard._note import get_note_from_system_attrs
from safetensors.torch import load_file

import search
import search.shipping.export
from lungct.records import PreprocessConfig
from search import run
from search.export import BASELINE_DIR, main
from search.model.folder import (
    ONNX,
    Ensemble,
    ModelDirError,
    build_model,
    fixed_input,
    load_model,
    logits,
    onnx_logits,
)
from search.shipping.figures import CONFUSION_PNG, FIGURES
from search.training.data import prepare_data
from search.training.loop import recalibrate_batchnorm
from search.training.precision import PRECISION_ENV
from space import ArchSpec, build
from tests.conftest import make_mosmed

SIZE = (16, 16, 32)  # the seed baseline's four levels fit ('same' padding)
SECRET = "s3cret"
FILES = {"spec.json", "train_spec.json", "weights.safetensors", "model.onnx", "preprocess.json", "metrics.json",
         "MODEL_CARD.md", "roc.png", "calibration.png", "confusion.png", "bundle"}
IMAGE_LINK = r"!\[[^\]]+\]\(([^)]+)\)"  # a Markdown image: ![alt](target)
FOLDS = 3  # the confirmation's default folds: export --ensemble ships that many fold models


def _recommend_a_searched_spec(study: optuna.Study) -> None:
    """Make the confirmation's recommendation a searched spec, as a real decision stores it.

    On 20 scans at 1 epoch every model is noise, and the rule keeps the seed baseline; the export tests need
    a searched recommendation (a baseline/ folder beside it, fold models to ensemble) whatever the noise did.
    """
    decision = study.user_attrs["confirmation"]
    if not decision["recommended"]["baseline"]:
        return
    row = next(r for r in decision["candidates"] if not r["baseline"] and r["members"])
    decision["recommended"] = {"key": row["key"], "trial": row["trial"], "baseline": False,
                               "confirmed": row["confirmed"], "spec": row["spec"], "train_spec": row["train_spec"],
                               "members": row["members"], "why": "set by the test", "verdict": "significantly better"}
    study.set_user_attr("confirmation", decision)


@pytest.fixture(scope="module")
def exported(tiny_data, tmp_path_factory):
    """A 3-trial study, exported once; also the in-memory model that export wrote to disk.

    The study's storage URL carries a password in its query, which nothing written may show.
    """
    root = tmp_path_factory.mktemp("export-study")
    storage = f"sqlite:///{root}/lungct.db?password={SECRET}"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(PRECISION_ENV, "float32")
        assert run.main(["--size", *map(str, SIZE), "--epochs", "1", "--trials", "3", "--workers", "1",
                         "--studies-dir", str(root), "--data", str(tiny_data), "--storage", storage]) == 0
        _recommend_a_searched_spec(optuna.load_study(study_name="lungct", storage=storage))
        saved = []
        real_save = search.shipping.export.save_model

        def keep_model(directory, model, *args):
            saved.append(model)
            real_save(directory, model, *args)

        mp.setattr(search.shipping.export, "save_model", keep_model)
        assert main(["--studies-dir", str(root), "--workers", "1", "--storage", storage]) == 0
    return root, root / "lungct" / "model", saved[0]


@pytest.fixture(scope="module")
def ensembled(exported):
    """The same study exported with --ensemble: the confirmation's fold models, and that in-memory ensemble."""
    root, _, _ = exported
    out = root / "ensemble"
    saved = []
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(PRECISION_ENV, "float32")
        real_save = search.shipping.export.save_model

        def keep_model(directory, model, *args):
            saved.append(model)
            real_save(directory, model, *args)

        mp.setattr(search.shipping.export, "save_model", keep_model)
        assert main(["--studies-dir", str(root), "--workers", "1", "--storage", f"sqlite:///{root}/lungct.db",
                     "--ensemble", "--out", str(out)]) == 0
    return out, saved[0]


def test_export_writes_every_file_of_the_model_folder(exported):
    _, out, _ = exported
    metrics = json.loads((out / "metrics.json").read_text())
    names = {p.name for p in out.iterdir()}
    assert names - {BASELINE_DIR} == FILES
    # The baseline trained beside a searched model is a model folder of its own, for scoring on new scans.
    assert (BASELINE_DIR in names) == (not metrics["selection"]["is_baseline"])
    # The MONAI bundle of the shipped model (tests/search/shipping/test_bundle.py runs it): its models/ is the
    # folder's own spec and weights.
    bundle = out / "bundle"
    for name in ("configs/metadata.json", "configs/inference.json", "models/model.pt", "docs/README.md"):
        assert (bundle / name).is_file(), name
    assert (bundle / "models" / "weights.safetensors").read_bytes() == (out / "weights.safetensors").read_bytes()
    meta = json.loads((bundle / "configs" / "metadata.json").read_text())
    assert f'"task": "{metrics["task"]["name"]}"' in json.dumps(meta)


def test_export_trains_the_confirmations_recommendation_for_its_epochs(exported):
    root, out, _ = exported
    study = optuna.load_study(study_name="lungct", storage=f"sqlite:///{root}/lungct.db")
    decision = study.user_attrs["confirmation"]
    metrics = json.loads((out / "metrics.json").read_text())
    selection = metrics["selection"]
    assert selection["how"].startswith("the confirmation's recommendation")
    assert selection["is_baseline"] == decision["recommended"]["baseline"]
    assert json.loads((out / "spec.json").read_text()) == decision["recommended"]["spec"]
    assert metrics["model"]["epochs"] == decision["settings"]["epochs"] == 2  # 2x the search's --epochs 1
    assert selection["confirmed_score"] == decision["recommended"]["confirmed"]
    assert selection["optimism"] == pytest.approx(selection["confirmed_score"] - selection["test_auc"])
    assert "## How this model was chosen" in (out / "MODEL_CARD.md").read_text()


def test_export_ensemble_ships_the_confirmations_fold_models_of_the_recommendation(exported, ensembled):
    root, _, _ = exported
    out, model = ensembled
    study = optuna.load_study(study_name="lungct", storage=f"sqlite:///{root}/lungct.db")
    decision = study.user_attrs["confirmation"]
    ids = decision["recommended"]["members"]
    assert isinstance(model, Ensemble) and len(model.members) == len(ids) == FOLDS
    assert json.loads((out / "ensemble.json").read_text())["members"] == FOLDS
    store = FileSystemArtifactStore(str(root / "lungct-artifacts"))
    for i, (member, artifact) in enumerate(zip(model.members, ids, strict=True)):
        path = root / f"member{i}.safetensors"
        download_artifact(artifact_store=store, file_path=str(path), artifact_id=artifact)
        kept = load_file(str(path))
        # Bit for bit the weights the confirmation trained and scored for this fold.
        for name, value in member.state_dict().items():
            assert torch.equal(value, kept[name]), name
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["model"]["members"] == FOLDS and metrics["training"]["mode"] == "confirmation fold models"
    assert "ensemble of 3 fold models" in metrics["training"]["data"]
    assert "An ensemble of 3 copies" in (out / "MODEL_CARD.md").read_text()
    assert not metrics["selection"]["is_baseline"]  # the tiny study recommends a searched spec
    # Beside it, the seed model as the course trains it: one model on all train+val scans.
    assert not (out / BASELINE_DIR / "ensemble.json").exists() and metrics["baseline"]["members"] == 1
    assert metrics["baseline"]["epochs"] == decision["settings"]["epochs"]


def test_export_ensemble_of_a_kept_seed_baseline_trains_it_on_all_train_and_validation_scans(exported, tmp_path):
    root, _, _ = exported
    db = tmp_path / "kept.db"
    db.write_bytes((root / "lungct.db").read_bytes())
    study = optuna.load_study(study_name="lungct", storage=f"sqlite:///{db}")
    decision = copy.deepcopy(study.user_attrs["confirmation"])
    base_row = next(r for r in decision["candidates"] if r["baseline"])
    decision["recommended"] = {"key": "baseline", "trial": base_row["trial"], "baseline": True,
                               "confirmed": base_row["confirmed"], "spec": base_row["spec"],
                               "train_spec": base_row["train_spec"], "members": base_row["members"], "why": "kept"}
    study.set_user_attr("confirmation", decision)
    out = tmp_path / "m"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(PRECISION_ENV, "float32")
        assert main(["--studies-dir", str(root), "--workers", "1", "--storage", f"sqlite:///{db}", "--ensemble",
                     "--out", str(out)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["selection"]["is_baseline"] and metrics["test"]["baseline_is_model"]
    assert not (out / "ensemble.json").exists() and not (out / BASELINE_DIR).exists()
    assert metrics["model"]["members"] == 1 and metrics["training"]["data"] == "train + validation parts"


def test_export_trains_one_model_on_train_and_validation_by_default(exported):
    root, out, model = exported
    assert not isinstance(model, Ensemble) and not (out / "ensemble.json").exists()
    metrics = json.loads((out / "metrics.json").read_text())
    study = optuna.load_study(study_name="lungct", storage=f"sqlite:///{root}/lungct.db")
    assert metrics["model"]["members"] == 1 and metrics["training"]["mode"] == "trained on train + validation"
    assert metrics["model"]["epochs"] == study.user_attrs["confirmation"]["settings"]["epochs"]
    assert json.loads((out / "spec.json").read_text()) == study.user_attrs["confirmation"]["recommended"]["spec"]


@pytest.mark.parametrize("flags, first, other", [(["--epochs", "3"], "--epochs", "--ensemble"),
                                                  (["--trial", "1"], "--ensemble", "--trial")])
def test_export_ensemble_with_a_conflicting_flag_is_a_one_line_error(exported, tmp_path, capsys, flags, first,
                                                                       other):
    root, _, _ = exported
    assert main(["--studies-dir", str(root), "--workers", "1", "--out", str(tmp_path / "m"), "--ensemble",
                 *flags]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {first}") and other in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "m").exists()


def test_export_of_a_confirmation_without_fold_models_asks_for_a_rerun_or_refit(exported, tmp_path, capsys):
    root, _, _ = exported
    db = tmp_path / "old.db"
    db.write_bytes((root / "lungct.db").read_bytes())
    study = optuna.load_study(study_name="lungct", storage=f"sqlite:///{db}")
    decision = copy.deepcopy(study.user_attrs["confirmation"])
    decision["recommended"].pop("members")  # what a confirmation of an older lungct-nas stored
    study.set_user_attr("confirmation", decision)
    assert main(["--studies-dir", str(root), "--workers", "1", "--storage", f"sqlite:///{db}", "--ensemble",
                 "--out", str(tmp_path / "m")]) == 2
    err = capsys.readouterr().err
    assert "kept no fold models" in err and "--confirm-only" in err and "without --ensemble" in err
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "m").exists()


def test_export_recomputes_batch_norm_statistics_over_the_training_scans(exported, tiny_data):
    root, out, model = exported
    metrics = json.loads((out / "metrics.json").read_text())
    assert "recomputed over the training scans" in metrics["training"]["batchnorm_statistics"]
    trainval = prepare_data(tiny_data, PreprocessConfig(size=SIZE), studies_dir=root, workers=1,
                            progress=False).tensors("train", "val")
    again = copy.deepcopy(model)
    batch = json.loads((out / "train_spec.json").read_text())["batch_size"]
    assert recalibrate_batchnorm(again, trainval, torch.device("cpu"), batch)
    # Recomputing over the same scans changes nothing: what was written already holds those statistics.
    for (name, value), (_, redone) in zip(model.state_dict().items(), again.state_dict().items(), strict=True):
        if name.endswith(("running_mean", "running_var")):
            assert torch.allclose(value, redone, rtol=1e-4, atol=1e-6), name


def test_export_without_a_confirmation_is_a_one_line_error(tiny_data, tmp_path, capsys):
    assert run.main(["--size", *map(str, SIZE), "--epochs", "1", "--trials", "1", "--workers", "1", "--no-confirm",
                     "--studies-dir", str(tmp_path), "--data", str(tiny_data)]) == 0
    capsys.readouterr()
    assert main(["--studies-dir", str(tmp_path), "--workers", "1"]) == 2
    err = capsys.readouterr().err
    assert "has no confirmation yet" in err and "--confirm-only" in err and len(err.strip().splitlines()) == 1


def test_export_weights_load_strictly_into_the_rebuilt_spec(exported, ensembled):
    _, single, _ = exported
    ensemble, _ = ensembled
    spec = ArchSpec.from_json((single / "spec.json").read_text())
    model = build(spec)
    state = load_file(str(single / "weights.safetensors"))
    assert not any(k.startswith("members.") for k in state)
    # Batch-norm running statistics are buffers, not parameters; they must travel with the weights.
    assert any(k.endswith("running_mean") for k in state) == (spec.norm == "batch")
    model.load_state_dict(state, strict=True)
    model = build_model(spec, FOLDS)
    state = load_file(str(ensemble / "weights.safetensors"))
    # Batch-norm running statistics are buffers, not parameters; they must travel with the weights.
    assert any(k.endswith("running_mean") for k in state) == (spec.norm == "batch")
    model.load_state_dict(state, strict=True)


def test_export_reloaded_weights_and_onnx_match_the_in_memory_model(exported):
    _, out, in_memory = exported
    x = fixed_input(SIZE, n=3, seed=7)
    expected = logits(in_memory, x)
    reloaded, _, _ = load_model(out)
    assert np.max(np.abs(logits(reloaded, x) - expected)) <= 1e-4
    assert np.max(np.abs(onnx_logits(out / ONNX, x) - expected)) <= 1e-4


def test_export_metrics_hold_the_test_auc_inside_its_confidence_interval(exported):
    _, out, _ = exported
    metrics = json.loads((out / "metrics.json").read_text())
    auc = metrics["test"]["model"]["auc"]
    assert 0.0 <= auc["low"] <= auc["estimate"] <= auc["high"] <= 1.0
    assert "2000 resamples" in auc["method"]
    cm = metrics["test"]["model"]["confusion_matrix"]
    assert sum(cm.values()) == metrics["test"]["n"]


def test_export_model_folder_holds_no_local_path_scan_id_or_password(exported, tiny_data):
    root, out, _ = exported
    split = json.loads(next((root / "splits").glob("split-*.json")).read_text())
    ids = split["train"] + split["val"] + split["test"]
    local = [str(root), str(tiny_data), str(Path(search.__file__).resolve().parents[1]), sys.prefix]
    files = [p for p in out.rglob("*") if p.is_file()]
    assert {p.name for p in files} >= FILES - {"bundle"}  # the bundle is a folder: its files are read below
    assert any(p.parent.name == "configs" for p in files)
    for path in files:
        text = path.read_bytes().decode("utf-8", errors="replace")
        assert SECRET not in text, path
        assert not [p for p in local if p in text], path
        assert not [i for i in ids if i in text], path
    metrics = json.loads((out / "metrics.json").read_text())
    assert "test_predictions" not in metrics and "test_ids" not in metrics["data"]
    assert metrics["data"]["root"] == tiny_data.name and metrics["study"]["settings"]["data"] == tiny_data.name
    assert metrics["study"]["storage"] == "sqlite:///lungct.db?password=***"
    assert metrics["test"]["n"] == len(split["test"])  # counts and metrics stay


def test_export_model_card_links_every_picture_in_the_folder(exported, ensembled):
    for out in (exported[1], ensembled[0]):
        card = (out / "MODEL_CARD.md").read_text()
        links = re.findall(IMAGE_LINK, card)
        assert all((out / link).read_bytes().startswith(b"\x89PNG") for link in links), out.name
        # All three sit in the section that reports the locked test part, followed by the small-test warning.
        evaluation = card.split("## Locked test evaluation")[1].split("## Provenance")[0]
        assert sorted(re.findall(IMAGE_LINK, evaluation)) == sorted(links) == sorted(FIGURES), out.name
        assert "are wide" in evaluation.split(f"({CONFUSION_PNG})")[1]
        assert all(f"`{name}`" in card.split("## Files")[1] for name in FIGURES), out.name


def test_export_metrics_hold_the_curves_behind_the_pictures_and_no_study_id(exported, tiny_data):
    root, out, _ = exported
    metrics = json.loads((out / "metrics.json").read_text())
    split = json.loads(next((root / "splits").glob("split-*.json")).read_text())
    test = metrics["test"]
    for key in ("model", "baseline"):
        entry = test[key]
        assert entry["roc"]["fpr"][0] == 0.0 and entry["roc"]["tpr"][-1] == 1.0
        assert len(entry["roc"]["band"]["tpr_low"]) == len(entry["roc"]["band"]["fpr"])
        assert "2000 stratified bootstrap resamples" in entry["roc"]["band"]["method"]
        assert sum(b["n"] for b in entry["calibration"]["bins"]) == test["n"]
        assert 0.0 <= entry["brier_score"] <= 1.0
    text = json.dumps(test)
    assert not [i for i in split["train"] + split["val"] + split["test"] if i in text]


def test_export_include_scan_ids_adds_the_held_out_scans_with_both_models_probabilities(exported, tmp_path,
                                                                                      monkeypatch):
    root, _, _ = exported
    monkeypatch.setenv(PRECISION_ENV, "float32")
    out = tmp_path / "with-ids"
    assert main(["--studies-dir", str(root), "--workers", "1", "--out", str(out), "--include-scan-ids"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    split = json.loads(next((root / "splits").glob("split-*.json")).read_text())
    ids = [row["study_id"] for row in metrics["test_predictions"]]
    assert sorted(ids) == sorted(split["test"]) == sorted(metrics["data"]["test_ids"])
    assert not set(ids) & set(split["train"] + split["val"])
    assert metrics["test"]["baseline"] is not None and metrics["test"]["auc_difference"] is not None
    assert all(row["p_baseline"] is not None for row in metrics["test_predictions"])
    assert "as asked for by --include-scan-ids" in (out / "MODEL_CARD.md").read_text()


def test_export_help_states_the_include_scan_ids_flag(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    assert "--include-scan-ids" in capsys.readouterr().out


def test_export_refuses_an_onnx_file_that_disagrees_with_the_weights(exported, tmp_path, monkeypatch, capsys):
    root, _, _ = exported
    monkeypatch.setenv(PRECISION_ENV, "float32")
    real_export_onnx = search.shipping.export.export_onnx

    def export_another_model(model, size, path):  # an ONNX file of other weights than weights.safetensors
        other = copy.deepcopy(model)
        with torch.no_grad():
            other.head.out.bias.add_(1.0)
        real_export_onnx(other, size, path)

    monkeypatch.setattr(search.shipping.export, "export_onnx", export_another_model)
    out = tmp_path / "m"
    assert main(["--studies-dir", str(root), "--workers", "1", "--out", str(out), "--epochs", "1"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: model.onnx: reloaded output differs from the trained model by 1.00e+00")
    assert "not trustworthy" in err and len(err.strip().splitlines()) == 1
    assert not out.exists() and not list(tmp_path.glob(".m.tmp.*"))  # nothing written, nothing left behind


def test_export_model_card_states_limits_and_provenance(exported):
    _, out, _ = exported
    card = (out / "MODEL_CARD.md").read_text()
    metrics = json.loads((out / "metrics.json").read_text())
    assert "not a medical device" in card and "study 'lungct'" in card
    assert f"trial {metrics['model']['trial']}" in card and "torch 2." in card and "95% CI" in card


def test_export_refuses_to_replace_an_earlier_export_without_force(exported, capsys):
    root, out, _ = exported
    before = (out / "weights.safetensors").read_bytes()
    assert main(["--studies-dir", str(root)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --out:") and "--force" in err and len(err.strip().splitlines()) == 1
    assert (out / "weights.safetensors").read_bytes() == before


def test_export_never_replaces_a_folder_that_is_not_an_export(exported, tmp_path, capsys):
    root, _, _ = exported
    (tmp_path / "notes.txt").write_text("mine")
    assert main(["--studies-dir", str(root), "--out", str(tmp_path), "--force"]) == 2
    assert "holds no exported model" in capsys.readouterr().err
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_export_refuses_other_data_than_the_study_searched_on(exported, tmp_path, capsys):
    root, _, _ = exported
    other = make_mosmed(tmp_path / "other", {"CT-0": 7, "CT-2": 7})
    assert main(["--studies-dir", str(root), "--data", str(other), "--out", str(tmp_path / "m"), "--workers", "1"]) == 2
    err = capsys.readouterr().err
    assert "is not the data set study 'lungct' searched on" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "m").exists()


def test_export_load_model_never_calls_torch_load(exported, monkeypatch):
    _, out, _ = exported

    def no_pickles(*args, **kwargs):
        raise AssertionError("torch.load called")

    monkeypatch.setattr(torch, "load", no_pickles)
    model, config, info = load_model(out)
    assert config.size == SIZE and info.classes == ("CT-0", "CT-2 or CT-3") and not model.training


def test_export_load_model_rejects_weights_of_another_spec(exported, tmp_path):
    _, out, _ = exported
    for name in ("weights.safetensors", "preprocess.json"):
        (tmp_path / name).write_bytes((out / name).read_bytes())
    spec = json.loads((out / "spec.json").read_text())
    spec["levels"][0]["filters"] += 1
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    with pytest.raises(ModelDirError, match=r"weights\.safetensors: does not match spec\.json"):
        load_model(tmp_path)


def test_export_folder_and_its_baseline_subfolder_are_readable_by_everyone_the_umask_allows(exported, ensembled):
    umask = os.umask(0)
    os.umask(umask)
    for folder in (exported[1], ensembled[0]):
        for path in [folder, *folder.rglob("*")]:
            mode = stat.S_IMODE(path.stat().st_mode)
            assert mode == (0o777 if path.is_dir() else 0o666) & ~umask, path
    assert any(p.is_dir() for f in (exported[1], ensembled[0]) for p in f.iterdir())  # a baseline/ was checked


def test_export_attaches_roc_calibration_and_saliency_examples_to_the_study_named_after_the_trial(exported,
                                                                                                  tmp_path):
    root, out, _ = exported
    metrics = json.loads((out / "metrics.json").read_text())
    storage = optuna.storages.RDBStorage(f"sqlite:///{root}/lungct.db")
    study = optuna.load_study(study_name="lungct", storage=storage)
    prefix = f"export_trial{metrics['model']['trial']}_"
    metas = optuna.artifacts.get_all_artifact_meta(study)
    names = {m.filename for m in metas}
    assert {f"{prefix}roc.png", f"{prefix}calibration.png"} <= names
    examples = sorted(name.removeprefix(prefix) for name in names if name.startswith(f"{prefix}saliency_"))
    # One per outcome the test part had: TP or FN for the positives, FP or TN for the negatives.
    assert 2 <= len(examples) <= 4 and set(examples) <= {f"saliency_{o}.png" for o in
                                                         ("true_positive", "false_negative", "false_positive",
                                                          "true_negative")}
    store = FileSystemArtifactStore(str(root / "lungct-artifacts"))
    rocs = []
    for i, meta in enumerate(m for m in metas if m.filename in (f"{prefix}roc.png", f"{prefix}{examples[0]}")):
        path = tmp_path / f"{i}.png"
        download_artifact(artifact_store=store, file_path=str(path), artifact_id=meta.artifact_id)
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        rocs += [path.read_bytes()] if meta.filename.endswith("roc.png") else []
    # Other tests export this study again; each export attaches its own pictures, the folder's among them.
    assert (out / "roc.png").read_bytes() in rocs
    assert not any(p.name.startswith("saliency") for p in out.rglob("*"))  # scans stay out of the shared folder


def test_export_records_what_it_shipped_on_the_study_and_its_dashboard_note(exported):
    root, _, _ = exported
    study = optuna.load_study(study_name="lungct", storage=f"sqlite:///{root}/lungct.db")
    shipped = study.user_attrs["exported"]  # the last export of this study (other tests here export it again)
    metrics = json.loads((Path(shipped["folder"]) / "metrics.json").read_text())
    assert shipped["test"]["model"]["auc"] == metrics["test"]["model"]["auc"]
    note = get_note_from_system_attrs(study._storage.get_study_system_attrs(study._study_id), None)["body"]
    assert "### Export" in note and f"({metrics['test']['n']} scans, evaluated once): AUC" in note
