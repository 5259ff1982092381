"""MONAI Model Zoo conformance of every mdm_* bundle: metadata schema fields, workflow properties,
``ckpt_export`` to TorchScript (same outputs as the eager network) and ``verify_net_in_out``.

Every test builds its own untrained model (``network_def`` from inference.json) in a standalone copy of the bundle
(``mdm_med.bundle.export_bundle``: the shared recipe resolved) and runs the zoo commands from outside the
repository; nothing depends on ``bundles/*/models`` or on a download (``verify_metadata`` needs the schema from the
internet, so the schema's required fields are checked here instead).
"""

import json
import os
import subprocess
import sys

import pytest
import torch
from monai.bundle import ConfigParser, ConfigWorkflow

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# bundle -> (input channels, number of classes, network input shape from metadata.json, model settings)
BUNDLES = {
    "mdm_glas": (3, 2, [64, 64], {"preset": "tiny", "image_scale": 0.5, "crop_size": 64}),
    "mdm_monuseg": (3, 2, [64, 64], {"preset": "cpu", "image_scale": 1.0, "crop_size": 64}),
    "mdm_hippocampus": (1, 3, [32, 32, 32], {"preset": "cpu3d", "image_scale": 1.0, "crop_size": 32, "data_settings": {
        "spacing": [1.0, 1.0, 1.0], "mr_percentiles": [0.5, 99.5]}}),
}


def _configs(bundle):
    return os.path.join(ROOT, "bundles", bundle, "configs")

# What meta_schema_20240725.json (the schema named in metadata.json) requires, as (field, type) pairs.
REQUIRED_META = {
    "schema": str, "version": str, "monai_version": str, "pytorch_version": str, "numpy_version": str,
    "required_packages_version": dict, "task": str, "description": str, "authors": str, "copyright": str,
    "network_data_format": dict,
}
OPTIONAL_META = {
    "changelog": dict, "data_source": str, "data_type": str, "image_classes": str, "label_classes": str,
    "pred_classes": str, "eval_metrics": dict, "intended_use": str, "references": list, "supported_apps": dict,
}
# every tensor entry of network_data_format inputs / outputs
REQUIRED_TENSOR = {"type": str, "format": str, "num_channels": int, "spatial_shape": list, "dtype": str,
                   "value_range": list}
OPTIONAL_TENSOR = {"is_patch_data": bool, "channel_def": dict}


def _env():
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([ROOT] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


def _bundle_cli(*args, cwd):
    """``python -m monai.bundle <args>``; fails the test with the tail of its output on a non-zero exit."""
    proc = subprocess.run([sys.executable, "-m", "monai.bundle", *args], cwd=cwd, env=_env(), capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, f"monai.bundle {args[0]} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


def _tiny_bundle(tmp_path, bundle="mdm_glas", mode="finetune", seed=0):
    """A standalone copy of the bundle's configs with an untrained ``network_def`` of ``mode`` saved as
    models/model.pt (plus the model_settings.json that inference.json reads). Returns (bundle_root, eager network)."""
    from mdm_med.bundle import export_bundle

    root = export_bundle(os.path.join(ROOT, "bundles", bundle), tmp_path / bundle, parts=("configs",))
    models = root / "models"
    models.mkdir()
    _, classes, _, extra = BUNDLES[bundle]
    settings = {"seg_mode": mode, "num_classes": classes, "patch_size": 4, "seg_timestep": 50, **extra}
    (models / "model_settings.json").write_text(json.dumps(settings))
    parser = ConfigParser()
    parser.read_config(str(root / "configs" / "inference.json"))
    parser["bundle_root"] = str(root)
    torch.manual_seed(seed)
    net = parser.get_parsed_content("network_def")
    assert type(net).__name__ == {"finetune": "SegmentationUNet", "head": "FrozenFeatureSegmenter"}[mode]
    torch.save(net.state_dict(), models / "model.pt")
    return root, net.eval()


def _check_fields(obj, required, optional, where):
    for key, kind in required.items():
        assert key in obj, f"{where}: required field {key!r} is missing"
        assert isinstance(obj[key], kind), f"{where}: {key!r} should be {kind.__name__}, got {obj[key]!r}"
    for key, kind in optional.items():
        if key in obj:
            assert isinstance(obj[key], kind), f"{where}: {key!r} should be {kind.__name__}, got {obj[key]!r}"


@pytest.mark.parametrize("bundle", sorted(BUNDLES))
def test_metadata_has_every_field_the_zoo_schema_requires(bundle):
    with open(os.path.join(_configs(bundle), "metadata.json")) as f:
        meta = json.load(f)
    _check_fields(meta, REQUIRED_META, OPTIONAL_META, "metadata.json")
    assert meta["schema"].endswith(".json")
    assert meta["version"] in meta.get("changelog", {meta["version"]: ""}), "the current version needs a changelog"
    assert all(isinstance(r, str) for r in meta.get("references", []))
    fmt = meta["network_data_format"]
    assert set(fmt) >= {"inputs", "outputs"}
    for part in ("inputs", "outputs"):
        assert fmt[part], f"network_data_format#{part} is empty"
        for name, tensor in fmt[part].items():
            where = f"network_data_format#{part}#{name}"
            _check_fields(tensor, REQUIRED_TENSOR, OPTIONAL_TENSOR, where)
            assert all(isinstance(s, (int, str)) for s in tensor["spatial_shape"]), where
            assert all(isinstance(v, (int, float)) for v in tensor["value_range"]), where
            if "channel_def" in tensor:
                assert len(tensor["channel_def"]) == tensor["num_channels"], where
    image, pred = fmt["inputs"]["image"], fmt["outputs"]["pred"]
    channels, classes, shape, _ = BUNDLES[bundle]
    assert image["spatial_shape"] == shape and image["num_channels"] == channels  # the default preset's crop
    assert pred["spatial_shape"] == shape and pred["num_channels"] == classes


@pytest.mark.parametrize("bundle", sorted(BUNDLES))
@pytest.mark.parametrize("config, kind", [("train.json", "train"), ("inference.json", "infer")])
def test_workflow_has_required_properties(tmp_path, bundle, config, kind):
    override = {"bundle_root": str(tmp_path / "bundle")}
    if kind == "train":
        override.update(preset="tiny", demo_dir=str(tmp_path / "demo"))
    else:  # inference lists dataset_dir when its dataset is resolved; the file is never read here
        images = tmp_path / "images"
        images.mkdir()
        (images / ("case_1.nii.gz" if bundle == "mdm_hippocampus" else "case_1.png")).write_bytes(b"")
        override["dataset_dir"] = str(images)
    wf = ConfigWorkflow(config_file=os.path.join(_configs(bundle), config),
                        meta_file=os.path.join(_configs(bundle), "metadata.json"), logging_file=False,
                        workflow_type=kind, **override)
    wf.initialize()
    assert wf.check_properties() == []


@pytest.mark.parametrize("bundle, mode", [("mdm_glas", "finetune"), ("mdm_glas", "head"), ("mdm_monuseg", "finetune"),
                                          ("mdm_hippocampus", "finetune"), ("mdm_hippocampus", "head")])
def test_ckpt_export_torchscript_matches_eager(tmp_path, bundle, mode):
    root, net = _tiny_bundle(tmp_path, bundle, mode)
    ts_path = tmp_path / "model.ts"
    # the zoo command, traced (the head's frozen features are not scriptable); the input shape comes from
    # metadata.json
    _bundle_cli("ckpt_export", "network_def", "--filepath", str(ts_path), "--ckpt_file", str(root / "models/model.pt"),
                "--meta_file", str(root / "configs/metadata.json"), "--config_file",
                str(root / "configs/inference.json"), "--bundle_root", str(root), "--use_trace", "True", cwd=tmp_path)
    extra = {"metadata.json": "", "inference.json": ""}
    ts = torch.jit.load(str(ts_path), _extra_files=extra).eval()
    meta = json.load(open(os.path.join(_configs(bundle), "metadata.json")))
    assert json.loads(extra["metadata.json"])["version"] == meta["version"]
    assert "network_def" in json.loads(extra["inference.json"])
    channels, classes, shape, _ = BUNDLES[bundle]
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        # batch and size other than the trace's
        for size in [(2, channels, *shape), (1, channels, *shape), (3, channels, shape[0] * 2, *shape[1:])]:
            x = torch.rand(size, generator=gen) * 2 - 1
            expected, got = net(x), ts(x)
            assert got.shape == (size[0], classes, *size[2:])
            torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)


def test_finetune_network_is_scriptable():
    from mdm_med.networks import build_segmenter

    net = build_segmenter("finetune", preset="tiny", num_classes=2).eval()
    scripted = torch.jit.script(net)
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        torch.testing.assert_close(scripted(x), net(x))


@pytest.mark.parametrize("bundle", sorted(BUNDLES))
def test_verify_net_in_out(tmp_path, bundle):
    root, _ = _tiny_bundle(tmp_path, bundle, "finetune")
    proc = _bundle_cli("verify_net_in_out", "network_def", "--meta_file", str(root / "configs/metadata.json"),
                       "--config_file", str(root / "configs/inference.json"), "--bundle_root", str(root), cwd=tmp_path)
    assert "verified" in proc.stdout + proc.stderr


@pytest.mark.parametrize("bundle", sorted(BUNDLES))
def test_docs_readme_has_the_zoo_sections(bundle):
    text = open(os.path.join(ROOT, "bundles", bundle, "docs", "README.md")).read()
    headings = [line.lstrip("#").strip() for line in text.splitlines() if line.startswith("#")]
    for section in ("Model Overview", "Data", "Training configuration", "Performance", "MONAI Bundle Commands",
                    "License"):
        assert section in headings, f"{bundle}/docs/README.md has no '{section}' section"
    assert "python -m monai.bundle run --config_file bundles/" + bundle in text  # the training command is given


def test_export_replaces_only_an_earlier_export(tmp_path):
    """The export never deletes its source, a folder holding it, or a folder that is not an earlier export."""
    from mdm_med.bundle import export_bundle

    src = os.path.join(ROOT, "bundles", "mdm_glas")
    for bad in (src, os.path.join(ROOT, "bundles")):
        with pytest.raises(ValueError, match="outside the bundle"):
            export_bundle(src, bad, parts=("configs",))
    assert os.path.isfile(os.path.join(src, "configs", "metadata.json"))
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep")
    with pytest.raises(FileExistsError, match="notes.txt"):
        export_bundle(src, mine, parts=("configs",))
    assert (mine / "notes.txt").read_text() == "keep"
    out = export_bundle(src, tmp_path / "out", parts=("configs",))
    (out / "configs" / "stale.json").write_text("{}")
    assert export_bundle(src, out, parts=("configs",)) == out  # an earlier export is replaced whole
    assert not (out / "configs" / "stale.json").exists() and (out / "configs" / "metadata.json").is_file()
    for name in ("train.json", "inference.json"):  # the copy is its own root, never the repository's bundle
        assert json.loads((out / "configs" / name).read_text())["bundle_root"] == "."
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temporary folders left
    (out / "runs").mkdir()  # a bundle someone has trained in is not an export any more
    with pytest.raises(FileExistsError, match="runs"):
        export_bundle(src, out, parts=("configs",))


@pytest.mark.parametrize("bundle", sorted(BUNDLES))
def test_inference_cleans_masks_as_the_model_was_tested(tmp_path, bundle):
    """inference.json applies the published mask clean-up (min_object_size / fill_holes) after the argmax."""
    from mdm_med.data.transforms import CleanLabelMapd

    root, _ = _tiny_bundle(tmp_path, bundle)
    settings = json.loads((root / "models" / "model_settings.json").read_text())
    (root / "models" / "model_settings.json").write_text(json.dumps({**settings, "min_object_size": 7,
                                                                      "fill_holes": True}))
    parser = ConfigParser()
    parser.read_config(str(root / "configs" / "inference.json"))
    parser["bundle_root"] = str(root)
    steps = parser.get_parsed_content("postprocessing").transforms
    names = [type(s).__name__ for s in steps]
    assert names.index("ChannelArgmaxd") < names.index("CleanLabelMapd")
    clean = next(s for s in steps if isinstance(s, CleanLabelMapd))
    assert (clean.min_object_size, clean.fill_holes) == (7, True)


def test_hippocampus_inference_reads_the_trained_spacing_and_intensity_window(tmp_path):
    from mdm_med.bundle import export_bundle

    root = export_bundle(os.path.join(ROOT, "bundles", "mdm_hippocampus"), tmp_path / "b", parts=("configs",))
    (root / "models").mkdir()
    data = {"spacing": [1.5, 1.5, 2.0], "mr_percentiles": [1.0, 99.0], "split_seed": 3, "val_frac": 0.1,
            "test_frac": 0.2}
    (root / "models" / "model_settings.json").write_text(json.dumps({"data_settings": data}))
    parser = ConfigParser()
    parser.read_config(str(root / "configs" / "inference.json"))
    parser["bundle_root"] = str(root)
    assert parser.get_parsed_content("spacing") == [1.5, 1.5, 2.0]
    scale = parser.get_parsed_content("preprocessing").transforms[-1]
    assert (scale.scaler.lower, scale.scaler.upper) == (1.0, 99.0)
