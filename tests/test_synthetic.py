"""Tests for the synthetic GlaS-like demo data generator (mdm_med.data.synthetic)."""

import json

import numpy as np
import pytest
from PIL import Image

from mdm_med.data import synthetic
from mdm_med.data.synthetic import MARKER_NAME, generate_glas_demo, render_sample
from mdm_med.io import build_folder_atomically

SIZE = (64, 96)  # (H, W), small to keep the tests fast
SMALL = {"num_train": 3, "num_test": 2, "size": SIZE}


def _expected_names(num_train, num_test):
    names = {MARKER_NAME}
    for split, count in (("train", num_train), ("testA", num_test)):
        for i in range(1, count + 1):
            names |= {f"{split}_{i}.png", f"{split}_{i}_anno.png"}
    return names


def _read_all(folder):
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory):
    return generate_glas_demo(tmp_path_factory.mktemp("demo") / "glas", seed=3, **SMALL)


def test_layout_shapes_and_modes(demo_dir):
    assert {p.name for p in demo_dir.iterdir()} == _expected_names(3, 2)
    # Only the finished folder is left next to it (no temporary folders).
    assert [p.name for p in demo_dir.parent.iterdir()] == ["glas"]
    for name in _expected_names(3, 2) - {MARKER_NAME}:
        with Image.open(demo_dir / name) as im:
            assert im.format == "PNG"
            assert im.size == (SIZE[1], SIZE[0])
            arr = np.asarray(im)
            assert arr.dtype == np.uint8
            if name.endswith("_anno.png"):
                assert im.mode == "L" and arr.shape == SIZE
                assert set(np.unique(arr)) == {0, 255}
                assert 0.10 <= (arr == 255).mean() <= 0.70
            else:
                assert im.mode == "RGB" and arr.shape == (*SIZE, 3)
    marker = json.loads((demo_dir / MARKER_NAME).read_text())
    assert marker["num_train"] == 3 and marker["num_test"] == 2
    assert marker["size"] == list(SIZE) and marker["seed"] == 3 and marker["version"]


def test_render_sample_shapes_and_determinism():
    image, mask = render_sample(np.random.default_rng(7), (40, 56))
    assert image.shape == (40, 56, 3) and image.dtype == np.uint8
    assert mask.shape == (40, 56) and mask.dtype == np.uint8
    assert set(np.unique(mask)) <= {0, 255}
    image2, mask2 = render_sample(np.random.default_rng(7), (40, 56))
    assert np.array_equal(image, image2) and np.array_equal(mask, mask2)


def test_deterministic_bytes(tmp_path, demo_dir):
    again = generate_glas_demo(tmp_path / "other", seed=3, **SMALL)
    assert _read_all(again) == _read_all(demo_dir)


def test_splits_and_seeds_differ(tmp_path, demo_dir):
    files = _read_all(demo_dir)
    assert files["train_1.png"] != files["testA_1.png"]
    assert files["train_1.png"] != files["train_2.png"]
    other = _read_all(generate_glas_demo(tmp_path / "seed4", seed=4, **SMALL))
    for name in _expected_names(3, 2) - {MARKER_NAME}:
        assert other[name] != files[name], name


def test_second_call_does_not_rewrite(tmp_path):
    out = generate_glas_demo(tmp_path / "glas", seed=0, **SMALL)
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    inode = out.stat().st_ino
    assert generate_glas_demo(tmp_path / "glas", seed=0, **SMALL) == out
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before
    assert out.stat().st_ino == inode


def test_regenerates_when_marker_missing_or_different(tmp_path):
    out = generate_glas_demo(tmp_path / "glas", seed=0, **SMALL)
    reference = _read_all(out)

    # A stale file with an intact marker -> rebuilt completely.
    (out / "train_1.png").write_bytes(b"partial")
    generate_glas_demo(out, seed=1, **SMALL)
    generate_glas_demo(out, seed=0, **SMALL)
    assert _read_all(out) == reference

    # Different parameters -> replaced by the new dataset (old extra files disappear).
    generate_glas_demo(out, seed=0, num_train=1, num_test=1, size=SIZE)
    assert {p.name for p in out.iterdir()} == _expected_names(1, 1)
    assert json.loads((out / MARKER_NAME).read_text())["num_train"] == 1

    # A missing image with an intact marker also triggers regeneration.
    (out / "testA_1_anno.png").unlink()
    generate_glas_demo(out, seed=0, num_train=1, num_test=1, size=SIZE)
    assert (out / "testA_1_anno.png").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["glas"]


def test_interrupted_run_leaves_nothing_half_written(tmp_path, monkeypatch):
    out = generate_glas_demo(tmp_path / "glas", seed=0, **SMALL)
    reference = _read_all(out)
    real_render, calls = synthetic.render_sample, []

    def failing_render(rng, size):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real_render(rng, size)

    monkeypatch.setattr(synthetic, "render_sample", failing_render)
    # Fresh folder: nothing appears.
    with pytest.raises(KeyboardInterrupt):
        generate_glas_demo(tmp_path / "fresh", seed=0, **SMALL)
    # Regenerating over an existing dataset (new seed): the old one stays intact.
    calls.clear()
    with pytest.raises(KeyboardInterrupt):
        generate_glas_demo(out, seed=1, **SMALL)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["glas"]
    assert _read_all(out) == reference


def test_refuses_to_replace_unrelated_folder(tmp_path):
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError):
        generate_glas_demo(folder, **SMALL)
    assert (folder / "notes.txt").read_text() == "keep me"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine"]


def test_refuses_folder_without_marker(tmp_path):
    # GlaS-style files but no demo.json: may be a real download, so it is never replaced.
    out = generate_glas_demo(tmp_path / "glas", seed=0, **SMALL)
    (out / MARKER_NAME).unlink()
    reference = _read_all(out)
    with pytest.raises(FileExistsError, match="demo.json"):
        generate_glas_demo(out, seed=0, **SMALL)
    assert _read_all(out) == reference


def test_build_folder_atomically(tmp_path):
    calls = []

    def fill(folder):
        calls.append(folder)
        for name in files(params):
            (folder / name).parent.mkdir(parents=True, exist_ok=True)
            (folder / name).write_text(str(params["n"]))

    def files(p):
        return ["a.txt"] + [f"sub/{i}.txt" for i in range(p["n"])]

    out, params = tmp_path / "out", {"generator": "test", "n": 2}
    assert build_folder_atomically(out, params, fill, files) == out.resolve()
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*")) == [
        "a.txt", "demo.json", "sub", "sub/0.txt", "sub/1.txt"]
    assert json.loads((out / "demo.json").read_text()) == params
    build_folder_atomically(out, params, fill, files)
    assert len(calls) == 1  # complete with equal params: reused
    params = {"generator": "test", "n": 1}
    build_folder_atomically(out, params, fill, files)
    assert len(calls) == 2 and not (out / "sub" / "1.txt").exists() and (out / "a.txt").read_text() == "1"

    def failing(folder):
        (folder / "a.txt").write_text("half")
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        build_folder_atomically(tmp_path / "fresh", params, failing, files)
    with pytest.raises(RuntimeError, match="boom"):
        build_folder_atomically(out, {"generator": "test", "n": 5}, failing, files)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no temporary folders left
    assert (out / "a.txt").read_text() == "1"  # the old set is intact

    (out / "sub" / "notes.txt").write_text("mine")  # a foreign file beside a valid marker
    with pytest.raises(FileExistsError, match="notes.txt"):
        build_folder_atomically(out, {"generator": "test", "n": 3}, fill, files)
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "a.txt").write_text("keep me")  # no marker: user data
    with pytest.raises(FileExistsError):
        build_folder_atomically(mine, params, fill, ["a.txt"])
    assert (mine / "a.txt").read_text() == "keep me"


def test_invalid_arguments(tmp_path):
    with pytest.raises(ValueError):
        generate_glas_demo(tmp_path / "x", size=(8, 8))
    with pytest.raises(ValueError):
        generate_glas_demo(tmp_path / "x", num_train=-1)


def _best_threshold_dice(values, target):
    """Best Dice of ``values < t`` or ``values >= t`` against ``target`` over all thresholds t."""
    counts_pos = np.bincount(values[target], minlength=257)
    counts_all = np.bincount(values.ravel(), minlength=257)
    below_pos = np.concatenate([[0], np.cumsum(counts_pos)])  # pixels < t that are gland
    below_all = np.concatenate([[0], np.cumsum(counts_all)])
    n_pos, n_all = target.sum(), values.size
    dice_below = 2 * below_pos / (below_all + n_pos)
    dice_above = 2 * (n_pos - below_pos) / (n_all - below_all + n_pos)
    return max(dice_below.max(), dice_above.max())


def test_glands_not_trivially_separable_by_colour():
    images, masks = zip(*(render_sample(np.random.default_rng(100 + i), (128, 160)) for i in range(4)), strict=True)
    pixels = np.concatenate([im.reshape(-1, 3) for im in images])
    gland = np.concatenate([m.ravel() for m in masks]) == 255
    # Colour differs on average...
    assert np.abs(pixels[gland].mean(0) - pixels[~gland].mean(0)).max() > 10
    # ...but no single-channel threshold (either direction) segments the glands well.
    for channel in range(3):
        assert _best_threshold_dice(pixels[:, channel], gland) < 0.9
    grey = pixels.astype(np.float64).mean(1).round().astype(np.int64)
    assert _best_threshold_dice(grey, gland) < 0.9
