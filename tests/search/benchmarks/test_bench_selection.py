"""benchmarks/bench_selection.py: scoring exported model folders on fresh phantoms, on a tiny set."""

import json
import math
from pathlib import Path

import pytest
import torch

from lungct.phantom import MARKER_NAME
from lungct.records import PreprocessConfig, get_task
from search.model.folder import ModelInfo, save_model
from space import ArchSpec, LevelSpec, TrainSpec, build
from tests.search.conftest import load_benchmark

N = 16  # 6 CT-0, 6 CT-2/CT-3, 4 excluded by the course task
FAST = ["--n", str(N), "--matrix", "64", "--bootstrap", "200", "--workers", "1"]



bench = load_benchmark("bench_selection")


def _model_dir(path: Path, seed: int, config: PreprocessConfig) -> Path:
    """A model folder as search.export writes it, with untrained weights (no ONNX file: not read here)."""
    spec = ArchSpec(levels=(LevelSpec(4), LevelSpec(8)), padding="same", head_units=(8,))
    torch.manual_seed(seed)
    save_model(path, build(spec).eval(), spec, TrainSpec(), ModelInfo.for_task(get_task("course"), config))
    return path


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    # Different sizes and windows, so each folder's own preprocessing must be used.
    a = _model_dir(root / "a", 0, PreprocessConfig(size=(16, 24, 20)))
    b = _model_dir(root / "b", 1, PreprocessConfig(size=(12, 20, 24), hu_min=-1100.0, hu_max=300.0))
    return a, b


@pytest.fixture(scope="module")
def result(models, tmp_path_factory):
    """One small run over both folders, its JSON and its cache folder."""
    out = tmp_path_factory.mktemp("bench")
    a, b = models
    code = bench.main([str(a), str(b), *FAST, "--cache-dir", str(out / "fresh"), "--json", str(out / "r.json")])
    return code, json.loads((out / "r.json").read_text()), out / "fresh"


def test_bench_selection_small_run_exits_zero(result):
    assert result[0] == 0


def test_bench_selection_aucs_are_finite_and_in_the_unit_interval(result, models):
    _, data, _ = result
    assert [m["dir"] for m in data["models"]] == [str(d) for d in models]
    for m in data["models"]:
        auc = m["fresh_auc"]
        assert all(math.isfinite(auc[k]) and 0.0 <= auc[k] <= 1.0 for k in ("estimate", "low", "high"))
        assert auc["low"] <= auc["estimate"] <= auc["high"]
        assert (m["n_negative"], m["n_positive"]) == (6, 6) and len(m["predictions"]) == 12


def test_bench_selection_models_use_their_own_input_size(result):
    sizes = [m["preprocess"]["size"] for m in result[1]["models"]]
    assert sizes == [[16, 24, 20], [12, 20, 24]]


def test_bench_selection_difference_interval_brackets_the_difference_of_aucs(result):
    _, data, _ = result
    a, b = data["models"]
    [c] = data["comparisons"]
    assert (c["model"], c["reference"], c["n"]) == (b["dir"], a["dir"], 12)
    d = c["difference"]
    assert d["low"] <= d["estimate"] <= d["high"]
    assert d["estimate"] == pytest.approx(b["fresh_auc"]["estimate"] - a["fresh_auc"]["estimate"])
    assert c["verdict"] == bench.verdict(bench.Interval(**d))


def test_bench_selection_reuses_a_complete_fresh_set(result, models, tmp_path):
    _, _, cache = result
    marker = bench.fresh_set_dir(cache, bench.DEFAULT_PHANTOM_SEED, N, 64) / "phantoms" / MARKER_NAME
    before = marker.stat().st_mtime_ns
    assert bench.main([str(models[0]), *FAST, "--cache-dir", str(cache), "--json", str(tmp_path / "r.json")]) == 0
    assert marker.stat().st_mtime_ns == before
    assert json.loads((tmp_path / "r.json").read_text())["fresh_set"]["generated"] is False


def test_bench_selection_phantom_seed_zero_is_a_one_line_error(models, tmp_path, capsys):
    code = bench.main([str(models[0]), *FAST, "--phantom-seed", "0", "--cache-dir", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: --phantom-seed: 0 ") and len(err.strip().splitlines()) == 1
    assert not any(tmp_path.iterdir())


def test_bench_selection_missing_model_dir_is_a_one_line_error(models, tmp_path, capsys):
    missing = tmp_path / "nope"
    code = bench.main([str(models[0]), str(missing), *FAST, "--cache-dir", str(tmp_path / "fresh")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err[-1] == f"error: {missing}: no such folder" and "Traceback" not in "\n".join(err)
    assert not (tmp_path / "fresh").exists()


def test_bench_selection_bad_flag_is_a_one_line_error(models, capsys):
    assert bench.main([str(models[0]), "--n", "many"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: argument --n: invalid int value") and len(err.strip().splitlines()) == 1


def test_ordinal_figures_bracket_their_estimates_and_a_paired_difference_sees_a_worse_model():
    import numpy as np
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 4, 120)
    cuts = np.array([0.5, 1.5, 2.5])

    def cumulative(noise):
        z = labels + rng.normal(0, noise, labels.size)
        return 1 / (1 + np.exp(-(z[:, None] - cuts)))

    good, bad = cumulative(0.5), cumulative(2.5)
    figures = bench.ordinal_figures(labels, good, 200)
    for name in bench.ORDINAL_FIGURES:
        f = figures[name]
        assert f["low"] <= f["estimate"] <= f["high"], name
    assert len(figures["confusion"]) == 4 and sum(map(sum, figures["confusion"])) == 120
    paired = bench.ordinal_figures(labels, good, 200, others=bad)
    assert paired["qwk"]["low"] > 0 and paired["mae"]["high"] < 0  # better kappa, fewer grades off
