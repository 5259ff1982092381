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
from mdm_med.data.decathlon import (
    build_decathlon_datalist,
    check_decathlon_files,
    has_decathlon_images,
    resolve_decathlon_dir,
)
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


def _small_task(tmp_path: Path) -> Path:
    return generate_hippocampus_demo(tmp_path / "Task04", num_cases=6, shape=(24, 32, 24))


def _edit_nifti(path: Path, edit, dtype=None) -> None:
    """Rewrite ``path`` with ``edit(array)`` (same affine)."""
    img = nib.load(path)
    data = np.asarray(img.dataobj).astype(dtype or img.get_data_dtype())
    nib.save(nib.Nifti1Image(edit(data), img.affine), path)


def test_duplicate_case_files_and_bad_dataset_json(tmp_path):
    root = _small_task(tmp_path)
    gz = root / "imagesTr" / "hippocampus_003.nii.gz"
    nib.save(nib.load(gz), root / "imagesTr" / "hippocampus_003.nii")
    with pytest.raises(ValueError, match="hippocampus_003") as info:
        build_decathlon_datalist(root)
    assert str(root / "imagesTr" / "hippocampus_003.nii ") in str(info.value) and str(gz) in str(info.value)
    (root / "imagesTr" / "hippocampus_003.nii").unlink()
    (root / "dataset.json").write_text('{"name": "Hippocampus",')
    with pytest.raises(ValueError, match=r"dataset\.json is not valid JSON"):
        build_decathlon_datalist(root)


def test_flipped_label_affine_is_an_error(tmp_path):
    root = _small_task(tmp_path)
    lab_p = root / "labelsTr" / "hippocampus_002.nii.gz"
    lab = nib.load(lab_p)
    nib.save(nib.Nifti1Image(np.asarray(lab.dataobj), np.diag([-1.0, 1.0, 1.0, 1.0])), lab_p)
    with pytest.raises(ValueError, match=r"affine mismatch .*imagesTr/hippocampus_002.nii.gz vs labelsTr/hippo"):
        build_decathlon_datalist(root)
    dl = build_decathlon_datalist(root, check_shapes=False)
    with pytest.raises(ValueError, match=r"affine mismatch: 'image' \S+hippocampus_002.nii.gz and 'label' \S+labelsTr"):
        check_decathlon_files(dl)


def test_check_files_reads_every_voxel(tmp_path):
    """Defects a header check misses: each is named with its file, all in one error, before any compute."""
    root = _small_task(tmp_path)
    dl = build_decathlon_datalist(root)
    assert check_decathlon_files(dl, in_channels=1, num_classes=3) is dl  # a clean set passes
    images, labels = root / "imagesTr", root / "labelsTr"

    def seven(a):
        a[0, 0, 0] = 7
        return a

    def half(a):
        a[0, 0, 0] = 0.5
        return a

    def nan(a):
        a[1, 1, 1] = np.nan
        return a

    _edit_nifti(labels / "hippocampus_001.nii.gz", seven)
    _edit_nifti(labels / "hippocampus_002.nii.gz", half, np.float32)
    data = (images / "hippocampus_003.nii.gz").read_bytes()
    (images / "hippocampus_003.nii.gz").write_bytes(data[: len(data) // 2])  # truncated: header still readable
    _edit_nifti(images / "hippocampus_004.nii.gz", lambda a: np.stack([a, a], axis=-1))  # 2 channels
    _edit_nifti(images / "hippocampus_005.nii.gz", nan)
    dl = build_decathlon_datalist(root)  # every header is fine
    with pytest.raises(ValueError) as info:
        check_decathlon_files(dl, in_channels=1, num_classes=3)
    msg = str(info.value)
    assert f"label {labels / 'hippocampus_001.nii.gz'} holds value(s) 7; expected class indices 0..2" in msg
    assert f"label {labels / 'hippocampus_002.nii.gz'} holds value(s) 0.5" in msg
    assert f"cannot read {images / 'hippocampus_003.nii.gz'}: EOFError" in msg
    assert f"{images / 'hippocampus_004.nii.gz'} has 2 channel(s), expected in_channels=1" in msg
    assert f"{images / 'hippocampus_005.nii.gz'} contains 1 NaN" in msg
    with pytest.raises(ValueError, match=r"num_classes=4 but dataset.json .* lists label values \[0, 1, 2\]"):
        check_decathlon_files(dl, num_classes=4)
    rel = build_decathlon_datalist(root, absolute=False)  # relative paths are read from "source"
    with pytest.raises(ValueError, match="hippocampus_001.nii.gz holds value"):
        check_decathlon_files(rel)


def test_bundle_checks_every_file_before_compute(tmp_path, monkeypatch):
    """mdm_hippocampus resolves its datalist through check_decathlon_files (in_channels, num_classes)."""
    from monai.bundle import ConfigParser

    root = _small_task(tmp_path)
    _edit_nifti(root / "labelsTr" / "hippocampus_006.nii.gz", lambda a: a + 3)  # values 3..5 for 3 classes
    monkeypatch.chdir(Path(__file__).resolve().parents[1])  # the recipe macros resolve from the repository root
    parser = ConfigParser()
    parser.read_config("bundles/mdm_hippocampus/configs/train.json")
    parser["dataset_dir"] = str(root)
    with pytest.raises(RuntimeError) as info:
        parser.get_parsed_content("datalist")
    assert "labelsTr/hippocampus_006.nii.gz holds value(s) 3, 4, 5" in str(info.value.__cause__)
