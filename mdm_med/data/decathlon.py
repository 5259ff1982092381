"""Medical Segmentation Decathlon layout: scanning, validation and a fixed train/val/test datalist.

Layout read: ``ROOT/imagesTr/*.nii.gz``, ``ROOT/labelsTr/*.nii.gz``, optionally ``ROOT/dataset.json`` and
``ROOT/imagesTs/*.nii.gz`` (macOS ``._*`` and other hidden files are ignored). Images and labels pair by file name.

Decathlon test labels are not public, so ``validation`` and ``test`` are carved from the labelled cases
(default 70/10/20, seeded permutation of the sorted case names, see ``mdm_med.data.radiology.split_cases``).
``label_fractions`` holds nested prefixes of the training list (natural order), as id lists keyed ``f"{f:g}"``
("0.05" ... "1"; read them with ``mdm_med.data.datalist.labelled_subset``); every entry has an ``id``;
``unlabeled`` lists ``imagesTs`` (pretraining reads it only with ``pretrain_include_unlabeled``). ROOT is stored
as ``source``.
``check_decathlon_files`` reads every listed file once before any compute (bundles wrap the datalist with it).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import nibabel as nib
from tqdm import tqdm

from mdm_med.data.datalist import read_json_object, resolve_dataset_dir
from mdm_med.data.radiology import (
    AFFINE_ATOL,
    DEFAULT_LABEL_FRACTIONS,
    affines_match,
    check_radiology_files,
    make_split_datalist,
)

__all__ = [
    "NIFTI_ENDINGS",
    "case_name",
    "list_nifti",
    "build_decathlon_datalist",
    "check_decathlon_files",
    "has_decathlon_images",
    "resolve_decathlon_dir",
]

logger = logging.getLogger(__name__)

NIFTI_ENDINGS = (".nii.gz", ".nii")


def case_name(filename: str) -> str:
    """``"la_003.nii.gz" -> "la_003"``."""
    for ending in NIFTI_ENDINGS:
        if filename.endswith(ending):
            return filename[: -len(ending)]
    return filename


def list_nifti(folder: str | os.PathLike) -> dict[str, Path]:
    """``{case: path}`` of the NIfTI files in ``folder`` (hidden and macOS ``._`` files ignored; ``{}`` if missing).

    Two files of one case (``la_003.nii`` and ``la_003.nii.gz``) raise ``ValueError`` naming both.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return {}
    found: dict[str, Path] = {}
    for p in sorted(folder.iterdir()):
        if p.is_file() and not p.name.startswith(".") and p.name.endswith(NIFTI_ENDINGS):
            case = case_name(p.name)
            if case in found:
                raise ValueError(f"two files for case {case!r}: {found[case]} and {p}; keep one of them")
            found[case] = p
    return found


def _dataset_info(meta: dict[str, Any]) -> dict[str, Any]:
    """Normalise MSD ``dataset.json`` fields: ``modality {"0": "CT"}`` -> ``channel_names``,
    ``labels {"0": "background", "1": "x"}`` -> ``{"background": 0, "x": 1}`` (nnU-Net v2 style)."""
    info: dict[str, Any] = {"format": "decathlon"}
    if isinstance(meta.get("modality"), dict):
        info["channel_names"] = {str(k): str(v) for k, v in meta["modality"].items()}
    if isinstance(meta.get("labels"), dict):
        try:
            items = sorted((int(value), str(name)) for value, name in meta["labels"].items())
            info["labels"] = {("background" if value == 0 else name): value for value, name in items}
        except ValueError:  # not the MSD {"0": "background", ...} form: keep it as is
            info["labels"] = meta["labels"]
    return info


def build_decathlon_datalist(
    root: str | os.PathLike,
    val_frac: float = 0.1,
    test_frac: float = 0.2,
    seed: int = 0,
    fractions: tuple[float, ...] = DEFAULT_LABEL_FRACTIONS,
    check_shapes: bool = True,
    progress: bool = False,
    absolute: bool = True,
) -> dict[str, Any]:
    """Scan a Decathlon task folder and return the datalist dict (see module docstring).

    Entry paths are absolute when ``absolute`` (what bundles need), else relative to ``root`` (posix, as
    ``data_prep/decathlon.py`` writes them). With ``check_shapes`` the headers of every pair must agree on
    the spatial shape ``(X, Y, Z)`` and the affine (within ``AFFINE_ATOL``) and labels must be 3-D (the voxels
    are read by ``check_decathlon_files``). Raises ``FileNotFoundError`` when ``root`` does not exist and one
    ``ValueError`` listing every problem found (image without label, label without image, shape or affine
    mismatch, entries of ``dataset.json`` missing on disk, unreadable headers), files named relative to ``root``;
    a malformed ``dataset.json`` or two files of one case raise ``ValueError`` naming them.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"Decathlon folder not found: {root}")
    base = root.resolve()
    meta: dict[str, Any] = {}
    meta_path = root / "dataset.json"
    if meta_path.is_file():
        meta = read_json_object(meta_path)
    else:
        logger.warning("%s not found, using the files on disk only", meta_path)

    images, labels = list_nifti(root / "imagesTr"), list_nifti(root / "labelsTr")
    problems: list[str] = []
    if not images:
        problems.append(f"no NIfTI images in {root / 'imagesTr'}")
    for case in sorted(set(images) - set(labels)):
        problems.append(f"image without label: {images[case].relative_to(root)}")
    for case in sorted(set(labels) - set(images)):
        problems.append(f"label without image: {labels[case].relative_to(root)}")
    for entry in meta.get("training", []):
        for key in ("image", "label"):
            rel = entry.get(key) if isinstance(entry, dict) else None
            if rel and not Path(rel).name.startswith(".") and not (root / rel).is_file():
                problems.append(f"dataset.json lists missing file: {rel}")

    paired = sorted(set(images) & set(labels))
    if check_shapes:
        for case in tqdm(paired, desc="checking headers", disable=not progress):
            img_p, lab_p = images[case], labels[case]
            try:
                img, lab = nib.load(str(img_p)), nib.load(str(lab_p))
            except Exception as e:  # noqa: BLE001 - report any unreadable header among the problems
                problems.append(f"cannot read header of {img_p.relative_to(root)} or {lab_p.relative_to(root)}: {e}")
                continue
            img_shape, lab_shape = tuple(int(s) for s in img.shape), tuple(int(s) for s in lab.shape)
            if img_shape[:3] != lab_shape[:3] or len(lab_shape) != 3:
                problems.append(
                    f"shape mismatch: {img_p.relative_to(root)} {img_shape} vs {lab_p.relative_to(root)} {lab_shape}"
                )
            elif not affines_match(img.affine, lab.affine):
                problems.append(
                    f"affine mismatch (more than {AFFINE_ATOL}): {img_p.relative_to(root)} vs {lab_p.relative_to(root)}"
                )
    if problems:
        raise ValueError(f"{len(problems)} problem(s) in {root}:\n  " + "\n  ".join(problems))

    def where(path: Path) -> str:
        rel = path.relative_to(root)
        return str(base / rel) if absolute else rel.as_posix()

    cases = {c: {"image": where(images[c]), "label": where(labels[c])} for c in paired}
    datalist = {
        "name": meta.get("name", base.name),
        "source": str(base),
        **make_split_datalist(cases, val_frac=val_frac, test_frac=test_frac, seed=seed, fractions=fractions),
    }
    datalist["unlabeled"] = [{"id": c, "image": where(p)} for c, p in list_nifti(root / "imagesTs").items()]
    datalist["dataset"] = _dataset_info(meta)
    return datalist


def check_decathlon_files(
    datalist: dict[str, Any],
    in_channels: int | None = None,
    num_classes: int | None = None,
    splits: tuple[str, ...] = ("training", "validation", "test", "unlabeled"),
) -> dict[str, Any]:
    """Read every image and label of ``splits`` once before any compute (``check_radiology_files``): missing,
    truncated or corrupt files, NaN / Inf, channel counts other than ``in_channels``, image/label shape or affine
    mismatches and label values outside ``0..num_classes-1`` are reported together in one ``ValueError`` naming
    the files. ``num_classes`` defaults to the ``dataset.json`` labels; a different ``num_classes`` is an error.
    Relative paths are read from ``datalist["source"]``. Returns ``datalist`` (bundles wrap their datalist with it).
    """
    source = datalist.get("source", "")
    labels = (datalist.get("dataset") or {}).get("labels")
    values = list(labels.values()) if isinstance(labels, dict) else []
    if values and all(isinstance(v, int) for v in values):
        values = sorted(values)
        if num_classes is None:
            num_classes = max(values) + 1
        elif values != list(range(num_classes)):
            raise ValueError(f"num_classes={num_classes} but dataset.json of {source} lists label values {values}")

    def resolve(path: Any) -> Any:
        if isinstance(path, (list, tuple)):
            return [resolve(p) for p in path]
        return path if os.path.isabs(path) else os.path.join(source, path)

    problems = []
    for split in splits:
        items = [{**e, **{k: resolve(e[k]) for k in ("image", "label") if k in e}} for e in datalist.get(split) or []]
        if not items:
            continue
        try:
            check_radiology_files(items, what=split, in_channels=in_channels, num_classes=num_classes)
        except ValueError as e:
            problems.append(str(e))
    if not datalist.get("training"):
        problems.append("training is empty")
    if problems:
        raise ValueError(f"{datalist.get('name', 'datalist')} from {source}:\n" + "\n".join(problems))
    return datalist


def has_decathlon_images(folder: str | os.PathLike) -> bool:
    """True when ``folder`` exists and ``folder/imagesTr`` holds at least one NIfTI file."""
    return bool(folder) and Path(folder).is_dir() and bool(list_nifti(Path(folder) / "imagesTr"))


def resolve_decathlon_dir(dataset_dir: str | os.PathLike | None, demo_dir: str | os.PathLike,
                          **demo_kwargs) -> tuple[str, bool]:
    """``(folder, is_demo)``: ``dataset_dir`` when given, else the synthetic hippocampus demo (generated into
    ``demo_dir`` if needed, ``demo_kwargs`` go to ``generate_hippocampus_demo``) with a loud log line saying so.

    A given ``dataset_dir`` that does not exist or has no ``imagesTr/*.nii.gz`` raises ``FileNotFoundError``:
    a typo never silently turns into a run on demo data.
    """

    def demo() -> Path:
        from mdm_med.data.synthetic_volumes import generate_hippocampus_demo

        return generate_hippocampus_demo(demo_dir, **demo_kwargs)

    return resolve_dataset_dir(
        dataset_dir, demo_dir,
        lambda d: None if has_decathlon_images(d) else f"has no NIfTI images in {Path(d) / 'imagesTr'}",
        demo, "Decathlon Task04_Hippocampus", "To use real data, pass --dataset_dir /path/to/Task04_Hippocampus "
        "(a Decathlon task folder with imagesTr/*.nii.gz and labelsTr/*.nii.gz)", logger)
