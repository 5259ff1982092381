"""Benchmark report: ``results.csv`` (one row per cell), ``results.md`` (mean +- std over seeds in the paper's table
layout, plus how the numbers were made) and ``plot.png`` (test Dice vs labelled fraction).

``python -m mdm_med.benchmark.combine`` (:func:`merge_results`) makes one report of several runs' ``results.csv``.

Rows are plain dicts as written by the runner (``method``, ``protocol``, ``variant``, ``label_fraction``, ``seed``,
``dice``, ``iou``, ``paper_iou``, ...). Metrics are stored as fractions in [0, 1] and shown in % like the paper.
"""

from __future__ import annotations

import csv
import math
import os
from collections.abc import Sequence
from pathlib import Path

from mdm_med.io import atomic_write

__all__ = ["CSV_FIELDS", "METRICS", "aggregate", "select_on_validation", "markdown_report", "plot_dice",
           "write_csv", "write_report", "read_csv", "merge_results", "sort_rows", "class_dice_fields", "VAL_BEST"]

CSV_FIELDS = ["method", "method_label", "protocol", "variant", "seg_mode", "seg_timestep", "label_fraction",
              "labelled_images", "seed", "dice", "iou", "paper_iou", "object_f1", "object_dice", "object_hausdorff",
              "val_dice", "best_epoch", "epochs_run", "test_images", "pretrain_method", "pretrain_wall_s",
              "seg_wall_s", "cell", "dataset", "settings_fingerprint"]
# metric -> (column title, shown in %)
METRICS = {"dice": ("Dice", True), "paper_iou": ("IoU (paper)", True), "iou": ("IoU (per image)", True),
           "object_f1": ("obj F1", True), "object_dice": ("obj Dice", True),
           "object_hausdorff": ("obj Hausdorff (px)", False), "val_dice": ("val Dice", True),
           "seg_wall_s": ("seg wall (s)", False)}
VAL_BEST = "val-best"
INT_FIELDS = frozenset({"seg_timestep", "labelled_images", "seed", "best_epoch", "epochs_run", "test_images"})
FLOAT_FIELDS = frozenset({"label_fraction", "dice", "iou", "paper_iou", "object_f1", "object_dice",
                          "object_hausdorff", "val_dice", "pretrain_wall_s", "seg_wall_s"})
REQUIRED_FIELDS = ("method", "protocol", "label_fraction", "seed", "dice", "cell")
CLASS_DICE = "dice_"  # prefix of per-class Dice fields (e.g. dice_anterior), from bundles with several classes


def class_dice_fields(rows: Sequence[dict]) -> list[str]:
    """The per-class Dice fields (``dice_<class>``) found in ``rows``, sorted: extra CSV columns and report metrics."""
    return sorted({k for r in rows for k in r if k.startswith(CLASS_DICE) and k not in CSV_FIELDS})


def _metrics(rows: Sequence[dict]) -> dict:
    """``METRICS`` plus the rows' per-class Dice fields."""
    return {**METRICS, **{k: (f"Dice {k[len(CLASS_DICE):]}", True) for k in class_dice_fields(rows)}}


def _num(x) -> float | None:
    if x is None or x == "":
        return None
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(v) else v


def _mean_std(values: Sequence[float]) -> tuple[float | None, float | None]:
    """Mean and sample standard deviation (ddof = 1; None for fewer than 2 values)."""
    vals = [v for v in values if v is not None]
    if not vals:
        return None, None
    mean = sum(vals) / len(vals)
    if len(vals) < 2:
        return mean, None
    return mean, math.sqrt(sum((v - mean) ** 2 for v in vals) / (len(vals) - 1))


def select_on_validation(rows: Sequence[dict]) -> tuple[list[dict], dict]:
    """For (method, protocol) arms run at several head timesteps (DDPM), the rows of the timestep with the best mean
    VALIDATION Dice over seeds, chosen per labelled fraction, relabelled ``variant = "val-best"``. The timesteps are
    compared on the seeds that all of them have a validation Dice for (none in common: no choice), so a timestep
    with fewer finished seeds cannot win on a lucky one.

    Returns ``(selected_rows, choice)`` with ``choice[(method, protocol, fraction)] = chosen variant``.
    """
    arms: dict[tuple, dict[str, list[dict]]] = {}
    for r in rows:
        if r.get("variant"):
            arms.setdefault((r["method"], r["protocol"], float(r["label_fraction"])), {}).setdefault(
                r["variant"], []).append(r)
    selected, choice = [], {}
    for key, variants in arms.items():
        if len(variants) < 2:
            continue
        val = {v: {str(r.get("seed")): _num(r.get("val_dice")) for r in rs} for v, rs in variants.items()}
        common = set.intersection(*({s for s, d in by_seed.items() if d is not None} for by_seed in val.values()))
        if not common:
            continue
        scored = {v: _mean_std([by_seed[s] for s in common])[0] for v, by_seed in val.items()}
        best = max(scored, key=lambda v: scored[v])
        choice[key] = best
        selected += [{**r, "variant": VAL_BEST, "chosen_variant": best} for r in variants[best]]
    return selected, choice


def aggregate(rows: Sequence[dict], metrics: Sequence[str] = tuple(METRICS)) -> list[dict]:
    """Mean and std over seeds per (method, protocol, variant, label_fraction), in first-seen order.

    Each output dict has the group keys, ``method_label``, ``n`` (rows), ``seeds``, ``labelled_images`` and
    ``<metric>_mean`` / ``<metric>_std`` for every metric (None where no row has the value, std None for n < 2).
    """
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        key = (r["method"], r["protocol"], r.get("variant") or "", float(r["label_fraction"]))
        groups.setdefault(key, []).append(r)
    out = []
    for (method, protocol, variant, fraction), rs in groups.items():
        agg = {"method": method, "method_label": rs[0].get("method_label") or method, "protocol": protocol,
               "variant": variant, "label_fraction": fraction, "n": len(rs),
               "seeds": sorted(int(r["seed"]) for r in rs if r.get("seed") not in (None, "")),
               "labelled_images": rs[0].get("labelled_images"), "chosen_variant": rs[0].get("chosen_variant")}
        for m in metrics:
            agg[f"{m}_mean"], agg[f"{m}_std"] = _mean_std([_num(r.get(m)) for r in rs])
        out.append(agg)
    return out


def _ordered(agg: list[dict]) -> list[dict]:
    """Groups of one (method, protocol) together, in first-seen order, a ``val-best`` row after its variants."""
    first: dict[tuple, int] = {}
    for i, a in enumerate(agg):
        first.setdefault((a["method"], a["protocol"]), i)
    return [a for _, a in sorted(enumerate(agg), key=lambda ia: (
        first[(ia[1]["method"], ia[1]["protocol"])], ia[1]["variant"] == VAL_BEST, ia[0]))]


def _arm(a: dict) -> str:
    return f"{a['method_label']}" + (f" [{a['variant']}]" if a.get("variant") else "")


def _fmt(mean, std, pct: bool, digits: int = 2) -> str:
    if mean is None:
        return "–"
    k = 100.0 if pct else 1.0
    text = f"{mean * k:.{digits}f}"
    return text + (f" ± {std * k:.{digits}f}" if std is not None else "")


def _fraction_label(f: float) -> str:
    return f"{f * 100:g}%"


def _fmt_s(seconds) -> str:
    if seconds is None:
        return "?"
    seconds = int(round(seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h {m:02d}m {s:02d}s" if h else f"{m}m {s:02d}s"


def markdown_report(rows: Sequence[dict], info: dict | None = None) -> str:
    """The Markdown report: the paper-layout table (Dice / IoU per labelled fraction, largest fraction first), the
    long table of every metric, the validation-only timestep choices, and the run information."""
    info = info or {}
    selected, choice = select_on_validation(rows)
    metrics = _metrics(rows)
    agg = _ordered(aggregate(list(rows) + selected, tuple(metrics)))
    fractions = sorted({a["label_fraction"] for a in agg}, reverse=True)
    arms: list[tuple] = []
    for a in agg:
        key = (a["method"], a["protocol"], a["variant"])
        if key not in arms:
            arms.append(key)
    by = {(a["method"], a["protocol"], a["variant"], a["label_fraction"]): a for a in agg}
    images = {a["label_fraction"]: a["labelled_images"] for a in agg if a.get("labelled_images")}
    lines = [f"# Label-efficiency benchmark: {info.get('profile', '')}", ""]
    # the paper's GlaS IoU where the bundle computes it, else the mean IoU over test images (e.g. 3-D volumes)
    iou = "paper_iou" if any(a.get("paper_iou_mean") is not None for a in agg) else "iou"
    lines += ["Test-set Dice / IoU in %, mean ± std over seeds (n = number of seeds). "
              + ("IoU is the paper's GlaS IoU = Dice / (2 - Dice) of the mean per-image Dice. " if iou == "paper_iou"
                 else "IoU is the mean over test images of the foreground classes' IoU. ")
              + "`head` = frozen pretrained features + per-pixel MLP head; `finetune` = the whole U-Net fine-tuned "
              "(scratch: random init, same budget).", ""]
    head = ["Method", "Protocol"] + [
        f"{_fraction_label(f)} ({images.get(f, '?')} img) Dice / IoU" for f in fractions] + ["n"]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for method, protocol, variant in arms:
        cells, ns = [], set()
        label = method
        for f in fractions:
            a = by.get((method, protocol, variant, f))
            if a is None:
                cells.append("–")
                continue
            label = _arm(a)
            ns.add(a["n"])
            cells.append(f"{_fmt(a['dice_mean'], a['dice_std'], True)} / "
                         f"{_fmt(a[f'{iou}_mean'], a[f'{iou}_std'], True)}")
        lines.append("| " + " | ".join([label, protocol] + cells + ["/".join(str(n) for n in sorted(ns))]) + " |")
    lines.append("")
    if choice:
        lines += ["Rows marked `[val-best]` use, per labelled fraction, the feature timestep with the best mean "
                  "VALIDATION Dice (the test set plays no part in the choice): "
                  + "; ".join(f"{m}/{p} {_fraction_label(f)}: {v}" for (m, p, f), v in sorted(choice.items())) + ".",
                  ""]
    shown = [m for m in metrics if any(a.get(f"{m}_mean") is not None for a in agg)]
    in_percent = ", ".join(["Dice", "IoU"] + ["object F1 / Dice"] * any(m.startswith("object_") for m in shown))
    lines += ["## All metrics", "", f"Mean ± std over seeds; {in_percent} and val Dice in %.", ""]
    head = ["Method", "Protocol", "Fraction", "n", "seeds"] + [metrics[m][0] for m in shown]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for a in agg:
        vals = [_fmt(a[f"{m}_mean"], a[f"{m}_std"], metrics[m][1], 2 if metrics[m][1] else 1) for m in shown]
        lines.append("| " + " | ".join([_arm(a), a["protocol"], _fraction_label(a["label_fraction"]), str(a["n"]),
                                        ",".join(map(str, a["seeds"]))] + vals) + " |")
    lines.append("")
    if info.get("dataset", "glas") == "glas" and not any(_num(r.get("object_f1")) is not None for r in rows):
        lines += ["Object metrics (GlaS object F1 / Dice / Hausdorff) are not in these results; set "
                  "`object_metrics` in the profile to add them to the bundle's test evaluator.", ""]
    pre = info.get("pretrain") or {}
    seg_total = sum(_num(r.get("seg_wall_s")) or 0.0 for r in rows)
    pre_total = sum(_num(p.get("wall_s")) or 0.0 for p in pre.values())
    lines += ["## How these numbers were made", "", f"- Command: `{info.get('command', '')}`"]
    if info.get("sources"):
        lines.append("- Combined from the results of separate runs (each source's own results.md has its command, "
                     "machine and settings): " + ", ".join(f"`{s}`" for s in info["sources"]))
    if info.get("profile_file"):
        lines.append(f"- Profile: `{info['profile_file']}`" + (f"; bundle `{info['bundle']}`" if info.get("bundle")
                                                                 else ""))
    lines += [f"- {title}: {value}" for title, value in (
        ("Data", f"`{info['data_dir']}`" if info.get("data_dir") else ""),
        ("Output", f"`{info['out']}`" if info.get("out") else ""), ("Machine", info.get("machine", ""))) if value]
    lines.append(f"- Total wall time of the cells reported: {_fmt_s(seg_total + pre_total)} "
                 f"(pretraining {_fmt_s(pre_total)}, segmentation {_fmt_s(seg_total)})"
                 + (f"; this invocation: {_fmt_s(info['elapsed_s'])}" if info.get("elapsed_s") is not None else ""))
    if info.get("invocations"):
        inv = info["invocations"]
        killed = sum(not r.get("ended") for r in inv)
        first = min(str(r.get("started_at", "")) for r in inv)
        older = sum(str(r.get("finished_at", first)) < first for r in [*rows, *pre.values()])
        lines.append(f"- Wall clock of the {len(inv)} invocation(s) that ran cells into this output (any methods / "
                     f"fractions; `invocations.json`): {_fmt_s(sum(_num(r.get('elapsed_s')) or 0.0 for r in inv))}"
                     + (f"; {killed} stopped before their end, each counted up to its last heartbeat" if killed
                        else "")
                     + (f"; not the whole benchmark: {older} of the results reported were made before the first "
                        f"recorded invocation ({first})" if older else ""))
    if info.get("jobs"):
        threads = info.get("cell_threads")
        lines.append(f"- Cells run at once by this invocation: {info['jobs']}, each with "
                     + (f"{threads} CPU thread(s)" if threads else "torch's default CPU threads")
                     + " (wall times of cells that shared the machine are not single-cell times)" * (info["jobs"] > 1))
    if pre:
        lines.append("- Pretraining (once per method, reused by every fraction / seed / protocol): "
                     + ", ".join(f"{m} {_fmt_s(p.get('wall_s'))}" for m, p in pre.items()))
    if info.get("bundle_overrides"):
        lines.append("- Bundle overrides (every cell): "
                     + ", ".join(f"`{k}={v}`" for k, v in info["bundle_overrides"].items()))
    lines.append("- Labelled subsets: the first N training images in numeric order"
                 + (" (the paper's rule)" if info.get("dataset", "glas") == "glas" else "") + ", the same "
                 "for every seed; the seed changes network initialisation, crops / augmentation and sampling.")
    failed, missing = info.get("failed") or {}, info.get("missing") or []
    if failed:
        lines += ["", "## Failed cells", ""] + [f"- `{k}`: {v}" for k, v in failed.items()]
    if missing:
        lines += ["", f"{len(missing)} planned cell(s) have no result yet: " + ", ".join(f"`{m}`" for m in missing)]
    return "\n".join(lines) + "\n"


def plot_dice(rows: Sequence[dict], path: str | os.PathLike, title: str = "") -> str:
    """Test Dice vs labelled fraction, one line per method / protocol (for multi-timestep arms only the
    validation-selected line), error bars = std over seeds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    selected, choice = select_on_validation(rows)
    agg = [a for a in aggregate(list(rows) + selected)
           if not ((a["method"], a["protocol"], a["label_fraction"]) in choice and a["variant"] != VAL_BEST)]
    fig, ax = plt.subplots(figsize=(9.5, 4.5))
    arms: dict[tuple, list[dict]] = {}
    for a in agg:
        arms.setdefault((a["method"], a["protocol"], a["variant"]), []).append(a)
    methods = list(dict.fromkeys(k[0] for k in arms))
    colors = plt.get_cmap("tab10")
    for (method, protocol, _variant), pts in arms.items():
        pts = sorted((p for p in pts if p["dice_mean"] is not None), key=lambda p: p["label_fraction"])
        if not pts:
            continue
        ax.errorbar([p["label_fraction"] for p in pts], [100 * p["dice_mean"] for p in pts],
                    yerr=[100 * (p["dice_std"] or 0.0) for p in pts], capsize=3, marker="o",
                    linestyle="--" if protocol == "head" else "-", color=colors(methods.index(method) % 10),
                    label=f"{_arm(pts[0])} / {protocol}")
    fractions = sorted({a["label_fraction"] for a in agg})
    if fractions:
        ax.set_xscale("log")
        ax.set_xticks(fractions)
        ax.set_xticklabels([_fraction_label(f) for f in fractions])
        ax.minorticks_off()
        ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5))  # beside the axes: no point hidden
    else:
        ax.text(0.5, 0.5, "no results yet", ha="center", va="center", transform=ax.transAxes)
    ax.set_xlabel("labelled training images (fraction of the training set)")
    ax.set_ylabel("test Dice (%)")
    ax.set_title(title or "Dice vs labelled fraction (mean ± std over seeds)")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    _save_atomic(lambda tmp: fig.savefig(tmp, dpi=120, format="png"), path)
    plt.close(fig)
    return str(path)


def _save_atomic(write, path: str | os.PathLike) -> None:
    atomic_write(path, write)


def write_csv(rows: Sequence[dict], path: str | os.PathLike) -> str:
    def write(tmp):
        with open(tmp, "w", newline="") as f:
            fields = CSV_FIELDS + class_dice_fields(rows)
            w = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
            w.writeheader()
            for r in rows:
                w.writerow({k: ("" if r.get(k) is None else r.get(k)) for k in fields})

    _save_atomic(write, path)
    return str(path)


def write_report(rows: Sequence[dict], out_dir: str | os.PathLike, info: dict | None = None) -> dict:
    """Write ``results.csv``, ``results.md`` and ``plot.png`` into ``out_dir``; returns their paths."""
    out_dir = Path(out_dir)
    paths = {"csv": str(out_dir / "results.csv"), "md": str(out_dir / "results.md"), "png": str(out_dir / "plot.png")}
    write_csv(rows, paths["csv"])
    text = markdown_report(rows, info)
    _save_atomic(lambda tmp: Path(tmp).write_text(text), paths["md"])
    plot_dice(rows, paths["png"], title=f"{(info or {}).get('profile', '')}: Dice vs labelled fraction")
    return paths


def sort_rows(rows: Sequence[dict], method_order: Sequence[str] = ()) -> list[dict]:
    """Rows ordered by method (``method_order`` first, then first-seen), protocol (head, finetune), head timestep,
    labelled fraction and seed: the order of ``results.csv``."""
    order = {m: i for i, m in enumerate(dict.fromkeys([*method_order, *(r["method"] for r in rows)]))}
    protocols = ["head", "finetune"]

    def key(r):
        p = r["protocol"]
        return (order[r["method"]], protocols.index(p) if p in protocols else len(protocols), p,
                _num(r.get("seg_timestep")) or 0, float(r["label_fraction"]), int(r["seed"]))

    return sorted(rows, key=key)


def read_csv(path: str | os.PathLike) -> list[dict]:
    """Rows of a ``results.csv`` written by :func:`write_csv`, with numbers parsed (empty fields -> None)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such results file")
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        missing = [k for k in REQUIRED_FIELDS if k not in (reader.fieldnames or [])]
        if missing:
            raise ValueError(f"{path}: not a benchmark results.csv (no column(s) {', '.join(missing)})")
        rows = []
        for line, raw in enumerate(reader, start=2):
            row = {}
            for k, v in raw.items():
                if k is None:
                    raise ValueError(f"{path}, line {line}: more values than columns")
                if v in (None, ""):
                    row[k] = None
                elif k in INT_FIELDS or k in FLOAT_FIELDS or k.startswith(CLASS_DICE):
                    try:
                        row[k] = int(v) if k in INT_FIELDS else float(v)
                    except ValueError:
                        raise ValueError(f"{path}, line {line}: {k}={v!r} is not a number") from None
                else:
                    row[k] = v
            empty = [k for k in REQUIRED_FIELDS if row.get(k) is None]
            if empty:
                raise ValueError(f"{path}, line {line}: empty {', '.join(empty)}")
            rows.append(row)
    if not rows:
        raise ValueError(f"{path}: no result rows")
    return rows


def merge_results(paths: Sequence[str | os.PathLike], method_order: Sequence[str] = ()) -> list[dict]:
    """The rows of several ``results.csv`` files as one table (:func:`sort_rows` order). A cell found in two files
    is kept once when its measurements agree to the digit and refused otherwise (two different runs of one cell).
    Rows of another dataset, of another labelled subset size at one fraction or another test set size, or seeds of
    one method / protocol / fraction made with other settings (``settings_fingerprint``; files written before it
    existed are not checked), are refused too."""
    seen: dict[str, tuple[str, dict]] = {}
    first: dict[tuple, tuple[str, str]] = {}  # (dataset) or (group) -> (file, value) first seen
    for path in paths:
        for row in read_csv(path):
            group = (row.get("method"), row.get("protocol"), row.get("variant"), row.get("label_fraction"))
            for key, value, what in ((("dataset",), row.get("dataset"), "datasets"),
                                     (group, row.get("settings_fingerprint"), "settings"),
                                     (("labelled_images", row.get("label_fraction")), row.get("labelled_images"),
                                      "labelled subsets"),
                                     (("test_images",), row.get("test_images"), "test sets")):
                if value in (None, ""):
                    continue
                where, known = first.setdefault(key, (str(path), value))
                if known != value:
                    raise ValueError(f"{path} and {where} hold results with other {what} ({value} vs {known}, "
                                     f"{'dataset' if what == 'datasets' else 'cell ' + row['cell']}); "
                                     "combine only runs of one dataset, one split and one set of settings")
            prev = seen.get(row["cell"])
            if prev is None:
                seen[row["cell"]] = (str(path), row)
                continue
            diff = [k for k in ("dice", "iou", "paper_iou", "val_dice", "object_f1", "object_dice")
                    if prev[1].get(k) != row.get(k)]
            if diff:
                raise ValueError(f"cell {row['cell']} is in {prev[0]} and {path} with different results "
                                 f"({', '.join(diff)}); keep one of the runs")
    return sort_rows([row for _, row in seen.values()], method_order)

