"""MONAI datalists with a validation split from training images only and nested label-fraction subsets."""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

__all__ = ["DEFAULT_FRACTIONS", "require_items", "pretraining_items", "items_digest", "natural_key",
           "label_fraction_counts", "nested_label_subsets", "read_json_object", "write_json_atomic", "labelled_subset",
           "resolve_dataset_dir", "split_datalist", "inference_items"]

DEFAULT_FRACTIONS = (0.05, 0.1, 0.25, 0.5, 1.0)


def natural_key(name: str) -> list:
    """Sort key that orders ``train_2`` before ``train_10``."""
    return [int(tok) if tok.isdigit() else tok for tok in re.split(r"(\d+)", os.path.basename(name))]


def label_fraction_counts(num_total: int, num_pool: int, fractions: Sequence[float]) -> dict[str, int]:
    """Images per fraction: ``max(1, int(f * num_total))`` capped at the labelled pool.

    ``num_total`` is the size of the whole training set, so GlaS 10% = int(0.1 * 85) = 8 and MoNuSeg 10% = 3
    (the paper's counts) even after a validation split has left ``num_pool`` images to label.
    """
    return {f"{f:g}": min(num_pool, max(1, int(f * num_total + 1e-9))) for f in fractions}


def nested_label_subsets(pool: Sequence[str], num_total: int, fractions: Sequence[float] = DEFAULT_FRACTIONS,
                         rule: str = "first", seed: int = 0) -> dict[str, list[str]]:
    """Nested subsets of ``pool`` (sorted names) per fraction.

    ``rule="first"``: the first N in natural order (the paper's rule). ``rule="random"``: prefixes of one seeded
    permutation. Either way a smaller fraction is a subset of every larger one.
    """
    ordered = sorted(pool, key=natural_key)
    if rule == "random":
        perm = np.random.default_rng(seed).permutation(len(ordered))
        ordered = [ordered[i] for i in perm]
    elif rule != "first":
        raise ValueError(f"unknown label-fraction rule {rule!r}; use 'first' or 'random'")
    counts = label_fraction_counts(num_total, len(ordered), fractions)
    return {key: ordered[:n] for key, n in counts.items()}


def split_datalist(name: str, folder: str | os.PathLike, train: list[dict], test: list[dict], num_val: int,
                   fractions: Sequence[float] = DEFAULT_FRACTIONS, fraction_rule: str = "first", seed: int = 0) -> dict:
    """A MONAI datalist from ordered ``train`` items: the last ``num_val`` become ``validation``, the rest the
    ``training`` pool with nested ``label_fractions`` (counted on all of ``train``); ``test`` is kept as given."""
    if not 0 <= num_val < len(train):
        raise ValueError(f"num_val={num_val} must be >= 0 and leave training images out of {len(train)} in {folder}")
    pool, val = train[: len(train) - num_val], train[len(train) - num_val:]
    return {
        "name": name,
        "source": str(Path(folder).resolve()),
        "training": pool,
        "validation": val,
        "test": test,
        "label_fractions": nested_label_subsets([d["id"] for d in pool], len(train), fractions, fraction_rule, seed),
        "label_fraction_rule": fraction_rule,
    }


def labelled_subset(datalist: dict, fraction: float | str) -> list[dict]:
    """The ``training`` items whose ids are in ``label_fractions[fraction]`` (in datalist order)."""
    key = f"{float(fraction):g}"
    subsets = datalist.get("label_fractions", {})
    if key not in subsets:
        raise KeyError(f"label fraction {key} not in datalist; available: {sorted(subsets)}")
    wanted = set(subsets[key])
    return [item for item in datalist["training"] if item["id"] in wanted]


def write_json_atomic(obj, path: str | os.PathLike) -> None:
    """Write JSON to ``path`` atomically (temporary file in the same folder, then ``os.replace``)."""
    from mdm_med.io import atomic_write

    def write(tmp):
        with open(tmp, "w") as f:
            json.dump(obj, f, indent=2)

    atomic_write(path, write)


def read_json_object(path: str | os.PathLike) -> dict:
    """The JSON object in ``path``; malformed JSON or another type raises ``ValueError`` naming the file."""
    try:
        obj = json.loads(Path(path).read_text())
    except ValueError as e:  # JSONDecodeError, UnicodeDecodeError
        raise ValueError(f"{path} is not valid JSON: {e}") from e
    if not isinstance(obj, dict):
        raise ValueError(f"{path} must hold a JSON object, got {type(obj).__name__}")
    return obj


def require_items(datalist: dict, split: str) -> list[dict]:
    """``datalist[split]``, refused when empty: training needs validation items (they pick the checkpoint that is
    tested and published) and test items (the score), and the run record names both before any training."""
    items = datalist.get(split) or []
    if not items:
        raise ValueError(f"the {datalist.get('name', '')} datalist from {datalist.get('source', '?')} has no {split!r} "
                         "items; training needs at least one validation and one test image (check num_val / val_frac / "
                         "test_frac and the test folder)")
    return items


def pretraining_items(datalist: dict, include_test: bool = False, include_unlabeled: bool = False) -> list[dict]:
    """Unlabelled images for self-supervised pretraining: every training and validation image (labels dropped).

    Two sets are added only when asked, each logged as a warning with its count: the datalist's ``unlabeled``
    images with ``include_unlabeled`` (e.g. a Decathlon ``imagesTs``: the challenge's test images, without labels,
    not this split's test set), and this split's ``test`` images with ``include_test`` (the reference code's
    transductive setting; the test score is then no longer a clean held-out estimate).
    """
    log = logging.getLogger(__name__)
    splits = ["training", "validation"] + (["test"] if include_test else []) + (
        ["unlabeled"] if include_unlabeled else [])
    items = [{"id": d["id"], "image": d["image"]} for s in splits for d in datalist.get(s, [])]
    if include_unlabeled and datalist.get("unlabeled"):
        log.warning("pretrain_include_unlabeled=True: %d unlabelled images (the datalist's 'unlabeled' list, e.g. a "
                    "Decathlon imagesTs: the challenge's test images) are in the pretraining set; this split's test "
                    "images are not", len(datalist["unlabeled"]))
    if include_test:
        log.warning(
            "pretrain_include_test=True: %d TEST images are in the pretraining set (transductive, as the reference "
            "code does); test scores are not held-out estimates", len(datalist.get("test", [])))
    if not items:
        raise ValueError("no images for pretraining: the datalist has no training or validation items")
    return items


def items_digest(items: Sequence[dict]) -> str:
    """``"<n> images, sha256 <16 hex>"`` of the items' sorted ids: names the image set (e.g. a pretraining set) in a
    checkpoint's meta, so weights pretrained on another set (say, one holding this split's test images) are refused."""
    import hashlib

    ids = sorted(str(d["id"]) for d in items)
    return f"{len(ids)} images, sha256 {hashlib.sha256(chr(10).join(ids).encode()).hexdigest()[:16]}"


def resolve_dataset_dir(dataset_dir: str | os.PathLike | None, demo_dir: str | os.PathLike,
                        problem: Callable[[str], str | None], generate_demo: Callable[[], Path], dataset_name: str,
                        hint: str, logger: logging.Logger | None = None) -> tuple[str, bool]:
    """``(folder, is_demo)``: a given ``dataset_dir`` or, when it is empty/None, the synthetic demo set.

    A given folder that is missing or for which ``problem(folder)`` returns a message (what is missing; None when
    valid) raises ``FileNotFoundError`` naming it, never a silent demo fallback. Otherwise ``generate_demo()``
    builds (or reuses) the demo set in ``demo_dir`` and a loud 'DEMO DATA ... SYNTHETIC' warning is logged.
    ``hint`` says how to use the real ``dataset_name`` data.
    """
    if dataset_dir is not None and str(dataset_dir).strip():
        what = "does not exist" if not os.path.isdir(dataset_dir) else problem(str(dataset_dir))
        if what:
            raise FileNotFoundError(f"dataset_dir {dataset_dir} {what}. {hint} (or give no dataset_dir for the "
                                    "built-in demo data)")
        return str(dataset_dir), False
    (logger or logging.getLogger(__name__)).warning(
        "DEMO DATA: no dataset_dir was given, so this run uses the built-in SYNTHETIC stand-in for %s in %s. Results "
        "on it say nothing about real data. %s.", dataset_name, demo_dir, hint)
    return str(generate_demo()), True


def inference_items(dataset_dir: str | os.PathLike, suffixes: Sequence[str], exclude: str | None = None) -> list[dict]:
    """``[{"image": path}, ...]``: the files in ``dataset_dir`` ending in one of ``suffixes`` (case-insensitive),
    natural order, skipping hidden files (``.name``, e.g. macOS ``._x.nii.gz``) and names that contain ``exclude``
    (e.g. GlaS ``_anno`` masks).

    A missing folder or one with no such files raises ``FileNotFoundError`` naming it, so inference never runs
    silently over nothing; two files with one name before the suffix (``x.png`` + ``x.bmp``, ``a.nii`` +
    ``a.nii.gz``) raise ``ValueError``: their predictions would be saved under one name.
    """
    folder = str(dataset_dir or "")
    if not folder.strip() or not os.path.isdir(folder):
        raise FileNotFoundError(f"inference dataset_dir {folder!r} is not a folder: pass --dataset_dir <folder with "
                                f"the images to segment ({', '.join(suffixes)})>")
    ends = tuple(x.lower() for x in suffixes)
    names = [n for n in os.listdir(folder) if n.lower().endswith(ends) and not n.startswith(".")
             and not (exclude and exclude in n) and os.path.isfile(os.path.join(folder, n))]
    if not names:
        raise FileNotFoundError(f"inference dataset_dir {folder} has no images ending in {', '.join(suffixes)}"
                                + (f" (names containing {exclude!r} are skipped)" if exclude else ""))
    names = sorted(names, key=natural_key)
    stems: dict[str, str] = {}
    for n in names:
        stem = n[: -max(len(e) for e in ends if n.lower().endswith(e))]
        if stem in stems:
            raise ValueError(f"inference dataset_dir {folder} holds {stems[stem]} and {n}: their predictions would "
                             f"both be saved as {stem}_seg; keep one of them")
        stems[stem] = n
    return [{"image": os.path.join(folder, n)} for n in names]
