"""Writing a model folder whole or not at all: the checks on ``--out`` before anything trains, the temporary
folder renamed into place, and the check that the written weights and ONNX file give the trained model's logits.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError

from lungct.errors import UsageError
from lungct.files import make_shareable
from search.model.folder import ONNX, TOLERANCE, fixed_input, is_model_dir, load_model, logits, onnx_logits
from search.shipping.models import ExportError
from search.study.faults import FULL, StorageError, storage_fault
from space import ArchSpec, build

BASELINE_DIR = "baseline"  # the seed baseline trained beside the model, a model folder of its own
# Beyond the weights: the figures, the card and metrics.json take about 1 MB; the margin keeps the disk from
# being filled to its last byte.
EXPORT_MARGIN_BYTES = 16 << 20


def check_out_dir(out: Path, force: bool) -> None:
    """Refuse to write over anything but an empty folder, or an earlier export with ``--force``.

    Raises:
        UsageError: ``out`` is a file, a non-empty folder that is not an export, or an export without force.
    """
    if not out.exists():
        return
    if not out.is_dir():
        raise UsageError(f"--out: {out} is a file, not a folder")
    if not any(out.iterdir()):
        return
    if not is_model_dir(out):
        raise UsageError(f"--out: {out} is a non-empty folder that holds no exported model; choose another --out")
    if not force:
        raise UsageError(f"--out: {out} already holds an exported model; add --force to replace it")


def export_bytes(spec: ArchSpec, members: int, baseline_spec: ArchSpec | None) -> int:
    """Roughly what a model folder takes: float32 weights four times (safetensors, the ONNX file, and the MONAI
    bundle's safetensors copy and model.pt), those of the baseline beside it, and :data:`EXPORT_MARGIN_BYTES` for
    the rest."""
    def weights(s: ArchSpec) -> int:
        return 4 * sum(p.numel() for p in build(s).parameters())

    return 4 * members * weights(spec) + (weights(baseline_spec) if baseline_spec else 0) + EXPORT_MARGIN_BYTES


def check_out_writable(out: Path, need_bytes: int) -> None:
    """Before anything trains: ``out``'s folder can be created and written, and holds about ``need_bytes`` free.

    Raises:
        StorageError: The location is read-only, or its disk has less than ``need_bytes`` free.
        UsageError: The folder cannot be created or written for another reason.
    """
    parent = out.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
        Path(tempfile.mkdtemp(dir=parent, prefix=f".{out.name}.tmp.")).rmdir()
        free = shutil.disk_usage(parent).free
    except OSError as e:
        fault = storage_fault(e, parent)
        if fault is not None:
            raise StorageError(fault.kind, parent, fault.reason) from None
        raise UsageError(f"--out: cannot write in {parent}: {e.strerror or e}") from None
    if free < need_bytes:
        raise StorageError(FULL, parent, f"{free / 1e6:.1f} MB free, the model folder needs about "
                           f"{need_bytes / 1e6:.0f} MB; nothing was trained")


def check_export(directory: Path, model: torch.nn.Module, size: tuple[int, int, int]) -> dict:
    """Reload the written folder and run the ONNX file; both must give the in-memory model's logits.

    Returns:
        metrics.json's ``export_check``: the input, both differences, the ONNX runtime, the tolerance.

    Raises:
        ExportError: A difference above ``search.model.folder.TOLERANCE``.
    """
    x = fixed_input(size)
    expected = logits(model, x)
    reloaded, _, _ = load_model(directory)
    weights_diff = float(np.max(np.abs(logits(reloaded, x) - expected)))
    onnx_out = onnx_logits(directory / ONNX, x)
    onnx_diff = None if onnx_out is None else float(np.max(np.abs(onnx_out - expected)))
    for what, diff in (("weights.safetensors", weights_diff), (ONNX, onnx_diff)):
        if diff is not None and not diff <= TOLERANCE:
            raise ExportError(f"{what}: reloaded output differs from the trained model by {diff:.2e} "
                              f"(tolerance {TOLERANCE:g}); the export is not trustworthy")
    return {"input": f"seeded uniform (2, 1, {size[0]}, {size[1]}, {size[2]}), seed 0",
            "weights_max_abs_diff": weights_diff, "onnx_max_abs_diff": onnx_diff,
            "onnx_runtime": "onnxruntime" if onnx_out is not None else "not checked: onnxruntime not installed",
            "tolerance": TOLERANCE}


@contextmanager
def staged_folder(out: Path, force: bool) -> Iterator[Path]:
    """A temporary folder beside ``out`` to write the model folder in, moved into place when the block ends.

    ``out`` is checked again before the move (another process may have written there meanwhile); an earlier
    export is removed only once the new one is there. However the block ends, no temporary folder is left.

    Raises:
        StorageError: A disk filled or turned read-only since :func:`check_out_writable`; nothing was written.
        UsageError: ``out`` no longer holds an export that ``force`` may replace.
    """
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.tmp."))
    try:
        yield tmp
        check_out_dir(out, force)
        _replace_dir(tmp, out)
    except (OSError, SafetensorError) as e:
        fault = storage_fault(e, out)
        if fault is None:
            raise
        raise StorageError(fault.kind, out.parent, f"{fault.reason}; nothing was written") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _replace_dir(tmp: Path, out: Path) -> None:
    """Move the finished folder into place; an earlier export is removed only once the new one is there."""
    make_shareable(tmp)  # mkdtemp (and safetensors) create owner-only modes; the folder is meant to be shared
    old = None
    if out.exists():
        old = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.old."))
        old.rmdir()
        out.rename(old)
    tmp.rename(out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
