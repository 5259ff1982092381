"""Measurement: the recipe's training loops with MONAI's ``CacheDataset`` against ``TrainingCacheDataset``.

Both loops are the bundle's own objects (``--bundle``'s ``pretrain`` and ``train`` sections: transforms, network, loss,
optimizer, MDM masking) driven by MONAI's ``SupervisedTrainer`` for one epoch of ``--epoch-length`` iterations,
the two datasets interleaved round by round in one process (on 2 shared cores only such ratios mean anything).
It also checks that both datasets give the same batches. Writes a Markdown table to stdout (and ``--out``).

    OMP_NUM_THREADS=1 python benchmarks/explore/training_dataset_ab.py --data-dir ../shared/data/glas --rounds 4
    OMP_NUM_THREADS=1 python benchmarks/explore/training_dataset_ab.py --bundle bundles/mdm_hippocampus \
        --data-dir ../shared/data/hippocampus --rounds 2 --epoch-length 10
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time

import torch
from monai.bundle import ConfigParser
from monai.data import CacheDataset, DataLoader
from monai.engines import SupervisedTrainer

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
from mdm_med.data.dataset import TrainingCacheDataset  # noqa: E402

def _parser(bundle: str, data_dir: str, section: str) -> ConfigParser:
    parser = ConfigParser()
    parser.read_config(os.path.join(bundle, "configs", "train.json"))
    parser.update({"dataset_dir": data_dir, "label_fraction": 0.1, "output_dir": "/tmp/training_dataset_ab",
                   "device": "cpu", "seg_mode": "scratch"})
    return parser


def _loop(parser: ConfigParser, section: str, dataset_cls, epoch_length: int, seed: int):
    """One epoch of ``section``'s training with ``dataset_cls``: a fresh network, optimizer and loader from the
    bundle; returns the wall time and the first batch's image (B, C, *spatial)."""
    torch.manual_seed(seed)
    items, transform = parser.get_parsed_content(f"{section}#items"), parser.get_parsed_content(f"{section}#preprocessing")
    dataset = dataset_cls(items, transform=transform, progress=False)
    batch_size = parser.get_parsed_content(f"{section}#batch_size")
    sampler = torch.utils.data.RandomSampler(dataset, True, epoch_length * batch_size,
                                             generator=torch.Generator().manual_seed(seed))
    loader = DataLoader(dataset, batch_size=batch_size, sampler=sampler, generator=torch.Generator().manual_seed(seed))
    first = next(iter(loader))["image"]
    if section == "pretrain":
        network = parser.get_parsed_content("pretrain#network", instantiate=True, lazy=False)
        kwargs = dict(loss_function=parser.get_parsed_content("pretrain#loss", lazy=False),
                      prepare_batch=parser.get_parsed_content("pretrain#prepare_batch", lazy=False))
    else:
        network = parser.get_parsed_content("network_def", lazy=False)
        kwargs = dict(loss_function=parser.get_parsed_content("train#loss", lazy=False))
    optimizer = torch.optim.AdamW(network.parameters(), 1e-3)
    trainer = SupervisedTrainer(device=torch.device("cpu"), max_epochs=1, epoch_length=epoch_length,
                                train_data_loader=loader, network=network, optimizer=optimizer, decollate=False,
                                **kwargs)
    start = time.perf_counter()
    trainer.run()
    return time.perf_counter() - start, first


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bundle", default="bundles/mdm_glas", help="bundle folder (its configs/train.json)")
    ap.add_argument("--data-dir", required=True)
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--epoch-length", type=int, default=25)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    import logging
    logging.disable(logging.WARNING)
    rows = []
    for section in ("pretrain", "train"):
        parser = _parser(args.bundle, args.data_dir, section)
        times = {CacheDataset: [], TrainingCacheDataset: []}
        firsts = {}
        for r in range(args.rounds + 1):  # round 0 warms up
            for cls in (CacheDataset, TrainingCacheDataset) if r % 2 == 0 else (TrainingCacheDataset, CacheDataset):
                parser = _parser(args.bundle, args.data_dir, section)  # fresh objects per loop
                seconds, first = _loop(parser, section, cls, args.epoch_length, seed=r)
                if r:
                    times[cls].append(seconds)
                firsts.setdefault(r, []).append(first)
        same = all(torch.equal(a, b) for a, b in firsts.values())
        ref, new = (statistics.median(times[c]) / args.epoch_length for c in (CacheDataset, TrainingCacheDataset))
        rows.append(f"| {section} | {ref:.3f} | {new:.3f} | {ref / new:.2f}x | {same} |")
    text = "\n".join([
        f"{args.bundle}, torch threads {torch.get_num_threads()}, {platform.processor() or platform.machine()}, "
        f"{args.rounds} interleaved rounds of {args.epoch_length} iterations, medians",
        "",
        "| loop | s / iteration, CacheDataset | s / iteration, TrainingCacheDataset | speed-up | same first batch |",
        "|---|---|---|---|---|", *rows])
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()
