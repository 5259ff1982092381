"""Tests for mdm_med.data.radiology and the data_prep converters (all data built in tmp_path)."""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import nrrd
import numpy as np
import pydicom
import pytest
import torch
from monai.transforms import Orientationd
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, ImplicitVRLittleEndian, generate_uid

from mdm_med.data.datalist import labelled_subset, pretraining_items
from mdm_med.data.radiology import (
    LPS_TO_RAS,
    LoadRadiologyd,
    check_radiology_files,
    load_dicom_series,
    load_nrrd,
    make_split_datalist,
    radiology_preprocessing,
    split_cases,
)

ROOT = Path(__file__).resolve().parents[1]
RAS_LABELS = (("L", "R"), ("P", "A"), ("I", "S"))


def _script(name: str):
    spec = importlib.util.spec_from_file_location(f"data_prep_{name}", ROOT / "data_prep" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def decathlon():
    return _script("decathlon")


@pytest.fixture(scope="module")
def nnunet():
    return _script("nnunet")


def _assert_same_world(out: np.ndarray, out_affine: np.ndarray, src: np.ndarray, src_affine: np.ndarray) -> None:
    """Every output voxel must hold the source value found at the same RAS world position."""
    out_affine = np.asarray(out_affine, dtype=np.float64)
    idx = np.indices(out.shape).reshape(3, -1)
    world = out_affine[:3, :3] @ idx + out_affine[:3, 3:4]
    src_idx = np.linalg.inv(src_affine) @ np.vstack([world, np.ones((1, world.shape[1]))])
    src_int = np.rint(src_idx[:3]).astype(int)
    np.testing.assert_allclose(src_idx[:3], src_int, atol=1e-4)
    np.testing.assert_array_equal(out.reshape(-1), src[tuple(src_int)])


def _save_nifti(path: Path, data: np.ndarray, affine: np.ndarray) -> Path:
    nib.save(nib.Nifti1Image(data, affine), str(path))
    return path


# a non-RAS affine: i -> posterior (2 mm), j -> superior (1.5 mm), k -> left (3 mm), i.e. "PSL"
PSL_AFFINE = np.array([[0.0, 0.0, -3.0, 30.0], [-2.0, 0.0, 0.0, 10.0], [0.0, 1.5, 0.0, -5.0], [0.0, 0.0, 0.0, 1.0]])


# ------------------------------------------------------------------------------------------------
# NIfTI
# ------------------------------------------------------------------------------------------------


def test_nifti_non_ras_to_ras(tmp_path):
    data = np.arange(4 * 5 * 6, dtype=np.float32).reshape(4, 5, 6)
    label = (np.arange(data.size).reshape(data.shape) % 3).astype(np.uint8)
    img_p = _save_nifti(tmp_path / "img.nii.gz", data, PSL_AFFINE)
    lab_p = _save_nifti(tmp_path / "lab.nii.gz", label, PSL_AFFINE)
    assert nib.aff2axcodes(PSL_AFFINE) == ("P", "S", "L")

    pipe = radiology_preprocessing(modality="CT", target_spacing=None, ct_window=(0.0, 119.0))
    out = pipe({"image": str(img_p), "label": str(lab_p)})
    img, lab = out["image"], out["label"]
    assert img.shape == (1, 6, 4, 5) and lab.shape == (1, 6, 4, 5)
    assert nib.aff2axcodes(img.affine.numpy()) == ("R", "A", "S")
    np.testing.assert_allclose(np.diag(img.affine.numpy())[:3], [3.0, 2.0, 1.5])
    expected = np.clip(data, 0, 119) / 119.0 * 2.0 - 1.0
    _assert_same_world(img[0].numpy(), img.affine.numpy(), expected.astype(np.float32), PSL_AFFINE)
    assert lab.dtype == torch.int16
    _assert_same_world(lab[0].numpy(), lab.affine.numpy(), label.astype(np.int16), PSL_AFFINE)
    assert img.meta["filename_or_obj"] == str(img_p)


def test_spacing_resampling_shape(tmp_path):
    affine = np.diag([2.0, 1.0, 3.0, 1.0])
    data = np.random.default_rng(0).random((4, 5, 6)).astype(np.float32) * 100
    label = (data > 50).astype(np.uint8)
    img_p = _save_nifti(tmp_path / "img.nii.gz", data, affine)
    lab_p = _save_nifti(tmp_path / "lab.nii.gz", label, affine)
    out = radiology_preprocessing(modality="MR", target_spacing=(1.0, 1.0, 1.0))({"image": img_p, "label": lab_p})
    # MONAI keeps the voxel-centre extent: (n - 1) * old / new + 1
    assert out["image"].shape == (1, 7, 5, 16) and out["label"].shape == (1, 7, 5, 16)
    np.testing.assert_allclose(out["image"].pixdim.numpy(), [1.0, 1.0, 1.0])
    assert out["label"].dtype == torch.int16
    assert set(torch.unique(out["label"]).tolist()) <= {0, 1}
    native = radiology_preprocessing(modality="MR", target_spacing=None)({"image": img_p, "label": lab_p})
    assert native["image"].shape == (1, 4, 5, 6)


def test_ct_window_normalisation(tmp_path):
    data = np.linspace(-2000, 2000, 81, dtype=np.float32).reshape(3, 3, 9)  # steps of 50 HU
    img_p = _save_nifti(tmp_path / "ct.nii.gz", data, np.eye(4))
    img = radiology_preprocessing(keys=("image",), modality="CT", target_spacing=None)({"image": img_p})["image"][0]
    assert float(img.min()) == -1.0 and float(img.max()) == 1.0
    flat, hu = img.numpy().reshape(-1), data.reshape(-1)
    np.testing.assert_allclose(flat[hu == 0], 0.0, atol=1e-6)
    np.testing.assert_allclose(flat[hu == 500], 0.5, atol=1e-6)
    np.testing.assert_allclose(flat[hu <= -1000], -1.0)
    narrow = radiology_preprocessing(keys=("image",), modality="CT", target_spacing=None, ct_window=(-100, 300))
    flat = narrow({"image": img_p})["image"][0].numpy().reshape(-1)
    np.testing.assert_allclose(flat[hu == 100], 0.0, atol=1e-6)
    np.testing.assert_allclose(flat[hu == 300], 1.0, atol=1e-6)
    assert flat.min() == -1.0 and flat.max() == 1.0
    with pytest.raises(ValueError, match="modality"):
        radiology_preprocessing(modality="PET")


def test_mr_percentile_normalisation(tmp_path):
    data = (np.arange(1000, dtype=np.float32) ** 1.5).reshape(10, 10, 10)
    img_p = _save_nifti(tmp_path / "mr.nii.gz", data, np.eye(4))
    img = radiology_preprocessing(keys=("image",), modality="MR", target_spacing=None)({"image": img_p})["image"][0]
    lo, hi = np.percentile(data, [0.5, 99.5])
    expected = np.clip((data - lo) / (hi - lo), 0, 1) * 2 - 1
    np.testing.assert_allclose(img.numpy(), expected, atol=1e-5)
    assert float(img.min()) == -1.0 and float(img.max()) == 1.0
    assert 1 <= int((img == -1).sum()) <= 10  # about 0.5 % of the voxels clipped at the bottom


def test_load_errors(tmp_path):
    missing = tmp_path / "nope.nii.gz"
    with pytest.raises(FileNotFoundError, match="nope.nii.gz"):
        LoadRadiologyd(keys="image")({"image": str(missing)})
    with pytest.raises(RuntimeError) as info:  # Compose wraps the error, the cause names the file
        radiology_preprocessing(keys=("image",))({"image": str(missing)})
    assert "nope.nii.gz" in str(info.value.__cause__)

    img_p = _save_nifti(tmp_path / "img_a.nii.gz", np.zeros((4, 5, 6), np.float32), np.eye(4))
    lab_p = _save_nifti(tmp_path / "lab_b.nii.gz", np.zeros((4, 5, 5), np.uint8), np.eye(4))
    with pytest.raises(ValueError, match="shape mismatch") as info:
        LoadRadiologyd(keys=("image", "label"))({"image": img_p, "label": lab_p})
    assert "img_a.nii.gz" in str(info.value) and "lab_b.nii.gz" in str(info.value)

    bad = np.zeros((4, 5, 6), np.float32)
    bad[1, 2, 3] = np.nan
    nan_p = _save_nifti(tmp_path / "has_nan.nii.gz", bad, np.eye(4))
    with pytest.raises(ValueError, match=r"has_nan\.nii\.gz contains 1 NaN"):
        LoadRadiologyd(keys="image")({"image": nan_p})

    (tmp_path / "x.mhd").write_text("x")
    with pytest.raises(ValueError, match="unsupported image format"):
        LoadRadiologyd(keys="image")({"image": tmp_path / "x.mhd"})


def test_label_values_checked(tmp_path):
    img_p = _save_nifti(tmp_path / "img.nii.gz", np.zeros((4, 5, 6), np.float32), np.eye(4))
    label = np.zeros((4, 5, 6), np.uint8)
    label[1, 1, 1] = 7
    seven_p = _save_nifti(tmp_path / "seven.nii.gz", label, np.eye(4))
    half_p = _save_nifti(tmp_path / "half.nii.gz", label.astype(np.float32) / 14, np.eye(4))
    ok = {"image": img_p, "label": seven_p}
    assert LoadRadiologyd(keys=("image", "label"), num_classes=8)(ok)["label"].max() == 7
    with pytest.raises(ValueError, match=r"seven\.nii\.gz holds value\(s\) 7; expected class indices 0\.\.2"):
        LoadRadiologyd(keys=("image", "label"), num_classes=3)(ok)
    with pytest.raises(RuntimeError) as info:  # Compose wraps the error, the cause names the file
        radiology_preprocessing(modality="MR", target_spacing=None, num_classes=3)(ok)
    assert "seven.nii.gz holds value(s) 7" in str(info.value.__cause__)
    with pytest.raises(ValueError, match=r"half\.nii\.gz holds value\(s\) 0\.5; expected class indices integers"):
        LoadRadiologyd(keys=("image", "label"))({"image": img_p, "label": half_p})  # not silently cut to 0
    with pytest.raises(RuntimeError) as info:
        radiology_preprocessing(keys=("image", "mask"), modality="MR", target_spacing=None)(
            {"image": img_p, "mask": half_p}
        )
    assert "half.nii.gz holds value(s) 0.5" in str(info.value.__cause__)


def test_affine_mismatch_is_an_error(tmp_path):
    img_p = _save_nifti(tmp_path / "img.nii.gz", np.zeros((4, 5, 6), np.float32), np.eye(4))
    flipped = _save_nifti(tmp_path / "flipped.nii.gz", np.zeros((4, 5, 6), np.uint8), np.diag([-1.0, 1, 1, 1]))
    close = _save_nifti(tmp_path / "close.nii.gz", np.zeros((4, 5, 6), np.uint8), np.eye(4) + 1e-5)
    LoadRadiologyd(keys=("image", "label"))({"image": img_p, "label": close})  # within the tolerance
    with pytest.raises(ValueError, match=r"affine mismatch: 'image' \S*img\.nii\.gz and 'label' \S*flipped\.nii\.gz"):
        LoadRadiologyd(keys=("image", "label"))({"image": img_p, "label": flipped})


def test_unreadable_file_and_channels_named(tmp_path):
    img_p = _save_nifti(tmp_path / "img.nii.gz", np.random.default_rng(0).random((8, 8, 8), np.float32), np.eye(4))
    data = img_p.read_bytes()
    cut = tmp_path / "cut.nii.gz"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=r"'image': cannot read \S*cut\.nii\.gz: EOFError"):
        LoadRadiologyd(keys="image")({"image": cut})
    two_p = _save_nifti(tmp_path / "two.nii.gz", np.zeros((4, 5, 6, 2), np.float32), np.eye(4))
    assert (
        LoadRadiologyd(keys="image", in_channels=2, ensure_channel_first=True)({"image": two_p})["image"].shape[0] == 2
    )
    with pytest.raises(ValueError, match=r"two\.nii\.gz has 2 channel\(s\), expected in_channels=1"):
        LoadRadiologyd(keys="image", in_channels=1)({"image": two_p})
    lab_p = _save_nifti(tmp_path / "lab.nii.gz", np.zeros((4, 5, 6), np.uint8), np.eye(4))
    items = [{"image": str(cut)}, {"image": str(two_p), "label": str(lab_p)}, {"image": str(tmp_path / "gone.nii")}]
    with pytest.raises(ValueError) as info:
        check_radiology_files(items, what="toy", in_channels=1)
    msg = str(info.value)
    assert msg.startswith("toy: 3 problem(s)") and "cut.nii.gz" in msg and "two.nii.gz" in msg and "gone.nii" in msg
    with pytest.raises(ValueError, match="toy is empty"):
        check_radiology_files([], what="toy")


# ------------------------------------------------------------------------------------------------
# NRRD
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("space", "suffix", "signs"), [("left-posterior-superior", ".nrrd", (-1, -1, 1)), ("RAS", ".nhdr", (1, 1, 1))]
)
def test_nrrd_geometry(tmp_path, space, suffix, signs):
    data = np.arange(3 * 4 * 5, dtype=np.int16).reshape(3, 4, 5)
    directions = np.array([[0.0, 2.0, 0.0], [0.0, 0.0, 1.5], [-3.0, 0.0, 0.0]])  # one row per array axis
    origin = np.array([10.0, -20.0, 5.0])
    path = tmp_path / f"vol{suffix}"
    header = {"space": space, "space directions": directions, "space origin": origin}
    nrrd.write(str(path), data, header, detached_header=suffix == ".nhdr")

    expected_affine = np.eye(4)
    expected_affine[:3, :3] = directions.T
    expected_affine[:3, 3] = origin
    expected_affine = np.diag([*signs, 1.0]) @ expected_affine
    array, affine = load_nrrd(path)
    assert array.shape == (3, 4, 5) and array.dtype == np.float32
    np.testing.assert_allclose(affine, expected_affine)

    d = LoadRadiologyd("image", ensure_channel_first=True)({"image": str(path)})
    d = Orientationd("image", axcodes="RAS", labels=RAS_LABELS)(d)
    assert nib.aff2axcodes(d["image"].affine.numpy()) == ("R", "A", "S")
    _assert_same_world(d["image"][0].numpy(), d["image"].affine.numpy(), data.astype(np.float32), expected_affine)


def test_nrrd_channel_axis(tmp_path):
    data = np.arange(2 * 3 * 4 * 5, dtype=np.float32).reshape(3, 4, 5, 2)
    nan = [np.nan] * 3
    header = {"space": "LPS", "space directions": [[1, 0, 0], [0, 1, 0], [0, 0, 1], nan], "space origin": [0, 0, 0]}
    nrrd.write(str(tmp_path / "vec.nrrd"), data, header)
    array, affine = load_nrrd(tmp_path / "vec.nrrd")
    assert array.shape == (2, 3, 4, 5)
    np.testing.assert_array_equal(array[1], data[..., 1])
    np.testing.assert_allclose(affine, LPS_TO_RAS)


# ------------------------------------------------------------------------------------------------
# DICOM
# ------------------------------------------------------------------------------------------------


def _write_slice(path, pixels, ipp, iop, series_uid, instance, spacing=(0.5, 0.75), implicit=False, series_number=1):
    """Minimal CT image storage file; PixelSpacing = (row spacing, column spacing)."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ImplicitVRLittleEndian if implicit else ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.PatientID = "anon"
    ds.Modality = "CT"
    ds.StudyInstanceUID = "1.2.826.0.1.3680043.8.498.1"
    ds.SeriesInstanceUID = series_uid
    ds.SeriesNumber = series_number
    ds.InstanceNumber = instance
    ds.ImagePositionPatient = [float(v) for v in ipp]
    ds.ImageOrientationPatient = [float(v) for v in iop]
    ds.PixelSpacing = list(spacing)
    ds.SliceThickness = 2.5
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
    ds.RescaleSlope = 2
    ds.RescaleIntercept = -1024
    ds.PixelData = pixels.astype("<i2").tobytes()
    ds.save_as(path, enforce_file_format=True)


AXIAL = ((1, 0, 0, 0, 1, 0), (0, 0, 1))
OBLIQUE = ((0.6, 0.8, 0, 0, 0, -1), (-0.8, 0.6, 0))  # (ImageOrientationPatient, row x col normal)
NAME_ORDER = [3, 0, 4, 1, 2]  # slice k is written to file img_{NAME_ORDER[k]}.dcm
INSTANCE_ORDER = [2, 5, 1, 4, 3]


def _write_series(folder: Path, orientation=AXIAL, series_uid="1.2.3.4.1", rows=3, cols=4, n=5, **kw):
    """Slice k has raw pixels arange + 100 k and lies at base + 2.5 k * normal; returns (raw, ipps)."""
    iop, normal = orientation
    folder.mkdir(parents=True, exist_ok=True)
    raw = np.stack([np.arange(rows * cols).reshape(rows, cols) + 100 * k for k in range(n)]).astype(np.int16)
    ipps = [np.array([-10.0, 20.0, -30.0]) + 2.5 * k * np.asarray(normal, float) for k in range(n)]
    for k in range(n):
        _write_slice(folder / f"img_{NAME_ORDER[k]}.dcm", raw[k], ipps[k], iop, series_uid, INSTANCE_ORDER[k], **kw)
    return raw, ipps


@pytest.mark.parametrize("orientation", [AXIAL, OBLIQUE], ids=["axial", "oblique"])
def test_dicom_series_order_and_rescale(tmp_path, orientation):
    folder = tmp_path / "series"
    raw, ipps = _write_series(folder, orientation)
    (folder / "notes.txt").write_text("not dicom")
    with pytest.warns(UserWarning, match="notes.txt"):
        volume, affine = load_dicom_series(folder)
    assert volume.shape == (4, 3, 5) and volume.dtype == np.float32  # (columns, rows, slices)
    for k in range(5):  # file names and InstanceNumber are shuffled: order must follow the positions
        np.testing.assert_array_equal(volume[:, :, k], raw[k].T.astype(np.float32) * 2 - 1024)
        np.testing.assert_allclose(affine @ [0, 0, k, 1], LPS_TO_RAS @ [*ipps[k], 1], atol=1e-6)
    iop = np.asarray(orientation[0], float)
    np.testing.assert_allclose(affine[:3, 0], (LPS_TO_RAS[:3, :3] @ iop[:3]) * 0.75)  # column spacing
    np.testing.assert_allclose(affine[:3, 1], (LPS_TO_RAS[:3, :3] @ iop[3:]) * 0.5)  # row spacing

    import SimpleITK as sitk  # independent reader (GDCM) as a cross-check

    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(folder)))
    ref = reader.Execute()
    np.testing.assert_allclose(sitk.GetArrayFromImage(ref).transpose(2, 1, 0), volume)
    ref_affine = np.eye(4)
    ref_affine[:3, :3] = np.asarray(ref.GetDirection()).reshape(3, 3) * np.asarray(ref.GetSpacing())
    ref_affine[:3, 3] = ref.GetOrigin()
    np.testing.assert_allclose(LPS_TO_RAS @ ref_affine, affine, atol=1e-5)

    with pytest.warns(UserWarning, match="notes.txt"):
        d = LoadRadiologyd("image", ensure_channel_first=True)({"image": str(folder)})
    assert d["image"].shape == (1, 4, 3, 5)
    d = Orientationd("image", axcodes="RAS", labels=RAS_LABELS)(d)
    _assert_same_world(d["image"][0].numpy(), d["image"].affine.numpy(), volume, affine)


def test_dicom_series_errors(tmp_path):
    folder = tmp_path / "two"
    _write_series(folder, series_uid="1.2.3.4.1")
    _write_slice(folder / "other.dcm", np.zeros((3, 4)), (0, 0, 0), AXIAL[0], "1.2.3.4.2", 1, implicit=True)
    with pytest.raises(ValueError, match="2 DICOM series"):
        load_dicom_series(folder)
    volume, _ = load_dicom_series(folder, series_uid="1.2.3.4.2")
    assert volume.shape == (4, 3, 1)
    np.testing.assert_array_equal(volume, -1024)

    bad = tmp_path / "bad"
    _write_series(bad)
    _write_slice(bad / "wrong_size.dcm", np.zeros((3, 5)), (-10, 20, 0), AXIAL[0], "1.2.3.4.1", 9)
    with pytest.raises(ValueError, match="wrong_size.dcm"):
        load_dicom_series(bad)

    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "readme.txt").write_text("hello")
    with pytest.warns(UserWarning, match="readme.txt"), pytest.raises(ValueError, match="no DICOM image files.*empty"):
        load_dicom_series(empty)
    with pytest.raises(FileNotFoundError, match="missing_dir"):
        load_dicom_series(tmp_path / "missing_dir")


def test_real_pydicom_ct_file(tmp_path):
    src = Path(pydicom.data.get_testdata_file("CT_small.dcm"))
    folder = tmp_path / "ct_small"
    folder.mkdir()
    shutil.copy(src, folder / "slice.dcm")
    volume, affine = load_dicom_series(folder)
    ds = pydicom.dcmread(src)
    expected = ds.pixel_array.astype(np.float64) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    assert volume.shape == (ds.Columns, ds.Rows, 1) == (128, 128, 1)
    assert volume[20, 10, 0] == pytest.approx(expected[10, 20])
    np.testing.assert_allclose(volume[:, :, 0], expected.T)
    np.testing.assert_allclose(affine[:3, 3], LPS_TO_RAS[:3, :3] @ np.asarray(ds.ImagePositionPatient, float))
    np.testing.assert_allclose(np.linalg.norm(affine[:3, :2], axis=0), [float(v) for v in ds.PixelSpacing[::-1]])
    np.testing.assert_allclose(np.linalg.norm(affine[:3, 2]), float(ds.SliceThickness))
    single, _ = load_dicom_series(src)  # a single file works too
    np.testing.assert_array_equal(single, volume)


def test_dicom_to_nifti_converter(tmp_path):
    conv = _script("dicom_to_nifti")
    src = tmp_path / "dicom"
    _write_series(src / "patA", series_uid="1.2.3.9.1")
    _write_series(src / "mixed", series_uid="1.2.3.9.2", n=3, series_number=2)
    _write_slice(src / "mixed" / "x.dcm", np.ones((3, 4)), (0, 0, 0), AXIAL[0], "1.2.3.9.3", 1, series_number=7)
    records = conv.convert(src, tmp_path / "out")
    by_name = {r["name"]: r for r in records}
    assert by_name["patA"]["error"] is None and "2 DICOM series" in by_name["mixed"]["error"]
    img = nib.load(tmp_path / "out" / "patA.nii.gz")
    volume, affine = load_dicom_series(src / "patA")
    np.testing.assert_array_equal(img.get_fdata(), volume)
    np.testing.assert_allclose(img.affine, affine, atol=1e-5)
    records = conv.convert(src, tmp_path / "out", all_series=True, dtype="int16", overwrite=True)
    assert all(r["error"] is None for r in records)
    assert {p.name for p in (tmp_path / "out").iterdir()} == {"patA.nii.gz", "mixed_s2.nii.gz", "mixed_s7.nii.gz"}
    assert nib.load(tmp_path / "out" / "mixed_s7.nii.gz").get_data_dtype() == np.int16


def test_corrupt_or_missing_dicom_slice_is_an_error(tmp_path):
    conv = _script("dicom_to_nifti")
    src = tmp_path / "dicom"
    _write_series(src / "empty_slice")
    (src / "empty_slice" / "img_1.dcm").write_bytes(b"")  # 0-byte file among the slices
    _write_series(src / "cut_header")
    data = (src / "cut_header" / "img_4.dcm").read_bytes()
    (src / "cut_header" / "img_4.dcm").write_bytes(data[:300])  # header cut before Rows / Columns
    _write_series(src / "gap")
    (src / "gap" / "img_4.dcm").unlink()  # slice k = 2 missing: gaps 2.5, 5, 2.5 mm
    _write_series(src / "good")
    with pytest.raises(ValueError, match=r"corrupt DICOM file\(s\) in \S*empty_slice: img_1\.dcm"):
        load_dicom_series(src / "empty_slice")
    with pytest.raises(ValueError, match=r"corrupt DICOM file\(s\) in \S*cut_header: img_4\.dcm"):
        load_dicom_series(src / "cut_header")
    with pytest.raises(
        ValueError, match=r"non-uniform slice spacing in \S*gap .*: 5 mm between img_0.dcm and img_1.dcm"
    ):
        load_dicom_series(src / "gap")
    records = {r["name"]: r for r in conv.convert(src, tmp_path / "out")}
    assert records["good"]["error"] is None
    assert "img_1.dcm" in records["empty_slice"]["error"] and "img_4.dcm" in records["cut_header"]["error"]
    assert "non-uniform slice spacing" in records["gap"]["error"]
    assert {p.name for p in (tmp_path / "out").iterdir()} == {"good.nii.gz"}
    assert conv.main([str(src), str(tmp_path / "out2")]) == 1


def test_dicom_to_nifti_writes_atomically(tmp_path, monkeypatch):
    conv = _script("dicom_to_nifti")
    _write_series(tmp_path / "dicom" / "patA")
    real_save = nib.save

    def interrupted(img, path):  # writes half a file, then dies (disk full, kill)
        Path(path).write_bytes(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(nib, "save", interrupted)
    records = conv.convert(tmp_path / "dicom", tmp_path / "out")
    assert "disk full" in records[0]["error"]
    assert not list((tmp_path / "out").iterdir())  # no truncated output, no temporary file
    monkeypatch.setattr(nib, "save", real_save)
    records = conv.convert(tmp_path / "dicom", tmp_path / "out")  # the rerun converts it (nothing to overwrite)
    assert records[0]["error"] is None and [p.name for p in (tmp_path / "out").iterdir()] == ["patA.nii.gz"]


# ------------------------------------------------------------------------------------------------
# Decathlon converter
# ------------------------------------------------------------------------------------------------


def _fake_msd(root: Path, n: int = 10) -> Path:
    for sub in ("imagesTr", "labelsTr", "imagesTs"):
        (root / sub).mkdir(parents=True)
    cases = [f"la_{i:03d}" for i in range(n)]
    for i, c in enumerate(cases):
        _save_nifti(root / "imagesTr" / f"{c}.nii.gz", np.full((4, 4, 3), i, np.float32), np.eye(4))
        _save_nifti(root / "labelsTr" / f"{c}.nii.gz", np.zeros((4, 4, 3), np.uint8), np.eye(4))
    for i in range(2):
        _save_nifti(root / "imagesTs" / f"la_1{i:02d}.nii.gz", np.zeros((4, 4, 3), np.float32), np.eye(4))
    (root / "imagesTr" / "._la_000.nii.gz").write_bytes(b"\x00\x05\x16\x07 AppleDouble junk")
    (root / "labelsTr" / "._la_000.nii.gz").write_bytes(b"junk")
    meta = {
        "name": "LeftAtrium",
        "modality": {"0": "MRI"},
        "labels": {"0": "background", "1": "left atrium"},
        "numTraining": n,
        "training": [{"image": f"./imagesTr/{c}.nii.gz", "label": f"./labelsTr/{c}.nii.gz"} for c in cases],
        "test": ["./imagesTs/la_100.nii.gz", "./imagesTs/la_101.nii.gz"],
    }
    (root / "dataset.json").write_text(json.dumps(meta))
    return root


def test_decathlon_split(tmp_path, decathlon, nnunet, capsys):
    root = _fake_msd(tmp_path / "Task02_Heart")
    dl = decathlon.build_datalist(root)
    assert dl == decathlon.build_datalist(root)  # deterministic
    assert dl["training"] != decathlon.build_datalist(root, seed=1)["training"]
    train, val, test = ([e["image"] for e in dl[k]] for k in ("training", "validation", "test"))
    assert (len(train), len(val), len(test)) == (7, 1, 2)
    assert train == sorted(train)
    assert sorted(train + val + test) == [f"imagesTr/la_{i:03d}.nii.gz" for i in range(10)]
    for e in dl["training"] + dl["validation"] + dl["test"]:
        assert (root / e["image"]).is_file() and (root / e["label"]).is_file()
        assert e["label"] == e["image"].replace("imagesTr", "labelsTr")
    assert [e["id"] for e in dl["training"]] == [Path(p).name[: -len(".nii.gz")] for p in train]
    fr = dl["label_fractions"]
    assert list(fr) == ["0.05", "0.1", "0.25", "0.5", "1"]  # f"{f:g}" keys, as mdm_med.data.datalist
    assert [len(v) for v in fr.values()] == [1, 1, 1, 3, 7]  # max(1, int(f * 7)), as GlaS and MoNuSeg
    for v in fr.values():
        assert v == [e["id"] for e in dl["training"][: len(v)]]  # nested prefixes of the sorted training list
    assert labelled_subset(dl, 0.25) == dl["training"][:1] and labelled_subset(dl, 1.0) == dl["training"]
    assert len(pretraining_items(dl)) == 8  # training + validation, never the test split
    assert len(pretraining_items(dl, include_unlabeled=True)) == 10  # + imagesTs, when a config asks
    assert [e["image"] for e in dl["unlabeled"]] == ["imagesTs/la_100.nii.gz", "imagesTs/la_101.nii.gz"]
    assert dl["name"] == "LeftAtrium" and Path(dl["source"]) == root.resolve()
    assert dl["dataset"]["labels"] == {"background": 0, "left atrium": 1}
    custom = decathlon.build_datalist(root, val_frac=0.2, test_frac=0.3, fractions=(0.5,))
    assert (len(custom["training"]), len(custom["validation"]), len(custom["test"])) == (5, 2, 3)
    assert list(custom["label_fractions"]) == ["0.5"]

    out = tmp_path / "lists" / "heart.json"
    assert decathlon.main([str(root), "--datalist-out", str(out)]) == 0
    assert json.loads(out.read_text()) == json.loads(json.dumps(dl))
    assert "training: 7" in capsys.readouterr().out
    # a datalist stored away from the dataset still resolves its relative paths through "source"
    folder = nnunet.datalist_to_nnunet(out, tmp_path / "raw", 2, "Heart")
    meta = json.loads((folder / "dataset.json").read_text())
    assert meta["numTraining"] == 8 and meta["channel_names"] == {"0": "MRI"}
    assert meta["labels"] == {"background": 0, "left atrium": 1}
    with pytest.raises(SystemExit) as info:
        decathlon.main(["--help"])
    assert info.value.code == 0


def test_decathlon_problems_listed(tmp_path, decathlon, capsys):
    root = _fake_msd(tmp_path / "Task")
    _save_nifti(root / "labelsTr" / "la_003.nii.gz", np.zeros((4, 4, 2), np.uint8), np.eye(4))
    (root / "labelsTr" / "la_005.nii.gz").unlink()
    _save_nifti(root / "labelsTr" / "la_099.nii.gz", np.zeros((4, 4, 3), np.uint8), np.eye(4))
    with pytest.raises(ValueError) as info:
        decathlon.build_datalist(root)
    msg = str(info.value)
    assert "shape mismatch: imagesTr/la_003.nii.gz (4, 4, 3) vs labelsTr/la_003.nii.gz (4, 4, 2)" in msg
    assert "image without label: imagesTr/la_005.nii.gz" in msg
    assert "label without image: labelsTr/la_099.nii.gz" in msg
    assert "dataset.json lists missing file: ./labelsTr/la_005.nii.gz" in msg
    assert decathlon.main([str(root)]) == 1
    assert "la_003" in capsys.readouterr().err


def test_split_ties_broken_by_full_name():
    """``case1`` / ``case01`` (and the same base name in two folders) tie in natural order: the full name decides,
    so the split does not depend on set order (``PYTHONHASHSEED``) or the input order."""
    names = [f"{d}/c{'0' * z}{i}" for i in range(12) for z in range(3) for d in ("a", "b")]
    train, val, test = split_cases(names, val_frac=0.0, test_frac=0.0)
    assert train == sorted(names, key=lambda n: (int(n.split("/c")[1]), n)) and not val and not test
    split = split_cases(names, seed=3)
    assert split == split_cases(names[::-1], seed=3) == split_cases(sorted(names), seed=3)


def test_decathlon_writes_datalist_atomically(tmp_path, decathlon, monkeypatch):
    root = _fake_msd(tmp_path / "Task")
    writes = []
    real = decathlon.write_json_atomic
    monkeypatch.setattr(decathlon, "write_json_atomic", lambda obj, path: writes.append(path) or real(obj, path))
    assert decathlon.main([str(root)]) == 0
    assert writes == [root / "datalist.json"] and json.loads((root / "datalist.json").read_text())["training"]
    assert not [p for p in root.iterdir() if p.name.startswith(".tmp")]


def test_split_helper_edge_cases():
    dl = make_split_datalist({"a": {"image": "a"}}, val_frac=0.0, test_frac=0.0)
    assert [len(v) for v in dl["label_fractions"].values()] == [1, 1, 1, 1, 1]
    with pytest.raises(ValueError, match="no training case"):
        make_split_datalist({"a": {}, "b": {}}, val_frac=0.5, test_frac=0.4)


def test_scripts_run_from_anywhere(tmp_path):
    res = subprocess.run(
        [sys.executable, str(ROOT / "data_prep" / "nnunet.py"), "--help"],
        check=False,
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert res.returncode == 0, res.stderr
    assert "to-datalist" in res.stdout and "to-nnunet" in res.stdout


# ------------------------------------------------------------------------------------------------
# nnU-Net converter
# ------------------------------------------------------------------------------------------------


def _toy_datalist(base: Path) -> dict:
    rng = np.random.default_rng(0)
    for sub in ("t1", "t2", "seg"):
        (base / sub).mkdir(parents=True)
    entries = []
    for i in range(6):
        c = f"case{i:02d}"
        for sub in ("t1", "t2"):
            _save_nifti(base / sub / f"{c}.nii.gz", rng.random((4, 5, 3)).astype(np.float32), np.diag([1, 1, 2, 1.0]))
        lab = rng.integers(0, 3, (4, 5, 3)).astype(np.uint8)
        if i == 1:  # one label as NRRD: converted to NIfTI on export
            nrrd.write(str(base / "seg" / f"{c}.nrrd"), lab, {"space": "RAS", "space directions": np.diag([1, 1, 2.0])})
            entries.append({"image": [f"t1/{c}.nii.gz", f"t2/{c}.nii.gz"], "label": f"seg/{c}.nrrd"})
        else:
            _save_nifti(base / "seg" / f"{c}.nii.gz", lab, np.diag([1, 1, 2, 1.0]))
            entries.append({"image": [f"t1/{c}.nii.gz", f"t2/{c}.nii.gz"], "label": f"seg/{c}.nii.gz"})
    return {
        "training": entries[:4],
        "validation": entries[4:5],
        "test": entries[5:],
        "dataset": {"channel_names": {"0": "T1", "1": "T2"}, "labels": {"background": 0, "a": 1, "b": 2}},
    }


def test_nnunet_round_trip(tmp_path, nnunet):
    base = tmp_path / "src"
    dl = _toy_datalist(base)
    (base / "datalist.json").write_text(json.dumps(dl))
    assert (
        nnunet.main(
            ["to-nnunet", str(base / "datalist.json"), str(tmp_path / "raw"), "--dataset-id", "7", "--name", "Toy"]
        )
        == 0
    )
    folder = tmp_path / "raw" / "Dataset007_Toy"
    meta = json.loads((folder / "dataset.json").read_text())
    assert meta["numTraining"] == 5 and meta["file_ending"] == ".nii.gz"
    assert meta["channel_names"] == {"0": "T1", "1": "T2"} and meta["labels"]["b"] == 2
    assert {p.name for p in (folder / "imagesTr").iterdir()} == {
        f"case{i:02d}_{ch:04d}.nii.gz" for i in range(5) for ch in range(2)
    }
    assert (folder / "imagesTs" / "case05_0001.nii.gz").is_file() and (folder / "labelsTs" / "case05.nii.gz").is_file()
    converted = nib.load(folder / "labelsTr" / "case01.nii.gz")
    np.testing.assert_array_equal(converted.get_fdata(), nrrd.read(str(base / "seg" / "case01.nrrd"))[0])

    back = nnunet.nnunet_to_datalist(folder, val_frac=0.2, test_frac=0.2)
    entries = back["training"] + back["validation"] + back["test"]
    assert (len(back["training"]), len(back["validation"]), len(back["test"])) == (3, 1, 1)
    assert sorted(e["id"] for e in entries) == [f"case{i:02d}" for i in range(5)]
    assert all(nnunet.case_id(e["image"]) == e["id"] for e in entries)
    assert [e["image"] for e in back["unlabeled"]] == [["imagesTs/case05_0000.nii.gz", "imagesTs/case05_0001.nii.gz"]]
    assert back["dataset"]["labels"] == meta["labels"]
    originals = {f"case{i:02d}": e for i, e in enumerate(dl["training"] + dl["validation"])}
    for e in entries:
        orig = originals[e["id"]]
        for new, old in zip(e["image"], orig["image"], strict=True):
            np.testing.assert_array_equal(nib.load(folder / new).get_fdata(), nib.load(base / old).get_fdata())
    # the round-tripped datalist loads with the MONAI pipeline
    first = {k: [str(folder / p) for p in v] if isinstance(v, list) else str(folder / v) for k, v in entries[0].items()}
    out = radiology_preprocessing(modality="MR", target_spacing=None)(first)
    assert out["image"].shape == (2, 4, 5, 3) and out["label"].shape == (1, 4, 5, 3)

    with pytest.raises(FileExistsError):
        nnunet.datalist_to_nnunet(base / "datalist.json", tmp_path / "raw", 7, "Toy")
    fr = nnunet.datalist_to_nnunet(
        {**dl, "label_fractions": {"0.5": ["case00", "case04"]}},
        tmp_path / "raw2",
        8,
        "Few",
        base_dir=base,
        fraction=0.5,
    )
    assert json.loads((fr / "dataset.json").read_text())["numTraining"] == 2
    assert {p.name for p in (fr / "labelsTr").iterdir()} == {"case00.nii.gz", "case04.nii.gz"}


def test_nnunet_validation_errors(tmp_path, nnunet):
    base = tmp_path / "src"
    folder = nnunet.datalist_to_nnunet(_toy_datalist(base), tmp_path / "raw", 9, "Bad", base_dir=base)
    (folder / "imagesTr" / "case01_0001.nii.gz").unlink()
    shutil.copy(folder / "labelsTr" / "case00.nii.gz", folder / "labelsTr" / "ghost.nii.gz")
    shutil.copy(folder / "imagesTr" / "case00_0000.nii.gz", folder / "imagesTr" / "nochannel.nii.gz")
    shutil.copy(folder / "imagesTr" / "case00_0000.nii.gz", folder / "imagesTr" / "orphan_0000.nii.gz")
    meta = json.loads((folder / "dataset.json").read_text())
    (folder / "dataset.json").write_text(json.dumps({**meta, "numTraining": 4}))
    with pytest.raises(ValueError) as info:
        nnunet.nnunet_to_datalist(folder)
    msg = str(info.value)
    assert "missing channel file imagesTr/case01_0001.nii.gz" in msg
    assert "label without image: labelsTr/ghost.nii.gz" in msg
    assert "imagesTr/nochannel.nii.gz does not follow the CASE_XXXX.nii.gz naming" in msg
    assert "image without label: imagesTr/orphan_0000.nii.gz" in msg
    assert "numTraining is 4 but 5 labelled case(s) found" in msg
    del meta["file_ending"]
    (folder / "dataset.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="file_ending"):
        nnunet.nnunet_to_datalist(folder)
