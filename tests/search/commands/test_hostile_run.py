"""Hostile scans through the search's own commands: ``search.run --data`` and ``search.predict``.

The bad files are the malformed headers of tests/lungct/test_hostile_inputs.py, generated beside good
scans. A search skips them with their reason and trains on the rest; ``predict`` answers each with one
line naming the file and still predicts the good scan beside it.
"""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest

from lungct.discover import discover
from search.predict import main as predict
from search.run import main as run
from tests.conftest import make_mosmed, synthetic_ct, write_nifti
from tests.lungct.test_hostile_inputs import MALFORMED, bad_scan
from tests.search.commands.test_predict import _model_dir
from tests.search.conftest import locked_test_part

# Headers that used to crash a search or allocate gigabytes: a zero affine, NaN voxel size, a 4000^3 claim.
CASES = ("zero_affine", "nan_pixdim", "claims_4000_cubed", "nan_sform")


@pytest.fixture(scope="module")
def hostile_data(tmp_path_factory):
    """24 good scans in the MosMedData layout (no registry), plus one malformed scan per case."""
    root = make_mosmed(tmp_path_factory.mktemp("hostile"), {"CT-0": 12, "CT-2": 12}, registry=False)
    for case in CASES:
        bad_scan(root / "studies" / "CT-0" / f"bad_{case}.nii.gz", **MALFORMED[case][0])
    return root


def test_run_skips_malformed_scans_and_searches_on_the_rest(hostile_data, tmp_path, capsys):
    code = run(["--data", str(hostile_data), "--studies-dir", str(tmp_path), "--trials", "1", "--epochs", "1",
                "--size", "16", "16", "32", "--workers", "1", "--no-confirm"])
    out, err = capsys.readouterr()
    assert code == 0 and "Traceback" not in out + err
    study = optuna.load_study(study_name="lungct", storage=f"sqlite:///{tmp_path}/lungct.db")
    assert study.trials[0].state == optuna.trial.TrialState.COMPLETE
    # The search never reads the locked test part, so a bad scan the split put there is not seen (nor counted).
    test_ids, _ = locked_test_part(tmp_path, hostile_data)
    bad_ids = {r.study_id for r in discover(hostile_data, "course").records if Path(r.path).name.startswith("bad_")}
    seen_bad = len(bad_ids - test_ids)
    assert seen_bad >= 1 and f"{seen_bad} skipped" in out  # the data line counts them
    summary = study.user_attrs["data_summary"]
    assert summary["skipped"] == seen_bad
    assert summary["n_train"] + summary["n_val"] == 24 + len(CASES) - len(test_ids)  # the split's parts


@pytest.mark.parametrize("case", CASES)
def test_predict_malformed_scan_is_one_line_naming_it_and_the_good_scan_is_still_predicted(case, tmp_path,
                                                                                          capsys):
    model = _model_dir(tmp_path / "model")
    bad = bad_scan(tmp_path / f"{case}.nii.gz", **MALFORMED[case][0])
    good = write_nifti(tmp_path / "good.nii.gz", synthetic_ct())
    assert predict([str(model), str(bad), str(good)]) == 1
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and str(bad) in lines[0] and MALFORMED[case][1] in lines[0]
    assert str(good) in out and str(bad) not in out
