"""GlaS (MICCAI 2015 gland segmentation) layout: scanning, validation and the datalist.

Accepted layout (one folder): ``train_N.{bmp,png,tif}`` with ``train_N_anno.*`` masks, ``testA_N.*`` and
``testB_N.*`` likewise. Masks may be instance-labelled (challenge BMPs) or binary 0/255: every item names the mask
as ``label`` (binarised, > 0, by the loading transform) and as ``instance`` (ids as stored, for the object metrics;
a binary mask's glands are its connected components, ``mdm_med.object_metrics.to_instance_map``).
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path

from mdm_med.data.datalist import DEFAULT_FRACTIONS, natural_key, resolve_dataset_dir, split_datalist

__all__ = ["scan_glas", "build_glas_datalist", "has_glas_images", "resolve_glas_dir"]

logger = logging.getLogger(__name__)

_EXTS = (".png", ".bmp", ".tif", ".tiff")
_NAME = re.compile(r"^(train|testA|testB)_(\d+)(_anno)?$", re.IGNORECASE)


def _index(folder: Path) -> dict[tuple[str, int, bool], Path]:
    found: dict[tuple[str, int, bool], Path] = {}
    for p in sorted(folder.iterdir()):
        if p.suffix.lower() not in _EXTS or p.name.startswith("."):
            continue
        m = _NAME.match(p.stem)
        if m:
            key = (m.group(1).lower(), int(m.group(2)), m.group(3) is not None)
            if key in found:
                raise ValueError(f"GlaS folder {folder}: both {found[key].name} and {p.name} exist; keep one")
            found[key] = p
    return found


def has_glas_images(folder: str | os.PathLike) -> bool:
    """True when ``folder`` exists and holds at least one ``train_N`` image."""
    folder = Path(folder)
    return folder.is_dir() and any(k[0] == "train" and not k[2] for k in _index(folder))


def scan_glas(folder: str | os.PathLike) -> dict[str, list[dict]]:
    """Pairs per split: ``{"train": [{"id", "image", "label", "instance"}], "testa": [...], "testb": [...]}`` in numeric
    order (``label`` and ``instance`` are the same mask file).

    Raises one ``ValueError`` listing every image without a mask and every mask without an image.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"GlaS folder does not exist: {folder}")
    index = _index(folder)
    problems = [f"{index[k].name}: no mask ({k[0]}_{k[1]}_anno.*)" for k in index if not k[2]
                and (k[0], k[1], True) not in index]
    problems += [f"{index[k].name}: mask without image" for k in index if k[2] and (k[0], k[1], False) not in index]
    if problems:
        raise ValueError(f"GlaS folder {folder} is inconsistent:\n  " + "\n  ".join(sorted(problems)))
    splits: dict[str, list[dict]] = {"train": [], "testa": [], "testb": []}
    for (split, num, is_mask), path in sorted(index.items(), key=lambda kv: (kv[0][0], kv[0][1])):
        if not is_mask:
            prefix = {"train": "train", "testa": "testA", "testb": "testB"}[split]
            mask = str(index[(split, num, True)])
            splits[split].append({"id": f"{prefix}_{num}", "image": str(path), "label": mask, "instance": mask})
    if not splits["train"]:
        raise ValueError(f"GlaS folder {folder} has no train_N images")
    return splits


def build_glas_datalist(folder: str | os.PathLike, num_val: int = 8, test_sets: tuple[str, ...] = ("testA",),
                        fractions=DEFAULT_FRACTIONS, fraction_rule: str = "first", seed: int = 0) -> dict:
    """A MONAI datalist: ``training`` (labelled pool), ``validation``, ``test`` and ``label_fractions``.

    The validation split is the last ``num_val`` training images in numeric order (train_78..85 on GlaS), so
    the paper's 10% subset (train_1..train_8) stays in the pool; test images never enter training.
    ``label_fractions`` maps "0.1" etc. to nested id lists, counted on the full training set (GlaS 10% = 8).
    """
    splits = scan_glas(folder)
    train = sorted(splits["train"], key=lambda d: natural_key(d["id"]))
    test = [item for name in test_sets for item in splits[name.lower()]]
    return split_datalist("GlaS", folder, train, test, num_val, fractions, fraction_rule, seed)


def resolve_glas_dir(dataset_dir: str | os.PathLike | None, demo_dir: str | os.PathLike,
                     **demo_kwargs) -> tuple[str, bool]:
    """``(folder, is_demo)``: ``dataset_dir`` when given (it must hold GlaS images: ``FileNotFoundError`` naming it
    otherwise, never a silent fallback), else the synthetic demo set (generated into ``demo_dir`` if needed) with a
    loud log line saying so (``mdm_med.data.datalist.resolve_dataset_dir``)."""

    def demo() -> Path:
        from mdm_med.data.synthetic import generate_glas_demo

        return generate_glas_demo(demo_dir, **demo_kwargs)

    return resolve_dataset_dir(
        dataset_dir, demo_dir, lambda d: None if has_glas_images(d) else "holds no GlaS images (train_N.bmp/png)",
        demo, "GlaS", "To use real GlaS, pass --dataset_dir /path/to/glas (train_N.bmp/png + train_N_anno.*)", logger)
