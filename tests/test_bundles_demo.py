"""mdm_monuseg and mdm_hippocampus end to end on their built-in synthetic demo data (train, evaluate, infer)."""

import json
import os
import shutil

import nibabel as nib
import numpy as np
import pytest
from monai.bundle import ConfigWorkflow
from PIL import Image

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = dict(preset="tiny", pretrain_iterations=4, epoch_length=2, max_epochs=2, pretrain_batch_size=2,
            seg_batch_size=2, val_interval=1)
# bundle -> (test metrics it must report, extra overrides)
BUNDLES = {
    "mdm_monuseg": (("test_mean_dice", "test_mean_iou", "test_aji", "test_paper_aji"), {"crop_size": 32}),
    "mdm_hippocampus": (("test_mean_dice", "test_mean_iou", "test_dice_anterior", "test_dice_posterior"),
                        {"crop_size": 16}),
}


def _workflow(bundle, files, kind="train", **override):
    files = [os.path.join(ROOT, "bundles", bundle, "configs", f) for f in files]
    return ConfigWorkflow(config_file=files if len(files) > 1 else files[0], workflow_type=kind, logging_file=False,
                          **override)


@pytest.mark.parametrize("bundle", sorted(BUNDLES))
@pytest.mark.parametrize("mode", ["finetune", "head"])
def test_demo_train_evaluate_infer(tmp_path, bundle, mode):
    names, extra = BUNDLES[bundle]
    root, demo = str(tmp_path / "bundle"), str(tmp_path / "demo")
    wf = _workflow(bundle, ["train.json"], bundle_root=root, demo_dir=demo, seg_mode=mode, **TINY, **extra)
    wf.initialize()
    assert wf.check_properties() == []
    wf.run()
    wf.finalize()
    metrics = json.load(open(os.path.join(root, "runs", "demo", "test_metrics.json")))
    assert metrics["is_demo"] is True and metrics["test_images"] > 0
    for name in names:
        assert 0.0 <= metrics[name] <= 1.0, (name, metrics[name])
    record = json.load(open(os.path.join(root, "runs", "demo", "run_config.json")))["settings"]
    assert not set(record["test_images"]) & (set(record["labelled_images"]) | set(record["validation_images"]))
    datalist = json.load(open(os.path.join(root, "runs", "demo", "datalist.json")))
    pretrain_ids = {d["id"] for d in datalist["training"] + datalist["validation"]}
    assert not pretrain_ids & {d["id"] for d in datalist["test"]}  # no test image in pretraining

    ev = _workflow(bundle, ["train.json", "evaluate.json"], bundle_root=root, demo_dir=demo, **TINY, **extra)
    ev.initialize()
    ev.run()
    again = json.load(open(os.path.join(root, "eval", "test_metrics.json")))
    assert again["test_mean_dice"] == pytest.approx(metrics["test_mean_dice"], abs=1e-6)  # deterministic evaluation

    images, out = tmp_path / "images", tmp_path / "pred"
    images.mkdir()
    src = datalist["test"][0]["image"]
    shutil.copy(src, images / os.path.basename(src))
    inf = _workflow(bundle, ["inference.json"], kind="infer", bundle_root=root, dataset_dir=str(images),
                    output_dir=str(out))
    inf.initialize()
    assert inf.check_properties() == []
    inf.run()
    if bundle == "mdm_hippocampus":
        pred = nib.load(str(next(out.glob("*_seg.nii.gz"))))
        ref = nib.load(src)
        assert pred.shape == ref.shape and np.allclose(pred.affine, ref.affine)
        assert set(np.unique(np.asarray(pred.dataobj)).tolist()) <= {0, 1, 2}
    else:
        mask = Image.open(next(out.glob("*_seg.png")))
        assert mask.size == Image.open(src).size
        assert set(np.unique(np.asarray(mask)).tolist()) <= {0, 1}
