"""Benchmark: which confirmation rule ships the better model the search finds? (run by hand, not a test)

The confirmation trains the search's top-k distinct trunks and the seed baseline again on fresh folds and
decides what ships. This audit scores candidate decision rules, without training anything, on:

- **A simulation from the measured noise** (``benchmarks/results/fidelity_audit.jsonl``, issue 21): a
  confirmation fold's paired AUC difference carries scan noise (SD 0.048 on a fold's 43 scans, measured
  on the truth runs' fresh-set probabilities) and each trained model carries training-seed noise (SD 0.031
  of one run's AUC, from the specs trained with two seeds). An AUC's variance goes as one over the scans
  scored, so the mean over one repeat's folds carries the scan noise of all non-test scans whatever the
  fold count; repeats re-score the same scans (they average seed noise only).
- **Controlled candidates**: k candidates all truly ``delta`` better than the baseline (+0.05, +0.03, 0,
  -0.02, -0.05): the rate at which each rule ships one.
- **Simulated studies with the winner's curse of a top-k pick**: a 50-trial search draws specs from the
  audit's 18 specs below the CPU cost cap (17 random draws of the default space and the course's
  residual-inception net; truth = their export-style fresh AUC, shrunk towards the mean by the truth's own
  seed noise), ranks them by their recorded cheap score (``auc_bn@4``) plus fresh noise of the size the two
  search folds disagree by, and confirms the top k distinct specs: the rate of shipping a model truly
  better by +0.03 and +0.05, truly worse by more than 0.02, and the expected true gain per study.
- **Recorded confirmations** (benchmarks/RESULTS.md and issue 35): each candidate's confirmed difference
  and its recorded lower bound (from which the rule's scan standard error is read back), and, where the
  candidate was exported and scored on 300 fresh phantoms, what it was there.

Designs: non-test scans, folds x repeats, k candidates; "2nd repeat for the leader if ahead" is the two-look
design: the candidate furthest ahead of the baseline after the first repeat (if any is ahead) and the baseline
train on a second repeat of fresh folds, and the rule decides on the leader's runs of both (at alpha / k:
the leader was picked among k). "1st look screens": the first look only picks the leader, it never ships (so
alpha is spent once); otherwise the first look may ship at once (two chances: the error rate grows) or each
look tests at a fraction of alpha. ``runs`` counts trained runs in units of one run on 2/3 of 130 scans.
``CHOSEN`` is the design search.selection.confirm runs, with the ``ni+cost`` rule.

Rules (``z(a)`` is the one-sided normal quantile; ``se`` carries scan and seed noise unless said):

- ``today``: the lower bound at alpha/k of the scan bootstrap alone is above 0 (repeats narrow it).
- ``ni``: non-inferiority: ``diff - z(alpha/k) * se > -margin`` and ``diff > 0``; the best such candidate.
- ``ni+cost``: lexicographic accuracy then cost: the candidates non-inferior to the baseline as in ``ni``
  (point estimate not required above 0) that are not distinguishably worse than the best-confirmed model
  (baseline included); the cheapest of them (GFLOPs), the baseline if none.
- ``bayes``: a normal prior on a confirmed candidate's true gain (fitted to the simulated top-k picks);
  the candidate with the highest posterior mean, if that mean is above 0 and P(gain < -margin) <= alpha.

    python benchmarks/bench_decision.py              # every table, plain text
    python benchmarks/bench_decision.py --markdown   # the tables for benchmarks/RESULTS.md
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import stats

sys.path.insert(0, str(Path(__file__).resolve().parent))

AUDIT = Path(__file__).resolve().parent / "results" / "fidelity_audit.jsonl"
# Measured in the fidelity audit (benchmarks/RESULTS.md, "Fidelity audit"): the paired difference's scan SD
# on one confirmation fold of 43 scans, and one trained model's seed SD. --scan-sd / --seed-sd override them.
SCAN_SD_FOLD = 0.048
SCAN_VAL = 43
SEED_SD = 0.031
CPU_COST_CAP = 3.26  # GFLOPs: the search trains nothing above it at 32x64x64 (space.fit_cost narrows it)
TRIALS = 50
MARGIN = 0.02


@dataclass(frozen=True)
class Design:
    """What the confirmation runs: non-test scans, folds, repeats, candidates."""

    n_scans: int = 130
    folds: int = 3
    repeats: int = 1
    k: int = 2
    staged: bool = False
    look_alpha: float = 1.0   # with two looks (staged), each look tests at alpha * look_alpha / k
    screen_only: bool = False  # staged: the first look never ships, it only picks the leader

    @property
    def runs(self) -> int:
        """Trained runs, baseline included, in units of today's run (more scans cost in proportion)."""
        return round((self.k + 1) * self.folds * self.repeats * self.n_scans / 130)

    def label(self) -> str:
        return (f"{self.n_scans} scans, {self.folds}x{self.repeats}, k={self.k}"
                + (f", 2nd repeat for the leader if ahead{' (1st look screens)' if self.screen_only else ''}"
                   f"{f', each look at {self.look_alpha:g} alpha' if self.look_alpha != 1 else ''}"
                   if self.staged else ""))


@dataclass(frozen=True)
class Noise:
    scan_sd_fold: float = SCAN_SD_FOLD
    scan_val: int = SCAN_VAL
    seed_sd: float = SEED_SD

    def scan_se(self, design: Design) -> float:
        """Scan SE of a paired difference's mean over one repeat's folds: all non-test scans, once."""
        return self.scan_sd_fold * math.sqrt(self.scan_val / design.n_scans)

    def seed_se(self, design: Design) -> float:
        """Seed SE of the mean paired difference: two independently trained models per run."""
        return math.sqrt(2 * self.seed_sd ** 2 / (design.folds * design.repeats))


# ------------------------------------------------------------------------------------------------ the rules

@dataclass(frozen=True)
class Observed:
    """What a rule sees of one confirmation: per candidate, the mean paired difference to the baseline."""

    diff: np.ndarray        # (k,)
    se_scan_naive: float    # today's bootstrap: repeats treated as new scans
    se_total: float         # scan and seed noise
    gflops: np.ndarray      # (k,)
    base_gflops: float


Rule = Callable[[Observed, Design, float], int | None]  # the chosen candidate's index, None: the baseline


def rule_today(o: Observed, d: Design, alpha: float) -> int | None:
    z = stats.norm.ppf(1 - alpha / d.k)
    ok = np.flatnonzero(o.diff - z * o.se_scan_naive > 0)
    return None if ok.size == 0 else int(ok[np.argmax(o.diff[ok])])


def rule_ni(o: Observed, d: Design, alpha: float, margin: float = MARGIN) -> int | None:
    z = stats.norm.ppf(1 - alpha / d.k)
    ok = np.flatnonzero((o.diff - z * o.se_total > -margin) & (o.diff > 0))
    return None if ok.size == 0 else int(ok[np.argmax(o.diff[ok])])


def rule_ni_cost(o: Observed, d: Design, alpha: float, margin: float = MARGIN) -> int | None:
    z = stats.norm.ppf(1 - alpha / d.k)
    best = max(0.0, float(o.diff.max()))
    # Not distinguishably worse than the best model (a difference of two candidates carries the same
    # scan and seed noise as a difference to the baseline), and non-inferior to the baseline.
    ok = np.flatnonzero((best - o.diff < z * o.se_total) & (o.diff - z * o.se_total > -margin))
    if ok.size == 0:
        return None
    cheapest = int(ok[np.argmin(o.gflops[ok])])
    return cheapest if o.gflops[cheapest] < o.base_gflops or o.diff[cheapest] > 0 else None


def make_bayes(prior_mean: float, prior_sd: float) -> Rule:
    def rule_bayes(o: Observed, d: Design, alpha: float, margin: float = MARGIN) -> int | None:
        w = prior_sd ** 2 / (prior_sd ** 2 + o.se_total ** 2)
        post_mean = prior_mean + w * (o.diff - prior_mean)
        post_sd = math.sqrt(w) * o.se_total
        i = int(np.argmax(post_mean))
        worse = stats.norm.cdf((-margin - post_mean[i]) / post_sd)
        return i if post_mean[i] > 0 and worse <= alpha else None
    return rule_bayes


# ------------------------------------------------------------------------------------------- the simulation

@dataclass(frozen=True)
class Errors:
    """One model's errors in ``n`` simulated confirmations, baseline first: (n, k + 1) each."""

    scan: np.ndarray   # persists over repeats: the same scans are scored again
    seed: np.ndarray   # the mean over one repeat's runs of each run's seed error

    @classmethod
    def draw(cls, n: int, k: int, design: Design, noise: Noise, rng: np.random.Generator) -> Errors:
        s_scan = noise.scan_se(design) / math.sqrt(2)  # a model's share of the paired scan SD
        seed_sd = noise.seed_sd / math.sqrt(design.folds * design.repeats)
        return cls(rng.normal(0, s_scan, (n, k + 1)), rng.normal(0, seed_sd, (n, k + 1)))

    def diff(self, gains: np.ndarray) -> np.ndarray:
        err = self.scan + self.seed
        return gains + err[:, 1:] - err[:, :1]


def rule_noise(design: Design, noise: Noise) -> tuple[float, float]:
    """The standard errors a rule works with: today's (scan bootstrap; repeats counted as new scans) and
    scan plus seed noise."""
    return (noise.scan_se(design) / math.sqrt(design.repeats),
            math.sqrt(noise.scan_se(design) ** 2 + noise.seed_se(design) ** 2))


@dataclass(frozen=True)
class Pool:
    """The searchable specs of the fidelity audit: true gain over the baseline, cheap score, its noise, GFLOPs."""

    names: list[str]
    gain: np.ndarray
    cheap: np.ndarray
    cheap_sd: float
    gflops: np.ndarray
    base_gflops: float


def load_pool(path: Path, seed_sd: float) -> Pool:
    by: dict[str, dict[str, dict]] = {}
    for line in path.read_text().splitlines():
        r = json.loads(line)
        by.setdefault(r["spec"], {})[r["run"]] = r
    truth = {s: np.mean([runs[r]["auc"] for r in runs if r.startswith("truth")]) for s, runs in by.items()}
    base = truth["course:baseline"]
    names = [s for s, runs in by.items() if s != "course:baseline" and runs["cheap0"]["gflops"] <= CPU_COST_CAP
             and {"cheap0", "cheap1"} <= runs.keys()]
    raw = np.array([truth[s] - base for s in names])
    # A spec's truth is one or two seeded runs: shrink the spread by that noise (and the baseline's own).
    n_runs = np.array([sum(r.startswith("truth") for r in by[s]) for s in names])
    noise_var = float(np.mean(seed_sd ** 2 / n_runs)) + seed_sd ** 2 / 2
    shrink = math.sqrt(max(0.0, 1 - noise_var / raw.var(ddof=1)))
    gain = raw.mean() + shrink * (raw - raw.mean())
    f0 = np.array([by[s]["cheap0"]["scores"]["4"]["auc_bn"] for s in names])
    f1 = np.array([by[s]["cheap1"]["scores"]["4"]["auc_bn"] for s in names])
    return Pool(names, gain, (f0 + f1) / 2, float(np.std(f0 - f1, ddof=1) / 2),
                np.array([by[s]["cheap0"]["gflops"] for s in names]), by["course:baseline"]["cheap0"]["gflops"])


def top_k_picks(pool: Pool, k: int, rng: np.random.Generator, n: int) -> np.ndarray:
    """``n`` searches of TRIALS draws: the indices (n, k) of the top k distinct specs by a noisy cheap score."""
    picks = np.empty((n, k), dtype=int)
    for i in range(n):
        drawn = rng.integers(0, len(pool.names), TRIALS)
        score = pool.cheap[drawn] + rng.normal(0, pool.cheap_sd, TRIALS)
        order = drawn[np.argsort(-score)]
        _, first = np.unique(order, return_index=True)
        picks[i] = order[np.sort(first)][:k]
    return picks


def evaluate(rule: Rule, gains: np.ndarray, gflops: np.ndarray, base_gflops: float, design: Design, noise: Noise,
             alpha: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each simulated confirmation: whether it ships a candidate, that candidate's true gain (0: the baseline),
    and the runs it trained (in units of today's run), each of shape (n,).

    With ``design.staged``, a confirmation whose leader (the best-confirmed candidate) does not pass the rule
    but is ahead of the baseline trains a second repeat of the leader and the baseline (same scans, new
    seeds), and the rule decides again on the leader's runs of both repeats, at the same alpha / k (the
    leader was picked among k).
    """
    n, k = gains.shape
    first = Errors.draw(n, k, design, noise, rng)
    second = Errors(first.scan, rng.normal(0, noise.seed_sd / math.sqrt(design.folds * design.repeats), (n, k + 1)))
    diff1, diff2 = first.diff(gains), second.diff(gains)
    se_naive, se_total = rule_noise(design, noise)
    two = dataclasses.replace(design, repeats=design.repeats * 2)
    se_naive2, se_total2 = rule_noise(two, noise)
    shipped = np.zeros(n, dtype=bool)
    gain = np.zeros(n)
    runs = np.full(n, float(design.runs))
    extra = 2 * design.folds * design.repeats * design.n_scans / 130
    alpha = alpha * design.look_alpha
    for i in range(n):
        j = None
        if not (design.staged and design.screen_only):
            j = rule(Observed(diff1[i], se_naive, se_total, gflops[i], base_gflops), design, alpha)
        if j is None and design.staged and diff1[i].max() > 0:
            lead = int(np.argmax(diff1[i]))
            runs[i] += extra
            both = np.array([(diff1[i, lead] + diff2[i, lead]) / 2])
            o2 = Observed(both, se_naive2, se_total2, gflops[i, lead:lead + 1], base_gflops)
            if rule(o2, design, alpha) is not None:
                j = lead
        if j is not None:
            shipped[i] = True
            gain[i] = gains[i, j]
    return shipped, gain, runs


def rules_for(pool: Pool, design: Design, rng: np.random.Generator) -> dict[str, Rule]:
    picks = top_k_picks(pool, design.k, rng, 2000)
    g = pool.gain[picks].ravel()
    if design.staged:  # two looks: the rules built for them
        return {"ni": rule_ni, "ni+cost": rule_ni_cost}
    return {"today": rule_today, "ni": rule_ni, "ni+cost": rule_ni_cost,
            "bayes": make_bayes(float(g.mean()), float(g.std(ddof=1)))}


DELTAS = (0.05, 0.03, 0.0, -0.02, -0.05)


def controlled_table(pool: Pool, designs: list[Design], noise: Noise, alpha: float, n: int, seed: int) -> list[dict]:
    rows = []
    for design in designs:
        rules = rules_for(pool, design, np.random.default_rng(seed))
        for name, rule in rules.items():
            row = {"design": design.label(), "runs": 0.0, "rule": name}
            for delta in DELTAS:
                rng = np.random.default_rng(seed + 1)
                gains = np.full((n, design.k), delta)
                # Every candidate is cheaper than the baseline, as below the CPU cost cap.
                flops = np.tile(np.linspace(0.3, 0.6, design.k) * pool.base_gflops, (n, 1))
                shipped, _, runs = evaluate(rule, gains, flops, pool.base_gflops, design, noise, alpha, rng)
                row[f"{delta:+.2f}"] = float(np.mean(shipped))
                row["runs"] += float(np.mean(runs)) / len(DELTAS)
            rows.append(row)
    return rows


def study_table(pool: Pool, designs: list[Design], noise: Noise, alpha: float, n: int, seed: int) -> list[dict]:
    rows = []
    for design in designs:
        rules = rules_for(pool, design, np.random.default_rng(seed))
        picks = top_k_picks(pool, design.k, np.random.default_rng(seed + 2), n)
        gains, flops = pool.gain[picks], pool.gflops[picks]
        for name, rule in rules.items():
            shipped, gain, runs = evaluate(rule, gains, flops, pool.base_gflops, design, noise, alpha,
                                           np.random.default_rng(seed + 3))
            rows.append({"design": design.label(), "runs": float(np.mean(runs)), "rule": name,
                         "best pick >= +0.03": float(np.mean(gains.max(axis=1) >= 0.03)),
                         "ships >= +0.03": float(np.mean(shipped & (gain >= 0.03))),
                         "ships < -0.02": float(np.mean(shipped & (gain < -0.02))),
                         "ships a candidate": float(np.mean(shipped)),
                         "mean gain": float(np.mean(gain))})
    return rows


# ---------------------------------------------------------------------------------- recorded confirmations

@dataclass(frozen=True)
class Recorded:
    """One recorded confirmation (k = 2 candidates, 3 folds x 1, 130 non-test scans)."""

    where: str
    candidate: str
    diff: float
    low: float          # the recorded one-sided lower bound at 0.05 / 2 (scan bootstrap)
    fresh: str          # the exported candidate on 300 fresh phantoms minus the baseline exported the same way


RECORDED = [
    Recorded("RESULTS 'Model selection', split 0", "trial 26", 0.049, 0.015, "+0.032 (+0.007 to +0.060)"),
    Recorded("RESULTS 'Model selection', split 1", "trial 49", 0.060, 0.023, "+0.051 (+0.022 to +0.085)"),
    Recorded("RESULTS 'Model selection', split 2", "trial 22", 0.019, -0.029, "not exported"),
    Recorded("RESULTS 'Time budget', split 0 x seed 0", "trial 13", 0.034, -0.018, "not exported"),
    Recorded("RESULTS 'Time budget', split 1 x seed 0", "trial 41", 0.006, -0.036, "not exported"),
    Recorded("RESULTS 'Time budget', split 2 x seed 0", "trial 17", 0.035, -0.001, "not exported"),
    Recorded("RESULTS 'Time budget', split 0 x seed 1", "trial 31", 0.037, 0.008, "+0.008 (-0.015 to +0.034)"),
    Recorded("RESULTS 'Time budget', split 0 x seed 1", "trial 43", 0.036, -0.011, "not exported"),
    Recorded("RESULTS 'Time budget', split 2 x seed 1", "trial 19", 0.102, 0.040, "+0.032 (-0.013 to +0.080)"),
    Recorded("RESULTS random search, split 0 x seed 1", "trial 14", 0.039, -0.007, "+0.050 (+0.022 to +0.081)"),
    Recorded("RESULTS random search, split 1 x seed 1", "trial 31", 0.085, 0.034, "+0.096 (+0.059 to +0.134)"),
    Recorded("RESULTS random search, split 2 x seed 1", "trial 14", 0.143, 0.083, "+0.114 (+0.074 to +0.157)"),
    Recorded("issue 35, a new user's seed pair (Zen 4)", "4 levels 16-16-32-32", 0.049, -0.012,
             "+0.048 (+0.021 to +0.077)"),
    Recorded("RESULTS 'Model selection' rerun, split 1", "trial 6", -0.037, -0.094, "not exported"),
]


def recorded_table(noise: Noise, alpha: float) -> list[dict]:
    """Each recorded candidate under the one-look rules, and what the two-look rule does with its first look."""
    design = Design()
    z = stats.norm.ppf(1 - alpha / design.k)
    lead = {}
    for r in RECORDED:
        lead[r.where] = max(lead.get(r.where, -1.0), r.diff)
    rows = []
    for r in RECORDED:
        se_scan = (r.diff - r.low) / z
        se_total = math.sqrt(se_scan ** 2 + noise.seed_se(design) ** 2)
        low_total = r.diff - z * se_total
        leads = r.diff > 0 and r.diff == lead[r.where]
        rows.append({"confirmation": r.where, "candidate": r.candidate, "diff": f"{r.diff:+.3f}",
                     "one-look bound (scan)": f"{r.low:+.3f}", "one-look bound (scan+seed)": f"{low_total:+.3f}",
                     "one-look rule": "ships" if r.low > 0 else "baseline",
                     "two-look rule": "second look" if leads else "baseline",
                     "fresh (exported)": r.fresh})
    return rows


def measured_noise(studies_dir: Path, fresh_seed: int, fresh_n: int) -> Noise:
    """Re-measure the two noises from the audit's truth runs (generates the fresh set first if it is missing)."""
    from bench_fidelity import confirmation_noise, fresh_labels
    from bench_selection import DEFAULT_MATRIX, ensure_fresh_phantoms, fresh_set_dir

    ensure_fresh_phantoms(fresh_set_dir(studies_dir / "fresh", fresh_seed, fresh_n), fresh_n, fresh_seed,
                          DEFAULT_MATRIX, None)
    args = argparse.Namespace(studies_dir=studies_dir, fresh_seed=fresh_seed, fresh_n=fresh_n)
    got = confirmation_noise(AUDIT, fresh_labels(args), n_val=SCAN_VAL)
    print(f"re-measured: scan SD {got['scan_sd']:.4f} per fold of {SCAN_VAL} scans over {got['n_specs']} specs, "
          f"seed SD {got['seed_sd']:.4f} over {got['n_seed_pairs']} specs with two seeds")
    return Noise(got["scan_sd"], SCAN_VAL, got["seed_sd"])


# ------------------------------------------------------------------------------------------------ printing

def print_rows(title: str, rows: list[dict], markdown: bool) -> None:
    print(f"\n{title}")
    if not rows:
        return
    keys = list(rows[0])
    cells = [[f"{row[k]:.3f}" if isinstance(row[k], float) else str(row[k]) for k in keys] for row in rows]
    if markdown:
        print("| " + " | ".join(keys) + " |")
        print("| " + " | ".join("---" for _ in keys) + " |")
        for c in cells:
            print("| " + " | ".join(c) + " |")
        return
    widths = [max(len(k), *(len(c[i]) for c in cells)) for i, k in enumerate(keys)]
    print("  ".join(k.ljust(w) for k, w in zip(keys, widths, strict=True)))
    for c in cells:
        print("  ".join(v.ljust(w) for v, w in zip(c, widths, strict=True)))


# The first is the one-look design, the third the one search.selection.rule runs (CHOSEN).
CHOSEN = Design(130, 3, 1, 2, staged=True, screen_only=True)
DESIGNS = [Design(130, 3, 1, 2), Design(130, 3, 2, 2), CHOSEN,
           Design(130, 3, 1, 2, staged=True), Design(130, 3, 1, 2, staged=True, look_alpha=0.5),
           Design(130, 3, 1, 1, staged=True, screen_only=True), Design(130, 3, 2, 1),
           Design(170, 3, 1, 2), dataclasses.replace(CHOSEN, n_scans=170), Design(260, 3, 1, 2)]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python benchmarks/bench_decision.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--audit", type=Path, default=AUDIT, help=f"the fidelity audit's runs (default: {AUDIT.name})")
    p.add_argument("--scan-sd", type=float, default=SCAN_SD_FOLD,
                   help=f"scan SD of one fold's paired difference on {SCAN_VAL} scans (default: {SCAN_SD_FOLD})")
    p.add_argument("--seed-sd", type=float, default=SEED_SD, help=f"one model's seed SD (default: {SEED_SD})")
    p.add_argument("--alpha", type=float, default=0.05, help="each rule's error level, over k (default: 0.05)")
    p.add_argument("--n", type=int, default=5000, help="simulated confirmations per cell (default: 5000)")
    p.add_argument("--seed", type=int, default=0, help="simulation seed (default: 0)")
    p.add_argument("--measure-noise", action="store_true",
                   help="re-measure both noises from the audit's truth runs on its fresh set (300 phantoms of seed "
                   "777 under --studies-dir/fresh, generated if missing, about a minute) instead of the recorded "
                   "values")
    p.add_argument("--studies-dir", type=Path, default=Path("studies"), help="for --measure-noise (default: studies)")
    p.add_argument("--markdown", action="store_true", help="print markdown tables")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    noise = (measured_noise(args.studies_dir, 777, 300) if args.measure_noise
             else Noise(args.scan_sd, SCAN_VAL, args.seed_sd))
    pool = load_pool(args.audit, noise.seed_sd)
    print(f"noise: scan SD {noise.scan_sd_fold} per fold of {SCAN_VAL} scans, seed SD {noise.seed_sd} per model; "
          f"pool: {len(pool.names)} specs below {CPU_COST_CAP} GFLOPs, true gains {pool.gain.min():+.3f} to "
          f"{pool.gain.max():+.3f}, cheap-score noise SD {pool.cheap_sd:.3f}; alpha {args.alpha}, margin {MARGIN}, "
          f"{args.n} simulations per cell, seed {args.seed}")
    print_rows("P(ship a candidate) when every candidate is truly delta better than the baseline",
               controlled_table(pool, DESIGNS, noise, args.alpha, args.n, args.seed), args.markdown)
    print_rows(f"simulated studies: {TRIALS} draws, top-k by the noisy cheap score, true gain of what ships",
               study_table(pool, DESIGNS, noise, args.alpha, args.n, args.seed), args.markdown)
    print_rows("recorded confirmations (130 scans, 3x1, k=2): the one-look rule, its bound with seed noise, and the "
               "two-look rule's first look",
               recorded_table(noise, args.alpha), args.markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
