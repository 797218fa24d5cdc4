"""Grad-CAM++ saliency of an exported model: which voxels raise its probability of findings.

MONAI's ``GradCAMpp`` (``monai.visualize``) does the work, at the last level's convolution block
(:func:`space.last_block_name`: one name pattern for every spec the builder makes). Three of its
pitfalls are handled here:

- its default post-processing maps the maximum to 0 and the minimum to 1, inverting the map: this
  module keeps the raw, non-negative map and scales it itself;
- it reads ``logits[:, class_idx]``, but a spec's network outputs one logit per scan, shape (B,): a
  wrapper gives it shape (B, 1), and ``class_idx=0`` is the logit of label 1;
- it needs gradients: nothing here runs under ``torch.no_grad`` or ``inference_mode``.

Grad-CAM++ also multiplies its weights by ``exp(logit)``, a per-scan positive constant that overflows
float32 past a logit of 88; the wrapper hands MONAI a score of value 0 with the logit's gradient, which
leaves the map's shape as it is. The map is computed on the network built in the literal order
(``pool_first=False``, the same weights), so the block's output is read after its activation whatever
order training used. For an ensemble, each member's map is scaled to unit mass and the maps averaged.

The map answers "where does evidence for label 1 sit", read from the gradient of the label-1 logit;
for a scan the model calls negative it shows what little pushes towards positive. It is coarse: the
last block's feature map is 8-16 times smaller than the input along each axis.

An ordinal (severity) model outputs K-1 cumulative logits z + b_k of "grade >= k" that share one severity
logit z (``space.build.OrdinalCuts``): the cutpoints b_k are constants, so every "grade >= k" has z's
gradient and the same map. The map is read from column 0 (z + b_1) and answers "where does evidence for
a higher grade sit"; titles say so (:data:`ORDINAL_TARGET`).
"""

from __future__ import annotations

import math
import textwrap
import warnings
from pathlib import Path
from typing import cast

import numpy as np
import torch
from matplotlib import colormaps
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from monai.visualize import GradCAMpp
from torch import nn

from lungct.files import atomic_path
from lungct.nifti import resize_volume
from search.model.folder import Ensemble
from space import SpecNet, build, last_block_name

METHOD = "Grad-CAM++ (monai.visualize.GradCAMpp)"
MONTAGE_SLICES = 12  # axial slices in a montage, 3 rows of 4
MONTAGE_COLUMNS = 4
SHOWN_FROM = 0.3  # the overlay is transparent below this share of the scan's maximum saliency
OPACITY = 0.7  # the overlay's opacity at the maximum
ORDINAL_TARGET = ('the shared severity logit z (evidence for a higher grade; every "grade >= k" logit is z + b_k, '
                  "so all give this map)")


class _OneLogit(nn.Module):
    """A spec's network as MONAI's CAM classes want it: (B, 1) scores, the label-1 logit in column 0.

    The score's value is 0 and its gradient is the logit's (``z - z.detach() ``), so Grad-CAM++'s
    ``exp(score)`` factor is 1 instead of overflowing for a confident scan. An ordinal network's (B, K-1)
    cumulative logits z + b_k give column 0, whose gradient is the shared severity logit z's.
    """

    def __init__(self, net: SpecNet):
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.net(x)  # (B,), or (B, K-1) for an ordinal network
        if z.ndim == 2:
            z = z[:, 0]  # z + b_1: b_1 is a constant, so this is the severity logit's gradient
        return (z - z.detach())[:, None]  # (B, 1)


def _literal_copy(net: SpecNet) -> SpecNet:
    """``net`` rebuilt in the literal layer order (block -> activation -> pool), same weights, eval mode, CPU."""
    literal = build(net.spec, pool_first=False, grades=net.grades)
    literal.load_state_dict(net.state_dict(), strict=True)
    return literal.to("cpu").eval()


class SaliencyMapper:
    """Grad-CAM++ maps of one model, its hooks set once and used for every scan.

    Args:
        model: A spec's network or an :class:`search.model.folder.Ensemble` of them (``load_model`` gives either).
        layer: The layer to read, e.g. ``features.level3.block`` (default: the last level's block).
    """

    def __init__(self, model: nn.Module, layer: str | None = None):
        # A ModuleList's items are typed as any Module; load_model's ensembles hold spec networks.
        members = cast("list[SpecNet]", list(model.members) if isinstance(model, Ensemble) else [model])
        self.layer = layer or last_block_name(members[0].spec)
        nets = [_literal_copy(m) for m in members]
        if self.layer not in dict(nets[0].named_modules()):
            raise ValueError(f"saliency layer: {self.layer!r} is not a layer of this model (e.g. "
                             f"{last_block_name(members[0].spec)!r})")
        self._cams = [GradCAMpp(nn_module=_OneLogit(net), target_layers=f"net.{self.layer}", postprocessing=_keep)
                      for net in nets]

    def __call__(self, volume: torch.Tensor) -> np.ndarray:
        """The saliency of one preprocessed scan: (1, 1, D, H, W) -> (D, H, W) float32, >= 0, unit mass.

        All zeros when no voxel raises the label-1 logit (every weighted activation is negative).
        """
        maps = []
        # A first-level block sees the input, which needs no gradient; its hook then fires on the output's
        # gradient, the one Grad-CAM++ reads, and torch warns about exactly that.
        with torch.enable_grad(), warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Full backward hook is firing", category=UserWarning)
            for cam in self._cams:
                m = cam(volume.float().cpu(), class_idx=0)[0, 0].detach().numpy().astype(np.float32)  # (D, H, W)
                total = float(m.sum())
                maps.append(m / total if total > 0 and math.isfinite(total) else np.zeros_like(m))
        return np.mean(maps, axis=0)


def _keep(x: torch.Tensor) -> torch.Tensor:
    """Post-processing that keeps the map as computed (MONAI's default inverts it)."""
    return x


def mass_share(saliency: np.ndarray, mask: np.ndarray) -> float:
    """Share of the saliency mass inside ``mask`` (a 0/1 mask, or the fraction of each voxel inside it).

    Compare it with ``mask.mean()``, the share of the volume: a map that ignored the mask would put
    about that share there. NaN for an all-zero map.
    """
    total = float(saliency.sum())
    return float((saliency * mask).sum()) / total if total > 0 else math.nan


def region_shares(saliency: np.ndarray, masks: tuple[np.ndarray, np.ndarray], size: tuple[int, int, int]) -> dict:
    """Where a map's mass sits against where the lungs and lesions are, at the model's input size.

    Args:
        saliency: (D, H, W) at the model's input size.
        masks: The lung and lesion masks at the scan's own resolution (``lungct.phantom_masks``).
        size: The model's input size; each mask becomes the fraction of each input voxel it covers.

    Returns:
        ``lung_mass``/``lung_volume`` and ``lesion_mass``/``lesion_volume``: the share of the saliency
        mass and of the volume inside each region (a map blind to a region puts about its volume share
        there); masses are NaN for an empty map.
    """
    out = {}
    for name, mask in zip(("lung", "lesion"), masks, strict=True):
        fraction = resize_volume(mask.astype(np.float32), size)
        out[f"{name}_mass"] = mass_share(saliency, fraction)
        out[f"{name}_volume"] = float(fraction.mean())
    return out


def montage_slices(depth: int, n: int = MONTAGE_SLICES) -> list[int]:
    """``n`` axial slice indices spread evenly over ``depth`` slices, ends excluded (all when fewer)."""
    if depth <= n:
        return list(range(depth))
    return [round(float(v)) for v in np.linspace(0, depth - 1, n + 2)[1:-1]]


def plot_montage(volume: np.ndarray, saliency: np.ndarray, title: str, subtitle: str) -> Figure:
    """Axial slices of a preprocessed scan with the saliency over them, as a radiologist reads them.

    Args:
        volume: (D, H, W) in [0, 1], canonical RAS (D inferior to superior, H posterior to anterior,
            W towards the patient's right), as the model saw it.
        saliency: (D, H, W), >= 0.
        title: First line of the title (the scan).
        subtitle: The probability and the routing decision, wrapped to the figure's width.
    """
    slices = montage_slices(volume.shape[0])
    rows = math.ceil(len(slices) / MONTAGE_COLUMNS)
    cols = min(MONTAGE_COLUMNS, len(slices))
    fig = Figure(figsize=(2.8 * cols + 0.9, 2.8 * rows + 1.4), dpi=100, layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False)
    top = float(saliency.max())
    scaled = saliency / top if top > 0 else saliency
    cmap = colormaps["inferno"]
    for ax, d in zip(axes.flat, slices, strict=False):
        # Radiological convention: anterior up, the patient's right on the viewer's left.
        ax.imshow(volume[d, ::-1, ::-1], cmap="gray", vmin=0.0, vmax=1.0, interpolation="bilinear")
        value = scaled[d, ::-1, ::-1]
        overlay = cmap(value)  # (H, W, 4); the opacity grows with the saliency, from 0 at SHOWN_FROM
        overlay[..., 3] = OPACITY * np.clip((value - SHOWN_FROM) / (1.0 - SHOWN_FROM), 0.0, 1.0)
        ax.imshow(overlay, interpolation="bilinear")
        ax.set_title(f"slice {d + 1}/{volume.shape[0]}", fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    for ax in axes.flat[len(slices):]:
        ax.axis("off")
    first = axes.flat[0]
    for text, xy, align in (("R", (0.03, 0.5), "left"), ("L", (0.97, 0.5), "right"), ("A", (0.5, 0.95), "center")):
        first.text(*xy, text, transform=first.transAxes, color="#7fdbff", fontsize=10, fontweight="bold",
                   ha=align, va="center")
    bar = fig.colorbar(ScalarMappable(Normalize(0.0, 1.0), cmap), ax=axes, shrink=0.6, pad=0.01)
    bar.set_label(f"saliency, share of this scan's maximum (transparent below {SHOWN_FROM:g})", fontsize=9)
    if top <= 0:
        subtitle += " No voxel raises the probability: the map is empty."
    width = int(24 * cols)
    fig.suptitle(title + "\n" + "\n".join(textwrap.wrap(subtitle, width)), fontsize=11)
    return fig


def save_figure(fig: Figure, path: Path) -> None:
    """Write a figure as PNG atomically (``lungct.files.atomic_path``)."""
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")


def montage_name(scan: str, taken: set[str]) -> str:
    """A PNG file name for ``scan`` (its name without .nii/.nii.gz), made unique among ``taken``."""
    stem = Path(scan).name
    for ext in (".nii.gz", ".nii"):
        if stem.endswith(ext):
            stem = stem[: -len(ext)]
            break
    name, k = f"{stem}.saliency.png", 2
    while name in taken:
        name, k = f"{stem}-{k}.saliency.png", k + 1
    taken.add(name)
    return name


# (what happened, true label, predicted label); the first of each is the most confident such scan.
OUTCOMES = (("true positive", 1, 1), ("false negative", 1, 0), ("false positive", 0, 1), ("true negative", 0, 0))


def write_examples(model: nn.Module, volumes: torch.Tensor, labels: np.ndarray, probs: np.ndarray,
                   classes: tuple[str, ...], threshold: float, out_dir: Path) -> list[Path]:
    """Montages of the most telling test scans: per outcome at ``threshold``, the one the model was surest of.

    The surest true positive and true negative show what the model reads when it is right; the surest
    false positive and the worst-missed positive, what misled it. Titles name the outcome and the
    probability, never the scan. An ordinal model's (N, K-1) cumulative probabilities go to
    :func:`write_grade_examples` instead.

    Args:
        model: The exported model.
        volumes: (N, 1, D, H, W) preprocessed scans.
        labels: (N,) true labels.
        probs: (N,) the model's P(label 1).
        classes: Names of label 0 and label 1.
        threshold: P(label 1) at or above which label 1 is predicted.
        out_dir: Where to write ``saliency_<outcome>.png``.

    Returns:
        The files written, in the order of :data:`OUTCOMES` (outcomes no scan had are skipped).
    """
    if np.ndim(probs) == 2:
        return write_grade_examples(model, volumes, labels, probs, classes, out_dir)
    mapper = SaliencyMapper(model)
    written = []
    for outcome, label, called in OUTCOMES:
        found = [i for i in range(len(labels)) if int(labels[i]) == label and int(probs[i] >= threshold) == called]
        if not found:
            continue
        pick = max(found, key=lambda i: probs[i]) if called else min(found, key=lambda i: probs[i])
        volume = volumes[pick:pick + 1].float()  # (1, 1, D, H, W)
        subtitle = (f"The surest {outcome} of the {len(labels)} locked test scans ({len(found)} such): a "
                    f"{classes[label]} scan, P({classes[1]}) = {float(probs[pick]):.3f}, called {classes[called]} "
                    f"at threshold {threshold:g}. {METHOD} of the {classes[1]} logit at {mapper.layer}.")
        out = out_dir / f"saliency_{outcome.replace(' ', '_')}.png"
        save_figure(plot_montage(volume[0, 0].numpy(), mapper(volume), f"locked test part: {outcome}", subtitle), out)
        written.append(out)
    return written


# The ordinal examples: what the model reads at both ends of the scale when it is right, and its worst miss.
GRADE_EXAMPLES = ("lowest grade", "highest grade", "worst miss")


def pick_grade_examples(labels: np.ndarray, cumulative: np.ndarray) -> dict[str, int]:
    """Which test scans :func:`write_grade_examples` shows, by index: at most one per :data:`GRADE_EXAMPLES`.

    - lowest grade: of the scans of grade 0 predicted grade 0, the one of the lowest expected grade;
    - highest grade: of the scans of grade K-1 predicted K-1, the one of the highest expected grade;
    - worst miss: the scan whose predicted (median) grade is furthest from its true grade, ties broken by the
      expected grade's distance from it; none when every scan is graded right.

    An example no scan fits is left out.
    """
    labels = np.asarray(labels).astype(int).ravel()
    cumulative = np.asarray(cumulative, dtype=np.float64).reshape(labels.size, -1)
    top = cumulative.shape[1]
    expected = cumulative.sum(axis=1)  # the expected grade: one ranking score (search.stats.metrics.severity_score)
    called = np.sum(cumulative >= 0.5, axis=1)  # the median grade (search.stats.metrics.predicted_grade)
    picks = {}
    low = np.flatnonzero((labels == 0) & (called == 0))
    if low.size:
        picks["lowest grade"] = int(low[np.argmin(expected[low])])
    high = np.flatnonzero((labels == top) & (called == top))
    if high.size:
        picks["highest grade"] = int(high[np.argmax(expected[high])])
    miss = np.abs(called - labels)
    if miss.max(initial=0) > 0:
        worst = np.flatnonzero(miss == miss.max())
        picks["worst miss"] = int(worst[np.argmax(np.abs(expected[worst] - labels[worst]))])
    return picks


def grade_text(classes: tuple[str, ...], cumulative: np.ndarray) -> str:
    """``P(CT-0) 0.10, P(CT-1) 0.20, ...`` of one scan's (K-1,) cumulative probabilities."""
    at_least = np.concatenate([[1.0], np.asarray(cumulative, dtype=np.float64).ravel(), [0.0]])
    shares = np.clip(at_least[:-1] - at_least[1:], 0.0, 1.0)
    return ", ".join(f"P({name}) {p:.2f}" for name, p in zip(classes, shares, strict=True))


def write_grade_examples(model: nn.Module, volumes: torch.Tensor, labels: np.ndarray, cumulative: np.ndarray,
                         classes: tuple[str, ...], out_dir: Path) -> list[Path]:
    """Montages of an ordinal model's most telling test scans (:func:`pick_grade_examples`).

    The surest correct scan of the lowest and of the highest grade show what the model reads at both ends of
    the scale; the worst miss, what misled it most. Each map is of the shared severity logit z
    (:data:`ORDINAL_TARGET`). Titles name the example, the grades and the probabilities, never the scan.

    Args:
        model: The exported model, outputting (B, K-1) cumulative logits.
        volumes: (N, 1, D, H, W) preprocessed scans.
        labels: (N,) true grades 0..K-1.
        cumulative: (N, K-1) the model's P(grade >= k).
        classes: Names of grades 0..K-1.
        out_dir: Where to write ``saliency_<example>.png``.

    Returns:
        The files written, in the order of :data:`GRADE_EXAMPLES` (examples no scan fits are skipped).
    """
    labels = np.asarray(labels).astype(int).ravel()
    cumulative = np.asarray(cumulative, dtype=np.float64).reshape(labels.size, -1)
    picks = pick_grade_examples(labels, cumulative)
    if not picks:
        return []
    mapper = SaliencyMapper(model)
    written = []
    for example in GRADE_EXAMPLES:
        if example not in picks:
            continue
        pick = picks[example]
        called = int(np.sum(cumulative[pick] >= 0.5))
        why = {"lowest grade": f"the surest correct {classes[0]} scan",
               "highest grade": f"the surest correct {classes[-1]} scan",
               "worst miss": "the scan whose median grade is furthest from its true grade"}[example]
        volume = volumes[pick:pick + 1].float()  # (1, 1, D, H, W)
        subtitle = (f"{why[0].upper()}{why[1:]} of the {labels.size} locked test scans: a {classes[labels[pick]]} scan "
                    f"graded {classes[called]} (median grade); {grade_text(classes, cumulative[pick])}. {METHOD} of "
                    f"{ORDINAL_TARGET} at {mapper.layer}.")
        out = out_dir / f"saliency_{example.replace(' ', '_')}.png"
        save_figure(plot_montage(volume[0, 0].numpy(), mapper(volume), f"locked test part: {example}", subtitle), out)
        written.append(out)
    return written
