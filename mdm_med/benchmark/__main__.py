"""Command line of the label-efficiency benchmark; see ``benchmarks/README.md``."""

from __future__ import annotations

import argparse
import shlex
import signal
import sys

import yaml


def _split(values, cast):
    if not values:
        return None
    return [cast(v) for item in values for v in str(item).split(",") if v.strip()]


def _sets(values) -> dict:
    out = {}
    for item in values or ():
        if "=" not in item:
            raise SystemExit(f"--set expects KEY=VALUE, got {item!r}")
        key, value = item.split("=", 1)
        out[key.strip()] = yaml.safe_load(value)
    return out


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m mdm_med.benchmark",
        description="Run methods x protocols x label fractions x seeds through a bundle (the profile's `bundle`, "
                    "default mdm_glas; one process per cell; finished cells are skipped on restart) and write "
                    "results.csv, results.md and plot.png.")
    p.add_argument("--config", required=True, help="benchmark profile (YAML), e.g. benchmarks/glas_cpu.yaml")
    p.add_argument("--data-dir", required=True, help="the bundle's data folder: GlaS (train_N.png + train_N_anno.png, "
                                                       "testA_N ...) or a Decathlon task (imagesTr, labelsTr)")
    p.add_argument("--out", required=True, help="output folder (results, cells, pretrained weights, report)")
    # "extend": an option given twice adds to the first (--set a=1 --set b=2 sets both)
    p.add_argument("--methods", nargs="+", action="extend",
                   help="subset of the profile's methods (space or comma separated)")
    p.add_argument("--fractions", nargs="+", action="extend", help="label fractions, e.g. 0.1 1.0")
    p.add_argument("--seeds", nargs="+", action="extend", help="seeds, e.g. 0 1 2")
    p.add_argument("--protocols", nargs="+", action="extend", help="head and/or finetune")
    p.add_argument("--set", nargs="+", action="extend", default=[], metavar="KEY=VALUE",
                   help="extra bundle overrides for every cell (YAML values), e.g. --set max_epochs=2")
    p.add_argument("--bundle", help="bundle folder to drive (default: the profile's `bundle`, else bundles/mdm_glas "
                                    "of this checkout)")
    p.add_argument("--bundle-root", help="value of the bundle's bundle_root in every cell (default: --out), so no "
                                         "cell writes into the bundle's own runs/ or models/")
    p.add_argument("--jobs", type=int, default=1,
                   help="cells run at once (a method's cells wait for its pretraining); each gets the CPU cores split "
                        "between the jobs (OMP_NUM_THREADS) unless OMP_NUM_THREADS is set. On 2 cores, 2 jobs of one "
                        "thread gave ~1.3x the throughput of 1 job of two threads")
    p.add_argument("--dry-run", action="store_true", help="list the cells and whether they are finished; run nothing")
    p.add_argument("--report-only", action="store_true", help="rewrite the report from finished cells; run nothing")
    p.add_argument("--verbose", action="store_true", help="stream each cell's bundle output to the console")
    return p


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    try:
        summary = _run(args, argv)
    except (ValueError, FileNotFoundError, KeyError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ninterrupted: finished cells are kept; run the same command again to continue", file=sys.stderr)
        return 130
    return 1 if summary["failed"] else 0


def _run(args, argv: list[str]) -> dict:
    from mdm_med.benchmark.runner import run_benchmark

    return run_benchmark(
        args.config, args.data_dir, args.out, methods=_split(args.methods, str),
        fractions=_split(args.fractions, float),
        seeds=_split(args.seeds, int), protocols=_split(args.protocols, str), overrides=_sets(args.set),
        bundle_dir=args.bundle, bundle_root=args.bundle_root, dry_run=args.dry_run, report_only=args.report_only,
        verbose=args.verbose, jobs=args.jobs, command=shlex.join(["python", "-m", "mdm_med.benchmark", *argv]))


def _stop_on_sigterm(signum, frame) -> None:
    """``kill <pid>`` stops the benchmark as Ctrl-C does: its running cells are killed, finished ones kept."""
    raise KeyboardInterrupt


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, _stop_on_sigterm)
    sys.exit(main())
