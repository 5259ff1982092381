"""Exploration, not a benchmark: which backbone / pretraining / fine-tuning budget should a ``cpu`` profile use?

Runs several budgets side by side (one ``python -m mdm_med.benchmark`` process per method and seed group, sharing
each budget's pretraining), at 10% labels, seeds 0-2. Made for a GPU machine with many cores; progress goes to
``$OUT/summary.json`` (atomically, every 10 s) so a run cut off at its deadline still reports what finished.

- ``--dataset glas`` (``budget_sweep.yaml``): on a GlaS copy shrunk to 1/4 resolution beforehand, so images, masks
  and the test are all at 1/4 scale (test Dice is not the native-resolution Dice of the real benchmark).
- ``--dataset hippocampus`` (``../hippocampus_cpu.yaml``): the Decathlon hippocampus volumes as they are.

    python benchmarks/explore/budget_sweep.py --data-dir ../shared/data/glas --work /tmp/sweep --seconds 470
    python benchmarks/explore/budget_sweep.py --dataset hippocampus --data-dir ../shared/data/hippocampus \
        --work /tmp/sweep --seconds 470
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

# dataset -> profile, fixed overrides and budgets: name -> bundle overrides (preset, pretraining iterations / lr,
# segmentation epochs x 25 iterations); "scratch": False where an earlier budget has the same segmentation settings.
SWEEPS = {
    "glas": dict(profile="budget_sweep.yaml", fixed={"image_scale": 1.0}, random="T4k_s500", budgets={
        "T4k_s500": dict(preset="tiny", pretrain_iterations=4000, epoch_length=25, max_epochs=20, val_interval=2),
        "T10k_s500": dict(preset="tiny", pretrain_iterations=10000, epoch_length=25, max_epochs=20, val_interval=2),
        "T4k_s200": dict(preset="tiny", pretrain_iterations=4000, epoch_length=25, max_epochs=8, val_interval=2),
        "C1500_s500": dict(preset="cpu", pretrain_iterations=1500, epoch_length=25, max_epochs=20, val_interval=2),
        "T4k_s1000": dict(preset="tiny", pretrain_iterations=4000, epoch_length=25, max_epochs=40, val_interval=4),
    }),
    "hippocampus": dict(profile="../hippocampus_cpu.yaml", fixed={}, random="C800", budgets={
        "C800": dict(preset="cpu3d", pretrain_iterations=800, pretrain_lr=1e-4),  # mdm_hippocampus 0.2.0 defaults
        "C800_lr5": dict(preset="cpu3d", pretrain_iterations=800, pretrain_lr=5e-4, scratch=False),  # = the profile
        "C4k_lr5": dict(preset="cpu3d", pretrain_iterations=4000, pretrain_lr=5e-4, scratch=False),
        "T4k_lr5": dict(preset="tiny", pretrain_iterations=4000, pretrain_lr=5e-4),
    }),
}


def quarter_scale_copy(src: Path, dst: Path) -> Path:
    """train_* and testA_* PNGs of ``src`` at 1/4 size (images box-filtered, masks nearest) in ``dst``."""
    from PIL import Image

    if (dst / "done").is_file():
        return dst
    dst.mkdir(parents=True, exist_ok=True)
    for p in sorted(src.glob("*.png")):
        if not p.name.startswith(("train_", "testA_")):
            continue
        im = Image.open(p)
        size = (max(1, round(im.size[0] / 4)), max(1, round(im.size[1] / 4)))
        im.resize(size, Image.NEAREST if p.stem.endswith("_anno") else Image.BOX).save(dst / p.name)
    (dst / "done").write_text("ok\n")
    return dst


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", choices=sorted(SWEEPS), default="glas")
    ap.add_argument("--data-dir", required=True, help="the dataset's folder (GlaS: or an existing 1/4-scale copy "
                                                      "with --scaled)")
    ap.add_argument("--scaled", action="store_true", help="--data-dir is already at 1/4 scale")
    ap.add_argument("--work", required=True)
    ap.add_argument("--seconds", type=float, default=470, help="stop collecting after this long")
    args = ap.parse_args()
    out = Path(os.environ.get("OUT", args.work)); out.mkdir(parents=True, exist_ok=True)
    work = Path(args.work); work.mkdir(parents=True, exist_ok=True)
    sweep = SWEEPS[args.dataset]
    budgets, profile = sweep["budgets"], Path(__file__).parent / sweep["profile"]
    if args.dataset != "glas" or args.scaled:
        data = Path(args.data_dir)
    else:
        data = quarter_scale_copy(Path(args.data_dir), work / "glas_quarter")
    deadline = time.time() + args.seconds
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    procs = []

    def launch(name: str, tag: str, extra: list[str]) -> None:
        overrides = {k: v for k, v in budgets[name].items() if k != "scratch"}
        sets = [f"{k}={v}" for k, v in {**sweep["fixed"], **overrides}.items()]
        cmd = [sys.executable, "-m", "mdm_med.benchmark", "--config", str(profile), "--data-dir", str(data),
               "--out", str(work / name), "--fractions", "0.1", *extra, "--set", *sets]
        log = open(work / f"{name}__{tag}.log", "w")
        procs.append((name, tag, subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)))

    def collect() -> list[str]:
        rows = []
        for name in budgets:
            for f in sorted((work / name / "results").glob("*.json")):
                r = json.loads(f.read_text())
                rows.append({"budget": name, "cell": r["cell"], "dice": r.get("dice"), "val": r.get("val_dice"),
                             "best_epoch": r.get("best_epoch"), "seg_wall_s": r.get("seg_wall_s")})
            p = work / name / "pretrain" / "mdm" / "result.json"
            if p.is_file():
                rows.append({"budget": name, "cell": "pretrain", "wall_s": json.loads(p.read_text())["wall_s"]})
        running = [f"{n}:{t}" for n, t, p in procs if p.poll() is None]
        failed = [f"{n}:{t}:{p.returncode}" for n, t, p in procs if p.poll() not in (None, 0)]
        tmp = out / "summary.json.tmp"
        tmp.write_text(json.dumps({"rows": rows, "running": running, "failed": failed}, indent=0))
        os.replace(tmp, out / "summary.json")
        return running

    for name, budget in budgets.items():
        launch(name, "mdm_s0", ["--methods", "mdm", "--protocols", "finetune", "--seeds", "0"])
        if budget.get("scratch", True):
            launch(name, "scratch", ["--methods", "scratch", "--seeds", "0", "1", "2"])
    launch(sweep["random"], "random", ["--methods", "random_features", "--seeds", "0", "1", "2"])
    started: set[str] = set()
    while time.time() < deadline:
        for name in budgets:  # once a budget's pretraining exists, its other MDM cells run side by side
            if name not in started and (work / name / "pretrain" / "mdm" / "result.json").is_file():
                started.add(name)
                launch(name, "mdm_s1", ["--methods", "mdm", "--protocols", "finetune", "--seeds", "1"])
                launch(name, "mdm_s2", ["--methods", "mdm", "--protocols", "finetune", "--seeds", "2"])
                launch(name, "mdm_head", ["--methods", "mdm", "--protocols", "head", "--seeds", "0", "1", "2"])
        if not collect():
            break
        time.sleep(10)
    collect()
    return 0


if __name__ == "__main__":
    sys.exit(main())
