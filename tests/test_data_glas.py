import numpy as np
import pytest
import torch
from PIL import Image

from mdm_med.data.datalist import inference_items, labelled_subset, nested_label_subsets, pretraining_items
from mdm_med.data.glas import build_glas_datalist, resolve_glas_dir, scan_glas
from mdm_med.data.transforms import LoadHistologyd, check_datalist_files, check_histology_files


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


def test_mask_channels_checked_before_compute(tmp_path):
    """A colour test mask is refused by the pre-check, as LoadHistologyd refuses it, not first when testing."""
    make_layout(tmp_path)
    colour = np.zeros((30, 40, 3), np.uint8)
    colour[5:15, 5:20], colour[20:25, 22:30] = (255, 0, 0), (0, 255, 0)
    Image.fromarray(colour).save(tmp_path / "testA_2_anno.png")
    grey = np.zeros((30, 40), np.uint8)
    grey[5:15, 5:20] = 255
    Image.fromarray(np.stack([grey] * 3, axis=-1)).save(tmp_path / "testA_3_anno.png")  # RGB, equal channels
    dl = build_glas_datalist(tmp_path, num_val=2)
    with pytest.raises(ValueError) as err:
        check_datalist_files(dl)
    msg = str(err.value)
    assert "GlaS test: 1 problem" in msg and "testA_2_anno.png: mask has 3 different channels" in msg
    with pytest.raises(ValueError, match="testA_2_anno.png: mask has 3 different channels"):
        LoadHistologyd(keys=["image", "label", "instance"])(dl["test"][1])
    equal = [d for d in dl["test"] if d["id"] == "testA_3"]
    assert check_histology_files(equal) == 1  # accepted, as the loader accepts it
    assert LoadHistologyd(keys=["image", "label", "instance"])(equal[0])["label"].shape == (1, 40, 30)


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


# ----------------------------------------------------------------------------------------------------------------
# CleanLabelMapd: the test-time mask clean-up
# ----------------------------------------------------------------------------------------------------------------


def _label_map() -> np.ndarray:
    """(12, 12): a 5 x 5 class-1 ring (a 1-pixel hole at its centre), a 2-pixel class-1 speck, a 3-pixel class-2
    speck and a class-1 bar along the border enclosing nothing."""
    m = np.zeros((12, 12), np.int64)
    m[1:6, 1:6] = 1
    m[3, 3] = 0          # hole inside the ring
    m[8, 8:10] = 1       # 2-pixel speck
    m[10, 1:4] = 2       # 3-pixel class-2 speck
    m[0:4, 11] = 1       # 4-pixel bar on the border
    return m


def test_inference_items_lists_images_and_refuses_nothing(tmp_path):
    for name in ("img_10.png", "img_2.PNG", "img_2_anno.png", "notes.txt"):
        (tmp_path / name).write_bytes(b"")
    items = inference_items(tmp_path, (".png", ".bmp"), exclude="_anno")
    assert [d["image"] for d in items] == [str(tmp_path / "img_2.PNG"), str(tmp_path / "img_10.png")]
    with pytest.raises(FileNotFoundError, match="pass --dataset_dir"):
        inference_items("", (".png",))
    with pytest.raises(FileNotFoundError, match="missing_dir"):
        inference_items(tmp_path / "missing_dir", (".png",))
    with pytest.raises(FileNotFoundError, match=r"no images ending in \.bmp"):
        inference_items(tmp_path, (".bmp",))
    (tmp_path / "._img_3.png").write_bytes(b"")  # macOS resource fork: hidden, not an image
    assert len(inference_items(tmp_path, (".png",), exclude="_anno")) == 2
    (tmp_path / "img_10.bmp").write_bytes(b"")  # one output name (img_10_seg) for two inputs
    with pytest.raises(ValueError, match="img_10.bmp and img_10.png: their predictions would both be saved"):
        inference_items(tmp_path, (".png", ".bmp"), exclude="_anno")
    for name in ("a.nii", "a.nii.gz"):
        (tmp_path / name).write_bytes(b"")
    with pytest.raises(ValueError, match="a.nii and a.nii.gz"):
        inference_items(tmp_path, (".nii.gz", ".nii"))


def test_clean_label_map_removes_small_objects_per_class_and_fills_holes():
    from monai.data import MetaTensor

    from mdm_med.data.transforms import CleanLabelMapd

    m = _label_map()
    x = MetaTensor(torch.as_tensor(m[None], dtype=torch.float32), meta={"filename_or_obj": "a.png"})
    out = CleanLabelMapd("pred", min_object_size=3)({"pred": x})["pred"]
    assert isinstance(out, MetaTensor) and out.dtype == torch.float32 and out.meta["filename_or_obj"] == "a.png"
    got = out[0].numpy().astype(np.int64)
    assert got[8, 8:10].tolist() == [0, 0]                  # the 2-pixel speck is gone
    assert got[10, 1:4].tolist() == [2, 2, 2]               # 3 pixels of class 2 stay (not < 3)
    assert got[3, 3] == 0 and (got[0:4, 11] == 1).all()     # no filling asked for
    assert (x[0].numpy() == m).all()                        # the input is left alone

    filled = CleanLabelMapd("pred", min_object_size=4, fill_holes=True)({"pred": x})["pred"][0].numpy()
    assert filled[3, 3] == 1 and filled[10, 1:4].tolist() == [0, 0, 0] and (filled[0:4, 11] == 1).all()
    assert filled.sum() == 25 + 4                           # the ring with its hole filled, and the border bar


def test_clean_label_map_defaults_and_bad_input():
    from mdm_med.data.transforms import CleanLabelMapd

    x = torch.as_tensor(_label_map()[None])
    assert torch.equal(CleanLabelMapd("pred")({"pred": x})["pred"], x)  # 0 / False: unchanged
    with pytest.raises(ValueError, match="label map"):
        CleanLabelMapd("pred", min_object_size=2)({"pred": torch.zeros(2, 4, 4)})  # one-hot
    with pytest.raises(ValueError, match="non-integer"):
        CleanLabelMapd("pred", fill_holes=True)({"pred": torch.full((1, 4, 4), 0.5)})
    with pytest.raises(ValueError, match="min_object_size"):
        CleanLabelMapd("pred", min_object_size=-1)


def test_touching_glands_stay_apart_for_object_metrics(tmp_path):
    """An instance-labelled mask reaches the object metrics as its glands; a 0/255 mask as its components."""
    from mdm_med.object_metrics import GlaSObjectF1Metric, to_instance_map

    _write(tmp_path, "train_1.png")
    _write(tmp_path, "testA_1.png")
    mask = np.zeros((30, 40), np.uint8)
    mask[5:15, 5:20], mask[5:15, 20:35] = 1, 2  # two glands that touch
    Image.fromarray(mask).save(tmp_path / "testA_1_anno.bmp")
    Image.fromarray(np.where(mask > 0, 255, 0).astype(np.uint8)).save(tmp_path / "train_1_anno.png")
    splits = scan_glas(tmp_path)
    test = LoadHistologyd(keys=["image", "label", "instance"])(splits["testa"][0])
    assert set(test["label"].unique().tolist()) == {0.0, 1.0} and set(test["instance"].unique().tolist()) == {0, 1, 2}
    assert to_instance_map(test["instance"]).max() == 2 and to_instance_map(test["label"]).max() == 1
    binary = LoadHistologyd(keys=["image", "label", "instance"])(splits["train"][0])
    assert to_instance_map(binary["instance"]).max() == 1  # 0/255: one component, not "object 255"
    merged = test["label"][None].long()  # a prediction that joins the two glands
    f1 = GlaSObjectF1Metric()
    assert f1(merged, test["instance"][None]).item() < 1.0 and f1(merged, test["label"][None].long()).item() == 1.0


def test_masks_are_written_atomically(tmp_path, monkeypatch):
    from monai.data import PILWriter
    from PIL import Image

    from mdm_med.data.transforms import AtomicPILWriter

    def save(mask):
        writer = AtomicPILWriter(output_dtype=np.uint8)
        writer.set_data_array(mask, channel_dim=None)
        writer.write(tmp_path / "case_seg.png", verbose=True)

    save(np.ones((4, 5), dtype=np.uint8))
    before = (tmp_path / "case_seg.png").read_bytes()
    assert np.asarray(Image.open(tmp_path / "case_seg.png")).shape == (5, 4)

    def crash(self, filename, verbose=False, **kwargs):
        open(filename, "wb").write(b"\x89PNG half")  # killed mid-write
        raise KeyboardInterrupt

    monkeypatch.setattr(PILWriter, "write", crash)
    with pytest.raises(KeyboardInterrupt):
        save(np.zeros((4, 5), dtype=np.uint8))
    assert (tmp_path / "case_seg.png").read_bytes() == before  # the earlier mask, whole
    assert [p.name for p in tmp_path.iterdir()] == ["case_seg.png"]  # no temporary file left
