"""MoNuSeg standard layout: synthetic nuclei demo, scanner/datalist, demo resolution and instance-map loading."""

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from scipy import ndimage

from mdm_med.data.monuseg import build_monuseg_datalist, has_monuseg_layout, resolve_monuseg_dir, scan_monuseg
from mdm_med.data.synthetic_nuclei import generate_monuseg_demo
from mdm_med.data.transforms import LoadHistologyd

SMALL = {"num_train": 3, "num_test": 2, "size": (64, 80)}


def make_layout(root, n_train=30, n_test=14, size=(12, 10), prefix="img_"):
    """Tiny MoNuSeg layout: image (H, W, 3) noise, instance map with ids 1, 2 and 300, binary label."""
    rng = np.random.default_rng(0)
    h, w = size
    inst = np.zeros((h, w), np.uint16)
    inst[1:4, 1:5], inst[1:4, 5:8], inst[6:9, 2:6] = 1, 2, 300  # ids 1 and 2 touch
    for sfx, n in (("Tr", n_train), ("Ts", n_test)):
        for kind in ("images", "labels", "instances"):
            (root / f"{kind}{sfx}").mkdir(parents=True, exist_ok=True)
        for i in range(1, n + 1):
            name = f"{prefix}{'ts' if sfx == 'Ts' else ''}{i}.png"
            Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(root / f"images{sfx}" / name)
            Image.fromarray(np.where(inst > 0, 255, 0).astype(np.uint8)).save(root / f"labels{sfx}" / name)
            Image.fromarray(inst).save(root / f"instances{sfx}" / name)
    return root


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """The default demo set (12 train + 6 test tiles of 256 x 256)."""
    return generate_monuseg_demo(tmp_path_factory.mktemp("monuseg") / "demo")


def _files(folder):
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_demo_complete_and_scannable(demo):
    for sfx, n in (("Tr", 12), ("Ts", 6)):
        for kind in ("images", "labels", "instances"):
            assert len(list((demo / f"{kind}{sfx}").iterdir())) == n
    assert sorted(p.name for p in demo.iterdir()) == sorted(
        ["datalist.json", "demo.json"] + [f"{k}{s}" for k in ("images", "labels", "instances") for s in ("Tr", "Ts")])
    assert not [p for p in demo.parent.iterdir() if p.name.startswith(".")]  # no temp folders left
    assert has_monuseg_layout(demo)
    splits = scan_monuseg(demo)
    assert [d["id"] for d in splits["training"]] == [f"train_{i}" for i in range(1, 13)]
    assert len(splits["test"]) == 6
    written = json.loads((demo / "datalist.json").read_text())
    assert [d["id"] for d in written["training"]] == [d["id"] for d in splits["training"]]
    image = Image.open(demo / "imagesTr" / "train_1.png")
    assert image.mode == "RGB" and image.size == (256, 256)


def test_demo_nuclei_instances(demo):
    counts, touching = [], 0
    for path in sorted(demo.glob("instances*/*.png")):
        inst = np.asarray(Image.open(path))
        label = np.asarray(Image.open(str(path).replace("instances", "labels")))
        assert inst.dtype == np.uint16 and label.dtype == np.uint8
        np.testing.assert_array_equal(label, np.where(inst > 0, 255, 0))  # binary == instance > 0
        ids = np.unique(inst[inst > 0])
        np.testing.assert_array_equal(ids, np.arange(1, len(ids) + 1))  # ids 1..N
        for i, box in enumerate(ndimage.find_objects(inst), 1):  # one connected piece per id
            assert ndimage.label(inst[box] == i)[1] == 1
        radius = np.sqrt(np.bincount(inst.ravel())[1:] / np.pi)
        assert 3.0 < np.median(radius) < 9.0
        counts.append(len(ids))
        a, b = inst[:, :-1], inst[:, 1:]
        touching += bool(((a != b) & (a > 0) & (b > 0)).any())  # distinct ids side by side
    assert min(counts) >= 30 and max(counts) > 1.3 * min(counts)  # many nuclei, varying density
    assert touching >= len(counts) // 2


def test_demo_deterministic_reused_and_regenerated(tmp_path):
    a = generate_monuseg_demo(tmp_path / "a", seed=3, **SMALL)
    b = generate_monuseg_demo(tmp_path / "b", seed=3, **SMALL)
    assert _files(a) == _files(b)
    assert _files(a) != _files(generate_monuseg_demo(tmp_path / "c", seed=4, **SMALL))
    stamp = (a / "imagesTr" / "train_1.png").stat().st_mtime_ns
    assert generate_monuseg_demo(tmp_path / "a", seed=3, **SMALL) == a  # complete: reused as is
    assert (a / "imagesTr" / "train_1.png").stat().st_mtime_ns == stamp
    (a / "instancesTs" / "test_2.png").unlink()  # incomplete: regenerated
    generate_monuseg_demo(tmp_path / "a", seed=3, **SMALL)
    assert _files(a) == _files(b)
    generate_monuseg_demo(tmp_path / "a", seed=3, num_train=4, num_test=2, size=(64, 80))  # other params
    assert len(list((a / "imagesTr").iterdir())) == 4
    (tmp_path / "real").mkdir()
    (tmp_path / "real" / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="real"):
        generate_monuseg_demo(tmp_path / "real", **SMALL)


def test_instance_ids_above_255_load_intact(tmp_path):
    make_layout(tmp_path, n_train=2, n_test=1)
    item = scan_monuseg(tmp_path)["training"][0]
    d = LoadHistologyd(keys=["image", "label", "instance"])(item)
    raw = np.asarray(Image.open(item["instance"]))  # (H, W) = (12, 10)
    assert d["image"].shape == (3, 10, 12) and d["label"].shape == (1, 10, 12) and d["instance"].shape == (1, 10, 12)
    assert d["instance"].dtype == torch.int64
    np.testing.assert_array_equal(d["instance"][0].numpy(), raw.T)  # same (W, H) orientation as the image
    assert set(d["instance"].unique().tolist()) == {0, 1, 2, 300}
    np.testing.assert_array_equal(d["label"][0].numpy(), (raw.T > 0).astype(np.float32))
    assert str(d["instance"].meta["filename_or_obj"]).endswith("instancesTr/img_1.png")
    plain = LoadHistologyd()(item)  # default keys: image + label as before, instance path untouched
    assert plain["instance"] == item["instance"] and plain["label"].dtype == d["label"].dtype


def test_load_demo_item_shapes_match(demo):
    item = build_monuseg_datalist(demo)["training"][0]
    d = LoadHistologyd(keys=["image", "label", "instance"])(item)
    assert d["image"].shape[1:] == d["label"].shape[1:] == d["instance"].shape[1:] == (256, 256)
    assert bool(((d["instance"] > 0).float() == d["label"]).all()) and int(d["instance"].max()) >= 30


def test_datalist_splits_and_fractions(tmp_path):
    make_layout(tmp_path)
    (tmp_path / "datalist.json").write_text(json.dumps({"training": [{"id": "stale"}]}))  # not trusted
    dl = build_monuseg_datalist(tmp_path)
    assert [d["id"] for d in dl["validation"]] == ["img_27", "img_28", "img_29", "img_30"]  # natural order
    assert [d["id"] for d in dl["training"]] == [f"img_{i}" for i in range(1, 27)]
    assert len(dl["test"]) == 14
    keys = ["0.05", "0.1", "0.25", "0.5", "1"]
    assert [len(dl["label_fractions"][k]) for k in keys] == [1, 3, 7, 15, 26]  # counted on all 30 images
    assert dl["label_fractions"]["0.1"] == ["img_1", "img_2", "img_3"]
    for small, big in zip(keys, keys[1:]):
        assert set(dl["label_fractions"][small]) <= set(dl["label_fractions"][big])
    ids = {s: {d["id"] for d in dl[s]} for s in ("training", "validation", "test")}
    assert not ids["training"] & ids["validation"] and not (ids["training"] | ids["validation"]) & ids["test"]
    assert set(dl["label_fractions"]["1"]) == ids["training"]
    images = {s: {d["image"] for d in dl[s]} for s in ("training", "validation", "test")}
    assert not (images["training"] | images["validation"]) & images["test"]
    for split in ("training", "validation", "test"):
        for item in dl[split]:
            assert set(item) == {"id", "image", "label", "instance"}
            for key in ("image", "label", "instance"):
                path = Path(item[key])
                assert path.is_absolute() and path.is_file() and path.stem == item["id"]
    assert len(build_monuseg_datalist(tmp_path, num_val=0)["training"]) == 30
    with pytest.raises(ValueError, match="num_val"):
        build_monuseg_datalist(tmp_path, num_val=30)


def test_missing_and_orphan_files_listed_together(tmp_path):
    make_layout(tmp_path, n_train=6, n_test=2)
    (tmp_path / "instancesTr" / "img_3.png").unlink()
    (tmp_path / "labelsTr" / "img_5.png").unlink()
    (tmp_path / "labelsTs" / "img_ts2.png").unlink()
    Image.fromarray(np.zeros((12, 10), np.uint16)).save(tmp_path / "instancesTs" / "extra.png")
    with pytest.raises(ValueError) as err:
        build_monuseg_datalist(tmp_path)
    msg = str(err.value)
    assert "4 problem" in msg
    assert "imagesTr/img_3.png: no instancesTr/img_3.png" in msg
    assert "imagesTr/img_5.png: no labelsTr/img_5.png" in msg
    assert "imagesTs/img_ts2.png: no labelsTs/img_ts2.png" in msg
    assert "instancesTs/extra.png: no imagesTs/extra.png" in msg


def test_bad_instance_maps_named_before_training(tmp_path):
    """The test split's instance maps (object metrics) are checked with the images, not first read at test time."""
    from mdm_med.data.transforms import check_datalist_files

    make_layout(tmp_path, n_train=6, n_test=3)
    Image.fromarray(np.zeros((9, 10), np.uint16)).save(tmp_path / "instancesTs" / "img_ts1.png")  # wrong size
    (tmp_path / "instancesTs" / "img_ts3.png").write_bytes(b"not a png")
    datalist = build_monuseg_datalist(tmp_path, num_val=2)
    with pytest.raises(ValueError) as err:
        check_datalist_files(datalist)
    msg = str(err.value)
    assert "2 problem" in msg and "instancesTs/img_ts3.png: cannot read" in msg
    assert "its instance" in msg and "instancesTs/img_ts1.png is (10, 9)" in msg


def test_colour_instance_map_named_before_training(tmp_path):
    """An RGB instance map (ids as colours) fails the pre-check, as it would fail LoadHistologyd at test time."""
    from mdm_med.data.transforms import check_datalist_files

    make_layout(tmp_path, n_train=6, n_test=2)
    inst = np.asarray(Image.open(tmp_path / "instancesTs" / "img_ts2.png")).astype(np.int64)
    colour = np.stack([inst * 37 % 256, inst * 91 % 256, inst * 53 % 256], axis=-1).astype(np.uint8)
    Image.fromarray(colour).save(tmp_path / "instancesTs" / "img_ts2.png")
    with pytest.raises(ValueError, match="instancesTs/img_ts2.png: instance map has 3 different channels"):
        check_datalist_files(build_monuseg_datalist(tmp_path, num_val=2))


def test_same_name_in_both_splits_rejected(tmp_path):
    make_layout(tmp_path, n_train=3, n_test=1)
    for kind in ("images", "labels", "instances"):
        (tmp_path / f"{kind}Ts" / "img_ts1.png").rename(tmp_path / f"{kind}Ts" / "img_2.png")
    with pytest.raises(ValueError, match="img_2.png is in both"):
        build_monuseg_datalist(tmp_path, num_val=1)


def test_given_dataset_dir_must_have_layout(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.*does not exist"):
        resolve_monuseg_dir(str(tmp_path / "nope"), tmp_path / "demo")
    make_layout(tmp_path / "partial", n_train=2, n_test=1)
    (tmp_path / "partial" / "instancesTs" / "img_ts1.png").unlink()
    (tmp_path / "partial" / "instancesTs").rmdir()
    with pytest.raises(FileNotFoundError, match="partial.*instancesTs/"):
        resolve_monuseg_dir(tmp_path / "partial", tmp_path / "demo")
    assert not (tmp_path / "demo").exists()  # no silent demo fallback
    assert not has_monuseg_layout(tmp_path / "partial")
    with pytest.raises(FileNotFoundError, match="partial"):
        build_monuseg_datalist(tmp_path / "partial")
    make_layout(tmp_path / "real", n_train=2, n_test=1)
    assert resolve_monuseg_dir(str(tmp_path / "real"), tmp_path / "demo") == (str(tmp_path / "real"), False)


def test_empty_dataset_dir_gives_announced_demo(tmp_path, caplog):
    with caplog.at_level(logging.WARNING):
        folder, is_demo = resolve_monuseg_dir("", tmp_path / "demo", **SMALL)
    assert is_demo and "SYNTHETIC" in caplog.text and folder == str((tmp_path / "demo").resolve())
    assert resolve_monuseg_dir(None, tmp_path / "demo", **SMALL) == (folder, True)
    dl = build_monuseg_datalist(folder, num_val=1)
    assert [d["id"] for d in dl["validation"]] == ["train_3"] and len(dl["test"]) == 2
