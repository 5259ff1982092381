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

from mdm_med.io import atomic_write

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
    """Copy ``parts`` of ``bundle`` to ``out`` (replaced if it exists), writing every ``configs/*.json`` resolved
    (links followed). Returns ``out``. ``configs/metadata.json`` must exist."""
    src, dst = Path(bundle).resolve(), Path(out).resolve()
    if not (src / "configs" / "metadata.json").is_file():
        raise FileNotFoundError(f"{src} is not a bundle in the configs/ layout: configs/metadata.json is missing")
    if dst.exists():
        shutil.rmtree(dst)
    dst.mkdir(parents=True)
    for part in parts:
        s = src / part
        if s.is_dir():
            shutil.copytree(s, dst / part, ignore=shutil.ignore_patterns("__pycache__", ".tmp_*"))
        elif s.is_file():
            shutil.copy2(s, dst / part)
    for cfg in sorted((src / "configs").glob("*.json")):
        text = json.dumps(resolved_config(cfg, repo_root), indent=4) + "\n"
        target = dst / "configs" / cfg.name
        target.unlink(missing_ok=True)  # a copied link would write through to the recipe
        atomic_write(target, lambda tmp, t=text: Path(tmp).write_text(t))
    return dst


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m mdm_med.bundle", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    e = sub.add_parser("export", help="write a self-contained copy of a bundle (macros resolved)")
    e.add_argument("--bundle", required=True, help="bundle folder, e.g. bundles/mdm_glas")
    e.add_argument("--out", required=True, help="output folder (replaced)")
    args = p.parse_args(argv)
    out = export_bundle(args.bundle, args.out)
    print(f"standalone bundle written to {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
