"""Deterministic synthetic H&E-like nuclei tiles (a small stand-in for MoNuSeg).

Each tile holds many small nuclei (dark purple, slightly irregular ellipses of radius ~4-9 px, some of them
touching, at a density that varies between and within tiles) on a pink fibrous stroma; stain concentrations
become RGB with the Beer-Lambert model of :mod:`mdm_med.data.synthetic`, followed by blur and noise.

``generate_monuseg_demo`` writes the layout of ``data_prep/monuseg.py``::

    imagesTr/NAME.png     RGB uint8 (H, W, 3)
    labelsTr/NAME.png     uint8 (H, W), 0 background / 255 nucleus
    instancesTr/NAME.png  uint16 (H, W), 0 background, ids 1..N (one per nucleus; touching nuclei differ)
    imagesTs/, labelsTs/, instancesTs/   the same for the test split
    datalist.json         relative paths, as data_prep writes it (the scanner checks it names exactly these files)
    demo.json             generator parameters (completeness marker, written last)
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage

from mdm_med.data.datalist import nested_label_subsets
from mdm_med.data.synthetic import MARKER_NAME, _fibre_texture, _smooth_noise, _stain_to_rgb
from mdm_med.io import build_folder_atomically

__all__ = ["GENERATOR_VERSION", "generate_monuseg_demo", "render_nuclei_sample"]

GENERATOR = "mdm_med.data.synthetic_nuclei"
GENERATOR_VERSION = "monuseg-demo-1"

# Split -> (folder suffix, file-name prefix, index mixed into the per-image seed).
_SPLITS = {"training": ("Tr", "train", 0), "test": ("Ts", "test", 1)}
_KINDS = ("images", "labels", "instances")


# --------------------------------------------------------------------------------------------- nuclei layout


def _place_nuclei(rng: np.random.Generator, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Nucleus centres (N, 2) as (y, x), semi-axes (N, 2) and angles (N,).

    Rejection sampling against a smooth density field; a share of the candidates is put next to an accepted
    nucleus at slightly less than the sum of their radii, so those pairs touch.
    """
    h, w = shape
    n_target = int(rng.uniform(0.0010, 0.0030) * h * w)
    p_touch = rng.uniform(0.15, 0.4)
    accept = np.clip(0.55 + 0.4 * _smooth_noise(rng, shape, rng.uniform(40.0, 90.0)), 0.05, 1.0)
    centres = np.zeros((n_target, 2))
    radii = np.zeros(n_target)
    n = 0
    for _ in range(12 * n_target):
        if n == n_target:
            break
        r = float(np.clip(rng.normal(6.0, 1.2), 4.0, 9.0))
        if n and rng.random() < p_touch:
            parent = int(rng.integers(n))
            phi = rng.uniform(0.0, 2.0 * np.pi)
            c = centres[parent] + 0.85 * (radii[parent] + r) * np.array([np.sin(phi), np.cos(phi)])
            gap = 0.8
        else:
            c = rng.uniform((-3.0, -3.0), (h + 3.0, w + 3.0))
            gap = 1.05
            ci = np.clip(c.astype(np.int64), 0, [h - 1, w - 1])
            if rng.random() > accept[ci[0], ci[1]]:
                continue
        if n and (np.hypot(*(centres[:n] - c).T) < gap * (radii[:n] + r)).any():
            continue
        centres[n], radii[n] = c, r
        n += 1
    centres, radii = centres[:n], radii[:n]
    elong = rng.uniform(1.0, 1.6, n)
    axes = np.stack([radii * np.sqrt(elong), radii / np.sqrt(elong)], axis=1)
    return centres, axes, rng.uniform(0.0, np.pi, n)


def _paint_instances(rng: np.random.Generator, shape: tuple[int, int], centres: np.ndarray, axes: np.ndarray,
                     angles: np.ndarray, min_area: int = 8) -> np.ndarray:
    """Instance map (H, W) int64 of irregular ellipses; a pixel claimed by several goes to the first.

    The border radius is ``1 + a2 cos(2 phi + p2) + a3 cos(3 phi + p3)`` in the ellipse frame. A nucleus cut
    in pieces by earlier ones keeps its largest (4-connected) piece; nuclei left with fewer than ``min_area``
    pixels are dropped, and ids are renumbered 1..N in order.
    """
    h, w = shape
    n = len(centres)
    inst = np.zeros(shape, dtype=np.int64)
    if n == 0:
        return inst
    k = int(np.ceil(axes.max() * 1.3)) + 1
    off = np.arange(-k, k + 1)
    oy, ox = np.meshgrid(off, off, indexing="ij")  # (S, S)
    base = np.round(centres).astype(np.int64)  # (N, 2)
    py, px = base[:, 0, None, None] + oy, base[:, 1, None, None] + ox  # (N, S, S)
    dy, dx = py - centres[:, 0, None, None], px - centres[:, 1, None, None]
    cos, sin = np.cos(angles)[:, None, None], np.sin(angles)[:, None, None]
    u = (dx * cos + dy * sin) / axes[:, 0, None, None]
    v = (-dx * sin + dy * cos) / axes[:, 1, None, None]
    phi = np.arctan2(v, u)
    amp = rng.uniform(0.0, 0.12, (n, 2))
    pha = rng.uniform(0.0, 2.0 * np.pi, (n, 2))
    border = (1.0 + amp[:, 0, None, None] * np.cos(2 * phi + pha[:, 0, None, None])
              + amp[:, 1, None, None] * np.cos(3 * phi + pha[:, 1, None, None]))
    ids = np.broadcast_to(np.arange(1, n + 1)[:, None, None], py.shape)
    keep = (np.hypot(u, v) <= border) & (py >= 0) & (py < h) & (px >= 0) & (px < w)
    first = np.full(shape, n + 1, dtype=np.int64)
    np.minimum.at(first, (py[keep], px[keep]), ids[keep])
    first[first > n] = 0
    for i, box in enumerate(ndimage.find_objects(first), 1):  # an occluded nucleus keeps its largest piece
        if box is None:
            continue
        pieces, count = ndimage.label(first[box] == i)
        if count > 1:
            largest = 1 + int(np.argmax(np.bincount(pieces.ravel())[1:]))
            first[box][(pieces > 0) & (pieces != largest)] = 0
    keep = np.bincount(first.ravel(), minlength=n + 1) >= min_area
    keep[0] = False
    return np.where(keep[first], np.cumsum(keep)[first], 0)


def _boundary(inst: np.ndarray) -> np.ndarray:
    """Bool (H, W): nucleus pixels with a 4-neighbour of another id (background or a touching nucleus)."""
    edge = np.zeros(inst.shape, dtype=bool)
    edge[1:] |= inst[1:] != inst[:-1]
    edge[:-1] |= inst[:-1] != inst[1:]
    edge[:, 1:] |= inst[:, 1:] != inst[:, :-1]
    edge[:, :-1] |= inst[:, :-1] != inst[:, 1:]
    return edge & (inst > 0)


# -------------------------------------------------------------------------------------------------- sample


def render_nuclei_sample(rng: np.random.Generator, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Render one synthetic H&E nuclei tile.

    Args:
        rng: random generator; the output depends only on its state.
        size: (H, W) of the tile.

    Returns:
        image (H, W, 3) uint8 RGB and instance map (H, W) uint16 (0 background, ids 1..N).
    """
    h, w = int(size[0]), int(size[1])
    shape = (h, w)
    inst = _paint_instances(rng, shape, *_place_nuclei(rng, shape))
    n = int(inst.max())

    # ---- stroma: eosin on wavy fibres with pale gaps, a faint haematoxylin tint.
    fibres = _fibre_texture(rng, shape)
    density = _smooth_noise(rng, shape, rng.uniform(20.0, 50.0))
    gaps = np.clip((_smooth_noise(rng, shape, rng.uniform(10.0, 25.0)) - 1.0) * 1.2, 0.0, 0.85)
    e_map = rng.uniform(0.8, 1.1) * (0.45 + 0.75 * fibres) * (1.0 + 0.15 * density) * (1.0 - gaps)
    h_map = rng.uniform(0.03, 0.08) * np.clip(1.0 + 0.5 * density, 0.2, None) * (1.0 - gaps)

    # ---- nuclei: per-nucleus darkness, chromatin texture, a darker rim on the paler (vesicular) ones.
    dark = np.concatenate([[0.0], rng.uniform(0.6, 1.3, n)])
    rim = np.concatenate([[0.0], np.where(rng.random(n) < 0.35, rng.uniform(0.3, 0.6, n), 0.0)])
    chromatin = np.clip(1.0 + 0.25 * _smooth_noise(rng, shape, 2.0) + 0.1 * rng.standard_normal(shape), 0.3, None)
    nuc = (dark[inst] - rim[inst]) * chromatin + (rim[inst] + 0.2) * _boundary(inst)
    nuc = ndimage.gaussian_filter(nuc, 0.6)
    h_map = h_map + nuc * (1.0 - np.clip(h_map, 0.0, 1.0))
    e_map = e_map * (1.0 - 0.5 * np.clip(nuc, 0.0, 1.0)) + 0.2 * nuc

    # ---- per-tile stain variation, Beer-Lambert colour, blur and noise.
    image = _stain_to_rgb(rng, e_map, h_map, white_min=235.0, blur=(0.4, 0.9), noise_sd=3.0)
    return image, inst.astype(np.uint16)


# ------------------------------------------------------------------------------------------------- dataset


def _params(num_train: int, num_test: int, size: tuple[int, int], seed: int) -> dict:
    return {
        "generator": GENERATOR,
        "version": GENERATOR_VERSION,
        "num_train": int(num_train),
        "num_test": int(num_test),
        "size": [int(size[0]), int(size[1])],
        "seed": int(seed),
    }


def _names(params: dict) -> dict[str, list[str]]:
    counts = {"training": params["num_train"], "test": params["num_test"]}
    return {split: [f"{_SPLITS[split][1]}_{i}" for i in range(1, counts[split] + 1)] for split in _SPLITS}


def _expected_files(params: dict) -> list[str]:
    return ["datalist.json"] + [f"{kind}{_SPLITS[split][0]}/{name}.png"
                                for split, names in _names(params).items() for name in names for kind in _KINDS]


def _write_split(folder: Path, split: str, names: list[str], size: tuple[int, int], seed: int) -> list[dict]:
    """Render and write one split under ``folder``; returns its datalist items (relative paths)."""
    sfx, _, split_index = _SPLITS[split]
    dirs = {kind: folder / f"{kind}{sfx}" for kind in _KINDS}
    for d in dirs.values():
        d.mkdir()
    items = []
    for i, name in enumerate(names, 1):
        rng = np.random.default_rng(np.random.SeedSequence(int(seed), spawn_key=(split_index, i)))
        image, inst = render_nuclei_sample(rng, size)
        Image.fromarray(image).save(dirs["images"] / f"{name}.png", format="PNG")
        Image.fromarray(np.where(inst > 0, 255, 0).astype(np.uint8)).save(dirs["labels"] / f"{name}.png",
                                                                           format="PNG")
        Image.fromarray(inst).save(dirs["instances"] / f"{name}.png", format="PNG")  # uint16 -> 16-bit grey
        items.append({"id": name, **{k.rstrip("s"): f"{k}{sfx}/{name}.png" for k in _KINDS}})
    return items


def generate_monuseg_demo(out_dir: str | os.PathLike, num_train: int = 12, num_test: int = 6,
                          size: tuple[int, int] = (256, 256), seed: int = 0) -> Path:
    """Write a synthetic MoNuSeg-layout dataset (module docstring) to ``out_dir``; return its resolved path.

    Names are ``train_1..train_{num_train}`` and ``test_1..test_{num_test}``; tile i of a split is drawn from
    ``SeedSequence(seed, spawn_key=(split_index, i))``, so equal arguments give byte-identical files.
    A complete folder with the same parameters (``demo.json``) is reused as is. Otherwise the set is built in a
    temporary sibling folder and swapped into place (``mdm_med.io.build_folder_atomically``). A non-empty
    ``out_dir`` is replaced only if it holds an earlier set of this generator and nothing else; anything else
    raises ``FileExistsError``.
    """
    if num_train < 1 or num_test < 0:
        raise ValueError(f"need num_train >= 1 and num_test >= 0, got {num_train}, {num_test}")
    if len(size) != 2 or min(size) < 32:
        raise ValueError(f"size must be (height, width) with both >= 32, got {size!r}")
    params = _params(num_train, num_test, size, seed)

    def fill(folder: Path) -> None:
        names = _names(params)
        datalist = {split: _write_split(folder, split, names[split], size, seed) for split in _SPLITS}
        datalist["label_fractions"] = nested_label_subsets(names["training"], num_train)
        (folder / "datalist.json").write_text(json.dumps(datalist, indent=2) + "\n")

    return build_folder_atomically(out_dir, params, fill, _expected_files, MARKER_NAME)
