import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from matplotlib.text import Text
from PIL import Image
from sklearn.metrics import roc_auc_score, roc_curve

from search.export import evaluate
from search.shipping.figures import (
    FIGURES,
    curve_metrics,
    draw_calibration,
    draw_confusion,
    draw_roc,
    tpr_on_grid,
    write_model_figures,
)
from search.stats.intervals import stratified_resamples
from search.stats.metrics import binary_metrics

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
RESAMPLES = 200  # export's default is 2000; the band's logic is the same at 200, in a tenth of the time
CLASSES = ["CT-0", "CT-2 or CT-3"]


def _scores(n: int, separation: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Balanced labels and probabilities whose logits differ by ``separation`` between the classes."""
    rng = np.random.default_rng(seed)
    labels = np.r_[np.zeros(n // 2, int), np.ones(n - n // 2, int)]
    return labels, 1 / (1 + np.exp(-rng.normal(separation * (labels - 0.5), 1.0)))


def _metrics(labels, p_model, p_base=None, baseline_is_model=False) -> dict:
    """The parts of a metrics.json dict the figures read, with the test entry made by export's ``evaluate``."""
    def trained(p):
        return SimpleNamespace(probs=np.asarray(p, dtype=float), metrics=binary_metrics(labels, p))

    model = trained(p_model)
    base = model if baseline_is_model else (trained(p_base) if p_base is not None else None)
    test = evaluate(model, base, SimpleNamespace(labels=torch.tensor(labels)), RESAMPLES, seed=0)
    return {"test": test, "task": {"classes": CLASSES, "threshold": 0.5}, "model": {"trial": 2, "members": 1},
            "data": {"phantoms": True}, "baseline": {"note": None if base else "cannot run at 8x8x8"}}


@pytest.fixture(scope="module")
def drawn(tmp_path_factory):
    """Figures of a model and a weaker baseline, drawn for 20 and for 200 test scans: {n: (metrics, files)}."""
    out = {}
    for n in (20, 200):
        labels, p_model = _scores(n, 2.0, seed=n)
        _, p_base = _scores(n, 1.0, seed=n + 1)
        metrics = _metrics(labels, p_model, p_base)
        out[n] = metrics, write_model_figures(metrics, tmp_path_factory.mktemp(f"figures{n}"))
    return out


def _panels(fig) -> list[str]:
    """The titles of a figure's panels (one titled axes per model)."""
    return [ax.get_title() for ax in fig.axes if ax.get_title()]


def _texts(fig) -> str:
    """Every text of a figure, wrapped lines joined again."""
    return " ".join(" ".join(t.get_text().split()) for t in fig.findobj(Text))


@pytest.mark.parametrize("n", [20, 200])
def test_write_model_figures_writes_pngs_of_a_readable_size(drawn, n):
    _, files = drawn[n]
    assert [p.name for p in files] == list(FIGURES)
    for path in files:
        assert path.read_bytes()[:8] == PNG_MAGIC, path.name
        width, height = Image.open(path).size
        assert 1000 <= width <= 1450 and 600 <= height <= 1100, (path.name, width, height)
        assert path.stat().st_size < 300_000, path.name


def test_write_model_figures_from_the_json_round_trip_gives_the_same_bytes(drawn, tmp_path):
    metrics, files = drawn[20]
    again = write_model_figures(json.loads(json.dumps(metrics)), tmp_path)
    for first, second in zip(files, again, strict=True):
        assert first.read_bytes() == second.read_bytes(), first.name


@pytest.mark.parametrize("n", [20, 200])
def test_curve_metrics_band_contains_the_roc_curve(drawn, n):
    metrics, _ = drawn[n]
    labels, p_model = _scores(n, 2.0, seed=n)
    for key, probs in (("model", p_model), ("baseline", _scores(n, 1.0, seed=n + 1)[1])):
        band = metrics["test"][key]["roc"]["band"]
        curve = tpr_on_grid(labels, probs, np.array(band["fpr"]))[0]
        low, high = np.array(band["tpr_low"]), np.array(band["tpr_high"])
        assert np.all(low <= curve + 1e-5) and np.all(curve <= high + 1e-5), key
        assert (high - low).max() > 0.05, key  # a real band, not the curve twice


@pytest.mark.parametrize("n", [20, 200])
def test_curve_metrics_auc_matches_scikit_learn(drawn, n):
    metrics, _ = drawn[n]
    labels, p_model = _scores(n, 2.0, seed=n)
    entry = metrics["test"]["model"]
    expected = roc_auc_score(labels, p_model)
    assert entry["auc"]["estimate"] == pytest.approx(expected)
    assert np.trapezoid(entry["roc"]["tpr"], entry["roc"]["fpr"]) == pytest.approx(expected, abs=1e-4)


def test_tpr_on_grid_matches_scikit_learn_roc_curve_with_ties():
    rng = np.random.default_rng(3)
    labels = np.r_[np.zeros(13, int), np.ones(24, int)]
    probs = np.round(rng.random(37), 1)  # many ties: the curve has diagonal pieces
    fpr, tpr, _ = roc_curve(labels, probs, drop_intermediate=False)
    grid = np.linspace(0, 1, 201)[1:-1]  # i/200 is never k/13 inside (0, 1): no grid point on a vertical step
    assert tpr_on_grid(labels, probs, grid)[0] == pytest.approx(np.interp(grid, fpr, tpr))


def test_roc_band_is_the_pointwise_95_percent_range_of_the_auc_intervals_resampled_curves(drawn):
    metrics, _ = drawn[20]
    labels, probs = _scores(20, 2.0, seed=20)
    band = metrics["test"]["model"]["roc"]["band"]
    off_steps = [i for i in range(1, 200) if i % 20]  # 10 negatives: steps at multiples of 0.1 = 20/200
    grid = np.array(band["fpr"])[off_steps]
    curves = []
    for row in stratified_resamples(labels, RESAMPLES, seed=0):  # export's seed for the AUC interval
        fpr, tpr, _ = roc_curve(labels[row], probs[row], drop_intermediate=False)
        curves.append(np.interp(grid, fpr, tpr))
    low, high = np.percentile(curves, [2.5, 97.5], axis=0)
    assert np.array(band["tpr_low"])[off_steps] == pytest.approx(low, abs=1e-5)
    assert np.array(band["tpr_high"])[off_steps] == pytest.approx(high, abs=1e-5)


@pytest.mark.parametrize("n, bins", [(20, 4), (200, 10)])
def test_calibration_bins_count_every_scan_with_the_observed_fraction_in_its_wilson_interval(drawn, n, bins):
    metrics, _ = drawn[n]
    for key in ("model", "baseline"):
        calibration = metrics["test"][key]["calibration"]
        assert len(calibration["bins"]) == bins
        assert sum(b["n"] for b in calibration["bins"]) == n
        assert sum(b["positives"] for b in calibration["bins"]) == metrics["test"]["n_positive"]
        for b in calibration["bins"]:
            observed = b["observed"]
            assert observed["estimate"] == pytest.approx(b["positives"] / b["n"])
            assert observed["low"] <= observed["estimate"] <= observed["high"]
            assert b["p_low"] <= b["p_mean"] <= b["p_high"]
        histogram = calibration["histogram"]
        assert sum(histogram["label_0"]) + sum(histogram["label_1"]) == n


def test_curve_metrics_of_a_perfect_separator_collapse_the_band_onto_the_curve():
    labels = np.r_[np.zeros(10, int), np.ones(10, int)]
    curves = curve_metrics(labels, np.r_[np.full(10, 0.2), np.full(10, 0.9)], RESAMPLES, seed=0)
    assert np.trapezoid(curves["roc"]["tpr"], curves["roc"]["fpr"]) == 1.0
    assert curves["roc"]["band"]["tpr_low"] == curves["roc"]["band"]["tpr_high"] == [1.0] * 201
    assert curves["brier_score"] == pytest.approx(0.025)


def test_curve_metrics_of_all_equal_probabilities_give_the_diagonal_and_one_bin():
    labels = np.r_[np.zeros(12, int), np.ones(8, int)]
    curves = curve_metrics(labels, np.full(20, 0.4), RESAMPLES, seed=0)
    assert curves["roc"]["fpr"] == curves["roc"]["tpr"] == [0.0, 1.0]
    band = curves["roc"]["band"]
    assert band["tpr_low"] == band["tpr_high"] == pytest.approx(band["fpr"], abs=1e-5)
    (only,) = curves["calibration"]["bins"]
    assert only["n"] == 20 and only["positives"] == 8 and only["p_mean"] == pytest.approx(0.4)


def test_curve_metrics_of_one_class_is_an_error():
    with pytest.raises(ValueError, match="labels: a ROC curve needs scans of both classes"):
        curve_metrics(np.ones(5, int), np.linspace(0, 1, 5), RESAMPLES, seed=0)


def test_write_model_figures_draws_a_perfect_separator_beside_constant_probabilities(tmp_path):
    labels = np.r_[np.zeros(10, int), np.ones(10, int)]
    metrics = _metrics(labels, labels * 0.6 + 0.2, np.full(20, 0.5))
    files = write_model_figures(metrics, tmp_path)
    assert [p.read_bytes()[:8] for p in files] == [PNG_MAGIC] * 3
    assert "A band that collapses onto its curve" in _texts(draw_roc(metrics))


def test_draw_figures_show_the_model_and_the_baseline_side_by_side(drawn):
    metrics, _ = drawn[20]
    for draw in (draw_roc, draw_calibration, draw_confusion):
        titles = _panels(draw(metrics))
        assert len(titles) == 2 and titles[0].startswith("Exported model") and titles[1].startswith("Seed baseline")
    text = _texts(draw_roc(metrics))
    assert "Seed baseline" in text and "Difference in AUC" in text and "20 scans, 10 CT-0 and 10 CT-2 or CT-3" in text


def test_draw_figures_show_one_model_when_it_is_the_baseline():
    labels, probs = _scores(20, 2.0, seed=5)
    metrics = _metrics(labels, probs, baseline_is_model=True)
    for draw in (draw_roc, draw_calibration, draw_confusion):
        fig = draw(metrics)
        assert len(_panels(fig)) == 1
        assert "= the seed baseline" in _texts(fig) and "the exported model is the baseline itself" in _texts(fig)


def test_draw_figures_show_only_the_model_when_no_baseline_was_trained():
    labels, probs = _scores(20, 2.0, seed=5)
    metrics = _metrics(labels, probs)
    for draw in (draw_roc, draw_calibration, draw_confusion):
        fig = draw(metrics)
        assert len(_panels(fig)) == 1
        assert "Seed baseline: not trained (cannot run at 8x8x8)." in _texts(fig)


def test_write_model_figures_of_an_older_metrics_json_names_the_missing_curves(drawn, tmp_path):
    metrics, _ = drawn[20]
    old = json.loads(json.dumps(metrics))
    del old["test"]["model"]["roc"]
    with pytest.raises(ValueError, match=r"test\.model holds no ROC curve"):
        write_model_figures(old, tmp_path)
    assert not list(tmp_path.iterdir())
