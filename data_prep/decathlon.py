"""Medical Segmentation Decathlon folder -> MONAI datalist JSON with a fixed train/val/test split.

Layout read: ``ROOT/dataset.json``, ``ROOT/imagesTr/*.nii.gz``, ``ROOT/labelsTr/*.nii.gz`` and optionally
``ROOT/imagesTs/*.nii.gz`` (macOS ``._*`` and other hidden files are ignored).

Decathlon test labels are not public, so ``validation`` and ``test`` are carved from the labelled cases
(default 70/10/20, seeded permutation of the sorted case names). ``label_fractions`` holds nested prefixes of
the training list (natural order), as id lists keyed ``f"{f:g}"`` ("0.05" ... "1"; read them with
``mdm_med.data.datalist.labelled_subset``); every entry has an ``id``; ``unlabeled`` lists ``imagesTs`` (useful for
self-supervised pretraining). Paths are relative to ROOT, which is stored as ``source``.

Example: ``python data_prep/decathlon.py /data/Task02_Heart --datalist-out /data/heart_datalist.json``
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from tqdm import tqdm

try:
    from mdm_med.data.radiology import DEFAULT_LABEL_FRACTIONS, make_split_datalist, read_image_shape
except ImportError:  # running from a source checkout without installing the package
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from mdm_med.data.radiology import DEFAULT_LABEL_FRACTIONS, make_split_datalist, read_image_shape

NIFTI_ENDINGS = (".nii.gz", ".nii")


def case_name(filename: str) -> str:
    """``"la_003.nii.gz" -> "la_003"``."""
    for ending in NIFTI_ENDINGS:
        if filename.endswith(ending):
            return filename[: -len(ending)]
    return filename


def list_nifti(folder: Path) -> dict[str, Path]:
    """``{case: path}`` of the NIfTI files in ``folder`` (hidden and macOS ``._`` files ignored)."""
    if not folder.is_dir():
        return {}
    return {
        case_name(p.name): p
        for p in sorted(folder.iterdir())
        if p.is_file() and not p.name.startswith(".") and p.name.endswith(NIFTI_ENDINGS)
    }


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


def build_datalist(
    root: str | Path,
    val_frac: float = 0.1,
    test_frac: float = 0.2,
    seed: int = 0,
    fractions: tuple[float, ...] = DEFAULT_LABEL_FRACTIONS,
    check_shapes: bool = True,
    progress: bool = False,
) -> dict[str, Any]:
    """Scan a Decathlon task folder and return the datalist dict (see module docstring).

    Raises ``ValueError`` listing every problem found (image without label, label without image, shape
    mismatch, entries of ``dataset.json`` missing on disk, unreadable headers).
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"Decathlon folder not found: {root}")
    meta: dict[str, Any] = {}
    meta_path = root / "dataset.json"
    if meta_path.is_file():
        meta = json.loads(meta_path.read_text())
    else:
        print(f"warning: {meta_path} not found, using the files on disk only", file=sys.stderr)

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
                img_shape, lab_shape = read_image_shape(img_p), read_image_shape(lab_p)
            except Exception as e:  # noqa: BLE001 - report any unreadable header among the problems
                problems.append(f"cannot read header of {img_p.relative_to(root)} or {lab_p.relative_to(root)}: {e}")
                continue
            if img_shape[:3] != lab_shape[:3] or len(lab_shape) != 3:
                problems.append(
                    f"shape mismatch: {img_p.relative_to(root)} {img_shape} vs {lab_p.relative_to(root)} {lab_shape}"
                )
    if problems:
        raise ValueError(f"{len(problems)} problem(s) in {root}:\n  " + "\n  ".join(problems))

    cases = {
        c: {"image": images[c].relative_to(root).as_posix(), "label": labels[c].relative_to(root).as_posix()}
        for c in paired
    }
    datalist = {
        "name": meta.get("name", root.name),
        "source": str(root.resolve()),
        **make_split_datalist(cases, val_frac=val_frac, test_frac=test_frac, seed=seed, fractions=fractions),
    }
    datalist["unlabeled"] = [
        {"id": c, "image": p.relative_to(root).as_posix()} for c, p in list_nifti(root / "imagesTs").items()
    ]
    datalist["dataset"] = _dataset_info(meta)
    return datalist


def summary(datalist: dict[str, Any]) -> str:
    """One-paragraph text summary of a datalist."""
    lines = [
        (
            f"training: {len(datalist['training'])}  validation: {len(datalist['validation'])}  "
            f"test: {len(datalist['test'])}  unlabeled: {len(datalist.get('unlabeled', []))}"
        ),
        "label fractions: " + ", ".join(f"{f}={len(v)}" for f, v in datalist["label_fractions"].items()),
    ]
    return "\n".join(lines)


def _fractions(text: str) -> tuple[float, ...]:
    return tuple(float(v) for v in text.split(",") if v.strip())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("root", type=Path, help="Decathlon task folder (holding dataset.json, imagesTr, labelsTr)")
    parser.add_argument("--datalist-out", type=Path, default=None, help="output JSON (default ROOT/datalist.json)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the split permutation (default 0)")
    parser.add_argument("--val-frac", type=float, default=0.1, help="fraction of labelled cases for validation")
    parser.add_argument("--test-frac", type=float, default=0.2, help="fraction of labelled cases for test")
    parser.add_argument(
        "--fractions",
        type=_fractions,
        default=DEFAULT_LABEL_FRACTIONS,
        help="comma-separated label fractions of the training list (default 0.05,0.1,0.25,0.5,1.0)",
    )
    parser.add_argument("--no-check", action="store_true", help="skip the image/label header shape check")
    args = parser.parse_args(argv)

    try:
        datalist = build_datalist(
            args.root,
            val_frac=args.val_frac,
            test_frac=args.test_frac,
            seed=args.seed,
            fractions=args.fractions,
            check_shapes=not args.no_check,
            progress=True,
        )
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    out = args.datalist_out or args.root / "datalist.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(datalist, indent=2) + "\n")
    print(summary(datalist))
    print(f"wrote {out} (paths relative to {args.root})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
