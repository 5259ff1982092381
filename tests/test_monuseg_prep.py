"""Tests for data_prep/monuseg.py on tiny synthetic MoNuSeg-layout folders."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

MODULE_PATH = Path(__file__).resolve().parents[1] / "data_prep" / "monuseg.py"


def _load_module():
    spec = importlib.util.spec_from_file_location("data_prep_monuseg", MODULE_PATH)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


monuseg = _load_module()

H, W = 8, 10


def _xml(regions: list[list[tuple[float, float]]]) -> str:
    parts = ['<?xml version="1.0"?>', '<Annotations MicronsPerPixel="0.25">', '<Annotation Id="1">', "<Regions>"]
    for k, verts in enumerate(regions, 1):
        parts.append(f'<Region Id="{k}" Type="0"><Attributes/><Vertices>')
        parts += [f'<Vertex X="{x}" Y="{y}" Z="0"/>' for x, y in verts]
        parts.append("</Vertices></Region>")
    parts += ["</Regions>", "</Annotation>", "</Annotations>"]
    return "\n".join(parts)


# img1 regions (X = column, Y = row); pixel centres inside, top/left edges inclusive, bottom/right exclusive
IMG1_REGIONS = [
    [(1, 1), (4, 1), (4, 3), (1, 3)],  # rectangle -> rows 1-2, cols 1-3                      id 1
    [(6, 0), (9, 0), (6, 3)],  # triangle -> row 0: cols 6-8, row 1: cols 6-7, row 2: col 6    id 2
    [(7.0, 5.0), (12.5, 5.0), (12.5, 10.0), (7.0, 10.0)],  # partly outside -> rows 5-7, cols 7-9  id 3
    [(0, 6), (3, 6)],  # only 2 vertices -> degenerate
    [(0, 4), (3, 4), (3, 7), (0, 7)],  # rows 4-6, cols 0-2                                    id 4
    [(2, 5), (5, 5), (5, 8), (2, 8)],  # rows 5-7, cols 2-4, overlaps the previous one, wins    id 5
    [(0, 0.5), (2, 0.5), (4, 0.5)],  # 3 distinct but collinear -> no pixel -> degenerate
    [(20, 20), (25, 20), (25, 25)],  # entirely outside the image -> degenerate
]


def _expected_img1() -> np.ndarray:
    inst = np.zeros((H, W), np.uint16)
    inst[1:3, 1:4] = 1
    inst[0, 6:9] = 2
    inst[1, 6:8] = 2
    inst[2, 6] = 2
    inst[5:8, 7:10] = 3
    inst[4:7, 0:3] = 4
    inst[5:8, 2:5] = 5
    return inst


def _make_layout(root: Path, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Training: img1 (LZW RGB), img2 (PackBits RGBA), img10 (LZW, no regions); test: t1 (PackBits)."""
    tr_img = root / "MoNuSegTrainingData" / "Tissue Images"
    tr_ann = root / "MoNuSegTrainingData" / "Annotations"
    ts = root / "MoNuSegTestData"
    for d in (tr_img, tr_ann, ts):
        d.mkdir(parents=True)
    rgb = {}
    specs = [
        ("img1", tr_img, tr_ann, "RGB", "tiff_lzw", IMG1_REGIONS),
        ("img2", tr_img, tr_ann, "RGBA", "packbits", [[(0, 0), (3, 0), (3, 2), (0, 2)]]),
        ("img10", tr_img, tr_ann, "RGB", "tiff_lzw", []),
        ("t1", ts, ts, "RGB", "packbits", [[(6, 0), (9, 0), (6, 3)]]),
    ]
    for name, img_dir, ann_dir, mode, compression, regions in specs:
        arr = rng.integers(0, 256, size=(H, W, len(mode)), dtype=np.uint8)
        Image.fromarray(arr, mode).save(img_dir / f"{name}.tif", compression=compression)
        (ann_dir / f"{name}.xml").write_text(_xml(regions))
        rgb[name] = arr[..., :3]
    return rgb


def _read(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.array(im)


def test_polygon_mask_rectangle_and_clipping():
    r0, c0, m = monuseg.polygon_mask(np.array([[1, 1], [4, 1], [4, 3], [1, 3]]), (H, W))
    assert (r0, c0, m.shape, m.all()) == (1, 1, (2, 3), True)  # 3 x 2 = its geometric area
    r0, c0, m = monuseg.polygon_mask(np.array([[-5, -5], [2, -5], [2, 2], [-5, 2]]), (H, W))
    assert (r0, c0, m.shape, m.all()) == (0, 0, (2, 2), True)  # clipped to rows/cols 0-1
    assert monuseg.polygon_mask(np.array([[0, 0], [0, 0], [2, 2]]), (H, W)) is None  # 2 distinct vertices


def _pnpoly(xy, px, py):
    """Classic crossing-number point-in-polygon test (even-odd, same half-open edge convention)."""
    inside = False
    n = len(xy)
    for i in range(n):
        (xi, yi), (xj, yj) = xy[i], xy[(i + 1) % n]
        if (yi > py) != (yj > py) and px < (xj - xi) * (py - yi) / (yj - yi) + xi:
            inside = not inside
    return inside


def test_polygon_mask_matches_point_in_polygon():
    rng = np.random.default_rng(5)
    shape = (12, 14)
    for _ in range(25):
        k = int(rng.integers(3, 8))
        xy = np.round(rng.uniform(-4, 17, size=(k, 2)) * 2) / 2  # half-integers hit the edge conventions
        expected = np.array([[_pnpoly(xy, c, r) for c in range(shape[1])] for r in range(shape[0])])
        res = monuseg.polygon_mask(xy, shape)
        got = np.zeros(shape, bool)
        if res is not None:
            r0, c0, m = res
            got[r0 : r0 + m.shape[0], c0 : c0 + m.shape[1]] = m
            assert m[0].any() and m[-1].any() and m[:, 0].any() and m[:, -1].any()  # tight crop
        np.testing.assert_array_equal(got, expected)


def test_rasterize_occlusion_and_renumbering():
    polys = [np.array([[0, 0], [2, 0], [2, 2], [0, 2]]), np.array([[0, 0], [4, 0], [4, 4], [0, 4]])]
    inst, stats = monuseg.rasterize_regions(polys, (5, 5))
    # first square (rows/cols 0-1) completely covered by the second (rows/cols 0-3) -> occluded, id renumbered
    expected = np.zeros((5, 5), np.int32)
    expected[0:4, 0:4] = 1
    np.testing.assert_array_equal(inst, expected)
    assert stats == {"regions": 2, "nuclei": 1, "degenerate": 0, "occluded": 1}


def test_natural_order_and_fractions():
    names = [f"n{i}" for i in range(30, 0, -1)]
    subsets = monuseg.label_fraction_subsets(names)
    # 30 images: max(1, int(f * 30)): 0.05 -> 1, 0.1 -> 3, 0.25 -> 7, 0.5 -> 15, 1 -> 30
    assert {k: len(v) for k, v in subsets.items()} == {"0.05": 1, "0.1": 3, "0.25": 7, "0.5": 15, "1": 30}
    assert subsets["0.1"] == ["n1", "n2", "n3"]
    assert subsets["0.25"][:3] == subsets["0.1"]  # nested


def test_convert_end_to_end(tmp_path, capsys):
    rgb = _make_layout(tmp_path / "in", np.random.default_rng(0))
    out = tmp_path / "out"
    assert monuseg.main(["--input", str(tmp_path / "in"), "--output", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "training: 3 images, 6 nuclei" in printed and "3 degenerate regions skipped" in printed
    assert "test    : 1 images, 1 nuclei" in printed

    # images: RGB, identical pixels (alpha of the PackBits RGBA tile dropped)
    for name, split in (("img1", "Tr"), ("img2", "Tr"), ("img10", "Tr"), ("t1", "Ts")):
        img = _read(out / f"images{split}" / f"{name}.png")
        assert img.shape == (H, W, 3) and img.dtype == np.uint8
        np.testing.assert_array_equal(img, rgb[name])

    inst1 = _read(out / "instancesTr" / "img1.png")
    assert inst1.dtype == np.uint16
    np.testing.assert_array_equal(inst1, _expected_img1())
    lab1 = _read(out / "labelsTr" / "img1.png")
    assert lab1.dtype == np.uint8
    np.testing.assert_array_equal(lab1, np.where(_expected_img1() > 0, 255, 0))

    inst2 = _read(out / "instancesTr" / "img2.png")
    expected2 = np.zeros((H, W), np.uint16)
    expected2[0:2, 0:3] = 1
    np.testing.assert_array_equal(inst2, expected2)
    assert not _read(out / "instancesTr" / "img10.png").any()
    inst_t1 = _read(out / "instancesTs" / "t1.png")
    assert inst_t1.sum() == 6 and inst_t1[0, 6:9].tolist() == [1, 1, 1]

    datalist = json.loads((out / "datalist.json").read_text())
    assert [d["id"] for d in datalist["training"]] == ["img1", "img2", "img10"]  # natural order
    assert datalist["training"][0] == {
        "id": "img1",
        "image": "imagesTr/img1.png",
        "label": "labelsTr/img1.png",
        "instance": "instancesTr/img1.png",
    }
    assert datalist["test"] == [
        {"id": "t1", "image": "imagesTs/t1.png", "label": "labelsTs/t1.png", "instance": "instancesTs/t1.png"}
    ]
    # n=3: 0.05/0.1/0.25 -> 1, 0.5 -> round(1.5)=2, 1 -> 3
    assert datalist["label_fractions"] == {
        "0.05": ["img1"],
        "0.1": ["img1"],
        "0.25": ["img1"],
        "0.5": ["img1"],  # max(1, int(0.5 * 3))
        "1": ["img1", "img2", "img10"],
    }
    assert not list(out.rglob("*.tmp"))  # no temp files left behind


def test_unmatched_names_all_listed(tmp_path):
    rng = np.random.default_rng(1)
    root = tmp_path / "in"
    _make_layout(root, rng)
    arr = rng.integers(0, 256, size=(H, W, 3), dtype=np.uint8)
    Image.fromarray(arr).save(root / "MoNuSegTrainingData" / "Tissue Images" / "orphan_a.tif")
    Image.fromarray(arr).save(root / "MoNuSegTestData" / "orphan_b.tif")
    (root / "MoNuSegTrainingData" / "Annotations" / "lonely.xml").write_text(_xml([]))
    with pytest.raises(monuseg.ConversionError) as exc:
        monuseg.convert_monuseg(root, tmp_path / "out", progress=False)
    msg = str(exc.value)
    for name in ("orphan_a", "orphan_b", "lonely"):
        assert name in msg
    assert "3 unmatched" in msg
    assert not (tmp_path / "out" / "datalist.json").exists()


@pytest.mark.filterwarnings("ignore:Corrupt EXIF data")
def test_corrupt_tiff_and_xml_named(tmp_path):
    root = tmp_path / "in"
    _make_layout(root, np.random.default_rng(2))
    bad_tif = root / "MoNuSegTrainingData" / "Tissue Images" / "img2.tif"
    bad_tif.write_bytes(b"II*\x00garbage")
    with pytest.raises(monuseg.ConversionError, match="img2.tif"):
        monuseg.convert_monuseg(root, tmp_path / "out", progress=False)
    assert not (tmp_path / "out" / "datalist.json").exists()

    root2 = tmp_path / "in2"
    _make_layout(root2, np.random.default_rng(3))
    (root2 / "MoNuSegTestData" / "t1.xml").write_text("<Annotations><Region>")
    with pytest.raises(monuseg.ConversionError, match="t1.xml"):
        monuseg.convert_monuseg(root2, tmp_path / "out2", progress=False)

    with pytest.raises(FileNotFoundError, match="MoNuSegTestData"):
        monuseg.find_pairs(tmp_path / "nothing")


def test_interrupted_conversion_refused_until_rerun(tmp_path):
    """A half-written output (1 of 2 test images, no datalist.json) is never taken as a dataset."""
    from mdm_med.data.monuseg import build_monuseg_datalist, has_monuseg_layout, resolve_monuseg_dir

    root, out = tmp_path / "in", tmp_path / "out"
    _make_layout(root, np.random.default_rng(4))
    Image.fromarray(np.zeros((H, W, 3), np.uint8)).save(root / "MoNuSegTestData" / "t2.tif")
    (root / "MoNuSegTestData" / "t2.xml").write_text("<Annotations><Region>")  # fails after t1 is written
    with pytest.raises(monuseg.ConversionError, match="t2.xml"):
        monuseg.convert_monuseg(root, out, progress=False)
    assert (out / "imagesTs" / "t1.png").is_file() and not (out / "datalist.json").exists()
    unfinished = r"out is not a MoNuSeg layout: its conversion did not finish.*rerun python data_prep/monuseg.py"
    with pytest.raises(FileNotFoundError, match=unfinished):
        build_monuseg_datalist(out, num_val=1)
    with pytest.raises(FileNotFoundError, match=unfinished):
        resolve_monuseg_dir(str(out), tmp_path / "demo")
    assert not has_monuseg_layout(out)

    (root / "MoNuSegTestData" / "t2.xml").write_text(_xml([]))
    monuseg.convert_monuseg(root, out, progress=False)  # the rerun finishes it
    assert not (out / "conversion_incomplete.txt").exists()
    assert [d["id"] for d in build_monuseg_datalist(out, num_val=1)["test"]] == ["t1", "t2"]

    for kind in ("images", "labels", "instances"):  # files that no longer match the conversion's datalist.json
        (out / f"{kind}Ts" / "t2.png").rename(out / f"{kind}Ts" / "t3.png")
    with pytest.raises(ValueError) as err:
        build_monuseg_datalist(out, num_val=1)
    msg = str(err.value)
    assert "datalist.json lists test image 't2' but imagesTs/t2.png is missing" in msg
    assert "imagesTs/t3.png is not in the test list of datalist.json" in msg and "rerun python data_prep" in msg


def test_cli_help():
    res = subprocess.run(
        [sys.executable, str(MODULE_PATH), "--help"], check=False, capture_output=True, text=True, timeout=60
    )
    assert res.returncode == 0
    assert "--input" in res.stdout and "--output" in res.stdout


# ----------------------------------------------------------------------------------------------------------------
# data_prep/nnunet.py: atomic export and named JSON errors (its other tests are in test_radiology.py)
# ----------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def nnunet():
    spec = importlib.util.spec_from_file_location("data_prep_nnunet", MODULE_PATH.parent / "nnunet.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _nifti_datalist(base: Path, n: int = 3) -> dict:
    """``n`` one-channel cases of tiny NIfTI images and labels under ``base``."""
    import nibabel as nib

    base.mkdir(parents=True)
    entries = []
    for i in range(n):
        for kind in ("img", "seg"):
            nib.save(nib.Nifti1Image(np.full((4, 4, 2), i, np.uint8), np.eye(4)), str(base / f"{kind}{i}.nii.gz"))
        entries.append({"id": f"case{i}", "image": f"img{i}.nii.gz", "label": f"seg{i}.nii.gz"})
    return {"training": entries, "dataset": {"channel_names": {"0": "CT"}, "labels": {"background": 0, "a": 1}}}


def _tree(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_nnunet_export_is_atomic(tmp_path, nnunet, monkeypatch):
    """An export that fails half-way leaves nothing (a rerun works); a failed --overwrite keeps the old folder."""
    base, raw = tmp_path / "src", tmp_path / "raw"
    dl = _nifti_datalist(base)
    real, calls = nnunet._export_file, []

    def fail_on_fourth(*args):
        calls.append(args)
        if len(calls) == 4:
            raise OSError("No space left on device")
        return real(*args)

    monkeypatch.setattr(nnunet, "_export_file", fail_on_fourth)
    with pytest.raises(OSError, match="No space"):
        nnunet.datalist_to_nnunet(dl, raw, 5, "Toy", base_dir=base)
    assert list(raw.iterdir()) == []  # no half-written Dataset005_Toy, no temporary folder
    monkeypatch.setattr(nnunet, "_export_file", real)
    folder = nnunet.datalist_to_nnunet(dl, raw, 5, "Toy", base_dir=base)  # the rerun is not refused
    before = _tree(folder)
    assert json.loads(before["dataset.json"])["numTraining"] == 3 and "labelsTr/case2.nii.gz" in before

    calls.clear()
    monkeypatch.setattr(nnunet, "_export_file", fail_on_fourth)
    with pytest.raises(OSError, match="No space"):
        nnunet.datalist_to_nnunet({**dl, "training": dl["training"][:2]}, raw, 5, "Toy", base_dir=base, overwrite=True)
    assert _tree(folder) == before and [p.name for p in raw.iterdir()] == ["Dataset005_Toy"]
    monkeypatch.setattr(nnunet, "_export_file", real)
    nnunet.datalist_to_nnunet({**dl, "training": dl["training"][:2]}, raw, 5, "Toy", base_dir=base, overwrite=True)
    assert json.loads((folder / "dataset.json").read_text())["numTraining"] == 2
    assert not (folder / "labelsTr" / "case2.nii.gz").exists()


def test_nnunet_malformed_json_named(tmp_path, nnunet, capsys):
    base = tmp_path / "src"
    folder = nnunet.datalist_to_nnunet(_nifti_datalist(base), tmp_path / "raw", 6, "Toy", base_dir=base)
    (folder / "dataset.json").write_text('{"name": "Toy",')  # truncated
    with pytest.raises(ValueError, match=r"Dataset006_Toy/dataset.json is not valid JSON"):
        nnunet.nnunet_to_datalist(folder)
    assert nnunet.main(["to-datalist", str(folder)]) == 1
    assert "Dataset006_Toy/dataset.json is not valid JSON" in capsys.readouterr().err
    assert not (folder / "datalist.json").exists()
    (folder / "dataset.json").write_text(json.dumps({"channel_names": {"0": "CT"}, "labels": {"background": 0, "a": 1},
                                                     "numTraining": 3, "file_ending": ".nii.gz"}))
    assert nnunet.main(["to-datalist", str(folder), "--val-frac", "0", "--test-frac", "0"]) == 0
    assert len(json.loads((folder / "datalist.json").read_text())["training"]) == 3
    assert not [p.name for p in folder.iterdir() if p.name.startswith(".")]  # no temporary file left
    (base / "list.json").write_text("[]")
    with pytest.raises(ValueError, match=r"list.json must hold a JSON object"):
        nnunet.datalist_to_nnunet(base / "list.json", tmp_path / "raw", 7, "Toy")
