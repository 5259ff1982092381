"""Deterministic synthetic MR-like hippocampus volumes (a small stand-in for Decathlon Task04).

Each case holds one curved, elongated tube along the y axis: a thick head at high y (anterior, since the affine
is the identity in RAS+) and a thinner, tapering tail at low y (posterior). Its position, length, radii,
curvature and head/tail split vary per case, the border is slightly rough. The tube is brighter than a
smooth-textured background that also holds a dark CSF-like sliver next to the head and a few bright
ellipsoidal distractors, so intensity alone does not find it. Partial-volume blur, a smooth multiplicative
bias field, Rician noise and a per-case gain finish the image.

``generate_hippocampus_demo`` writes the Medical Segmentation Decathlon layout::

    imagesTr/hippocampus_001.nii.gz ...   float32 (X, Y, Z), identity affine, 1 mm voxels
    labelsTr/hippocampus_001.nii.gz ...   uint8 (X, Y, Z): 0 background, 1 anterior, 2 posterior
    dataset.json, demo.json (generator parameters)
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage

from mdm_med.io import build_folder_atomically

__all__ = ["GENERATOR_VERSION", "MARKER_NAME", "generate_hippocampus_demo", "render_volume"]

GENERATOR_VERSION = "hippocampus-demo-1"
MARKER_NAME = "demo.json"
LABELS = {"0": "background", "1": "Anterior", "2": "Posterior"}


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, ...], sigma: float) -> np.ndarray:
    """Smooth random field of ``shape`` (X, Y, Z), zero mean, unit std, feature size ``sigma`` voxels.

    Fields with sigma >= 4 are drawn on a coarser grid and trilinearly upsampled (same look, much faster).
    """
    step = max(1, int(sigma // 2))
    coarse = rng.standard_normal(tuple(-(-s // step) + 2 for s in shape))
    coarse = ndimage.gaussian_filter(coarse, sigma / step, mode="wrap")
    field = ndimage.zoom(coarse, step, order=1, grid_mode=False) if step > 1 else coarse
    field = field[tuple(slice(0, s) for s in shape)]
    field = field - field.mean()
    return (field / (field.std() + 1e-8)).astype(np.float32)


def _ellipsoid(grid: np.ndarray, centre: np.ndarray, semi_axes: np.ndarray) -> np.ndarray:
    """Axis-aligned ellipsoid mask; grid (3, X, Y, Z), centre (3,), semi_axes (3,). Returns bool (X, Y, Z)."""
    q = ((grid - centre[:, None, None, None]) / semi_axes[:, None, None, None]) ** 2
    return q.sum(axis=0) <= 1.0


def _fit(coord: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Shrink (about its mean) and shift the 1-D curve ``coord`` (N,) so it lies in [lo, hi]."""
    span = coord.max() - coord.min()
    if span > hi - lo:
        coord = coord.mean() + (coord - coord.mean()) * (hi - lo) / span
    return coord + max(0.0, lo - coord.min()) - max(0.0, coord.max() - hi)


def _tube(rng: np.random.Generator, grid: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Draw the curved tube. grid (3, X, Y, Z) of voxel coordinates.

    Returns the label (X, Y, Z) uint8 (1 anterior / head at high y, 2 posterior / tail), the centreline
    (N, 3) and the radius along it (N,).
    """
    shape = grid.shape[1:]
    nx, ny, nz = shape
    scale = min(1.0, min(nx, nz) / 40.0)
    r_head, r_tail = rng.uniform(4.5, 6.0) * scale, rng.uniform(3.4, 4.4) * scale
    t_split = rng.uniform(0.5, 0.62)  # fraction of the length (from the tail) that is posterior

    t = np.linspace(0.0, 1.0, 64)
    length = ny * rng.uniform(0.55, 0.72)
    y = rng.uniform(0.12 * ny, 0.88 * ny - length) + length * t
    s = t - 0.5
    x = nx * rng.uniform(0.35, 0.65) + length * (rng.uniform(-0.25, 0.25) * s + rng.uniform(-0.6, 0.6) * (s * s))
    z = nz * rng.uniform(0.35, 0.65) + length * (rng.uniform(-0.2, 0.2) * s + rng.uniform(-0.3, 0.9) * (s * s))
    margin = r_head + 2.0
    x, z = _fit(x, margin, nx - 1 - margin), _fit(z, margin, nz - 1 - margin)
    centre = np.stack([x, y, z], axis=1)  # (N, 3)

    radius = r_tail + (r_head - r_tail) / (1.0 + np.exp(-(t - t_split) / 0.06))
    radius *= 0.7 + 0.3 * np.clip(t / 0.2, 0.0, 1.0)  # the tail thins out
    radius *= 1.0 + 0.08 * np.sin(2.0 * np.pi * rng.uniform(1.0, 3.0) * t + rng.uniform(0.0, 2.0 * np.pi))
    flat = rng.uniform(0.8, 1.25)  # elliptic cross-section: wider in x, flatter in z (or the reverse)

    # Nearest centreline point of every voxel in the tube's bounding box.
    reach = 1.4 * radius.max() + 2.0
    lo = np.maximum(np.floor(centre.min(axis=0) - reach), 0).astype(int)
    hi = np.minimum(np.ceil(centre.max(axis=0) + reach) + 1, shape).astype(int)
    box = tuple(slice(a, b) for a, b in zip(lo, hi))
    pts = grid[(slice(None), *box)].reshape(3, -1).T  # (M, 3)
    weight = np.array([1.0 / flat, 1.0, flat], dtype=np.float32)
    diff = (pts[:, None, :] - centre[None].astype(np.float32)) * weight  # (M, N, 3)
    dist2 = np.einsum("mnk,mnk->mn", diff, diff)
    nearest = dist2.argmin(axis=1)
    q = np.sqrt(dist2[np.arange(len(pts)), nearest]) / radius[nearest]

    rough = 1.0 + 0.12 * _smooth_noise(rng, tuple(hi - lo), 2.5).reshape(-1)
    inside = (q <= rough).reshape(tuple(hi - lo))
    parts, n = ndimage.label(inside)
    if n > 1:  # drop the few voxels the rough border cut off
        inside = parts == np.bincount(parts.reshape(-1))[1:].argmax() + 1
    label = np.zeros(shape, dtype=np.uint8)
    label[box] = np.where(inside, np.where(t[nearest] >= t_split, 1, 2).reshape(inside.shape), 0)
    return label, centre, radius


def render_volume(rng: np.random.Generator, shape: tuple[int, int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Render one synthetic MR-like volume and its label.

    Args:
        rng: random generator; the output depends only on its state.
        shape: (X, Y, Z) of the volume, each >= 24.

    Returns:
        image (X, Y, Z) float32 (>= 0, MR-like scale of a few hundred) and label (X, Y, Z) uint8 with
        0 background, 1 anterior (head, high y), 2 posterior (tail, low y).
    """
    shape = tuple(int(s) for s in shape)
    grid = np.indices(shape, dtype=np.float32)  # (3, X, Y, Z)
    label, centre, radius = _tube(rng, grid)
    tube = label > 0
    near_tube = ndimage.binary_dilation(tube, iterations=3)

    # Tissue classes as relative intensities: textured background 1, CSF ~0.35, tube and distractors brighter.
    contrast = rng.uniform(0.25, 0.45)
    img = 1.0 + 0.10 * _smooth_noise(rng, shape, 5.0) + 0.05 * _smooth_noise(rng, shape, 1.5)
    head = centre[int(len(centre) * rng.uniform(0.7, 0.9))]
    side = rng.choice([-1.0, 1.0])
    csf_centre = head + np.array([0.0, 0.0, side * (radius.max() + rng.uniform(1.0, 2.5))])
    csf = _ellipsoid(grid, csf_centre, np.array([1.3 * radius.max(), 0.15 * shape[1], rng.uniform(1.2, 2.2)]))
    img = np.where(csf, 0.35 + 0.05 * _smooth_noise(rng, shape, 2.0), img)
    placed = 0
    for _ in range(20):  # bright distractor blobs away from the tube
        if placed >= int(rng.integers(2, 5)):
            break
        axes = rng.uniform(2.0, 5.5, 3)
        blob = _ellipsoid(grid, rng.uniform(axes, np.array(shape) - 1 - axes), axes)
        if np.any(blob & near_tube):
            continue
        img = np.where(blob, img + contrast * rng.uniform(0.5, 1.0), img)
        placed += 1
    img = np.where(tube, 1.0 + contrast + 0.04 * _smooth_noise(rng, shape, 2.0), img)

    # Acquisition: partial-volume blur, bias field, Rician noise, scanner gain.
    img = ndimage.gaussian_filter(img, rng.uniform(0.5, 0.9))
    img *= np.exp(rng.uniform(0.08, 0.2) * _smooth_noise(rng, shape, 12.0))
    sd = rng.uniform(0.04, 0.08)
    img = np.sqrt((img + sd * rng.standard_normal(shape)) ** 2 + (sd * rng.standard_normal(shape)) ** 2)
    image = (rng.uniform(300.0, 700.0) * img).astype(np.float32)
    return image, label


# ------------------------------------------------------------------------------- dataset


def _params(num_cases: int, shape: tuple[int, int, int], seed: int) -> dict:
    return {
        "generator": "mdm_med.data.synthetic_volumes",
        "version": GENERATOR_VERSION,
        "num_cases": int(num_cases),
        "shape": [int(s) for s in shape],
        "seed": int(seed),
    }


def _case(i: int) -> str:
    return f"hippocampus_{i:03d}"


def _expected_files(params: dict) -> list[str]:
    cases = [_case(i) for i in range(1, params["num_cases"] + 1)]
    return ["dataset.json"] + [f"{sub}/{c}.nii.gz" for c in cases for sub in ("imagesTr", "labelsTr")]


def _save_nifti(path: Path, array: np.ndarray) -> None:
    img = nib.Nifti1Image(array, np.eye(4))
    img.header.set_xyzt_units("mm")
    img.set_qform(np.eye(4), code=1)
    img.set_sform(np.eye(4), code=1)
    nib.save(img, str(path))


def _dataset_json(num_cases: int, shape: tuple[int, int, int], seed: int) -> dict:
    cases = [_case(i) for i in range(1, num_cases + 1)]
    return {
        "name": "Hippocampus",
        "description": f"SYNTHETIC hippocampus-like demo volumes (mdm_med {GENERATOR_VERSION}, seed {seed})",
        "tensorImageSize": "3D",
        "reference": "generated by mdm_med.data.synthetic_volumes, not real data",
        "licence": "CC0",
        "modality": {"0": "MRI"},
        "labels": dict(LABELS),
        "numTraining": num_cases,
        "numTest": 0,
        "training": [{"image": f"./imagesTr/{c}.nii.gz", "label": f"./labelsTr/{c}.nii.gz"} for c in cases],
        "test": [],
        "shape": [int(s) for s in shape],
    }


def generate_hippocampus_demo(
    out_dir: str | os.PathLike,
    num_cases: int = 24,
    shape: tuple[int, int, int] = (40, 48, 40),
    seed: int = 0,
) -> Path:
    """Write a synthetic hippocampus set in the Decathlon layout to ``out_dir`` and return its resolved path.

    ``imagesTr/hippocampus_{i:03d}.nii.gz`` (i = 1..num_cases) are float32 (X, Y, Z) = ``shape``,
    ``labelsTr/`` the same names as uint8 0/1/2; both with identity affine (1 mm). Case i is drawn from
    ``SeedSequence(seed, spawn_key=(i,))`` so the files are byte-identical for equal arguments.

    If ``out_dir`` already holds a complete set with the same parameters (``demo.json`` marker), nothing is
    written. Otherwise the set is built in a temporary sibling folder and renamed into place
    (``mdm_med.io.build_folder_atomically``). A non-empty ``out_dir`` is only replaced if it holds an earlier
    set of this generator and nothing else; anything else raises ``FileExistsError``.
    """
    if num_cases < 1:
        raise ValueError(f"num_cases must be >= 1, got {num_cases}")
    if len(shape) != 3 or min(shape) < 24:
        raise ValueError(f"shape must be (X, Y, Z) with all >= 24, got {shape!r}")

    def fill(folder: Path) -> None:
        (folder / "imagesTr").mkdir()
        (folder / "labelsTr").mkdir()
        for i in range(1, num_cases + 1):
            rng = np.random.default_rng(np.random.SeedSequence(int(seed), spawn_key=(i,)))
            image, label = render_volume(rng, shape)
            _save_nifti(folder / "imagesTr" / f"{_case(i)}.nii.gz", image)
            _save_nifti(folder / "labelsTr" / f"{_case(i)}.nii.gz", label)
        (folder / "dataset.json").write_text(json.dumps(_dataset_json(num_cases, shape, seed), indent=2) + "\n")

    params = _params(num_cases, shape, seed)
    return build_folder_atomically(out_dir, params, fill, _expected_files, MARKER_NAME)
