"""Tests for the label-efficiency benchmark (mdm_med.benchmark): planning, per-cell overrides, aggregation and
report, and one end-to-end run of the real mdm_glas bundle on a tiny synthetic set (then a restart that must skip
every finished cell)."""

from __future__ import annotations

import csv
import dataclasses
import json
import math
from pathlib import Path

import pytest

from mdm_med.benchmark import aggregate, cell_run_list, load_profile, markdown_report, plan_cells, select_on_validation
from mdm_med.benchmark.__main__ import main
from mdm_med.benchmark.runner import (REQUIRE_PRETRAINED, SEGMENTATION_KEYS, VAL_SUMMARY, BenchmarkRunner,
                                     CellFailed, InvocationLog,
                                     bundle_fingerprint, cell_threads, check_data_dir, default_bundle_dir,
                                     evaluation_fingerprint, fingerprint, profile_bundle_dir, read_invocations,
                                     resolved_config, run_benchmark)

REPO = Path(__file__).resolve().parents[1]
CPU_PROFILE = REPO / "benchmarks" / "glas_cpu.yaml"
PAPER_PROFILE = REPO / "benchmarks" / "glas_paper.yaml"
HIPPO_PROFILE = REPO / "benchmarks" / "hippocampus_cpu.yaml"
BUNDLE = REPO / "bundles" / "mdm_glas"
TINY = ["pretrain_iterations=4", "epoch_length=2", "max_epochs=1", "val_interval=1", "image_scale=1.0",
        "crop_size=32", "num_val=2", "preset=tiny"]


# ----------------------------------------------------------------------------------------------------------------
# profiles and planning
# ----------------------------------------------------------------------------------------------------------------


def test_cpu_profile_plan():
    p = load_profile(CPU_PROFILE)
    assert list(p.methods) == ["mdm", "mdm_mse", "mdm_fixed_t", "mae", "ddpm", "scratch", "random_features"]
    cells = plan_cells(p)
    pre = [c for c in cells if c.kind == "pretrain"]
    seg = [c for c in cells if c.kind == "segment"]
    assert sorted(c.method.name for c in pre) == ["ddpm", "mae", "mdm", "mdm_fixed_t", "mdm_mse"]
    # 5 pretrained x 2 protocols + 2 extra DDPM head timesteps + scratch + random features, x 2 fractions x 3 seeds
    assert len(seg) == 14 * 2 * 3
    assert len({c.name for c in cells}) == len(cells)
    # every pretraining comes before the first cell of its method
    first = {}
    for i, c in enumerate(cells):
        first.setdefault((c.kind, c.method.name), i)
    for c in pre:
        assert first[("pretrain", c.method.name)] < first[("segment", c.method.name)]
    assert {c.protocol for c in seg if c.method.name == "scratch"} == {"finetune"}
    assert {c.protocol for c in seg if c.method.name == "random_features"} == {"head"}
    assert sorted(c.timestep for c in seg if c.method.name == "ddpm" and c.protocol == "head"
                  and c.seed == 0 and c.fraction == 0.1) == [50, 150, 250]
    core = plan_cells(p, methods=["mdm", "scratch"], fractions=[0.1, 1.0])
    assert sum(c.kind == "segment" for c in core) == 18 and sum(c.kind == "pretrain" for c in core) == 1
    twice = plan_cells(p, methods=["mdm", "scratch", "mdm"], fractions=[0.1, 1.0, 0.10], seeds=[0, 1, 2, 0],
                       protocols=["finetune", "head", "finetune"])  # repeated values: the same cells once
    assert [c.name for c in twice] == [c.name for c in core]


def test_paper_profile_extends_cpu_methods():
    cpu, paper = load_profile(CPU_PROFILE), load_profile(PAPER_PROFILE)
    assert list(paper.methods) == list(cpu.methods)
    assert paper.bundle_overrides["preset"] == "paper" and paper.bundle_overrides["crop_size"] == 256
    ov = paper.bundle_overrides
    assert ov["patch_size"] == 8 and ov["image_scale"] == 1.0
    # the paper's 10k steps at batch 128, as micro-batches with gradient accumulation (one H100 holds 16)
    acc = ov["pretrain_accumulation_steps"]
    assert ov["pretrain_batch_size"] * acc == 128 and ov["pretrain_iterations"] == 10000 * acc
    assert ov["epoch_length"] % acc == 0
    assert len(paper.seeds) >= 3 and paper.fractions == (0.05, 0.1, 0.25, 0.5, 1.0)


def test_hippocampus_profile_drives_its_bundle_and_checks_its_data(tmp_path):
    from mdm_med.data.synthetic import generate_glas_demo
    from mdm_med.data.synthetic_volumes import generate_hippocampus_demo

    cpu, hippo = load_profile(CPU_PROFILE), load_profile(HIPPO_PROFILE)
    assert cpu.bundle == "mdm_glas" and profile_bundle_dir(cpu) == BUNDLE.resolve()
    assert hippo.bundle == "mdm_hippocampus"
    assert profile_bundle_dir(hippo) == (REPO / "bundles" / "mdm_hippocampus").resolve()
    assert list(hippo.methods) == list(cpu.methods) and hippo.object_metrics == ()
    assert hippo.bundle_overrides["preset"] == "cpu3d"
    runner = BenchmarkRunner(hippo, tmp_path / "data", tmp_path / "out")
    assert runner.bundle_dir == profile_bundle_dir(hippo) and runner.bundle_config["spatial_dims"] == 3
    # a data folder of the wrong kind is refused before any cell runs, naming the folder and what it lacks
    glas = generate_glas_demo(tmp_path / "glas", num_train=3, num_test=1, size=(32, 32))
    with pytest.raises(FileNotFoundError, match=r"glas holds no Decathlon volumes .*hippocampus bundle"):
        check_data_dir("hippocampus", glas)
    with pytest.raises(FileNotFoundError, match="holds no GlaS images"):
        check_data_dir("glas", tmp_path / "missing")
    check_data_dir("hippocampus", generate_hippocampus_demo(tmp_path / "hippo", num_cases=2, shape=(24, 24, 24)))
    with pytest.raises(FileNotFoundError, match="Decathlon volumes"):
        run_benchmark(HIPPO_PROFILE, glas, tmp_path / "out", dry_run=True, log=lambda *_: None)
    # GlaS gland metrics are refused for a 3-D multi-class bundle
    with pytest.raises(ValueError, match="2-D binary masks"):
        run_benchmark({**_profile_dict(HIPPO_PROFILE), "object_metrics": ["object_f1"]}, tmp_path / "hippo",
                      tmp_path / "out", dry_run=True, log=lambda *_: None)


def _profile_dict(path) -> dict:
    from mdm_med.benchmark.runner import _read_profile

    return _read_profile(Path(path))


def test_values_given_twice_are_one_cell():
    p = load_profile({"protocols": ["head", "finetune", "head"], "methods": {
        "ddpm": {"head_timesteps": [50, 50, 150]}, "s": {"pretrain": False, "protocols": ["finetune", "finetune"]}}})
    names = [c.name for c in plan_cells(p, fractions=[0.1], seeds=[0])]
    assert names == ["pretrain__ddpm", "ddpm__head_t50__f0.1__s0", "ddpm__head_t150__f0.1__s0",
                     "ddpm__finetune__f0.1__s0", "s__finetune__f0.1__s0"]
    args = ["--config", "x", "--data-dir", "d", "--out", "o"]
    from mdm_med.benchmark.__main__ import build_parser
    parsed = build_parser().parse_args(args + ["--set", "a=1", "--set", "b=2", "--seeds", "0", "--seeds", "1"])
    assert parsed.set == ["a=1", "b=2"] and parsed.seeds == ["0", "1"]  # an option given twice adds up


def test_profile_rejects_budget_overrides_and_bad_fractions():
    with pytest.raises(ValueError, match="pretrain_iterations"):
        load_profile({"methods": {"x": {"overrides": {"pretrain_iterations": 10}}}})
    with pytest.raises(ValueError, match="label fractions"):
        load_profile({"fractions": [0.3], "methods": {"x": {}}})
    with pytest.raises(ValueError, match="unknown methods"):
        plan_cells(load_profile(CPU_PROFILE), methods=["nope"])
    with pytest.raises(ValueError, match="runner sets"):
        load_profile({"methods": {"x": {}}}, overrides={"seed": 3})


def test_cell_run_list_on_the_bundle():
    bundle_run = resolved_config(BUNDLE / "configs" / "train.json", BUNDLE.parents[1])["run"]
    pre = cell_run_list(bundle_run, pretrained=True)
    none = cell_run_list(bundle_run, pretrained=False)
    for steps in (pre, none):
        assert not any("publish_model(" in s for s in steps)  # the bundle's models/ is never overwritten
        assert steps[steps.index(VAL_SUMMARY) - 1] == "$@train#trainer.run()"
    # a cell never pretrains (the runner does, in its own job): it requires the weights, or runs without any
    assert not any("@pretrain#trainer.run()" in s for s in pre + none)
    assert REQUIRE_PRETRAINED in pre and REQUIRE_PRETRAINED not in none
    with pytest.raises(ValueError):
        cell_run_list(["$print(1)"], pretrained=False)


def test_cell_overrides(tmp_path):
    p = load_profile(CPU_PROFILE)
    runner = BenchmarkRunner(p, tmp_path / "data", tmp_path / "out", log=lambda *a: None)
    cells = {c.name: c for c in plan_cells(p, fractions=[0.1], seeds=[1])}
    pre = runner.overrides(cells["pretrain__mae"])
    assert pre["pretrain_corruption"]["_target_"] == "mdm_med.corruption.FixedRatioMasking"
    assert pre["pretrained_checkpoint"] == str(tmp_path / "out" / "pretrain" / "mae" / "pretrained.pt")
    assert pre["pretrain_method"] == "mae" and "run" not in pre  # pretraining uses pretrain.json's own run list
    assert pre["bundle_root"] == str(tmp_path / "out")
    mae_head = runner.overrides(cells["mae__head__f0.1__s1"])
    assert mae_head["seg_mode"] == "head" and mae_head["seg_timestep"] == 0 and mae_head["seed"] == 1
    assert mae_head["label_fraction"] == 0.1 and mae_head["pretrained_checkpoint"] == pre["pretrained_checkpoint"]
    assert mae_head["pretrain_iterations"] == p.bundle_overrides["pretrain_iterations"]
    ddpm = runner.overrides(cells["ddpm__head_t150__f0.1__s1"])
    assert ddpm["seg_timestep"] == 150 and ddpm["feature_corruption"]["_target_"].endswith("GaussianDiffusion")
    scratch = runner.overrides(cells["scratch__finetune__f0.1__s1"])
    assert scratch["seg_mode"] == "scratch" and scratch["pretrained_checkpoint"] is None
    assert not any("@pretrain#trainer.run()" in s for s in scratch["run"])
    rand = runner.overrides(cells["random_features__head__f0.1__s1"])
    assert rand["seg_mode"] == "head" and rand["seg_pretrained"] is None
    assert scratch["output_dir"] == str(tmp_path / "out" / "cells" / "scratch__finetune__f0.1__s1")
    assert "test_metrics#test_object_f1" in scratch
    # the fingerprint ignores paths that follow --out, not settings
    moved = dict(scratch, output_dir="/elsewhere", run=[])
    assert fingerprint(moved) == fingerprint(scratch) != fingerprint(dict(scratch, seed=2))


def test_profile_object_metrics_are_the_test_s_exact_set(tmp_path):
    """``object_metrics`` lists the test's object metrics: [] turns off the bundle's defaults, no key keeps them; the
    training fingerprint does not change (a test-only setting)."""
    from monai.bundle import ConfigParser

    def scored(**change):
        profile = {**_profile_dict(CPU_PROFILE), **change}
        profile = {k: v for k, v in profile.items() if v != "absent"}
        p = load_profile(profile)
        runner = BenchmarkRunner(p, tmp_path / "data", tmp_path / "out", log=lambda *a: None)
        ov = runner.overrides(plan_cells(p, methods=["scratch"], fractions=[0.1], seeds=[0])[0])
        (tmp_path / "ov.json").write_text(json.dumps(ov))
        config = ConfigParser.load_config_files([str(BUNDLE / "configs" / "train.json"), str(tmp_path / "ov.json")])
        return sorted(k.removeprefix("test_") for k in config["test_metrics"]), fingerprint(ov)

    (names, fp), base = scored(), ["mean_iou", "paper_iou"]
    assert names == sorted(base + ["object_f1", "object_dice"])
    assert scored(object_metrics=[]) == (base, fp)
    assert scored(object_metrics=["object_hausdorff"]) == (sorted(base + ["object_hausdorff"]), fp)
    assert scored(object_metrics="absent")[0] == names  # the bundle's own: object F1 and Dice


def test_pretraining_ignores_segmentation_settings(tmp_path):
    """A longer fine-tuning budget or another augmentation reuses the pretraining; a pretraining setting does not."""
    def pretrain_fp(**bundle_overrides):
        p = load_profile(CPU_PROFILE, overrides=bundle_overrides)
        runner = BenchmarkRunner(p, tmp_path / "data", tmp_path / "out", log=lambda *a: None)
        ov = runner.overrides(plan_cells(p, methods=["mdm"], fractions=[0.1], seeds=[0])[0])
        assert not set(ov) & SEGMENTATION_KEYS
        return fingerprint(ov)

    base = pretrain_fp()
    assert pretrain_fp(max_epochs=99, val_interval=3, train_transforms=[]) == base
    assert pretrain_fp(pretrain_iterations=123) != base
    assert pretrain_fp(crop_size=32) != base


def test_results_from_another_bundle_version_are_refused(tmp_path):
    p = load_profile(CPU_PROFILE)
    runner = BenchmarkRunner(p, tmp_path / "data", tmp_path / "out", log=lambda *a: None)
    pre, seg = plan_cells(p, methods=["mdm"], protocols=["finetune"], fractions=[0.1], seeds=[0])
    config = runner.bundle_config
    # a new segmentation augmentation changes the segmentation cells' fingerprint, not the pretraining's
    changed = dict(config, train_transforms=config["train_transforms"][:-2] + config["train_transforms"][-1:])
    assert bundle_fingerprint(changed, "segment") != bundle_fingerprint(config, "segment")
    assert bundle_fingerprint(changed, "pretrain") == bundle_fingerprint(config, "pretrain")
    assert bundle_fingerprint(dict(config, pretrain_lr=1.0), "pretrain") != bundle_fingerprint(config, "pretrain")
    assert bundle_fingerprint(dict(config, _comment="x"), "segment") == bundle_fingerprint(config, "segment")
    # the test-only mask clean-up changes neither training fingerprint, only the evaluation one
    cleaned = dict(config, min_object_size=1234, fill_holes=not config["fill_holes"])
    for kind in ("segment", "pretrain"):
        assert bundle_fingerprint(cleaned, kind) == bundle_fingerprint(config, kind)
    ov = runner.overrides(seg)
    assert evaluation_fingerprint(cleaned, ov) != evaluation_fingerprint(config, ov)
    assert evaluation_fingerprint(config, {**ov, "min_object_size": 5}) != evaluation_fingerprint(config, ov)
    assert fingerprint({**ov, "min_object_size": 5, "test_metrics#x": {}}) == fingerprint(ov)

    path = runner.result_path(seg)
    path.parent.mkdir(parents=True)
    result = {"cell": seg.name, "fingerprint": fingerprint(runner.overrides(seg))}
    path.write_text(json.dumps(result))
    assert runner.finished(seg)["cell"] == seg.name  # results written before the bundle fingerprint existed
    path.write_text(json.dumps(dict(result, bundle_fingerprint=bundle_fingerprint(config, "segment"))))
    assert runner.finished(seg)["cell"] == seg.name
    path.write_text(json.dumps(dict(result, bundle_fingerprint=bundle_fingerprint(changed, "segment"))))
    with pytest.raises(ValueError, match="another version of the bundle"):
        runner.finished(seg)
    assert runner.finished(pre) is None

    # a result that passes the old check is given the fingerprint of the effective config (bundle + overrides),
    # except under --dry-run, which writes nothing
    path.write_text(json.dumps(dict(result, bundle_fingerprint=bundle_fingerprint(config, "segment"))))
    assert "config_fingerprint" in runner.finished(seg, upgrade=False)
    assert "config_fingerprint" not in json.loads(path.read_text())
    runner.finished(seg)
    stored = json.loads(path.read_text())["config_fingerprint"]
    assert stored == bundle_fingerprint(config, "segment", runner.overrides(seg))
    # a default that the profile overrides may change (max_epochs is in the profile), one it does not may not
    assert "max_epochs" in p.bundle_overrides
    runner.bundle_config = dict(config, max_epochs=99, _comment="new default")
    assert runner.finished(seg)["config_fingerprint"] == stored
    runner.bundle_config = changed
    with pytest.raises(ValueError, match="another effective config"):
        runner.finished(seg)
    # nested override ids reach into the config
    nested = bundle_fingerprint(config, "segment", {"train#batch_size": 3})
    assert nested != bundle_fingerprint(config, "segment")
    assert nested == bundle_fingerprint(config, "segment", {"train": {**config["train"], "batch_size": 3}})


def _run_until_interrupted(runner, cells, watch, finished):
    """Run ``cells`` while ``watch`` (a thread) interrupts the main thread; expects the KeyboardInterrupt, then
    sets ``finished`` (a threading.Event the watcher waits on) and joins the watcher."""
    import threading

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        with pytest.raises(KeyboardInterrupt):
            runner.run(cells)
    finally:
        finished.set()
        watcher.join()


@pytest.fixture
def sigint_raises():
    """SIGINT raises KeyboardInterrupt in the main thread, as in a terminal: a process started in the background
    by a non-interactive shell inherits SIGINT ignored, and then ``_thread.interrupt_main`` does nothing."""
    import signal

    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


def test_stopping_the_runner_kills_its_cells(tmp_path, monkeypatch, sigint_raises):
    """Ctrl-C (or SIGTERM, which the command line turns into it) in the runner kills the bundle processes it
    started, so a restart never meets an orphaned cell still writing into its folder."""
    import _thread
    import os
    import sys
    import threading
    import time

    profile = load_profile({"name": "t", "fractions": [0.1], "seeds": [0], "methods": {"a": {"protocols": ["head"]}}})
    runner = BenchmarkRunner(profile, tmp_path / "data", tmp_path / "out", log=lambda *a: None, jobs=2)
    pid_file = tmp_path / "pid"
    child = f"import os, time; open({str(pid_file)!r}, 'w').write(str(os.getpid())); time.sleep(60)"
    monkeypatch.setattr(runner, "command", lambda cell, ov: [sys.executable, "-c", child])
    interrupted_at, stop = [], threading.Event()

    def interrupt_once_the_cell_runs():  # not a fixed delay: a loaded machine may take seconds to start the cell
        deadline = time.time() + 120
        while not pid_file.is_file() and time.time() < deadline and not stop.is_set():
            time.sleep(0.05)
        if not stop.wait(0.5):
            interrupted_at.append(time.time())
            _thread.interrupt_main()

    _run_until_interrupted(runner, plan_cells(profile)[:1], interrupt_once_the_cell_runs, stop)
    assert pid_file.is_file() and time.time() - interrupted_at[0] < 20
    with pytest.raises(ProcessLookupError):
        os.kill(int(pid_file.read_text()), 0)  # killed and reaped, not left running


def test_a_cell_starting_while_the_runner_stops_never_starts_its_process(tmp_path, monkeypatch, sigint_raises):
    """Ctrl-C while a cell thread is still preparing its command: that thread must not start the bundle after the
    runner has killed the running ones (the runner would then wait for an orphan cell, up to hours)."""
    import _thread
    import sys
    import threading
    import time

    profile = load_profile({"name": "t", "fractions": [0.1], "seeds": [0], "methods": {"a": {"protocols": ["head"]}}})
    runner = BenchmarkRunner(profile, tmp_path / "data", tmp_path / "out", log=lambda *a: None, jobs=2)
    pid_file = tmp_path / "pid"
    child = f"import os, time; open({str(pid_file)!r}, 'w').write(str(os.getpid())); time.sleep(60)"
    preparing, release = threading.Event(), threading.Event()

    def slow_command(cell, ov):  # runs in the cell thread just before the process would start
        preparing.set()
        release.wait(60)
        return [sys.executable, "-c", child]

    monkeypatch.setattr(runner, "command", slow_command)

    def interrupt_while_preparing():
        if preparing.wait(120):
            _thread.interrupt_main()
            deadline = time.time() + 10
            while not runner._stopping and time.time() < deadline:
                time.sleep(0.02)
        release.set()

    start = time.time()
    _run_until_interrupted(runner, plan_cells(profile)[:1], interrupt_while_preparing, release)
    time.sleep(1.0)  # a process started anyway would have written its pid by now
    assert time.time() - start < 30 and not pid_file.exists()


def test_results_from_another_pretraining_are_refused(tmp_path):
    """A segmentation result names the pretraining it was trained from (settings + weights' sha256)."""
    from mdm_med.benchmark.runner import pretraining_id

    profile = load_profile({"name": "t", "fractions": [0.1], "seeds": [0],
                            "methods": {"a": {"protocols": ["finetune"]}}})
    runner = BenchmarkRunner(profile, tmp_path / "data", tmp_path / "out", log=lambda *a: None)
    pre_cell, seg_cell = plan_cells(profile)

    def store(cell, **fields):
        ov = runner.overrides(cell)
        result = {"cell": cell.name, "fingerprint": fingerprint(ov),
                  "config_fingerprint": bundle_fingerprint(runner.bundle_config, cell.kind, ov), **fields}
        runner.result_path(cell).parent.mkdir(parents=True, exist_ok=True)
        runner.result_path(cell).write_text(json.dumps(result))
        return result

    pre = store(pre_cell, weights_sha256="a" * 64, finished_at="2026-01-01 10:00:00")
    store(seg_cell, pretrained_with=pretraining_id(pre))
    assert runner.finished(seg_cell)["cell"] == seg_cell.name
    store(pre_cell, weights_sha256="a" * 64, finished_at="2026-01-02 10:00:00")  # result rewritten, same weights
    assert runner.finished(seg_cell)["cell"] == seg_cell.name
    store(pre_cell, weights_sha256="b" * 64)  # pretrained again: other weights
    with pytest.raises(ValueError, match="another pretraining .*made again since"):
        runner.finished(seg_cell)
    runner.result_path(pre_cell).unlink()
    with pytest.raises(ValueError, match="which is missing"):
        runner.finished(seg_cell)
    store(seg_cell)  # results from before this check name no pretraining and are kept
    assert runner.finished(seg_cell)["cell"] == seg_cell.name
    # a cell to run needs the weights its method's finished pretraining recorded: never pretrains by itself
    import hashlib

    from mdm_med.engines import pretrained_ready

    weights = runner.pretrain_dir(seg_cell.method) / "pretrained.pt"
    with pytest.raises(CellFailed, match="pretrained.pt does not exist, though .*result.json says"):
        runner.check_pretrained_weights(seg_cell, pre)
    weights.write_bytes(b"other weights")
    with pytest.raises(CellFailed, match="sha256 differs"):
        runner.check_pretrained_weights(seg_cell, pre)
    runner.check_pretrained_weights(seg_cell, {"weights_sha256": hashlib.sha256(b"other weights").hexdigest()})
    with pytest.raises(FileNotFoundError, match="missing.pt does not exist"):
        pretrained_ready(str(tmp_path / "missing.pt"), required=True)  # the step that replaces the cell's pretraining
    assert not pretrained_ready(str(tmp_path / "missing.pt"))


def test_method_reuses_another_methods_pretraining(tmp_path):
    spec = {"methods": {"mdm": {"overrides": {"pretrain_loss": "ssim"}},
                        "mdm_slow": {"pretrained_by": "mdm", "protocols": ["finetune"],
                                     "overrides": {"finetune_lr_scale": 0.1}}}}
    p = load_profile(spec)
    cells = plan_cells(p, methods=["mdm_slow"], fractions=[0.1], seeds=[0])
    assert [c.name for c in cells] == ["pretrain__mdm", "mdm_slow__finetune__f0.1__s0"]  # the source's pretraining
    both = plan_cells(p, fractions=[0.1], seeds=[0, 1])
    assert sum(c.kind == "pretrain" for c in both) == 1
    runner = BenchmarkRunner(p, tmp_path / "data", tmp_path / "out", log=lambda *a: None)
    ov = runner.overrides(cells[1])
    assert ov["pretrained_checkpoint"] == str(tmp_path / "out" / "pretrain" / "mdm" / "pretrained.pt")
    assert ov["pretrain_method"] == "mdm" and ov["finetune_lr_scale"] == 0.1 and ov["seg_mode"] == "finetune"
    assert runner.overrides(cells[0]) == runner.overrides(plan_cells(p, methods=["mdm"])[0])  # same job, same result
    # a variant of another donor inherits the donor's settings (the checkpoint's own, and its segmentation ones)
    mae = {"pretrain_corruption": {"_target_": "mdm_med.corruption.FixedRatioMasking"}, "seg_timestep": 0}
    p2 = load_profile({"methods": {"mae": {"overrides": mae},
                                   "mae_slow": {"pretrained_by": "mae", "overrides": {"finetune_lr_scale": 0.1}}}})
    assert p2.methods["mae_slow"].overrides == {**mae, "finetune_lr_scale": 0.1} and p2.methods["mae"].overrides == mae
    with pytest.raises(ValueError, match="must name a method"):
        load_profile({"methods": {"a": {"pretrained_by": "nope"}}})
    with pytest.raises(ValueError, match="may not set pretraining settings"):
        load_profile({"methods": {"mdm": {}, "b": {"pretrained_by": "mdm", "overrides": {"pretrain_loss": "mse"}}}})


# ----------------------------------------------------------------------------------------------------------------
# aggregation and report
# ----------------------------------------------------------------------------------------------------------------


def test_parallel_jobs_wait_for_their_pretraining(tmp_path, monkeypatch):
    """--jobs 2: two cells at a time, never a segmentation cell before its method's pretraining has finished, a
    failed pretraining fails only its own method's cells, and each cell's process gets half the cores."""
    import threading
    import time

    from mdm_med.data.synthetic import generate_glas_demo

    profile = load_profile({"name": "t", "fractions": [0.1, 1.0], "seeds": [0], "methods": {
        "a": {"protocols": ["finetune"]}, "b": {"protocols": ["finetune"]},
        "s": {"pretrain": False, "protocols": ["finetune"]}}})
    data = generate_glas_demo(tmp_path / "glas", num_train=4, num_test=1, size=(32, 32))
    lines = []
    runner = BenchmarkRunner(profile, data, tmp_path / "out", log=lines.append, jobs=2)
    events, lock, now = [], threading.Lock(), {"running": 0, "most": 0}

    def fake(cell, done):
        with lock:
            events.append(("start", cell.name))
            now["running"] += 1
            now["most"] = max(now["most"], now["running"])
        time.sleep(0.3 if cell.kind == "pretrain" else 0.05)
        with lock:
            now["running"] -= 1
            events.append(("end", cell.name))
        if cell.name == "pretrain__a":  # the invocation's record is on disk while it runs, kept up by a heartbeat
            record = read_invocations(tmp_path / "out")[-1]
            assert not record["ended"] and record["jobs"] == 2 and record["elapsed_s"] >= 0.2
        if cell.name == "pretrain__b":
            raise ValueError("an unexpected error")  # not a CellFailed: it still fails only its method
        return {"cell": cell.name, "wall_s": 1.0} if cell.kind == "pretrain" else \
            {"cell": cell.name, "seg_wall_s": 1.0, "dice": 0.5}

    monkeypatch.setattr(runner, "_run_cell", fake)
    monkeypatch.setattr(InvocationLog, "heartbeat_s", 0.05)
    cells = plan_cells(profile)
    summary = runner.run(cells)
    order = [name for kind, name in events if kind == "start"]
    ends = [name for kind, name in events if kind == "end"]
    assert now["most"] == 2
    assert order[:2] == ["pretrain__a", "pretrain__b"]  # both pretrainings at once, in plan order
    for name in order:
        if name.startswith("a__"):
            assert events.index(("end", "pretrain__a")) < events.index(("start", name))
    assert not any(name.startswith("b__") for name in order)
    assert sorted(summary["failed"]) == ["b__finetune__f0.1__s0", "b__finetune__f1__s0", "pretrain__b"]
    assert summary["failed"]["pretrain__b"] == "pretrain__b failed: ValueError: an unexpected error"
    assert sorted(summary["ran"]) == sorted(c.name for c in cells if c.method.name != "b")
    assert len(ends) == len(order) == 6
    assert any("time left ~" in line for line in lines)
    (record,) = read_invocations(tmp_path / "out")
    assert record["ended"] and (record["ran"], record["failed"], record["rescored"]) == (5, 3, 0)
    assert 0.3 <= record["elapsed_s"] <= summary["elapsed_s"]
    runner.run([])  # nothing to run: no record
    assert read_invocations(tmp_path / "out") == [record]
    runner.run(cells[:1])  # the fake wrote no result, so this runs again: a second record, the first kept
    first, second = read_invocations(tmp_path / "out")
    assert first == record and second["ended"] and second["ran"] == 1
    monkeypatch.setattr(runner, "_run_cell", lambda cell, done: (_ for _ in ()).throw(KeyboardInterrupt))
    with pytest.raises(KeyboardInterrupt):
        runner.run(cells[:1])
    assert not read_invocations(tmp_path / "out")[-1]["ended"]  # interrupted: not an invocation that ended
    # time left: each remaining cell at the mean wall time of its kind, spread over the jobs' lanes
    a_cells = [c for c in cells if c.method.name == "a"]
    walls = {a_cells[0].name: {"wall_s": 10.0}, a_cells[1].name: {"seg_wall_s": 2.0}}
    rest = [dataclasses.replace(a_cells[1], seed=s) for s in (5, 6, 7)]  # three more fine-tuning cells
    assert BenchmarkRunner._eta(rest, walls, cells, 1) == 6.0 and BenchmarkRunner._eta(rest, walls, cells, 2) == 4.0
    # the cells wait for their pretraining: 10 s, then three 2 s cells on two lanes
    assert BenchmarkRunner._eta([a_cells[0], *rest], walls, cells, 2) == 14.0
    # a running cell costs what is left of its kind's mean: 0.5 s on one lane, then 2 s + 2 s on the two lanes
    assert BenchmarkRunner._eta(rest, walls, cells, 2, {rest[0].name: 1.5}) == 2.5
    # cores are split between jobs unless the caller fixed OMP_NUM_THREADS
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert cell_threads(1) is None and cell_threads(2) >= 1 and cell_threads(10 ** 6) == 1
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert cell_threads(2) == 3
    with pytest.raises(ValueError, match="jobs"):
        BenchmarkRunner(profile, data, tmp_path / "out", jobs=0)


def test_interrupted_pretraining_keeps_its_wall_time(tmp_path, monkeypatch):
    """A pretraining's wall time adds up over interrupted attempts: the running total is on disk while the bundle
    runs (a killed runner keeps it), and the next attempt, which resumes the checkpoint, adds its own time."""
    import sys
    import threading
    import time

    from mdm_med.benchmark.runner import CellFailed
    from mdm_med.data.synthetic import generate_glas_demo

    profile = load_profile({"name": "t", "fractions": [0.1], "seeds": [0], "methods": {"a": {"protocols": ["head"]}}})
    data = generate_glas_demo(tmp_path / "glas", num_train=4, num_test=1, size=(32, 32))
    runner = BenchmarkRunner(profile, data, tmp_path / "out")
    pretrain = plan_cells(profile)[0]
    attempts = runner.work_dir(pretrain) / "attempts.json"
    monkeypatch.setattr(InvocationLog, "heartbeat_s", 0.05)
    monkeypatch.setattr(runner, "command", lambda cell, ov: [sys.executable, "-c", "import time; time.sleep(1.0)"])
    walls = []
    thread = threading.Thread(target=lambda: walls.append(runner._launch(pretrain)))
    thread.start()
    time.sleep(0.6)
    running = json.loads(attempts.read_text())["wall_s"]
    thread.join()
    assert 0.3 <= running < 1.0  # written by the heartbeat while the bundle ran
    assert json.loads(attempts.read_text())["wall_s"] == pytest.approx(walls[0]) and walls[0] >= 1.0
    monkeypatch.setattr(runner, "command", lambda cell, ov: [sys.executable, "-c", "raise SystemExit(3)"])
    with pytest.raises(CellFailed, match="exit 3"):
        runner._launch(pretrain)  # a failed attempt counts too
    failed_total = json.loads(attempts.read_text())["wall_s"]
    assert failed_total > walls[0]
    monkeypatch.setattr(runner, "command", lambda cell, ov: [sys.executable, "-c", "pass"])
    assert runner._launch(pretrain) > failed_total  # the attempt that finishes reports the total
    monkeypatch.setattr(runner, "overrides", lambda cell: {"pretrain_iterations": 5})
    with pytest.raises(ValueError, match="other settings"):
        runner._launch(pretrain)  # an unfinished run with other settings is not resumed


def _row(method, protocol, fraction, seed, dice, val=None, variant="", **kw):
    return {"method": method, "method_label": method.upper(), "protocol": protocol, "variant": variant,
            "label_fraction": fraction, "seed": seed, "dice": dice, "paper_iou": dice / (2 - dice),
            "val_dice": val, "labelled_images": {0.1: 8, 1.0: 77}[fraction], **kw}


def test_aggregate_mean_std():
    rows = [_row("mdm", "head", 0.1, s, d) for s, d in enumerate([0.80, 0.84, 0.88])]
    rows += [_row("mdm", "head", 1.0, 0, 0.90), _row("scratch", "finetune", 0.1, 0, 0.5, iou=None)]
    agg = aggregate(rows)
    assert [(a["method"], a["label_fraction"], a["n"]) for a in agg] == [
        ("mdm", 0.1, 3), ("mdm", 1.0, 1), ("scratch", 0.1, 1)]
    a = agg[0]
    assert a["dice_mean"] == pytest.approx(0.84)
    assert a["dice_std"] == pytest.approx(0.04)  # sample std (ddof = 1)
    assert a["seeds"] == [0, 1, 2] and a["labelled_images"] == 8
    assert agg[1]["dice_std"] is None  # one seed: no std
    assert agg[2]["iou_mean"] is None


def test_select_timestep_on_validation_not_test():
    rows = []
    for seed in (0, 1):
        rows.append(_row("ddpm", "head", 0.1, seed, dice=0.9, val=0.5, variant="t50"))  # best on test
        rows.append(_row("ddpm", "head", 0.1, seed, dice=0.7, val=0.8, variant="t150"))  # best on validation
    rows.append(_row("mdm", "head", 0.1, 0, dice=0.8, val=0.8))
    selected, choice = select_on_validation(rows)
    assert choice == {("ddpm", "head", 0.1): "t150"}
    assert len(selected) == 2 and all(r["variant"] == "val-best" and r["dice"] == 0.7 for r in selected)
    text = markdown_report(rows, {"profile": "unit"})
    assert "DDPM [val-best]" in text and "ddpm/head 10%: t150" in text
    # timesteps are compared on the seeds they all have: one lucky seed of an unfinished timestep does not win
    rows = [_row("ddpm", "head", 0.1, s, dice=0.7, val=v, variant="t50") for s, v in ((0, 0.80), (1, 0.82), (2, 0.84))]
    rows.append(_row("ddpm", "head", 0.1, 2, dice=0.7, val=0.83, variant="t150"))
    assert select_on_validation(rows)[1] == {("ddpm", "head", 0.1): "t50"}
    rows[-1]["seed"] = 3  # no seed in common: no choice
    assert select_on_validation(rows) == ([], {})


def test_markdown_paper_layout():
    rows = [_row("mdm", "head", f, s, 0.8 + 0.01 * s) for f in (0.1, 1.0) for s in range(3)]
    text = markdown_report(rows, {"profile": "unit", "command": "python -m mdm_med.benchmark x", "data_dir": "/d",
                                  "machine": "m", "elapsed_s": 5})
    header = next(line for line in text.splitlines() if line.startswith("| Method | Protocol | 100%"))
    assert header.index("100% (77 img)") < header.index("10% (8 img)")  # largest fraction first, as the paper
    row = next(line for line in text.splitlines() if line.startswith("| MDM | head | 81.00 ± 1.00 / "))
    iou = sum(d / (2 - d) for d in (0.80, 0.81, 0.82)) / 3  # per-seed paper IoU, then mean over seeds
    assert f"{100 * iou:.2f}" in row
    assert "python -m mdm_med.benchmark x" in text and "Data: `/d`" in text
    assert not math.isnan(aggregate(rows)[0]["dice_std"])
    assert "invocation(s)" not in text
    runs = [{"started_at": "2026-01-02 10:00:00", "elapsed_s": 3600, "ended": False},
            {"started_at": "2026-01-02 12:00:00", "elapsed_s": 1830, "ended": True}]
    resumed = markdown_report(rows, {"invocations": runs})
    line = next(line for line in resumed.splitlines() if "invocation(s)" in line)
    assert "of the 2 invocation(s)" in line and "1h 30m 30s" in line and "1 stopped before their end" in line
    assert "not the whole benchmark" not in line
    rows[0]["finished_at"] = "2026-01-01 23:00:00"  # a result older than the log: the sum is not the whole run
    line = next(line for line in markdown_report(rows, {"invocations": runs}).splitlines() if "invocation(s)" in line)
    assert "not the whole benchmark: 1 of the results" in line


def test_combine_results_of_separate_runs(tmp_path, capsys):
    from mdm_med.benchmark.combine import main as report_main
    from mdm_med.benchmark.report import read_csv, write_csv

    def cell_rows(method, protocol, seeds, dice):
        return [_row(method, protocol, 0.1, s, dice + 0.01 * s, val=0.8, cell=f"{method}__{protocol}__f0.1__s{s}",
                     pretrain_wall_s=100.0 if method != "scratch" else None) for s in seeds]

    a, b = tmp_path / "a.csv", tmp_path / "b.csv"
    write_csv(cell_rows("scratch", "finetune", (0, 1), 0.7) + cell_rows("mdm", "finetune", (0,), 0.85), a)
    write_csv(cell_rows("mdm", "finetune", (0, 1), 0.85) + cell_rows("mdm", "head", (0, 1), 0.75), b)
    rows = read_csv(a)
    assert rows[0]["seed"] == 0 and rows[0]["label_fraction"] == 0.1 and rows[0]["pretrain_wall_s"] is None
    assert report_main(["--out", str(tmp_path / "all"), "--method-order", "mdm", str(a), str(b)]) == 0
    merged = read_csv(tmp_path / "all" / "results.csv")
    # mdm__finetune__f0.1__s0 is in both files with the same result: kept once; mdm first, head before finetune
    assert [r["cell"] for r in merged] == ["mdm__head__f0.1__s0", "mdm__head__f0.1__s1", "mdm__finetune__f0.1__s0",
                                           "mdm__finetune__f0.1__s1", "scratch__finetune__f0.1__s0",
                                           "scratch__finetune__f0.1__s1"]
    text = (tmp_path / "all" / "results.md").read_text()
    assert str(a) in text and str(b) in text and "| MDM | finetune | 85.50 ± 0.71" in text
    assert (tmp_path / "all" / "plot.png").stat().st_size > 0

    # the same cell with a different result (two different runs) is refused, naming the cell and both files
    c = tmp_path / "c.csv"
    write_csv(cell_rows("mdm", "finetune", (1,), 0.5), c)
    assert report_main(["--out", str(tmp_path / "bad"), str(b), str(c)]) == 2
    err = capsys.readouterr().err
    assert "mdm__finetune__f0.1__s1" in err and str(c) in err and not (tmp_path / "bad" / "results.md").exists()
    # seeds of one group made with other settings, or another dataset, are not averaged (older files: unchecked)
    d, e, f = tmp_path / "d.csv", tmp_path / "e.csv", tmp_path / "f.csv"
    def tagged(rows, settings, dataset):
        return [{**r, "settings_fingerprint": settings, "dataset": dataset} for r in rows]

    write_csv(tagged(cell_rows("mdm", "finetune", (0, 1), 0.85), "s1", "glas"), d)
    write_csv(tagged(cell_rows("mdm", "finetune", (2,), 0.8), "s2", "glas"), e)
    write_csv(tagged(cell_rows("mdm", "head", (0,), 0.8), "s1", "hippocampus"), f)
    for other, says in ((e, "other settings (s2 vs s1, cell mdm__finetune__f0.1__s2)"),
                        (f, "other datasets (hippocampus vs glas")):
        assert report_main(["--out", str(tmp_path / "bad"), str(d), str(other)]) == 2
        err = capsys.readouterr().err
        assert says in err and str(other) in err and str(d) in err
    assert report_main(["--out", str(tmp_path / "ok"), str(d), str(a)]) == 0  # a.csv predates the columns
    capsys.readouterr()
    # another labelled subset at one fraction, or another test set, is not one table
    g = tmp_path / "g.csv"
    write_csv([{**r, "labelled_images": 4} for r in cell_rows("scratch", "finetune", (2,), 0.7)], g)
    assert report_main(["--out", str(tmp_path / "bad"), str(a), str(g)]) == 2
    assert "other labelled subsets (4 vs 8, cell scratch__finetune__f0.1__s2)" in capsys.readouterr().err
    write_csv([{**r, "test_images": 20} for r in cell_rows("scratch", "finetune", (2,), 0.7)], g)
    write_csv([{**r, "test_images": 60} for r in cell_rows("scratch", "finetune", (0,), 0.7)], tmp_path / "h.csv")
    assert report_main(["--out", str(tmp_path / "bad"), str(tmp_path / "h.csv"), str(g)]) == 2
    assert "other test sets (20 vs 60" in capsys.readouterr().err
    # a variant that reuses another method's pretraining (pretrain_method) does not count that pretraining twice
    variant = [{**r, "method": "mdm_slow", "cell": r["cell"].replace("mdm", "mdm_slow"), "pretrain_method": "mdm"}
               for r in cell_rows("mdm", "finetune", (0,), 0.8)]
    write_csv(cell_rows("mdm", "finetune", (0,), 0.85) + variant, g)
    assert report_main(["--out", str(tmp_path / "variant"), str(g)]) == 0
    line = next(x for x in (tmp_path / "variant" / "results.md").read_text().splitlines() if "- Pretraining" in x)
    assert line.endswith(": mdm 1m 40s"), line
    # a file that is not a results table, an empty one, a missing one
    (tmp_path / "x.csv").write_text("a,b\n1,2\n")
    write_csv([], tmp_path / "empty.csv")
    for bad, says in (("x.csv", "not a benchmark results.csv"), ("empty.csv", "no result rows"),
                      ("missing.csv", "no such results file")):
        assert report_main(["--out", str(tmp_path / "bad"), str(tmp_path / bad)]) == 2
        err = capsys.readouterr().err
        assert bad in err and says in err


# ----------------------------------------------------------------------------------------------------------------
# end to end on the real bundle (tiny synthetic data)
# ----------------------------------------------------------------------------------------------------------------


def _bundle_mentions(path) -> list[str]:
    """Records in the real bundle's runs/ and models/ that mention ``path`` (a cell that wrote there would leave its
    data dir in run_config.json or models/model_settings.json). Robust to other jobs using the bundle meanwhile."""
    hits = []
    for f in [*BUNDLE.glob("runs/*/*.json"), *BUNDLE.glob("models/*.json")]:
        try:
            if str(path) in f.read_text(errors="replace"):
                hits.append(str(f))
        except OSError:
            pass
    return hits


@pytest.mark.slow
def test_end_to_end_and_restart(tmp_path, capsys):
    from mdm_med.data.synthetic import generate_glas_demo

    assert default_bundle_dir() == BUNDLE.resolve()
    data = generate_glas_demo(tmp_path / "glas", num_train=10, num_test=3, size=(64, 96))
    out = tmp_path / "out"
    argv = ["--config", str(CPU_PROFILE), "--data-dir", str(data), "--out", str(out), "--methods", "mdm", "scratch",
            "--fractions", "1.0", "--seeds", "0", "--bundle-root", str(tmp_path / "bundle_root"), "--jobs", "2",
            "--set", *TINY]
    assert main(argv) == 0  # two cells at once: scratch runs beside MDM's pretraining
    log = capsys.readouterr().out
    assert "time left" in log and "ran 4, re-scored 0, skipped 0" in log

    with open(out / "results.csv") as f:
        rows = list(csv.DictReader(f))
    assert sorted((r["method"], r["protocol"]) for r in rows) == [
        ("mdm", "finetune"), ("mdm", "head"), ("scratch", "finetune")]
    for r in rows:
        assert r["label_fraction"] == "1.0" and r["seed"] == "0" and r["labelled_images"] == "8"
        assert 0.0 <= float(r["dice"]) <= 1.0 and r["paper_iou"] != "" and r["object_f1"] != ""
        assert r["val_dice"] != "" and float(r["seg_wall_s"]) > 0
        assert r["dataset"] == "glas" and len(r["settings_fingerprint"]) == 16
        assert (r["pretrain_wall_s"] != "") == (r["method"] == "mdm")
    assert {r["seg_mode"] for r in rows if r["method"] == "scratch"} == {"scratch"}
    assert {json.loads(p.read_text())["cell_threads"] for p in (out / "results").glob("*.json")} == {cell_threads(2)}
    md = (out / "results.md").read_text()
    for label in ("| MDM (SSIM) | head |", "| MDM (SSIM) | finetune |", "| U-Net from scratch | finetune |"):
        assert label in md
    assert "python -m mdm_med.benchmark --config" in md and str(data) in md
    assert "Cells run at once by this invocation: 2" in md and "Wall clock of the 1 invocation(s)" in md
    assert "object F1 / Dice and val Dice in %" in md and "numeric order (the paper's rule)" in md
    assert (out / "plot.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # pretraining happened once, into the benchmark's folder; nothing went into the bundle's runs/ or models/
    assert (out / "pretrain" / "mdm" / "pretrained.pt").is_file()
    pre = json.loads((out / "pretrain" / "mdm" / "result.json").read_text())
    assert len(pre["weights_sha256"]) == 64
    assert [json.loads(p.read_text())["pretrained_with"]["weights_sha256"] for p in out.glob("results/mdm__*.json")] \
        == [pre["weights_sha256"]] * 2
    assert not (out / "pretrain" / "scratch").exists()
    assert _bundle_mentions(tmp_path) == []
    assert not (tmp_path / "bundle_root" / "models").exists()
    for cfg in out.glob("cells/*/run_config.json"):
        assert json.loads(cfg.read_text())["settings"]["output_dir"].startswith(str(out / "cells"))
    # each cell holds its overrides and a command that reproduces it
    cell = out / "cells" / "scratch__finetune__f1__s0"
    assert "monai.bundle run" in (cell / "command.sh").read_text()
    assert json.loads((cell / "overrides.json").read_text())["seg_mode"] == "scratch"

    # restart: every cell is finished, nothing is trained again and no result file is rewritten
    results = sorted((out / "results").glob("*.json"))
    stamps = {p: p.stat().st_mtime_ns for p in results + [out / "pretrain" / "mdm" / "result.json"]}
    logs = {p: p.stat().st_size for p in out.glob("cells/*/log.txt")}
    assert main(argv) == 0
    log = capsys.readouterr().out
    assert "ran 0, re-scored 0, skipped 4 finished" in log and "starting" not in log
    md = (out / "results.md").read_text()  # an invocation that ran nothing reports no time of its own
    assert "this invocation:" not in md and "Wall clock of the 1 invocation(s)" in md
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps
    assert {p: p.stat().st_size for p in logs} == logs
    with open(out / "results.csv") as f:
        assert len(list(csv.DictReader(f))) == 3

    # a restart with other settings refuses to mix results
    assert main([*argv, "max_epochs=2"]) == 2
    assert "other settings" in capsys.readouterr().err

    # other test-only settings (mask clean-up) re-score the saved models: nothing is trained again
    clean = ["fill_holes=true", "min_object_size=40"]
    before = {p.name: json.loads(p.read_text()) for p in results}
    assert main([*argv, *clean]) == 0
    log = capsys.readouterr().out
    assert "ran 0, re-scored 3, skipped 1 finished" in log and "starting" not in log
    assert [r["rescored"] for r in read_invocations(out)] == [0, 3]  # the restart that ran nothing left no record
    for p in results:
        old, new = before[p.name], json.loads(p.read_text())
        assert new["seg_wall_s"] == old["seg_wall_s"] and new["val_dice"] == old["val_dice"]
        assert new["evaluation_fingerprint"] != old["evaluation_fingerprint"] and new["eval_wall_s"] > 0
        assert new["settings_fingerprint"] != old["settings_fingerprint"]  # the scores are of other settings
        assert "fill_holes=true" not in (out / "cells" / old["cell"] / "command.sh").read_text()
        assert (out / "cells" / old["cell"] / "evaluate_overrides.json").is_file()
    assert json.loads((cell / "evaluate_overrides.json").read_text())["min_object_size"] == 40
    assert main([*argv, *clean]) == 0 and "re-scored 0, skipped 4" in capsys.readouterr().out
    assert main([*argv, *clean, "--report-only"]) == 0 and "report:" in capsys.readouterr().out
    assert main([*argv, "--report-only"]) == 2  # the scores on disk are not those of these test-only settings
    assert "run without --report-only" in capsys.readouterr().err
    # ... and a re-scored cell equals the same cell trained afresh with those settings
    fresh = tmp_path / "fresh"
    fresh_argv = [*argv[:5], str(fresh), *argv[6:]]
    fresh_argv[fresh_argv.index("--methods") + 1:fresh_argv.index("--methods") + 3] = ["scratch"]
    assert main([*fresh_argv, *clean]) == 0
    capsys.readouterr()
    again = json.loads((fresh / "results" / "scratch__finetune__f1__s0.json").read_text())
    rescored = json.loads((out / "results" / "scratch__finetune__f1__s0.json").read_text())
    assert again["dice"] == rescored["dice"] and again["object_f1"] == rescored["object_f1"]


@pytest.mark.slow
def test_end_to_end_on_the_hippocampus_bundle(tmp_path, capsys):
    """The 3-D bundle through the same runner: pretraining, a fine-tuning and a head cell, per-class Dice kept."""
    from mdm_med.data.synthetic_volumes import generate_hippocampus_demo

    data = generate_hippocampus_demo(tmp_path / "hippo", num_cases=12, shape=(24, 24, 24))
    out = tmp_path / "out"
    argv = ["--config", str(HIPPO_PROFILE), "--data-dir", str(data), "--out", str(out), "--methods", "mdm",
            "--fractions", "1.0", "--seeds", "0", "--set", "pretrain_iterations=2", "epoch_length=2", "max_epochs=1",
            "val_interval=1", "crop_size=16", "preset=tiny"]
    assert main(argv) == 0
    assert "ran 3, re-scored 0, skipped 0" in capsys.readouterr().out
    with open(out / "results.csv") as f:
        rows = {r["protocol"]: r for r in csv.DictReader(f)}
    assert sorted(rows) == ["finetune", "head"]
    split = json.loads((out / "cells" / "mdm__finetune__f1__s0" / "run_config.json").read_text())["settings"]
    for r in rows.values():
        assert 0.0 <= float(r["dice"]) <= 1.0 and r["iou"] != "" and r["paper_iou"] == "" and r["object_f1"] == ""
        assert int(r["labelled_images"]) == len(split["labelled_images"]) > 0
        result = json.loads((out / "results" / f"{r['cell']}.json").read_text())
        assert set(result["test_metrics"]) >= {"test_mean_dice", "test_dice_anterior", "test_dice_posterior"}
        assert float(r["dice_anterior"]) == result["test_metrics"]["test_dice_anterior"]  # a CSV column per class
        assert min(result["dice_anterior"], result["dice_posterior"]) <= result["dice"] <= max(
            result["dice_anterior"], result["dice_posterior"])
        assert not set(split["test_images"]) & set(split["labelled_images"])
    from mdm_med.benchmark.report import read_csv

    assert all(isinstance(r["dice_posterior"], float) for r in read_csv(out / "results.csv"))
    assert "mdm_hippocampus" in (out / "cells" / "mdm__head__f1__s0" / "command.sh").read_text()
    md = (out / "results.md").read_text()
    assert "mean over test images of the foreground classes' IoU" in md and "GlaS" not in md
    assert "| Dice anterior | Dice posterior |" in md
    assert "object F1" not in md and "paper's rule" not in md  # GlaS wording stays with GlaS
