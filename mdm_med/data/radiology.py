"""Radiology volume I/O and preprocessing for 3-D segmentation (NIfTI, NRRD, DICOM series).

Conventions used throughout this module:

* The plain loaders (:func:`load_dicom_series`, :func:`load_nrrd`) return *spatial-first* arrays
  ``(X, Y, Z)`` (NRRD may add a leading channel axis: ``(C, X, Y, Z)``), i.e. the same index order as
  nibabel / ITK / MONAI readers, before MONAI's ``EnsureChannelFirst``.
* Every affine is a 4x4 matrix mapping voxel indices ``(i, j, k, 1)`` to **RAS+** world coordinates
  in mm (NIfTI and MONAI convention). DICOM and NRRD (LPS) geometry is converted with
  ``diag(-1, -1, 1, 1)``.
* The MONAI transforms (:class:`LoadRadiologyd`, :func:`radiology_preprocessing`) produce channel-first
  ``MetaTensor`` objects ``(C, X, Y, Z)`` carrying that affine, so ``Orientationd`` / ``Spacingd`` work.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import ImageReader, MetaTensor, NibabelReader
from monai.transforms import (
    AsDiscreted,
    CastToTyped,
    Compose,
    EnsureChannelFirst,
    EnsureChannelFirstd,
    MapTransform,
    Orientationd,
    ScaleIntensityRanged,
    ScaleIntensityRangePercentilesd,
    Spacingd,
)
from monai.transforms.io.array import switch_endianness
from monai.utils import ensure_tuple, ensure_tuple_rep

from mdm_med.data.datalist import natural_key, nested_label_subsets

__all__ = [
    "DEFAULT_LABEL_FRACTIONS",
    "DICOM_SUFFIXES",
    "LPS_TO_RAS",
    "NIFTI_SUFFIXES",
    "NRRD_SUFFIXES",
    "DicomSeriesReader",
    "LoadRadiologyd",
    "NrrdRasReader",
    "affines_match",
    "check_radiology_files",
    "detect_format",
    "list_dicom_series",
    "load_dicom_series",
    "load_nrrd",
    "make_split_datalist",
    "radiology_preprocessing",
    "read_image_shape",
    "split_cases",
]

PathLike = str | os.PathLike

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
NIFTI_SUFFIXES = (".nii", ".nii.gz")
NRRD_SUFFIXES = (".nrrd", ".nhdr")
DICOM_SUFFIXES = (".dcm", ".dicom", ".ima")
DEFAULT_LABEL_FRACTIONS = (0.05, 0.1, 0.25, 0.5, 1.0)

_MAX_NAMES_IN_MESSAGE = 20
AFFINE_ATOL = 1e-3  # image / label affines closer than this (mm, per matrix entry) are the same grid
SLICE_GAP_RTOL = 0.1  # DICOM slice gaps further than this from the median gap (missing slice) are an error


def _name_list(paths: Sequence[Any]) -> str:
    names = [str(p) for p in paths]
    if len(names) > _MAX_NAMES_IN_MESSAGE:
        extra = len(names) - _MAX_NAMES_IN_MESSAGE
        names = names[:_MAX_NAMES_IN_MESSAGE] + [f"... and {extra} more"]
    return ", ".join(names)


# ----------------------------------------------------------------------------------------------
# DICOM
# ----------------------------------------------------------------------------------------------


def _read_dicom_header(path: Path):
    """Return the pydicom dataset (no pixel data) of ``path`` or ``None`` when it is not DICOM."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        return pydicom.dcmread(path, stop_before_pixels=True)
    except InvalidDicomError:
        pass  # no 'DICM' preamble: may still be a raw (old ACR-NEMA style) data set
    except Exception:  # noqa: BLE001 - whatever pydicom raises, the file is not usable DICOM
        return None
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True, force=True)
    except Exception:  # noqa: BLE001
        return None
    # a forced read "succeeds" on many random files; only accept it if it looks like an image slice
    if "SeriesInstanceUID" in ds and "Rows" in ds and "Columns" in ds:
        return ds
    return None


def _is_corrupt_dicom(path: Path, ds) -> bool:
    """True for a file that should be an image slice but cannot be used: an unreadable file with a DICOM
    suffix, or a header without Rows / Columns whose SOP class is an image storage (or missing, for a DICOM
    suffix), i.e. an empty, truncated or damaged slice rather than a DICOMDIR, report or presentation state."""
    from pydicom.uid import UID

    dicom_suffix = _lower_name(path).endswith(DICOM_SUFFIXES)
    if ds is None:
        return dicom_suffix
    if "Rows" in ds and "Columns" in ds:
        return False
    meta = getattr(ds, "file_meta", None) or {}
    sop = str(ds.get("SOPClassUID", "") or meta.get("MediaStorageSOPClassUID", "") or "")
    return "Image Storage" in UID(sop).name if sop else dicom_suffix


def _scan_dicom(path: PathLike) -> dict[str, list[tuple[Path, Any]]]:
    """Group the DICOM image files of a folder (or a single file) by SeriesInstanceUID.

    Hidden files (``.DS_Store``, macOS ``._*``) and sub-folders are ignored silently; other files that
    are not DICOM images are skipped with one warning naming them. Empty, truncated or corrupt slices (a
    .dcm/.dicom/.ima file that cannot be parsed, an image-class header without Rows / Columns) raise a
    ``ValueError`` naming them: skipping one would leave a gap in the volume.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"DICOM folder or file not found: {path}")
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.is_file() and not p.name.startswith("."))
    else:
        files = [path]
    series: dict[str, list[tuple[Path, Any]]] = {}
    not_dicom: list[str] = []
    not_image: list[str] = []
    corrupt: list[str] = []
    for f in files:
        ds = _read_dicom_header(f)
        if _is_corrupt_dicom(f, ds):
            corrupt.append(f.name)
            continue
        if ds is None:
            not_dicom.append(f.name)
            continue
        if "Rows" not in ds or "Columns" not in ds:  # DICOMDIR, structured reports, presentation states...
            not_image.append(f.name)
            continue
        uid = str(ds.get("SeriesInstanceUID", "") or "")
        series.setdefault(uid, []).append((f, ds))
    if corrupt:
        raise ValueError(
            f"{len(corrupt)} empty, truncated or corrupt DICOM file(s) in {path}: {_name_list(corrupt)} "
            "(re-export or remove them)"
        )
    if not_dicom:
        warnings.warn(f"skipped {len(not_dicom)} non-DICOM file(s) in {path}: {_name_list(not_dicom)}", stacklevel=3)
    if not_image:
        warnings.warn(
            f"skipped {len(not_image)} DICOM file(s) without image data in {path}: {_name_list(not_image)}",
            stacklevel=3,
        )
    return series


def list_dicom_series(folder: PathLike) -> dict[str, dict[str, Any]]:
    """Describe the DICOM series in ``folder``: ``{SeriesInstanceUID: {"files", "num_files", "Modality",
    "SeriesNumber", "SeriesDescription"}}`` (files sorted by name, not yet by position)."""
    out = {}
    for uid, items in _scan_dicom(folder).items():
        ds = items[0][1]
        out[uid] = {
            "files": [p for p, _ in items],
            "num_files": len(items),
            "Modality": str(ds.get("Modality", "") or ""),
            "SeriesNumber": ds.get("SeriesNumber", None),
            "SeriesDescription": str(ds.get("SeriesDescription", "") or ""),
        }
    return out


def _float_attr(ds, name: str, default: float) -> float:
    value = ds.get(name, None)
    if value is None or value == "":
        return default
    try:
        return float(value)
    except (TypeError, ValueError):
        return default


def _slice_geometry(path: Path, ds) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(ImageOrientationPatient (6,), ImagePositionPatient (3,), PixelSpacing (2,) [row, col]) of a slice."""
    for tag in ("ImageOrientationPatient", "ImagePositionPatient"):
        if ds.get(tag, None) is None:
            raise ValueError(f"{path}: DICOM slice has no {tag}, cannot place it in 3-D")
    iop = np.asarray([float(v) for v in ds.ImageOrientationPatient], dtype=np.float64)
    ipp = np.asarray([float(v) for v in ds.ImagePositionPatient], dtype=np.float64)
    if iop.shape != (6,) or ipp.shape != (3,):
        raise ValueError(f"{path}: malformed ImageOrientationPatient {iop} or ImagePositionPatient {ipp}")
    spacing = ds.get("PixelSpacing", None) or ds.get("ImagerPixelSpacing", None)
    if spacing is None:
        warnings.warn(f"{path}: no PixelSpacing, assuming 1 mm", stacklevel=4)
        spacing = (1.0, 1.0)
    sp = np.asarray([float(v) for v in spacing], dtype=np.float64)
    if sp.shape != (2,) or np.any(sp <= 0):
        raise ValueError(f"{path}: malformed PixelSpacing {list(spacing)}")
    return iop, ipp, sp


def _slice_pixels(path: Path, rows: int, cols: int) -> np.ndarray:
    """Rescaled pixels of one slice, float32 ``(rows, cols)`` = pixel_array * RescaleSlope + RescaleIntercept."""
    import pydicom
    from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

    ds = pydicom.dcmread(path, force=True)
    if "PixelData" not in ds:
        raise ValueError(f"{path}: DICOM slice has no PixelData")
    if "TransferSyntaxUID" not in ds.file_meta:  # raw data set without file meta: infer from its encoding
        implicit, little = ds.original_encoding
        ds.file_meta.TransferSyntaxUID = (
            ImplicitVRLittleEndian if implicit else ExplicitVRLittleEndian if little else ExplicitVRBigEndian
        )
    try:
        arr = ds.pixel_array
    except Exception as e:  # compressed syntax without a decoder plugin, corrupt data, ...
        raise RuntimeError(f"{path}: cannot decode DICOM pixel data: {e}") from e
    if arr.shape != (rows, cols):
        raise ValueError(
            f"{path}: pixel array has shape {arr.shape}, expected ({rows}, {cols}) "
            "(multi-frame or colour images are not supported)"
        )
    slope = _float_attr(ds, "RescaleSlope", 1.0)
    intercept = _float_attr(ds, "RescaleIntercept", 0.0)
    return (arr.astype(np.float64) * slope + intercept).astype(np.float32)


def load_dicom_series(folder: PathLike, series_uid: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Load one DICOM series from a folder (or a single DICOM file) as a volume.

    Slices are ordered by ``ImagePositionPatient`` projected on the slice normal
    (``row x col`` of ``ImageOrientationPatient``), never by file name or InstanceNumber, and
    ``RescaleSlope`` / ``RescaleIntercept`` are applied (e.g. CT in HU). A slice gap more than
    ``SLICE_GAP_RTOL`` (10 %) away from the median gap (a missing slice) raises ``ValueError`` naming the
    folder; smaller deviations (rounded positions) warn and the affine uses the mean spacing.

    Args:
        folder: folder holding the files of the series (sub-folders are ignored), or one DICOM file.
        series_uid: SeriesInstanceUID to load when the folder holds several series.

    Returns:
        ``(volume, affine)``: ``volume`` float32 of shape ``(X, Y, Z)`` = (Columns, Rows, number of slices),
        **no channel axis** (``volume[i, j, k]`` is column ``i``, row ``j`` of the ``k``-th slice along the
        normal); ``affine`` float64 (4, 4) mapping ``(i, j, k, 1)`` to RAS+ mm.
    """
    folder = Path(folder)
    series = _scan_dicom(folder)
    if not series:
        raise ValueError(f"no DICOM image files found in {folder}")
    if series_uid is None:
        if len(series) > 1:
            desc = "; ".join(
                f"{uid} ({len(items)} files, {items[0][1].get('SeriesDescription', '')!s})"
                for uid, items in series.items()
            )
            raise ValueError(f"{folder} contains {len(series)} DICOM series, pass series_uid= one of: {desc}")
        series_uid = next(iter(series))
    elif series_uid not in series:
        raise ValueError(f"series {series_uid} not found in {folder}; available: {', '.join(series)}")
    items = series[series_uid]

    ref_path, ref_ds = items[0]
    rows, cols = int(ref_ds.Rows), int(ref_ds.Columns)
    ref_iop, _, ref_sp = _slice_geometry(ref_path, ref_ds)
    positions = []
    for path, ds in items:
        frames = ds.get("NumberOfFrames", None)
        if frames not in (None, "") and int(frames) > 1:
            raise NotImplementedError(f"{path}: multi-frame DICOM ({frames} frames) is not supported")
        if (int(ds.Rows), int(ds.Columns)) != (rows, cols):
            raise ValueError(
                f"{path.name}: Rows x Columns {int(ds.Rows)}x{int(ds.Columns)} differs from {rows}x{cols} "
                f"of {ref_path.name} (series {series_uid} in {folder})"
            )
        iop, ipp, sp = _slice_geometry(path, ds)
        if not np.allclose(iop, ref_iop, atol=1e-4):
            raise ValueError(
                f"{path.name}: ImageOrientationPatient {iop.tolist()} differs from {ref_iop.tolist()} "
                f"of {ref_path.name} (series {series_uid} in {folder})"
            )
        if not np.allclose(sp, ref_sp, rtol=1e-4, atol=1e-4):
            raise ValueError(
                f"{path.name}: PixelSpacing {sp.tolist()} differs from {ref_sp.tolist()} of {ref_path.name} "
                f"(series {series_uid} in {folder})"
            )
        positions.append(ipp)

    row_dir, col_dir = ref_iop[:3], ref_iop[3:]
    normal = np.cross(row_dir, col_dir)
    norm = np.linalg.norm(normal)
    if norm < 1e-6:
        raise ValueError(f"{ref_path}: degenerate ImageOrientationPatient {ref_iop.tolist()}")
    normal /= norm
    ipps = np.stack(positions)  # (n, 3)
    proj = ipps @ normal
    order = np.argsort(proj, kind="stable")
    proj, ipps = proj[order], ipps[order]
    paths = [items[i][0] for i in order]
    n = len(paths)

    if n > 1:
        gaps = np.diff(proj)
        dup = np.flatnonzero(gaps < 1e-3)
        if dup.size:
            a, b = paths[dup[0]], paths[dup[0] + 1]
            raise ValueError(
                f"{a.name} and {b.name} are at the same slice position ({proj[dup[0]]:.3f} mm) in series "
                f"{series_uid} of {folder} (multi-echo / time series?); split the series first"
            )
        med = float(np.median(gaps))
        worst = int(np.argmax(np.abs(gaps - med)))
        if abs(gaps[worst] - med) > SLICE_GAP_RTOL * med:
            raise ValueError(
                f"non-uniform slice spacing in {folder} (series {series_uid}): {gaps[worst]:.4g} mm between "
                f"{paths[worst].name} and {paths[worst + 1].name}, median {med:.4g} mm (missing or corrupt slice?)"
            )
        if np.max(np.abs(gaps - med)) > max(1e-3, 0.01 * med):
            warnings.warn(
                f"slightly non-uniform slice spacing in {folder} (from {gaps.min():.4g} to {gaps.max():.4g} mm, "
                "rounded positions?); the affine uses the mean spacing",
                stacklevel=2,
            )
        step = (ipps[-1] - ipps[0]) / (n - 1)  # keeps gantry tilt (step not parallel to the normal)
    else:
        thickness = _float_attr(ref_ds, "SpacingBetweenSlices", 0.0) or _float_attr(ref_ds, "SliceThickness", 1.0)
        step = normal * (thickness if thickness > 0 else 1.0)

    volume = np.empty((cols, rows, n), dtype=np.float32)
    for k, path in enumerate(paths):
        volume[:, :, k] = _slice_pixels(path, rows, cols).T

    affine_lps = np.eye(4)
    affine_lps[:3, 0] = row_dir * ref_sp[1]  # i runs along a row (column index), spaced by PixelSpacing[1]
    affine_lps[:3, 1] = col_dir * ref_sp[0]  # j runs down a column (row index), spaced by PixelSpacing[0]
    affine_lps[:3, 2] = step
    affine_lps[:3, 3] = ipps[0]
    return volume, LPS_TO_RAS @ affine_lps


# ----------------------------------------------------------------------------------------------
# NRRD
# ----------------------------------------------------------------------------------------------

_NRRD_SPACE_SIGNS = {
    "right-anterior-superior": (1.0, 1.0, 1.0),
    "ras": (1.0, 1.0, 1.0),
    "left-anterior-superior": (-1.0, 1.0, 1.0),
    "las": (-1.0, 1.0, 1.0),
    "left-posterior-superior": (-1.0, -1.0, 1.0),
    "lps": (-1.0, -1.0, 1.0),
}


def load_nrrd(path: PathLike, dtype: Any = np.float32) -> tuple[np.ndarray, np.ndarray]:
    """Load a ``.nrrd`` / ``.nhdr`` volume with pynrrd.

    Returns:
        ``(array, affine)``: ``array`` of shape ``(X, Y, Z)``, or ``(C, X, Y, Z)`` when the file has one
        non-spatial axis (``space directions: none``), which is moved first; ``affine`` (4, 4) to RAS+ mm.
        Files without a ``space`` field are read as LPS, like ITK does.
    """
    import nrrd

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"NRRD file not found: {path}")
    data, header = nrrd.read(str(path))  # Fortran index order: axes listed as in the header (fastest first)
    data = np.asarray(data)
    ndim = data.ndim
    directions = header.get("space directions", None)
    if directions is not None:
        directions = np.asarray(directions, dtype=np.float64)
        if directions.shape[0] != ndim:
            raise ValueError(f"{path}: 'space directions' has {directions.shape[0]} rows for {ndim} axes")
        spatial = [i for i in range(ndim) if np.all(np.isfinite(directions[i]))]
    else:
        kinds = header.get("kinds", None)
        if kinds is not None:
            spatial = [i for i, k in enumerate(kinds) if str(k).lower() in ("domain", "space")]
        else:
            spatial = list(range(ndim))
        spacings = np.asarray(header.get("spacings", [1.0] * ndim), dtype=np.float64)
        spacings = np.where(np.isfinite(spacings), spacings, 1.0)
        directions = np.zeros((ndim, len(spatial)))
        for col, axis in enumerate(spatial):
            directions[axis, col] = spacings[axis]
    if len(spatial) != 3 or directions.shape[1] != 3:
        raise ValueError(f"{path}: expected 3 spatial axes in a 3-D space, got axes {spatial} in {ndim}-D data")
    others = [i for i in range(ndim) if i not in spatial]
    if len(others) > 1:
        raise ValueError(f"{path}: more than one non-spatial axis ({others}) is not supported")

    origin = np.asarray(header.get("space origin", np.zeros(3)), dtype=np.float64)
    origin = np.where(np.isfinite(origin), origin, 0.0)
    affine = np.eye(4)
    affine[:3, :3] = directions[spatial].T
    affine[:3, 3] = origin
    space = str(header.get("space", "left-posterior-superior")).lower()
    signs = _NRRD_SPACE_SIGNS.get(space)
    if signs is None:
        warnings.warn(f"{path}: NRRD space '{space}' is not anatomical, reading it as LPS", stacklevel=2)
        signs = _NRRD_SPACE_SIGNS["lps"]
    affine = np.diag([*signs, 1.0]) @ affine

    if others:
        data = np.moveaxis(data, others[0], 0)
    return np.ascontiguousarray(data, dtype=dtype), affine


# ----------------------------------------------------------------------------------------------
# headers / format detection
# ----------------------------------------------------------------------------------------------


def _lower_name(path: PathLike) -> str:
    return Path(path).name.lower()


def detect_format(path: PathLike) -> str:
    """``"nifti"``, ``"nrrd"`` or ``"dicom"`` (a folder or a .dcm/.dicom/.ima file) for an existing path."""
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"image file not found: {p}")
    if p.is_dir():
        return "dicom"
    name = _lower_name(p)
    if name.endswith(NIFTI_SUFFIXES):
        return "nifti"
    if name.endswith(NRRD_SUFFIXES):
        return "nrrd"
    if name.endswith(DICOM_SUFFIXES):
        return "dicom"
    raise ValueError(
        f"unsupported image format: {p} (expected NIfTI {NIFTI_SUFFIXES}, NRRD {NRRD_SUFFIXES}, "
        "or a DICOM series folder)"
    )


def affines_match(a: Any, b: Any, atol: float = AFFINE_ATOL) -> bool:
    """True when two (4, 4) voxel-to-world affines agree within ``atol`` (mm) per entry (same voxel grid)."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return a.shape == b.shape and bool(np.allclose(a, b, atol=atol))


def read_image_shape(path: PathLike) -> tuple[int, ...] | None:
    """Full array shape from the header only (NIfTI via nibabel, NRRD via pynrrd), spatial axes first;
    ``None`` for other formats."""
    name = _lower_name(path)
    if name.endswith(NIFTI_SUFFIXES):
        import nibabel as nib

        return tuple(int(s) for s in nib.load(str(path)).shape)
    if name.endswith(NRRD_SUFFIXES):
        import nrrd

        return tuple(int(s) for s in nrrd.read_header(str(path))["sizes"])
    return None


# ----------------------------------------------------------------------------------------------
# MONAI readers
# ----------------------------------------------------------------------------------------------


@dataclass
class _Loaded:
    name: str
    array: np.ndarray
    affine: np.ndarray


class _ArrayAffineReader(ImageReader):
    """Base MONAI reader around a ``path -> (array, RAS affine)`` function; several files are stacked
    as channels."""

    suffixes: tuple[str, ...] = ()
    accept_dirs = False

    def __init__(self, dtype: Any = np.float32):
        super().__init__()
        self.dtype = dtype

    def verify_suffix(self, filename: Sequence[PathLike] | PathLike) -> bool:
        return all(
            (self.accept_dirs and Path(f).is_dir()) or _lower_name(f).endswith(self.suffixes)
            for f in ensure_tuple(filename)
        )

    def _load(self, path: PathLike) -> tuple[np.ndarray, np.ndarray]:
        raise NotImplementedError

    def read(self, data: Sequence[PathLike] | PathLike, **kwargs):
        loaded = [_Loaded(str(f), *self._load(f)) for f in ensure_tuple(data)]
        return loaded if len(loaded) > 1 else loaded[0]

    def get_data(self, img) -> tuple[np.ndarray, dict]:
        imgs = img if isinstance(img, (list, tuple)) else [img]
        first = imgs[0]
        for other in imgs[1:]:
            if other.array.shape != first.array.shape or not np.allclose(other.affine, first.affine, atol=1e-3):
                raise ValueError(f"cannot stack {other.name} with {first.name}: shape or affine differ")
        if len(imgs) == 1:
            array = first.array
            channel_dim = float("nan") if array.ndim == 3 else 0
        else:
            if first.array.ndim != 3:
                raise ValueError(f"cannot stack multi-channel file {first.name} with other files")
            array = np.stack([i.array for i in imgs], axis=0)
            channel_dim = 0
        meta = {
            "affine": first.affine.copy(),
            "original_affine": first.affine.copy(),
            "spatial_shape": np.asarray(array.shape[-3:]),
            "original_channel_dim": channel_dim,
            "space": "RAS",
        }
        return array.astype(self.dtype, copy=False), meta


class DicomSeriesReader(_ArrayAffineReader):
    """MONAI ``ImageReader`` for DICOM series folders (via :func:`load_dicom_series`), usable with
    ``LoadImage(reader=DicomSeriesReader())``. Output ``(X, Y, Z)`` with a RAS affine."""

    suffixes = DICOM_SUFFIXES
    accept_dirs = True

    def __init__(self, series_uid: str | None = None, dtype: Any = np.float32):
        super().__init__(dtype)
        self.series_uid = series_uid

    def _load(self, path):
        return load_dicom_series(path, series_uid=self.series_uid)


class NrrdRasReader(_ArrayAffineReader):
    """MONAI ``ImageReader`` for ``.nrrd`` / ``.nhdr`` (via :func:`load_nrrd`): unlike
    ``monai.data.NrrdReader`` it handles RAS/LAS/LPS spaces (and their abbreviations) and ``.nhdr``.
    Output ``(X, Y, Z)`` or ``(C, X, Y, Z)`` with a RAS affine."""

    suffixes = NRRD_SUFFIXES

    def _load(self, path):
        return load_nrrd(path, dtype=self.dtype)


# ----------------------------------------------------------------------------------------------
# MONAI dict transforms
# ----------------------------------------------------------------------------------------------


class LoadRadiologyd(MapTransform):
    """Load NIfTI (.nii/.nii.gz), NRRD (.nrrd/.nhdr) or DICOM series folders into ``MetaTensor`` objects.

    Each value may be a path or a list of paths (stacked as channels). Output: ``(X, Y, Z)`` with
    ``original_channel_dim`` metadata for ``EnsureChannelFirstd`` (or ``(C, X, Y, Z)`` directly with
    ``ensure_channel_first=True``), a RAS affine in ``.affine`` and ``meta["filename_or_obj"]``.

    Args:
        keys: keys to load.
        dtype: output dtype, one for all keys or one per key.
        ensure_channel_first: add / move the channel axis first.
        series_uid: SeriesInstanceUID to pick when a DICOM folder holds several series.
        check_shapes: raise if the loaded keys differ in spatial shape or affine (beyond ``AFFINE_ATOL``),
            naming both files.
        check_finite: raise if a floating point volume contains NaN or Inf (naming the file).
        label_keys: keys (among ``keys``) holding label maps: one channel of integer class indices >= 0.
        num_classes: label values must also be < ``num_classes`` (``None``: not checked).
        in_channels: channel count required of the other keys (``None``: not checked).
        allow_missing_keys: do not raise for keys missing from the data dict.

    Unreadable files (truncated, corrupt) and failed checks raise ``ValueError`` naming the file.
    """

    def __init__(
        self,
        keys: KeysCollection,
        dtype: Any = np.float32,
        ensure_channel_first: bool = False,
        series_uid: str | None = None,
        check_shapes: bool = True,
        check_finite: bool = True,
        label_keys: KeysCollection = ("label",),
        num_classes: int | None = None,
        in_channels: int | None = None,
        allow_missing_keys: bool = False,
    ):
        super().__init__(keys, allow_missing_keys)
        self.dtypes = ensure_tuple_rep(dtype, len(self.keys))
        self.check_shapes = check_shapes
        self.check_finite = check_finite
        self.label_keys = ensure_tuple(label_keys)
        self.num_classes = num_classes
        self.in_channels = in_channels
        self._readers: dict[str, ImageReader] = {
            "nifti": NibabelReader(),
            "nrrd": NrrdRasReader(),
            "dicom": DicomSeriesReader(series_uid=series_uid),
        }
        self.ensure_channel_first = ensure_channel_first

    def _load(self, reader: ImageReader, filename: str | tuple[str, ...], dtype: Any) -> MetaTensor:
        """Read with ``reader`` and wrap as a MetaTensor (what ``LoadImage`` does, without registering
        every default MONAI reader)."""
        array, meta = reader.get_data(reader.read(filename))
        array = np.asarray(array).astype(dtype, copy=False)
        meta = switch_endianness(meta, "<")
        meta["filename_or_obj"] = str(ensure_tuple(filename)[0])
        img = MetaTensor.ensure_torch_and_prune_meta(array, meta)
        if self.ensure_channel_first:
            img = EnsureChannelFirst()(img)
        return img

    @staticmethod
    def _source(key: Hashable, value: Any) -> tuple[tuple[str, ...], str]:
        if isinstance(value, (str, os.PathLike)):
            paths = (os.fspath(value),)
        elif isinstance(value, (list, tuple)) and value and all(isinstance(v, (str, os.PathLike)) for v in value):
            paths = tuple(os.fspath(v) for v in value)
        else:
            raise TypeError(f"{key!r}: expected a path or a list of paths, got {type(value).__name__}")
        formats = set()
        for p in paths:
            if not os.path.exists(p):
                raise FileNotFoundError(f"{key!r}: file not found: {p}")
            formats.add(detect_format(p))
        if len(formats) > 1:
            raise ValueError(f"{key!r}: cannot stack different formats {sorted(formats)} ({', '.join(paths)})")
        return paths, formats.pop()

    def _check_label(self, key: Hashable, src: str, img: MetaTensor, channels: int) -> None:
        """Label maps: one channel, integer values in ``[0, num_classes)``."""
        if channels != 1:
            raise ValueError(f"{key!r}: label {src} has {channels} channels, expected one label map")
        values = torch.unique(img.as_tensor()).double()
        bad = (values != torch.round(values)) | (values < 0)
        if self.num_classes is not None:
            bad |= values >= self.num_classes
        if bool(bad.any()):
            shown = ", ".join(f"{v:g}" for v in values[bad][:10].tolist())
            expected = f"0..{self.num_classes - 1}" if self.num_classes is not None else "integers >= 0"
            raise ValueError(f"{key!r}: label {src} holds value(s) {shown}; expected class indices {expected}")

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        loaded: list[tuple[Hashable, str, tuple[int, ...], np.ndarray]] = []
        for key, dtype in self.key_iterator(d, self.dtypes):
            paths, fmt = self._source(key, d[key])
            src = paths[0] if len(paths) == 1 else str(list(paths))
            try:
                img = self._load(self._readers[fmt], paths if len(paths) > 1 else paths[0], dtype)
            except Exception as e:  # noqa: BLE001 - truncated gzip (EOFError), corrupt header, bad DICOM...
                raise ValueError(f"{key!r}: cannot read {src}: {type(e).__name__}: {e}") from e
            if self.check_finite and img.is_floating_point():
                bad = ~torch.isfinite(img)
                if bool(bad.any()):
                    n_nan = int(torch.isnan(img).sum())
                    raise ValueError(f"{key!r}: {src} contains {n_nan} NaN and {int(bad.sum()) - n_nan} Inf value(s)")
            spatial = tuple(int(s) for s in np.asarray(img.meta.get("spatial_shape", img.shape[-3:])).tolist())
            channels = img.numel() // max(1, int(np.prod(spatial)))
            if key in self.label_keys:
                self._check_label(key, src, img, channels)
            elif self.in_channels is not None and channels != self.in_channels:
                raise ValueError(f"{key!r}: {src} has {channels} channel(s), expected in_channels={self.in_channels}")
            loaded.append((key, src, spatial, np.asarray(img.affine)))
            d[key] = img
        if self.check_shapes and len(loaded) > 1:
            k0, src0, shape0, aff0 = loaded[0]
            for key, src, shape, aff in loaded[1:]:
                if shape != shape0:
                    raise ValueError(
                        f"shape mismatch: {k0!r} {src0} has spatial shape {shape0} but {key!r} {src} has {shape}"
                    )
                if not affines_match(aff, aff0):
                    raise ValueError(
                        f"affine mismatch: {k0!r} {src0} and {key!r} {src} differ by up to "
                        f"{np.abs(aff - aff0).max():.4g} (more than {AFFINE_ATOL}); the voxels would be misaligned"
                    )
        return d


def check_radiology_files(
    items: Sequence[dict],
    what: str = "dataset",
    image_key: str = "image",
    label_keys: Sequence[str] = ("label",),
    in_channels: int | None = None,
    num_classes: int | None = None,
) -> int:
    """Read every image (and label) of ``items`` once with :class:`LoadRadiologyd` before any compute: missing,
    truncated or corrupt files, NaN / Inf, wrong channel counts, image/label shape or affine mismatches and label
    values outside ``0..num_classes-1`` are reported together in one ``ValueError``. Returns the number of items."""
    if not items:
        raise ValueError(f"{what} is empty")
    loaders: dict[tuple[str, ...], LoadRadiologyd] = {}
    problems = []
    for item in items:
        keys = tuple(k for k in (image_key, *label_keys) if k in item)
        if image_key not in keys:
            problems.append(f"entry {item.get('id', item)} has no {image_key!r}")
            continue
        if keys not in loaders:
            loaders[keys] = LoadRadiologyd(
                keys, label_keys=label_keys, in_channels=in_channels, num_classes=num_classes
            )
        try:
            loaders[keys](item)
        except (OSError, ValueError, TypeError) as e:
            problems.append(str(e))
    if problems:
        raise ValueError(f"{what}: {len(problems)} problem(s):\n  " + "\n  ".join(problems))
    return len(items)


def radiology_preprocessing(
    keys: Sequence[str] = ("image", "label"),
    modality: str = "CT",
    target_spacing: Sequence[float] | None = (1.0, 1.0, 1.0),
    ct_window: tuple[float, float] = (-1000.0, 1000.0),
    mr_percentiles: tuple[float, float] = (0.5, 99.5),
    label_dtype: torch.dtype = torch.int16,
    series_uid: str | None = None,
    num_classes: int | None = None,
    allow_missing_keys: bool = False,
) -> Compose:
    """Load -> EnsureChannelFirst -> Orientation RAS -> Spacing -> intensities to [-1, 1].

    ``keys[0]`` is the image (``(C, X, Y, Z)`` float32 in [-1, 1] after the pipeline), every other key is a
    label map (bilinear vs nearest resampling; ``(1, X, Y, Z)`` of ``label_dtype``).
    CT: clip to the HU ``ct_window`` then scale linearly; MR: per-volume (per-channel) percentile clip
    ``mr_percentiles`` then scale. ``target_spacing=None`` keeps the native spacing. Label maps must hold integer
    class indices (below ``num_classes`` when given), else ``ValueError`` naming the file.
    """
    keys = tuple(keys)
    if not keys:
        raise ValueError("keys must name at least the image")
    image_key, label_keys = keys[0], keys[1:]
    mod = modality.upper()
    amk = allow_missing_keys
    transforms: list[Any] = [
        LoadRadiologyd(
            keys, series_uid=series_uid, label_keys=label_keys, num_classes=num_classes, allow_missing_keys=amk
        ),
        EnsureChannelFirstd(keys, allow_missing_keys=amk),
        # our loaders always give RAS affines, so the axis labels are the NIfTI ones
        Orientationd(keys, axcodes="RAS", labels=(("L", "R"), ("P", "A"), ("I", "S")), allow_missing_keys=amk),
    ]
    if target_spacing is not None:
        pixdim = tuple(float(s) for s in ensure_tuple_rep(target_spacing, 3))
        modes = ("bilinear",) + ("nearest",) * len(label_keys)
        transforms.append(Spacingd(keys, pixdim=pixdim, mode=modes, allow_missing_keys=amk))
    if mod == "CT":
        lo, hi = (float(v) for v in ct_window)
        if not hi > lo:
            raise ValueError(f"ct_window must be (low, high) with low < high, got {ct_window}")
        transforms.append(ScaleIntensityRanged(image_key, a_min=lo, a_max=hi, b_min=-1.0, b_max=1.0, clip=True))
    elif mod in ("MR", "MRI"):
        lo, hi = (float(v) for v in mr_percentiles)
        if not 0.0 <= lo < hi <= 100.0:
            raise ValueError(f"mr_percentiles must satisfy 0 <= low < high <= 100, got {mr_percentiles}")
        transforms.append(
            ScaleIntensityRangePercentilesd(
                image_key, lower=lo, upper=hi, b_min=-1.0, b_max=1.0, clip=True, channel_wise=True
            )
        )
    else:
        raise ValueError(f"modality must be 'CT' or 'MR', got {modality!r}")
    if label_keys:
        transforms.append(AsDiscreted(label_keys, rounding="torchrounding", allow_missing_keys=amk))
        transforms.append(CastToTyped(label_keys, dtype=label_dtype, allow_missing_keys=amk))
    return Compose(transforms)


# ----------------------------------------------------------------------------------------------
# datalist splits (shared by the data_prep converters)
# ----------------------------------------------------------------------------------------------


def _split_key(name: str) -> tuple[list, str]:
    """Natural order, ties (``case1`` / ``case01``, same base name in two folders) broken by the full name."""
    return natural_key(name), name


def split_cases(
    names: Sequence[str], val_frac: float = 0.1, test_frac: float = 0.2, seed: int = 0
) -> tuple[list[str], list[str], list[str]]:
    """Deterministic ``(train, val, test)`` split, each in natural name order, from a seeded permutation
    (``numpy.random.default_rng(seed)``) of the names in natural order (``mdm_med.data.datalist.natural_key``, ties
    broken by the full name, so the split never depends on the input order or ``PYTHONHASHSEED``).

    ``n_val = round(val_frac * n)``, ``n_test = round(test_frac * n)``, training gets the rest.
    """
    names = sorted(set(names), key=_split_key)
    n = len(names)
    if not (0.0 <= val_frac < 1.0 and 0.0 <= test_frac < 1.0 and val_frac + test_frac < 1.0):
        raise ValueError(f"need 0 <= val_frac, test_frac and val_frac + test_frac < 1, got {val_frac}, {test_frac}")
    n_val, n_test = round(val_frac * n), round(test_frac * n)
    if n - n_val - n_test < 1:
        raise ValueError(f"{n} case(s) leave no training case with val_frac={val_frac}, test_frac={test_frac}")
    perm = np.random.default_rng(seed).permutation(n)
    shuffled = [names[i] for i in perm]
    val = sorted(shuffled[:n_val], key=_split_key)
    test = sorted(shuffled[n_val : n_val + n_test], key=_split_key)
    train = sorted(shuffled[n_val + n_test :], key=_split_key)
    return train, val, test


def make_split_datalist(
    cases: Mapping[str, dict],
    val_frac: float = 0.1,
    test_frac: float = 0.2,
    seed: int = 0,
    fractions: Sequence[float] = DEFAULT_LABEL_FRACTIONS,
) -> dict[str, Any]:
    """MONAI datalist from ``{case id: entry}`` in the project's datalist format.

    Returns ``{"training", "validation", "test": [{"id": case, **entry}, ...], "label_fractions": {f"{f:g}": [ids]},
    "label_fraction_rule": "first", "split": {...}}``. ``label_fractions`` holds the ids of the first
    ``max(1, int(f * n_train))`` training cases (natural order; ``mdm_med.data.datalist.nested_label_subsets``), so
    the subsets are nested; read them with ``mdm_med.data.datalist.labelled_subset``.
    """
    train, val, test = split_cases(list(cases), val_frac=val_frac, test_frac=test_frac, seed=seed)
    fractions = sorted(float(f) for f in fractions)
    bad = [f for f in fractions if not 0.0 < f <= 1.0]
    if bad:
        raise ValueError(f"label fractions must be in (0, 1], got {bad}")
    label_fractions = nested_label_subsets(train, len(train), fractions)
    return {
        "training": [{"id": c, **cases[c]} for c in train],
        "validation": [{"id": c, **cases[c]} for c in val],
        "test": [{"id": c, **cases[c]} for c in test],
        "label_fractions": label_fractions,
        "label_fraction_rule": "first",
        "split": {"seed": seed, "val_frac": val_frac, "test_frac": test_frac},
    }
