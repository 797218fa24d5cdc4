"""``python -m search.ablate``: the seed baseline against each course modification, by repeated cross-validation.

Trains the seed model and each of the course's six modifications (and, with --study NAME, that search
study's best architecture) on the same K stratified folds x R repeats of the train+validation scans,
with the same seeds, then compares each variant with the baseline fold by fold: mean and 95% CI of
validation AUC and accuracy, the paired AUC difference and a paired test, and a verdict at 0.05.
The locked test part is never read. Every run is a trial of its own Optuna study, so an interrupted
ablation resumes where it stopped and optuna-dashboard shows each run's learning curve.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import difflib
import hashlib
import html
import io
import json
import math
import shlex
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import optuna
import torch
from optuna.trial import FrozenTrial, TrialState
from tqdm.auto import tqdm

from lungct.cache import atomic_write_bytes
from lungct.errors import DataError
from lungct.records import TASKS, PreprocessConfig
from lungct.splits import Fold, fingerprint, load_or_make_folds
from search import schema
from search.data import PreparedData, cv_records, describe, prepare_data, resolve_data_root
from search.fidelity import CPU_DEFAULT, GPU_DEFAULT, choose_fidelity, device_defaults
from search.stats import (
    MIN_WILCOXON_PAIRS,
    PairedTest,
    corrected_resampled_ttest,
    mean_ci,
    paired_test,
    verdict,
)
from search.study import default_storage, fail_running, load_existing_study, open_storage, redact
from search.train import (
    EpochResult,
    Tensors,
    device_name,
    resolve_device,
)
from search.trainer import TrainingFailed, train_spec
from search.trials import ranked_trials
from space import (
    ArchSpec,
    SpecInputError,
    TrainSpec,
    baseline,
    baseline_train,
    cost,
    describe_spec,
    fit_to_size,
    variants,
)

ALPHA = 0.05
BASELINE = "baseline"
STUDY_BEST = "study_best"
SETTINGS_ATTR = "settings"
SEED_PADDING = baseline().padding

SUMMARY_COLUMNS = (
    "variant", "n_runs", "n_diverged", "auc_mean", "auc_ci_low", "auc_ci_high", "acc_mean", "acc_ci_low",
    "acc_ci_high", "params", "gflops", "train_seconds_mean", "auc_diff_vs_baseline", "auc_diff_ci_low",
    "auc_diff_ci_high", "n_pairs", "p_value", "test", "p_value_nadeau_bengio", "verdict", "padding",
    "architecture", "training",
)
RUN_COLUMNS = (
    "variant", "repeat", "fold", "seed", "state", "auc", "accuracy", "sensitivity", "specificity",
    "auc_best_epoch", "best_epoch", "epochs", "train_seconds", "n_train", "n_val", "params", "gflops", "device",
    "trial", "reason",
)


def build_parser() -> argparse.ArgumentParser:
    """The command line of ``python -m search.ablate``."""
    cpu, gpu = CPU_DEFAULT, GPU_DEFAULT
    cpu_size, gpu_size = " ".join(map(str, cpu["size"])), " ".join(map(str, gpu["size"]))
    p = argparse.ArgumentParser(prog="python -m search.ablate", description=__doc__.split("\n\n")[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", metavar="ROOT", help="data folder or CSV manifest (default: the synthetic phantom "
                   "set, generated once under studies/)")
    p.add_argument("--variants", default="all", metavar="LIST",
                   help=f"all, or a comma-separated list of {', '.join(variants())}; the baseline is always "
                   "included, since every variant is compared with it (default: all)")
    p.add_argument("--study", metavar="NAME", help=f"also run the best complete trial of this search study as "
                   f"variant {STUDY_BEST} (default: none)")
    p.add_argument("--study-storage", metavar="URL", help="storage of --study (default: sqlite:///studies/<NAME>.db)")
    p.add_argument("--folds", type=int, default=5, metavar="K", help="stratified folds per repeat (default: 5)")
    p.add_argument("--repeats", type=int, default=2, metavar="R",
                   help="repeats of the K-fold split, each reshuffled (default: 2)")
    p.add_argument("--epochs", type=int, metavar="E", help=f"epochs per run (default: {cpu['ablate_epochs']} on "
                   f"the CPU, {gpu['ablate_epochs']} on a GPU)")
    p.add_argument("--size", type=int, nargs=3, metavar=("D", "H", "W"), help=f"input size in voxels "
                   f"(default: {cpu_size} on the CPU, the seed's {gpu_size} on a GPU)")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"),
                   help="auto = CUDA when available, else CPU (default: auto)")
    p.add_argument("--seed", type=int, default=0, metavar="S", help="seeds the folds and training (run "
                   "(repeat r, fold f) uses S + 1000 r + f for every variant) (default: 0)")
    p.add_argument("--split-seed", type=int, default=0, metavar="S",
                   help="seed of the data set's train/val/test split, whose test part the ablation never reads; "
                   "keep it equal to search.run's --split-seed; with --study the study's is used (default: 0)")
    p.add_argument("--task", default="course", choices=sorted(TASKS),
                   help="which categories are labels 0 and 1 (default: course = CT-0 vs CT-2/CT-3)")
    p.add_argument("--storage", metavar="URL", help="where the runs are stored, any SQLAlchemy URL "
                   "(default: sqlite:///studies/ablation.db)")
    p.add_argument("--out", metavar="DIR", help="where ablation.csv, runs.csv and ablation.html go "
                   "(default: studies/ablation)")
    p.add_argument("--phantoms", type=int, default=cpu["n_phantoms"], metavar="N",
                   help=f"size of the default phantom set when no --data is given (default: {cpu['n_phantoms']})")
    p.add_argument("--studies-dir", default="studies", metavar="DIR",
                   help="where studies, caches, splits and outputs are written (default: studies)")
    p.add_argument("--workers", type=int, default=None, help="processes decoding scans on a cold cache "
                   "(default: all cores)")
    return p


@dataclass(frozen=True)
class AblationSettings:
    """What every run of an ablation shares; it names the study, with the fingerprint of the scans it folds.

    ``split_seed`` picks the train/val/test split whose test part stays locked (the search study's, with
    --study); the fingerprint of the train+val scans already tells one split from another.
    """

    data: str | None
    task: str
    size: tuple[int, int, int]
    epochs: int
    folds: int
    repeats: int
    seed: int
    split_seed: int
    n_phantoms: int
    amp: bool

    def study_name(self, data_fingerprint: str) -> str:
        """``ablation-<fingerprint>-<task>-<DxHxW>-e<E>-k<K>r<R>-s<seed>``: other settings, another study."""
        return (f"ablation-{data_fingerprint}-{self.task}-{'x'.join(map(str, self.size))}-e{self.epochs}"
                f"-k{self.folds}r{self.repeats}-s{self.seed}")

    def to_dict(self) -> dict:
        """JSON-ready dict."""
        return {"data": self.data, "task": self.task, "size": list(self.size), "epochs": self.epochs,
                "folds": self.folds, "repeats": self.repeats, "seed": self.seed, "split_seed": self.split_seed,
                "n_phantoms": self.n_phantoms}


@dataclass(frozen=True)
class Variant:
    """One architecture to cross-validate.

    Attributes:
        name: ``baseline``, a modification's name, or ``study_best``.
        spec: The architecture as trained (after fitting it to the input size).
        train: Optimiser settings.
        padding_note: Why 'same' padding replaced the spec's own, or None.
        origin: Where the spec comes from, in words.
    """

    name: str
    spec: ArchSpec
    train: TrainSpec
    padding_note: str | None
    origin: str

    @property
    def key(self) -> str:
        """A hash of spec and training settings: a stored run counts only for the spec it trained."""
        text = json.dumps({"spec": self.spec.to_dict(), "train": self.train.to_dict()}, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:12]

    @property
    def padding(self) -> str:
        """The padding, and whether it differs from the seed's."""
        if self.spec.padding == SEED_PADDING:
            return self.spec.padding
        return f"{self.spec.padding} (the seed's is {SEED_PADDING})"


@dataclass(frozen=True)
class RunRecord:
    """One finished (or failed) run, read back from its trial."""

    variant: str
    repeat: int
    fold: int
    seed: int
    state: str
    auc: float
    accuracy: float
    sensitivity: float
    specificity: float
    auc_best_epoch: float
    best_epoch: int
    epochs: int
    train_seconds: float
    n_train: int
    n_val: int
    params: int
    gflops: float
    device: str
    trial: int
    reason: str

    @classmethod
    def from_trial(cls, trial: FrozenTrial) -> RunRecord:
        """The run a trial of an ablation study holds."""
        a = trial.user_attrs
        nan = math.nan
        return cls(
            variant=a["variant"], repeat=int(a["repeat"]), fold=int(a["fold"]), seed=int(a["seed"]),
            state=trial.state.name.lower(), auc=a.get("auc", nan), accuracy=a.get("accuracy", nan),
            sensitivity=a.get("sensitivity", nan), specificity=a.get("specificity", nan),
            auc_best_epoch=a.get("auc_best_epoch", nan), best_epoch=a.get("best_epoch", 0),
            epochs=a.get("epochs_run", 0), train_seconds=a.get("train_seconds", nan),
            n_train=a.get("n_train", 0), n_val=a.get("n_val", 0), params=a.get("params", 0),
            gflops=a.get("gflops", nan), device=a.get("device", ""), trial=trial.number,
            reason=a.get("prune_reason", a.get("fail_reason", "")),
        )

    @property
    def scored(self) -> bool:
        """Whether the run finished with a validation AUC."""
        return self.state == "complete" and math.isfinite(self.auc)

    def to_row(self) -> dict:
        """A row of runs.csv."""
        return {c: getattr(self, c) for c in RUN_COLUMNS}


class RunFailed(Exception):
    """A run failed for a known reason (out of memory); it is redone when the ablation is run again."""


def run_seed(base: int, repeat: int, fold: int) -> int:
    """The seed of run (repeat, fold), the same for every variant."""
    return base + 1000 * repeat + fold


# ---------------------------------------------------------------------------------------------------
# Variants


def parse_variants(text: str) -> tuple[list[str], bool]:
    """``all`` or a comma-separated list -> the names in the course's order, baseline first.

    Returns:
        The names, and whether the baseline was added because the list lacked it.

    Raises:
        ValueError: An unknown name (the nearest valid one is suggested), or an empty list.
    """
    known = list(variants())
    names = [n.strip() for n in text.split(",") if n.strip()]
    if names == ["all"]:
        return known, False
    for name in names:
        if name in known:
            continue
        if name == STUDY_BEST:
            raise ValueError(f"--variants: {STUDY_BEST} is added by --study NAME (the search study whose best "
                             "trial to cross-validate), not by --variants")
        close = difflib.get_close_matches(name, [*known, "all"], n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ValueError(f"--variants: unknown variant {name!r}{hint} (choose from all, {', '.join(known)})")
    if not names:
        raise ValueError(f"--variants: expected all or a list of {', '.join(known)}, got {text!r}")
    added = BASELINE not in names
    return [n for n in known if n in names or n == BASELINE], added


@dataclass(frozen=True)
class StudyBest:
    """A search study's best complete trial, as the ``study_best`` variant needs it.

    Attributes:
        spec: Its architecture.
        train: Its optimiser settings.
        origin: Where it comes from, in words.
        split_seed: The seed of the study's train/val/test split (None if the study does not say), so
            that the ablation keeps that study's test part locked too.
    """

    spec: ArchSpec
    train: TrainSpec
    origin: str
    split_seed: int | None


def load_study_best(name: str, storage_url: str) -> StudyBest:
    """The spec and training settings of a search study's recommended (else best complete) trial, and its origin.

    Raises:
        ValueError: No such study, no complete trial with a spec, or a stored spec that no longer parses.
    """
    study = load_existing_study(name, storage_url)
    decision = study.user_attrs.get(schema.STUDY_CONFIRMATION)
    if decision and not decision["recommended"]["baseline"]:
        # What search.export ships: the confirmation's recommendation.
        rec = decision["recommended"]
        spec, train = ArchSpec.from_dict(rec["spec"]), TrainSpec.from_dict(rec["train_spec"])
        origin = (f"recommended trial ({rec['trial']}) of study {name!r}, confirmed AUC {rec['confirmed']:.3f}")
    else:
        # No confirmation yet, or it kept the baseline: the search's best-scored trial is the candidate.
        complete = [t for t in ranked_trials(study) if {"spec", "train_spec"} <= t.user_attrs.keys()]
        if not complete:
            raise ValueError(f"--study: study {name!r} has no complete trial yet (run python -m search.run first)")
        best = complete[0]
        try:
            spec = ArchSpec.from_dict(best.user_attrs[schema.SPEC])
            train = TrainSpec.from_dict(best.user_attrs[schema.TRAIN_SPEC])
        except ValueError as e:
            raise ValueError(f"--study: trial {best.number} of study {name!r} holds a spec that does not parse: "
                             f"{e}") from None
        origin = f"best trial ({best.number}) of study {name!r}, search CV AUC {best.values[0]:.3f}"
    stored = study.user_attrs.get(schema.STUDY_SETTINGS) or {}
    seed = stored.get("split_seed", stored.get("seed"))
    return StudyBest(spec, train, origin, int(seed) if seed is not None else None)


def make_variants(names: Sequence[str], size: tuple[int, int, int],
                  study_best: StudyBest | None = None) -> list[Variant]:
    """The variants to run, each fitted to ``size``; all but ``study_best`` train with the seed's settings.

    Raises:
        ValueError: A variant cannot run at ``size`` even with 'same' padding.
    """
    specs = variants()
    todo = [(n, specs[n], baseline_train(), "the seed model" if n == BASELINE else f"the seed with {n}")
            for n in names]
    if study_best is not None:
        todo.append((STUDY_BEST, study_best.spec, study_best.train, study_best.origin))
    out = []
    for name, spec, train, origin in todo:
        try:
            fitted, note = fit_to_size(spec, size)
        except SpecInputError as e:
            raise ValueError(f"--size: variant {name} cannot run at {'x'.join(map(str, size))} voxels: {e}") \
                from None
        out.append(Variant(name, fitted, train, note, origin))
    return out


def padding_lines(variant_list: Sequence[Variant]) -> list[str]:
    """One line per reason the 'same' padding replaced a spec's own, naming the variants it applies to."""
    notes = dict.fromkeys(v.padding_note for v in variant_list if v.padding_note)
    return [f"padding: {', '.join(v.name for v in variant_list if v.padding_note == note)} use {note}"
            for note in notes]


def training_text(train: TrainSpec) -> str:
    """``adam lr 0.0001, weight decay 0, batch 2``."""
    return f"{train.optimizer} lr {train.lr:g}, weight decay {train.weight_decay:g}, batch {train.batch_size}"


# ---------------------------------------------------------------------------------------------------
# Runs


def finished_runs(study: optuna.Study) -> dict[tuple[str, str, int, int], FrozenTrial]:
    """Finished runs keyed by (variant, spec key, repeat, fold): complete, or pruned for a non-finite loss.

    A failed or still-running leftover is not finished and is redone.
    """
    done: dict[tuple[str, str, int, int], FrozenTrial] = {}
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)):
        a = t.user_attrs
        if {"variant", "spec_key", "repeat", "fold"} <= a.keys():
            done.setdefault((a["variant"], a["spec_key"], int(a["repeat"]), int(a["fold"])), t)
    return done


class AblationProgress:
    """A bar over runs (ETA, per-epoch postfix) on a terminal; elsewhere one line per finished run."""

    def __init__(self, total: int, epochs: int, enabled: bool | None = None):
        self.interactive = sys.stderr.isatty() if enabled is None else enabled
        self.total = total
        self.epochs = epochs
        self.done = 0
        self.bar = tqdm(total=total, desc="runs", unit="run", disable=not self.interactive, dynamic_ncols=True)

    def start(self, variant: str, fold: Fold) -> None:
        """A run begins."""
        self.bar.set_description(f"{variant} r{fold.repeat}f{fold.fold}")

    def on_epoch(self, result: EpochResult) -> None:
        """An epoch of the running run ended."""
        auc = result.val.auc if result.val is not None else math.nan
        self.bar.set_postfix(epoch=f"{result.epoch}/{self.epochs}", loss=f"{result.train_loss:.3f}",
                             val_auc=f"{auc:.3f}")

    def on_run_end(self, run: RunRecord) -> None:
        """A run ended (complete, diverged or failed)."""
        self.done += 1
        if run.scored:
            what = f"AUC {run.auc:.3f}, accuracy {run.accuracy:.3f}, {run.train_seconds:.0f} s"
        else:
            what = f"{run.state} ({run.reason or 'see optuna-dashboard'})"
        line = f"{run.variant} repeat {run.repeat} fold {run.fold}: {what}"
        if self.interactive:
            self.bar.write(line)
            self.bar.update()
        else:
            print(f"[{self.done}/{self.total}] {line}", flush=True)

    def close(self) -> None:
        """Close the bar."""
        self.bar.close()


class AblationRunner:
    """Runs one (variant, fold) at a time as a trial of the ablation study, on data loaded once.

    Args:
        prepared: The loaded train and validation scans.
        settings: Size, epochs, seeds, precision.
        device: Where to train.
        on_epoch: Called after every epoch of every run.
    """

    def __init__(self, prepared: PreparedData, settings: AblationSettings, device: torch.device,
                 on_epoch: Callable[[EpochResult], None] | None = None):
        self.prepared = prepared
        self.settings = settings
        self.device = device
        self.on_epoch = on_epoch
        self.running: int | None = None  # the trial number in progress, for cleanup after Ctrl-C
        self._fold: tuple[tuple[int, int], Tensors, Tensors] | None = None

    def fold_data(self, fold: Fold) -> tuple[Tensors, Tensors]:
        """The fold's training and validation tensors (kept while the same fold runs for every variant)."""
        if self._fold is None or self._fold[0] != (fold.repeat, fold.fold):
            self._fold = None  # free the previous fold's copy before making the next
            train = Tensors(*self.prepared.loaded.select(fold.train))
            val = Tensors(*self.prepared.loaded.select(fold.val))
            self._fold = ((fold.repeat, fold.fold), train, val)
        return self._fold[1], self._fold[2]

    def run(self, study: optuna.Study, variant: Variant, fold: Fold) -> RunRecord:
        """Train ``variant`` on the fold's training part and score it on its validation part, as one trial.

        Optuna's own loop runs the trial, so its heartbeat marks a run failed if this process is killed,
        and a Ctrl-C fails the trial before it propagates.
        """
        study.optimize(lambda trial: self._objective(trial, variant, fold), n_trials=1, catch=(RunFailed,))
        number = self.running
        self.running = None
        return RunRecord.from_trial(study.get_trials(deepcopy=False)[number])

    def _objective(self, trial: optuna.Trial, variant: Variant, fold: Fold) -> float:
        self.running = trial.number
        try:
            return self._train(trial, variant, fold)
        except KeyboardInterrupt:
            trial.set_user_attr(schema.FAIL_REASON, "interrupted (Ctrl-C)")
            raise

    def _train(self, trial: optuna.Trial, variant: Variant, fold: Fold) -> float:
        s = self.settings
        seed = run_seed(s.seed, fold.repeat, fold.fold)
        train, val = self.fold_data(fold)
        spec_cost = cost(variant.spec, s.size)
        attrs = {
            "variant": variant.name, "repeat": fold.repeat, "fold": fold.fold, "seed": seed,
            "spec_key": variant.key, "spec": variant.spec.to_dict(), "train_spec": variant.train.to_dict(),
            "origin": variant.origin, "padding": variant.padding, "params": spec_cost.params,
            "gflops": spec_cost.gflops, "n_train": len(train), "n_val": len(val),
            "device": device_name(self.device), "amp_bf16": s.amp,
        }
        for key, value in attrs.items():
            trial.set_user_attr(key, value)

        history: list[EpochResult] = []

        def on_epoch(result: EpochResult) -> None:
            history.append(result)
            if result.val is not None and math.isfinite(result.val.auc):
                trial.report(result.val.auc, result.epoch)  # learning curves in optuna-dashboard
            if self.on_epoch is not None:
                self.on_epoch(result)

        try:
            fitted = train_spec(variant.spec, variant.train, train, val, epochs=s.epochs, device=self.device,
                                seed=seed, amp=s.amp, on_epoch=on_epoch).fitted
        except TrainingFailed as e:
            self._record_curve(trial, history)
            if e.kind == "out_of_memory":
                trial.set_user_attr(schema.FAIL_REASON, str(e))
                raise RunFailed(str(e)) from None
            # Pruned, not failed: the same seed would diverge again, so a resume does not redo it.
            trial.set_user_attr(schema.PRUNE_REASON, str(e))
            raise optuna.TrialPruned(str(e)) from None
        self._record_curve(trial, history)
        last = fitted.history[-1].val
        assert last is not None
        # The fold's score is the last epoch's: choosing the best epoch on the fold being scored would
        # bias every variant upward. The best-epoch AUC is kept for reference only.
        trial.set_user_attr("auc", last.auc)
        trial.set_user_attr("accuracy", last.accuracy)
        trial.set_user_attr("sensitivity", last.sensitivity)
        trial.set_user_attr("specificity", last.specificity)
        trial.set_user_attr("auc_best_epoch", fitted.best_auc)
        trial.set_user_attr("best_epoch", fitted.best_epoch)
        trial.set_user_attr(schema.TRAIN_SECONDS, round(fitted.train_seconds, 2))
        return last.auc

    def _record_curve(self, trial: optuna.Trial, history: list[EpochResult]) -> None:
        trial.set_user_attr(schema.EPOCHS_RUN, len(history))
        trial.set_user_attr(schema.TRAIN_LOSS, [round(h.train_loss, 5) for h in history])
        trial.set_user_attr(schema.VAL_AUC, [round(h.val.auc, 5) if h.val is not None else None for h in history])


# ---------------------------------------------------------------------------------------------------
# Statistics


def summarize(variant_list: Sequence[Variant], runs: Sequence[RunRecord], folds: Sequence[Fold],
              size: tuple[int, int, int]) -> list[dict]:
    """One row per variant: means and CIs, costs, and the paired comparison with the baseline."""
    order = [(f.repeat, f.fold) for f in folds]
    by_variant: dict[str, dict[tuple[int, int], RunRecord]] = {v.name: {} for v in variant_list}
    for run in runs:
        if run.variant in by_variant:
            by_variant[run.variant][(run.repeat, run.fold)] = run
    ratio = sum(len(f.val) / len(f.train) for f in folds) / len(folds)
    reference = {k: r.auc for k, r in by_variant[BASELINE].items() if r.scored}
    rows = []
    for v in variant_list:
        mine = by_variant[v.name]
        scored = [mine[k] for k in order if k in mine and mine[k].scored]
        auc = mean_ci([r.auc for r in scored]).clipped(0.0, 1.0)
        acc = mean_ci([r.accuracy for r in scored]).clipped(0.0, 1.0)
        spec_cost = cost(v.spec, size)
        row = {
            "variant": v.name, "n_runs": len(scored),
            "n_diverged": sum(r.state == "pruned" for r in mine.values()),
            "auc_mean": auc.mean, "auc_ci_low": auc.low, "auc_ci_high": auc.high,
            "acc_mean": acc.mean, "acc_ci_low": acc.low, "acc_ci_high": acc.high,
            "params": spec_cost.params, "gflops": spec_cost.gflops,
            "train_seconds_mean": mean_ci([r.train_seconds for r in scored]).mean,
            "padding": v.padding, "architecture": describe_spec(v.spec.to_dict()), "training": training_text(v.train),
        }
        if v.name == BASELINE:
            row.update(auc_diff_vs_baseline=0.0, auc_diff_ci_low=0.0, auc_diff_ci_high=0.0, n_pairs=len(scored),
                       p_value=math.nan, test="reference", p_value_nadeau_bengio=math.nan, verdict="reference")
        else:
            pairs = [k for k in order if k in reference and k in mine and mine[k].scored]
            test = paired_test([mine[k].auc for k in pairs], [reference[k] for k in pairs])
            row.update(_paired_columns(test, ratio, [mine[k].auc - reference[k] for k in pairs]))
        rows.append(row)
    return rows


def _paired_columns(test: PairedTest, ratio: float, differences: list[float]) -> dict:
    ci = test.diff_ci.clipped(-1.0, 1.0)
    return {
        "auc_diff_vs_baseline": test.diff, "auc_diff_ci_low": ci.low, "auc_diff_ci_high": ci.high,
        "n_pairs": test.n_pairs, "p_value": test.p_value, "test": test.test,
        "p_value_nadeau_bengio": corrected_resampled_ttest(differences, ratio), "verdict": verdict(test, ALPHA),
    }


# ---------------------------------------------------------------------------------------------------
# Outputs


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


def format_table(rows: Sequence[dict]) -> str:
    """The summary as a fixed-width console table."""
    head = ("variant", "runs", "val AUC [95% CI]", "accuracy [95% CI]", "AUC diff vs baseline [95% CI]", "p",
            "test", "verdict", "params", "GFLOPs", "s/run")
    lines = []
    for r in rows:
        diff = "reference" if r["variant"] == BASELINE else \
            _ci(r["auc_diff_vs_baseline"], r["auc_diff_ci_low"], r["auc_diff_ci_high"], signed=True)
        lines.append((r["variant"], str(r["n_runs"]), _ci(r["auc_mean"], r["auc_ci_low"], r["auc_ci_high"]),
                      _ci(r["acc_mean"], r["acc_ci_low"], r["acc_ci_high"]), diff,
                      "" if r["variant"] == BASELINE else _p(r["p_value"]),
                      "" if r["variant"] == BASELINE else r["test"].split(":")[0],
                      "" if r["variant"] == BASELINE else r["verdict"],
                      f"{r['params'] / 1e6:.2f}M", f"{r['gflops']:.2f}", f"{r['train_seconds_mean']:.0f}"
                      if math.isfinite(r["train_seconds_mean"]) else "n/a"))
    widths = [max(len(x[i]) for x in [head, *lines]) for i in range(len(head))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)).rstrip()
                     for line in [head, *lines])


def verdict_line(row: dict) -> str:
    """One sentence per variant: the verdict with its numbers."""
    if row["variant"] == BASELINE:
        return (f"baseline: the reference, val AUC {_ci(row['auc_mean'], row['auc_ci_low'], row['auc_ci_high'])} "
                f"over {row['n_runs']} folds")
    diff = _ci(row["auc_diff_vs_baseline"], row["auc_diff_ci_low"], row["auc_diff_ci_high"], signed=True)
    test = row["test"].split(":")[0]
    text = f"{row['variant']}: {row['verdict']} (AUC diff {diff}, {test} p = {_p(row['p_value'])}"
    if ":" in row["test"]:
        text += f"; {row['test'].split(':', 1)[1].strip()}"
    nb = row["p_value_nadeau_bengio"]
    text += f"; corrected resampled t p = {_p(nb)})"
    if row["verdict"] in ("better", "worse") and not (math.isfinite(nb) and nb < ALPHA):
        text += " - tentative: the test that allows for overlapping folds does not confirm it"
    return text


def methods_text(settings: AblationSettings, n_cv: int, n_test: int, ratio: float) -> list[str]:
    """The methods paragraphs of the page (plain text)."""
    k, r = settings.folds, settings.repeats
    n = k * r
    return [
        f"Each variant was trained {n} times: {r} repeat(s) of stratified {k}-fold cross-validation over the "
        f"{n_cv} training and validation scans; the {n_test} scans of the locked test part (split seed "
        f"{settings.split_seed}) were never read. "
        f"Every variant saw the same folds and the same seeds (run for repeat r, fold f: seed "
        f"{settings.seed} + 1000 r + f, for initial weights, shuffling and augmentation), for "
        f"{settings.epochs} epochs at {'x'.join(map(str, settings.size))} voxels; the six modifications train "
        f"with the seed's settings (Adam, learning rate 1e-4, batch 2), so only the named change differs "
        f"(and the padding, where the padding column says so).",
        "A fold's score is the validation ROC AUC after the last epoch, not after the best epoch: choosing "
        "the best epoch on the very fold being scored would bias every variant upward (the best-epoch AUC is "
        "in runs.csv for reference only).",
        f"Means come with a 95% Student t-interval over the {n} fold values. Folds share training scans, so "
        "their values are correlated and these intervals are too narrow: read them as the least uncertainty "
        "there is, not all of it. Intervals are cut to the range the metric can take.",
        f"Each modification is compared with the baseline fold by fold (same fold, same seed): the mean AUC "
        f"difference with its t-interval, and the p-value of a paired test on the fold AUCs: the Wilcoxon "
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


def plot_html(rows: Sequence[dict], runs: Sequence[RunRecord]) -> str:
    """Two plotly figures (fold AUCs per variant; paired differences from the baseline), plotly.js once."""
    import plotly.graph_objects as go

    names = [r["variant"] for r in rows]
    scored = [r for r in runs if r.scored and r.variant in names]
    base = {(r.repeat, r.fold): r.auc for r in scored if r.variant == BASELINE}
    aucs = go.Figure()
    diffs = go.Figure()
    for name in names:
        mine = [r for r in scored if r.variant == name]
        labels = [f"repeat {r.repeat}, fold {r.fold}" for r in mine]
        aucs.add_trace(go.Box(y=[r.auc for r in mine], name=name, boxpoints="all", jitter=0.4, pointpos=0,
                              text=labels, hovertemplate="%{text}: AUC %{y:.3f}<extra>" + name + "</extra>"))
        if name != BASELINE:
            paired = [r for r in mine if (r.repeat, r.fold) in base]
            diffs.add_trace(go.Box(y=[r.auc - base[(r.repeat, r.fold)] for r in paired], name=name,
                                   boxpoints="all", jitter=0.4, pointpos=0,
                                   text=[f"repeat {r.repeat}, fold {r.fold}" for r in paired],
                                   hovertemplate="%{text}: %{y:+.3f}<extra>" + name + "</extra>"))
    aucs.update_layout(title="Validation AUC of each fold, per variant (box: quartiles; points: folds)",
                       yaxis_title="validation ROC AUC (last epoch)", showlegend=False, height=480)
    diffs.add_hline(y=0.0, line_dash="dash", line_color="grey")
    diffs.update_layout(title="Paired AUC difference from the baseline on the same fold",
                        yaxis_title="AUC (variant) - AUC (baseline)", showlegend=False, height=420)
    return (aucs.to_html(full_html=False, include_plotlyjs=True)
            + diffs.to_html(full_html=False, include_plotlyjs=False))


def page_html(rows: Sequence[dict], runs: Sequence[RunRecord], settings: AblationSettings, study_name: str,
              storage_url: str, methods: list[str], variant_list: Sequence[Variant]) -> str:
    """The self-contained HTML page: plots, verdicts, table, methods."""
    e = html.escape
    head = "".join(f"<th>{e(c)}</th>" for c in SUMMARY_COLUMNS)
    body = "".join("<tr>" + "".join(f"<td>{e(_cell(r[c]))}</td>" for c in SUMMARY_COLUMNS) + "</tr>" for r in rows)
    verdicts = "".join(f"<li>{e(verdict_line(r))}</li>" for r in rows)
    origins = "".join(f"<li><b>{e(v.name)}</b>: {e(v.origin)}; {e(describe_spec(v.spec.to_dict()))}</li>"
                      for v in variant_list)
    padding = "".join(f"<p class=note>{e(line)}.</p>" for line in padding_lines(variant_list))
    methods_html = "".join(f"<p>{e(m)}</p>" for m in methods)
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>Ablation: {e(study_name)}</title>
<style>body{{font-family:system-ui,sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;color:#222}}
table{{border-collapse:collapse;font-size:.8em}}td,th{{border:1px solid #ccc;padding:.25em .4em;text-align:left}}
th{{background:#f2f2f2}}.note{{color:#555}}.wide{{overflow-x:auto}}</style></head><body>
<h1>The seed model and the course's modifications</h1>
<p>Study <code>{e(study_name)}</code> in <code>{e(redact(storage_url))}</code>:
{settings.folds}-fold cross-validation x {settings.repeats} repeat(s), {settings.epochs} epochs,
{e('x'.join(map(str, settings.size)))} voxels, task {e(settings.task)}.</p>
<h2>Verdicts (alpha = {ALPHA})</h2><ul>{verdicts}</ul>
{plot_html(rows, runs)}
<h2>Table</h2><div class=wide><table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>
<p class=note>Empty cells are undefined (the baseline has no test against itself). The same table is in
ablation.csv; every run is in runs.csv and, with its learning curve, in optuna-dashboard.</p>
<h2>Variants</h2><ul>{origins}</ul>{padding}
<h2>Methods</h2>{methods_html}
</body></html>
"""


def write_outputs(out_dir: Path, rows: Sequence[dict], runs: Sequence[RunRecord], page: str) -> list[Path]:
    """ablation.csv, runs.csv (in run order) and ablation.html, each written to a temporary name and renamed."""
    paths = [out_dir / "ablation.csv", out_dir / "runs.csv", out_dir / "ablation.html"]
    texts = [to_csv(rows, SUMMARY_COLUMNS), to_csv([r.to_row() for r in runs], RUN_COLUMNS), page]
    for path, text in zip(paths, texts, strict=True):
        atomic_write_bytes(path, text.encode("utf-8"))
    return paths


# ---------------------------------------------------------------------------------------------------
# Command


def _check_args(args: argparse.Namespace) -> None:
    if args.folds < 2:
        raise ValueError(f"--folds: expected at least 2, got {args.folds}")
    if args.repeats < 1:
        raise ValueError(f"--repeats: expected a positive count, got {args.repeats}")
    if args.epochs is not None and args.epochs < 1:
        raise ValueError(f"--epochs: expected a positive count, got {args.epochs}")
    if args.size is not None and min(args.size) < 4:
        raise ValueError(f"--size: expected three voxel counts of at least 4, got {args.size}")
    if args.phantoms < 10:
        raise ValueError(f"--phantoms: expected at least 10, got {args.phantoms}")


def main(argv: list[str] | None = None) -> int:
    """Run (or resume) an ablation. Returns the exit code: 0 done, 2 bad input, 130 interrupted."""
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    optuna.logging.set_verbosity(optuna.logging.ERROR)  # our own lines replace Optuna's per-trial logs
    try:
        _check_args(args)
        names, added = parse_variants(args.variants)
        device = resolve_device(args.device)
        epochs = args.epochs or device_defaults(device)["ablate_epochs"]
        fidelity = choose_fidelity(device, tuple(args.size) if args.size else None, epochs, args.phantoms)
        settings = AblationSettings(data=str(Path(args.data).resolve()) if args.data else None, task=args.task,
                                    size=fidelity.size, epochs=fidelity.epochs, folds=args.folds,
                                    repeats=args.repeats, seed=args.seed, split_seed=args.split_seed,
                                    n_phantoms=fidelity.n_phantoms, amp=fidelity.amp)
        best = None
        if args.study:
            best = load_study_best(args.study, args.study_storage or default_storage(args.study, args.studies_dir))
            if best.split_seed is not None:
                settings = dataclasses.replace(settings, split_seed=best.split_seed)
        variant_list = make_variants(names, settings.size, best)
        storage_url = args.storage or default_storage("ablation", args.studies_dir)
        storage = open_storage(storage_url)
        root = resolve_data_root(settings.data, args.studies_dir, settings.n_phantoms, 0)
        prepared = prepare_data(root, PreprocessConfig(size=settings.size), parts=("train", "val"),
                                task=settings.task, seed=settings.split_seed, studies_dir=args.studies_dir,
                                workers=args.workers, progress=sys.stderr.isatty())
        records = cv_records(prepared)
        folds, folds_path = load_or_make_folds(records, Path(args.studies_dir) / "splits", k=settings.folds,
                                               repeats=settings.repeats, seed=settings.seed)
    except (DataError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2

    study_name = settings.study_name(fingerprint(records))
    study = optuna.create_study(study_name=study_name, storage=storage, direction="maximize",
                                sampler=optuna.samplers.RandomSampler(seed=settings.seed),
                                pruner=optuna.pruners.NopPruner(), load_if_exists=True)
    if SETTINGS_ATTR not in study.user_attrs:
        study.set_user_attr(SETTINGS_ATTR, settings.to_dict())
        study.set_user_attr("folds_file", str(folds_path))
        study.set_user_attr(schema.STUDY_DATA_SUMMARY, prepared.summary())

    precision = "bf16 autocast" if settings.amp else "float32"
    print(describe(prepared))
    print(f"ablation: {len(variant_list)} variants x {settings.folds} folds x {settings.repeats} repeat(s) over "
          f"{len(records)} train+val scans (folds: {folds_path}); {settings.epochs} epoch(s) at "
          f"{'x'.join(map(str, settings.size))} voxels, {precision}, on {device_name(device)}")
    if args.study and settings.split_seed != args.split_seed:
        print(f"split: seed {settings.split_seed}, as in study {args.study!r}, so its test part stays unread")
    if added:
        print("baseline added to --variants: every variant is compared with it")
    for line in padding_lines(variant_list):
        print(line)

    done = finished_runs(study)
    todo = [(fold, v) for fold in folds for v in variant_list if (v.name, v.key, fold.repeat, fold.fold) not in done]
    total = len(folds) * len(variant_list)
    print(f"study {study_name!r} in {redact(storage_url)}: {total} runs, {total - len(todo)} done, {len(todo)} to do")

    progress = AblationProgress(len(todo), settings.epochs)
    runner = AblationRunner(prepared, settings, device, on_epoch=progress.on_epoch)
    interrupted = False
    start = time.perf_counter()
    try:
        for fold, variant in todo:
            progress.start(variant.name, fold)
            progress.on_run_end(runner.run(study, variant, fold))
    except KeyboardInterrupt:
        interrupted = True
    finally:
        progress.close()
        fail_running(study, runner.running)
    if interrupted:
        # Every URL on the command line is shown with its passwords masked (--storage, --study-storage).
        shown = [redact(arg) if "://" in arg else arg for arg in argv]
        print(f"\nInterrupted: the running run is marked failed; finished runs are kept. Resume with:\n"
              f"  python -m search.ablate {shlex.join(shown)}".rstrip(), file=sys.stderr)
        return 130

    done = finished_runs(study)
    runs = [RunRecord.from_trial(done[(v.name, v.key, f.repeat, f.fold)])
            for f in folds for v in variant_list if (v.name, v.key, f.repeat, f.fold) in done]
    rows = summarize(variant_list, runs, folds, settings.size)
    ratio = sum(len(f.val) / len(f.train) for f in folds) / len(folds)
    methods = methods_text(settings, len(records), len(prepared.split.test), ratio)
    page = page_html(rows, runs, settings, study_name, storage_url, methods, variant_list)
    out_dir = Path(args.out) if args.out else Path(args.studies_dir) / "ablation"
    paths = write_outputs(out_dir, rows, runs, page)

    missing = total - len(runs)
    print(f"\n{len(todo)} runs in {time.perf_counter() - start:.0f} s" + (
        f"; {missing} runs failed (see runs in optuna-dashboard), run the same command again to retry them"
        if missing else ""))
    print(format_table(rows))
    print()
    for row in rows[1:]:
        print(verdict_line(row))
    print("\nwritten:")
    for path in paths:
        print(f"  {path}")
    print(f"explore the runs:\n  optuna-dashboard {redact(storage_url)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
