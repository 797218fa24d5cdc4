"""The model as one ONNX file (:func:`export_onnx`), and the logits that show an exported copy computes the same.

:func:`logits` runs the model itself and :func:`onnx_logits` the ONNX file under onnxruntime, both on the
seeded :func:`fixed_input`; a model folder's copies must agree with the model within :data:`TOLERANCE`.
"""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from pathlib import Path

import numpy as np
import torch

# The ONNX graph's names; the batch axis is dynamic, the volume size is fixed by preprocess.json.
ONNX_INPUT = "volume"
ONNX_OUTPUT = "logit"
ONNX_STACK_TRACE = "pkg.torch.onnx.stack_trace"  # node metadata that torch's exporter writes
# Exported and reloaded models must agree this closely on the same input (float32 logits).
TOLERANCE = 1e-4


def fixed_input(size: tuple[int, int, int], n: int = 2, seed: int = 0) -> torch.Tensor:
    """A seeded (n, 1, D, H, W) float32 input in [0, 1], for comparing a model with its exported copies."""
    generator = torch.Generator().manual_seed(seed)
    return torch.rand((n, 1, *size), generator=generator)


@torch.inference_mode()
def logits(model: torch.nn.Module, volumes: torch.Tensor) -> np.ndarray:
    """Float32 logits of ``model`` in eval mode on the CPU: (N,), or (N, K-1) for an ordinal model."""
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
    """Logits of an ONNX file under onnxruntime on the CPU ((N,) or (N, K-1)), or None without onnxruntime."""
    try:
        import onnxruntime
    except ImportError:
        return None
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run([ONNX_OUTPUT], {ONNX_INPUT: volumes.float().numpy()})[0]
