"""Label-efficiency benchmark: methods x protocols x label fractions x seeds, each cell one run of a MONAI bundle.

A *cell* is one bundle run in its own Python process (``python -m monai.bundle run``):

- a **pretraining** job per pretrained method: the bundle with ``configs/pretrain.json`` merged, exporting
  ``<out>/pretrain/<method>/pretrained.pt``; done once and reused by every fraction, seed and protocol of the method;
- a **segmentation** cell per (method, protocol[, head timestep], fraction, seed): the bundle's training run
  with ``label_fraction``, ``seed``, ``seg_mode`` and the method's overrides, writing into ``<out>/cells/<cell>``.

The overrides of each cell are written to ``<cell dir>/overrides.json`` and merged as the last config file, so
the exact command in ``<cell dir>/command.sh`` reproduces the cell. A cell is finished when its result JSON
(``<out>/results/<cell>.json``, written atomically) exists; a restarted benchmark skips finished cells and refuses
to mix results made with different settings (the result stores a fingerprint of the overrides and one of the
bundle's config with the overrides applied).
Settings that only the test reads (``EVALUATION_KEYS``: the mask clean-up, the test metrics) are fingerprinted
apart: when only they change, a finished cell is re-scored from its saved model (``evaluate_command.sh``), not
trained again. Validation, which picks the checkpoint, does not read them, so a re-scored cell equals a fresh one.

Why a subprocess per cell rather than ``ConfigWorkflow`` in-process: every cell starts from a clean interpreter
(no global RNG / determinism flags, logging handlers, ignite handlers, CacheDataset memory or CUDA allocator
state carried over from the previous cell), a crash or out-of-memory in one cell cannot take the benchmark down,
and the cell's command line is a complete, copy-pasteable reproduction. The price is the interpreter start
(about 5-10 s per cell), small next to a cell's training time.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import os
import platform
import shlex
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterable, Sequence
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass, field, replace
from pathlib import Path

import yaml

from mdm_med.benchmark.report import CLASS_DICE
from mdm_med.bundle import resolved_config
from mdm_med.data.datalist import DEFAULT_FRACTIONS, write_json_atomic

__all__ = ["Cell", "Profile", "load_profile", "plan_cells", "cell_run_list", "resolved_config", "run_benchmark",
           "InvocationLog", "read_invocations",
           "default_bundle_dir", "profile_bundle_dir", "check_data_dir",
           "PROTOCOLS", "BUDGET_KEYS", "OBJECT_METRICS"]

PROTOCOLS = {"head": "head", "finetune": "finetune"}  # protocol -> the bundle's seg_mode
# Every pretrained method shares these (same backbone, same pretraining and fine-tuning budget): a method may not
# override them.
BUDGET_KEYS = frozenset({"preset", "pretrain_iterations", "pretrain_batch_size", "epoch_length", "max_epochs",
                         "seg_batch_size", "crop_size", "image_scale", "patch_size", "pretrain_lr", "val_interval",
                         "early_stop_patience", "early_stop_warmup", "num_val", "val_frac", "test_frac", "split_seed"})
# Keys the runner sets itself for every cell.
RESERVED_KEYS = frozenset({"label_fraction", "seed", "output_dir", "bundle_root", "dataset_dir",
                           "pretrained_checkpoint", "pretrain_method", "run"})
# GlaS object metrics that can be added to the bundle's test evaluator (name -> Ignite handler).
OBJECT_METRICS = {
    "object_f1": "mdm_med.object_metrics.GlaSObjectF1Handler",
    "object_dice": "mdm_med.object_metrics.GlaSObjectDiceHandler",
    "object_hausdorff": "mdm_med.object_metrics.GlaSObjectHausdorffHandler",
}
TRAIN_CONFIGS = ("configs/train.json",)
PRETRAIN_CONFIGS = ("configs/train.json", "configs/pretrain.json")
# Appended after the bundle's training step: the best validation Dice (for choosing e.g. the DDPM feature timestep
# on validation only) and the epoch it came from.
VAL_SUMMARY = (
    "$mdm_med.data.datalist.write_json_atomic({'best_val_dice': float(@validate#evaluator.state.best_metric), "
    "'best_val_epoch': int(@validate#evaluator.state.best_metric_epoch), "
    "'epochs_run': int(@train#trainer.state.epoch)}, "
    "os.path.join(@output_dir, 'val_metrics.json'))"
)
# replaces the bundle's pretraining step in a segmentation cell: the weights must exist and match the run's settings
REQUIRE_PRETRAINED = "$mdm_med.engines.pretrained_ready(@pretrained_checkpoint, @pretrain_meta, required=True)"
# Keys that only the segmentation run reads: a pretraining job does not get them, so changing them (e.g. a longer
# fine-tuning budget) reuses the pretraining of the same --out.
SEGMENTATION_KEYS = frozenset({"max_epochs", "val_interval", "early_stop_patience", "early_stop_warmup", "seg_mode",
                               "seg_batch_size", "seg_lr", "seg_timestep", "seg_dice_weight", "seg_pretrained",
                               "finetune_lr_scale", "feature_corruption", "train_transforms", "eval_transforms",
                               "min_object_size", "fill_holes"})
# Keys (and override prefixes, as in "test_metrics#test_object_f1") that only the test reads, and the bundle sections
# made of them: a change re-scores finished cells from their saved models.
EVALUATION_KEYS = frozenset({"min_object_size", "fill_holes", "test_metrics"})
EVALUATION_SECTIONS = EVALUATION_KEYS | {"test"}
# Parts of the bundle's own (resolved) config that only segmentation reads, left out of a pretraining's bundle
# fingerprint; everything else counts for both.
SEGMENTATION_SECTIONS = SEGMENTATION_KEYS | {"train", "validate", "test", "test_metrics", "network_def", "network",
                                             "model_settings", "record", "run", "run_name", "ckpt_path",
                                             "output_dir", "eval_keys", "label_fraction", "publish"}
FINGERPRINT_IGNORE = ("run", "bundle_root", "output_dir", "pretrained_checkpoint")  # paths that follow --out


def default_bundle_dir(name: str = "mdm_glas") -> Path:
    """``bundles/<name>`` of this checkout (next to the ``mdm_med`` package), else of the current directory."""
    for candidate in (Path(__file__).resolve().parents[2] / "bundles" / name, Path("bundles") / name):
        if (candidate / "configs" / "train.json").is_file():
            return candidate.resolve()
    raise FileNotFoundError(f"cannot find bundles/{name}; pass --bundle /path/to/{name}")


def profile_bundle_dir(profile: Profile) -> Path:
    """The folder of the profile's ``bundle``: a path (relative to the profile file) when it names a folder with
    ``configs/train.json``, else a bundle name under ``bundles/``."""
    as_path = Path(profile.source).parent / profile.bundle if profile.source else Path(profile.bundle)
    if (as_path / "configs" / "train.json").is_file():
        return as_path.resolve()
    return default_bundle_dir(profile.bundle)


def _data_checks() -> dict:
    """The bundle's ``dataset_name`` -> (check of a data folder, what the folder must hold)."""
    from mdm_med.data.decathlon import has_decathlon_images
    from mdm_med.data.glas import has_glas_images
    from mdm_med.data.monuseg import has_monuseg_layout

    return {"glas": (has_glas_images, "GlaS images (train_N.png/bmp + train_N_anno.*)"),
            "hippocampus": (has_decathlon_images, "Decathlon volumes (imagesTr/*.nii.gz + labelsTr/*.nii.gz)"),
            "monuseg": (has_monuseg_layout, "finished MoNuSeg layout ({images,labels,instances}{Tr,Ts}/*.png, no "
                                           "conversion_incomplete.txt)")}


def check_data_dir(dataset_name: str, data_dir: str | os.PathLike) -> None:
    """Raise ``FileNotFoundError`` when ``data_dir`` does not hold the data the bundle reads (checked for the bundles'
    known datasets; a cell that ran on a bundle's synthetic demo data instead fails when its result is read)."""
    check = _data_checks().get(dataset_name)
    if check is not None and not check[0](data_dir):
        raise FileNotFoundError(f"--data-dir {data_dir} holds no {check[1]}, which the {dataset_name} bundle reads; "
                                "the benchmark never falls back to the synthetic demo set")


# ---------------------------------------------------------------------------------------------------------------
# profile
# ---------------------------------------------------------------------------------------------------------------


@dataclass
class Method:
    name: str
    label: str
    pretrain: bool
    protocols: tuple[str, ...]
    overrides: dict
    head_timesteps: tuple[int, ...] = ()
    pretrained_by: str = ""  # another method whose pretraining this one reuses (fine-tuning variants)

    @property
    def pretraining(self) -> str:
        """Name of the method whose pretraining job gives this method's weights."""
        return self.pretrained_by or self.name


@dataclass
class Profile:
    name: str
    fractions: tuple[float, ...]
    seeds: tuple[int, ...]
    protocols: tuple[str, ...]
    methods: dict[str, Method]
    bundle_overrides: dict = field(default_factory=dict)
    pretrain_seed: int = 0
    object_metrics: tuple[str, ...] | None = None  # the test's object metrics; None = the bundle's own
    source: str = ""
    bundle: str = "mdm_glas"  # the bundle the cells run: a folder name under bundles/, or a path


def _floats(values) -> tuple[float, ...]:
    return tuple(float(v) for v in values)


def _read_profile(path: Path, depth: int = 0) -> dict:
    """A profile file with ``extends: other.yaml`` resolved (relative to the file): the child's top-level keys replace
    the parent's, except ``methods``, merged per method name."""
    with open(path) as f:
        config = yaml.safe_load(f) or {}
    parent = config.pop("extends", None)
    if not parent:
        return config
    if depth > 5:
        raise ValueError(f"{path}: 'extends' nests too deep")
    base = _read_profile(path.parent / parent, depth + 1)
    methods = {**(base.get("methods") or {}), **(config.get("methods") or {})}
    return {**base, **config, "methods": methods}


def load_profile(config: str | os.PathLike | dict, overrides: dict | None = None) -> Profile:
    """Read a benchmark profile (YAML path or dict) and check it; ``overrides`` update ``bundle_overrides``."""
    source = ""
    if not isinstance(config, dict):
        source = str(config)
        config = _read_profile(Path(config))
    if not isinstance(config, dict) or "methods" not in config:
        raise ValueError(f"benchmark profile {source or '<dict>'} must be a mapping with a 'methods' section")
    bundle_overrides = dict(config.get("bundle_overrides") or {})
    bundle_overrides.update(overrides or {})
    bad = sorted(set(bundle_overrides) & RESERVED_KEYS)
    if bad:
        raise ValueError(f"bundle_overrides may not set {bad}: the runner sets them per cell")
    protocols = tuple(dict.fromkeys(config.get("protocols") or PROTOCOLS))  # a value given twice is one cell
    methods: dict[str, Method] = {}
    for name, spec in (config["methods"] or {}).items():
        spec = spec or {}
        unknown = set(spec) - {"label", "pretrain", "protocols", "overrides", "head_timesteps", "pretrained_by"}
        if unknown:
            raise ValueError(f"method {name!r}: unknown keys {sorted(unknown)}")
        ov = dict(spec.get("overrides") or {})
        clash = sorted(set(ov) & (BUDGET_KEYS | RESERVED_KEYS))
        if clash:
            raise ValueError(f"method {name!r} overrides {clash}: budget and per-cell keys are the same for every "
                             "method (set budget keys in bundle_overrides)")
        methods[name] = Method(
            name=name, label=str(spec.get("label", name)), pretrain=bool(spec.get("pretrain", True)),
            protocols=tuple(dict.fromkeys(spec.get("protocols") or protocols)), overrides=ov,
            head_timesteps=tuple(dict.fromkeys(int(t) for t in spec.get("head_timesteps") or ())),
            pretrained_by=str(spec.get("pretrained_by") or ""))
    for m in list(methods.values()):
        if not m.pretrained_by:
            continue
        donor = methods.get(m.pretrained_by)
        if donor is None or not donor.pretrain or donor.pretrained_by:
            raise ValueError(f"method {m.name!r}: pretrained_by {m.pretrained_by!r} must name a method of this profile "
                             "that runs its own pretraining")
        changed = sorted(k for k in m.overrides if k.startswith("pretrain"))
        if changed or not m.pretrain:
            raise ValueError(f"method {m.name!r} reuses the pretraining of {donor.name!r}, so it may not set "
                             f"pretraining settings ({changed or 'pretrain: false'})")
        # a variant of the donor: its settings (corruption, loss, feature timestep ...) plus the variant's changes
        methods[m.name] = replace(m, overrides={**donor.overrides, **m.overrides})
    profile = Profile(
        name=str(config.get("name", Path(source).stem if source else "benchmark")),
        fractions=_floats(config.get("fractions") or DEFAULT_FRACTIONS),
        seeds=tuple(int(s) for s in config.get("seeds") or (0, 1, 2)),
        protocols=protocols, methods=methods, bundle_overrides=bundle_overrides,
        pretrain_seed=int(config.get("pretrain_seed", 0)),
        object_metrics=None if config.get("object_metrics") is None else tuple(config["object_metrics"]),
        source=source,
        bundle=str(config.get("bundle") or "mdm_glas"))
    _check_profile(profile)
    return profile


def _check_profile(p: Profile) -> None:
    allowed = {f"{f:g}" for f in DEFAULT_FRACTIONS}
    bad = [f for f in p.fractions if f"{f:g}" not in allowed]
    if bad:
        raise ValueError(f"label fractions {bad} are not in the datalist's nested subsets {sorted(allowed)}")
    for m in p.methods.values():
        wrong = [x for x in m.protocols if x not in PROTOCOLS]
        if wrong:
            raise ValueError(f"method {m.name!r}: unknown protocols {wrong}; use {sorted(PROTOCOLS)}")
    wrong = [x for x in p.protocols if x not in PROTOCOLS]
    if wrong:
        raise ValueError(f"unknown protocols {wrong}; use {sorted(PROTOCOLS)}")
    wrong = [x for x in p.object_metrics or () if x not in OBJECT_METRICS]
    if wrong:
        raise ValueError(f"unknown object_metrics {wrong}; use {sorted(OBJECT_METRICS)}")


# ---------------------------------------------------------------------------------------------------------------
# cells
# ---------------------------------------------------------------------------------------------------------------


@dataclass
class Cell:
    """One bundle run. ``kind`` is 'pretrain' or 'segment'."""

    kind: str
    method: Method
    protocol: str = ""
    fraction: float | None = None
    seed: int | None = None
    timestep: int | None = None  # head feature timestep when the method lists several (DDPM)

    @property
    def variant(self) -> str:
        return f"t{self.timestep}" if self.timestep is not None else ""

    @property
    def name(self) -> str:
        if self.kind == "pretrain":
            return f"pretrain__{self.method.name}"
        proto = self.protocol + (f"_{self.variant}" if self.variant else "")
        return f"{self.method.name}__{proto}__f{self.fraction:g}__s{self.seed}"


def plan_cells(profile: Profile, methods: Sequence[str] | None = None, fractions: Sequence[float] | None = None,
               seeds: Sequence[int] | None = None, protocols: Sequence[str] | None = None) -> list[Cell]:
    """All cells in run order: seeds outermost (a complete seed-0 table comes first), then fractions, methods,
    protocols, head timesteps; a method's pretraining job goes right before its first segmentation cell."""
    names = list(dict.fromkeys(methods or profile.methods))  # a value given twice is one cell, not two
    unknown = [m for m in names if m not in profile.methods]
    if unknown:
        raise ValueError(f"unknown methods {unknown}; the profile has {list(profile.methods)}")
    fracs = tuple({f"{f:g}": f for f in (_floats(fractions) if fractions else profile.fractions)}.values())
    probe = Profile(profile.name, fracs, (0,), profile.protocols, {})
    _check_profile(probe)
    protos = tuple(dict.fromkeys(protocols or profile.protocols))
    wrong = [x for x in protos if x not in PROTOCOLS]
    if wrong:
        raise ValueError(f"unknown protocols {wrong}; use {sorted(PROTOCOLS)}")
    cells: list[Cell] = []
    pretrained: set[str] = set()
    for seed in dict.fromkeys(int(s) for s in (seeds if seeds is not None else profile.seeds)):
        for frac in fracs:
            for name in names:
                m = profile.methods[name]
                for proto in (x for x in m.protocols if x in protos):
                    if m.pretrain and m.pretraining not in pretrained:
                        cells.append(Cell("pretrain", profile.methods[m.pretraining]))
                        pretrained.add(m.pretraining)
                    steps = m.head_timesteps if proto == "head" and m.head_timesteps else (None,)
                    for t in steps:
                        cells.append(Cell("segment", m, proto, frac, int(seed), t))
    return cells


def cell_run_list(bundle_run: Sequence, pretrained: bool) -> list:
    """The bundle's ``run`` steps for a benchmark cell: without publishing the model into the bundle's
    ``models/`` folder, with the best-validation summary (``val_metrics.json``) after training, and never
    pretraining: the runner pretrains in its own job, so the bundle's pretraining step becomes a check that the
    weights are there (``REQUIRE_PRETRAINED``) for a method that uses them and is dropped for one that does not."""
    out, seen_train = [], False
    for step in bundle_run:
        text = str(step)
        if "publish_model(" in text:
            continue
        if "@pretrain#trainer.run()" in text:
            if pretrained:
                out.append(REQUIRE_PRETRAINED)
            continue
        out.append(step)
        if "@train#trainer.run()" in text:
            seen_train = True
            out.append(VAL_SUMMARY)
    if not seen_train:
        raise ValueError("the bundle's run list has no '@train#trainer.run()' step; cannot build a benchmark cell")
    return out


def _hash(x) -> str:
    return hashlib.sha256(json.dumps(x, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _is_evaluation_key(key: str) -> bool:
    return key.split("#")[0] in EVALUATION_KEYS


def _sha256(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def pretraining_id(result: dict) -> dict:
    """What identifies one pretraining (its settings and the sha256 of its weights): stored in every segmentation
    result made from it, so results from a pretraining that was made again with other weights (another seed, a
    deleted folder) are refused, while a result.json rewritten around the same weights is not."""
    return {"fingerprint": result.get("fingerprint"), "weights_sha256": result.get("weights_sha256")}


# per-cell values that differ between the seeds / machines of one comparable group of results
SETTINGS_IGNORE = ("seed", "dataset_dir", *FINGERPRINT_IGNORE)


def settings_fingerprint(overrides: dict) -> str:
    """Hash of a cell's settings without its seed and paths (training and test-only settings alike): equal for
    every seed of one method / protocol / fraction of one run, so ``combine`` can refuse to average results made
    with other settings (results.csv column ``settings_fingerprint``)."""
    return _hash({k: v for k, v in overrides.items() if k not in SETTINGS_IGNORE})


def fingerprint(overrides: dict) -> str:
    """Hash of a cell's overrides that decide its training (paths that follow --out and test-only keys left out)."""
    return _hash({k: v for k, v in overrides.items() if k not in FINGERPRINT_IGNORE and not _is_evaluation_key(k)})


def evaluation_fingerprint(config: dict, overrides: dict) -> str:
    """Hash of what only the test reads: the bundle's ``EVALUATION_SECTIONS`` and the overrides' evaluation keys."""
    config = _without_comments(config)
    return _hash({"bundle": {k: v for k, v in config.items() if k in EVALUATION_SECTIONS},
                  "overrides": {k: v for k, v in overrides.items() if _is_evaluation_key(k)}})


def evaluation_run_list(bundle_dir: str | os.PathLike, repo_root: str | os.PathLike) -> list:
    """The ``run`` steps of the bundle's ``configs/evaluate.json`` without the run record (which stays the
    training's): test the model at ``ckpt_path`` and write ``test_metrics.json``."""
    path = Path(bundle_dir) / "configs" / "evaluate.json"
    steps = resolved_config(path, repo_root).get("run", []) if path.is_file() else []
    steps = [s for s in steps if "write_run_record(" not in str(s)]
    if not any("@test#evaluator.run()" in str(s) for s in steps):
        raise ValueError(f"{path} has no 'run' list with '@test#evaluator.run()'; cannot re-score finished cells")
    return steps


def _without_comments(x):
    if isinstance(x, dict):
        return {k: _without_comments(v) for k, v in x.items() if k != "_comment"}
    if isinstance(x, list):
        return [_without_comments(v) for v in x]
    return x


def _set_id(config, key: str, value) -> None:
    """Set ``key`` (``"a#b#0"``: nested ids as in a bundle config) in ``config``, in place."""
    *parents, last = key.split("#")
    node = config
    for part in parents:
        node = node[int(part)] if isinstance(node, list) else node.setdefault(part, {})
    if isinstance(node, list):
        node[int(last)] = value
    else:
        node[last] = value


def bundle_fingerprint(config: dict, kind: str, overrides: dict | None = None) -> str:
    """Hash of what the training of a cell of ``kind`` reads: the bundle's resolved config (comments left out) with
    the cell's training ``overrides`` applied, less ``EVALUATION_SECTIONS`` for a segmentation cell and less
    ``SEGMENTATION_SECTIONS`` for a pretraining. Results store it as ``config_fingerprint``, so a changed bundle
    default (say, the augmentation) is not mixed with results made before the change, while a default that the
    profile overrides anyway (say, the pretraining lr) does not matter. Without ``overrides`` it is the bundle's own
    hash, which results written before the overrides were applied store as ``bundle_fingerprint``."""
    config = _without_comments(config)  # copies dicts and lists, so the overrides are set in place
    for key, value in (overrides or {}).items():
        if key not in FINGERPRINT_IGNORE and not _is_evaluation_key(key):
            _set_id(config, key, _without_comments(value))
    drop = SEGMENTATION_SECTIONS if kind == "pretrain" else EVALUATION_SECTIONS
    return _hash({k: v for k, v in config.items() if k not in drop})


# ---------------------------------------------------------------------------------------------------------------
# the runner
# ---------------------------------------------------------------------------------------------------------------


class CellFailed(RuntimeError):
    pass


INVOCATIONS_FILE = "invocations.json"


class InvocationLog:
    """Wall clock of every invocation that runs cells into one output directory, so that a benchmark that was
    interrupted and resumed reports its total time. ``<out>/invocations.json`` is a list with one record per
    invocation (``started_at``, ``elapsed_s``, ``ended``, ``jobs``, ``cell_threads`` and the counts of ``ran``,
    ``rescored`` and ``failed``: the lengths of this object's lists, which the runner fills), rewritten atomically
    every ``heartbeat_s`` seconds, on ``write()`` and on exit. ``ended`` is true only for an invocation that got
    through its cells (failed ones included); a killed one keeps the ``elapsed_s`` of its last rewrite (at most
    ``heartbeat_s`` short)."""

    heartbeat_s = 30.0

    def __init__(self, out: Path, jobs: int, cell_threads: int | None):
        self.path = Path(out) / INVOCATIONS_FILE
        self.ran: list[str] = []
        self.rescored: list[str] = []
        self.failed: dict[str, str] = {}
        self.start = time.time()
        self.record = {"started_at": time.strftime("%Y-%m-%d %H:%M:%S"), "elapsed_s": 0.0, "ended": False,
                       "jobs": jobs, "cell_threads": cell_threads}
        self.previous = read_invocations(out)
        self._lock, self._stop = threading.Lock(), threading.Event()
        self._thread = threading.Thread(target=self._beat, daemon=True)

    def __enter__(self) -> InvocationLog:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.write()
        self._thread.start()
        return self

    def __exit__(self, exc_type, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.write(ended=exc_type is None)  # an interrupted (Ctrl-C) or crashed invocation did not end

    def _beat(self) -> None:
        while not self._stop.wait(self.heartbeat_s):
            self.write()

    def write(self, ended: bool = False) -> None:
        """Rewrite the file with this invocation's elapsed time and counts."""
        with self._lock:
            self.record.update(elapsed_s=time.time() - self.start, ended=ended, ran=len(self.ran),
                               rescored=len(self.rescored), failed=len(self.failed))
            write_json_atomic(self.previous + [self.record], self.path)


def read_invocations(out: str | os.PathLike) -> list[dict]:
    """The records of ``<out>/invocations.json`` (see ``InvocationLog``); [] when no invocation ran cells there."""
    path = Path(out) / INVOCATIONS_FILE
    if not path.is_file():
        return []
    with open(path) as f:
        records = json.load(f)
    if not isinstance(records, list):
        raise ValueError(f"{path}: expected a list of invocation records, got {type(records).__name__}")
    return records


def _fmt_s(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    seconds = int(round(seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m" if h else (f"{m}m{s:02d}s" if m else f"{s}s")


def machine_info() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    text = f"{platform.node()}: {cpu}, {os.cpu_count()} CPU cores (visible), Python {platform.python_version()}"
    try:
        import monai
        import torch

        text += f", torch {torch.__version__}, monai {monai.__version__}"
        if torch.cuda.is_available():
            text += f", GPU {torch.cuda.get_device_name(0)}"
    except ImportError:
        pass
    return text


def cell_threads(jobs: int) -> int | None:
    """CPU threads each cell gets: ``OMP_NUM_THREADS`` if set, else the visible cores split between ``jobs`` cells
    running at once (at least 1); None (torch's default) for one job without ``OMP_NUM_THREADS``."""
    if os.environ.get("OMP_NUM_THREADS", "").strip():
        return int(os.environ["OMP_NUM_THREADS"])
    if jobs == 1:
        return None
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, cores // jobs)


class BenchmarkRunner:
    def __init__(self, profile: Profile, data_dir: str | os.PathLike, out: str | os.PathLike,
                 bundle_dir: str | os.PathLike | None = None, bundle_root: str | os.PathLike | None = None,
                 verbose: bool = False, log=print, jobs: int = 1):
        if int(jobs) < 1:
            raise ValueError(f"jobs must be >= 1, got {jobs}")
        self.profile = profile
        self.jobs = int(jobs)
        self.cell_threads = cell_threads(self.jobs)
        self.data_dir = Path(data_dir).resolve()
        self.out = Path(out).resolve()
        self.bundle_dir = Path(bundle_dir).resolve() if bundle_dir else profile_bundle_dir(profile)
        self.bundle_root = Path(bundle_root).resolve() if bundle_root else self.out
        self.verbose = verbose
        self.log = log
        self.repo_root = Path(__file__).resolve().parents[2]
        self.bundle_config = resolved_config(self.bundle_dir / "configs" / "train.json", self.repo_root)
        self.bundle_run = self.bundle_config["run"]
        self._procs: set[subprocess.Popen] = set()  # the bundle processes running now (killed if the runner stops)
        self._procs_lock = threading.Lock()  # a cell thread starting a process and the main thread stopping them
        self._stopping = False  # set once the runner stops: no cell thread starts a process after that

    # paths --------------------------------------------------------------------------------------------------
    def pretrain_dir(self, method: Method) -> Path:
        return self.out / "pretrain" / method.pretraining

    def work_dir(self, cell: Cell) -> Path:
        return self.pretrain_dir(cell.method) if cell.kind == "pretrain" else self.out / "cells" / cell.name

    def result_path(self, cell: Cell) -> Path:
        return self.pretrain_dir(cell.method) / "result.json" if cell.kind == "pretrain" else \
            self.out / "results" / f"{cell.name}.json"

    # overrides ----------------------------------------------------------------------------------------------
    def overrides(self, cell: Cell) -> dict:
        m = cell.method
        ov = dict(self.profile.bundle_overrides)
        if cell.kind == "segment":
            ov["seg_mode"] = PROTOCOLS[cell.protocol]
        ov.update(m.overrides)
        common = {"dataset_dir": str(self.data_dir), "bundle_root": str(self.bundle_root)}
        if m.pretrain:
            common["pretrained_checkpoint"] = str(self.pretrain_dir(m) / "pretrained.pt")
            common["pretrain_method"] = m.pretraining
        else:
            common["pretrained_checkpoint"] = None
            common["pretrain_method"] = "none"
        if cell.kind == "pretrain":
            ov = {k: v for k, v in ov.items() if k not in SEGMENTATION_KEYS}
            ov.update(common, seed=self.profile.pretrain_seed, output_dir=str(self.pretrain_dir(m)))
            return ov
        if cell.timestep is not None:
            ov["seg_timestep"] = cell.timestep
        ov.update(common, label_fraction=cell.fraction, seed=cell.seed, output_dir=str(self.work_dir(cell)))
        if self.profile.object_metrics is not None:  # exactly these: drop the bundle's other object metrics
            own = self.bundle_config.get("test_metrics") or {}
            drop = [k for k, v in own.items() if isinstance(v, dict) and v.get("_target_") in OBJECT_METRICS.values()
                    and k.removeprefix("test_") not in self.profile.object_metrics]
            if drop:
                ov["test_metrics"] = {k: v for k, v in own.items() if k not in drop}
        for name in self.profile.object_metrics or ():
            ov[f"test_metrics#test_{name}"] = {
                "_target_": OBJECT_METRICS[name],
                "output_transform": "$monai.handlers.from_engine(['pred', 'gt_instance'])"}
        ov["run"] = cell_run_list(self.bundle_run, m.pretrain)
        return ov

    def command(self, cell: Cell, overrides_file: Path) -> list[str]:
        configs = PRETRAIN_CONFIGS if cell.kind == "pretrain" else TRAIN_CONFIGS
        files = [str(self.bundle_dir / c) for c in configs] + [str(overrides_file)]
        return [sys.executable, "-m", "monai.bundle", "run", "--config_file", json.dumps(files),
                "--meta_file", str(self.bundle_dir / "configs" / "metadata.json"),
                "--logging_file", str(self.bundle_dir / "configs" / "logging.conf")]

    # state --------------------------------------------------------------------------------------------------
    def finished(self, cell: Cell, upgrade: bool = True) -> dict | None:
        """The cell's stored result, or None if it has none yet. Raises if it was made with other settings. A result
        older than the effective-config fingerprint is given one on disk when ``upgrade`` (not under --dry-run)."""
        path = self.result_path(cell)
        if not path.is_file():
            return None
        with open(path) as f:
            result = json.load(f)
        want = fingerprint(self.overrides(cell))
        if result.get("fingerprint") != want:
            raise ValueError(
                f"{path} was made with other settings than this run (fingerprint {result.get('fingerprint')} vs "
                f"{want}; see {self.work_dir(cell) / 'overrides.json'}). Use a new --out, or delete the old result "
                "to recompute it.")
        if cell.kind == "segment" and "pretrained_with" in result:
            pre_path = self.pretrain_dir(cell.method) / "result.json"
            pre = json.loads(pre_path.read_text()) if pre_path.is_file() else None
            if pre is None or pretraining_id(pre) != result["pretrained_with"]:
                raise ValueError(
                    f"{path} was trained from another pretraining than {pre_path} "
                    f"({'which is missing' if pre is None else 'made again since, with other weights'}). Delete "
                    "the results of "
                    f"{cell.method.name!r} (results/{cell.method.name}__*.json) to recompute them from the current "
                    "pretraining, or use a new --out.")
        want = bundle_fingerprint(self.bundle_config, cell.kind, self.overrides(cell))
        if "config_fingerprint" in result:
            if result["config_fingerprint"] != want:
                raise ValueError(
                    f"{path} was made with another effective config (the bundle {self.bundle_dir} with this run's "
                    f"overrides; config fingerprint {result['config_fingerprint']} vs {want}). Use a new --out, or "
                    "delete the old result to recompute it.")
            return result
        # written before the overrides were part of the hash: check the bundle's own hash (absent in the oldest
        # results), then store the effective one so that a later bundle version with the same effective config
        # (only defaults the profile overrides changed) accepts the result
        own = bundle_fingerprint(self.bundle_config, cell.kind)
        if result.get("bundle_fingerprint", own) != own:
            raise ValueError(
                f"{path} was made with another version of the bundle's configs ({self.bundle_dir}; bundle "
                f"fingerprint {result['bundle_fingerprint']} vs {own}). Use a new --out, or delete the old result "
                "to recompute it.")
        result = {**result, "config_fingerprint": want}
        if upgrade:
            write_json_atomic(result, path)
        return result

    @functools.cached_property
    def evaluation_run(self) -> list:
        """The re-scoring run list, resolved once (see ``evaluation_run_list``)."""
        return evaluation_run_list(self.bundle_dir, self.repo_root)

    def stale_evaluation(self, cell: Cell, result: dict) -> bool:
        """True when a finished segmentation cell was scored with other test-only settings than this run's."""
        return cell.kind == "segment" and \
            result.get("evaluation_fingerprint") != evaluation_fingerprint(self.bundle_config, self.overrides(cell))

    # running ------------------------------------------------------------------------------------------------
    def _launch(self, cell: Cell) -> float:
        work = self.work_dir(cell)
        if cell.kind == "segment" and work.exists():
            shutil.rmtree(work)  # an unfinished cell restarts from scratch (pretraining resumes from its checkpoint)
        work.mkdir(parents=True, exist_ok=True)
        return self._subprocess(cell, self.overrides(cell), "", track_attempts=True)

    def _subprocess(self, cell: Cell, ov: dict, prefix: str, track_attempts: bool) -> float:
        """Run the bundle for ``cell`` with ``ov`` (written to ``<prefix>overrides.json``, the command to
        ``<prefix>command.sh``, output appended to log.txt); returns the wall time. With ``track_attempts`` the
        time also counts the cell's earlier, interrupted attempts (a pretraining resumes from its checkpoint): the
        running total is rewritten to ``attempts.json`` every ``InvocationLog.heartbeat_s`` seconds, so it survives
        a killed runner (at most one heartbeat short)."""
        work = self.work_dir(cell)
        ov_file = work / f"{prefix}overrides.json"
        write_json_atomic(ov, ov_file)
        cmd = self.command(cell, ov_file)
        (work / f"{prefix}command.sh").write_text(f"cd {shlex.quote(str(self.repo_root))}\n{shlex.join(cmd)}\n")
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join([str(self.repo_root)] + [p for p in [env.get("PYTHONPATH")] if p])
        if self.cell_threads is not None:
            env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(self.cell_threads)
        log_path = work / "log.txt"
        attempts = work / "attempts.json"  # wall time of earlier, interrupted attempts (pretraining resumes)
        fp = fingerprint(ov)
        previous = json.loads(attempts.read_text()) if attempts.is_file() and track_attempts else \
            {"wall_s": 0.0, "fingerprint": fp}
        if previous.get("fingerprint") != fp:
            raise ValueError(f"{work} holds an unfinished run made with other settings (its checkpoint would be "
                             "resumed); delete that folder or use a new --out")
        start = time.time()

        def record_attempts(elapsed: float) -> None:
            if track_attempts:
                write_json_atomic({"wall_s": previous["wall_s"] + elapsed, "fingerprint": fp}, attempts)

        try:
            with open(log_path, "a") as log, self._start_process(
                    cmd, cwd=self.repo_root, env=env, stdout=None if self.verbose else log,
                    stderr=subprocess.STDOUT if not self.verbose else None) as proc:
                try:
                    while True:
                        try:
                            proc.wait(timeout=InvocationLog.heartbeat_s)
                            break
                        except subprocess.TimeoutExpired:
                            record_attempts(time.time() - start)
                except BaseException:  # an error in this thread: the cell does not outlive it
                    proc.kill()
                    proc.wait()
                    raise
                finally:
                    self._procs.discard(proc)
        finally:
            wall = time.time() - start
            record_attempts(wall)
        if proc.returncode != 0:
            tail = "".join(log_path.read_text(errors="replace").splitlines(keepends=True)[-25:])
            raise CellFailed(f"{cell.name} failed (exit {proc.returncode}); log {log_path}:\n{tail}")
        return previous["wall_s"] + wall

    def _start_process(self, cmd: list[str], **kwargs) -> subprocess.Popen:
        """Start a bundle process and register it for ``_stop_processes``, unless the runner is stopping: a cell
        thread that gets here after Ctrl-C must not start a process nobody would kill."""
        with self._procs_lock:
            if self._stopping:
                raise CellFailed("the runner is stopping: not started")
            proc = subprocess.Popen(cmd, **kwargs)
            self._procs.add(proc)
            return proc

    def _stop_processes(self) -> None:
        with self._procs_lock:
            self._stopping = True
            procs = list(self._procs)
        for proc in procs:
            proc.kill()

    def run_pretrain(self, cell: Cell) -> dict:
        wall = self._launch(cell)
        ckpt = self.pretrain_dir(cell.method) / "pretrained.pt"
        if not ckpt.is_file():
            raise CellFailed(f"{cell.name}: the bundle finished but {ckpt} does not exist")
        ov = self.overrides(cell)
        sha = _sha256(ckpt)
        result = {"cell": cell.name, "method": cell.method.name, "pretrained_checkpoint": str(ckpt), "wall_s": wall,
                  "weights_sha256": sha,
                  "pretrain_iterations": ov.get("pretrain_iterations"), "fingerprint": fingerprint(ov),
                  "config_fingerprint": bundle_fingerprint(self.bundle_config, cell.kind, ov),
                  "cell_threads": self.cell_threads, "finished_at": time.strftime("%Y-%m-%d %H:%M:%S")}
        write_json_atomic(result, self.result_path(cell))
        return result

    def check_pretrained_weights(self, cell: Cell, pretrain_result: dict) -> None:
        """Refuse to start a segmentation cell when its method's finished pretraining (``result.json``) no longer
        has the weights it recorded: ``pretrained.pt`` deleted or replaced since."""
        ckpt = self.pretrain_dir(cell.method) / "pretrained.pt"
        problem = "does not exist" if not ckpt.is_file() else \
            "is not the file it recorded (sha256 differs)" if _sha256(ckpt) != pretrain_result.get("weights_sha256") \
            else None
        if problem:
            raise CellFailed(
                f"{cell.name}: {ckpt} {problem}, though {self.pretrain_dir(cell.method) / 'result.json'} says the "
                "pretraining finished. Restore the file, or delete that result.json to pretrain again (results made "
                "from the old weights are then refused).")

    def run_segment(self, cell: Cell, pretrain_result: dict | None) -> dict:
        if pretrain_result is not None:
            self.check_pretrained_weights(cell, pretrain_result)
        wall = self._launch(cell)
        work = self.work_dir(cell)
        test = self._test_metrics(cell)
        val = json.loads((work / "val_metrics.json").read_text()) if (work / "val_metrics.json").is_file() else {}
        record = json.loads((work / "run_config.json").read_text()).get("settings", {})
        ov = self.overrides(cell)
        result = {
            "cell": cell.name, "method": cell.method.name, "method_label": cell.method.label,
            "protocol": cell.protocol, "variant": cell.variant, "seg_mode": record.get("seg_mode"),
            "seg_timestep": record.get("seg_timestep"), "label_fraction": cell.fraction, "seed": cell.seed,
            "labelled_images": len(record.get("labelled_images") or []),
            **test,
            "val_dice": val.get("best_val_dice"), "best_epoch": val.get("best_val_epoch"),
            "epochs_run": val.get("epochs_run"),
            "pretrain_wall_s": pretrain_result.get("wall_s") if pretrain_result else None,
            "pretrain_method": pretrain_result.get("method") if pretrain_result else None,
            **({"pretrained_with": pretraining_id(pretrain_result)} if pretrain_result else {}),
            "seg_wall_s": wall, "output_dir": str(work), "fingerprint": fingerprint(ov),
            "config_fingerprint": bundle_fingerprint(self.bundle_config, cell.kind, ov),
            "evaluation_fingerprint": evaluation_fingerprint(self.bundle_config, ov),
            "settings_fingerprint": settings_fingerprint(ov), "dataset": self.bundle_config.get("dataset_name", ""),
            "cell_threads": self.cell_threads, "finished_at": time.strftime("%Y-%m-%d %H:%M:%S"),
        }
        write_json_atomic(result, self.result_path(cell))
        return result

    def _test_metrics(self, cell: Cell) -> dict:
        """The result fields read from the cell's ``test_metrics.json``."""
        with open(self.work_dir(cell) / "test_metrics.json") as f:
            test = json.load(f)
        if test.get("is_demo"):
            raise CellFailed(f"{cell.name}: the bundle ran on its synthetic DEMO data, not on {self.data_dir}")
        return {"dice": test.get("test_mean_dice"), "iou": test.get("test_mean_iou"),
                "paper_iou": test.get("test_paper_iou"),
                **{name: test.get(f"test_{name}") for name in OBJECT_METRICS},
                "test_images": test.get("test_images"),
                **{CLASS_DICE + k[len("test_dice_"):]: v for k, v in test.items()  # per class, e.g. dice_anterior
                   if k.startswith("test_dice_") and isinstance(v, (int, float))},
                "test_metrics": {k: v for k, v in test.items()  # every test metric, e.g. Dice per class
                                 if k.startswith("test_") and isinstance(v, (int, float))}}

    def rescore(self, cell: Cell, result: dict) -> dict:
        """Test a finished cell's saved model (``<cell dir>/model.pt``) again with this run's test-only settings and
        rewrite its result (training fields kept; ``eval_wall_s`` and ``evaluated_at`` added)."""
        work = self.work_dir(cell)
        if not (work / "model.pt").is_file():
            raise CellFailed(f"{cell.name}: cannot re-score, {work / 'model.pt'} is missing; delete "
                             f"{self.result_path(cell)} to train the cell again")
        ov = self.overrides(cell)
        ov["run"] = self.evaluation_run
        wall = self._subprocess(cell, ov, "evaluate_", track_attempts=False)
        result = {**result, **self._test_metrics(cell), "eval_wall_s": wall,
                  "evaluation_fingerprint": evaluation_fingerprint(self.bundle_config, ov),
                  "settings_fingerprint": settings_fingerprint(ov),  # "run" is not a setting
                  "evaluated_at": time.strftime("%Y-%m-%d %H:%M:%S")}
        write_json_atomic(result, self.result_path(cell))
        return result

    def run(self, cells: Sequence[Cell]) -> dict:
        """Run every unfinished cell and re-score finished cells whose test-only settings changed; returns
        ``{"results", "pretrain", "ran", "rescored", "skipped", "failed", "elapsed_s"}``."""
        start = time.time()
        done: dict[str, dict] = {}
        for cell in cells:  # fail early on results made with other settings
            r = self.finished(cell)
            if r is not None:
                done[cell.name] = r
        todo = [c for c in cells if c.name not in done]
        stale = [c for c in cells if c.name in done and self.stale_evaluation(c, done[c.name])]
        self.log(f"[benchmark] {len(cells)} cells ({sum(c.kind == 'pretrain' for c in cells)} pretraining), "
                 f"{len(done)} already finished ({len(stale)} to re-score: test-only settings changed), "
                 f"{len(todo)} to run; output {self.out}")
        ran, rescored, failed = [], [], {}
        if todo or stale:
            with InvocationLog(self.out, self.jobs, self.cell_threads) as invocation:
                self._execute(cells, todo, stale, done, invocation)
            ran, rescored, failed = invocation.ran, invocation.rescored, invocation.failed
        return {"results": [done[c.name] for c in cells if c.kind == "segment" and c.name in done],
                "pretrain": {c.method.name: done[c.name] for c in cells if c.kind == "pretrain" and c.name in done},
                "ran": ran, "rescored": rescored,
                "skipped": [c.name for c in cells if c.name in done and c.name not in ran + rescored],
                "failed": failed, "elapsed_s": time.time() - start}

    def _execute(self, cells: Sequence[Cell], todo: list[Cell], stale: list[Cell], done: dict,
                 invocation: InvocationLog) -> None:
        """Re-score ``stale`` and run ``todo`` (``jobs`` at a time), adding results to ``done`` and the names ran,
        re-scored and ``{failed cell: reason}`` to ``invocation.ran`` / ``.rescored`` / ``.failed``."""
        ran, rescored, failed, broken = invocation.ran, invocation.rescored, invocation.failed, set()
        for i, cell in enumerate(stale):
            self.log(f"[benchmark] re-scoring {i + 1}/{len(stale)} {cell.name} from its saved model")
            try:
                done[cell.name] = self.rescore(cell, done[cell.name])
            except CellFailed as err:
                self.log(f"[benchmark] FAILED {err}")
                failed[cell.name] = str(err).splitlines()[0]
                del done[cell.name]
                continue
            rescored.append(cell.name)
            invocation.write()
            self.log(f"[benchmark] {cell.name} re-scored in {_fmt_s(done[cell.name]['eval_wall_s'])}, "
                     f"test Dice {done[cell.name]['dice']:.4f}")
        pending, running, started = list(todo), {}, {}
        self._stopping = False
        with ThreadPoolExecutor(max_workers=self.jobs) as pool:
            try:
                while pending or running:
                    while len(running) < self.jobs:
                        cell = self._next_ready(pending, running.values(), broken, failed)
                        if cell is None:
                            break
                        now = time.time()
                        eta = self._eta([*running.values(), cell, *pending], done, cells, self.jobs,
                                        {c.name: now - started[c.name] for c in running.values()})
                        left = f"time left ~{_fmt_s(eta)}" if eta is not None else \
                            "time left: known once a pretraining and a segmentation cell are done"
                        self.log(f"[benchmark] {len(done) + len(failed) + len(running) + 1}/{len(cells)} {cell.name} "
                                 f"starting ({left})")
                        running[pool.submit(self._run_cell, cell, done)] = cell
                        started[cell.name] = time.time()
                    if not running:  # cannot happen (a pending pretraining is always ready); never drop cells silently
                        failed.update({c.name: "never became ready to run" for c in pending})
                        break
                    finished, _ = wait(running, timeout=1.0, return_when=FIRST_COMPLETED)  # wakes for Ctrl-C
                    for future in finished:
                        cell = running.pop(future)
                        try:
                            result = future.result()
                        except Exception as err:  # noqa: BLE001 - any error fails its cell alone; Ctrl-C still stops
                            if not isinstance(err, CellFailed):
                                err = CellFailed(f"{cell.name} failed: {type(err).__name__}: {err}")
                            self.log(f"[benchmark] FAILED {err}")
                            failed[cell.name] = str(err).splitlines()[0]
                            if cell.kind == "pretrain":
                                broken.add(cell.method.name)
                            continue
                        done[cell.name] = result
                        ran.append(cell.name)
                        wall = result.get("wall_s", result.get("seg_wall_s"))
                        extra = f", test Dice {result['dice']:.4f}" if result.get("dice") is not None else ""
                        self.log(f"[benchmark] {cell.name} done in {_fmt_s(wall)}{extra}")
                    if finished:
                        invocation.write()
            except BaseException:  # Ctrl-C / SIGTERM reach this (main) thread: stop the cells, keep what finished
                self._stop_processes()
                raise

    def _run_cell(self, cell: Cell, done: dict) -> dict:
        if cell.kind == "pretrain":
            return self.run_pretrain(cell)
        return self.run_segment(cell, done.get(f"pretrain__{cell.method.pretraining}"))

    @staticmethod
    def _next_ready(pending: list[Cell], running: Iterable[Cell], broken: set, failed: dict) -> Cell | None:
        """Pop the first pending cell (plan order) that can start: a segmentation cell waits while its method's
        pretraining is pending or running. Cells whose pretraining failed are moved to ``failed``."""
        busy = {c.method.pretraining for c in [*pending, *running] if c.kind == "pretrain"}
        i = 0
        while i < len(pending):
            cell = pending[i]
            needs = cell.kind == "segment" and cell.method.pretrain
            if needs and cell.method.pretraining in broken:
                failed[cell.name] = f"pretraining of {cell.method.pretraining} failed"
                pending.pop(i)
            elif not needs or cell.method.pretraining not in busy:
                return pending.pop(i)
            else:
                i += 1
        return None

    @staticmethod
    def _eta(remaining: Sequence[Cell], done: dict, cells: Sequence[Cell], jobs: int = 1,
             elapsed: dict[str, float] | None = None) -> float | None:
        """Seconds left. Each cell costs the mean wall time of finished cells of its kind (pretraining / head /
        fine-tuning; else of all finished segmentation cells), less ``elapsed[cell name]`` for a cell already
        running. The cells, running ones first, go in order onto ``jobs`` lanes as the runner starts them: a
        segmentation cell not before its method's pretraining (if still to come) has ended. None before any cell
        of a needed kind has finished."""
        walls: dict[str, list[float]] = {}
        for c in cells:
            r = done.get(c.name)
            if r is not None:
                key = "pretrain" if c.kind == "pretrain" else c.protocol
                w = r.get("wall_s", r.get("seg_wall_s"))
                if w is not None:
                    walls.setdefault(key, []).append(float(w))
        seg = [w for k, v in walls.items() if k != "pretrain" for w in v]
        cost = {}
        for c in remaining:
            pool = walls.get("pretrain" if c.kind == "pretrain" else c.protocol) or (seg if c.kind == "segment"
                                                                                    else None)
            if not pool:
                return None
            cost[c.name] = max(0.0, sum(pool) / len(pool) - (elapsed or {}).get(c.name, 0.0))
        to_come = {c.method.pretraining for c in remaining if c.kind == "pretrain"}
        ends: dict[str, float] = {}  # pretraining -> when it ends
        lanes, queue = [0.0] * max(1, jobs), list(remaining)

        def earliest(c: Cell) -> float:
            needs = c.kind == "segment" and c.method.pretrain and c.method.pretraining in to_come
            return ends.get(c.method.pretraining, math.inf) if needs else 0.0

        while queue:
            lane = lanes.index(min(lanes))
            cell = next((c for c in queue if earliest(c) <= lanes[lane]), None) or min(queue, key=earliest)
            queue.remove(cell)
            lanes[lane] = max(lanes[lane], earliest(cell)) + cost[cell.name]
            if cell.kind == "pretrain":
                ends[cell.method.pretraining] = lanes[lane]
        return max(lanes)


def run_benchmark(config: str | os.PathLike | dict, data_dir: str | os.PathLike, out: str | os.PathLike,
                  methods: Sequence[str] | None = None, fractions: Sequence[float] | None = None,
                  seeds: Sequence[int] | None = None, protocols: Sequence[str] | None = None,
                  overrides: dict | None = None, bundle_dir: str | os.PathLike | None = None,
                  bundle_root: str | os.PathLike | None = None, dry_run: bool = False, report_only: bool = False,
                  verbose: bool = False, command: str | None = None, log=print, jobs: int = 1) -> dict:
    """Plan, run (unless ``dry_run`` / ``report_only``) and report. Returns the runner's summary plus ``cells`` and
    ``report`` (paths of results.csv / results.md / plot.png)."""
    from mdm_med.benchmark.report import sort_rows, write_report

    profile = load_profile(config, overrides)
    cells = plan_cells(profile, methods, fractions, seeds, protocols)
    runner = BenchmarkRunner(profile, data_dir, out, bundle_dir, bundle_root, verbose, log, jobs)
    check_data_dir(runner.bundle_config.get("dataset_name", ""), data_dir)
    binary_2d = runner.bundle_config.get("spatial_dims") == 2 and runner.bundle_config.get("num_classes") == 2
    if profile.object_metrics and not binary_2d:
        raise ValueError(f"object_metrics {list(profile.object_metrics)} score connected components of 2-D binary "
                         f"masks; the bundle {runner.bundle_dir} is not 2-D with 2 classes")
    if dry_run:
        for c in cells:
            r = runner.finished(c, upgrade=False)
            state = "todo" if r is None else "rescore" if runner.stale_evaluation(c, r) else "done"
            log(f"{state:7s} {c.name}")
        return {"cells": [c.name for c in cells], "ran": [], "rescored": [], "skipped": [], "failed": {}, "results": [],
                "pretrain": {}, "report": {}}
    if report_only:
        done = {c.name: r for c in cells if (r := runner.finished(c)) is not None}
        stale = [c.name for c in cells if c.name in done and runner.stale_evaluation(c, done[c.name])]
        if stale:
            raise ValueError(f"{len(stale)} finished cell(s) (e.g. {stale[0]}) were scored with other test-only "
                             "settings than this run's; run without --report-only to re-score them from their models")
        summary = {"results": [done[c.name] for c in cells if c.kind == "segment" and c.name in done],
                   "pretrain": {c.method.name: done[c.name] for c in cells if c.kind == "pretrain" and c.name in done},
                   "ran": [], "rescored": [], "skipped": list(done), "failed": {}, "elapsed_s": None}
    else:
        summary = runner.run(cells)
    summary["results"] = sort_rows(summary["results"], list(profile.methods))
    missing = [c.name for c in cells if c.kind == "segment" and c.name not in
               {r["cell"] for r in summary["results"]}]
    info = {
        "profile": profile.name, "profile_file": profile.source, "command": command or "(python API)",
        "data_dir": str(runner.data_dir), "out": str(runner.out), "bundle": str(runner.bundle_dir),
        "machine": machine_info(), "bundle_overrides": profile.bundle_overrides,
        "elapsed_s": summary["elapsed_s"] if summary["ran"] or summary["rescored"] or summary["failed"] else None,
        "pretrain": summary["pretrain"], "failed": summary["failed"],
        "missing": missing, "methods": {m.name: m.label for m in profile.methods.values()},
        "object_metrics": list(profile.object_metrics or ()), "dataset": runner.bundle_config.get("dataset_name", ""),
        "jobs": runner.jobs if summary["ran"] else None, "cell_threads": runner.cell_threads,  # this invocation's
        "invocations": read_invocations(runner.out),
    }
    summary["report"] = write_report(summary["results"], runner.out, info)
    summary["cells"] = [c.name for c in cells]
    log(f"[benchmark] ran {len(summary['ran'])}, re-scored {len(summary['rescored'])}, "
        f"skipped {len(summary['skipped'])} finished, "
        f"failed {len(summary['failed'])}; report: {summary['report'].get('md')}")
    return summary
