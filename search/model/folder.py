"""The exported model folder: its files, writing it (:func:`save_model`) and loading it (:func:`load_model`).

``search.export`` writes the folder and ``search.predict`` reads it. It holds plain data only, so loading it
never unpickles anything:

- ``spec.json``: the ArchSpec; ``space.build`` turns it back into the network.
- ``train_spec.json``: the optimiser settings it was trained with (provenance only).
- ``weights.safetensors``: the state dict, BatchNorm running statistics included.
- ``ensemble.json`` (only for an ensemble): how many members of the spec the weights hold (names
  ``members.<i>.<layer>``) and how their outputs combine (:class:`Ensemble`).
- ``preprocess.json``: the HU window and input size, the task, the class names and the threshold; for an
  ordinal task (severity grades), the categories and name of each grade, and the network outputs K-1
  cumulative logits of "grade >= k" in place of one logit.
- ``model.onnx``: the same network for deployment without this package (see :func:`export_onnx`).
- ``metrics.json`` and ``MODEL_CARD.md``: the locked-test evaluation and the model card.

Loading is ``build(spec, grades=K)`` (or an :class:`Ensemble` of it) then ``load_state_dict(strict=True)`` from
safetensors, never ``torch.load``.

Model folders are shared (handed in, passed on), so :func:`load_model` reads one as untrusted input and
checks it whole before it builds the network: each file it reads must be a regular file inside the
folder (not a link out of it, a device or a FIFO) under a size cap; JSON may not nest deeper than
:data:`MAX_JSON_DEPTH` or repeat a key, and a key it does not know is ignored (a later version may add one)
unless it nearly spells one it knows (``"Threshold"``, ``"treshold"``: :func:`check_spelling`), which is
refused, since ignoring it would silently drop what it says; every field is typed and range-checked, the
task, categories and class names agree (``search.model.routing.check_classes``; for an ordinal task every
grade's categories and name, ``check_grades``); the network's memory at its input size (``space.cost.memory``)
must fit a cap (half this machine's memory unless raised); and the weights' header must list exactly the spec's
tensor names, shapes and dtypes (an ordinal model's cutpoints included) before a tensor is read. A
refusal is a :class:`ModelDirError` whose message starts with the file's path and the field.

The parts live beside this module and are importable from here too: the bounded readers and the safetensors
header check (``search.model.untrusted``), ``preprocess.json`` (``search.model.info``), the ensemble
(``search.model.ensemble``) and the ONNX copy (``search.model.onnx_export``).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors
from safetensors.torch import save_file

from lungct.records import PreprocessConfig
from search.model.ensemble import Ensemble, build_model, members_of
from search.model.info import MAX_INPUT_VOXELS, ModelInfo
from search.model.onnx_export import TOLERANCE, export_onnx, fixed_input, logits, onnx_logits
from search.model.untrusted import (
    MAX_JSON_DEPTH,
    MAX_SAFETENSORS_HEADER,
    SAFETENSORS_DTYPES,
    ModelDirError,
    _metadata_spec,
    _mismatch,
    _reason,
    _safetensors_header,
    _spelled,
    check_spelling,
    misspelt,
    read_file,
    read_json,
)
from space import ArchSpec, SpecInputError, SpecNet, TrainSpec, check_input_size, memory

# This module's public names and those of its parts, which other modules import from here.
__all__ = [
    "CARD", "ENSEMBLE", "MAX_CARD_BYTES", "MAX_INPUT_VOXELS", "MAX_JSON_DEPTH", "MAX_METRICS_BYTES",
    "MAX_SAFETENSORS_HEADER", "MEMORY_SHARE", "METRICS", "ONNX", "PREPROCESS", "REQUIRED", "SPEC", "TOLERANCE",
    "TRAIN_SPEC", "WEIGHTS", "Ensemble", "ModelDirError", "ModelInfo", "OptionalFiles", "build_model",
    "check_memory", "check_spelling", "default_memory_cap", "export_onnx", "fixed_input", "is_model_dir",
    "load_model", "logits", "machine_memory_bytes", "members_of", "misspelt", "onnx_logits", "read_file",
    "read_json", "read_optional", "save_model", "write_json",
]

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
# Size caps of metrics.json and the model card as read: metrics.json holds the test ROC curves and calibration
# bins (tens of kB), so these leave room and bound what parsing costs.
MAX_METRICS_BYTES = 4 << 20
MAX_CARD_BYTES = 4 << 20
# The keys export writes in metrics.json, and in its "data" entry (search.export, search.shipping.metrics.data_entry).
METRICS_KEYS = ("format_version", "created", "study", "task", "test", "selection", "model", "baseline", "data",
                "training", "test_predictions", "export_check", "versions")
METRICS_DATA_KEYS = ("root", "layout", "task", "task_description", "size", "hu_window", "split_file", "split_seed",
                     "n_train", "n_val", "n_test", "loaded", "excluded", "skipped", "phantoms", "test_ids")
ENSEMBLE_KEYS = ("members", "combine")
# The default cap on a model's memory (weights plus activations of one scan, space.cost.memory): this share
# of the machine's memory, so that a hostile spec is refused instead of meeting the out-of-memory killer.
MEMORY_SHARE = 0.5


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
        combine = ("mean of sigmoid probabilities; the model outputs its logit" if model.grades <= 2 else
                   "mean of each sigmoid probability P(grade >= k) over the members; the model outputs their logits")
        write_json(directory / ENSEMBLE, {"members": members_of(model), "combine": combine})

def _read_members(directory: Path) -> int:
    """Members in ``ensemble.json`` (1 without the file)."""
    if not os.path.lexists(directory / ENSEMBLE):
        return 1
    value = read_json(directory / ENSEMBLE, known=ENSEMBLE_KEYS).get("members")
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_MEMBERS:
        raise ModelDirError(f"{directory / ENSEMBLE}: members: expected an integer from 1 to {MAX_MEMBERS}, "
                            f"got {value!r}")
    return value


def machine_memory_bytes() -> int | None:
    """This machine's memory, or the lowest limit on this process's (cgroup v2 or v1, RLIMIT_AS); None if unknown."""
    try:
        found = [os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")]
    except (ValueError, OSError, AttributeError):
        found = []
    with contextlib.suppress(ImportError, OSError, ValueError):
        import resource  # POSIX only

        found.append(resource.getrlimit(resource.RLIMIT_AS)[0])  # RLIM_INFINITY is -1, dropped below
    for limit in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        with contextlib.suppress(OSError, ValueError):
            found.append(int(Path(limit).read_text().strip()))  # "max" (no limit) is a ValueError
    found = [n for n in found if 0 < n < 1 << 62]
    return min(found) if found else None


def default_memory_cap() -> int:
    """:data:`MEMORY_SHARE` of :func:`machine_memory_bytes` (8 GiB where the machine's memory is unknown)."""
    total = machine_memory_bytes()
    return int(MEMORY_SHARE * total) if total else 8 << 30


def _gb(n: int) -> str:
    return f"{n / 1e9:.3g} GB"


def check_memory(directory: Path, spec: ArchSpec, size: tuple[int, int, int], members: int,
                 max_memory_bytes: int | None = None, gradients: bool = False) -> int:
    """The bytes the folder's network needs for one scan (``space.cost.memory`` times its members), up to a cap.

    Args:
        directory: The model folder, for the message.
        spec: Its spec; ``size`` its input size; ``members`` its ensemble members.
        max_memory_bytes: The cap; None: :func:`default_memory_cap`.
        gradients: Count a backward pass too (a saliency map needs one).

    Raises:
        ModelDirError: The network needs more than the cap (the message says how much, and the flag).
    """
    cap = default_memory_cap() if max_memory_bytes is None else max_memory_bytes
    need = members * memory(spec, size).total(gradients)
    if need > cap:
        share = "" if max_memory_bytes is not None else f", {MEMORY_SHARE:g} of the memory this machine gives it"
        raise ModelDirError(
            f"{directory / SPEC}: levels: the network needs about {_gb(need)} for one scan at "
            f"{'x'.join(map(str, size))} ({PREPROCESS}){' with a saliency map' if gradients else ''}, above the cap "
            f"of {_gb(cap)}{share}; a corrupt or hostile spec, or pass --max-memory-gb to raise the cap")
    return need

def _read_state(directory: Path, spec: ArchSpec, members: int, grades: int = 2) -> dict[str, torch.Tensor]:
    """The weights as a state dict, after their header is checked against the spec's names, shapes and dtypes.

    An ordinal model's (``grades`` > 2) also hold its cutpoints, ``head.cuts.first`` and ``head.cuts.gaps``.
    """
    path = directory / WEIGHTS
    with torch.device("meta"):  # the spec's tensors, without allocating them
        expected = {k: (tuple(v.shape), SAFETENSORS_DTYPES[v.dtype][0])
                    for k, v in build_model(spec, members, grades).state_dict().items()}
    payload = sum(math.prod(shape) * dict(SAFETENSORS_DTYPES.values())[dtype] for shape, dtype in expected.values())
    data = read_file(path, 8 + MAX_SAFETENSORS_HEADER + payload)
    mismatch = _mismatch(expected, _safetensors_header(path, data))
    if mismatch:
        raise ModelDirError(f"{path}: does not match {SPEC} ({mismatch})")
    stored = _metadata_spec(path, data)
    if stored is not None and stored != spec:
        raise ModelDirError(f"{path}: does not match {SPEC} (its metadata holds another spec: {stored.describe()})")
    try:
        return load_safetensors(data)
    except SafetensorError as e:
        raise ModelDirError(f"{path}: unreadable ({e})") from None


def load_model(directory: str | Path, max_memory_bytes: int | None = None, gradients: bool = False
               ) -> tuple[SpecNet | Ensemble, PreprocessConfig, ModelInfo]:
    """The exported model (CPU, eval mode, float32), its preprocessing, and what it predicts.

    Everything is checked before a tensor is allocated, as untrusted input (see the module docstring):
    each file read is a regular file inside the folder under a size cap; each field of ``preprocess.json``
    (format version, task, categories and classes consistent, the HU window, an input size of at most
    :data:`MAX_INPUT_VOXELS`, a threshold in (0, 1)); the spec, within ``space.spec``'s limits and able to
    run at that size; the member count of ``ensemble.json`` if there is one; the memory the network needs
    for one scan against ``max_memory_bytes``; and that the weights' header lists the spec's names, shapes
    and dtypes (each member's; an ordinal task's model holds its cutpoints too).

    An ordinal task's model (``info.ordinal``) is built with ``grades=K`` and outputs (B, K-1) cumulative
    logits of "grade >= k"; a binary one, (B,) logits.

    What the folder left to a default is not refused but said: ``info.warnings`` holds one line each (a
    ``preprocess.json`` without a threshold predicts at 0.5), starting with the file's path.

    Args:
        directory: The model folder.
        max_memory_bytes: The most memory the network may need for one scan (None: half this machine's).
        gradients: The caller will run a backward pass (a saliency map), so count its memory too.

    Raises:
        ModelDirError: The folder or one of its files is missing or invalid, or the weights do not fit
            the spec; the message names the file and the field.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise ModelDirError(f"{directory}: no such folder")
    missing = [name for name in REQUIRED if not os.path.lexists(directory / name)]
    if missing:
        raise ModelDirError(f"{directory}: missing {', '.join(missing)} (not a folder written by "
                            f"python -m search.export)")
    try:
        spec = ArchSpec.from_dict(read_json(directory / SPEC))
    except (KeyError, TypeError, ValueError) as e:
        if isinstance(e, ModelDirError):
            raise
        raise ModelDirError(f"{directory / SPEC}: {_reason(e)}") from None
    try:
        info = ModelInfo.from_dict(read_json(directory / PREPROCESS))
    except (KeyError, TypeError, ValueError, IndexError) as e:
        if isinstance(e, ModelDirError):
            raise
        raise ModelDirError(f"{directory / PREPROCESS}: {_reason(e)}") from None
    info = replace(info, warnings=tuple(f"{directory / PREPROCESS}: {w}" for w in info.warnings))
    try:
        check_input_size(spec, info.preprocess.size)
    except SpecInputError as e:
        raise ModelDirError(f"{directory / SPEC}: cannot run at its input size "
                            f"{'x'.join(map(str, info.preprocess.size))} ({PREPROCESS}): {e}") from None
    members = _read_members(directory)
    check_memory(directory, spec, info.preprocess.size, members, max_memory_bytes, gradients)
    state = _read_state(directory, spec, members, info.n_grades)
    model = build_model(spec, members, info.n_grades)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        first = str(e).splitlines()[1].strip() if len(str(e).splitlines()) > 1 else str(e)
        raise ModelDirError(f"{directory / WEIGHTS}: does not match {SPEC} ({first})") from None
    return model.eval(), info.preprocess, info


@dataclass(frozen=True)
class OptionalFiles:
    """What a model folder's optional files say, or why they say nothing.

    Attributes:
        trained_on_phantoms: ``metrics.json``'s ``data.phantoms``; None when the file is absent or unreadable.
        notes: One line per optional file that is absent or unreadable, saying what that leaves unknown.
    """

    trained_on_phantoms: bool | None
    notes: tuple[str, ...]


def read_optional(directory: str | Path) -> OptionalFiles:
    """Read ``metrics.json`` and check ``MODEL_CARD.md`` as untrusted input; never raises for their sake."""
    directory = Path(directory)
    notes, phantoms = [], None
    path = directory / METRICS
    if not os.path.lexists(path):
        notes.append(f"note: no {METRICS} in {directory}: its training data and test figures are unknown; "
                     "python -m search.export writes one")
    else:
        try:
            data = read_json(path, MAX_METRICS_BYTES, known=METRICS_KEYS).get("data")
            if isinstance(data, dict):
                _spelled(path, data, METRICS_DATA_KEYS, "data.")
            phantoms = data.get("phantoms") if isinstance(data, dict) else None
            if not isinstance(phantoms, bool):
                raise ModelDirError(f"{path}: data.phantoms: expected true or false, got {str(phantoms)[:40]}")
        except ModelDirError as e:
            phantoms = None
            notes.append(f"warning: {e}: so whether this model was trained on the synthetic phantoms is unknown; "
                         "if it was, its probabilities on real scans mean nothing")
    card = directory / CARD
    if not os.path.lexists(card):
        notes.append(f"note: no {CARD} in {directory}: the model card (intended use, test figures) is missing")
    else:
        try:
            read_file(card, MAX_CARD_BYTES).decode("utf-8")
        except ModelDirError as e:
            notes.append(f"note: {e}: the model card is unreadable")
        except UnicodeDecodeError:
            notes.append(f"note: {card}: not UTF-8 text: the model card is unreadable")
    return OptionalFiles(phantoms, tuple(notes))
