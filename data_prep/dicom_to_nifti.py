"""Convert DICOM series to NIfTI: one sub-folder per series -> ``OUT/<subfolder>.nii.gz``.

DICOM files lying directly in INPUT form one more series named after INPUT. Slices are ordered by
position and rescaled (``mdm_med.data.radiology.load_dicom_series``); the NIfTI affine is RAS.
A folder holding several series is an error unless ``--all-series`` is given, which writes
``<subfolder>_s<SeriesNumber>.nii.gz`` for each of them.

Example: ``python data_prep/dicom_to_nifti.py /data/dicom /data/nifti --dtype int16``
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
from tqdm import tqdm

try:
    from mdm_med.data.radiology import list_dicom_series, load_dicom_series
    from mdm_med.io import atomic_write
except ImportError:  # running from a source checkout without installing the package
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from mdm_med.data.radiology import list_dicom_series, load_dicom_series
    from mdm_med.io import atomic_write


def save_nifti(volume: np.ndarray, affine: np.ndarray, path: str | Path, dtype: str = "float32") -> Path:
    """Write a ``(X, Y, Z)`` volume with its RAS affine (sform and qform set, scanner space), atomically: a
    temporary file in the same folder is renamed into place, so an interrupted run never leaves a partial file."""
    if dtype == "int16":
        info = np.iinfo(np.int16)
        if volume.min() < info.min or volume.max() > info.max:
            warnings.warn(f"{path}: values outside the int16 range are clipped", stacklevel=2)
        if not np.allclose(volume, np.round(volume)):
            warnings.warn(f"{path}: non-integer values are rounded for int16 output", stacklevel=2)
        volume = np.clip(np.round(volume), info.min, info.max).astype(np.int16)
    else:
        volume = volume.astype(np.float32, copy=False)
    img = nib.Nifti1Image(volume, affine)
    img.set_sform(affine, code=1)
    img.set_qform(affine, code=1)
    img.header.set_xyzt_units("mm", "sec")
    path = Path(path)
    atomic_write(path, lambda tmp: nib.save(img, tmp))
    return path


def find_series_folders(root: Path) -> list[tuple[str, Path]]:
    """``(name, folder)`` pairs: every sub-folder of ``root``, plus ``root`` itself if it holds files."""
    folders = [(p.name, p) for p in sorted(root.iterdir()) if p.is_dir() and not p.name.startswith(".")]
    if any(p.is_file() and not p.name.startswith(".") for p in root.iterdir()):
        folders.insert(0, (root.name, root))
    return folders


def convert(
    input_dir: str | Path,
    output_dir: str | Path,
    all_series: bool = False,
    dtype: str = "float32",
    overwrite: bool = False,
    progress: bool = False,
) -> list[dict[str, Any]]:
    """Convert every series folder of ``input_dir``; returns one record per folder/series with
    ``name``, ``source``, ``output`` (or ``None``), ``shape`` and ``error`` (or ``None``)."""
    input_dir, output_dir = Path(input_dir), Path(output_dir)
    if not input_dir.is_dir():
        raise FileNotFoundError(f"input folder not found: {input_dir}")
    output_dir.mkdir(parents=True, exist_ok=True)
    records: list[dict[str, Any]] = []
    for name, folder in tqdm(find_series_folders(input_dir), desc="series", disable=not progress):
        try:
            uids: list[str | None] = [None]
            names = [name]
            if all_series:
                series = list_dicom_series(folder)
                if len(series) > 1:
                    uids = list(series)
                    names = [f"{name}_s{series[u]['SeriesNumber'] or i}" for i, u in enumerate(uids)]
                    if len(set(names)) < len(names):  # repeated SeriesNumber: add the index
                        names = [f"{n}_{i}" for i, n in enumerate(names)]
            for uid, out_name in zip(uids, names, strict=True):
                out = output_dir / f"{out_name}.nii.gz"
                if out.exists() and not overwrite:
                    raise FileExistsError(f"{out} exists (use --overwrite)")
                volume, affine = load_dicom_series(folder, series_uid=uid)
                save_nifti(volume, affine, out, dtype=dtype)
                records.append(
                    {"name": out_name, "source": str(folder), "output": str(out), "shape": volume.shape, "error": None}
                )
        except Exception as e:  # noqa: BLE001 - keep converting the other folders, report at the end
            msg = str(e) + (" (or use --all-series)" if "DICOM series, pass series_uid" in str(e) else "")
            records.append({"name": name, "source": str(folder), "output": None, "shape": None, "error": msg})
    return records


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("input", type=Path, help="folder with one sub-folder per DICOM series")
    parser.add_argument("output", type=Path, help="output folder for the .nii.gz files")
    parser.add_argument("--all-series", action="store_true", help="write every series of a multi-series folder")
    parser.add_argument("--dtype", choices=("float32", "int16"), default="float32", help="output voxel type")
    parser.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    args = parser.parse_args(argv)
    try:
        records = convert(args.input, args.output, args.all_series, args.dtype, args.overwrite, progress=True)
    except FileNotFoundError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    failed = [r for r in records if r["error"]]
    print(f"converted {len(records) - len(failed)} series, {len(failed)} failed -> {args.output}")
    for r in records:
        status = f"shape {tuple(r['shape'])}" if r["error"] is None else f"FAILED: {r['error']}"
        print(f"  {r['name']}: {status}")
    return 1 if failed or not records else 0


if __name__ == "__main__":
    sys.exit(main())
