"""One report from several benchmark runs: ``python -m mdm_med.benchmark.combine --out DIR A.csv B.csv``.

For methods run into separate ``--out`` folders (at the same time, or on other machines): the rows of every
``results.csv`` become one ``results.csv``, ``results.md`` and ``plot.png`` (a cell in two files must agree).
"""

from __future__ import annotations

import argparse
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path

from mdm_med.benchmark.report import merge_results, write_report


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m mdm_med.benchmark.combine",
        description="Combine the results.csv of several benchmark runs into one results.csv, results.md and plot.png.")
    p.add_argument("csv", nargs="+", help="results.csv files (e.g. runs/a/results.csv runs/b/results.csv)")
    p.add_argument("--out", required=True, help="folder for the combined results.csv / results.md / plot.png")
    p.add_argument("--title", default="combined", help="report title (e.g. the profile's name)")
    p.add_argument("--method-order", type=lambda v: [m for m in v.split(",") if m], default=[],
                   help="methods listed first, comma separated (e.g. mdm,mdm_mse,scratch)")
    args = p.parse_args(argv)
    try:
        rows = merge_results(args.csv, args.method_order)
    except (FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    pretrain = {}  # one entry per pretraining: a variant that reuses another method's (pretrained_by) adds none
    for r in rows:
        if r.get("pretrain_wall_s") is not None:
            pretrain.setdefault(r.get("pretrain_method") or r["method"], {"wall_s": r["pretrain_wall_s"]})
    datasets = {r["dataset"] for r in rows if r.get("dataset")}  # one at most: merge_results refuses a mix
    info = {"profile": args.title, "sources": [str(c) for c in args.csv], "pretrain": pretrain,
            **({"dataset": datasets.pop()} if datasets else {}),
            "object_metrics": [m for m in ("object_f1", "object_dice", "object_hausdorff")
                               if any(r.get(m) is not None for r in rows)],
            "command": shlex.join(["python", "-m", "mdm_med.benchmark.combine",
                                   *(sys.argv[1:] if argv is None else argv)])}
    Path(args.out).mkdir(parents=True, exist_ok=True)
    paths = write_report(rows, args.out, info)
    print(f"[report] {len(rows)} rows from {len(args.csv)} file(s) -> {paths['md']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
