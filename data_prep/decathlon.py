"""Medical Segmentation Decathlon folder -> MONAI datalist JSON with a fixed train/val/test split.

Layout read: ``ROOT/dataset.json``, ``ROOT/imagesTr/*.nii.gz``, ``ROOT/labelsTr/*.nii.gz`` and optionally
``ROOT/imagesTs/*.nii.gz`` (macOS ``._*`` and other hidden files are ignored).

Decathlon test labels are not public, so ``validation`` and ``test`` are carved from the labelled cases
(default 70/10/20, seeded permutation of the sorted case names). ``label_fractions`` holds nested prefixes of
the training list (natural order), as id lists keyed ``f"{f:g}"`` ("0.05" ... "1"; read them with
``mdm_med.data.datalist.labelled_subset``); every entry has an ``id``; ``unlabeled`` lists ``imagesTs``
(bundle pretraining reads it only with ``pretrain_include_unlabeled``). Paths are relative to ROOT, which is
stored as ``source``. The scanning logic is ``mdm_med.data.decathlon.build_decathlon_datalist`` (bundles call it
with absolute paths).

Example: ``python data_prep/decathlon.py /data/Task02_Heart --datalist-out /data/heart_datalist.json``
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any

try:
    from mdm_med.data.datalist import write_json_atomic
    from mdm_med.data.decathlon import build_decathlon_datalist
    from mdm_med.data.radiology import DEFAULT_LABEL_FRACTIONS
except ImportError:  # running from a source checkout without installing the package
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from mdm_med.data.datalist import write_json_atomic
    from mdm_med.data.decathlon import build_decathlon_datalist
    from mdm_med.data.radiology import DEFAULT_LABEL_FRACTIONS


def build_datalist(root: str | Path, **kwargs: Any) -> dict[str, Any]:
    """``build_decathlon_datalist`` with paths relative to ``root`` (the JSON this script writes)."""
    return build_decathlon_datalist(root, absolute=False, **kwargs)


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
    logging.basicConfig(format="%(levelname)s: %(message)s")  # the library warns via logging

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
    write_json_atomic(datalist, out)
    print(summary(datalist))
    print(f"wrote {out} (paths relative to {args.root})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
