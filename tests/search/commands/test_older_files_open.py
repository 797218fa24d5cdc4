"""A study and a model folder written by an older layout of search/ (before its layered subpackages) still open.

``data/pre_layers_study/prelayers.db`` was written by commit 5862755 (the last one before the move):
``python -m search.run --trials 3 --phantoms 40 --size 16 32 32 --epochs 1 --confirm-top 1
--confirm-epochs 1 --confirm-folds 2 --study prelayers --budget none``, confirmation included (it kept the
seed baseline). ``data/pre_layers_model/`` holds the JSON files and the card that ``search.export`` of that
commit wrote for it; its 5 MB of weights are not committed: the test writes the spec's freshly initialised
weights, whose file format (a safetensors state dict) the move did not touch.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import optuna
import torch
from safetensors.torch import save_file

from search import predict, report
from search.selection.confirm import stored_decision
from search.selection.settings import RunSettings
from space import ArchSpec, build

DATA = Path(__file__).resolve().parent / "data"


def _old_study(tmp_path: Path) -> Path:
    studies = tmp_path / "studies"
    studies.mkdir()
    shutil.copy(DATA / "pre_layers_study" / "prelayers.db", studies / "prelayers.db")
    return studies


def _within(stored, read) -> bool:
    """Every field of ``stored`` is in ``read`` with the same value (``read`` may add fields an older file lacks)."""
    if isinstance(stored, dict):
        return isinstance(read, dict) and all(k in read and _within(v, read[k]) for k, v in stored.items())
    if isinstance(stored, list):
        return isinstance(read, list) and len(stored) == len(read) and all(map(_within, stored, read))
    return stored == read


def test_pre_layers_study_settings_and_decision_read_as_they_were_stored(tmp_path):
    studies = _old_study(tmp_path)
    study = optuna.load_study(study_name="prelayers", storage=f"sqlite:///{studies}/prelayers.db")
    settings = RunSettings.from_dict(study.user_attrs["settings"])
    assert (settings.size, settings.epochs, settings.n_phantoms) == ((16, 32, 32), 1, 40)
    assert settings.to_dict() == study.user_attrs["settings"]  # nothing added, nothing lost
    decision = stored_decision(study)
    stored = study.user_attrs["confirmation"]
    assert decision.recommended.baseline and _within(stored, decision.to_dict())  # every stored field, as it was
    # What that lungct-nas did not store reads as the rule it ran: one look, a bound above 0, scan noise only.
    assert (decision.settings.margin, decision.settings.seed_sd, decision.settings.second_repeat) == (0.0, 0.0, False)
    assert len(study.trials) == 3


def test_pre_layers_study_reports(tmp_path):
    studies = _old_study(tmp_path)
    assert report.main(["--study", "prelayers", "--studies-dir", str(studies)]) == 0
    page = (studies / "prelayers" / "report.html").read_text()
    assert "Confirmation" in page and "trial" in page


def test_pre_layers_model_folder_predicts(tmp_path, real_ct_dir, capsys):
    folder = tmp_path / "model"
    shutil.copytree(DATA / "pre_layers_model", folder)
    spec = ArchSpec.from_dict(json.loads((folder / "spec.json").read_text()))
    torch.manual_seed(0)
    state = {k: v.contiguous() for k, v in build(spec).state_dict().items()}
    save_file(state, str(folder / "weights.safetensors"), metadata={"format": "lungct-nas", "spec": spec.to_json(None)})
    assert predict.main([str(folder), str(real_ct_dir / "example_ct.nii.gz"), "--json"]) == 0
    (result,) = json.loads(capsys.readouterr().out)["results"]
    assert 0.0 <= result["probability"] <= 1.0 and result["decision"]
