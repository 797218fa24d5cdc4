"""Benchmark: do exported models hold up on phantoms that no study ever saw? (run by hand, not a test)

The project claims that the model ``python -m search.export`` ships generalises to unseen scans. On
synthetic phantoms that claim can be checked directly: this script draws a large fresh set (300 by
default) from a phantom seed that no study used, scores each exported model folder on it at that
folder's own preprocessing (input size, HU window, task), and compares every model with a reference
on the same scans.

- Per model: ROC AUC with a 95% stratified bootstrap interval (``search.stats.intervals.bootstrap_auc``).
- Per model against the reference (default: the first MODEL_DIR): the paired bootstrap interval of
  the difference in AUC, model minus reference (``search.stats.intervals.bootstrap_auc_difference``); an
  interval wholly above or below 0 is "significantly better" or "significantly worse".
- Beside each model, what its metrics.json claims (the locked-test AUC, a confirmed score), and the
  optimism of a confirmed score: confirmed score minus fresh AUC.

The fresh set is generated once and cached under ``--cache-dir/<seed>-<n>/`` (``phantoms/`` and the
preprocessed ``scans/``), so reruns and further models cost only inference. Seed 0 is refused: it is the
default phantom set's seed, which every study searches, trains and tests on. Inference is float32 on the
CPU in eval mode, whatever the model was trained on. Progress goes to stderr, one line per stage; the
report goes to stdout, and ``--json`` writes every number.

    python benchmarks/bench_selection.py studies/lungct/model
    python benchmarks/bench_selection.py studies/a/model studies/b/model --reference studies/a/model \\
        --n 300 --phantom-seed 777 --json studies/fresh/a-vs-b.json
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import re
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from lungct.dataset import LoadedScans, load_scans
from lungct.default_data import DEFAULT_SEED
from lungct.discover import Discovery, discover
from lungct.errors import DataError, UsageError
from lungct.files import atomic_write_text
from lungct.phantom import (
    GENERATOR_VERSION,
    MARKER_NAME,
    MAX_MATRIX,
    MIN_MATRIX,
    class_counts,
    generate_phantoms,
    phantom_set_is_current,
)
from lungct.records import PreprocessConfig
from search.cli import exit_code
from search.model.folder import METRICS, ModelDirError, ModelInfo, load_model
from search.stats.intervals import (
    DEFAULT_CONFIDENCE,
    DEFAULT_RESAMPLES,
    Interval,
    bootstrap_auc,
    bootstrap_auc_difference,
    stratified_resamples,
)
from search.stats.metrics import ordinal_metrics, severity_score
from search.training.loop import predict_probs
from search.training.precision import cpu_model
from space import count_params

DEFAULT_N = 300
MIN_N = 10  # tests only; the benchmark's figure needs DEFAULT_N or more
DEFAULT_PHANTOM_SEED = 777
DEFAULT_MATRIX = 256
MIN_RESAMPLES = 100
BOOTSTRAP_SEED = 0
# CPU-seconds per phantom at matrix 256 (benchmarks/RESULTS.md), for the generation stage's estimate.
PHANTOM_CPU_S = 0.38
# The folder name the default phantom set gets (lungct.default_data): its seed is in the name.
_DEFAULT_SET_NAME = re.compile(r"^phantoms-v\d+-n\d+-seed(\d+)$")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):
        raise UsageError(message)


def build_parser() -> argparse.ArgumentParser:
    """The command-line flags."""
    p = _Parser(prog="python benchmarks/bench_selection.py", description=__doc__.split("\n\n")[0])
    p.add_argument("model_dirs", nargs="+", metavar="MODEL_DIR", help="model folders written by search.export")
    p.add_argument("--reference", default=None, metavar="MODEL_DIR",
                   help="the model every other one is compared with (default: the first MODEL_DIR)")
    p.add_argument("--n", type=int, default=DEFAULT_N, help=f"fresh phantoms (default: {DEFAULT_N}; at least {MIN_N})")
    p.add_argument("--phantom-seed", type=int, default=DEFAULT_PHANTOM_SEED,
                   help=f"seed of the fresh set, not {DEFAULT_SEED} (the studies'); default: {DEFAULT_PHANTOM_SEED}")
    p.add_argument("--matrix", type=int, default=DEFAULT_MATRIX,
                   help=f"in-plane voxels of the fresh phantoms (default: {DEFAULT_MATRIX}, as the default set)")
    p.add_argument("--cache-dir", type=Path, default=Path("studies/fresh"),
                   help="where the fresh set and its preprocessed scans are kept (default: studies/fresh)")
    p.add_argument("--bootstrap", type=int, default=DEFAULT_RESAMPLES,
                   help=f"bootstrap resamples (default: {DEFAULT_RESAMPLES})")
    p.add_argument("--json", type=Path, default=None, metavar="OUT.json", help="write every number here")
    p.add_argument("--workers", type=int, default=None,
                   help="processes for generating and decoding (default: all cores)")
    return p


def check_args(args: argparse.Namespace) -> None:
    """Raise UsageError for a flag out of range, naming the flag."""
    if args.phantom_seed == DEFAULT_SEED:
        raise UsageError(f"--phantom-seed: {DEFAULT_SEED} is the default phantom set's seed, which studies search, "
                         f"train and test on, so its scans are not fresh; use another (default {DEFAULT_PHANTOM_SEED})")
    if args.phantom_seed < 0:
        raise UsageError(f"--phantom-seed: must be non-negative, got {args.phantom_seed}")
    if args.n < MIN_N:
        raise UsageError(f"--n: at least {MIN_N} phantoms, got {args.n} (the benchmark's figure uses {DEFAULT_N})")
    if not MIN_MATRIX <= args.matrix <= MAX_MATRIX:
        raise UsageError(f"--matrix: must be in {MIN_MATRIX}..{MAX_MATRIX}, got {args.matrix}")
    if args.bootstrap < MIN_RESAMPLES:
        raise UsageError(f"--bootstrap: at least {MIN_RESAMPLES} resamples, got {args.bootstrap}")
    if args.workers is not None and args.workers < 1:
        raise UsageError(f"--workers: must be at least 1, got {args.workers}")
    if args.cache_dir.exists() and not args.cache_dir.is_dir():
        raise UsageError(f"--cache-dir: {args.cache_dir} is a file")


def _stage(message: str) -> None:
    print(f"[bench_selection] {message}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------------------
# Models and what their folders claim
# --------------------------------------------------------------------------------------------------


@dataclass
class LoadedModel:
    """A model folder, loaded.

    Attributes:
        directory: The folder as given.
        model: The network (CPU, eval mode, float32).
        info: Its preprocessing and task.
        params: Trainable parameters of its spec, times its members for an ensemble.
        claims: What its metrics.json says (locked-test AUC, confirmed score), None where absent.
    """

    directory: str
    model: torch.nn.Module
    info: ModelInfo
    params: int
    claims: dict


def _number(value) -> float | None:
    """A finite float from a number or an interval-like dict (``estimate``), else None."""
    if isinstance(value, dict):
        value = value.get("estimate", value.get("value"))
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def _get(data, *keys):
    for key in keys:
        if not isinstance(data, dict):
            return None
        data = data.get(key)
    return data


def read_claims(directory: Path) -> tuple[dict, dict]:
    """What metrics.json claims (absent or unreadable: all None), and the metrics themselves."""
    try:
        metrics = json.loads((directory / METRICS).read_text())
    except (OSError, ValueError):
        metrics = {}
    metrics = metrics if isinstance(metrics, dict) else {}
    confirmed, source = None, None
    for path in (("selection", "confirmed_score"), ("confirmed_score",), ("confirmation", "confirmed_score"),
                 ("confirmation",)):
        confirmed = _number(_get(metrics, *path))
        if confirmed is not None:
            source = ".".join(path)
            break
    return {"locked_test_auc": _number(_get(metrics, "test", "model", "auc")),
            "confirmed_score": confirmed, "confirmed_score_source": source}, metrics


def trained_phantom_seed(metrics: dict) -> int | None:
    """The phantom seed of the data a model was exported from, where metrics.json shows it."""
    root = _get(metrics, "data", "root")
    if not isinstance(root, str) or not root:
        return None
    try:
        marker = json.loads((Path(root) / MARKER_NAME).read_text())
        if isinstance(marker, dict) and isinstance(marker.get("seed"), int):
            return marker["seed"]
    except (OSError, ValueError):
        pass
    named = _DEFAULT_SET_NAME.match(Path(root).name)
    return int(named.group(1)) if named else None


def load_models(directories: list[str], phantom_seed: int) -> list[LoadedModel]:
    """Load every folder first, so a bad one fails before minutes of generation.

    Raises:
        ModelDirError: A folder is missing or invalid, or its model was trained on this phantom seed.
    """
    models = []
    for directory in directories:
        model, _, info = load_model(directory)
        claims, metrics = read_claims(Path(directory))
        if trained_phantom_seed(metrics) == phantom_seed:
            raise ModelDirError(f"{directory}: trained on phantoms of seed {phantom_seed} "
                                f"(metrics.json data.root); choose another --phantom-seed")
        models.append(LoadedModel(directory, model, info, count_params(model), claims))  # every member, cutpoints too
    return models


# --------------------------------------------------------------------------------------------------
# The fresh set
# --------------------------------------------------------------------------------------------------


def fresh_set_dir(cache_dir: Path, seed: int, n: int, matrix: int = DEFAULT_MATRIX) -> Path:
    """``<cache_dir>/<seed>-<n>``, with ``-m<matrix>`` for a matrix other than the default set's."""
    return Path(cache_dir) / (f"{seed}-{n}" if matrix == DEFAULT_MATRIX else f"{seed}-{n}-m{matrix}")


def ensure_fresh_phantoms(root: Path, n: int, seed: int, matrix: int, workers: int | None) -> bool:
    """Generate the set into ``root/phantoms`` unless a complete one is there. Returns whether it generated.

    The generator writes its marker as complete only after the last file, so an interrupted run is
    simply redone.
    """
    phantoms = root / "phantoms"
    if phantom_set_is_current(phantoms, n=n, seed=seed, matrix=matrix):
        return False
    generate_phantoms(phantoms, n, seed, matrix=matrix, workers=workers, progress=sys.stderr.isatty())
    return True


@dataclass
class FreshScans:
    """The fresh set as one (task, preprocessing) sees it."""

    found: Discovery
    loaded: LoadedScans

    def counts(self) -> Counter:
        return Counter(int(v) for v in self.loaded.labels.tolist())


def load_fresh(root: Path, info: ModelInfo, workers: int | None) -> FreshScans:
    """Discover the fresh set under a model's task and load it at the model's preprocessing, through the cache.

    Raises:
        DataError: The set holds fewer than one scan of a label under the task.
    """
    found = discover(root / "phantoms", info.task)
    loaded = load_scans(found.records, info.preprocess, root / "scans", workers=workers,
                        progress=sys.stderr.isatty())
    fresh = FreshScans(found, loaded)
    counts = fresh.counts()
    labels = range(found.task.n_grades)
    if min(counts.get(k, 0) for k in labels) < 1:
        held = " and ".join(f"{counts.get(k, 0)} of label {k}" for k in labels)
        raise DataError(f"fresh set: {held} under task {info.task} after {len(loaded.skipped)} skipped; raise --n")
    return fresh


def _config_text(config: PreprocessConfig) -> str:
    return f"{'x'.join(map(str, config.size))} HU [{config.hu_min:g}, {config.hu_max:g}]"


# --------------------------------------------------------------------------------------------------
# Scoring and comparing
# --------------------------------------------------------------------------------------------------


@dataclass
class Scored:
    """One model's predictions on the fresh set and its AUC.

    ``probs`` is (N,) P(label 1) for a binary model, (N, K-1) cumulative P(grade >= k) for a severity model,
    whose ``auc`` is then the mean "grade >= k" AUC and ``ordinal`` holds QWK, MAE, macro AUC and balanced
    accuracy with their intervals and the confusion matrix.
    """

    model: LoadedModel
    study_ids: list[str]
    labels: np.ndarray
    probs: np.ndarray
    auc: Interval
    seconds: float
    ordinal: dict | None = None

    @property
    def scores(self) -> np.ndarray:
        """One ranking score per scan (``search.stats.metrics.severity_score``)."""
        return severity_score(self.probs)


# The ordinal figures that get an interval, and how each is read from one resample.
ORDINAL_FIGURES = ("qwk", "mae", "macro_auc", "balanced_accuracy")


def _percentile_interval(estimate: float, values: np.ndarray, method: str) -> Interval:
    values = values[np.isfinite(values)]
    tail = 100 * (1 - DEFAULT_CONFIDENCE) / 2
    low, high = np.percentile(values, [tail, 100 - tail]) if values.size else (math.nan, math.nan)
    return Interval(float(estimate), float(low), float(high), DEFAULT_CONFIDENCE, method)


def ordinal_figures(labels: np.ndarray, cumulative: np.ndarray, n_resamples: int,
                    others: np.ndarray | None = None) -> dict:
    """QWK, MAE, macro AUC and balanced accuracy with stratified bootstrap intervals, and the confusion matrix;
    with ``others`` (a reference's cumulative probabilities on the same scans), the paired differences instead."""
    rows = stratified_resamples(labels, n_resamples, BOOTSTRAP_SEED)
    whole = ordinal_metrics(labels, cumulative).to_dict()
    if others is not None:
        whole_ref = ordinal_metrics(labels, others).to_dict()
    draws = {name: [] for name in ORDINAL_FIGURES}
    for row in rows:
        m = ordinal_metrics(labels[row], cumulative[row]).to_dict()
        ref = ordinal_metrics(labels[row], others[row]).to_dict() if others is not None else None
        for name in ORDINAL_FIGURES:
            draws[name].append(m[name] - (ref[name] if ref else 0.0))
    kind = "paired stratified bootstrap" if others is not None else "stratified bootstrap"
    method = f"{kind}, percentile interval, {n_resamples} resamples, seed {BOOTSTRAP_SEED}"
    out = {}
    for name in ORDINAL_FIGURES:
        estimate = whole[name] - (whole_ref[name] if others is not None else 0.0)
        out[name] = _percentile_interval(estimate, np.asarray(draws[name], dtype=float), method).to_dict()
    if others is None:
        out["auc_at_least"] = whole["auc_at_least"]
        out["confusion"] = whole["confusion"]
    return out


def score(model: LoadedModel, fresh: FreshScans, n_resamples: int) -> Scored:
    """Float32 probabilities on the CPU in eval mode, and the AUC with its stratified bootstrap interval."""
    start = time.perf_counter()
    probs = predict_probs(model.model, fresh.loaded.volumes, torch.device("cpu"), amp=False)
    seconds = time.perf_counter() - start
    labels = fresh.loaded.labels.numpy().astype(int)
    ordinal = ordinal_figures(labels, probs, n_resamples) if probs.ndim == 2 else None
    return Scored(model, fresh.loaded.study_ids, labels, probs,
                  bootstrap_auc(labels, severity_score(probs), n_resamples, seed=BOOTSTRAP_SEED), seconds, ordinal)


def verdict(difference: Interval) -> str:
    """What a paired interval of model minus reference says."""
    if difference.low > 0:
        return "significantly better"
    if difference.high < 0:
        return "significantly worse"
    return "not significantly different"


def compare(model: Scored, reference: Scored, n_resamples: int) -> dict:
    """The paired bootstrap interval of model minus reference AUC, on the scans both scored."""
    entry = {"model": model.model.directory, "reference": reference.model.directory}
    if model.model.info.task != reference.model.info.task:
        return entry | {"n": 0, "difference": None, "verdict": "not comparable: different tasks "
                        f"({model.model.info.task} vs {reference.model.info.task})"}
    # Preprocessing may differ per folder; a scan skipped at one size is left out of the pair.
    at = {sid: i for i, sid in enumerate(model.study_ids)}
    rows = [(i, at[sid]) for i, sid in enumerate(reference.study_ids) if sid in at]
    ref_rows, model_rows = (np.array(r, dtype=int) for r in zip(*rows, strict=True))
    labels = reference.labels[ref_rows]
    if not np.array_equal(labels, model.labels[model_rows]):
        raise AssertionError("the same scans carry different labels under the same task")
    difference = bootstrap_auc_difference(labels, model.scores[model_rows], reference.scores[ref_rows], n_resamples,
                                          seed=BOOTSTRAP_SEED)
    entry |= {"n": len(rows), "difference": difference.to_dict(), "verdict": verdict(difference)}
    if model.ordinal is not None:
        entry["ordinal_differences"] = ordinal_figures(labels, model.probs[model_rows], n_resamples,
                                                       others=reference.probs[ref_rows])
    return entry


def _fmt(value: float | None, signed: bool = False) -> str:
    return "-" if value is None else (f"{value:+.3f}" if signed else f"{value:.3f}")


def model_entry(s: Scored) -> dict:
    """Every number of one model, JSON-ready."""
    claims = s.model.claims
    fresh = s.auc.estimate
    optimism = None if claims["confirmed_score"] is None else claims["confirmed_score"] - fresh
    test_gap = None if claims["locked_test_auc"] is None else claims["locked_test_auc"] - fresh
    info = s.model.info
    return {
        "dir": s.model.directory, "params": s.model.params, "task": info.task, "classes": list(info.classes),
        "preprocess": info.preprocess.to_dict(), "n": int(s.labels.size), "n_negative": int(np.sum(s.labels == 0)),
        "n_positive": int(np.sum(s.labels == 1)), "fresh_auc": s.auc.to_dict(), "predict_seconds": s.seconds,
        **claims, "optimism": optimism, "locked_test_minus_fresh": test_gap,
        "predictions": [{"study_id": sid, "label": int(y), "p": round(float(p), 6)}
                        for sid, y, p in zip(s.study_ids, s.labels, s.scores, strict=True)],
        "ordinal": s.ordinal,
    }


def format_models(entries: list[dict], reference: str) -> str:
    """One row per model."""
    headers = ("model", "params", "input", "fresh AUC (95% CI)", "locked test", "confirmed", "optimism")
    rows = []
    for e in entries:
        mark = " (reference)" if e["dir"] == reference else ""
        rows.append((e["dir"] + mark, f"{e['params']:,}", _config_text(PreprocessConfig.from_dict(e["preprocess"])),
                     Interval(**e["fresh_auc"]).text(), _fmt(e["locked_test_auc"]), _fmt(e["confirmed_score"]),
                     _fmt(e["optimism"], signed=True)))
    widths = [max(len(r[i]) for r in [headers, *rows]) for i in range(len(headers))]
    align = ["<", ">", "<", "<", ">", ">", ">"]
    return "\n".join("  " + "  ".join(f"{cell:{a}{w}}" for cell, a, w in zip(r, align, widths, strict=True)).rstrip()
                     for r in [headers, *rows])


def format_comparison(c: dict) -> str:
    """One line per comparison."""
    if c["difference"] is None:
        return f"  {c['model']} vs {c['reference']}: {c['verdict']}"
    d = Interval(**c["difference"])
    return (f"  {c['model']} - {c['reference']}: {d.estimate:+.3f} ({round(100 * d.confidence)}% CI {d.low:+.3f} "
            f"to {d.high:+.3f}) on {c['n']} scans: {c['verdict']}")


def _finite(value):
    """NaN and infinities as None, so the JSON is standard."""
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def write_json(path: Path, data: dict) -> None:
    """Atomically (``lungct.files``), so an interrupted run leaves no half-written file."""
    atomic_write_text(path, json.dumps(_finite(data), indent=2, allow_nan=False) + "\n")


def run(args: argparse.Namespace) -> dict:
    """Everything after parsing; returns the JSON-ready result.

    Raises:
        ModelDirError, ValueError: A bad model folder.
        DataError: The fresh set cannot be used.
    """
    # One entry per folder, however it is spelled; the reference keeps the spelling of its MODEL_DIR.
    by_path = {Path(d).resolve(): d for d in reversed(args.model_dirs)}
    directories = list(dict.fromkeys(by_path[Path(d).resolve()] for d in args.model_dirs))
    reference = by_path.get(Path(args.reference).resolve(), args.reference) if args.reference else directories[0]
    if reference not in directories:
        directories.insert(0, reference)
    _stage(f"loading {len(directories)} model folder(s)")
    models = load_models(directories, args.phantom_seed)

    root = fresh_set_dir(args.cache_dir, args.phantom_seed, args.n, args.matrix)
    if phantom_set_is_current(root / "phantoms", n=args.n, seed=args.phantom_seed, matrix=args.matrix):
        _stage(f"reusing the fresh set in {root / 'phantoms'}")
    else:
        processes = min(args.workers or os.cpu_count() or 1, args.n)
        eta = f", about {PHANTOM_CPU_S * args.n / processes:.0f} s" if args.matrix == DEFAULT_MATRIX else ""
        _stage(f"generating {args.n} fresh phantoms (seed {args.phantom_seed}, matrix {args.matrix}) into "
               f"{root / 'phantoms'} with {processes} process(es){eta}")
    start = time.perf_counter()
    generated = ensure_fresh_phantoms(root, args.n, args.phantom_seed, args.matrix, args.workers)
    generate_s = time.perf_counter() - start

    fresh: dict[tuple, FreshScans] = {}
    scored: list[Scored] = []
    for m in models:
        key = (m.info.task, m.info.preprocess)
        if key not in fresh:
            _stage(f"loading the fresh scans for task {m.info.task} at {_config_text(m.info.preprocess)}")
            fresh[key] = load_fresh(root, m.info, args.workers)
        _stage(f"predicting {len(fresh[key].loaded.records)} scans with {m.directory}")
        scored.append(score(m, fresh[key], args.bootstrap))
    _stage(f"comparing with {reference} ({args.bootstrap} paired bootstrap resamples)")
    by_dir = {s.model.directory: s for s in scored}
    comparisons = [compare(s, by_dir[reference], args.bootstrap) for s in scored if s.model.directory != reference]

    tasks = {}
    for (task, _), f in fresh.items():
        counts = Counter(r.label for r in f.found.records)
        grades = {str(k): counts.get(k, 0) for k in range(f.found.task.n_grades)}
        tasks[task] = {"grades": grades, "description": f.found.task.description,
                       "negative": list(f.found.task.negative),
                       "positive": list(f.found.task.positive), "n_negative": counts.get(0, 0),
                       "n_positive": counts.get(1, 0), "excluded": len(f.found.excluded),
                       "skipped": len(f.found.skipped) + len(f.loaded.skipped)}
    return {
        "machine": {"cpu": cpu_model(), "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                    "python": platform.python_version(), "torch": torch.__version__,
                    "inference": "float32 on the CPU, eval mode"},
        "fresh_set": {"root": str(root / "phantoms"), "n": args.n, "seed": args.phantom_seed, "matrix": args.matrix,
                      "generator_version": GENERATOR_VERSION, "categories": class_counts(args.n),
                      "generated": generated, "generate_seconds": generate_s if generated else None, "tasks": tasks},
        "bootstrap": {"resamples": args.bootstrap, "seed": BOOTSTRAP_SEED, "confidence": DEFAULT_CONFIDENCE},
        "reference": reference,
        "models": [model_entry(s) for s in scored],
        "comparisons": comparisons,
    }


def print_report(result: dict) -> None:
    """The human-readable report, on stdout."""
    m, f = result["machine"], result["fresh_set"]
    print(f"machine: {m['cpu']}, {m['cores']} cores, {m['torch_threads']} torch threads; torch {m['torch']}, "
          f"Python {m['python']}; {m['inference']}")
    categories = ", ".join(f"{c} {k}" for c, k in f["categories"].items())
    print(f"fresh set: {f['n']} phantoms, seed {f['seed']}, matrix {f['matrix']}, generator v{f['generator_version']} "
          f"({categories}) in {f['root']}")
    for task, t in f["tasks"].items():
        skipped = f", {t['skipped']} skipped" if t["skipped"] else ""
        if len(t["grades"]) > 2:
            counts = ", ".join(f"grade {k}: {n}" for k, n in t["grades"].items())
            print(f"  task {task}, {t['description']}: {counts}, {t['excluded']} excluded{skipped}")
        else:
            print(f"  task {task}, {t['description']}: {t['n_negative']} {'/'.join(t['negative'])} vs "
                  f"{t['n_positive']} {'/'.join(t['positive'])}, {t['excluded']} excluded{skipped}")
    if f["n"] < DEFAULT_N:
        print(f"  note: fewer than {DEFAULT_N} phantoms; the intervals are wide and this is not the benchmark's figure")
    b = result["bootstrap"]
    print(f"\nmodels (fresh AUC: {round(100 * b['confidence'])}% stratified bootstrap CI, {b['resamples']} "
          f"resamples; optimism = confirmed_score - fresh AUC):")
    print(format_models(result["models"], result["reference"]))
    for e in result["models"]:
        if e.get("ordinal"):
            o = e["ordinal"]
            figures = ", ".join(f"{name} {Interval(**o[name]).text()}" for name in ORDINAL_FIGURES)
            print(f"  {e['dir']}: {figures}; grade >= k AUCs {', '.join(_fmt(a) for a in o['auc_at_least'])}; "
                  f"confusion (rows true grade) {o['confusion']}")
    if result["comparisons"]:
        print("\ncomparisons (difference in fresh AUC, model - reference, paired bootstrap on the same scans):")
        for c in result["comparisons"]:
            print(format_comparison(c))
            for name, d in (c.get("ordinal_differences") or {}).items():
                d = Interval(**d)
                print(f"    {name}: {d.estimate:+.3f} ({round(100 * d.confidence)}% CI {d.low:+.3f} to {d.high:+.3f})")


def main(argv: list[str] | None = None) -> int:
    """Score the model folders on fresh phantoms. Exit code: 0 done, 2 bad input, 130 interrupted."""
    def body() -> None:
        args = build_parser().parse_args(argv)
        check_args(args)
        result = run(args)
        print_report(result)
        if args.json is not None:
            write_json(args.json, result)
            print(f"\nwrote {args.json}")

    return exit_code(body, interrupted="interrupted; the next run reuses the phantoms and scans already finished")


if __name__ == "__main__":
    sys.exit(main())
