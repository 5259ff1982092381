"""Serve an mdm_med bundle with MONAI Label's own server and its stock ``monaibundle`` app, offline.

    python -m mdm_med.label serve --bundle bundles/mdm_glas --studies /path/to/images [--port 8000]

What it does, so that nothing here replaces MONAI Label code:

1. finds the ``monaibundle`` sample app that the ``monailabel`` package installs (``<prefix>/monailabel/sample-apps``),
   copies it to ``--app_dir`` (default ``~/.cache/mdm_med/label/<bundle name>``);
2. writes a self-contained copy of the bundle (``mdm_med.bundle.export_bundle``: ``configs/`` with the shared
   recipe's macros resolved, ``models/``, ``docs/``, ``LICENSE``; not ``runs/`` or ``eval/``) to
   ``<app>/model/<bundle name>/``, where the app looks for local bundles; ``models/model.pt`` must exist (train first);
3. replaces this process with ``python -m monailabel.main start_server`` on ``--host`` (127.0.0.1 by default) with
   ``--conf models <name> --conf zoo_source local --conf sam2 false`` (no downloads) and the repository root on
   ``PYTHONPATH`` so the bundle configs can import ``mdm_med``.

MONAI Label needs its own environment (``requirements-label.txt``, venv ``.venv-label``); it writes label and
cache files into the studies folder and ``$HOME/.cache``. ``OMP_NUM_THREADS`` defaults to 1 (on small CPU
machines more threads make single requests stall for seconds).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path

from mdm_med.bundle import export_bundle

__all__ = ["find_sample_app", "prepare_app", "server_command", "serve", "main"]

logger = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[1]


def find_sample_app(name: str = "monaibundle") -> Path:
    """The stock MONAI Label sample app ``name`` shipped with the installed ``monailabel`` package.

    The wheel installs its sample apps as data files under ``<sys.prefix>/monailabel/sample-apps``; a source
    checkout keeps them beside the package. Raises ``FileNotFoundError`` naming every place looked at.
    """
    try:
        import monailabel
    except ImportError as e:
        raise ImportError("monailabel is not installed in this environment; create the label venv: "
                          "python3 -m venv .venv-label && .venv-label/bin/pip install -r requirements-label.txt") from e
    pkg = Path(monailabel.__file__).resolve().parent
    candidates = [Path(p) / "monailabel" / "sample-apps" / name for p in dict.fromkeys((sys.prefix, sys.base_prefix))]
    candidates += [pkg.parent / "sample-apps" / name, pkg / "sample-apps" / name]
    for c in candidates:
        if (c / "main.py").is_file():
            return c
    raise FileNotFoundError(f"MONAI Label sample app {name!r} not found; looked in: {[str(c) for c in candidates]}")


def _bundle_name(bundle: Path) -> str:
    return bundle.resolve().name


def check_bundle(bundle: str | os.PathLike) -> Path:
    """``bundle`` as a resolved path after checking it is a servable bundle (clear errors otherwise)."""
    path = Path(bundle).resolve()
    for required in ("configs/metadata.json", "configs/inference.json"):
        if not (path / required).is_file():
            raise FileNotFoundError(f"{path} is not a MONAI bundle in the configs/ layout: {required} is missing")
    model = path / "models" / "model.pt"
    if not model.is_file():
        raise FileNotFoundError(
            f"{model} does not exist: train the bundle first "
            f"(python -m monai.bundle run --config_file {path}/configs/train.json)")
    if not (path / "models" / "model_settings.json").is_file():
        raise FileNotFoundError(f"{path / 'models' / 'model_settings.json'} does not exist: inference rebuilds the "
                                "model from it; publish the model by training the bundle (publish=true)")
    return path


def prepare_app(bundle: str | os.PathLike, app_dir: str | os.PathLike | None = None,
                sample_app: str | os.PathLike | None = None) -> tuple[Path, str]:
    """Lay out a MONAI Label app serving ``bundle``: a copy of the stock ``monaibundle`` app with the bundle copied
    to ``<app>/model/<name>``. Returns ``(app_dir, name)``. The bundle copy is refreshed on every call."""
    src = check_bundle(bundle)
    name = _bundle_name(src)
    app = Path(app_dir) if app_dir else Path.home() / ".cache" / "mdm_med" / "label" / name
    app = app.resolve()
    stock = Path(sample_app) if sample_app else find_sample_app("monaibundle")
    if not (app / "main.py").is_file():
        app.parent.mkdir(parents=True, exist_ok=True)
        shutil.copytree(stock, app, ignore=shutil.ignore_patterns("__pycache__", "logs", "model"), dirs_exist_ok=True)
    dst = app / "model" / name
    if dst.is_symlink() or dst.is_file():
        dst.unlink()
    export_bundle(src, dst)  # self-contained: the shared recipe's macros are resolved into the copy
    logger.info("MONAI Label app %s serves bundle %s (copied from %s)", app, name, src)
    return app, name


def server_command(app: str | os.PathLike, studies: str | os.PathLike, name: str, host: str = "127.0.0.1",
                   port: int = 8000, conf: Sequence[tuple[str, str]] = ()) -> list[str]:
    """The stock ``monailabel start_server`` command line for a local, offline bundle app."""
    cmd = [sys.executable, "-m", "monailabel.main", "start_server", "--app", str(app), "--studies", str(studies),
           "--host", host, "--port", str(int(port))]
    settings = {"models": name, "zoo_source": "local", "sam2": "false", **dict(conf)}
    for key, value in settings.items():
        cmd += ["--conf", key, str(value)]
    return cmd


def server_env(base: dict | None = None) -> dict:
    """Environment for the server: the repository root on ``PYTHONPATH`` (bundle configs import ``mdm_med``),
    ``OMP_NUM_THREADS=1`` unless set."""
    env = dict(os.environ if base is None else base)
    paths = [str(REPO_ROOT)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


def serve(bundle: str, studies: str, port: int = 8000, host: str = "127.0.0.1", app_dir: str | None = None,
          conf: Sequence[tuple[str, str]] = (), dry_run: bool = False) -> list[str]:
    """Prepare the app and replace this process with the MONAI Label server (``dry_run``: print the command)."""
    app, name = prepare_app(bundle, app_dir)
    studies_path = Path(studies).resolve()
    if not studies_path.is_dir():
        raise FileNotFoundError(f"studies folder {studies_path} does not exist")
    cmd = server_command(app, studies_path, name, host, port, conf)
    env = server_env()
    if dry_run:
        print(json.dumps({"command": cmd, "PYTHONPATH": env["PYTHONPATH"]}, indent=2))
        return cmd
    sys.stdout.flush()
    sys.stderr.flush()
    os.execvpe(cmd[0], cmd, env)  # same process id: stopping this pid stops the server
    return cmd  # not reached


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m mdm_med.label", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="action", required=True)
    p = sub.add_parser("serve", help="serve a bundle with MONAI Label's stock monaibundle app")
    p.add_argument("--bundle", required=True, help="bundle folder (configs/ layout with models/model.pt)")
    p.add_argument("--studies", required=True, help="folder of images to label (MONAI Label writes labels here)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default: loopback only)")
    p.add_argument("--app_dir", default=None, help="where to lay out the app (default ~/.cache/mdm_med/label/<name>)")
    p.add_argument("--conf", nargs=2, action="append", default=[], metavar=("KEY", "VALUE"),
                   help="extra MONAI Label app setting, e.g. --conf skip_trainers true")
    p.add_argument("--dry_run", action="store_true", help="prepare the app and print the server command only")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.action == "serve":
        serve(args.bundle, args.studies, args.port, args.host, args.app_dir, [tuple(c) for c in args.conf],
              args.dry_run)


if __name__ == "__main__":
    main()
