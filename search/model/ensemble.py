"""Several trained copies of one spec shipped as one model (:class:`Ensemble`), and building either from a spec.

An ensemble outputs the logit of its members' mean probability, so predict, the ONNX file and every metric
treat it like a single model; a model folder's ``ensemble.json`` says how many members its weights hold.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from space import ArchSpec, SpecNet, build


class Ensemble(torch.nn.Module):
    """Several trained copies of one spec whose P(label 1) is averaged; it outputs the logit of that mean.

    For an ordinal spec each member outputs (B, K-1) cumulative logits; the mean is taken elementwise,
    per "grade >= k", and an average of probabilities that fall with k falls with k too, so the
    ensemble's grade probabilities stay a proper distribution.

    The cross-validation fold models of the confirmation stage, shipped together (as nnU-Net ships its
    five fold models), so the exported model is the one whose out-of-fold score the confirmation
    measured. The logit of the mean probability is computed in log space,
    ``logsumexp(logsigmoid(z)) - logsumexp(logsigmoid(-z))``, exact where some probabilities round to 0
    or 1 in float32, and exported to ONNX from ops that onnxruntime computes to full relative precision
    (:func:`_log_sigmoid`); one output per scan (K-1 for an ordinal spec), so predict, the ONNX file and
    every metric treat it like a single model.
    """

    def __init__(self, members: Sequence[torch.nn.Module]):
        super().__init__()
        if not members:
            raise ValueError("ensemble: needs at least one member")
        self.members = torch.nn.ModuleList(members)
        self.spec = getattr(members[0], "spec", None)  # every member is built from it
        self.grades = getattr(members[0], "grades", 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = torch.stack([m(x) for m in self.members]).float()  # (M, B), or (M, B, K-1) for an ordinal spec
        return _logsumexp0(_log_sigmoid(z)) - _logsumexp0(_log_sigmoid(-z))


def _log_sigmoid(z: torch.Tensor) -> torch.Tensor:
    """log(sigmoid(z)) from exp and log alone, exact to float32 at any z.

    Not ``F.logsigmoid``: the ONNX exporter writes it as Log(Sigmoid(z)), and onnxruntime's fast sigmoid
    is exact only to about 1e-7 in absolute terms, so log(sigmoid(-24)) came out 0.5 off and an exported
    ensemble of three confident members disagreed with torch by 0.48 in the logit.
    """
    return torch.clamp(z, max=0.0) - torch.log(1.0 + torch.exp(-torch.abs(z)))


def _logsumexp0(v: torch.Tensor) -> torch.Tensor:
    """log(sum(exp(v))) over dim 0, with the maximum taken out (plain ops, for the same reason)."""
    top = v.amax(dim=0)
    return top + torch.log(torch.exp(v - top).sum(dim=0))


def members_of(model: torch.nn.Module) -> int:
    """How many trained copies a model is: an :class:`Ensemble`'s members, else 1."""
    return len(model.members) if isinstance(model, Ensemble) else 1


def build_model(spec: ArchSpec, members: int = 1, grades: int = 2) -> SpecNet | Ensemble:
    """The spec's network for a task of ``grades`` labels, or an :class:`Ensemble` of ``members`` copies (untrained)."""
    if members == 1:
        return build(spec, grades=grades)
    return Ensemble([build(spec, grades=grades) for _ in range(members)])
