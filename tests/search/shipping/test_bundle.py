"""The exported model as a MONAI bundle: MONAI's own tooling verifies and runs it; it predicts as search.predict does.

One model folder (a tiny spec at 16x24x32, seeded weights with the output layer rescaled so that the
probabilities spread across scans) is written once per module, its bundle once, and MONAI's runner
(``monai.bundle.run``, what ``python -m monai.bundle run`` dispatches to; the command line also needs the
``fire`` package) runs once over a folder of scans: a phantom (stored LPS) and its RAS copy, and the real
scans of ``shared/data/real-ct`` (stored RAS) with an LPS copy of each where they are present.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser, verify_metadata, verify_net_in_out
from monai.bundle import run as run_bundle
from monai.data import decollate_batch

from lungct.nifti import preprocess, read_scan
from lungct.phantom.writing import write_phantom
from lungct.records import PreprocessConfig, get_task
from search.model.folder import Ensemble, ModelDirError, ModelInfo, load_model, save_model
from search.model.routing import DISCLAIMER
from search.predict import predict_all
from search.shipping.bundle import (
    INFERENCE,
    LICENSE,
    METADATA,
    MODEL_PT,
    MODELS,
    PREDICTIONS,
    README,
    SCHEMA_FILE,
    BundleNetwork,
    LungctPreprocessd,
    load_network,
    postprocessing,
    read_predictions,
    stock_preprocessing,
    verify_bundle_metadata,
    write_bundle,
)
from space import ArchSpec, LevelSpec, TrainSpec, build, grade_probabilities
from tests.conftest import REAL_CT_DIR

SIZE = (16, 24, 32)  # non-cubic, so an axis mix-up between the bundle and predict shows
MIXED = (48, 24, 32)
TOLERANCE = 1e-4
REAL_SCANS = ("example_ct.nii.gz", "example_ct_sm.nii.gz")
OPPOSITE = {"L": "R", "R": "L", "A": "P", "P": "A", "S": "I", "I": "S"}
CARD_TEXT = "# Model card\n\nA test card: the bundle's docs/README.md carries it.\n"


def _spec() -> ArchSpec:
    return ArchSpec(levels=(LevelSpec(4), LevelSpec(8)), padding="same", head_units=(8,))


def _model_dir(directory: Path, scans: list[Path], size: tuple[int, int, int]) -> Path:
    """A model folder with seeded weights whose output layer is rescaled so that the scans' logits spread over
    [-2, 2]: seeded weights alone give P near 0.5 for every scan, where a wrong input would go unseen."""
    torch.manual_seed(0)
    model = build(_spec()).eval()
    config = PreprocessConfig(size)
    volumes = torch.stack([torch.from_numpy(preprocess(read_scan(str(p))[0], config).astype(np.float32))[None]
                           for p in scans])  # (N, 1, D, H, W)
    with torch.no_grad():
        z = model(volumes)
        scale = 4.0 / float(z.max() - z.min())
        model.head.out.weight.mul_(scale)
        model.head.out.bias.sub_(z.mean()).mul_(scale)
    save_model(directory, model, _spec(), TrainSpec(), ModelInfo.for_task(get_task("course"), config))
    (directory / "MODEL_CARD.md").write_text(CARD_TEXT)
    (directory / "metrics.json").write_text(json.dumps({"data": {"phantoms": True}, "test": {
        "n": 40, "model": {"auc": {"estimate": 0.81, "low": 0.7, "high": 0.9, "confidence": 0.95}}}}))
    return directory


@pytest.fixture(scope="module")
def model_dir(scans, tmp_path_factory) -> Path:
    return _model_dir(tmp_path_factory.mktemp("model"), list(scans.values()), SIZE)


@pytest.fixture(scope="module")
def bundle(model_dir, tmp_path_factory) -> Path:
    return write_bundle(model_dir, tmp_path_factory.mktemp("out") / "bundle")


def reoriented(source: Path, target: Path, codes: str) -> Path:
    """A copy of a NIfTI file stored in axis codes ``codes``: axes flipped, voxels and their world positions kept.

    The stored integers and scale are copied as they are (no float round trip), so the copy holds the same HU.
    """
    image = nib.load(str(source))
    stored = nib.aff2axcodes(image.affine)
    assert all(t in (c, OPPOSITE[c]) for c, t in zip(stored, codes, strict=True)), "flips only, no axis swaps"
    flips = [c != t for c, t in zip(stored, codes, strict=True)]
    raw = np.asarray(image.dataobj.get_unscaled())
    raw = np.ascontiguousarray(raw[tuple(slice(None, None, -1) if f else slice(None) for f in flips)])
    affine = image.affine.copy()
    for axis, flip in enumerate(flips):
        if flip:  # voxel i' = n-1-i sits where i sat
            affine[:3, 3] += affine[:3, axis] * (raw.shape[axis] - 1)
            affine[:3, axis] *= -1
    copy = nib.Nifti1Image(raw, affine, image.header)
    copy.set_qform(affine, code=1)
    copy.set_sform(affine, code=1)
    nib.save(copy, str(target))
    assert "".join(nib.aff2axcodes(nib.load(str(target)).affine)) == codes
    return target


@pytest.fixture(scope="module")
def scans(tmp_path_factory) -> dict[str, Path]:
    """Name -> scan: the phantom (stored LPS) and its RAS copy; the real scans and their LPS copies where present."""
    folder = tmp_path_factory.mktemp("scans")
    phantoms = tmp_path_factory.mktemp("phantoms")
    info = write_phantom(phantoms, seed=0, index=0, category="CT-2", matrix=64)
    found = {"phantom": shutil.copyfile(phantoms / info.study_file, folder / "phantom.nii.gz")}
    assert "".join(nib.aff2axcodes(nib.load(str(found["phantom"])).affine)) == "LPS"
    found["phantom_ras"] = reoriented(found["phantom"], folder / "phantom_ras.nii.gz", "RAS")
    # A second, normal phantom: the scans then differ where the real ones are absent (a clone without shared/).
    other = write_phantom(phantoms, seed=0, index=1, category="CT-0", matrix=64)
    found["phantom_normal"] = shutil.copyfile(phantoms / other.study_file, folder / "phantom_normal.nii.gz")
    for name in REAL_SCANS:
        if (REAL_CT_DIR / name).is_file():
            stem = name.removesuffix(".nii.gz")
            found[stem] = Path(shutil.copyfile(REAL_CT_DIR / name, folder / name))
            found[f"{stem}_lps"] = reoriented(found[stem], folder / f"{stem}_lps.nii.gz", "LPS")
    return {k: Path(v) for k, v in found.items()}


@pytest.fixture(scope="module")
def bundle_predictions(bundle, scans, tmp_path_factory) -> dict[str, float]:
    """Scan path -> P(label 1), from MONAI's runner on the bundle over the scans' folder."""
    out = tmp_path_factory.mktemp("eval")
    run_bundle(config_file=str(bundle / INFERENCE), meta_file=str(bundle / METADATA), bundle_root=str(bundle),
               dataset_dir=str(next(iter(scans.values())).parent), output_dir=str(out))
    rows = read_predictions(out / PREDICTIONS, channels=1)
    return {path: values[0] for path, values in rows.items()}


@pytest.fixture(scope="module")
def predict_predictions(model_dir, scans) -> dict[str, float]:
    """Scan path -> P(label 1), from search.predict on the same scans."""
    _, predictions, errors = predict_all(str(model_dir), [str(p) for p in scans.values()])
    assert errors == []
    return {p.path: p.probability for p in predictions}


def test_bundle_holds_monai_layout_and_the_model_folder_files(bundle, model_dir):
    for name in (METADATA, INFERENCE, MODEL_PT, README, LICENSE, f"{MODELS}/spec.json", f"{MODELS}/weights.safetensors",
                 f"{MODELS}/preprocess.json"):
        assert (bundle / name).is_file(), name
    assert not list(bundle.parent.glob(".bundle.tmp.*"))
    _, config, info = load_model(bundle / MODELS)  # models/ is a model folder that passes the untrusted-input checks
    assert config == PreprocessConfig(SIZE) and info.classes == ("CT-0", "CT-2 or CT-3")
    readme = (bundle / README).read_text()
    assert CARD_TEXT in readme and DISCLAIMER in readme


def test_bundle_readme_says_its_configs_are_code_and_how_to_use_a_received_folder_safely(tmp_path):
    """Written by write_bundle from a folder of its own, so it needs none of the module's scans or MONAI runs."""
    torch.manual_seed(0)
    save_model(tmp_path / "model", build(_spec()).eval(), _spec(), TrainSpec(),
               ModelInfo.for_task(get_task("course"), PreprocessConfig(SIZE)))
    readme = (write_bundle(tmp_path / "model", tmp_path / "model" / "bundle") / README).read_text()
    warning = readme.split("## Model card")[0]
    for words in ("configs are code", "`$`-expression", "`_target_`", "with your rights",
                  "`python -m monai.bundle run` is for bundles you built yourself or trust",
                  "`python -m search.predict MODEL_FOLDER SCAN.nii.gz`", "reads no bundle config", "`model.onnx`"):
        assert words in warning, words
    assert warning.index("configs are code") < warning.index("```bash")  # before the command that runs it


def test_bundle_metadata_describes_input_output_licence_and_disclaimer(bundle):
    meta = json.loads((bundle / METADATA).read_text())
    ours = meta["lungct_nas"]
    assert ours["preprocess"] == {"size": list(SIZE), "hu_min": -1000.0, "hu_max": 400.0}
    assert ours["classes"] == ["CT-0", "CT-2 or CT-3"] and ours["threshold"] == 0.5 and ours["grades"] == 2
    assert meta["network_data_format"]["inputs"]["image"]["spatial_shape"] == list(SIZE)
    assert meta["network_data_format"]["post_processed_outputs"]["pred"]["channel_def"] == {"0": "P(CT-2 or CT-3)"}
    assert meta["disclaimer"] == DISCLAIMER and DISCLAIMER in meta["intended_use"]
    assert "Apache-2.0" in meta["license"] and "CC BY-NC-ND 3.0" in meta["license"]
    assert "synthetic phantoms" in meta["data_source"]
    assert meta["eval_metrics"] == {"test_auc": 0.81, "test_auc_ci": [0.7, 0.9], "test_scans": 40}
    assert meta["schema"].endswith(SCHEMA_FILE.name)


def test_bundle_metadata_passes_monai_verify_metadata_offline(bundle):
    verify_bundle_metadata(bundle)  # raises ValueError when the metadata breaks the schema


def test_verify_metadata_refuses_metadata_without_a_required_field(bundle, tmp_path):
    meta = json.loads((bundle / METADATA).read_text())
    del meta["network_data_format"]
    (tmp_path / "metadata.json").write_text(json.dumps(meta))
    shutil.copyfile(SCHEMA_FILE, tmp_path / "schema.json")
    with pytest.raises(ValueError, match="network_data_format"):
        verify_metadata(meta_file=str(tmp_path / "metadata.json"), filepath=str(tmp_path / "schema.json"))


def test_bundle_network_passes_monai_verify_net_in_out(bundle):
    verify_net_in_out(net_id="network_def", meta_file=str(bundle / METADATA), config_file=str(bundle / INFERENCE),
                      device="cpu", bundle_root=str(bundle))


def test_bundle_model_pt_is_the_network_state_dict_without_pickled_code(bundle):
    state = torch.load(bundle / MODEL_PT, weights_only=True)
    network = load_network(bundle / MODELS)
    assert state.keys() == network.state_dict().keys()
    for key, value in network.state_dict().items():
        assert torch.equal(state[key], value), key


def test_bundle_run_matches_predict_on_the_phantom_stored_lps(bundle_predictions, predict_predictions, scans):
    path = str(scans["phantom"])
    assert abs(bundle_predictions[path] - predict_predictions[path]) <= TOLERANCE


def test_bundle_run_matches_predict_on_an_ras_copy_of_the_phantom(bundle_predictions, predict_predictions, scans):
    path, original = str(scans["phantom_ras"]), str(scans["phantom"])
    assert abs(bundle_predictions[path] - predict_predictions[path]) <= TOLERANCE
    assert abs(bundle_predictions[path] - bundle_predictions[original]) <= TOLERANCE  # same image in world space


@pytest.mark.parametrize("stem", [name.removesuffix(".nii.gz") for name in REAL_SCANS])
def test_bundle_run_matches_predict_on_real_ct_and_its_lps_copy(real_ct_dir, stem, bundle_predictions,
                                                               predict_predictions, scans):
    for path in (str(scans[stem]), str(scans[f"{stem}_lps"])):
        assert abs(bundle_predictions[path] - predict_predictions[path]) <= TOLERANCE, path
    assert abs(bundle_predictions[str(scans[f"{stem}_lps"])] - bundle_predictions[str(scans[stem])]) <= TOLERANCE


def test_bundle_runs_from_monais_command_line(bundle, scans, tmp_path):
    pytest.importorskip("fire", reason="python -m monai.bundle needs the fire package")
    repo = Path(__file__).resolve().parents[3]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(repo), os.environ.get("PYTHONPATH")]))}
    done = subprocess.run([sys.executable, "-m", "monai.bundle", "run", "--config_file", str(bundle / INFERENCE),
                           "--meta_file", str(bundle / METADATA), "--bundle_root", str(bundle), "--dataset_dir",
                           str(scans["phantom"].parent), "--output_dir", str(tmp_path)],
                          capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert set(read_predictions(tmp_path / PREDICTIONS, channels=1)) == {str(p) for p in scans.values()}


def test_bundle_run_matches_predict_where_some_axes_shrink_and_others_grow(scans, tmp_path):
    # The phantom is (D, H, W) = 41x64x64 and example_ct_sm 30x101x122: at 48x24x32 the depth grows while rows
    # and columns shrink, the case that no single stock Resized mode reproduces.
    chosen = [scans["phantom"], scans["phantom_normal"],
              *([scans["example_ct_sm_lps"]] if "example_ct_sm_lps" in scans else [])]
    model_dir = _model_dir(tmp_path / "model", chosen, MIXED)
    bundle = write_bundle(model_dir, tmp_path / "bundle")
    (tmp_path / "scans").mkdir()
    copies = [Path(shutil.copyfile(p, tmp_path / "scans" / p.name)) for p in chosen]
    run_bundle(config_file=str(bundle / INFERENCE), meta_file=str(bundle / METADATA), bundle_root=str(bundle),
               dataset_dir=str(tmp_path / "scans"), output_dir=str(tmp_path / "eval"))
    ran = read_predictions(tmp_path / "eval" / PREDICTIONS, channels=1)
    _, predictions, _ = predict_all(str(model_dir), [str(p) for p in copies])
    assert len(predictions) == len(copies) == len(ran)
    for p in predictions:
        assert abs(ran[p.path][0] - p.probability) <= TOLERANCE, p.path


def test_bundle_predictions_differ_across_scans_so_the_comparison_can_fail(bundle_predictions):
    values = sorted(bundle_predictions.values())
    assert len(values) >= 2 and values[-1] - values[0] > 0.1


def test_bundle_run_writes_every_scan_once(bundle_predictions, scans):
    assert set(bundle_predictions) == {str(p) for p in scans.values()}


def test_preprocess_transform_gives_predicts_input(scans):
    config = PreprocessConfig(SIZE)
    out = LungctPreprocessd("image", SIZE, config.hu_min, config.hu_max)({"image": str(scans["phantom"])})
    expected = preprocess(read_scan(str(scans["phantom"]))[0], config).astype(np.float32)
    assert out["image"].shape == (1, *SIZE) and out["image"].dtype == torch.float32
    np.testing.assert_array_equal(out["image"][0].numpy(), expected)
    assert out["image_meta_dict"]["filename_or_obj"] == str(scans["phantom"])


def _postprocessed(grades: int, logits: torch.Tensor, out_dir: Path) -> list[torch.Tensor]:
    parser = ConfigParser({"imports": ["$import space"], "output_dir": str(out_dir),
                           "post": postprocessing(grades)})
    post = parser.get_parsed_content("post")
    items = decollate_batch({"pred": logits, "image_meta_dict": {"filename_or_obj": [f"s{i}" for i in
                                                                                    range(len(logits))]}})
    return [post(item)["pred"] for item in items]


def test_binary_postprocessing_is_the_sigmoid_of_the_logit(tmp_path):
    logits = torch.tensor([[-3.0], [0.5]])
    probabilities = _postprocessed(2, logits, tmp_path)
    torch.testing.assert_close(torch.stack(probabilities), torch.sigmoid(logits))
    rows = read_predictions(tmp_path / PREDICTIONS, channels=1)
    assert list(rows) == ["s0", "s1"]
    assert [v for (v,) in rows.values()] == pytest.approx(torch.sigmoid(logits[:, 0]).tolist())


def test_ordinal_postprocessing_gives_the_grade_probabilities_of_an_ordinal_network(tmp_path):
    # The model folder does not hold ordinal models yet; the network and post-transform the bundle would use do.
    torch.manual_seed(0)
    network = BundleNetwork(build(_spec(), grades=4)).eval()
    with torch.no_grad():
        logits = network(torch.rand(2, 1, *SIZE))  # (2, 3) cumulative logits
    assert logits.shape == (2, 3)
    probabilities = torch.stack(_postprocessed(4, logits, tmp_path))
    torch.testing.assert_close(probabilities, grade_probabilities(logits))
    torch.testing.assert_close(probabilities.sum(dim=1), torch.ones(2))
    rows = read_predictions(tmp_path / PREDICTIONS, channels=4)
    assert rows["s1"] == pytest.approx(probabilities[1].tolist())


def test_write_bundle_replaces_an_earlier_bundle_and_refuses_another_folder(model_dir, tmp_path):
    target = write_bundle(model_dir, tmp_path / "bundle")
    (target / "stale.txt").write_text("from the earlier bundle")
    write_bundle(model_dir, target)
    assert not (target / "stale.txt").exists() and (target / METADATA).is_file()
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "keep.txt").write_text("not a bundle")
    with pytest.raises(FileExistsError, match="not a MONAI bundle"):
        write_bundle(model_dir, tmp_path / "other")
    assert (tmp_path / "other" / "keep.txt").is_file()


def test_bundle_of_an_ensemble_outputs_its_combined_logit(tmp_path):
    torch.manual_seed(1)
    ensemble = Ensemble([build(_spec()), build(_spec())]).eval()
    save_model(tmp_path / "model", ensemble, _spec(), TrainSpec(),
               ModelInfo.for_task(get_task("course"), PreprocessConfig(SIZE)))
    bundle = write_bundle(tmp_path / "model", tmp_path / "bundle")
    assert (bundle / MODELS / "ensemble.json").is_file()
    x = torch.rand(2, 1, *SIZE)
    with torch.no_grad():
        torch.testing.assert_close(load_network(bundle / MODELS)(x), ensemble(x).reshape(2, 1))


def test_write_bundle_refuses_an_invalid_model_folder(model_dir, tmp_path):
    broken = Path(shutil.copytree(model_dir, tmp_path / "broken"))
    (broken / "weights.safetensors").write_bytes(b"not weights")
    with pytest.raises(ModelDirError, match=r"weights\.safetensors"):
        write_bundle(broken, tmp_path / "bundle")
    assert not (tmp_path / "bundle").exists()


def _stock(path: Path, config: PreprocessConfig, mode: str) -> np.ndarray:
    chain = ConfigParser({"imports": ["$import torch"], "t": stock_preprocessing(config, mode)}).get_parsed_content("t")
    return np.asarray(chain({"image": str(path)})["image"][0], dtype=np.float32)


def test_stock_monai_transforms_match_ours_only_where_every_axis_shrinks_or_every_axis_grows(real_ct_dir):
    """Why the bundle runs the project's transform: MONAI's Resized has one mode for every axis.

    example_ct is (D, H, W) = 112x101x122: at 16x24x32 every axis shrinks, and Resized(mode="area") equals our
    preprocessing exactly; at the training default 64x128x128 D shrinks while H and W grow, and neither stock mode
    reproduces ours (area: up to 0.38 of the [0, 1] range off, trilinear: up to 0.30).
    """
    path = real_ct_dir / "example_ct.nii.gz"
    small = PreprocessConfig(SIZE)
    ours = preprocess(read_scan(str(path))[0], small).astype(np.float32)
    np.testing.assert_array_equal(_stock(path, small, "area"), ours)
    default = PreprocessConfig()
    ours = preprocess(read_scan(str(path))[0], default).astype(np.float32)
    for mode in ("area", "trilinear"):
        assert np.abs(_stock(path, default, mode) - ours).max() > 0.1, mode


def test_severity_bundle_run_gives_predicts_grade_probabilities(scans, tmp_path):
    """An ordinal (severity) folder: MONAI's runner writes the K grade probabilities, equal to predict's."""
    paths = list(scans.values())
    config = PreprocessConfig(SIZE)
    torch.manual_seed(1)
    model = build(_spec(), grades=4).eval()
    volumes = torch.stack([torch.from_numpy(preprocess(read_scan(str(p))[0], config).astype(np.float32))[None]
                           for p in paths])
    with torch.no_grad():  # spread the scans' severity scores over the cutpoints, so the grades differ
        z = model(volumes)[:, 0]  # z + b_1, and b_1 starts at 0
        scale = 4.0 / float(z.max() - z.min())
        model.head.out.weight.mul_(scale)
        model.head.out.bias.sub_(z.mean()).mul_(scale).add_(1.0)  # scores over [-1, 3]: grades 0 to 3
    folder = tmp_path / "severity"
    save_model(folder, model, _spec(), TrainSpec(), ModelInfo.for_task(get_task("severity"), config))
    bundle = write_bundle(folder, tmp_path / "bundle")
    out = tmp_path / "eval"
    run_bundle(config_file=str(bundle / INFERENCE), meta_file=str(bundle / METADATA), bundle_root=str(bundle),
               dataset_dir=str(paths[0].parent), output_dir=str(out))
    rows = read_predictions(out / PREDICTIONS, channels=4)
    _, predictions, errors = predict_all(str(folder), [str(p) for p in paths])
    assert errors == [] and len(rows) == len(predictions) == len(paths)
    names = ModelInfo.for_task(get_task("severity"), config).classes
    spread = set()
    for p in predictions:
        expected = [p.grade_probabilities[name] for name in names]
        assert np.allclose(rows[p.path], expected, atol=TOLERANCE), p.path
        assert abs(sum(rows[p.path]) - 1.0) < 1e-5
        spread.add(int(np.argmax(expected)))
    assert len(spread) > 1  # the scans land in different grades, so a column mix-up would show
