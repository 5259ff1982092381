"""Data-parallel training on CPU (gloo, loopback only).

1. Two DDP processes with batch b each end with the same weights as one process with batch 2b: DDP averages the
   gradients, and the fine-tuning U-Net has no BatchNorm, so the steps agree up to float rounding.
2. The bundle's configs/multi_gpu_train.json merged on train.json runs under torchrun with 2 processes.
"""

import json
import os
import socket
import subprocess
import sys

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = os.path.join(ROOT, "bundles", "mdm_glas", "configs")
STEPS, GLOBAL_BATCH, SIZE, LR = 3, 4, 32, 0.05


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _loopback_env(port: int) -> dict:
    return {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "GLOO_SOCKET_IFNAME": "lo"}


def _setup():
    """Network, loss and the fixed global batches, identical in every process."""
    from monai.losses import DiceCELoss

    from mdm_med.networks import build_segmenter

    torch.manual_seed(0)
    net = build_segmenter("finetune", preset="tiny", num_classes=2)
    gen = torch.Generator().manual_seed(1)
    batches = [(torch.rand(GLOBAL_BATCH, 3, SIZE, SIZE, generator=gen) * 2 - 1,
                torch.randint(0, 2, (GLOBAL_BATCH, 1, SIZE, SIZE), generator=gen)) for _ in range(STEPS)]
    return net, DiceCELoss(to_onehot_y=True, softmax=True), batches


def _train(net, loss_fn, batches, rank=0, world=1):
    """STEPS of SGD; each process takes its contiguous share of every global batch."""
    opt = torch.optim.SGD([p for p in net.parameters() if p.requires_grad], lr=LR)
    share = GLOBAL_BATCH // world
    for x, y in batches:
        x, y = x[rank * share:(rank + 1) * share], y[rank * share:(rank + 1) * share]
        opt.zero_grad()
        loss_fn(net(x), y).backward()
        opt.step()


def _worker(rank, world, port, out):
    os.environ.update(_loopback_env(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        net, loss_fn, batches = _setup()
        ddp = torch.nn.parallel.DistributedDataParallel(net)
        _train(ddp, loss_fn, batches, rank, world)
        torch.save(net.state_dict(), os.path.join(out, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def test_ddp_two_processes_match_one_process_with_the_global_batch(tmp_path):
    world = 2
    mp.spawn(_worker, args=(world, _free_port(), str(tmp_path)), nprocs=world, join=True)
    net, loss_fn, batches = _setup()
    start = {k: v.clone() for k, v in net.state_dict().items()}
    _train(net, loss_fn, batches)
    single = net.state_dict()
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(world)]
    assert set(ranks[0]) == set(single)  # DDP's wrapper leaves the module's own keys unchanged
    moved = max((single[k] - start[k]).abs().max().item() for k in single)
    assert moved > 1e-3, "training did not change the weights; the comparison would prove nothing"
    for k in single:
        torch.testing.assert_close(ranks[0][k], ranks[1][k], rtol=0, atol=0)  # replicas stay identical
        torch.testing.assert_close(ranks[0][k], single[k], rtol=1e-4, atol=1e-5, msg=f"{k} differs")


def test_bundle_multi_gpu_config_runs_under_torchrun(tmp_path, tiny_glas):
    bundle = tmp_path / "bundle"
    configs = [os.path.join(CONFIGS, "train.json"), os.path.join(CONFIGS, "multi_gpu_train.json")]
    overrides = dict(bundle_root=str(bundle), dataset_dir=tiny_glas, preset="tiny", pretrain_iterations=4,
                     epoch_length=2, max_epochs=1, num_val=2, image_scale=1.0, crop_size=32, patch_size=4,
                     pretrain_batch_size=4, seg_batch_size=2, label_fraction=1.0)
    port = _free_port()
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_addr=127.0.0.1",
           f"--master_port={port}", "-m", "monai.bundle", "run", "--config_file", json.dumps(configs)]
    for k, v in overrides.items():
        cmd += [f"--{k}", str(v)]
    env = {**os.environ, **_loopback_env(port), "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([ROOT] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p])}
    try:
        proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=420,
                              start_new_session=True)
    except subprocess.TimeoutExpired:
        pytest.fail("torchrun of the multi-GPU bundle config did not finish in 420 s")
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-4000:]
    run_dir = bundle / "runs" / "glas_finetune_1.0"
    record = json.loads((run_dir / "run_config.json").read_text())["settings"]
    assert record["world_size"] == 2 and record["seg_batch_size_per_process"] == 1
    assert record["pretrain_batch_size_per_process"] == 2
    metrics = json.loads((run_dir / "test_metrics.json").read_text())
    assert 0.0 <= metrics["test_mean_dice"] <= 1.0 and metrics["test_images"] == 3
    assert (bundle / "models" / "model.pt").is_file() and (bundle / "runs" / "glas" / "pretrained.pt").is_file()
    # the published weights load into the plain network (no DDP "module." prefix)
    state = torch.load(bundle / "models" / "model.pt", weights_only=True)
    assert not any(k.startswith("module.") for k in state)
    assert log.count("Metrics -- test_mean_dice") == 1  # statistics are logged by rank 0 only
