"""Tests for mdm_med.data.decathlon and the synthetic hippocampus volumes (all data built in tmp_path)."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from mdm_med.data.datalist import labelled_subset
from mdm_med.data.decathlon import build_decathlon_datalist, has_decathlon_images, resolve_decathlon_dir
from mdm_med.data.synthetic_volumes import MARKER_NAME, generate_hippocampus_demo


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> Path:
    """The default demo set (24 cases of 40 x 48 x 40)."""
    return generate_hippocampus_demo(tmp_path_factory.mktemp("hippo") / "demo")


def _files(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_demo_layout_and_labels(demo):
    meta = json.loads((demo / "dataset.json").read_text())
    assert meta["labels"] == {"0": "background", "1": "Anterior", "2": "Posterior"}
    assert meta["modality"] == {"0": "MRI"} and meta["numTraining"] == 24
    names = [f"hippocampus_{i:03d}.nii.gz" for i in range(1, 25)]
    assert sorted(p.name for p in (demo / "imagesTr").iterdir()) == names
    assert sorted(p.name for p in (demo / "labelsTr").iterdir()) == names
    for name in names:
        img, lab = nib.load(demo / "imagesTr" / name), nib.load(demo / "labelsTr" / name)
        assert img.shape == lab.shape == (40, 48, 40)
        assert img.get_data_dtype() == np.float32 and lab.get_data_dtype() == np.uint8
        np.testing.assert_array_equal(img.affine, np.eye(4))
        np.testing.assert_array_equal(lab.affine, np.eye(4))
        label = np.asarray(lab.dataobj)
        counts = np.bincount(label.reshape(-1), minlength=3)
        assert len(counts) == 3 and counts[1] > 300 and counts[2] > 300, (name, counts)
        ys = np.nonzero(label)[1]
        assert ys[label[label > 0] == 1].mean() > ys[label[label > 0] == 2].mean()  # anterior = higher y (RAS)
        image = np.asarray(img.dataobj)
        assert np.isfinite(image).all() and image.min() >= 0
        fg = label > 0
        ring = ndimage.binary_dilation(fg, iterations=4) & ~ndimage.binary_dilation(fg)
        assert image[fg].mean() > 1.1 * image[ring].mean()  # brighter than its surroundings


def test_demo_deterministic_reused_and_regenerated(demo, tmp_path):
    small = {"num_cases": 3, "shape": (32, 40, 24), "seed": 0}
    a, b = generate_hippocampus_demo(tmp_path / "a", **small), generate_hippocampus_demo(tmp_path / "b", **small)
    assert _files(a) == _files(b)  # byte-identical
    first = _files(demo)
    a_first = {k: v for k, v in first.items() if k.startswith(("imagesTr/hippocampus_001", "labelsTr/hippocampus_001"))}
    assert a_first == {k: v for k, v in _files(generate_hippocampus_demo(tmp_path / "c", num_cases=1)).items()
                       if k.startswith(("imagesTr", "labelsTr"))}  # case i does not depend on num_cases

    stamp = (a / MARKER_NAME).stat().st_mtime_ns
    assert generate_hippocampus_demo(a, **small) == a and (a / MARKER_NAME).stat().st_mtime_ns == stamp  # reused
    (a / "labelsTr" / "hippocampus_002.nii.gz").unlink()  # incomplete -> rebuilt
    generate_hippocampus_demo(a, **small)
    assert _files(a) == _files(b)
    generate_hippocampus_demo(a, **{**small, "seed": 1})  # other parameters -> rebuilt
    assert json.loads((a / MARKER_NAME).read_text())["seed"] == 1 and _files(a) != _files(b)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary folders left
    (b / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="notes.txt"):
        generate_hippocampus_demo(b, **{**small, "seed": 2})


def test_datalist_fixed_split(demo):
    dl = build_decathlon_datalist(demo)
    assert dl == build_decathlon_datalist(demo)  # reproducible
    assert [e["id"] for e in dl["training"]] != [e["id"] for e in build_decathlon_datalist(demo, seed=1)["training"]]
    ids = {k: [e["id"] for e in dl[k]] for k in ("training", "validation", "test")}
    assert [len(v) for v in ids.values()] == [17, 2, 5]  # 24 cases, round(0.1 * 24) val, round(0.2 * 24) test
    assert sorted(sum(ids.values(), [])) == [f"hippocampus_{i:03d}" for i in range(1, 25)]  # disjoint, complete
    for e in dl["training"] + dl["validation"] + dl["test"]:
        for key in ("image", "label"):
            assert Path(e[key]).is_absolute() and Path(e[key]).is_file()
        assert e["label"] == e["image"].replace("imagesTr", "labelsTr")
    fr = dl["label_fractions"]
    assert list(fr) == ["0.05", "0.1", "0.25", "0.5", "1"] and [len(v) for v in fr.values()] == [1, 1, 4, 8, 17]
    for v in fr.values():
        assert v == ids["training"][: len(v)]  # nested prefixes
    assert labelled_subset(dl, 0.25) == dl["training"][:4]
    assert dl["name"] == "Hippocampus" and dl["source"] == str(demo)
    assert dl["dataset"]["labels"] == {"background": 0, "Anterior": 1, "Posterior": 2}
    rel = build_decathlon_datalist(demo, absolute=False)
    assert rel["training"][0]["image"] == f"imagesTr/{ids['training'][0]}.nii.gz"
    assert [e["id"] for e in rel["test"]] == ids["test"]


def test_datalist_problems_name_the_files(demo, tmp_path):
    root = Path(shutil.copytree(demo, tmp_path / "Task04"))
    (root / "labelsTr" / "hippocampus_002.nii.gz").unlink()
    nib.save(nib.Nifti1Image(np.zeros((40, 48, 39), np.uint8), np.eye(4)), root / "labelsTr" / "hippocampus_003.nii.gz")
    with pytest.raises(ValueError) as info:
        build_decathlon_datalist(root)
    msg = str(info.value)
    assert "image without label: imagesTr/hippocampus_002.nii.gz" in msg
    assert "shape mismatch: imagesTr/hippocampus_003.nii.gz (40, 48, 40) vs labelsTr/hippocampus_003.nii.gz" in msg
    with pytest.raises(FileNotFoundError, match="nowhere"):
        build_decathlon_datalist(tmp_path / "nowhere")


def test_resolve_dir(demo, tmp_path, caplog):
    assert has_decathlon_images(demo) and not has_decathlon_images(tmp_path)
    assert resolve_decathlon_dir(str(demo), tmp_path / "unused") == (str(demo), False)
    assert not (tmp_path / "unused").exists()
    with pytest.raises(FileNotFoundError, match="nowhere"):
        resolve_decathlon_dir(tmp_path / "nowhere", tmp_path / "demo")
    (tmp_path / "empty" / "imagesTr").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match=r"empty.*imagesTr"):
        resolve_decathlon_dir(tmp_path / "empty", tmp_path / "demo")
    assert not (tmp_path / "demo").exists()  # a wrong dataset_dir never falls back to demo data
    with caplog.at_level(logging.WARNING, logger="mdm_med.data.decathlon"):
        folder, is_demo = resolve_decathlon_dir("", tmp_path / "demo", num_cases=2, shape=(24, 32, 24))
    assert is_demo and Path(folder) == (tmp_path / "demo").resolve() and has_decathlon_images(folder)
    assert "SYNTHETIC" in caplog.text
    assert resolve_decathlon_dir(None, tmp_path / "demo", num_cases=2, shape=(24, 32, 24)) == (folder, True)
