"""The exported model folder: what ``search.export`` writes and ``search.predict`` reads.

A model folder holds plain data only, so loading it never unpickles anything:

- ``spec.json``: the ArchSpec; ``space.build`` turns it back into the network.
- ``train_spec.json``: the optimiser settings it was trained with (provenance only).
- ``weights.safetensors``: the state dict, BatchNorm running statistics included.
- ``ensemble.json`` (only for an ensemble): how many members of the spec the weights hold (names
  ``members.<i>.<layer>``) and how their outputs combine (:class:`Ensemble`).
- ``preprocess.json``: the HU window and input size, the task, the class names and the threshold.
- ``model.onnx``: the same network for deployment without this package (see :func:`export_onnx`).
- ``metrics.json`` and ``MODEL_CARD.md``: the locked-test evaluation and the model card.

Loading is ``build(spec)`` (or an :class:`Ensemble` of it) then ``load_state_dict(strict=True)`` from
safetensors, never ``torch.load``.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import math
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from lungct.records import PreprocessConfig, Task
from search.routing import class_names
from space import ArchSpec, SpecInputError, SpecNet, TrainSpec, build, check_input_size

FORMAT_VERSION = 1
SPEC = "spec.json"
TRAIN_SPEC = "train_spec.json"
WEIGHTS = "weights.safetensors"
PREPROCESS = "preprocess.json"
ONNX = "model.onnx"
METRICS = "metrics.json"
CARD = "MODEL_CARD.md"
ENSEMBLE = "ensemble.json"
MAX_MEMBERS = 50  # more is a corrupt or hostile ensemble.json (confirmation keeps at most 10 folds x repeats)
REQUIRED = (SPEC, WEIGHTS, PREPROCESS)

# The ONNX graph's names; the batch axis is dynamic, the volume size is fixed by preprocess.json.
ONNX_INPUT = "volume"
ONNX_OUTPUT = "logit"
ONNX_STACK_TRACE = "pkg.torch.onnx.stack_trace"  # node metadata that torch's exporter writes
# Exported and reloaded models must agree this closely on the same input (float32 logits).
TOLERANCE = 1e-4
# The largest input size a model folder may ask for: 16x the seed's 64x128x128 (256 MiB of float32 per
# scan, about 4 GiB per 64-channel feature map). A larger size is a corrupt or hostile preprocess.json,
# on which predict would try to allocate tens of GB.
MAX_INPUT_VOXELS = 256**3


class Ensemble(torch.nn.Module):
    """Several trained copies of one spec whose P(label 1) is averaged; it outputs the logit of that mean.

    The cross-validation fold models of the confirmation stage, shipped together (as nnU-Net ships its
    five fold models), so the exported model is the one whose out-of-fold score the confirmation
    measured. The logit of the mean probability is computed in log space,
    ``logsumexp(logsigmoid(z)) - logsumexp(logsigmoid(-z))``, exact where some probabilities round to 0
    or 1 in float32, and exported to ONNX from ops that onnxruntime computes to full relative precision
    (:func:`_log_sigmoid`); one output per scan, so predict, the ONNX file and every metric treat it like a
    single model.
    """

    def __init__(self, members: list[torch.nn.Module]):
        super().__init__()
        if not members:
            raise ValueError("ensemble: needs at least one member")
        self.members = torch.nn.ModuleList(members)
        self.spec = getattr(members[0], "spec", None)  # every member is built from it

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = torch.stack([m(x) for m in self.members]).float()
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


class ModelDirError(ValueError):
    """A model folder is missing, incomplete, or does not match its own spec; the message says which file."""


@dataclass(frozen=True)
class ModelInfo:
    """What a model folder says about its input and output (``preprocess.json``).

    Attributes:
        preprocess: HU window and input size (D, H, W) the model was trained at.
        task: Task name (``lungct.records.TASKS``).
        task_description: The task in words.
        negative: Categories of label 0.
        positive: Categories of label 1.
        classes: Names of label 0 and label 1, e.g. ``("CT-0", "CT-2 or CT-3")``.
        threshold: P(label 1) at or above which label 1 is predicted.
    """

    preprocess: PreprocessConfig
    task: str
    task_description: str
    negative: tuple[str, ...]
    positive: tuple[str, ...]
    classes: tuple[str, str]
    threshold: float = 0.5

    @classmethod
    def for_task(cls, task: Task, preprocess: PreprocessConfig, threshold: float = 0.5) -> ModelInfo:
        """The info of a model trained on ``task`` with ``preprocess``."""
        return cls(preprocess, task.name, task.description, tuple(task.negative), tuple(task.positive),
                   class_names(task), threshold)

    def to_dict(self) -> dict:
        """JSON-ready dict, with a description of the model's input and output for other runtimes."""
        d, h, w = self.preprocess.size
        return {
            "format_version": FORMAT_VERSION,
            "preprocess": self.preprocess.to_dict(),
            "task": self.task,
            "task_description": self.task_description,
            "negative": list(self.negative),
            "positive": list(self.positive),
            "classes": list(self.classes),
            "threshold": self.threshold,
            "input": {
                "name": ONNX_INPUT, "shape": ["batch", 1, d, h, w], "dtype": "float32",
                "steps": "read NIfTI; reorient to RAS (nibabel as_closest_canonical); transpose (x, y, z) to "
                         "(z, y, x) = (D, H, W); clip to [hu_min, hu_max] and scale to [0, 1]; resize to size "
                         "(area averaging along axes that shrink, then trilinear along axes that grow)",
            },
            "output": {"name": ONNX_OUTPUT, "shape": ["batch"],
                       "meaning": "logit of label 1; P(label 1) = sigmoid(logit)"},
        }

    @classmethod
    def from_dict(cls, data: dict) -> ModelInfo:
        """Inverse of :meth:`to_dict`, checking every field that predict relies on.

        Raises:
            KeyError, TypeError, ValueError: A field is missing or invalid; a ValueError names the field.
        """
        pre = data["preprocess"]
        if not isinstance(pre, dict):
            raise ValueError(f"preprocess: expected an object with size, hu_min and hu_max, got {pre!r}")
        size = _input_size(pre["size"])
        hu_min, hu_max = _number("preprocess.hu_min", pre["hu_min"]), _number("preprocess.hu_max", pre["hu_max"])
        if not hu_min < hu_max:
            raise ValueError(f"preprocess.hu_min: the HU window must run upwards, got [{hu_min:g}, {hu_max:g}]")
        classes = data["classes"]
        if not isinstance(classes, list) or len(classes) != 2 or not all(isinstance(c, str) for c in classes):
            raise ValueError(f"classes: expected the names of label 0 and label 1, got {classes!r}")
        return cls(PreprocessConfig(size, hu_min, hu_max), str(data["task"]),
                   str(data.get("task_description", "")), _names("negative", data["negative"]),
                   _names("positive", data["positive"]), (classes[0], classes[1]),
                   _number("threshold", data.get("threshold", 0.5), 0.0, 1.0))


def _number(field: str, value: object, low: float = -math.inf, high: float = math.inf) -> float:
    """``value`` as a float if it is a finite number in [low, high]; else a ValueError naming ``field``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
            or not low <= value <= high:
        where = f" in [{low:g}, {high:g}]" if math.isfinite(low) and math.isfinite(high) else ""
        raise ValueError(f"{field}: expected a finite number{where}, got {value!r}")
    return float(value)


def _input_size(value: object) -> tuple[int, int, int]:
    """A model's input (D, H, W): three positive integers, at most :data:`MAX_INPUT_VOXELS` voxels."""
    if not isinstance(value, list) or len(value) != 3 \
            or any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in value):
        raise ValueError(f"preprocess.size: expected three positive integers (D, H, W), got {value!r}")
    if math.prod(value) > MAX_INPUT_VOXELS:
        raise ValueError(f"preprocess.size: {'x'.join(map(str, value))} is {math.prod(value):,} voxels, above the "
                         f"cap of {MAX_INPUT_VOXELS:,} (search.model_dir.MAX_INPUT_VOXELS)")
    return value[0], value[1], value[2]


def _names(field: str, value: object) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ValueError(f"{field}: expected a list of category names, got {value!r}")
    return tuple(value)


def is_model_dir(path: str | Path) -> bool:
    """Whether ``path`` holds an exported model (its required files)."""
    return all((Path(path) / name).is_file() for name in REQUIRED)


def write_json(path: Path, data: dict) -> None:
    """Indented JSON with a trailing newline (the folder is renamed into place whole, so no temp file)."""
    path.write_text(json.dumps(data, indent=2) + "\n")


def save_model(directory: str | Path, model: torch.nn.Module, spec: ArchSpec, train_spec: TrainSpec,
               info: ModelInfo) -> None:
    """Write the spec, training spec, weights and preprocessing of a model into ``directory``."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / SPEC).write_text(spec.to_json() + "\n")
    (directory / TRAIN_SPEC).write_text(train_spec.to_json() + "\n")
    # Training leaves tensors in channels-last layout; safetensors stores contiguous ones.
    state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(directory / WEIGHTS), metadata={"format": "lungct-nas", "spec": spec.to_json(None)})
    write_json(directory / PREPROCESS, info.to_dict())
    if isinstance(model, Ensemble):
        write_json(directory / ENSEMBLE, {"members": members_of(model), "combine": "mean of sigmoid probabilities; "
                                          "the model outputs its logit"})


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ModelDirError(f"{path}: unreadable ({type(e).__name__}: {e})") from None
    if not isinstance(data, dict):
        raise ModelDirError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


def _reason(error: Exception) -> str:
    """A field error as one line: a ValueError already names its field; a missing key is named here."""
    if isinstance(error, KeyError):
        return f"missing field {error}"
    return str(error) if isinstance(error, ValueError) else f"invalid ({type(error).__name__}: {error})"


def _mismatch(expected: dict[str, tuple], stored: dict[str, tuple]) -> str | None:
    """How a state dict's names and shapes differ from the spec's, in a few words, or None."""
    missing, unexpected = sorted(expected.keys() - stored.keys()), sorted(stored.keys() - expected.keys())
    if missing or unexpected:
        parts = [f"{what} {', '.join(keys[:3])}{' ...' if len(keys) > 3 else ''}"
                 for what, keys in (("missing", missing), ("unexpected", unexpected)) if keys]
        return "; ".join(parts)
    for key, shape in expected.items():
        if stored[key] != shape:
            return f"{key} has shape {list(stored[key])}, the spec's is {list(shape)}"
    return None


def _read_members(directory: Path) -> int:
    """Members in ``ensemble.json`` (1 without the file)."""
    if not (directory / ENSEMBLE).is_file():
        return 1
    value = _read_json(directory / ENSEMBLE).get("members")
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_MEMBERS:
        raise ModelDirError(f"{directory / ENSEMBLE}: members: expected an integer from 1 to {MAX_MEMBERS}, "
                            f"got {value!r}")
    return value


def build_model(spec: ArchSpec, members: int = 1) -> SpecNet | Ensemble:
    """The spec's network, or an :class:`Ensemble` of ``members`` copies of it (untrained)."""
    return build(spec) if members == 1 else Ensemble([build(spec) for _ in range(members)])


def load_model(directory: str | Path) -> tuple[SpecNet | Ensemble, PreprocessConfig, ModelInfo]:
    """The exported model (CPU, eval mode, float32), its preprocessing, and what it predicts.

    Everything is checked before a tensor is allocated: each field of ``preprocess.json`` (the HU
    window, an input size of at most :data:`MAX_INPUT_VOXELS`, a threshold in [0, 1]), the spec, that
    the spec runs at that size, the member count of ``ensemble.json`` if there is one, and that the
    weights' names and shapes are the spec's (each member's).

    Raises:
        ModelDirError: The folder or one of its files is missing or invalid, or the weights do not fit
            the spec; the message names the file and the field.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise ModelDirError(f"{directory}: no such folder")
    missing = [name for name in REQUIRED if not (directory / name).is_file()]
    if missing:
        raise ModelDirError(f"{directory}: missing {', '.join(missing)} (not a folder written by "
                            f"python -m search.export)")
    try:
        spec = ArchSpec.from_dict(_read_json(directory / SPEC))
    except (KeyError, TypeError, ValueError) as e:
        raise ModelDirError(f"{directory / SPEC}: {_reason(e)}") from None
    try:
        info = ModelInfo.from_dict(_read_json(directory / PREPROCESS))
    except (KeyError, TypeError, ValueError, IndexError) as e:
        raise ModelDirError(f"{directory / PREPROCESS}: {_reason(e)}") from None
    try:
        check_input_size(spec, info.preprocess.size)
    except SpecInputError as e:
        raise ModelDirError(f"{directory / SPEC}: cannot run at its input size "
                            f"{'x'.join(map(str, info.preprocess.size))} ({PREPROCESS}): {e}") from None
    members = _read_members(directory)
    with torch.device("meta"):  # the spec's tensors, without allocating them
        expected = {k: tuple(v.shape) for k, v in build_model(spec, members).state_dict().items()}
    try:
        with safe_open(str(directory / WEIGHTS), framework="pt") as f:
            names = f.keys()  # a safetensors file, not a dict
            mismatch = _mismatch(expected, {k: tuple(f.get_slice(k).get_shape()) for k in names})
            state = {} if mismatch else {k: f.get_tensor(k) for k in names}
    except (SafetensorError, OSError) as e:
        raise ModelDirError(f"{directory / WEIGHTS}: unreadable ({e})") from None
    if mismatch:
        raise ModelDirError(f"{directory / WEIGHTS}: does not match {SPEC} ({mismatch})")
    model = build_model(spec, members)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        first = str(e).splitlines()[1].strip() if len(str(e).splitlines()) > 1 else str(e)
        raise ModelDirError(f"{directory / WEIGHTS}: does not match {SPEC} ({first})") from None
    return model.eval(), info.preprocess, info


def fixed_input(size: tuple[int, int, int], n: int = 2, seed: int = 0) -> torch.Tensor:
    """A seeded (n, 1, D, H, W) float32 input in [0, 1], for comparing a model with its exported copies."""
    generator = torch.Generator().manual_seed(seed)
    return torch.rand((n, 1, *size), generator=generator)


@torch.inference_mode()
def logits(model: torch.nn.Module, volumes: torch.Tensor) -> np.ndarray:
    """Float32 logits of ``model`` in eval mode on the CPU."""
    model = model.to("cpu").eval()
    return model(volumes.float()).numpy()


def export_onnx(model: torch.nn.Module, size: tuple[int, int, int], path: str | Path) -> None:
    """Write ``model`` as one self-contained ONNX file with a dynamic batch axis.

    ONNX rather than TorchScript: both ``torch.jit`` and the TorchScript-based ONNX exporter are
    deprecated in torch 2.9+, and an ONNX file runs without torch or this package (onnxruntime,
    OpenVINO, TensorRT, browsers). This uses torch's current ``torch.export``-based exporter
    (``dynamo=True``), which needs ``onnxscript``. Its console chatter goes to a buffer, and is
    shown only if the export fails.

    Raises:
        RuntimeError: The export failed; the message holds the exporter's last lines.
    """
    model = model.to("cpu").eval()
    example = fixed_input(size)  # batch 2, so the exporter does not specialise the batch axis to 1
    chatter = io.StringIO()
    quiet = logging.getLogger("torch.onnx")
    level = quiet.level
    quiet.setLevel(logging.ERROR)  # "torchvision is not installed. Skipping torchvision::nms" and the like
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(chatter):
            warnings.simplefilter("ignore")
            torch.onnx.export(model, (example,), str(path), dynamo=True, external_data=False,
                              input_names=[ONNX_INPUT], output_names=[ONNX_OUTPUT],
                              dynamic_shapes=({0: torch.export.Dim("batch", min=1)},))
    except ImportError as e:
        raise RuntimeError(f"ONNX export needs onnxscript ({e}); pip install onnxscript") from None
    except Exception as e:  # the exporter raises many types; any of them means no ONNX file
        tail = " | ".join(chatter.getvalue().strip().splitlines()[-3:])
        raise RuntimeError(f"ONNX export failed: {type(e).__name__}: {str(e)[:300]} {tail}".strip()) from e
    finally:
        quiet.setLevel(level)
    _strip_stack_traces(path)


def _strip_stack_traces(path: str | Path) -> None:
    """Drop the Python stack trace the exporter stores on every node: it holds this machine's absolute paths."""
    import onnx  # installed with onnxscript, which the export needs

    proto = onnx.load(str(path))
    for node in proto.graph.node:
        kept = [prop for prop in node.metadata_props if prop.key != ONNX_STACK_TRACE]
        del node.metadata_props[:]
        node.metadata_props.extend(kept)
    onnx.save(proto, str(path))


def onnx_logits(path: str | Path, volumes: torch.Tensor) -> np.ndarray | None:
    """Logits of an ONNX file under onnxruntime on the CPU, or None when onnxruntime is not installed."""
    try:
        import onnxruntime
    except ImportError:
        return None
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run([ONNX_OUTPUT], {ONNX_INPUT: volumes.float().numpy()})[0]
