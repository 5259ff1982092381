"""MoNuSeg (nuclei) standard layout, as written by ``data_prep/monuseg.py``: scanning, checks and the datalist.

Layout (one folder)::

    imagesTr/NAME.png     RGB uint8           labelsTr/NAME.png  binary 0/255     instancesTr/NAME.png  16-bit ids
    imagesTs/NAME.png ... the same for the test split
    datalist.json         written last by data_prep/monuseg.py (and the demo); optional for a layout made otherwise

The files are scanned. A folder holding ``conversion_incomplete.txt`` (written first by ``data_prep/monuseg.py`` and
removed after ``datalist.json``) is refused: its conversion is running or was interrupted. A ``datalist.json`` with
``training`` and ``test`` lists must name exactly the images found; any other ``datalist.json`` is ignored.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from mdm_med.data.datalist import DEFAULT_FRACTIONS, natural_key, resolve_dataset_dir, split_datalist

__all__ = ["INCOMPLETE_MARKER", "has_monuseg_layout", "scan_monuseg", "build_monuseg_datalist", "resolve_monuseg_dir"]

logger = logging.getLogger(__name__)

_SPLITS = {"training": "Tr", "test": "Ts"}
_KINDS = ("images", "labels", "instances")  # item keys: image, label, instance
INCOMPLETE_MARKER = "conversion_incomplete.txt"  # present while data_prep/monuseg.py has not finished
_RERUN = "rerun python data_prep/monuseg.py --input /path/to/MoNuSeg --output {}"


def _layout_problems(folder: Path) -> list[str]:
    """What keeps ``folder`` from being a MoNuSeg layout (empty list: none)."""
    if not folder.is_dir():
        return [f"folder {folder} does not exist"]
    if (folder / INCOMPLETE_MARKER).exists():
        return [f"its conversion did not finish ({INCOMPLETE_MARKER} is there; data_prep/monuseg.py removes it "
                f"after writing datalist.json): {_RERUN.format(folder)}"]
    missing = [f"{kind}{sfx}/" for sfx in _SPLITS.values() for kind in _KINDS if not (folder / f"{kind}{sfx}").is_dir()]
    if missing:
        return ["missing sub-folder(s) " + ", ".join(missing)]
    if not _pngs(folder / "imagesTr"):
        return ["imagesTr/ holds no .png images"]
    return []


def _pngs(folder: Path) -> dict[str, Path]:
    """{stem: path} of the non-hidden ``.png`` files in ``folder``."""
    return {p.stem: p for p in sorted(folder.iterdir())
            if p.is_file() and p.suffix.lower() == ".png" and not p.name.startswith(".")}


def _datalist_problems(folder: Path, images: dict[str, dict[str, Path]]) -> list[str]:
    """Where ``datalist.json`` (of data_prep/monuseg.py or the demo) and the ``images{Tr,Ts}`` files disagree."""
    path = folder / "datalist.json"
    if not path.is_file():
        return []
    try:
        written = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        return [f"datalist.json: cannot read ({err})"]
    if not (isinstance(written, dict) and all(isinstance(written.get(s), list) for s in _SPLITS)):
        return []  # not written by the converter: the files alone decide
    problems = []
    for split, sfx in _SPLITS.items():
        listed = [d.get("id") for d in written[split] if isinstance(d, dict)]
        problems += [f"datalist.json lists {split} image {n!r} but images{sfx}/{n}.png is missing"
                     for n in listed if n not in images[split]]
        problems += [f"images{sfx}/{n}.png is not in the {split} list of datalist.json"
                     for n in images[split] if n not in listed]
    return problems


def has_monuseg_layout(folder: str | os.PathLike) -> bool:
    """True when ``folder`` has the six ``{images,labels,instances}{Tr,Ts}`` folders and imagesTr holds a PNG (and no
    unfinished conversion's marker)."""
    return not _layout_problems(Path(folder))


def scan_monuseg(folder: str | os.PathLike) -> dict[str, list[dict]]:
    """Items per split, ``{"training": [{"id", "image", "label", "instance"}], "test": [...]}``, natural order.

    Paths are absolute. Raises ``FileNotFoundError`` when the layout is missing or its conversion unfinished, and
    one ``ValueError`` listing every image without its label or instance file, every label/instance file without an
    image, every name found in both splits, and every difference from the converter's ``datalist.json``.
    """
    folder = Path(folder).resolve()
    problems = _layout_problems(folder)
    if problems:
        raise FileNotFoundError(f"{folder} is not a MoNuSeg layout: {problems[0]}")
    splits: dict[str, list[dict]] = {}
    problems, all_images = [], {}
    for split, sfx in _SPLITS.items():
        found = {kind: _pngs(folder / f"{kind}{sfx}") for kind in _KINDS}
        images = all_images[split] = found["images"]
        for kind in ("labels", "instances"):
            problems += [f"{images[n].relative_to(folder)}: no {kind}{sfx}/{n}.png" for n in images
                         if n not in found[kind]]
            problems += [f"{found[kind][n].relative_to(folder)}: no images{sfx}/{n}.png"
                         for n in found[kind] if n not in images]
        names = sorted((n for n in images if n in found["labels"] and n in found["instances"]), key=natural_key)
        splits[split] = [{"id": n, "image": str(images[n]), "label": str(found["labels"][n]),
                          "instance": str(found["instances"][n])} for n in names]
    both = sorted({d["id"] for d in splits["training"]} & {d["id"] for d in splits["test"]}, key=natural_key)
    problems += [f"{n}.png is in both imagesTr/ and imagesTs/ (test images must not be trained on)" for n in both]
    stale = _datalist_problems(folder, all_images)
    problems += stale
    if problems:
        raise ValueError(f"MoNuSeg folder {folder} is inconsistent ({len(problems)} problem(s)):\n  "
                         + "\n  ".join(problems)
                         + (f"\nThe files differ from datalist.json, which data_prep/monuseg.py writes last: "
                            f"{_RERUN.format(folder)} (into an empty folder if another conversion's files are there)"
                            if stale else ""))
    return splits


def build_monuseg_datalist(folder: str | os.PathLike, num_val: int = 4, fractions=DEFAULT_FRACTIONS,
                           fraction_rule: str = "first", seed: int = 0) -> dict:
    """A MONAI datalist: ``training`` (labelled pool), ``validation``, ``test`` and ``label_fractions``.

    The validation split is the last ``num_val`` training images in natural name order; the test split is
    ``imagesTs/`` and never enters training or validation. ``label_fractions`` maps "0.1" etc. to nested id
    lists of the pool, counted on all training images (``label_fraction_counts``: MoNuSeg 30 images -> 10% = 3).
    Items are ``{"id", "image", "label", "instance"}`` with absolute paths.
    """
    splits = scan_monuseg(folder)
    datalist = split_datalist("MoNuSeg", folder, splits["training"], splits["test"], num_val, fractions,
                              fraction_rule, seed)
    if not datalist["test"]:
        logger.warning("MoNuSeg folder %s has no test images (imagesTs/ is empty)", folder)
    return datalist


def resolve_monuseg_dir(dataset_dir: str | os.PathLike | None, demo_dir: str | os.PathLike,
                        **demo_kwargs) -> tuple[str, bool]:
    """``(folder, is_demo)``.

    An empty/None ``dataset_dir`` selects the synthetic demo set (generated into ``demo_dir`` unless already
    complete there; ``demo_kwargs`` go to ``generate_monuseg_demo``) with a loud log line. A given
    ``dataset_dir`` must have the MoNuSeg layout, else ``FileNotFoundError`` (never a silent demo fallback).
    """

    def problem(folder: str) -> str | None:
        problems = _layout_problems(Path(folder))
        return f"is not a MoNuSeg layout: {problems[0]}" if problems else None

    def demo() -> Path:
        from mdm_med.data.synthetic_nuclei import generate_monuseg_demo

        return generate_monuseg_demo(demo_dir, **demo_kwargs)

    return resolve_dataset_dir(
        dataset_dir, demo_dir, problem, demo, "MoNuSeg",
        "To use real MoNuSeg, convert the challenge download with: python data_prep/monuseg.py --input "
        "/path/to/MoNuSeg --output /path/to/monuseg_std, then pass --dataset_dir /path/to/monuseg_std "
        "(imagesTr/, labelsTr/, instancesTr/, imagesTs/, ...)", logger)
