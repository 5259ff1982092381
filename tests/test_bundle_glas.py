"""The mdm_glas bundle end to end through MONAI's ConfigWorkflow on tiny synthetic data."""

import json
import os

import numpy as np
import pytest
from monai.bundle import ConfigWorkflow
from PIL import Image

CONFIGS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bundles", "mdm_glas", "configs")
TINY = dict(preset="tiny", pretrain_iterations=4, epoch_length=2, max_epochs=2, num_val=2, image_scale=1.0,
            crop_size=32, patch_size=4, pretrain_batch_size=4, seg_batch_size=2, label_fraction=1.0)


def workflow(files, kind="train", **override):
    files = [os.path.join(CONFIGS, f) for f in files]
    wf = ConfigWorkflow(config_file=files if len(files) > 1 else files[0], workflow_type=kind, logging_file=False,
                        **override)
    return wf


@pytest.mark.parametrize("mode", ["finetune", "head"])
def test_train_evaluate_infer(tmp_path, tiny_glas, mode):
    root = str(tmp_path / "bundle")
    wf = workflow(["train.json"], bundle_root=root, dataset_dir=tiny_glas, seg_mode=mode, **TINY)
    wf.initialize()
    assert wf.check_properties() == []
    wf.run()
    wf.finalize()
    run_dir = os.path.join(root, "runs", f"glas_{mode}_1.0")
    metrics = json.load(open(os.path.join(run_dir, "test_metrics.json")))
    assert 0.0 <= metrics["test_mean_dice"] <= 1.0 and metrics["test_images"] == 3 and metrics["is_demo"] is False
    record = json.load(open(os.path.join(run_dir, "run_config.json")))
    assert record["settings"]["seg_mode"] == mode and record["settings"]["preset"] == "tiny"
    assert not set(record["settings"]["test_images"]) & set(record["settings"]["labelled_images"])
    pretrained = os.path.join(root, "runs", "glas", "pretrained.pt")
    assert os.path.isfile(pretrained) and os.path.isfile(os.path.join(root, "models", "model.pt"))
    made_by = json.load(open(os.path.join(root, "runs", "glas", "pretrain_config.json")))  # beside the weights
    assert made_by["settings"]["pretrain_iterations"] == TINY["pretrain_iterations"]

    ev = workflow(["train.json", "evaluate.json"], bundle_root=root, dataset_dir=tiny_glas, **TINY)
    ev.initialize()
    ev.run()
    again = json.load(open(os.path.join(root, "eval", "test_metrics.json")))
    assert again["test_mean_dice"] == pytest.approx(metrics["test_mean_dice"], abs=1e-6)  # deterministic evaluation
    if mode == "finetune":
        # evaluate.json's data is the model's own by default; the demo data is refused for a model trained on real data
        os.remove(os.path.join(root, "eval", "test_metrics.json"))
        ev = workflow(["train.json", "evaluate.json"], bundle_root=root, **TINY)
        ev.initialize()
        ev.run()
        assert json.load(open(os.path.join(root, "eval", "test_metrics.json")))["is_demo"] is False
        with pytest.raises(Exception) as err:
            ev = workflow(["train.json", "evaluate.json"], bundle_root=root, dataset_dir="",
                          demo_dir=str(tmp_path / "demo"), **TINY)
            ev.initialize()
        assert any("trained on " + tiny_glas in m and "reads the demo data" in m for m in _messages(err.value))

    src = os.path.join(tiny_glas, "testA_1.png")
    img_dir = tmp_path / "images"
    img_dir.mkdir()
    Image.open(src).save(img_dir / "case.png")
    out = tmp_path / "pred"
    inf = workflow(["inference.json"], kind="infer", bundle_root=root, dataset_dir=str(img_dir), output_dir=str(out))
    inf.initialize()
    assert inf.check_properties() == []
    inf.run()
    mask = Image.open(out / "case_seg.png")
    assert mask.size == Image.open(src).size and mask.mode == "L"
    assert set(np.unique(np.asarray(mask)).tolist()) <= {0, 1}
    if mode == "head":  # a model.pt that is not the one its model_settings.json describes is refused
        with open(os.path.join(root, "models", "model.pt"), "ab") as f:
            f.write(b"0")
        with pytest.raises(Exception) as err:
            inf = workflow(["inference.json"], kind="infer", bundle_root=root, dataset_dir=str(img_dir),
                           output_dir=str(out))
            inf.initialize()
            inf.run()
        assert any("is not the model" in m and "sha256 differs" in m for m in _messages(err.value))


def test_evaluation_refuses_other_data_settings(tmp_path):
    from mdm_med.utils import check_evaluation_data

    (tmp_path / "model_settings.json").write_text(json.dumps(
        {"is_demo": False, "trained_on": "/data/x", "data_settings": {"split_seed": 0, "spacing": [1.0, 1.0, 1.0]}}))
    check_evaluation_data(str(tmp_path), False, {"split_seed": 0, "spacing": (1.0, 1.0, 1.0)})
    with pytest.raises(ValueError, match=r"'split_seed': \(0, 1\).*--split_seed '0'"):
        check_evaluation_data(str(tmp_path), False, {"split_seed": 1, "spacing": [1.0, 1.0, 1.0]})
    with pytest.raises(ValueError, match="trained on /data/x, but this evaluation reads the demo data"):
        check_evaluation_data(str(tmp_path), True, {})


def _messages(e: BaseException | None) -> list[str]:
    """The messages of ``e`` and of its causes (the bundle's config parser wraps errors)."""
    chain = []
    while e is not None:
        chain.append(str(e))
        e = e.__cause__
    return chain


def _pretrain(root, data, **settings):
    """Run the pretraining-only overlay with TINY updated by ``settings``."""
    wf = workflow(["train.json", "pretrain.json"], bundle_root=root, dataset_dir=data, **{**TINY, **settings})
    wf.initialize()
    wf.run()


def _pretrain_refused(root, data, **settings) -> list[str]:
    """The error messages of a pretraining-only run that must fail."""
    with pytest.raises(Exception) as err:
        _pretrain(root, data, **settings)
    return _messages(err.value)


def test_finished_pretraining_is_reused_only_with_its_settings(tmp_path, tiny_glas):
    root = str(tmp_path / "bundle")
    _pretrain(root, tiny_glas)
    path = os.path.join(root, "runs", "glas", "pretrained.pt")
    record = os.path.join(root, "runs", "glas", "pretrain_config.json")
    first, recorded = os.path.getmtime(path), os.path.getmtime(record)
    _pretrain(root, tiny_glas)
    assert os.path.getmtime(path) == first  # finished pretraining is reused, not redone
    assert os.path.getmtime(record) == recorded  # and its record stays that of the run that made it
    # a checkpoint from other settings is refused instead of silently reused, a shorter trial budget included
    for key, value in (("pretrain_loss", "mse"), ("pretrain_iterations", 8)):
        assert any("does not match" in m and key in m for m in _pretrain_refused(root, tiny_glas, **{key: value}))
    # and so are weights pretrained on another image set (here: one with the test images)
    assert any("pretrain_images" in m for m in _pretrain_refused(root, tiny_glas, pretrain_include_test=True))
    _pretrain(root, tiny_glas, seed=1)  # the seed is not a pretraining setting: segmentation seeds share one
    assert os.path.getmtime(path) == first


def test_pretraining_resumes_its_checkpoint_only_with_its_settings(tmp_path, tiny_glas, caplog):
    import torch

    root = str(tmp_path / "bundle")
    _pretrain(root, tiny_glas)
    pretrained = os.path.join(root, "runs", "glas", "pretrained.pt")
    os.remove(pretrained)  # as if stopped right after its last checkpoint (iteration 4)
    caplog.set_level("INFO", logger="mdm_med.handlers")
    _pretrain(root, tiny_glas, pretrain_iterations=8)  # the iteration count may grow: it goes on from there
    assert "iteration 4" in caplog.text and "resumed from" in caplog.text
    assert torch.load(pretrained, weights_only=False)["meta"]["iterations"] == 8
    os.remove(pretrained)
    for change in ({"pretrain_iterations": 6}, {"pretrain_iterations": 8, "epoch_length": 4}):  # shorter, other epochs
        assert any("cannot resume" in m and "iteration 8" in m for m in _pretrain_refused(root, tiny_glas, **change))
    # another lr would mix two trainings in one set of weights
    messages = _pretrain_refused(root, tiny_glas, pretrain_iterations=8, pretrain_lr=1e-2)
    assert any("pretrain_checkpoint.pt" in m and "pretrain_lr" in m for m in messages)


def test_no_validation_images_is_refused_before_pretraining(tmp_path, tiny_glas):
    """Validation picks the checkpoint that is tested and published: without it the run stops at once."""
    root = str(tmp_path / "bundle")
    wf = workflow(["train.json"], bundle_root=root, dataset_dir=tiny_glas, **{**TINY, "num_val": 0})
    wf.initialize()
    with pytest.raises(Exception) as err:
        wf.run()
    assert any("no 'validation' items" in m and tiny_glas in m for m in _messages(err.value))
    assert not os.path.exists(os.path.join(root, "runs", "glas", "pretrained.pt"))


def test_head_model_keeps_its_feature_corruption_when_published(tmp_path, tiny_glas):
    """A head trained on DDPM-noised features is evaluated and served with the same noise, not MDM masking."""
    root = str(tmp_path / "bundle")
    ddpm = {"_target_": "mdm_med.corruption.GaussianDiffusion", "num_train_timesteps": 1000}
    wf = workflow(["train.json"], bundle_root=root, dataset_dir=tiny_glas, seg_mode="head",
                  pretrain_corruption=ddpm, feature_corruption=ddpm, **TINY)
    wf.initialize()
    wf.run()
    settings = json.load(open(os.path.join(root, "models", "model_settings.json")))
    assert settings["feature_corruption"].startswith("GaussianDiffusion(")
    for files, kind in ((["train.json", "evaluate.json"], "train"), (["inference.json"], "infer")):
        other = workflow(files, kind=kind, bundle_root=root, dataset_dir=tiny_glas, **({} if kind == "infer" else TINY))
        net = other.parser.get_parsed_content("network_def")
        assert repr(net.features.corruption) == settings["feature_corruption"], files
