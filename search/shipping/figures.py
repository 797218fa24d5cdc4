"""The model folder's pictures (``roc.png``, ``calibration.png``, ``confusion.png``) and the numbers behind them.

``curve_metrics`` turns one model's locked-test labels and probabilities into plain numbers for
``metrics.json``: the ROC curve with a pointwise bootstrap band, reliability bins with Wilson intervals, a
histogram of the predicted probabilities per class and the Brier score. None of them names a scan.
``write_model_figures`` draws the pictures from the ``metrics.json`` dict alone, as ``search.shipping.model_card``
writes the card, so both can be rebuilt from a folder and never show more than the export measured.

An ordinal (severity) export draws two pictures instead (:data:`ORDINAL_FIGURES`): ``roc.png``, each
"grade >= k" ROC curve with its band beside the baseline's, and ``confusion.png``, the K x K confusion
matrix of the median grade with counts and row shares (``write_grade_figures``).

Drawing uses matplotlib's object-oriented API (``Figure``, ``savefig``), never pyplot: no global backend
or figure state is touched, so export can run beside anything else that draws.
"""

from __future__ import annotations

import math
import textwrap
from pathlib import Path

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import MaxNLocator
from scipy.stats import rankdata
from sklearn.metrics import brier_score_loss, roc_curve

from search.stats.intervals import DEFAULT_CONFIDENCE, Interval, stratified_resamples, wilson

ROC_PNG = "roc.png"
CALIBRATION_PNG = "calibration.png"
CONFUSION_PNG = "confusion.png"
FIGURES = (ROC_PNG, CALIBRATION_PNG, CONFUSION_PNG)
ORDINAL_FIGURES = (ROC_PNG, CONFUSION_PNG)  # an ordinal export's pictures

GRID_POINTS = 201  # the band's FPR grid: steps of 0.005, finer than a 100-negative test part's ROC steps
MIN_PER_BIN = 5  # scans per reliability bin: fewer make a Wilson interval that spans most of [0, 1]
MAX_BINS = 10
HISTOGRAM_BINS = 20
DIGITS = 5  # rounding of the curves' numbers in metrics.json

DPI = 120
PANEL_IN = 5.6  # width of one panel; two panels make a 1,400-pixel-wide picture at DPI
MODEL_COLOR, BASELINE_COLOR = "#1f5fa8", "#d0661a"
CLASS_COLORS = ("#4a8fc9", "#c8453a")  # label 0, label 1
CHANCE_COLOR = "#7a7a7a"
THRESHOLD_COLORS = ("#2f7ec1", "#e0a21b", "#c8453a", "#6a3d9a", "#33a02c", "#8c564b")  # grade >= 1, 2, ...


# ---- the numbers ----------------------------------------------------------------------------------------

def _rounded(values: np.ndarray) -> list[float]:
    return [round(float(v), DIGITS) for v in np.asarray(values).ravel()]


def tpr_on_grid(labels: np.ndarray, probs: np.ndarray, grid: np.ndarray) -> np.ndarray:
    """True positive rate of each row's ROC curve at each false positive rate of ``grid``, shape (R, G).

    Rows are (R, N) ``labels``/``probs`` (a resample each). The curve joins the points of successive
    thresholds with straight lines, so tied scores give a diagonal, as in scikit-learn's ``roc_curve``;
    where it rises vertically at a grid FPR the top is taken (the TPR reachable at that FPR). One sort and
    one search serve every row: 2000 resamples cost what a few ``roc_curve`` calls do.
    """
    labels = np.atleast_2d(labels).astype(bool)
    probs = np.atleast_2d(probs).astype(np.float64)
    rows, n = probs.shape
    order = np.argsort(-probs, axis=1, kind="stable")
    ranked = np.take_along_axis(probs, order, axis=1)
    hits = np.take_along_axis(labels, order, axis=1)
    # A threshold cannot split tied scores: every scan of a tied group counts at the group's last scan.
    last = np.ones((rows, n), dtype=bool)
    last[:, :-1] = ranked[:, 1:] != ranked[:, :-1]
    group_end = np.minimum.accumulate(np.where(last, np.arange(n), n)[:, ::-1], axis=1)[:, ::-1]
    tp = np.take_along_axis(np.cumsum(hits, axis=1), group_end, axis=1)
    fp = np.take_along_axis(np.cumsum(~hits, axis=1), group_end, axis=1)
    zero = np.zeros((rows, 1), dtype=np.int64)
    fp, tp = np.concatenate([zero, fp], axis=1), np.concatenate([zero, tp], axis=1)  # (R, N + 1), from (0, 0)
    n0, n1 = fp[:, -1:], tp[:, -1:]
    # In counts of negatives, grid points that fall on a step are whole numbers, whatever the rounding of grid.
    x = np.round(np.asarray(grid, dtype=np.float64)[None, :] * n0, 9)  # (R, G)
    offset = (n + 1) * np.arange(rows)[:, None]  # rows laid end to end: one searchsorted finds every segment
    j = np.searchsorted((fp + offset).ravel(), (x + offset).ravel(), side="right").reshape(rows, -1) - 1 - offset
    k = np.minimum(j + 1, n)
    x0, x1 = np.take_along_axis(fp, j, axis=1), np.take_along_axis(fp, k, axis=1)
    y0, y1 = np.take_along_axis(tp, j, axis=1), np.take_along_axis(tp, k, axis=1)
    width = x1 - x0
    step = np.divide(x - x0, width, out=np.zeros_like(x), where=width > 0)
    return (y0 + step * (y1 - y0)) / n1


def roc_band(labels: np.ndarray, probs: np.ndarray, n_resamples: int, seed: int,
             confidence: float = DEFAULT_CONFIDENCE) -> dict:
    """Pointwise percentiles of the resampled curves' TPR on a fixed FPR grid.

    The resamples are those of the AUC interval (``stratified_resamples`` with the same count and
    seed), so band and interval describe the same uncertainty.
    """
    grid = np.linspace(0.0, 1.0, GRID_POINTS)
    rows = stratified_resamples(labels, n_resamples, seed)
    tpr = tpr_on_grid(labels[rows], probs[rows], grid)
    tail = 100 * (1 - confidence) / 2
    low, high = np.percentile(tpr, [tail, 100 - tail], axis=0)
    return {"fpr": _rounded(grid), "tpr_low": _rounded(low), "tpr_high": _rounded(high), "confidence": confidence,
            "method": f"pointwise {tail:g}th and {100 - tail:g}th percentiles of the true positive rate at each "
                      f"false positive rate, over {n_resamples} stratified bootstrap resamples of the test scans "
                      f"(seed {seed}, those of the AUC interval)"}


def calibration_bins(labels: np.ndarray, probs: np.ndarray) -> dict:
    """Reliability bins: scans grouped by the rank of their probability, and the observed fraction of label 1.

    Bins of equal count adapt to the test size: 20 scans make 4 bins of 5, 200 make 10 of 20. Tied
    probabilities stay in one bin, so all-equal probabilities make a single bin.
    """
    n = labels.size
    k = int(np.clip(n // MIN_PER_BIN, 1, MAX_BINS))
    which = (rankdata(probs, method="min").astype(int) - 1) * k // n
    bins = []
    for b in np.unique(which):
        inside = which == b
        p, positives = probs[inside], int(labels[inside].sum())
        bins.append({"p_low": round(float(p.min()), DIGITS), "p_high": round(float(p.max()), DIGITS),
                     "p_mean": round(float(p.mean()), DIGITS), "n": int(inside.sum()), "positives": positives,
                     "observed": wilson(positives, int(inside.sum())).to_dict()})
    return {"binning": f"{k} bin{'s' * (k > 1)} of about {n // k} scans by rank of the predicted probability "
                       "(tied probabilities in one bin); observed fraction of label 1 with its Wilson interval",
            "bins": bins}


def probability_histogram(labels: np.ndarray, probs: np.ndarray) -> dict:
    """Counts of each class's predicted probabilities in fixed bins over [0, 1]."""
    edges = np.linspace(0.0, 1.0, HISTOGRAM_BINS + 1)
    return {"edges": _rounded(edges),
            "label_0": np.histogram(probs[labels == 0], edges)[0].tolist(),
            "label_1": np.histogram(probs[labels == 1], edges)[0].tolist()}


def curve_metrics(labels: np.ndarray, probs: np.ndarray, n_resamples: int, seed: int) -> dict:
    """ROC curve and band, calibration and Brier score of one model's test probabilities, for metrics.json.

    Raises:
        ValueError: ``labels`` hold one class only (no ROC curve exists).
    """
    labels = np.asarray(labels).astype(int).ravel()
    probs = np.asarray(probs, dtype=np.float64).ravel()
    if np.unique(labels).size != 2:
        raise ValueError("labels: a ROC curve needs scans of both classes")
    fpr, tpr, _ = roc_curve(labels, probs)
    return {
        "roc": {"fpr": _rounded(fpr), "tpr": _rounded(tpr), "band": roc_band(labels, probs, n_resamples, seed)},
        "calibration": calibration_bins(labels, probs) | {"histogram": probability_histogram(labels, probs)},
        "brier_score": round(float(brier_score_loss(labels, probs)), DIGITS),
    }


# ---- the pictures ---------------------------------------------------------------------------------------

def _panels(metrics: dict) -> list[tuple[str, dict, str]]:
    """(title, test entry, colour) of each model to draw: the exported model, and the baseline if it is another.

    Raises:
        ValueError: The test entries lack the curves (a metrics.json of an older lungct-nas).
    """
    if "roc" not in metrics["test"]["model"]:
        raise ValueError("metrics.json: test.model holds no ROC curve (written by an older lungct-nas); export "
                         "again to draw the pictures")
    return _model_panels(metrics)


def _header(metrics: dict, what: str) -> str:
    test, classes = metrics["test"], metrics["task"]["classes"]
    phantoms = " (synthetic phantoms)" if metrics.get("data", {}).get("phantoms") else ""
    return (f"{what}\nlocked test part{phantoms}: {test['n']} scans, "
            f"{test['n_negative']} {classes[0]} and {test['n_positive']} {classes[1]}")


def _notes(metrics: dict) -> list[str]:
    """What the figure cannot show by itself: a baseline that is the model, or one that was not trained."""
    test = metrics["test"]
    if test.get("baseline_is_model"):
        return ["The search kept the seed baseline, so the exported model is the baseline itself: one model shown."]
    if test.get("baseline") is None:
        note = metrics.get("baseline", {}).get("note")
        return [f"Seed baseline: not trained{f' ({note})' if note else ''}."]
    return []


def _caption(fig: Figure, lines: list[str]) -> None:
    """Wrapped lines under the panels; constrained layout makes room for a figure's x label, not for free text."""
    width = int(fig.get_figwidth() * DPI / 8.5)  # characters of 9-point text across the figure
    text = "\n".join(textwrap.fill(line, width) for line in lines)
    fig.supxlabel(text, fontsize=9, ha="left", x=0.01, linespacing=1.4)


def _figure(panels: int, height_in: float) -> Figure:
    # One panel keeps the 1,000-pixel minimum width; its axes stay square and centred.
    return Figure(figsize=(max(PANEL_IN * panels + 0.6, 8.5), height_in), dpi=DPI, layout="constrained")


def _auc_text(entry: dict) -> str:
    return f"AUC {Interval(**entry['auc']).text()}"


def _roc_axes(ax: Axes, key: Axes, title: str, entry: dict, color: str, other: tuple[str, dict, str] | None,
              threshold: float) -> None:
    """One model's ROC panel; its legend goes on ``key``, an empty axes beneath it."""
    band, roc = entry["roc"]["band"], entry["roc"]
    ax.plot([0, 1], [0, 1], ls="--", lw=1, color=CHANCE_COLOR, label="chance (AUC 0.5)")
    if other is not None:
        ax.plot(other[1]["roc"]["fpr"], other[1]["roc"]["tpr"], lw=1.2, ls=":", color=other[2],
                label=f"{other[0].lower()}, for comparison")
    ax.fill_between(band["fpr"], band["tpr_low"], band["tpr_high"], color=color, alpha=0.22, lw=0,
                    label=f"{round(100 * band['confidence'])}% bootstrap band (pointwise)")
    ax.plot(roc["fpr"], roc["tpr"], lw=2.2, color=color, label=f"ROC, {_auc_text(entry)}")
    sens, spec = entry["sensitivity"]["estimate"], entry["specificity"]["estimate"]
    if math.isfinite(sens) and math.isfinite(spec):
        ax.plot([1 - spec], [sens], "o", ms=8, mfc="white", mec=color, mew=2,
                label=f"P ≥ {threshold:g}: sensitivity {sens:.2f}, specificity {spec:.2f}")
    ax.set(xlim=(-0.02, 1.02), ylim=(-0.02, 1.02), aspect="equal", title=title,
           xlabel="false positive rate (1 − specificity)", ylabel="true positive rate (sensitivity)")
    ax.grid(alpha=0.3)
    # Below the axes, not inside: a curve below the diagonal or a wide band leaves no empty corner to cover.
    key.axis("off")
    key.legend(*ax.get_legend_handles_labels(), loc="upper center", fontsize=9, frameon=False)


def _collapsed(band: dict) -> bool:
    return np.array_equal(band["tpr_low"], band["tpr_high"])


def draw_roc(metrics: dict) -> Figure:
    """ROC curve of each model with its pointwise bootstrap band, the chance diagonal and the 0.5 threshold."""
    panels, test = _panels(metrics), metrics["test"]
    fig = _figure(len(panels), 8.4)
    fig.suptitle(_header(metrics, "ROC curve with its 95% bootstrap band"), fontsize=12)
    grid = fig.add_gridspec(2, len(panels), height_ratios=(5, 1.1))
    for i, (title, entry, color) in enumerate(panels):
        other = panels[1 - i] if len(panels) == 2 else None
        _roc_axes(fig.add_subplot(grid[0, i]), fig.add_subplot(grid[1, i]), title, entry, color, other,
                  metrics["task"]["threshold"])
    band = test["model"]["roc"]["band"]
    lines = [f"Band: {band['method']}. It comes from {test['n']} test scans: on a small test part it is wide, and "
             "curves whose bands overlap are not shown to differ."]
    if test.get("auc_difference") and not test.get("baseline_is_model"):
        lines.append(f"Difference in AUC, exported model minus seed baseline: "
                     f"{Interval(**test['auc_difference']).text()}.")
    if any(_collapsed(e["roc"]["band"]) for _, e, _ in panels):
        lines.append("A band that collapses onto its curve (an AUC of exactly 0 or 1, or all-equal probabilities) "
                     "means every resample ranks the scans alike: there band and interval understate the uncertainty.")
    _caption(fig, lines + _notes(metrics))
    return fig


def _reliability_axes(ax: Axes, title: str, entry: dict, color: str, positive: str) -> None:
    bins = entry["calibration"]["bins"]
    mean = np.array([b["p_mean"] for b in bins])
    seen = np.array([b["observed"]["estimate"] for b in bins])
    low = np.array([b["observed"]["low"] for b in bins])
    high = np.array([b["observed"]["high"] for b in bins])
    # Clipped: matplotlib refuses error bars of negative length, which rounding could leave at a point bin.
    spread = np.clip([[m - b["p_low"], b["p_high"] - m] for m, b in zip(mean, bins, strict=True)], 0, None).T
    ax.plot([0, 1], [0, 1], ls="--", lw=1, color=CHANCE_COLOR, label="perfect calibration")
    ax.errorbar(mean, seen, xerr=spread, fmt="none", ecolor=color, elinewidth=1, alpha=0.45)
    confidence = round(100 * bins[0]["observed"]["confidence"])
    ax.errorbar(mean, seen, yerr=np.clip([seen - low, high - seen], 0, None), fmt="o", ms=7, color=color, capsize=4,
                elinewidth=1.6, label=f"observed fraction, {confidence}% Wilson interval")
    counts = sorted({b["n"] for b in bins})
    per_bin = f"{counts[0]}" if len(counts) == 1 else f"{counts[0]}-{counts[-1]}"
    ax.set(xlim=(-0.02, 1.02), ylim=(-0.04, 1.04), ylabel=f"observed fraction of {positive}",
           title=f"{title}\nBrier score {entry['brier_score']:.3f} · {len(bins)} bin{'s' * (len(bins) > 1)} of "
                 f"{per_bin} scans")
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", fontsize=8.5, framealpha=0.9)


def _histogram_axes(ax: Axes, entry: dict, classes: list[str], threshold: float) -> None:
    histogram = entry["calibration"]["histogram"]
    for label, (name, color) in enumerate(zip(classes, CLASS_COLORS, strict=True)):
        counts = histogram[f"label_{label}"]
        ax.stairs(counts, histogram["edges"], fill=True, alpha=0.35, color=color, label=f"{name} (label {label})")
        ax.stairs(counts, histogram["edges"], lw=1.5, color=color)  # an outline keeps overlapping bars apart
    ax.axvline(threshold, ls=":", lw=1.2, color="black", label=f"threshold {threshold:g}")
    tallest = max(max(histogram["label_0"]), max(histogram["label_1"]))
    ax.set(xlim=(-0.02, 1.02), ylim=(0, 1.6 * tallest + 0.5),  # headroom for the legend above the bars
           xlabel=f"predicted probability of {classes[1]}", ylabel="scans")
    locator = ax.yaxis.get_major_locator()
    if isinstance(locator, MaxNLocator):  # the default AutoLocator is one
        locator.set_params(integer=True)
    ax.legend(loc="upper center", fontsize=8, ncols=3, framealpha=0.9)


def draw_calibration(metrics: dict) -> Figure:
    """Reliability diagram of each model over a histogram of its predicted probabilities per class."""
    panels, test, classes = _panels(metrics), metrics["test"], metrics["task"]["classes"]
    fig = _figure(len(panels), 8.4)
    fig.suptitle(_header(metrics, "Calibration: reliability diagram and predicted probabilities"), fontsize=12)
    grid = fig.add_gridspec(2, len(panels), height_ratios=(3, 1.3))
    for i, (title, entry, color) in enumerate(panels):
        top = fig.add_subplot(grid[0, i])
        _reliability_axes(top, title, entry, color, classes[1])
        bottom = fig.add_subplot(grid[1, i], sharex=top)
        _histogram_axes(bottom, entry, classes, metrics["task"]["threshold"])
        top.tick_params(labelbottom=False)
    prevalence = test["n_positive"] / test["n"]
    lines = [f"Dots: scans binned by the rank of their predicted probability; vertical bars: 95% Wilson intervals of "
             f"the observed fraction; faint horizontal bars: the bin's range of probabilities. Dots near the diagonal "
             f"mean the probabilities can be read as frequencies. Brier score: mean squared error of the "
             f"probabilities, lower is better; always predicting the prevalence scores "
             f"{prevalence * (1 - prevalence):.3f}. The intervals come from {test['n']} test scans: on a small test "
             "part they are wide."]
    _caption(fig, lines + _notes(metrics))
    return fig


def _confusion_axes(ax: Axes, title: str, entry: dict, classes: list[str]) -> None:
    cm = entry["confusion_matrix"]
    counts = np.array([[cm["tn"], cm["fp"]], [cm["fn"], cm["tp"]]])
    rows = counts.sum(axis=1, keepdims=True)
    share = np.divide(counts, rows, out=np.zeros(counts.shape), where=rows > 0)
    ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    for (r, c), count in np.ndenumerate(counts):
        color = "white" if share[r, c] > 0.6 else "black"
        ax.text(c, r - 0.06, f"{count}", ha="center", va="bottom", fontsize=22, fontweight="bold", color=color)
        ax.text(c, r + 0.06, f"{share[r, c]:.0%} of {classes[r]}", ha="center", va="top", fontsize=11, color=color)
    ax.set_xticks([0, 1], [f"predicted {name}" for name in classes])
    ax.set_yticks([0, 1], [f"true {name}" for name in classes], rotation=90, va="center")
    ax.tick_params(length=0)
    acc = Interval(**entry["accuracy"])
    ax.set_title(f"{title}\naccuracy {acc.estimate:.3f} (95% CI {acc.low:.3f} to {acc.high:.3f})")


def draw_confusion(metrics: dict) -> Figure:
    """2x2 count tables at the routing threshold: rows the true class, columns the predicted one."""
    panels, classes = _panels(metrics), metrics["task"]["classes"]
    fig = _figure(len(panels), 6.0)
    fig.suptitle(_header(metrics, f"Confusion counts at P({classes[1]}) ≥ {metrics['task']['threshold']:g}"),
                 fontsize=12)
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, (title, entry, _) in zip(axes, panels, strict=True):
        _confusion_axes(ax, title, entry, classes)
    lines = ["Shade and percentage: share of the row (the true class), so the diagonal holds the specificity "
             f"(top left) and the sensitivity (bottom right). The threshold is fixed at "
             f"{metrics['task']['threshold']:g}, not tuned on these scans."]
    _caption(fig, lines + _notes(metrics))
    return fig


def is_ordinal(metrics: dict) -> bool:
    """Whether a metrics.json dict is an ordinal (severity grading) export's."""
    return bool(metrics.get("task", {}).get("ordinal"))


def write_model_figures(metrics: dict, directory: Path) -> list[Path]:
    """Draw ``roc.png``, ``calibration.png`` and ``confusion.png`` into ``directory`` from a metrics.json dict.

    An ordinal export's dict draws :data:`ORDINAL_FIGURES` instead (:func:`write_grade_figures`).

    Returns:
        The files written, in that order.

    Raises:
        ValueError: ``metrics`` holds no curves (a metrics.json of an older lungct-nas).
    """
    directory = Path(directory)
    if is_ordinal(metrics):
        return write_grade_figures(metrics, directory)
    written = []
    for name, draw in ((ROC_PNG, draw_roc), (CALIBRATION_PNG, draw_calibration), (CONFUSION_PNG, draw_confusion)):
        path = directory / name
        # No software tag: the same numbers give the same bytes under any matplotlib.
        draw(metrics).savefig(path, format="png", metadata={"Software": None})
        written.append(path)
    return written


# ---- the pictures of an ordinal export ------------------------------------------------------------------

def _grade_header(metrics: dict, what: str) -> str:
    test = metrics["test"]
    phantoms = " (synthetic phantoms)" if metrics.get("data", {}).get("phantoms") else ""
    counts = ", ".join(f"{n} {name}" for n, name in zip(test["n_per_grade"], test["grades"], strict=True))
    return f"{what}\nlocked test part{phantoms}: {test['n']} scans, {counts}"


def _grade_roc_axes(ax: Axes, key: Axes, title: str, entry: dict, other: tuple[str, dict, str] | None) -> None:
    """One model's "grade >= k" ROC curves with their bands; the other model's curves dotted, for comparison."""
    ax.plot([0, 1], [0, 1], ls="--", lw=1, color=CHANCE_COLOR, label="chance (AUC 0.5)")
    for i, threshold in enumerate(entry["at_least"]):
        color = THRESHOLD_COLORS[i % len(THRESHOLD_COLORS)]
        if threshold["roc"] is None:
            ax.plot([], [], color=color, label=f"{threshold['event']}: no curve ({threshold['note']})")
            continue
        roc, band = threshold["roc"], threshold["roc"]["band"]
        if other is not None and other[1]["at_least"][i]["roc"] is not None:
            theirs = other[1]["at_least"][i]["roc"]
            ax.plot(theirs["fpr"], theirs["tpr"], lw=1, ls=":", color=color)
        ax.fill_between(band["fpr"], band["tpr_low"], band["tpr_high"], color=color, alpha=0.15, lw=0)
        ax.plot(roc["fpr"], roc["tpr"], lw=2, color=color, label=f"{threshold['event']}: {_auc_text(threshold)}")
    ax.set(xlim=(-0.02, 1.02), ylim=(-0.02, 1.02), aspect="equal",
           title=f"{title}\nmean grade≥k AUC {Interval(**entry['auc']).text()}",
           xlabel="false positive rate (below the grade, called at or above it)",
           ylabel="true positive rate (at or above the grade)")
    ax.grid(alpha=0.3)
    key.axis("off")
    handles, labels = ax.get_legend_handles_labels()
    if other is not None:
        handles.append(Line2D([], [], lw=1, ls=":", color="black"))
        labels.append(f"dotted: {other[0].lower()}, for comparison")
    key.legend(handles, labels, loc="upper center", fontsize=8.5, frameon=False)


def draw_grade_roc(metrics: dict) -> Figure:
    """Each "grade >= k" ROC curve of each model with its pointwise bootstrap band."""
    panels, test = _model_panels(metrics), metrics["test"]
    fig = _figure(len(panels), 8.8)
    fig.suptitle(_grade_header(metrics, "ROC curves of each \"grade ≥ k\" with their 95% bootstrap bands"),
                 fontsize=12)
    grid = fig.add_gridspec(2, len(panels), height_ratios=(5, 1.5))
    for i, (title, entry, _) in enumerate(panels):
        other = panels[1 - i] if len(panels) == 2 else None
        _grade_roc_axes(fig.add_subplot(grid[0, i]), fig.add_subplot(grid[1, i]), title, entry, other)
    first = next((t["roc"]["band"] for t in test["model"]["at_least"] if t["roc"] is not None), None)
    lines = ["One curve per threshold: scans at or above the grade against those below it, ranked by P(grade ≥ k). "
             "The model's one severity score ranks every threshold alike; the curves differ by which scans they "
             f"split. Selection metric: {test['metric']}."]
    if first is not None:
        lines.append(f"Bands: {first['method']}, per threshold. They come from {test['n']} test scans: on a small test "
                     "part they are wide.")
    if test.get("auc_difference") and not test.get("baseline_is_model"):
        lines.append(f"Difference in mean grade≥k AUC, exported model minus seed baseline: "
                     f"{Interval(**test['auc_difference']).text()}.")
    _caption(fig, lines + _notes(metrics))
    return fig


def _model_panels(metrics: dict) -> list[tuple[str, dict, str]]:
    """(title, test entry, colour) of each model to draw: the exported model, and the baseline if it is another.

    A grading export's entries keep their curves per threshold, so, unlike :func:`_panels`, nothing is checked.
    """
    test, model = metrics["test"], metrics.get("model", {})
    members = model.get("members", 1)
    name = f"Exported model (ensemble of {members})" if members > 1 else "Exported model"
    if test.get("baseline_is_model"):
        return [(f"{name} = the seed baseline", test["model"], MODEL_COLOR)]
    panels = [(name, test["model"], MODEL_COLOR)]
    if test.get("baseline") is not None:
        panels.append(("Seed baseline", test["baseline"], BASELINE_COLOR))
    return panels


def _grade_confusion_axes(ax: Axes, title: str, entry: dict, grades: list[str]) -> None:
    cm = entry["confusion_matrix"]
    counts, share = np.array(cm["counts"]), np.array(cm["row_normalised"])
    k = len(grades)
    ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    big, small = (20, 10) if k <= 4 else (14, 8)
    for (r, c), count in np.ndenumerate(counts):
        color = "white" if share[r, c] > 0.6 else "black"
        ax.text(c, r - 0.05, f"{count}", ha="center", va="bottom", fontsize=big, fontweight="bold", color=color)
        ax.text(c, r + 0.05, f"{share[r, c]:.0%} of row", ha="center", va="top", fontsize=small, color=color)
    names = [textwrap.fill(name, 10) for name in grades]
    ax.set_xticks(range(k), names, fontsize=9)
    ax.set_yticks(range(k), names, fontsize=9)
    ax.set(xlabel="predicted grade (the median)", ylabel="true grade")
    ax.tick_params(length=0)
    ax.set_title(f"{title}\nQWK {Interval(**entry['qwk']).text()}\nMAE {Interval(**entry['mae']).text()} grades")


def draw_grade_confusion(metrics: dict) -> Figure:
    """K x K confusion matrices of the median grade: rows the true grade, counts and shares of the row."""
    panels, test = _model_panels(metrics), metrics["test"]
    fig = _figure(len(panels), 7.0)
    fig.suptitle(_grade_header(metrics, "Confusion matrix of the predicted (median) grade"), fontsize=12)
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, (title, entry, _) in zip(axes, panels, strict=True):
        _grade_confusion_axes(ax, title, entry, test["grades"])
    lines = ["Each cell: the count of scans, and its share of the row (the true grade), which shades it; the diagonal "
             "holds each grade's recall. The predicted grade is the median of the model's grade distribution (the "
             "number of k with P(grade ≥ k) ≥ 0.5), not tuned on these scans. QWK: quadratic weighted kappa; MAE: mean "
             "absolute error in grades; both with 95% stratified bootstrap intervals."]
    _caption(fig, lines + _notes(metrics))
    return fig


def write_grade_figures(metrics: dict, directory: Path) -> list[Path]:
    """Draw an ordinal export's ``roc.png`` and ``confusion.png`` into ``directory`` from its metrics.json dict.

    Returns:
        The files written, in the order of :data:`ORDINAL_FIGURES`.
    """
    written = []
    for name, draw in ((ROC_PNG, draw_grade_roc), (CONFUSION_PNG, draw_grade_confusion)):
        path = Path(directory) / name
        draw(metrics).savefig(path, format="png", metadata={"Software": None})
        written.append(path)
    return written
