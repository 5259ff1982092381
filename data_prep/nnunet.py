"""nnU-Net v2 raw dataset <-> MONAI datalist.

``to-datalist``: read ``DatasetXXX_Name/`` (``dataset.json`` with ``channel_names``, ``labels``, ``numTraining``,
``file_ending``; ``imagesTr/CASE_0000<ending>``..., ``labelsTr/CASE<ending>``, optional ``imagesTs``), validate the
naming conventions (all problems reported at once, naming the files) and write a MONAI datalist with a fixed
train/validation/test split and nested label fractions (as ``data_prep/decathlon.py``). Paths are relative to the
dataset folder; multi-channel cases have ``"image": [channel 0, channel 1, ...]``.

``to-nnunet``: export a MONAI datalist (image/label paths: NIfTI, NRRD or DICOM folders) to
``OUT_ROOT/DatasetXXX_Name`` with nnU-Net naming and ``dataset.json``. ``training`` + ``validation`` go to
``imagesTr``/``labelsTr`` (nnU-Net cross-validates itself; ``--fraction`` exports one label fraction instead) and
``test`` to ``imagesTs`` (labels to ``labelsTs``, which nnU-Net ignores but evaluation scripts can use). The folder is
built beside its target and moved into place when complete: an interrupted export leaves no half-written dataset
(rerun it), and ``--overwrite`` replaces an existing folder only once the new one is complete.

Examples:
  python data_prep/nnunet.py to-datalist /data/nnUNet_raw/Dataset002_Heart
  python data_prep/nnunet.py to-nnunet /data/Task02_Heart/datalist.json /data/nnUNet_raw --dataset-id 502 --name Heart
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import sys
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
from tqdm import tqdm

try:
    from mdm_med.data import radiology
    from mdm_med.data.datalist import read_json_object, write_json_atomic
    from mdm_med.io import fill_folder_atomically
except ImportError:  # running from a source checkout without installing the package
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from mdm_med.data import radiology
    from mdm_med.data.datalist import read_json_object, write_json_atomic
    from mdm_med.io import fill_folder_atomically

REQUIRED_KEYS = ("channel_names", "labels", "numTraining", "file_ending")
_CHANNEL_RE = re.compile(r"^(?P<case>.+)_(?P<channel>\d{4})$")


# ----------------------------------------------------------------------------------------------
# nnU-Net -> datalist
# ----------------------------------------------------------------------------------------------


def _visible_files(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    return [p for p in sorted(folder.iterdir()) if p.is_file() and not p.name.startswith(".")]


def _scan_images(
    folder: Path, ending: str, n_channels: int, root: Path, problems: list[str]
) -> dict[str, dict[int, Path]]:
    """``{case: {channel: path}}`` for ``folder/CASE_XXXX<ending>``; naming problems go to ``problems``."""
    cases: dict[str, dict[int, Path]] = {}
    wrong_ending = []
    for p in _visible_files(folder):
        if not p.name.endswith(ending):
            wrong_ending.append(p.name)
            continue
        m = _CHANNEL_RE.match(p.name[: -len(ending)])
        if m is None:
            problems.append(f"{p.relative_to(root)} does not follow the CASE_XXXX{ending} naming (missing _0000?)")
            continue
        channel = int(m["channel"])
        if channel >= n_channels:
            problems.append(f"{p.relative_to(root)}: channel {channel} is not in channel_names (0..{n_channels - 1})")
            continue
        cases.setdefault(m["case"], {})[channel] = p
    if wrong_ending:
        problems.append(
            f"{len(wrong_ending)} file(s) in {folder.relative_to(root)} do not end with file_ending '{ending}': "
            + ", ".join(wrong_ending[:10])
        )
    return cases


def read_nnunet_dataset(
    dataset_dir: str | Path, check_shapes: bool = True, progress: bool = False
) -> tuple[dict[str, Any], dict[str, dict], dict[str, dict]]:
    """Validate an nnU-Net v2 raw dataset and return ``(dataset_json, labelled, unlabeled)`` where
    ``labelled = {case: {"image": path or [paths], "label": path}}`` and ``unlabeled = {case: {"image": ...}}``
    (``imagesTs``), paths relative to ``dataset_dir``. Raises ``ValueError`` listing every problem."""
    root = Path(dataset_dir)
    meta_path = root / "dataset.json"
    if not meta_path.is_file():
        raise FileNotFoundError(f"nnU-Net dataset.json not found: {meta_path}")
    meta = read_json_object(meta_path)
    missing = [k for k in REQUIRED_KEYS if k not in meta]
    if missing:
        hint = (
            " (nnU-Net v1 'modality' found: convert with nnUNetv2_convert_old_nnUNet_dataset)"
            if "modality" in meta
            else ""
        )
        raise ValueError(f"{meta_path} lacks required key(s) {missing}{hint}")
    problems: list[str] = []
    if not re.match(r"^Dataset\d{3}_.+$", root.name):
        warnings.warn(f"{root.name} does not follow the DatasetXXX_Name folder naming", stacklevel=2)
    ending = str(meta["file_ending"])
    channel_names = {str(k): v for k, v in meta["channel_names"].items()}
    n_channels = len(channel_names)
    if sorted(channel_names) != [str(i) for i in range(n_channels)] or n_channels == 0:
        problems.append(
            f"{meta_path.name}: channel_names keys must be '0'..'{n_channels - 1}', got {sorted(channel_names)}"
        )
    if meta["labels"].get("background") != 0:
        problems.append(f'{meta_path.name}: labels must contain "background": 0, got {meta["labels"]}')

    images = _scan_images(root / "imagesTr", ending, n_channels, root, problems)
    labels: dict[str, Path] = {}
    for p in _visible_files(root / "labelsTr"):
        if p.name.endswith(ending):
            labels[p.name[: -len(ending)]] = p
        else:
            problems.append(f"{p.relative_to(root)} does not end with file_ending '{ending}'")
    if not labels:
        problems.append(f"no label files ending with '{ending}' in {root / 'labelsTr'}")
    for case in sorted(set(images) - set(labels)):
        first = images[case][min(images[case])]
        problems.append(f"image without label: {first.relative_to(root)} (expected labelsTr/{case}{ending})")
    for case in sorted(labels):
        if case not in images:
            problems.append(
                f"label without image: {labels[case].relative_to(root)} (expected imagesTr/{case}_0000{ending})"
            )
            continue
        for ch in range(n_channels):
            if ch not in images[case]:
                problems.append(
                    f"missing channel file imagesTr/{case}_{ch:04d}{ending} ({channel_names.get(str(ch))!s}) "
                    f"for {labels[case].relative_to(root)}"
                )
    n_found = len(set(labels) & set(images))
    if int(meta["numTraining"]) != n_found:
        problems.append(f"{meta_path.name}: numTraining is {meta['numTraining']} but {n_found} labelled case(s) found")

    complete = sorted(c for c in set(labels) & set(images) if len(images[c]) == n_channels)
    if check_shapes:
        for case in tqdm(complete, desc="checking headers", disable=not progress):
            try:
                lab_shape = radiology.read_image_shape(labels[case])
                for _ch, p in sorted(images[case].items()):
                    shape = radiology.read_image_shape(p)
                    if shape is not None and lab_shape is not None and tuple(shape[:3]) != tuple(lab_shape[:3]):
                        problems.append(
                            f"shape mismatch: {p.relative_to(root)} {shape} vs "
                            f"{labels[case].relative_to(root)} {lab_shape}"
                        )
            except Exception as e:  # noqa: BLE001 - report unreadable headers with the other problems
                problems.append(f"cannot read header of case {case}: {e}")
    test_problems: list[str] = []
    test_images = _scan_images(root / "imagesTs", ending, n_channels, root, test_problems)
    for case, chans in sorted(test_images.items()):
        for ch in range(n_channels):
            if ch not in chans:
                test_problems.append(f"missing channel file imagesTs/{case}_{ch:04d}{ending}")
    problems += test_problems
    if problems:
        raise ValueError(f"{len(problems)} problem(s) in nnU-Net dataset {root}:\n  " + "\n  ".join(problems))

    def _image(chans: dict[int, Path]) -> str | list[str]:
        rel = [chans[c].relative_to(root).as_posix() for c in range(n_channels)]
        return rel[0] if n_channels == 1 else rel

    labelled = {c: {"image": _image(images[c]), "label": labels[c].relative_to(root).as_posix()} for c in complete}
    unlabeled = {c: {"image": _image(ch)} for c, ch in sorted(test_images.items())}
    return meta, labelled, unlabeled


def nnunet_to_datalist(
    dataset_dir: str | Path,
    val_frac: float = 0.1,
    test_frac: float = 0.2,
    seed: int = 0,
    fractions: Sequence[float] = radiology.DEFAULT_LABEL_FRACTIONS,
    check_shapes: bool = True,
    progress: bool = False,
) -> dict[str, Any]:
    """MONAI datalist (``training``/``validation``/``test``/``label_fractions``/``unlabeled``/``dataset``)
    from an nnU-Net v2 raw dataset, paths relative to ``dataset_dir``."""
    meta, labelled, unlabeled = read_nnunet_dataset(dataset_dir, check_shapes=check_shapes, progress=progress)
    datalist = {
        "name": meta.get("name", Path(dataset_dir).name),
        "source": str(Path(dataset_dir).resolve()),
        **radiology.make_split_datalist(
            labelled, val_frac=val_frac, test_frac=test_frac, seed=seed, fractions=fractions
        ),
    }
    datalist["unlabeled"] = [{"id": c, **e} for c, e in unlabeled.items()]
    datalist["dataset"] = {
        "format": "nnunet",
        "channel_names": {str(k): v for k, v in meta["channel_names"].items()},
        "labels": meta["labels"],
        "file_ending": meta["file_ending"],
    }
    return datalist


# ----------------------------------------------------------------------------------------------
# datalist -> nnU-Net
# ----------------------------------------------------------------------------------------------


def case_id(image: str | Sequence[str]) -> str:
    """Case identifier from an image path: file name without extension and without a ``_XXXX`` channel suffix."""
    first = Path(image if isinstance(image, (str, os.PathLike)) else image[0])
    name = first.name
    for ending in (*radiology.NIFTI_SUFFIXES[::-1], *radiology.NRRD_SUFFIXES, *radiology.DICOM_SUFFIXES, ".mha"):
        if name.lower().endswith(ending):
            name = name[: -len(ending)]
            break
    m = _CHANNEL_RE.match(name)
    return m["case"] if m else name


def entry_id(entry: Mapping[str, Any]) -> str:
    """The entry's ``id``, else the case id derived from its image path."""
    return str(entry["id"]) if entry.get("id") else case_id(entry["image"])


def _load_any(path: Path) -> tuple[np.ndarray, np.ndarray]:
    fmt = radiology.detect_format(path)
    if fmt == "nifti":
        img = nib.load(str(path))
        return np.asanyarray(img.dataobj), img.affine
    if fmt == "nrrd":
        return radiology.load_nrrd(path)
    return radiology.load_dicom_series(path)


def _label_array(array: np.ndarray, source: Path) -> np.ndarray:
    rounded = np.round(array)
    if not np.allclose(rounded, array):
        raise ValueError(f"label {source} has non-integer values")
    return rounded.astype(np.uint8 if rounded.min() >= 0 and rounded.max() < 256 else np.int16)


def _export_file(src: Path, dst: Path, ending: str, is_label: bool, mode: str) -> None:
    """Copy / link ``src`` when it already has the target ending, otherwise convert it to NIfTI."""
    if mode != "convert" and src.is_file() and src.name.endswith(ending):
        if mode == "symlink":
            dst.symlink_to(src.resolve())
        elif mode == "hardlink":
            os.link(src, dst)
        else:
            shutil.copy2(src, dst)
        return
    if ending not in radiology.NIFTI_SUFFIXES:
        raise ValueError(f"cannot convert {src} to file_ending '{ending}' (only .nii.gz / .nii output is supported)")
    array, affine = _load_any(src)
    if is_label:
        array = _label_array(np.asarray(array), src)
    img = nib.Nifti1Image(array, affine)
    img.set_sform(affine, code=1)
    img.set_qform(affine, code=1)
    nib.save(img, str(dst))


def _labels_from_info(info: Mapping[str, Any] | None) -> dict[str, Any] | None:
    if not info or not isinstance(info.get("labels"), dict):
        return None
    labels = dict(info["labels"])
    if all(isinstance(v, str) for v in labels.values()):  # MSD style {"0": "background", "1": "x"}
        labels = {("background" if int(k) == 0 else v): int(k) for k, v in labels.items()}
    return labels


def _scan_label_values(paths: Sequence[Path], progress: bool) -> dict[str, int]:
    values: set[int] = set()
    for p in tqdm(paths, desc="scanning labels", disable=not progress):
        values.update(int(v) for v in np.unique(np.round(np.asarray(_load_any(p)[0]))))
    values.add(0)
    return {("background" if v == 0 else f"label_{v}"): v for v in sorted(values)}


def datalist_to_nnunet(
    datalist: Mapping[str, Any] | str | Path,
    out_root: str | Path,
    dataset_id: int,
    name: str,
    base_dir: str | Path | None = None,
    channel_names: Mapping[str, str] | Sequence[str] | None = None,
    labels: Mapping[str, Any] | None = None,
    file_ending: str = ".nii.gz",
    train_sections: Sequence[str] = ("training", "validation"),
    test_sections: Sequence[str] = ("test",),
    fraction: float | None = None,
    mode: str = "copy",
    overwrite: bool = False,
    progress: bool = False,
) -> Path:
    """Write ``out_root/Dataset{dataset_id:03d}_{name}`` from a MONAI datalist and return that folder.

    Args:
        datalist: dict or path of a datalist JSON. Relative paths resolve against ``base_dir``, by default
            the datalist's ``source`` folder if it exists, else the JSON's folder, else the current directory.
        channel_names: ``{"0": "CT"}`` or ``["CT"]``; default: ``datalist["dataset"]["channel_names"]``.
        labels: nnU-Net ``{"background": 0, ...}``; default: ``datalist["dataset"]["labels"]``, else scanned.
        train_sections / test_sections: datalist keys exported to ``imagesTr`` / ``imagesTs``.
        fraction: export only the entries of ``train_sections`` whose ids are in ``label_fractions[f"{fraction:g}"]``.
        mode: ``"copy"``, ``"hardlink"`` or ``"symlink"`` for files already in ``file_ending`` format
            (others are converted to NIfTI, labels as uint8/int16), or ``"convert"`` to always rewrite.
        overwrite: replace an existing non-empty folder (only once the new one is complete), else
            ``FileExistsError``. The folder is filled beside its target and swapped in whole
            (``mdm_med.io.fill_folder_atomically``), so an error or interruption leaves no half-written dataset.
    """
    json_dir = None
    if isinstance(datalist, (str, Path)):
        json_dir = Path(datalist).parent
        datalist = read_json_object(Path(datalist))
    if base_dir is None:  # the converters store the dataset root as "source"
        source = datalist.get("source")
        base_dir = source if isinstance(source, str) and Path(source).is_dir() else json_dir
    base = Path(base_dir) if base_dir is not None else Path.cwd()
    if mode not in ("copy", "hardlink", "symlink", "convert"):
        raise ValueError(f"mode must be copy, hardlink, symlink or convert, got {mode!r}")
    if not 1 <= int(dataset_id) <= 999:
        raise ValueError(f"dataset_id must be in 1..999, got {dataset_id}")
    if not re.match(r"^[A-Za-z0-9_\-]+$", name):
        raise ValueError(f"dataset name must use letters, digits, '_' or '-', got {name!r}")
    if not file_ending.startswith("."):
        raise ValueError(f"file_ending must start with '.', got {file_ending!r}")

    info = datalist.get("dataset") if isinstance(datalist.get("dataset"), dict) else None
    if fraction is not None:
        key = f"{float(fraction):g}"
        if key not in datalist.get("label_fractions", {}):
            raise KeyError(f"label fraction {key} not in datalist (have {list(datalist.get('label_fractions', {}))})")
        wanted = set(datalist["label_fractions"][key])
        pool = [e for s in train_sections for e in datalist.get(s, [])]
        train_entries = [e for e in pool if entry_id(e) in wanted]
        if len(train_entries) != len(wanted):
            raise ValueError(f"label fraction {key}: ids {sorted(wanted - {entry_id(e) for e in pool})} not found")
    else:
        train_entries = [e for s in train_sections for e in datalist.get(s, [])]
    test_entries = [e for s in test_sections for e in datalist.get(s, [])]
    if not train_entries:
        raise ValueError(f"no training entries found in datalist sections {list(train_sections)}")

    def _paths(value: Any) -> list[Path]:
        vals = [value] if isinstance(value, (str, os.PathLike)) else list(value)
        return [p if p.is_absolute() else base / p for p in (Path(v) for v in vals)]

    problems: list[str] = []
    seen: dict[str, str] = {}
    n_channels = None
    for e in train_entries + test_entries:
        img = e.get("image")
        if img is None:
            problems.append(f"entry without image: {e}")
            continue
        cid = entry_id(e)
        if cid in seen:
            problems.append(f"duplicate case id {cid!r}: {seen[cid]} and {img}")
        seen[cid] = str(img)
        n = len(_paths(img))
        if n_channels is None:
            n_channels = n
        elif n != n_channels:
            problems.append(f"{img}: {n} channel(s), expected {n_channels}")
        for p in _paths(img) + (_paths(e["label"]) if e.get("label") else []):
            if not p.exists():
                problems.append(f"file not found: {p}")
    for e in train_entries:
        if not e.get("label"):
            problems.append(f"training entry without label: {e.get('image')}")
    if problems:
        raise ValueError(f"{len(problems)} problem(s) exporting to nnU-Net:\n  " + "\n  ".join(problems))

    if channel_names is None:
        channel_names = (info or {}).get("channel_names")
        if not channel_names or len(channel_names) != n_channels:
            channel_names = {str(i): f"channel_{i}" for i in range(n_channels)}
            warnings.warn(
                f"no channel_names given, using {channel_names} (nnU-Net applies CT normalisation only to 'CT')",
                stacklevel=2,
            )
    if not isinstance(channel_names, Mapping):
        channel_names = {str(i): str(v) for i, v in enumerate(channel_names)}
    channel_names = {str(k): str(v) for k, v in channel_names.items()}
    if len(channel_names) != n_channels:
        raise ValueError(f"{len(channel_names)} channel name(s) given for {n_channels}-channel images")
    if labels is None:
        labels = _labels_from_info(info) or _scan_label_values(
            [p for e in train_entries for p in _paths(e["label"])], progress
        )
    labels = dict(labels)
    if labels.get("background") != 0:
        raise ValueError(f'labels must contain "background": 0, got {labels}')

    out = Path(out_root) / f"Dataset{int(dataset_id):03d}_{name}"
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not overwrite:
        raise FileExistsError(f"{out} exists and is not empty (use overwrite=True / --overwrite)")

    def fill(tmp: Path) -> None:
        for sub in ("imagesTr", "labelsTr") + (("imagesTs", "labelsTs") if test_entries else ()):
            (tmp / sub).mkdir()
        jobs = [(e, "Tr") for e in train_entries] + [(e, "Ts") for e in test_entries]
        has_test_labels = False
        for e, split in tqdm(jobs, desc="exporting", disable=not progress):
            cid = entry_id(e)
            for ch, src in enumerate(_paths(e["image"])):
                _export_file(src, tmp / f"images{split}" / f"{cid}_{ch:04d}{file_ending}", file_ending, False, mode)
            if e.get("label"):
                has_test_labels |= split == "Ts"
                _export_file(_paths(e["label"])[0], tmp / f"labels{split}" / f"{cid}{file_ending}", file_ending, True,
                             mode)
        if test_entries and not has_test_labels:
            (tmp / "labelsTs").rmdir()
        dataset_json = {
            "name": name,
            "description": "exported from a MONAI datalist by mdm_med data_prep/nnunet.py",
            "channel_names": channel_names,
            "labels": labels,
            "numTraining": len(train_entries),
            "file_ending": file_ending,
        }
        write_json_atomic(dataset_json, tmp / "dataset.json")

    fill_folder_atomically(out, fill)
    return out


# ----------------------------------------------------------------------------------------------
# CLI
# ----------------------------------------------------------------------------------------------


def _fractions(text: str) -> tuple[float, ...]:
    return tuple(float(v) for v in text.split(",") if v.strip())


def _labels_arg(text: str) -> dict[str, int]:
    out = {}
    for item in text.split(","):
        key, _, value = item.partition("=")
        out[key.strip()] = int(value)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p_in = sub.add_parser("to-datalist", help="nnU-Net raw dataset -> MONAI datalist JSON")
    p_in.add_argument("dataset_dir", type=Path, help="DatasetXXX_Name folder")
    p_in.add_argument("--datalist-out", type=Path, default=None, help="output JSON (default DATASET_DIR/datalist.json)")
    p_in.add_argument("--seed", type=int, default=0)
    p_in.add_argument("--val-frac", type=float, default=0.1)
    p_in.add_argument("--test-frac", type=float, default=0.2)
    p_in.add_argument("--fractions", type=_fractions, default=radiology.DEFAULT_LABEL_FRACTIONS)
    p_in.add_argument("--no-check", action="store_true", help="skip the image/label header shape check")

    p_out = sub.add_parser("to-nnunet", help="MONAI datalist JSON -> nnU-Net raw dataset")
    p_out.add_argument("datalist", type=Path, help="datalist JSON")
    p_out.add_argument("out_root", type=Path, help="nnUNet_raw folder")
    p_out.add_argument("--dataset-id", type=int, required=True, help="1..999")
    p_out.add_argument("--name", required=True, help="dataset name (DatasetXXX_<name>)")
    p_out.add_argument(
        "--base-dir",
        type=Path,
        default=None,
        help="root of relative paths (default: the datalist source, else the JSON folder)",
    )
    p_out.add_argument("--channel-names", default=None, help="comma-separated, e.g. CT or T1,T2")
    p_out.add_argument("--labels", type=_labels_arg, default=None, help="e.g. background=0,liver=1,tumour=2")
    p_out.add_argument("--file-ending", default=".nii.gz")
    p_out.add_argument("--fraction", type=float, default=None, help="export only this label fraction for training")
    p_out.add_argument("--no-test", action="store_true", help="do not export the test section to imagesTs")
    p_out.add_argument("--mode", choices=("copy", "hardlink", "symlink", "convert"), default="copy")
    p_out.add_argument("--overwrite", action="store_true")
    args = parser.parse_args(argv)

    try:
        if args.command == "to-datalist":
            datalist = nnunet_to_datalist(
                args.dataset_dir,
                val_frac=args.val_frac,
                test_frac=args.test_frac,
                seed=args.seed,
                fractions=args.fractions,
                check_shapes=not args.no_check,
                progress=True,
            )
            out = args.datalist_out or args.dataset_dir / "datalist.json"
            write_json_atomic(datalist, out)
            print(
                f"training: {len(datalist['training'])}  validation: {len(datalist['validation'])}  "
                f"test: {len(datalist['test'])}  unlabeled: {len(datalist['unlabeled'])}"
            )
            print("label fractions: " + ", ".join(f"{f}={len(v)}" for f, v in datalist["label_fractions"].items()))
            print(f"wrote {out} (paths relative to {args.dataset_dir})")
        else:
            folder = datalist_to_nnunet(
                args.datalist,
                args.out_root,
                args.dataset_id,
                args.name,
                base_dir=args.base_dir,
                channel_names=args.channel_names.split(",") if args.channel_names else None,
                labels=args.labels,
                file_ending=args.file_ending,
                test_sections=() if args.no_test else ("test",),
                fraction=args.fraction,
                mode=args.mode,
                overwrite=args.overwrite,
                progress=True,
            )
            meta = json.loads((folder / "dataset.json").read_text())
            n_test = (
                len(list((folder / "imagesTs").glob(f"*_0000{args.file_ending}")))
                if (folder / "imagesTs").is_dir()
                else 0
            )
            print(f"wrote {folder}: {meta['numTraining']} training case(s), {n_test} test case(s)")
            print(f"channels: {meta['channel_names']}  labels: {meta['labels']}")
    except (ValueError, KeyError, FileNotFoundError, FileExistsError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
