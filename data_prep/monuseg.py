"""Convert the MoNuSeg challenge download to a standard image/label/instance layout with a MONAI datalist.

Input layout (as unpacked from the challenge site)::

    INPUT/MoNuSegTrainingData/Tissue Images/NAME.tif     RGB(A) H&E tiles (LZW / PackBits / raw TIFF)
    INPUT/MoNuSegTrainingData/Annotations/NAME.xml       Aperio ImageScope XML, one Region per nucleus
    INPUT/MoNuSegTestData/NAME.tif + NAME.xml

Output layout::

    OUTPUT/imagesTr/NAME.png      RGB uint8 (H, W, 3); alpha is dropped
    OUTPUT/labelsTr/NAME.png      binary mask uint8 (H, W), 0 / 255
    OUTPUT/instancesTr/NAME.png   16-bit instance map (H, W), 0 background, ids 1..N (one per nucleus)
    OUTPUT/imagesTs/, labelsTs/, instancesTs/   the same for the test split
    OUTPUT/datalist.json          {"training": [...], "test": [...], "label_fractions": {"0.05": [...], ...}}

Rasterisation rules
    * A vertex ``(X, Y)`` is a point in pixel coordinates (X = column, Y = row, pixel centres at integers).
      A pixel belongs to a polygon if its centre lies inside it (even-odd rule); centres exactly on a
      top/left edge are inside, on a bottom/right edge outside, so adjacent polygons never share pixels
      and a polygon covers about its geometric area.
    * Vertices may lie outside the image: the polygon is rasterised exactly and clipped to the image
      (the same as clipping the polygon to the image rectangle; coordinates are not clamped, which would
      distort the shape).
    * A region with fewer than 3 distinct vertices, or without any pixel inside the image after
      rasterisation, is skipped and counted as *degenerate* in the summary.
    * Overlapping polygons: the later region in the XML wins in the instance map.  A region completely
      covered by later ones disappears and is counted as *occluded*.  Instance ids are renumbered 1..N in
      XML order of the surviving regions.  The binary mask is ``instance > 0``.

Label fractions: the training names in natural order (``img2`` before ``img10``); fraction ``f`` takes the
first ``N = max(1, int(f * n))`` names, so subsets are nested and deterministic (MoNuSeg:
30 images -> 0.05: 1, 0.1: 3, 0.25: 7, 0.5: 15, 1: 30).  Keys are ``f"{f:g}"`` ("0.05", ..., "1").

Each output file is written to a temporary name and moved into place with ``os.replace``. ``conversion_incomplete.txt``
is written first and removed last, after datalist.json (removed at the start, written at the end): the library refuses
a folder holding it (``mdm_med.data.monuseg``), so an interrupted or failed conversion is never trained on; rerun
the command to finish it.

Usage::

    python data_prep/monuseg.py --input /data/MoNuSeg --output /data/monuseg_std
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

try:
    from mdm_med.data.datalist import natural_key, nested_label_subsets
    from mdm_med.data.monuseg import INCOMPLETE_MARKER
except ImportError:  # running from a source checkout without installing the package
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from mdm_med.data.datalist import natural_key, nested_label_subsets
    from mdm_med.data.monuseg import INCOMPLETE_MARKER

__all__ = [
    "FRACTIONS",
    "ConversionError",
    "convert_monuseg",
    "find_pairs",
    "label_fraction_subsets",
    "main",
    "natural_key",
    "parse_aperio_xml",
    "polygon_mask",
    "rasterize_regions",
    "read_tiff_rgb",
]

FRACTIONS = (0.05, 0.1, 0.25, 0.5, 1.0)
TRAIN_DIR = "MoNuSegTrainingData"
TRAIN_IMAGES = "Tissue Images"
TRAIN_ANNOTATIONS = "Annotations"
TEST_DIR = "MoNuSegTestData"
TIFF_SUFFIXES = (".tif", ".tiff")
SPLIT_SUFFIX = {"training": "Tr", "test": "Ts"}


class ConversionError(ValueError):
    """Invalid input: unmatched image/annotation names, corrupt TIFF or XML, too many nuclei."""


# ----------------------------------------------------------------------------------------------------------------
# input discovery
# ----------------------------------------------------------------------------------------------------------------


def _files_by_stem(folder: Path, suffixes: tuple[str, ...]) -> dict[str, Path]:
    """{stem: path} of files in ``folder`` with one of ``suffixes`` (case-insensitive); hidden files ignored."""
    out: dict[str, Path] = {}
    for p in sorted(folder.iterdir()):
        if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in suffixes:
            if p.stem in out:
                raise ConversionError(f"duplicate name {p.stem!r} in {folder}: {out[p.stem].name}, {p.name}")
            out[p.stem] = p
    return out


def find_pairs(input_dir: str | os.PathLike) -> dict[str, list[tuple[str, Path, Path]]]:
    """Match TIFF images with XML annotations in the MoNuSeg layout.

    Returns:
        ``{"training": [(name, tif, xml), ...], "test": [...]}`` in natural name order.

    Raises:
        FileNotFoundError: an expected folder is missing.
        ConversionError: images without annotation or annotations without image (all of them listed).
    """
    root = Path(input_dir)
    folders = {
        "training": (root / TRAIN_DIR / TRAIN_IMAGES, root / TRAIN_DIR / TRAIN_ANNOTATIONS),
        "test": (root / TEST_DIR, root / TEST_DIR),
    }
    missing = sorted({str(f) for pair in folders.values() for f in pair if not f.is_dir()})
    if missing:
        raise FileNotFoundError("MoNuSeg input folder(s) not found: " + ", ".join(missing))
    pairs: dict[str, list[tuple[str, Path, Path]]] = {}
    problems: list[str] = []
    for split, (img_dir, ann_dir) in folders.items():
        images = _files_by_stem(img_dir, TIFF_SUFFIXES)
        annotations = _files_by_stem(ann_dir, (".xml",))
        no_ann = sorted(set(images) - set(annotations), key=natural_key)
        no_img = sorted(set(annotations) - set(images), key=natural_key)
        problems += [f"  {split}: image without annotation: {images[n]}" for n in no_ann]
        problems += [f"  {split}: annotation without image: {annotations[n]}" for n in no_img]
        names = sorted(set(images) & set(annotations), key=natural_key)
        pairs[split] = [(n, images[n], annotations[n]) for n in names]
    if problems:
        raise ConversionError(f"{len(problems)} unmatched MoNuSeg file(s):\n" + "\n".join(problems))
    return pairs


# ----------------------------------------------------------------------------------------------------------------
# reading
# ----------------------------------------------------------------------------------------------------------------


def read_tiff_rgb(path: str | os.PathLike) -> np.ndarray:
    """Read a TIFF (any compression PIL supports: LZW, PackBits, raw, ...) as RGB.

    Returns:
        uint8 array (H, W, 3); an alpha channel is dropped (not composited).
    """
    try:
        with Image.open(path) as im:
            im.load()
            rgb = im.convert("RGB")
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise ConversionError(f"cannot read TIFF {path}: {e}") from e
    return np.asarray(rgb, dtype=np.uint8)


def parse_aperio_xml(path: str | os.PathLike) -> list[np.ndarray]:
    """Polygons of an Aperio ImageScope XML (``Annotations/Annotation/Regions/Region/Vertices/Vertex``).

    Returns:
        one float64 array (K, 2) of ``(X, Y)`` vertices per Region, in document order.
    """
    try:
        root = ET.parse(path).getroot()
    except (ET.ParseError, OSError) as e:
        raise ConversionError(f"cannot parse annotation XML {path}: {e}") from e
    polygons = []
    for region in root.iter("Region"):
        verts = []
        for v in region.iter("Vertex"):
            try:
                xy = (float(v.attrib["X"]), float(v.attrib["Y"]))
            except (KeyError, ValueError) as e:
                raise ConversionError(
                    f"bad Vertex in Region Id={region.get('Id')!r} of {path}: {dict(v.attrib)}"
                ) from e
            if not (math.isfinite(xy[0]) and math.isfinite(xy[1])):
                raise ConversionError(f"non-finite Vertex in Region Id={region.get('Id')!r} of {path}: {xy}")
            verts.append(xy)
        polygons.append(np.asarray(verts, dtype=np.float64).reshape(-1, 2))
    return polygons


# ----------------------------------------------------------------------------------------------------------------
# rasterisation
# ----------------------------------------------------------------------------------------------------------------


def polygon_mask(xy: np.ndarray, shape: tuple[int, int]) -> tuple[int, int, np.ndarray] | None:
    """Rasterise one polygon with the pixel-centre, even-odd rule, clipped to the image.

    Args:
        xy: (K, 2) vertices ``(X = column, Y = row)``; the polygon is closed implicitly.
        shape: image shape ``(H, W)``.

    Returns:
        ``(row0, col0, mask)`` with ``mask`` the tight bool (h, w) crop of the polygon's pixels whose top-left
        pixel is ``(row0, col0)``,
        or None if fewer than 3 distinct vertices or no pixel centre lies inside (within the image).
    """
    xy = np.asarray(xy, dtype=np.float64).reshape(-1, 2)
    if len(np.unique(xy, axis=0)) < 3:
        return None
    h_img, w_img = shape
    x0, y0 = xy[:, 0], xy[:, 1]
    x1, y1 = np.roll(x0, -1), np.roll(y0, -1)
    r0, r1 = max(0, math.ceil(y0.min())), min(h_img - 1, math.floor(y0.max()))
    c0, c1 = max(0, math.ceil(x0.min())), min(w_img - 1, math.floor(x0.max()))
    if r1 < r0 or c1 < c0:
        return None
    rows = np.arange(r0, r1 + 1, dtype=np.float64)[:, None]  # (nr, 1) scanlines through pixel centres
    lo, hi = np.minimum(y0, y1), np.maximum(y0, y1)
    crosses = (rows >= lo) & (rows < hi)  # half-open: each vertex counted once, horizontal edges never
    dy = np.where(y1 != y0, y1 - y0, 1.0)
    xs = np.where(crosses, x0 + (rows - y0) * (x1 - x0) / dy, np.inf)  # (nr, K) crossing abscissae
    if xs.shape[1] % 2:
        xs = np.concatenate([xs, np.full((xs.shape[0], 1), np.inf)], axis=1)
    xs.sort(axis=1)
    starts, ends = xs[:, 0::2], xs[:, 1::2]  # inside spans [start, end) between crossing pairs
    r_idx, k_idx = np.nonzero(np.isfinite(starts))
    width = c1 - c0 + 1
    cs = np.clip(np.ceil(starts[r_idx, k_idx]) - c0, 0, width).astype(np.int64)
    ce = np.clip(np.ceil(ends[r_idx, k_idx]) - c0, 0, width).astype(np.int64)
    diff = np.zeros((rows.shape[0], width + 1), dtype=np.int32)
    np.add.at(diff, (r_idx, cs), 1)
    np.add.at(diff, (r_idx, ce), -1)
    mask = np.cumsum(diff[:, :width], axis=1) > 0
    rows_any, cols_any = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if rows_any.size == 0:
        return None
    mask = mask[rows_any[0] : rows_any[-1] + 1, cols_any[0] : cols_any[-1] + 1]  # tight crop
    return r0 + int(rows_any[0]), c0 + int(cols_any[0]), mask


def rasterize_regions(polygons: Sequence[np.ndarray], shape: tuple[int, int]) -> tuple[np.ndarray, dict]:
    """Instance map of polygons (later polygons win on overlap).

    Args:
        polygons: sequence of (K, 2) ``(X, Y)`` vertex arrays.
        shape: image shape ``(H, W)``.

    Returns:
        ``(instances, stats)``: int32 (H, W) map with ids 1..N (XML order of the surviving regions) and
        ``{"regions": int, "nuclei": N, "degenerate": int, "occluded": int}``.
    """
    inst = np.zeros(shape, dtype=np.int32)
    degenerate = drawn = 0
    for xy in polygons:
        res = polygon_mask(xy, shape)
        if res is None:
            degenerate += 1
            continue
        drawn += 1
        r0, c0, mask = res
        inst[r0 : r0 + mask.shape[0], c0 : c0 + mask.shape[1]][mask] = drawn
    present = np.zeros(drawn + 1, dtype=bool)
    present[np.unique(inst)] = True
    present[0] = False
    lut = np.cumsum(present).astype(np.int32)  # renumber survivors 1..N keeping order
    inst = lut[inst]
    nuclei = int(present.sum())
    stats = {"regions": len(polygons), "nuclei": nuclei, "degenerate": degenerate, "occluded": drawn - nuclei}
    return inst, stats


# ----------------------------------------------------------------------------------------------------------------
# writing
# ----------------------------------------------------------------------------------------------------------------


def _atomic_save_png(arr: np.ndarray, path: Path) -> None:
    """Save ``arr`` (H, W, 3) uint8 / (H, W) uint8 / (H, W) uint16 as PNG via a temp file + os.replace."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=".tmp")
    os.close(fd)
    try:
        Image.fromarray(arr).save(tmp, format="PNG")
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def _atomic_write_json(obj, path: Path) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(obj, f, indent=2)
            f.write("\n")
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def label_fraction_subsets(names: Sequence[str], fractions: Sequence[float] = FRACTIONS) -> dict[str, list[str]]:
    """Nested subsets keyed ``f"{f:g}"``: the first ``max(1, int(f * n))`` names in natural order (the library's one
    rule, ``mdm_med.data.datalist.nested_label_subsets``)."""
    return nested_label_subsets(list(names), len(names), fractions)


def convert_monuseg(
    input_dir: str | os.PathLike,
    output_dir: str | os.PathLike,
    fractions: Sequence[float] = FRACTIONS,
    progress: bool = True,
) -> dict:
    """Convert a MoNuSeg download (see module docstring) and write ``datalist.json``.

    Returns:
        summary ``{"training": {"images", "nuclei", "regions", "degenerate", "occluded"}, "test": {...}}``.

    Raises:
        FileNotFoundError / ConversionError: missing folders, unmatched names (all listed), corrupt files
        (the file is named), more than 65535 nuclei in one image.
    """
    pairs = find_pairs(input_dir)
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    marker = out / INCOMPLETE_MARKER
    marker.write_text("data_prep/monuseg.py is converting into this folder, or was interrupted: rerun it before "
                      "using the folder.\n")
    datalist_path = out / "datalist.json"
    if datalist_path.exists():  # a stale datalist must not mark an incomplete conversion as complete
        datalist_path.unlink()
    datalist: dict = {"training": [], "test": []}
    summary = {s: {"images": 0, "nuclei": 0, "regions": 0, "degenerate": 0, "occluded": 0} for s in pairs}
    total = sum(len(v) for v in pairs.values())
    with tqdm(total=total, desc="MoNuSeg", unit="img", disable=not progress) as bar:
        for split, items in pairs.items():
            sfx = SPLIT_SUFFIX[split]
            dirs = {k: out / f"{k}{sfx}" for k in ("images", "labels", "instances")}
            for d in dirs.values():
                d.mkdir(exist_ok=True)
            for name, tif, xml in items:
                image = read_tiff_rgb(tif)
                inst, stats = rasterize_regions(parse_aperio_xml(xml), image.shape[:2])
                if stats["nuclei"] > np.iinfo(np.uint16).max:
                    raise ConversionError(f"{xml}: {stats['nuclei']} nuclei do not fit a 16-bit instance map")
                _atomic_save_png(image, dirs["images"] / f"{name}.png")
                _atomic_save_png(np.where(inst > 0, 255, 0).astype(np.uint8), dirs["labels"] / f"{name}.png")
                _atomic_save_png(inst.astype(np.uint16), dirs["instances"] / f"{name}.png")
                datalist[split].append(
                    {
                        "id": name,
                        "image": f"images{sfx}/{name}.png",
                        "label": f"labels{sfx}/{name}.png",
                        "instance": f"instances{sfx}/{name}.png",
                    }
                )
                summary[split]["images"] += 1
                for k in ("nuclei", "regions", "degenerate", "occluded"):
                    summary[split][k] += stats[k]
                bar.update(1)
    datalist["label_fractions"] = label_fraction_subsets([d["id"] for d in datalist["training"]], fractions)
    _atomic_write_json(datalist, datalist_path)
    marker.unlink()
    return summary


def _format_summary(summary: dict, output_dir: str | os.PathLike) -> str:
    lines = [f"MoNuSeg written to {output_dir}"]
    for split, s in summary.items():
        lines.append(
            f"  {split:8s}: {s['images']} images, {s['nuclei']} nuclei from {s['regions']} regions "
            f"({s['degenerate']} degenerate regions skipped, {s['occluded']} fully occluded)"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Convert the MoNuSeg challenge layout (TIFF + Aperio XML) to PNG images, binary labels, "
        "16-bit instance maps and a MONAI datalist.json with nested label fractions."
    )
    parser.add_argument("--input", required=True, help="folder containing MoNuSegTrainingData/ and MoNuSegTestData/")
    parser.add_argument("--output", required=True, help="output folder (created if missing)")
    args = parser.parse_args(argv)
    try:
        summary = convert_monuseg(args.input, args.output)
    except (ConversionError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(_format_summary(summary, args.output))
    return 0


if __name__ == "__main__":
    sys.exit(main())
