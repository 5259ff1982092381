"""Standalone copies of the mdm_* bundles.

In this repository the bundles share one recipe (``bundles/recipe/``) through MONAI macros
(``"%bundles/recipe/train.json#pretrain"``), which MONAI resolves from the current directory, so they run from the
repository root. ``export_bundle`` writes a self-contained copy (every config with its macros replaced by their
content; references and expressions untouched) for the model zoo, MONAI Label or another machine:

    python -m mdm_med.bundle export --bundle bundles/mdm_glas --out dist/mdm_glas
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
from collections.abc import Sequence
from pathlib import Path

from mdm_med.io import atomic_write, fill_folder_atomically

__all__ = ["REPO_ROOT", "resolved_config", "export_bundle", "main"]

REPO_ROOT = Path(__file__).resolve().parents[1]
BUNDLE_PARTS = ("configs", "models", "docs", "LICENSE")  # runs/ and eval/ stay behind


def resolved_config(path: str | os.PathLike, repo_root: str | os.PathLike = REPO_ROOT) -> dict:
    """The config at ``path`` with its macros (``%file#id``, relative to ``repo_root``) replaced by their content."""
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    path = Path(path).resolve()
    with contextlib.chdir(repo_root):
        parser.read_config(str(path))
        parser.resolve_macro_and_relative_ids()
    return parser.get()


def export_bundle(bundle: str | os.PathLike, out: str | os.PathLike, repo_root: str | os.PathLike = REPO_ROOT,
                  parts: Sequence[str] = BUNDLE_PARTS) -> Path:
    """Copy ``parts`` of ``bundle`` to ``out``, writing every ``configs/*.json`` resolved (links followed), with
    ``bundle_root`` set to ``"."`` (MONAI's convention: run from the copy's folder, or pass ``--bundle_root``; the
    repository's ``locate_bundle`` would find the repository's own bundle first). Returns ``out``.
    ``configs/metadata.json`` must exist. The copy is built beside ``out`` and swapped in whole; an existing
    ``out`` is replaced only when it is empty or an earlier export (nothing but bundle parts, no ``runs/``)."""
    src, dst = Path(bundle).resolve(), Path(out).resolve()
    if not (src / "configs" / "metadata.json").is_file():
        raise FileNotFoundError(f"{src} is not a bundle in the configs/ layout: configs/metadata.json is missing")
    _check_export_target(src, dst)

    def fill(tmp: Path) -> None:
        for part in parts:
            s = src / part
            if s.is_dir():
                shutil.copytree(s, tmp / part, ignore=shutil.ignore_patterns("__pycache__", ".tmp_*"))
            elif s.is_file():
                shutil.copy2(s, tmp / part)
        for cfg in sorted((src / "configs").glob("*.json")):
            config = resolved_config(cfg, repo_root)
            if isinstance(config, dict) and "bundle_root" in config:
                config["bundle_root"] = "."
            text = json.dumps(config, indent=4) + "\n"
            target = tmp / "configs" / cfg.name
            target.unlink(missing_ok=True)  # a copied link would write through to the recipe
            atomic_write(target, lambda path, t=text: Path(path).write_text(t))

    return fill_folder_atomically(dst, fill)


def _check_export_target(src: Path, dst: Path) -> None:
    """Raise unless ``dst`` is outside ``src`` (and does not contain it) and is missing, empty or an earlier export."""
    if dst == src or dst in src.parents or src in dst.parents:
        raise ValueError(f"cannot export {src} to {dst}: the output folder must be outside the bundle and must not "
                         "contain it")
    if not dst.exists():
        return
    if not dst.is_dir():
        raise FileExistsError(f"{dst} exists and is not a folder; not replacing it")
    entries = {p.name for p in dst.iterdir()}
    foreign = sorted(entries - set(BUNDLE_PARTS))
    if entries and (foreign or not (dst / "configs" / "metadata.json").is_file()):
        what = f"holds {foreign[0]!r}" if foreign else "has no configs/metadata.json"
        raise FileExistsError(f"{dst} is not empty and is not an earlier export (it {what}); not replacing it: "
                              "export into a new or empty folder")


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m mdm_med.bundle", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    e = sub.add_parser("export", help="write a self-contained copy of a bundle (macros resolved)")
    e.add_argument("--bundle", required=True, help="bundle folder, e.g. bundles/mdm_glas")
    e.add_argument("--out", required=True, help="output folder (replaced only when empty or an earlier export)")
    args = p.parse_args(argv)
    out = export_bundle(args.bundle, args.out)
    print(f"standalone bundle written to {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
