"""Benchmark: does an exported model's saliency sit on the disease? (run by hand, not a test)

On phantoms the generator knows where the lungs and the lesions are (``lungct.phantom_masks`` renders
them again from the set's seed and each scan's index). For each scan of the task in a phantom set the
exported model never saw, this script computes the Grad-CAM++ map that ``python -m search.predict
--saliency`` draws (``search.model.saliency``) and measures the share of its mass inside the lungs and
inside the lesions, against the share of the volume they fill: a map blind to them would put about
their volume share there. The enrichment (mass share / volume share) is reported with a 95% bootstrap
interval of its mean over scans, by class, and drawn as a figure (``--figure``): mass share against
volume share per scan, the diagonal being "no better than chance". "Lesion in lung" asks the sharper
question: of the saliency inside the lungs, does more sit on the lesions than their share of the lungs?
The same spec with untrained
weights (seed 0) is measured beside it: a CNN's map follows the anatomy's contrast before it learns
anything, so what training adds is the gap between the two, not the gap to the diagonal.

    python -m lungct.phantom --out studies/fresh-777 --n 300 --seed 777
    python benchmarks/bench_saliency.py studies/lungct/model --phantoms studies/fresh-777 \\
        --figure benchmarks/figures/saliency_mass.png --examples studies/fresh-777-saliency
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
from matplotlib.figure import Figure

from lungct.errors import DataError
from lungct.nifti import preprocess, read_scan
from lungct.phantom import MARKER_NAME, assign_categories
from lungct.phantom_masks import load_phantom_masks
from lungct.records import get_task
from search.model.folder import ModelDirError, build_model, load_model, members_of
from search.model.saliency import METHOD, SaliencyMapper, plot_montage, region_shares, save_figure
from search.training.loop import predict_probs
from search.training.precision import cpu_model

CPU = torch.device("cpu")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("model_dir", help="a folder written by python -m search.export")
    p.add_argument("--phantoms", required=True, metavar="DIR", help="a phantom set the model never saw "
                   "(python -m lungct.phantom --out DIR --seed S with S not the study's seed)")
    p.add_argument("--n", type=int, default=120, help="scans of the task to measure, in study id order (default: 120)")
    p.add_argument("--figure", metavar="PNG", help="write the figure here (default: none)")
    p.add_argument("--examples", metavar="DIR", help="also write the montages of the most confident scan of each "
                   "class and of the worst miss (default: none)")
    p.add_argument("--json", metavar="FILE", help="write every number here (default: none)")
    p.add_argument("--layer", metavar="NAME", help="the layer Grad-CAM++ reads, e.g. features.level3.block "
                   "(default: the last level's block, as search.predict --saliency)")
    return p


def _mean_ci(values: np.ndarray, resamples: int = 2000, seed: int = 0) -> tuple[float, float, float]:
    """Mean and its 95% percentile bootstrap interval (NaNs dropped)."""
    values = values[np.isfinite(values)]
    if values.size == 0:
        return math.nan, math.nan, math.nan
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, values.size, (resamples, values.size))].mean(axis=1)
    return float(values.mean()), float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


def measure(model_dir: str, phantoms: Path, n: int, examples: Path | None, layer: str | None = None) -> list[dict]:
    """Per scan: label, probability and the region shares of its saliency, and of the untrained control's."""
    model, config, info = load_model(model_dir)
    task = get_task(info.task)
    mapper = SaliencyMapper(model, layer)
    torch.manual_seed(0)
    control = SaliencyMapper(build_model(model.spec, members_of(model)).eval(), layer)
    marker = json.loads((phantoms / MARKER_NAME).read_text())
    categories = assign_categories(int(marker["n"]), int(marker["seed"]))
    chosen = [(i, c) for i, c in enumerate(categories) if task.label(c) is not None][:n]
    rows, started = [], time.perf_counter()
    for k, (index, category) in enumerate(chosen, start=1):
        study_id = f"study_{index + 1:04d}"
        volume_hu, _ = read_scan(str(phantoms / "studies" / category / f"{study_id}.nii.gz"))
        masks = load_phantom_masks(phantoms, study_id, volume_hu)
        volume = torch.from_numpy(preprocess(volume_hu, config))[None, None]  # (1, 1, D, H, W)
        probability = float(predict_probs(model, volume, CPU, batch_size=1, amp=False)[0])
        saliency = mapper(volume)
        rows.append({"study_id": study_id, "category": category, "label": task.label(category),
                     "probability": probability, "involvement": float(masks.lesion.sum() / max(masks.lung.sum(), 1)),
                     **region_shares(saliency, (masks.lung, masks.lesion), config.size),
                     "untrained": region_shares(control(volume), (masks.lung, masks.lesion), config.size)})
        if examples is not None:
            rows[-1]["_montage"] = (volume[0, 0].float().numpy(), saliency)
        print(f"\r{k}/{len(chosen)} scans, {time.perf_counter() - started:.0f} s", end="", file=sys.stderr, flush=True)
    print(file=sys.stderr)
    if examples is not None:
        _write_examples(rows, examples, info.classes, mapper.layer)
    return rows


def _write_examples(rows: list[dict], out: Path, classes: tuple[str, str], layer: str) -> None:
    """Montages of the most confident negative and positive, and of the positive the model missed worst."""
    positives = [r for r in rows if r["label"] == 1]
    picks = {"most confident " + classes[0]: min((r for r in rows if r["label"] == 0), key=lambda r: r["probability"]),
             "most confident " + classes[1]: max(positives, key=lambda r: r["probability"]),
             "worst missed " + classes[1]: min(positives, key=lambda r: r["probability"])}
    for what, r in picks.items():
        volume, saliency = r["_montage"]
        subtitle = (f"{what} ({r['category']}, lesions {r['involvement']:.0%} of the lungs): P({classes[1]}) = "
                    f"{r['probability']:.3f}. Saliency mass in the lungs {r['lung_mass']:.0%} (volume "
                    f"{r['lung_volume']:.0%}), in the lesions {r['lesion_mass']:.0%} "
                    f"(volume {r['lesion_volume']:.0%}). "
                    f"{METHOD} at {layer}.")
        save_figure(plot_montage(volume, saliency, r["study_id"], subtitle), out / f"{r['study_id']}.saliency.png")
    for r in rows:
        r.pop("_montage", None)


def summarise(rows: list[dict], which: str | None = None) -> dict:
    """Mean share of mass and of volume, and the mean enrichment with its CI, per region and class.

    Args:
        rows: Per scan, from :func:`measure`.
        which: None for the exported model, ``"untrained"`` for the control.
    """
    out = {}
    for region, label in (("lung", None), ("lung", 0), ("lung", 1), ("lesion", 1), ("lesion in lung", 1)):
        sel = [r[which] if which else r for r in rows if label is None or r["label"] == label]
        if region == "lesion in lung":  # within the lungs: does the map favour the lesions over healthy lung?
            mass = np.array([r["lesion_mass"] / r["lung_mass"] if r["lung_mass"] > 0 else math.nan for r in sel])
            volume = np.array([r["lesion_volume"] / r["lung_volume"] for r in sel])
        else:
            mass = np.array([r[f"{region}_mass"] for r in sel])
            volume = np.array([r[f"{region}_volume"] for r in sel])
        ok = np.isfinite(mass) & (volume > 0)
        ratio = mass[ok] / volume[ok]
        key = f"{region}, {'all scans' if label is None else f'label {label}'}"
        out[key] = {"scans": int(ok.sum()), "empty_maps": int((~np.isfinite(mass)).sum()),
                    "mass_share": float(mass[ok].mean()) if ok.any() else math.nan,
                    "volume_share": float(volume[ok].mean()) if ok.any() else math.nan,
                    "enrichment": _mean_ci(ratio), "above_chance": float((ratio > 1).mean()) if ok.any() else math.nan}
    return out


def plot_shares(rows: list[dict], summary: dict, control: dict, title: str) -> Figure:
    """Mass share against volume share per scan, lungs (both classes) and lesions (positive scans).

    Hollow grey points are the untrained control on the same scans.
    """
    fig = Figure(figsize=(12, 5.4), dpi=100, layout="constrained")
    axes = fig.subplots(1, 2)
    colours = {0: "#4c78a8", 1: "#e45756"}
    panels = ((axes[0], "lung", (0, 1), "lungs"), (axes[1], "lesion", (1,), "lesions (positive scans)"))
    for ax, region, labels, name in panels:
        top = 0.0
        sel = [r["untrained"] for r in rows if r["label"] in labels and math.isfinite(r["untrained"][f"{region}_mass"])]
        mean, low, high = control[f"{region}, {'label 1' if labels == (1,) else 'all scans'}"]["enrichment"]
        ax.scatter([r[f"{region}_volume"] for r in sel], [r[f"{region}_mass"] for r in sel], s=18, facecolors="none",
                   edgecolors="#999", label=f"untrained control: enrichment {mean:.2f} ({low:.2f}-{high:.2f})")
        top = max([top] + [r[f"{region}_mass"] for r in sel])
        for label in labels:
            sel = [r for r in rows if r["label"] == label and math.isfinite(r[f"{region}_mass"])]
            x = [r[f"{region}_volume"] for r in sel]
            y = [r[f"{region}_mass"] for r in sel]
            s = summary[f"{region}, label {label}"]
            mean, low, high = s["enrichment"]
            ax.scatter(x, y, s=18, alpha=0.7, color=colours[label],
                       label=f"label {label}: {len(sel)} scans, enrichment {mean:.2f} ({low:.2f}-{high:.2f})")
            top = max(top, *x, *y)
        top = min(1.0, top * 1.08 + 0.01)
        ax.plot([0, top], [0, top], color="#555", lw=1, ls="--", label="mass share = volume share (blind map)")
        ax.set_xlim(0, top)
        ax.set_ylim(0, top)
        ax.set_aspect("equal")
        ax.set_xlabel(f"share of the input volume in the {name.split(' ')[0]}")
        ax.set_ylabel(f"share of the saliency mass in the {name.split(' ')[0]}")
        ax.set_title(name)
        ax.legend(fontsize=8, loc="upper left")
    fig.suptitle(title, fontsize=10)
    return fig


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    phantoms = Path(args.phantoms)
    try:
        rows = measure(args.model_dir, phantoms, args.n, Path(args.examples) if args.examples else None, args.layer)
    except (ModelDirError, DataError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    summary, control = summarise(rows), summarise(rows, "untrained")
    marker = json.loads((phantoms / MARKER_NAME).read_text())
    cpu = cpu_model()
    print(f"model {args.model_dir}; {len(rows)} scans of phantom set seed {marker['seed']} ({phantoms}); {METHOD} "
          f"at {args.layer or 'the last block'}; "
          f"torch {torch.__version__}, {cpu}")
    print(f"{'model':<10}{'region, scans':<24} {'n':>4} {'mass share':>10} {'volume share':>12} "
          f"{'enrichment (95% CI)':>22} {'above chance':>12} {'empty maps':>10}")
    for name, table in (("exported", summary), ("untrained", control)):
        for key, s in table.items():
            mean, low, high = s["enrichment"]
            print(f"{name:<10}{key:<24} {s['scans']:>4} {s['mass_share']:>10.3f} {s['volume_share']:>12.3f} "
                  f"{f'{mean:.2f} ({low:.2f}-{high:.2f})':>22} {s['above_chance']:>12.0%} {s['empty_maps']:>10}")
    if args.figure:
        title = (f"Grad-CAM++ mass of the model in {Path(args.model_dir).name}/ on {len(rows)} unseen phantoms "
                 f"(seed {marker['seed']}): "
                 "points above the diagonal put more saliency in the region than its share of the volume")
        save_figure(plot_shares(rows, summary, control, title), Path(args.figure))
        print(f"wrote {args.figure}")
    if args.json:
        Path(args.json).write_text(json.dumps({"summary": summary, "untrained": control, "scans": rows}, indent=2)
                                   + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
