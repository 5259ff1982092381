"""GlaS (MICCAI 2015) -> MONAI datalist JSON with a validation split and nested label-fraction subsets.

Accepts the challenge layout (``train_N.bmp`` + ``train_N_anno.bmp`` instance masks, ``testA_*``, ``testB_*``) and
the PNG variant (``*.png`` + ``*_anno.png``, binary 0/255). Images stay where they are; the datalist points at them.

    python data_prep/glas.py --input ../shared/data/glas --output runs/glas_datalist.json
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from mdm_med.data.datalist import DEFAULT_FRACTIONS, write_json_atomic  # noqa: E402
from mdm_med.data.glas import build_glas_datalist  # noqa: E402
from mdm_med.data.transforms import check_datalist_files  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--input", required=True, help="folder with train_N.* / testA_N.* images and *_anno masks")
    parser.add_argument("--output", required=True, help="datalist JSON to write")
    parser.add_argument("--num-val", type=int, default=8, help="last N training images (numeric order) to validate on")
    parser.add_argument("--test-sets", nargs="+", default=["testA"], choices=["testA", "testB"])
    parser.add_argument("--fractions", nargs="+", type=float, default=list(DEFAULT_FRACTIONS))
    parser.add_argument("--rule", choices=["first", "random"], default="first",
                        help="label subsets: first N in numeric order (the paper's) or a seeded permutation")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    datalist = build_glas_datalist(args.input, args.num_val, tuple(args.test_sets), args.fractions, args.rule,
                                   args.seed)
    check_datalist_files(datalist)
    write_json_atomic(datalist, args.output)
    counts = {k: len(v) for k, v in datalist["label_fractions"].items()}
    print(f"wrote {args.output}: {len(datalist['training'])} training (label pool), {len(datalist['validation'])} "
          f"validation, {len(datalist['test'])} test images; label subsets {counts}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
