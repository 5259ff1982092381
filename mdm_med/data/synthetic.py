"""Deterministic synthetic H&E-like colon histology data (a small stand-in for GlaS).

The generator paints glands (pale lumen, purple-pink epithelium, a ring of dark basal
nuclei) on a fibrous pink stroma that also holds scattered stromal nuclei, then turns the
stain concentrations into RGB with a Beer-Lambert model. Each image gets its own random
stain variation, blur and noise. The label is the gland region (lumen + epithelium + its
nuclei).

``generate_glas_demo`` writes a folder in the GlaS PNG layout::

    train_1.png, train_1_anno.png, ..., testA_1.png, testA_1_anno.png, ..., demo.json

Images are RGB uint8 of shape (H, W, 3); masks are single-channel uint8 of shape (H, W)
with 0 for background and 255 for gland.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage

from mdm_med.io import build_folder_atomically

__all__ = ["GENERATOR_VERSION", "MARKER_NAME", "generate_glas_demo", "render_sample"]

GENERATOR_VERSION = "glas-demo-1"
MARKER_NAME = "demo.json"

# Split name in the file names -> index mixed into the per-image seed.
_SPLITS = {"train": 0, "testA": 1}

# Optical density per unit stain concentration, channels (R, G, B).
_EOSIN_OD = np.array([0.10, 0.42, 0.22])
_HAEMATOXYLIN_OD = np.array([0.95, 1.20, 0.48])


# --------------------------------------------------------------------------- noise fields


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int], scale: float) -> np.ndarray:
    """Smooth random field of shape (H, W), zero mean, unit std; ``scale`` = feature size in px.

    Blurred white noise on a grid 4x coarser than the image, bilinearly upsampled.
    """
    h, w = shape
    coarse = rng.standard_normal((h // 4 + 3, w // 4 + 3))
    coarse = ndimage.gaussian_filter(coarse, scale / 8.0, mode="wrap")
    field = ndimage.zoom(coarse, 4, order=1, grid_mode=False)[:h, :w]
    field = field - field.mean()
    return field / (field.std() + 1e-8)


def _fibre_texture(rng: np.random.Generator, shape: tuple[int, int]) -> np.ndarray:
    """Wavy collagen-like fibres, shape (H, W), values roughly in [0, 1].

    Noise blurred much more along one axis than the other gives streaks; sampling it at
    rotated, smoothly warped coordinates makes the streaks bend like collagen bundles.
    """
    h, w = shape
    side = int(np.hypot(h, w)) + 24
    streaks = ndimage.gaussian_filter(rng.standard_normal((side, side)), (1.0, rng.uniform(5.0, 10.0)), mode="wrap")
    streaks /= streaks.std() + 1e-8
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    yy -= h / 2.0
    xx -= w / 2.0
    theta = rng.uniform(0.0, np.pi)
    bend = rng.uniform(4.0, 10.0) * _smooth_noise(rng, shape, rng.uniform(30.0, 60.0))
    along = xx * np.cos(theta) + yy * np.sin(theta) + side / 2.0
    across = -xx * np.sin(theta) + yy * np.cos(theta) + bend + side / 2.0
    fibres = ndimage.map_coordinates(streaks, [across, along], order=1, mode="wrap")
    return np.clip(0.5 + 0.3 * fibres, 0.0, 1.0)


# ------------------------------------------------------------------------------- drawing


def _splat_ellipses(
    shape: tuple[int, int],
    centres: np.ndarray,
    semi_axes: np.ndarray,
    angles: np.ndarray,
    values: np.ndarray,
    sharpness: float = 3.0,
) -> np.ndarray:
    """Draw soft-edged filled ellipses, composited with max.

    centres (N, 2) as (y, x); semi_axes (N, 2) as (along angle, across); angles (N,) in
    radians measured from the x axis; values (N,) peak value. Returns (H, W) float.
    """
    h, w = shape
    out = np.zeros(shape, dtype=np.float64)
    if len(centres) == 0:
        return out
    k = int(np.ceil(semi_axes.max())) + 1
    off = np.arange(-k, k + 1)
    oy, ox = np.meshgrid(off, off, indexing="ij")  # (S, S)
    base = np.round(centres).astype(np.int64)  # (N, 2)
    py = base[:, 0, None, None] + oy  # (N, S, S)
    px = base[:, 1, None, None] + ox
    dy = py - centres[:, 0, None, None]
    dx = px - centres[:, 1, None, None]
    cos, sin = np.cos(angles)[:, None, None], np.sin(angles)[:, None, None]
    u = (dx * cos + dy * sin) / semi_axes[:, 0, None, None]
    v = (-dx * sin + dy * cos) / semi_axes[:, 1, None, None]
    val = values[:, None, None] * np.clip((1.0 - (u * u + v * v)) * sharpness, 0.0, 1.0)
    keep = (val > 0) & (py >= 0) & (py < h) & (px >= 0) & (px < w)
    np.maximum.at(out, (py[keep], px[keep]), val[keep])
    return out


def _radial_profile(rng: np.random.Generator, n_harmonics: int, strength: float):
    """Random smooth periodic function r(phi) = 1 + sum_k a_k cos(k phi + p_k).

    Returned as a callable that evaluates a 512-entry lookup table (fast on (H, W) arrays).
    """
    ks = np.arange(2, 2 + n_harmonics)
    amps = strength * rng.uniform(0.3, 1.0, n_harmonics) / ks
    phases = rng.uniform(0.0, 2.0 * np.pi, n_harmonics)
    grid = np.linspace(-np.pi, np.pi, 513)
    table = 1.0 + np.cos(ks * grid[:, None] + phases) @ amps

    def profile(phi: np.ndarray) -> np.ndarray:
        return np.interp(phi, grid, table, period=2.0 * np.pi)

    return profile


class _Gland:
    """One gland: a perturbed, rotated ellipse with a lumen of the same shape inside."""

    def __init__(self, rng: np.random.Generator, shape: tuple[int, int]):
        h, w = shape
        side = min(h, w)
        self.cy = rng.uniform(-0.08, 1.08) * h
        self.cx = rng.uniform(-0.08, 1.08) * w
        radius = side * rng.uniform(0.12, 0.30)
        elong = rng.uniform(1.0, 1.9)
        self.a, self.b = radius * np.sqrt(elong), radius / np.sqrt(elong)
        self.theta = rng.uniform(0.0, np.pi)
        self.outer = _radial_profile(rng, 4, rng.uniform(0.15, 0.45))
        # Epithelium thickness (px) sets the lumen fraction; a few glands have a slit lumen.
        self.radius = float(np.sqrt(self.a * self.b))
        self.thickness = rng.uniform(13.0, 22.0)
        self.lumen_frac = float(np.clip(1.0 - self.thickness / self.radius, 0.1, 0.7))
        if rng.random() < 0.15:
            self.lumen_frac *= 0.5
        self.inner = _radial_profile(rng, 3, 0.25)
        self.reach = max(self.a, self.b) * float(self.outer(np.linspace(-np.pi, np.pi, 257)).max())

    def window(self, shape: tuple[int, int], margin: float = 1.3) -> tuple[slice, slice]:
        """Slices (rows, cols) of the image box holding every point with d <= margin (may be empty)."""
        r = margin * self.reach + 2.0
        y0, y1 = int(np.clip(self.cy - r, 0, shape[0])), int(np.clip(np.ceil(self.cy + r), 0, shape[0]))
        x0, x1 = int(np.clip(self.cx - r, 0, shape[1])), int(np.clip(np.ceil(self.cx + r), 0, shape[1]))
        return slice(y0, y1), slice(x0, x1)

    def _local(self, y: np.ndarray, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Elliptic radius and angle of points (any shape) in the gland frame."""
        dy, dx = y - self.cy, x - self.cx
        c, s = np.cos(self.theta), np.sin(self.theta)
        u = (dx * c + dy * s) / self.a
        v = (-dx * s + dy * c) / self.b
        return np.hypot(u, v), np.arctan2(v, u)

    def fields(self, yy: np.ndarray, xx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Normalised radius d (1 on the gland border) and lumen mask, same shape as yy, xx."""
        rho, phi = self._local(yy, xx)
        d = rho / self.outer(phi)
        lumen = d < self.lumen_frac * self.inner(phi)
        return d, lumen

    def point(self, phi: np.ndarray, t: np.ndarray | float) -> np.ndarray:
        """Image (y, x) of the point at angle phi and fraction t of the border radius, shape (N, 2)."""
        r = t * self.outer(phi)
        u, v = r * np.cos(phi) * self.a, r * np.sin(phi) * self.b
        c, s = np.cos(self.theta), np.sin(self.theta)
        return np.stack([self.cy + u * s + v * c, self.cx + u * c - v * s], axis=-1)


def _ring_positions(rng: np.random.Generator, gland: _Gland, spacing: float, depth: tuple[float, float]):
    """Jittered positions along a ring ``depth`` px (min, max) inside the gland border.

    Returns centres (N, 2) as (y, x) and the angles (N,) of the inward normals.
    """
    phi = np.linspace(0.0, 2.0 * np.pi, 721)
    border = gland.point(phi, 1.0)
    seg = np.hypot(*np.diff(border, axis=0).T)
    arclen = np.concatenate([[0.0], np.cumsum(seg)])
    n = max(int(arclen[-1] / spacing), 6)
    s = (np.arange(n) + rng.uniform(-0.25, 0.25, n) + rng.random()) * arclen[-1] / n
    phi_n = np.interp(np.mod(s, arclen[-1]), arclen, phi)
    t = np.clip(1.0 - rng.uniform(*depth, n) / gland.radius, 0.05, 1.0)
    centres = gland.point(phi_n, t)
    towards_centre = np.array([gland.cy, gland.cx]) - centres
    normal = np.arctan2(towards_centre[:, 0], towards_centre[:, 1])
    return centres, normal


# -------------------------------------------------------------------------------- sample


def _stain_to_rgb(rng: np.random.Generator, e_map: np.ndarray, h_map: np.ndarray, white_min: float,
                 blur: tuple[float, float], noise_sd: float) -> np.ndarray:
    """Eosin and haematoxylin concentration maps (H, W) -> RGB uint8 (H, W, 3).

    Per-image stain variation, Beer-Lambert colour with a random white level in [white_min, 255], a Gaussian
    blur of random sigma in ``blur`` (min, max) and Gaussian noise of std ``noise_sd``.
    """
    shape = e_map.shape
    e_vec = _EOSIN_OD * rng.uniform(0.85, 1.15) * (1.0 + rng.normal(0.0, 0.06, 3))
    h_vec = _HAEMATOXYLIN_OD * rng.uniform(0.85, 1.15) * (1.0 + rng.normal(0.0, 0.06, 3))
    e_map = np.clip(e_map + 0.04 * rng.standard_normal(shape), 0.0, None)
    h_map = np.clip(h_map + 0.02 * rng.standard_normal(shape), 0.0, None)
    od = e_map[..., None] * e_vec + h_map[..., None] * h_vec
    rgb = rng.uniform(white_min, 255.0) * np.exp(-od)
    sigma = rng.uniform(*blur)
    rgb = ndimage.gaussian_filter(rgb, (sigma, sigma, 0.0))
    rgb += rng.normal(0.0, noise_sd, rgb.shape)
    return np.clip(np.round(rgb), 0, 255).astype(np.uint8)



def render_sample(rng: np.random.Generator, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Render one synthetic H&E image and its gland mask.

    Args:
        rng: random generator; the output depends only on its state.
        size: (H, W) of the image.

    Returns:
        image (H, W, 3) uint8 RGB and mask (H, W) uint8 with 0 background / 255 gland.
    """
    h, w = int(size[0]), int(size[1])
    shape = (h, w)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)

    # ---- place glands: rejection sampling so they touch at most a little. Keep adding
    # (up to 8) until both the drawn count and a minimum gland area are reached.
    n_target = int(rng.integers(2, 7))
    covered = 0
    dmin = np.full(shape, np.inf)  # normalised radius of the nearest gland
    lumen = np.zeros(shape, dtype=bool)
    glands: list[_Gland] = []
    for _ in range(80):
        if len(glands) >= 8 or (len(glands) >= n_target and covered >= 0.12 * h * w):
            break
        g = _Gland(rng, shape)
        win = g.window(shape)  # fields are only computed in the gland's bounding box
        d, lum = g.fields(yy[win], xx[win])
        inside = d <= 1.0
        area = np.count_nonzero(inside)
        # Keep glands that are mostly visible or clearly cut by the border, not slivers,
        # and that overlap the glands already placed only a little.
        if area < 0.01 * h * w or np.count_nonzero(inside & (dmin[win] <= 1.08)) > 0.03 * area:
            continue
        closer = d < dmin[win]
        dmin[win] = np.where(closer, d, dmin[win])
        lumen[win] = np.where(closer, lum, lumen[win])
        glands.append(g)
        covered += area
    gland = dmin <= 1.0
    lumen &= gland
    epithelium = gland & ~lumen

    # ---- nuclei and goblet cells along each gland.
    centres, axes, angles, values = [], [], [], []
    gob_c, gob_ax, gob_ang = [], [], []
    for g in glands:
        spacing = rng.uniform(3.8, 5.2)
        basal = rng.uniform(3.0, 5.0)
        c, normal = _ring_positions(rng, g, spacing, (basal, basal + 3.5))
        n = len(c)
        centres.append(c)
        axes.append(np.stack([rng.uniform(3.0, 5.5, n), rng.uniform(1.6, 2.6, n)], axis=1))
        angles.append(normal + rng.normal(0.0, 0.25, n))
        values.append(rng.uniform(0.7, 1.2, n))
        # Goblet cells (pale mucin vacuoles) between the nuclei and the lumen.
        c, normal = _ring_positions(rng, g, rng.uniform(9.0, 18.0), (0.55 * g.thickness, 0.8 * g.thickness))
        keep = rng.random(len(c)) < 0.6
        gob_c.append(c[keep])
        gob_ax.append(np.stack([rng.uniform(2.5, 4.0, keep.sum()), rng.uniform(2.0, 3.0, keep.sum())], axis=1))
        gob_ang.append(normal[keep])
    gland_nuclei = np.zeros(shape)
    goblet = np.zeros(shape)
    if glands:
        gland_nuclei = _splat_ellipses(
            shape, np.concatenate(centres), np.concatenate(axes), np.concatenate(angles), np.concatenate(values)
        )
        goblet = _splat_ellipses(
            shape,
            np.concatenate(gob_c),
            np.concatenate(gob_ax),
            np.concatenate(gob_ang),
            rng.uniform(0.5, 1.0, sum(map(len, gob_c))),
            sharpness=1.5,
        )
        goblet *= epithelium

    # Stromal nuclei: spindle fibroblasts and round lymphocytes, kept away from glands.
    n_stromal = int(rng.integers(20, 45) * h * w / (192 * 256))
    cand = rng.uniform((0.0, 0.0), (h, w), size=(3 * n_stromal + 10, 2))
    ci = np.clip(cand.astype(np.int64), 0, [h - 1, w - 1])
    cand = cand[dmin[ci[:, 0], ci[:, 1]] > 1.25][:n_stromal]
    n = len(cand)
    round_ = rng.random(n) < 0.45
    long_ax = np.where(round_, rng.uniform(2.0, 3.0, n), rng.uniform(4.0, 7.0, n))
    short_ax = np.where(round_, long_ax * rng.uniform(0.8, 1.0, n), rng.uniform(1.3, 2.0, n))
    stromal_nuclei = _splat_ellipses(
        shape, cand, np.stack([long_ax, short_ax], axis=1), rng.uniform(0.0, np.pi, n), rng.uniform(0.8, 1.25, n)
    )
    stromal_nuclei *= ~gland

    mask = gland | (gland_nuclei > 0.5)

    # ---- stain concentration maps (E = eosin, H = haematoxylin), each (H, W).
    fibres = _fibre_texture(rng, shape)
    density = _smooth_noise(rng, shape, rng.uniform(20.0, 40.0))
    loose = np.clip((_smooth_noise(rng, shape, rng.uniform(15.0, 30.0)) - 0.9) * 1.5, 0.0, 0.8)
    e_stroma = rng.uniform(0.9, 1.15) * (0.5 + 0.7 * fibres) * (1.0 + 0.15 * density) * (1.0 - loose)
    h_stroma = rng.uniform(0.02, 0.08) * np.clip(1.0 + 0.6 * density, 0.2, None)

    epi_var = _smooth_noise(rng, shape, 12.0)
    e_epi = rng.uniform(0.75, 1.0) * (1.0 + 0.12 * epi_var)
    h_epi = rng.uniform(0.08, 0.18) * (1.0 + 0.2 * epi_var)
    debris = np.clip(_smooth_noise(rng, shape, 6.0) - 1.0, 0.0, None)
    e_lumen = rng.uniform(0.03, 0.12) + 0.25 * debris
    h_lumen = 0.02 + 0.05 * debris

    e_map = np.where(lumen, e_lumen, np.where(epithelium, e_epi, e_stroma))
    h_map = np.where(lumen, h_lumen, np.where(epithelium, h_epi, h_stroma))
    # Soften region borders a little, then add mucin vacuoles and nuclei on top.
    e_map = ndimage.gaussian_filter(e_map, 1.0)
    h_map = ndimage.gaussian_filter(h_map, 1.0)
    e_map *= 1.0 - 0.7 * goblet
    h_map *= 1.0 - 0.6 * goblet
    chromatin = 1.0 + 0.15 * rng.standard_normal(shape)
    nuclei = np.maximum(gland_nuclei, stromal_nuclei) * chromatin
    h_map = h_map + nuclei * (1.0 - np.clip(h_map, 0.0, 1.0))
    e_map = e_map * (1.0 - 0.5 * np.clip(nuclei, 0.0, 1.0)) + 0.25 * nuclei

    # ---- per-image stain variation, Beer-Lambert colour, blur and noise.
    image = _stain_to_rgb(rng, e_map, h_map, white_min=240.0, blur=(0.5, 1.1), noise_sd=2.5)
    return image, np.where(mask, 255, 0).astype(np.uint8)


# ------------------------------------------------------------------------------- dataset


def _params(num_train: int, num_test: int, size: tuple[int, int], seed: int) -> dict:
    return {
        "generator": "mdm_med.data.synthetic",
        "version": GENERATOR_VERSION,
        "num_train": int(num_train),
        "num_test": int(num_test),
        "size": [int(size[0]), int(size[1])],
        "seed": int(seed),
    }


def _expected_files(params: dict) -> list[str]:
    names = []
    for split, count in (("train", params["num_train"]), ("testA", params["num_test"])):
        for i in range(1, count + 1):
            names += [f"{split}_{i}.png", f"{split}_{i}_anno.png"]
    return names


def _write_png(path: Path, array: np.ndarray, mode: str) -> None:
    Image.fromarray(array, mode=mode).save(path, format="PNG")


def generate_glas_demo(
    out_dir: str | os.PathLike,
    num_train: int = 48,
    num_test: int = 16,
    size: tuple[int, int] = (192, 256),
    seed: int = 0,
) -> Path:
    """Write a synthetic GlaS-style dataset to ``out_dir`` and return its resolved path.

    Images ``{split}_{i}.png`` are RGB uint8 (H, W, 3) with (H, W) = ``size``; masks
    ``{split}_{i}_anno.png`` are 8-bit grey (H, W), 0 background / 255 gland; split is
    ``train`` (1..num_train) or ``testA`` (1..num_test). Image i of a split is drawn from
    ``SeedSequence(seed, spawn_key=(split_index, i))`` so the output is byte-identical for
    equal arguments and the splits are independent.

    If ``out_dir`` already holds a complete dataset with the same parameters (``demo.json``
    marker), nothing is written. Otherwise the dataset is built in a temporary sibling folder
    and renamed into place (``mdm_med.io.build_folder_atomically``). A non-empty ``out_dir``
    is only replaced if it holds an earlier demo set of this generator and nothing else;
    anything else raises ``FileExistsError``.
    """
    if num_train < 0 or num_test < 0:
        raise ValueError("num_train and num_test must be >= 0")
    if len(size) != 2 or min(size) < 16:
        raise ValueError(f"size must be (height, width) with both >= 16, got {size!r}")

    def fill(folder: Path) -> None:
        for split, count in (("train", num_train), ("testA", num_test)):
            for i in range(1, count + 1):
                rng = np.random.default_rng(np.random.SeedSequence(int(seed), spawn_key=(_SPLITS[split], i)))
                image, mask = render_sample(rng, size)
                _write_png(folder / f"{split}_{i}.png", image, "RGB")
                _write_png(folder / f"{split}_{i}_anno.png", mask, "L")

    params = _params(num_train, num_test, size, seed)
    return build_folder_atomically(out_dir, params, fill, _expected_files, MARKER_NAME)
