"""Small run utilities: locating a bundle, atomic saves, recording the resolved run configuration."""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import platform
import shutil
import sys
from pathlib import Path

import torch

from mdm_med.data.datalist import write_json_atomic
from mdm_med.io import atomic_write

__all__ = ["locate_bundle", "save_atomic", "copy_atomic", "write_run_record", "seed_everything", "publish_model",
           "model_setting", "check_evaluation_data"]

logger = logging.getLogger(__name__)


def locate_bundle(name: str) -> str:
    """The bundle's root folder, seen from the current directory: ``bundles/<name>`` from the repo root, or
    ``.`` when run inside the bundle folder (zoo layout with ``configs/``)."""
    for candidate in (Path("bundles") / name, Path(".")):
        if (candidate / "configs" / "metadata.json").is_file():
            return str(candidate)
    raise FileNotFoundError(f"cannot find bundle {name!r} from {os.getcwd()}; pass --bundle_root /path/to/{name}")


def save_atomic(obj, path: str | os.PathLike) -> None:
    """``torch.save`` through a temporary file in the same folder, then ``os.replace``."""
    atomic_write(path, lambda tmp: torch.save(obj, tmp))


def copy_atomic(src: str | os.PathLike, dst: str | os.PathLike) -> str:
    """Copy ``src`` to ``dst`` atomically; returns ``dst``."""
    if not os.path.isfile(src):
        raise FileNotFoundError(f"cannot publish {src}: file does not exist")
    atomic_write(dst, lambda tmp: shutil.copyfile(src, tmp))
    logger.info("published %s -> %s", src, dst)
    return str(dst)


def seed_everything(seed: int, deterministic: bool = True) -> int:
    """Seed Python, NumPy and torch (MONAI's ``set_determinism``)."""
    from monai.utils import set_determinism

    set_determinism(seed=seed, use_deterministic_algorithms=None)
    if deterministic:
        torch.backends.cudnn.benchmark = False
    return seed


def write_run_record(output_dir: str | os.PathLike, settings: dict, name: str = "run_config.json") -> str:
    """Write the resolved settings, the command line, the config files it named and versions to
    ``output_dir/name`` (atomically) and copy the config files beside it."""
    import monai

    os.makedirs(output_dir, exist_ok=True)
    files = []
    argv = list(sys.argv)
    for i, arg in enumerate(argv):
        if arg == "--config_file" and i + 1 < len(argv):
            spec = argv[i + 1]
            names = json.loads(spec.replace("'", '"')) if spec.startswith("[") else [spec]
            for f in names:
                if os.path.isfile(f):
                    dst = os.path.join(output_dir, "configs_used", os.path.basename(f))
                    copy_atomic(f, dst)
                    files.append(f)
    record = {
        "settings": _jsonable(settings),
        "argv": argv,
        "cwd": os.getcwd(),
        "config_files": files,
        "versions": {"python": platform.python_version(), "torch": torch.__version__, "monai": monai.__version__},
        "host": platform.node(),
    }
    path = os.path.join(output_dir, name)
    write_json_atomic(record, path)
    logger.info("run configuration written to %s", path)
    return path


def _jsonable(obj):
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, (str, int, float, bool)) or obj is None:
        return obj
    return str(obj)


MODEL_SETTINGS = "model_settings.json"


def _sha256(path: str | os.PathLike) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def publish_model(ckpt_path: str, models_dir: str, settings: dict) -> str:
    """Copy the trained model to ``models_dir/model.pt`` with the settings inference needs to rebuild it
    (``model_settings.json``: preset, mode, scale, crop ..., and ``model_sha256``, the model file's hash); both
    atomically. Written one after the other, so the hash tells a settings file from the model it describes:
    :func:`model_setting` refuses a pair left mismatched by an interrupted publish."""
    dst = copy_atomic(ckpt_path, os.path.join(models_dir, "model.pt"))
    write_json_atomic(_jsonable({**settings, "model_sha256": _sha256(dst)}),
                      os.path.join(models_dir, MODEL_SETTINGS))
    return dst


_REQUIRED = object()


@functools.lru_cache(maxsize=8)
def _model_matches(model: str, mtime_ns: int, size: int, sha: str) -> bool:
    return _sha256(model) == sha


def model_setting(models_dir: str, key: str, default=_REQUIRED):
    """One entry of ``models_dir/model_settings.json`` (written by ``publish_model``), or ``default``; without a
    default, a missing file or key raises ``FileNotFoundError`` / ``KeyError`` saying to train and publish first.
    A missing file raises even with a default when ``models_dir/model.pt`` exists (a model is never rebuilt from
    guessed settings; the default serves configs checked before any model exists), and a settings file whose
    ``model_sha256`` is not the hash of ``model.pt`` raises ``ValueError``."""
    path = os.path.join(models_dir, MODEL_SETTINGS)
    model = os.path.join(models_dir, "model.pt")
    if not os.path.isfile(path):
        if default is _REQUIRED or os.path.isfile(model):
            raise FileNotFoundError(f"{path} not found: train the bundle with publish=true first"
                                    + (f" ({model} alone does not say how to rebuild the model)"
                                       if os.path.isfile(model) else ""))
        return default
    with open(path) as f:
        settings = json.load(f)
    if settings.get("model_sha256") and os.path.isfile(model):
        st = os.stat(model)
        if not _model_matches(model, st.st_mtime_ns, st.st_size, settings["model_sha256"]):
            raise ValueError(f"{model} is not the model {path} describes (sha256 differs): a publish was "
                             "interrupted or one of the files was replaced; train and publish again")
    if key not in settings and default is _REQUIRED:
        raise KeyError(f"{path} has no {key!r}; it was written by another version: train and publish again")
    return settings.get(key, default)


def check_evaluation_data(models_dir: str, is_demo: bool, data_settings: dict) -> None:
    """Refuse to evaluate a published model on other data than it was trained for: demo data for a model trained on
    real data (or the reverse), or another split / preprocessing (the bundle's ``data_settings``, e.g. the
    hippocampus split seed and spacing), which could put training cases in the test set."""
    trained_demo = model_setting(models_dir, "is_demo", None)
    if trained_demo is not None and bool(trained_demo) != bool(is_demo):
        where = "the built-in demo data" if trained_demo else model_setting(models_dir, "trained_on", "real data")
        raise ValueError(f"the model in {models_dir} was trained on {where}, but this evaluation reads "
                         f"{'the demo data' if is_demo else 'real data'}: pass --dataset_dir to the data it was "
                         "trained on" + (" (or none, for the demo)" if trained_demo else ""))
    recorded = model_setting(models_dir, "data_settings", None)
    if recorded is None:
        return
    diff = {k: (recorded.get(k), v) for k, v in _jsonable(dict(data_settings)).items() if recorded.get(k) != v}
    if diff:
        hint = " ".join(f"--{k} {json.dumps(t)!r}" for k, (t, _) in diff.items())
        raise ValueError(f"the model in {models_dir} was trained with other data settings (trained vs this run: "
                         f"{diff}); pass them ({hint}) to evaluate it on its own split and preprocessing")
