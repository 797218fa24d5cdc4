"""What an ablation writes: ablation.csv and runs.csv, the console table and verdicts, and the HTML page.

The page is built with the toolkit of every page of this project (``search.pages.html``: one style sheet,
plotly.js inlined once, figures fitted to their panel), and every file is written atomically
(``lungct.files.atomic_write_text``). Every AUC is named for the task (``search.study.notes.ScoreName``):
an ordinal task's tables, verdicts, figures and methods say it is the mean "grade >= k" AUC, and its
files carry the ordinal columns (:data:`~search.ablation.runs.ORDINAL_RUN_COLUMNS`,
:data:`~search.ablation.summary.ORDINAL_SUMMARY_COLUMNS`).
"""

from __future__ import annotations

import csv
import html
import io
import math
from collections.abc import Sequence
from pathlib import Path

import plotly.graph_objects as go

from lungct.files import atomic_write_text
from search.ablation.runs import RunRecord, run_columns
from search.ablation.settings import AblationSettings
from search.ablation.summary import ALPHA, summary_columns
from search.ablation.variants import BASELINE, Variant, padding_lines
from search.pages.html import figure, note, page, table
from search.stats.paired import MIN_WILCOXON_PAIRS
from search.study.notes import BINARY_SCORE, ScoreName, score_name
from search.study.storage import redact
from space import describe_spec


def _cell(value) -> str:
    if isinstance(value, float):
        return "" if not math.isfinite(value) else f"{value:.6g}"
    return str(value)


def to_csv(rows: Sequence[dict], columns: Sequence[str]) -> str:
    """CSV text; undefined numbers (NaN) are empty cells."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(columns)
    for row in rows:
        writer.writerow([_cell(row[c]) for c in columns])
    return buffer.getvalue()


def _ci(mean: float, low: float, high: float, signed: bool = False) -> str:
    fmt = "+.3f" if signed else ".3f"
    m = format(mean, fmt) if math.isfinite(mean) else "n/a"
    if not (math.isfinite(low) and math.isfinite(high)):
        return m
    return f"{m} [{format(low, fmt)}, {format(high, fmt)}]"


def _p(value: float) -> str:
    if not math.isfinite(value):
        return "n/a"
    return f"{value:.3f}" if value >= 0.001 else "<0.001"


def format_table(rows: Sequence[dict], score: ScoreName = BINARY_SCORE) -> str:
    """The summary as a fixed-width console table (an ordinal task's with its kappa)."""
    ordinal = score.ordinal
    head = ("variant", "runs", f"val {score.short} [95% CI]",
            *(("grade accuracy [95% CI]", "QWK [95% CI]") if ordinal else ("accuracy [95% CI]",)),
            f"{score.short} diff vs baseline [95% CI]", "p", "test", "verdict", "params", "GFLOPs", "s/run")
    lines = []
    for r in rows:
        diff = "reference" if r["variant"] == BASELINE else \
            _ci(r["auc_diff_vs_baseline"], r["auc_diff_ci_low"], r["auc_diff_ci_high"], signed=True)
        kappa = (_ci(r["qwk_mean"], r["qwk_ci_low"], r["qwk_ci_high"]),) if ordinal else ()
        lines.append((r["variant"], str(r["n_runs"]), _ci(r["auc_mean"], r["auc_ci_low"], r["auc_ci_high"]),
                      _ci(r["acc_mean"], r["acc_ci_low"], r["acc_ci_high"]), *kappa, diff,
                      "" if r["variant"] == BASELINE else _p(r["p_value"]),
                      "" if r["variant"] == BASELINE else r["test"].split(":")[0],
                      "" if r["variant"] == BASELINE else r["verdict"],
                      f"{r['params'] / 1e6:.2f}M", f"{r['gflops']:.2f}", f"{r['train_seconds_mean']:.0f}"
                      if math.isfinite(r["train_seconds_mean"]) else "n/a"))
    widths = [max(len(x[i]) for x in [head, *lines]) for i in range(len(head))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)).rstrip()
                     for line in [head, *lines])


def verdict_line(row: dict, score: ScoreName = BINARY_SCORE) -> str:
    """One sentence per variant: the verdict with its numbers."""
    if row["variant"] == BASELINE:
        return (f"baseline: the reference, val {score.short} "
                f"{_ci(row['auc_mean'], row['auc_ci_low'], row['auc_ci_high'])} over {row['n_runs']} folds")
    diff = _ci(row["auc_diff_vs_baseline"], row["auc_diff_ci_low"], row["auc_diff_ci_high"], signed=True)
    test = row["test"].split(":")[0]
    text = f"{row['variant']}: {row['verdict']} ({score.short} diff {diff}, {test} p = {_p(row['p_value'])}"
    if ":" in row["test"]:
        text += f"; {row['test'].split(':', 1)[1].strip()}"
    nb = row["p_value_nadeau_bengio"]
    text += f"; corrected resampled t p = {_p(nb)})"
    if row["verdict"] in ("better", "worse") and not (math.isfinite(nb) and nb < ALPHA):
        text += " - tentative: the test that allows for overlapping folds does not confirm it"
    return text


def methods_text(settings: AblationSettings, n_cv: int, n_test: int, ratio: float) -> list[str]:
    """The methods paragraphs of the page (plain text), the score named for the task."""
    k, r = settings.folds, settings.repeats
    n = k * r
    score = score_name(settings.task)
    ordinal = [f"{score.definition} Each run trained the ordinal head of the task's {score.grades} grades "
               "(ordered cumulative cutpoints); the accuracy is the exact-grade accuracy (the predicted grade "
               "is the median of the cumulative probabilities), the QWK the quadratic weighted kappa and the "
               "MAE the mean absolute error in grades, each at the last epoch. Where a fold's validation part "
               "lacks a grade, its cut is left out of that fold's mean."] if score.ordinal else []
    auc = "ROC AUC" if not score.ordinal else score.long
    return [*ordinal,
        f"Each variant was trained {n} times: {r} repeat(s) of stratified {k}-fold cross-validation over the "
        f"{n_cv} training and validation scans; the {n_test} scans of the locked test part (split seed "
        f"{settings.split_seed}) were never read. "
        f"Every variant saw the same folds and the same seeds (run for repeat r, fold f: seed "
        f"{settings.seed} + 1000 r + f, for initial weights, shuffling and augmentation), for "
        f"{settings.epochs} epochs at {'x'.join(map(str, settings.size))} voxels; the six modifications train "
        f"with the seed's settings (Adam, learning rate 1e-4, batch 2), so only the named change differs "
        f"(and the padding, where the padding column says so).",
        f"A fold's score is the validation {auc} after the last epoch, not after the best epoch: choosing "
        "the best epoch on the very fold being scored would bias every variant upward (the best-epoch AUC is "
        "in runs.csv for reference only).",
        f"Means come with a 95% Student t-interval over the {n} fold values. Folds share training scans, so "
        "their values are correlated and these intervals are too narrow: read them as the least uncertainty "
        "there is, not all of it. Intervals are cut to the range the metric can take.",
        f"Each modification is compared with the baseline fold by fold (same fold, same seed): the mean "
        f"{score.short} difference with its t-interval, and the p-value of a paired test on the fold "
        f"{score.short}s: the Wilcoxon "
        f"signed-rank test where at least {MIN_WILCOXON_PAIRS} folds differ, else the paired t-test (with n "
        f"pairs the smallest Wilcoxon p-value is 2/2^n, so below {MIN_WILCOXON_PAIRS} pairs it can never reach "
        f"0.05). The test column says which was used. Both tests also treat folds as independent, so their "
        f"p-values are optimistic; p_value_nadeau_bengio is the corrected resampled t-test of Nadeau and "
        f"Bengio (2003), which widens the variance by the validation/training ratio ({ratio:.2f} here) to "
        f"allow for overlapping training sets. A verdict it does not confirm is marked tentative.",
        f"Verdict at alpha = {ALPHA}: better or worse when the paired test rejects, in the direction of the "
        "difference; otherwise no detectable difference, which is not evidence that the two are equal: the "
        "interval of the difference shows how large a difference these folds cannot rule out. Six comparisons "
        "at 0.05 each: when no modification changes anything, about one ablation in four still shows one "
        "'better' or 'worse' by chance.",
    ]


def plot_html(rows: Sequence[dict], runs: Sequence[RunRecord], score: ScoreName = BINARY_SCORE) -> str:
    """Two plotly figures: fold AUCs per variant, and paired differences from the baseline."""
    auc = score.short
    names = [r["variant"] for r in rows]
    scored = [r for r in runs if r.scored and r.variant in names]
    base = {(r.repeat, r.fold): r.auc for r in scored if r.variant == BASELINE}
    aucs = go.Figure()
    diffs = go.Figure()
    for name in names:
        mine = [r for r in scored if r.variant == name]
        labels = [f"repeat {r.repeat}, fold {r.fold}" for r in mine]
        aucs.add_trace(go.Box(y=[r.auc for r in mine], name=name, boxpoints="all", jitter=0.4, pointpos=0,
                              text=labels, hovertemplate=f"%{{text}}: {auc} %{{y:.3f}}<extra>" + name + "</extra>"))
        if name != BASELINE:
            paired = [r for r in mine if (r.repeat, r.fold) in base]
            diffs.add_trace(go.Box(y=[r.auc - base[(r.repeat, r.fold)] for r in paired], name=name,
                                   boxpoints="all", jitter=0.4, pointpos=0,
                                   text=[f"repeat {r.repeat}, fold {r.fold}" for r in paired],
                                   hovertemplate="%{text}: %{y:+.3f}<extra>" + name + "</extra>"))
    aucs.update_layout(title=f"Validation {auc} of each fold, per variant (box: quartiles; points: folds)",
                       yaxis_title=f"validation {score.metric} (last epoch)", showlegend=False)
    diffs.add_hline(y=0.0, line_dash="dash", line_color="grey")
    diffs.update_layout(title=f"Paired {auc} difference from the baseline on the same fold",
                        yaxis_title=f"{auc} (variant) - {auc} (baseline)", showlegend=False)
    return figure(aucs, "fig-fold-aucs", height=480) + figure(diffs, "fig-differences", height=420)


def page_html(rows: Sequence[dict], runs: Sequence[RunRecord], settings: AblationSettings, study_name: str,
              storage_url: str, methods: list[str], variant_list: Sequence[Variant]) -> str:
    """The self-contained HTML page: plots, verdicts, table, methods, the score named for the task."""
    e = html.escape
    score = score_name(settings.task)
    columns = summary_columns(score.ordinal)
    cells = [[e(_cell(r[c])) for c in columns] for r in rows]
    verdicts = "".join(f"<li>{e(verdict_line(r, score))}</li>" for r in rows)
    origins = "".join(f"<li><b>{e(v.name)}</b>: {e(v.origin)}; {e(describe_spec(v.spec.to_dict()))}</li>"
                      for v in variant_list)
    padding = "".join(note(f"{line}.") for line in padding_lines(variant_list))
    return page(f"Ablation: {study_name}", [
        "<h1>The seed model and the course's modifications</h1>",
        f"<p>Study <code>{e(study_name)}</code> in <code>{e(redact(storage_url))}</code>:\n"
        f"{settings.folds}-fold cross-validation x {settings.repeats} repeat(s), {settings.epochs} epochs,\n"
        f"{e('x'.join(map(str, settings.size)))} voxels, task {e(settings.task)}"
        + (f"; every AUC is the {e(score.long)}" if score.ordinal else "") + ".</p>",
        f"<h2>Verdicts (alpha = {ALPHA})</h2><ul>{verdicts}</ul>",
        plot_html(rows, runs, score),
        f'<h2>Table</h2><div class="wide">{table(columns, cells)}</div>',
        note("Empty cells are undefined (the baseline has no test against itself). The same table is in "
             "ablation.csv; every run is in runs.csv and, with its learning curve, in optuna-dashboard."),
        f"<h2>Variants</h2><ul>{origins}</ul>{padding}",
        "<h2>Methods</h2>" + "".join(f"<p>{e(m)}</p>" for m in methods),
    ])


def write_outputs(out_dir: Path, rows: Sequence[dict], runs: Sequence[RunRecord], page_text: str,
                  ordinal: bool = False) -> list[Path]:
    """ablation.csv, runs.csv (in run order) and ablation.html, each written atomically; ``ordinal``: with
    an ordinal task's columns."""
    paths = [out_dir / "ablation.csv", out_dir / "runs.csv", out_dir / "ablation.html"]
    run_cols = run_columns(ordinal)
    texts = [to_csv(rows, summary_columns(ordinal)), to_csv([r.to_row(run_cols) for r in runs], run_cols), page_text]
    for path, text in zip(paths, texts, strict=True):
        atomic_write_text(path, text)
    return paths


def print_summary(rows: Sequence[dict], paths: Sequence[Path], storage_url: str,
                  score: ScoreName = BINARY_SCORE) -> None:
    """The console's last words: the table, each variant's verdict, the files written, the dashboard command."""
    print(format_table(rows, score))
    print()
    if score.ordinal:
        print(f"{score.short}: the {score.long}, each fold's at its last epoch")
    for row in rows[1:]:
        print(verdict_line(row, score))
    print("\nwritten:")
    for path in paths:
        print(f"  {path}")
    print(f"explore the runs:\n  optuna-dashboard {redact(storage_url)}")
