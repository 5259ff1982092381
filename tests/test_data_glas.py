import numpy as np
import pytest
from PIL import Image

from mdm_med.data.datalist import labelled_subset, nested_label_subsets, pretraining_items
from mdm_med.data.glas import build_glas_datalist, resolve_glas_dir, scan_glas
from mdm_med.data.transforms import LoadHistologyd, check_histology_files


def _write(folder, name, size=(40, 30), mode="RGB", value=None):
    arr = np.random.default_rng(0).integers(0, 255, (size[1], size[0], 3 if mode == "RGB" else 1), dtype=np.uint8)
    if value is not None:
        arr[:] = value
    Image.fromarray(arr if mode == "RGB" else arr[..., 0], mode).save(folder / name)


def make_layout(folder, n_train=12, ext="png", instance=False):
    for i in range(1, n_train + 1):
        _write(folder, f"train_{i}.{ext}")
        mask = np.zeros((30, 40), np.uint8)
        mask[5:15, 5:20] = 3 if instance else 255
        mask[20:25, 22:30] = 7 if instance else 255
        Image.fromarray(mask).save(folder / f"train_{i}_anno.{ext}")
    for i in range(1, 4):
        _write(folder, f"testA_{i}.{ext}")
        Image.fromarray(np.zeros((30, 40), np.uint8)).save(folder / f"testA_{i}_anno.{ext}")
    _write(folder, "testB_1.png")
    Image.fromarray(np.zeros((30, 40), np.uint8)).save(folder / "testB_1_anno.png")


def test_scan_numeric_order_and_bmp_instances(tmp_path):
    make_layout(tmp_path, ext="bmp", instance=True)
    splits = scan_glas(tmp_path)
    assert [d["id"] for d in splits["train"]][:3] == ["train_1", "train_2", "train_3"]
    assert [d["id"] for d in splits["train"]][-3:] == ["train_10", "train_11", "train_12"]
    assert len(splits["testa"]) == 3 and len(splits["testb"]) == 1
    d = LoadHistologyd()(splits["train"][0])
    assert d["image"].shape == (3, 40, 30) and d["label"].shape == (1, 40, 30)
    assert set(d["label"].unique().tolist()) == {0.0, 1.0}  # instance ids binarised


def test_datalist_splits_and_nested_fractions(tmp_path):
    make_layout(tmp_path, n_train=85)
    dl = build_glas_datalist(tmp_path, num_val=8)
    assert [d["id"] for d in dl["validation"]] == [f"train_{i}" for i in range(78, 86)]
    assert len(dl["training"]) == 77
    assert dl["label_fractions"]["0.1"] == [f"train_{i}" for i in range(1, 9)]  # the paper's 10% = 8 images
    sizes = [len(dl["label_fractions"][k]) for k in ("0.05", "0.1", "0.25", "0.5", "1")]
    assert sizes == [4, 8, 21, 42, 77]
    keys = ["0.05", "0.1", "0.25", "0.5", "1"]
    for small, big in zip(keys, keys[1:]):
        assert set(dl["label_fractions"][small]) <= set(dl["label_fractions"][big])
    test_ids = {d["id"] for d in dl["test"]}
    assert test_ids == {"testA_1", "testA_2", "testA_3"}
    assert not test_ids & {d["id"] for d in pretraining_items(dl)}  # no test images in pretraining by default
    assert test_ids <= {d["id"] for d in pretraining_items(dl, include_test=True)}
    assert [d["id"] for d in labelled_subset(dl, 0.1)] == dl["label_fractions"]["0.1"]


def test_random_rule_is_seeded_and_nested():
    pool = [f"train_{i}" for i in range(1, 41)]
    a = nested_label_subsets(pool, 40, rule="random", seed=3)
    b = nested_label_subsets(pool, 40, rule="random", seed=3)
    c = nested_label_subsets(pool, 40, rule="random", seed=4)
    assert a == b and a != c
    assert set(a["0.1"]) <= set(a["0.25"]) <= set(a["1"])


def test_missing_masks_listed_together(tmp_path):
    make_layout(tmp_path)
    (tmp_path / "train_3_anno.png").unlink()
    (tmp_path / "train_5_anno.png").unlink()
    with pytest.raises(ValueError) as err:
        scan_glas(tmp_path)
    assert "train_3.png" in str(err.value) and "train_5.png" in str(err.value)


def test_bad_files_named_before_compute(tmp_path):
    make_layout(tmp_path)
    _write(tmp_path, "train_2.png", size=(41, 30))  # size mismatch with its mask
    (tmp_path / "train_4.png").write_bytes(b"not a png")  # corrupt
    _write(tmp_path, "train_6.png", mode="L")  # grey, not RGB
    dl = build_glas_datalist(tmp_path, num_val=2)
    with pytest.raises(ValueError) as err:
        check_histology_files(dl["training"])
    msg = str(err.value)
    assert "train_2.png" in msg and "train_4.png" in msg and "train_6.png" in msg and "3 problem" in msg
    with pytest.raises(ValueError, match="train_2"):
        LoadHistologyd()({"image": str(tmp_path / "train_2.png"), "label": str(tmp_path / "train_2_anno.png")})
    with pytest.raises(ValueError, match="expected RGB"):
        LoadHistologyd(keys=["image"], label_key=None)({"image": str(tmp_path / "train_6.png")})
    with pytest.raises(ValueError, match="empty"):
        check_histology_files([])


def test_demo_fallback_is_announced(tmp_path, caplog):
    folder, is_demo = resolve_glas_dir("", tmp_path / "demo", num_train=4, num_test=2, size=(32, 48))
    assert is_demo and "SYNTHETIC" in caplog.text
    with pytest.raises(FileNotFoundError, match="nope.*does not exist"):  # a wrong path is an error, not the demo
        resolve_glas_dir(str(tmp_path / "nope"), tmp_path / "demo")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="empty.*holds no GlaS images"):
        resolve_glas_dir(str(tmp_path / "empty"), tmp_path / "demo")
    assert len(scan_glas(folder)["train"]) == 4
    make_layout(tmp_path / "real") if (tmp_path / "real").mkdir() is None else None
    assert resolve_glas_dir(str(tmp_path / "real"), tmp_path / "demo") == (str(tmp_path / "real"), False)
