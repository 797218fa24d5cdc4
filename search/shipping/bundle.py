"""The exported model as a MONAI bundle, which ``python -m monai.bundle run`` executes as ``search.predict`` predicts.

:func:`write_bundle` turns an exported model folder (read through ``search.model.folder.load_model``, as
untrusted input) into a bundle folder in MONAI's layout:

- ``configs/metadata.json``: task, classes, the input (HU window, size, steps), what the network's output and
  the post-processed output mean, the licence and the research-use disclaimer, valid under MONAI's meta schema
  (vendored beside this module, :data:`SCHEMA_FILE`, so :func:`verify_bundle_metadata` runs offline).
- ``configs/inference.json``: reads every ``*.nii``/``*.nii.gz`` in ``dataset_dir``, preprocesses each
  scan with the project's own transform (:class:`LungctPreprocessd`), runs the network built from the spec
  (:func:`load_network`), applies the post-transform (binary: sigmoid, P(label 1); ordinal: the K grade
  probabilities) and writes one CSV row per scan, ``<path>,<probabilities...>``, to
  ``output_dir/predictions.csv`` with MONAI's ``SaveClassificationd``. No ignite engine: the ``run`` list
  loops over MONAI's ``DataLoader`` with its ``SimpleInferer``, so only MONAI and this package are needed.
- ``models/``: the model folder's own spec.json, weights.safetensors, preprocess.json (and ensemble.json),
  which :func:`load_network` validates and loads without unpickling; and ``models/model.pt``, the same
  weights as the state dict of the bundle's ``network_def`` for MONAI tools that look for that file (it
  loads with ``torch.load(weights_only=True)``).
- ``docs/README.md``: what running a bundle means for your machine (:data:`SAFETY`), how to run this one, then
  the model card; ``LICENSE``: the licence and disclaimer.

A bundle's configs are code: MONAI's runner evaluates every ``$``-expression as Python and imports and calls
what every ``_target_`` names, with the rights of whoever runs it. So the bundle is for models one built or
trusts; a model folder received from someone else is used through ``search.predict`` (which reads its JSON
and safetensors as untrusted data, and no bundle config) or its ONNX file; the README says so first.

Why the project's own transform, not MONAI's stock ones: the model was trained on
``lungct.nifti.read_scan`` then ``preprocess`` (nibabel's ``as_closest_canonical``, a (z, y, x) transpose,
the HU window, area averaging along the axes that shrink then trilinear along those that grow, float16
rounding). The closest stock chain (:func:`stock_preprocessing`: LoadImaged, EnsureChannelFirstd,
Orientationd RAS, Transposed, ScaleIntensityRanged, Resized, CastToTyped float16) equals ours exactly where
every axis shrinks (``Resized(mode="area")``) or every axis grows (``mode="trilinear"``), but ``Resized`` has
one mode for every axis, and the two-step resize needs an intermediate size that depends on each scan's
shape. Where axes both shrink and grow, as MosMedData's 512x512x~40 scans do at the default 64x128x128 (H and
W shrink, D grows), it differs: on the shared example_ct (112x101x122 as D, H, W) at 64x128x128, by up to
0.38 of the [0, 1] input range with area (mean 0.009) and 0.30 with trilinear (mean 0.004), which moved a
seeded network's P by 0.05 to 0.09. Nor does a stock chain refuse what read_scan refuses (not CT in HU, a
slab, a 4D file).

The bundle needs this package installed (its ``_target_`` names ``search.shipping.bundle``), like any bundle
whose ``scripts`` are not self-contained; it runs on the CPU by default, the device ``search.predict`` uses,
so its probabilities equal predict's (``--device "$torch.device('cuda:0')"`` moves it). MONAI's command line
(``python -m monai.bundle``) needs the ``fire`` package; ``monai.bundle.run`` does not.
"""

from __future__ import annotations

import math
import os
import shutil
from importlib import metadata as package_metadata
from pathlib import Path
from typing import cast

import numpy as np
import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform

from lungct.nifti import preprocess, read_scan
from lungct.records import PreprocessConfig
from search.model.folder import (
    CARD,
    ENSEMBLE,
    MAX_CARD_BYTES,
    MAX_METRICS_BYTES,
    METRICS,
    PREPROCESS,
    SPEC,
    WEIGHTS,
    Ensemble,
    ModelDirError,
    ModelInfo,
    load_model,
    read_file,
    read_json,
    read_optional,
    write_json,
)
from search.model.routing import CLINICAL_NOTE, DISCLAIMER

BUNDLE_DIR = "bundle"  # where search.export puts the bundle inside the model folder
BUNDLE_VERSION = "0.1.0"
SCHEMA_URL = "https://github.com/Project-MONAI/MONAI-extra-test-data/releases/download/0.8.1/meta_schema_20240725.json"
SCHEMA_FILE = Path(__file__).with_name("meta_schema_20240725.json")  # verbatim copy, see its .NOTICE
METADATA = "configs/metadata.json"
INFERENCE = "configs/inference.json"
MODELS = "models"
MODEL_PT = "models/model.pt"
README = "docs/README.md"
LICENSE = "LICENSE"
PREDICTIONS = "predictions.csv"
IMAGE_KEY = "image"
PRED_KEY = "pred"
META_KEY = "image_meta_dict"
LICENCE = ("The code that wrote and runs this bundle (lungct-nas) is Apache-2.0. The weights inherit the terms of "
           "the data they were trained on: MosMedData is CC BY-NC-ND 3.0 (non-commercial use, no redistribution of "
           "modified copies); weights trained on the synthetic phantoms carry no data licence.")
# What docs/README.md says before anything else: running a bundle runs code from it.
SAFETY = ("**A MONAI bundle's configs are code.** `python -m monai.bundle run` executes what `configs/*.json` say "
          "with your rights: every `$`-expression is evaluated as Python, and every `_target_` names a class or "
          "function that is imported and called. `python -m monai.bundle run` is for bundles you built yourself or "
          "trust; a bundle edited on its way to you runs whatever the editor wrote. A model folder you received "
          "is used safely through `python -m search.predict MODEL_FOLDER SCAN.nii.gz` (the folder holding this "
          "`bundle/`), which reads its `spec.json`, `preprocess.json` and safetensors weights as untrusted data and "
          "reads no bundle config, or through its `model.onnx` with onnxruntime.")
# What the bundle copies from the model folder into models/ (the files load_model reads).
MODEL_FILES = (SPEC, WEIGHTS, PREPROCESS, ENSEMBLE)


class LungctPreprocessd(MapTransform):
    """The project's preprocessing as a MONAI dictionary transform: a NIfTI path in, the model's input out.

    ``data[key]`` is a scan's path; it becomes the (1, D, H, W) float32 tensor that ``search.predict`` feeds
    the network (``lungct.nifti.read_scan`` then ``preprocess``, float16 values widened to float32), and
    ``data["<key>_meta_dict"]`` holds ``filename_or_obj`` (the path, the key of the CSV row) and the stored
    orientation. A scan that is not a usable chest CT raises ``lungct.errors.ScanError`` with the reason.
    """

    def __init__(self, keys: KeysCollection, size: tuple[int, int, int] | list[int], hu_min: float, hu_max: float,
                 allow_missing_keys: bool = False):
        super().__init__(keys, allow_missing_keys)
        # The bundle's config gives the size; PreprocessConfig checks that it is three voxel counts.
        self.config = PreprocessConfig(cast("tuple[int, int, int]", tuple(size)), float(hu_min), float(hu_max))

    def __call__(self, data: dict) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            path = str(d[key])
            volume_hu, meta = read_scan(path)
            volume = preprocess(volume_hu, self.config)  # (D, H, W) float16, as in training
            d[key] = torch.from_numpy(volume.astype(np.float32))[None]  # (1, D, H, W)
            d[f"{key}_meta_dict"] = {"filename_or_obj": path, "orientation": meta.orientation}
        return d


class BundleNetwork(torch.nn.Module):
    """The exported network with MONAI's output layout: (B, 1, D, H, W) -> (B, C) logits.

    MONAI's bundle tools (``verify_net_in_out``, the post-transforms) read a channel axis; the project's
    binary network outputs (B,), so C is 1 (the logit of label 1) for a binary model and K-1 (the
    cumulative "grade >= k" logits) for an ordinal one of K grades.
    """

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x).reshape(x.shape[0], -1)


def load_network(directory: str | Path) -> BundleNetwork:
    """The bundle's trained network from its ``models/`` folder, checked as untrusted input (``load_model``).

    Raises:
        ModelDirError: A file in ``directory`` is missing or invalid; the message names it.
    """
    model, _, _ = load_model(directory)
    return BundleNetwork(model).eval()


def grades_of(model: torch.nn.Module) -> int:
    """How many labels a network tells apart: 2 for a binary model, K for an ordinal one (``space.build``)."""
    if isinstance(model, BundleNetwork):
        model = model.model
    if isinstance(model, Ensemble):
        model = model.members[0]
    return int(getattr(model, "grades", 2))


def postprocessing(grades: int, output_dir: str = "@output_dir") -> dict:
    """The post-transform config: per scan the (C,) logits become probabilities, then a CSV row.

    Binary (``grades`` 2): MONAI's ``Activationsd`` sigmoid, P(label 1), as ``search.predict`` computes it.
    Ordinal: ``space.grade_probabilities`` of the K-1 cumulative logits, the K grade probabilities.
    """
    if grades == 2:
        probabilities = {"_target_": "Activationsd", "keys": PRED_KEY, "sigmoid": True}
    else:
        probabilities = {"_target_": "Lambdad", "keys": PRED_KEY,
                         "func": "$lambda z: space.grade_probabilities(z[None])[0]"}
    return {"_target_": "Compose", "transforms": [
        probabilities,
        {"_target_": "SaveClassificationd", "keys": PRED_KEY, "meta_keys": META_KEY, "output_dir": output_dir,
         "filename": PREDICTIONS, "overwrite": True},
    ]}


def inference_config(config: PreprocessConfig, grades: int) -> dict:
    """``configs/inference.json``: MONAI's config for ``python -m monai.bundle run``."""
    return {
        "imports": ["$import glob", "$import os", "$import torch", "$import monai", "$import space"],
        "bundle_root": ".",
        "device": "$torch.device('cpu')",
        "dataset_dir": "$os.path.join(@bundle_root, 'scans')",
        "output_dir": "$os.path.join(@bundle_root, 'eval')",
        "datalist": "$[{'image': f} for f in sorted(glob.glob(os.path.join(@dataset_dir, '*.nii')) "
                    "+ glob.glob(os.path.join(@dataset_dir, '*.nii.gz')))]",
        "network_def": {"_target_": "search.shipping.bundle.load_network",
                        "directory": f"$os.path.join(@bundle_root, '{MODELS}')"},
        "network": "$@network_def.to(@device).requires_grad_(False)",
        "preprocessing": {"_target_": "Compose", "transforms": [
            {"_target_": "search.shipping.bundle.LungctPreprocessd", "keys": IMAGE_KEY, "size": list(config.size),
             "hu_min": config.hu_min, "hu_max": config.hu_max},
        ]},
        "dataset": {"_target_": "Dataset", "data": "@datalist", "transform": "@preprocessing"},
        "dataloader": {"_target_": "DataLoader", "dataset": "@dataset", "batch_size": 1, "shuffle": False,
                       "num_workers": 0},
        "inferer": {"_target_": "SimpleInferer"},
        "postprocessing": postprocessing(grades),
        "run": [
            "$[@postprocessing(item) for batch in @dataloader for item in monai.data.decollate_batch("
            f"{{'{PRED_KEY}': @inferer(batch['{IMAGE_KEY}'].to(@device), @network).cpu(), "
            f"'{META_KEY}': batch['{META_KEY}']}})]",
        ],
    }


def _version(name: str) -> str:
    try:
        return package_metadata.version(name)
    except package_metadata.PackageNotFoundError:
        return "not installed"


def _channels(info: ModelInfo, grades: int) -> tuple[dict, dict]:
    """What each output channel means: the network's logits, and the post-processed probabilities."""
    if grades == 2:
        return ({"0": f"logit of P({info.classes[1]})"}, {"0": f"P({info.classes[1]})"})
    names = [f" ({name})" for name in info.classes] if len(info.classes) == grades else [""] * grades
    return ({str(k): f"logit of P(grade >= {k + 1}{names[k + 1]})" for k in range(grades - 1)},
            {str(k): f"P(grade {k}{names[k]})" for k in range(grades)})


def eval_metrics_of(model_dir: Path) -> dict:
    """The locked-test figures of ``metrics.json`` for ``eval_metrics``; empty where it has none or is unreadable."""
    try:
        test = read_json(model_dir / METRICS, MAX_METRICS_BYTES)["test"]
        auc = test["model"]["auc"]
        estimate, ci = float(auc["estimate"]), [float(auc["low"]), float(auc["high"])]
        found = {"test_auc": estimate, "test_auc_ci": ci, "test_scans": int(test["n"])}
    except (ModelDirError, AttributeError, KeyError, TypeError, ValueError, OverflowError):
        return {}
    return found if all(math.isfinite(v) for v in (estimate, *ci)) else {}


def bundle_metadata(info: ModelInfo, grades: int, phantoms: bool | None, eval_metrics: dict | None = None) -> dict:
    """``configs/metadata.json``: MONAI's required fields plus the project's input and output description."""
    d, h, w = info.preprocess.size
    described = info.to_dict()
    logit_channels, prob_channels = _channels(info, grades)
    if grades == 2:
        task = f"Chest CT classification, {info.classes[0]} vs {info.classes[1]} (task {info.task})"
        output = described["output"]["meaning"].replace("logit of label 1", f"logit of label 1 ({info.classes[1]})")
        post = (f"P({info.classes[1]}) = sigmoid(logit); label 1 ({info.classes[1]}) at P >= {info.threshold:g}, "
                f"else label 0 ({info.classes[0]})")
    else:
        task = f"Chest CT severity grading, {grades} ordinal grades (task {info.task})"
        output = f"{grades - 1} cumulative logits; sigmoid of logit k is P(grade >= k + 1)"
        post = f"the {grades} grade probabilities (space.grade_probabilities), which sum to 1"
    data = {None: "unknown (the model folder has no readable metrics.json)",
            True: "synthetic phantoms (lungct.phantom): its probabilities on real scans mean nothing",
            False: "MosMedData (https://mosmed.ai/datasets/covid19_1110) or a data set in its layout"}[phantoms]
    return {
        "schema": SCHEMA_URL,
        "version": BUNDLE_VERSION,
        "changelog": {BUNDLE_VERSION: "exported by lungct-nas (search.shipping.bundle)"},
        "monai_version": _version("monai"),
        "pytorch_version": torch.__version__.split("+")[0],
        "numpy_version": np.__version__,
        "required_packages_version": {"lungct-nas": _version("lungct-nas"), "nibabel": _version("nibabel"),
                                      "safetensors": _version("safetensors")},
        "task": task,
        "description": (f"A 3D CNN found by lungct-nas's architecture search. {info.task_description}. Input: "
                        f"{described['input']['steps']}; HU window [{info.preprocess.hu_min:g}, "
                        f"{info.preprocess.hu_max:g}], size (D, H, W) = {d}x{h}x{w}. Network output: {output}. "
                        f"Post-processed: {post}. {DISCLAIMER} {CLINICAL_NOTE}"),
        "authors": "lungct-nas (exported by python -m search.export)",
        "copyright": "Copyright the lungct-nas authors",
        "license": LICENCE,
        "disclaimer": DISCLAIMER,
        "intended_use": f"{DISCLAIMER} Research and teaching: the course's COVID-19 chest CT severity task.",
        "data_source": data,
        "data_type": "nibabel",
        "image_classes": "one channel: CT in HU, windowed and scaled to [0, 1]",
        "pred_classes": "; ".join(prob_channels.values()),
        "eval_metrics": eval_metrics or {},
        "references": ["Morozov et al., MosMedData: chest CT scans with COVID-19 related findings dataset, "
                       "medRxiv 2020, doi:10.1101/2020.05.20.20100362"],
        "lungct_nas": {"preprocess": described["preprocess"], "input_steps": described["input"]["steps"],
                       "task": info.task, "task_description": info.task_description,
                       "negative": list(info.negative), "positive": list(info.positive),
                       "classes": list(info.classes), "threshold": info.threshold, "grades": grades,
                       "output_meaning": output, "post_processed_meaning": post,
                       "predictions": f"output_dir/{PREDICTIONS}: one row per scan, its path then the "
                                      "post-processed probabilities"},
        "network_data_format": {
            "inputs": {IMAGE_KEY: {
                "type": "image", "format": "hounsfield", "modality": "CT", "num_channels": 1,
                "spatial_shape": [d, h, w], "dtype": "float32", "value_range": [0, 1], "is_patch_data": False,
                "channel_def": {"0": f"CT, HU clipped to [{info.preprocess.hu_min:g}, {info.preprocess.hu_max:g}] "
                                     "and scaled to [0, 1]"}}},
            "outputs": {PRED_KEY: {
                "type": "logits", "format": "ordinal" if grades > 2 else "classes", "num_channels": grades - 1,
                "spatial_shape": [grades - 1], "dtype": "float32", "value_range": [], "is_patch_data": False,
                "channel_def": logit_channels}},
            "post_processed_outputs": {PRED_KEY: {
                "type": "probabilities", "format": "ordinal" if grades > 2 else "classes",
                "num_channels": len(prob_channels), "spatial_shape": [len(prob_channels)], "dtype": "float32",
                "value_range": [0, 1], "is_patch_data": False, "channel_def": prob_channels}},
        },
    }


def _readme(model_dir: Path) -> str:
    """``docs/README.md``: that its configs are code (:data:`SAFETY`), how to run it, then the model card (a note
    where the folder has none)."""
    run = (f"# lungct-nas model as a MONAI bundle\n\n{DISCLAIMER}\n\n{SAFETY}\n\n"
           "Needs MONAI and lungct-nas installed (MONAI's command line also needs `fire`). Predict every "
           "`*.nii`/`*.nii.gz` in a folder:\n\n"
           "```bash\npython -m monai.bundle run --config_file configs/inference.json --meta_file "
           "configs/metadata.json \\\n    --bundle_root . --dataset_dir /path/to/scans --output_dir eval\n```\n\n"
           f"Each scan's probabilities go to `eval/{PREDICTIONS}` (its path, then the probabilities; see "
           "`configs/metadata.json`), equal to `python -m search.predict` on the same scans. A scan that is not a "
           "usable chest CT stops the run with the reason (`search.predict` skips it and goes on). It runs on the "
           "CPU, as predict does; `--device \"\\$torch.device('cuda:0')\"` moves it. From Python: "
           "`monai.bundle.run(config_file=..., meta_file=..., bundle_root=..., dataset_dir=..., output_dir=...)`."
           "\n\n")
    try:
        card = read_file(model_dir / CARD, MAX_CARD_BYTES).decode("utf-8")
    except (ModelDirError, UnicodeDecodeError) as e:
        card = f"The model folder's {CARD} could not be read ({e}).\n"
    return run + "## Model card\n\n" + card


def write_bundle(model_dir: Path, bundle_dir: Path) -> Path:
    """Write the model in ``model_dir`` as a MONAI bundle folder at ``bundle_dir``; returns ``bundle_dir``.

    The bundle is written under a temporary name beside ``bundle_dir`` and renamed into place, replacing an
    earlier bundle there (a folder holding ``configs/metadata.json``); any other existing ``bundle_dir`` is
    refused.

    Raises:
        ModelDirError: ``model_dir`` is not a valid model folder; the message names the file and field.
        FileExistsError: ``bundle_dir`` exists and is not a bundle.
    """
    model_dir, bundle_dir = Path(model_dir), Path(bundle_dir)
    model, config, info = load_model(model_dir)
    if bundle_dir.exists() and not (bundle_dir / METADATA).is_file():
        raise FileExistsError(f"{bundle_dir}: exists and is not a MONAI bundle; refused")
    network = BundleNetwork(model).eval()
    grades = grades_of(network)
    tmp = bundle_dir.with_name(f".{bundle_dir.name}.tmp.{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        for sub in ("configs", MODELS, "docs"):
            (tmp / sub).mkdir(parents=True)
        for name in MODEL_FILES:
            if (model_dir / name).is_file():  # load_model read and checked each one it needs
                shutil.copyfile(model_dir / name, tmp / MODELS / name)
        torch.save({k: v.contiguous() for k, v in network.state_dict().items()}, tmp / MODEL_PT)
        write_json(tmp / METADATA, bundle_metadata(info, grades, read_optional(model_dir).trained_on_phantoms,
                                                   eval_metrics_of(model_dir)))
        (tmp / LICENSE).write_text(f"{LICENCE}\n\n{DISCLAIMER}\n")
        write_json(tmp / INFERENCE, inference_config(config, grades))
        (tmp / README).write_text(_readme(model_dir))
        old = bundle_dir.with_name(f".{bundle_dir.name}.old.{os.getpid()}")
        if bundle_dir.exists():
            bundle_dir.rename(old)  # the earlier bundle stays whole until the new one is in place
        tmp.rename(bundle_dir)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return bundle_dir


def verify_bundle_metadata(bundle_dir: Path) -> None:
    """MONAI's ``verify_metadata`` on a bundle against the vendored schema, offline.

    ``verify_metadata`` downloads the schema its ``schema`` field names to ``filepath``; MONAI's
    ``download_url`` skips the download when that file exists, so a copy of the vendored schema is put there.

    Raises:
        ValueError: The metadata does not satisfy the schema (MONAI's message).
    """
    from monai.bundle import verify_metadata

    schema = Path(bundle_dir) / "eval" / SCHEMA_FILE.name
    schema.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(SCHEMA_FILE, schema)
    verify_metadata(meta_file=str(Path(bundle_dir) / METADATA), filepath=str(schema))


def read_predictions(path: Path, channels: int) -> dict[str, list[float]]:
    """The bundle's ``predictions.csv``: each scan's path -> its ``channels`` post-processed probabilities.

    MONAI's ``CSVSaver`` writes the path unquoted, so the values are split off the right end of each row.
    """
    rows = {}
    for line in Path(path).read_text().splitlines():
        name, *values = line.rsplit(",", channels)
        rows[name] = [float(v) for v in values]
    return rows


def stock_preprocessing(config: PreprocessConfig, mode: str = "area") -> dict:
    """The closest chain of MONAI's stock transforms to the project's preprocessing, as a bundle config section.

    Not what the bundle runs (:class:`LungctPreprocessd` is): it is measured against the project's in the
    tests and issue 25's report. ``Resized`` resizes every axis in one ``mode``; ours averages the axes that
    shrink and interpolates trilinearly those that grow.
    """
    return {"_target_": "Compose", "transforms": [
        {"_target_": "LoadImaged", "keys": IMAGE_KEY, "reader": "NibabelReader", "image_only": True,
         "dtype": "float32"},
        {"_target_": "EnsureChannelFirstd", "keys": IMAGE_KEY},
        {"_target_": "Orientationd", "keys": IMAGE_KEY, "axcodes": "RAS",
         "labels": [["L", "R"], ["P", "A"], ["I", "S"]]},
        {"_target_": "Transposed", "keys": IMAGE_KEY, "indices": [0, 3, 2, 1]},  # (C, x, y, z) -> (C, z, y, x)
        {"_target_": "ScaleIntensityRanged", "keys": IMAGE_KEY, "a_min": config.hu_min, "a_max": config.hu_max,
         "b_min": 0.0, "b_max": 1.0, "clip": True},
        {"_target_": "Resized", "keys": IMAGE_KEY, "spatial_size": list(config.size), "mode": mode,
         **({"align_corners": False} if mode == "trilinear" else {})},
        {"_target_": "CastToTyped", "keys": IMAGE_KEY, "dtype": "$torch.float16"},
    ]}
