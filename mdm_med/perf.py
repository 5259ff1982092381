"""Performance benchmark: every figure is a ratio against a baseline that the same run measures itself.

    python -m mdm_med.perf [--quick] [--out benchmarks/results/perf_cpu.md] [--data-dir ../shared/data/glas]
                           [--device cpu|cuda] [--preset cpu|paper] [--bf16] [--channels-last] [--compile]

Sections (``--sections``, default all):

1. ``mask``: ``PatchMasking.add_noise`` vs per-sample Python loops of the same rule (the reference code's approach).
2. ``step``: one pretraining step (forward, SSIM loss, backward, AdamW) of ``build_unet(preset)`` vs MONAI's
   ``DiffusionModelUNet`` with the same widths, depth and attention (FLOPs counted for both), layout / precision /
   compile / batch variants, and achieved GFLOP/s as a share of the machine's matmul peak measured in the same run.
3. ``data``: the bundle's pretraining transform chain through MONAI ``CacheDataset`` + ``DataLoader``: the share of
   the training loop spent waiting for batches.
4. ``head``: ``PixelMLPHead.forward`` (per-tap first layer) vs ``forward_materialized`` on the paper-size feature
   stack: training-step peak memory, time and logits difference. On CPU each variant runs in a fresh subprocess
   and its peak is the rise of ``ru_maxrss``; on CUDA ``torch.cuda.max_memory_allocated``.
5. ``sw``: sliding-window inference of the segmentation network on a GlaS-size image, at the bundle's image scale
   and at full resolution.

The Markdown report (command, machine, versions, date, load, one summary table and one table per section) is
written atomically to ``--out``.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import math
import os
import platform
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from mdm_med.corruption import PatchMasking
from mdm_med.losses import SSIMLoss
from mdm_med.networks.features import PixelMLPHead, sample_norm, upsample
from mdm_med.networks.unet import PRESETS, build_unet

REPO_ROOT = Path(__file__).resolve().parents[1]
BUNDLE_TRAIN = REPO_ROOT / "bundles" / "mdm_glas" / "configs" / "train.json"
GLAS_SIZE = (775, 522)  # width x height of a GlaS image; MONAI's PIL reader gives (C, W, H)
PAPER_HEAD_TAPS = ((384, 64), (384, 64), (384, 64), (384, 128), (192, 128))  # (channels, side) of taps 8-12

# Per-preset profile: pretraining step input, bundle data settings, sliding-window ROI.
PROFILES = {
    "cpu": dict(batch=16, size=64, crop=64, image_scale=0.25, patch=4, roi=64),
    "paper": dict(batch=8, size=256, crop=256, image_scale=1.0, patch=8, roi=256),
}

TARGETS = {"mask": 50.0, "step_vs_monai": 1.3, "peak_share": 0.75, "data_wait": 0.05, "head_diff": 1e-4,
           "head_mem": 1 / 8}


@dataclass
class Config:
    """Sizes of one run (full or ``--quick``)."""

    preset: str
    device: torch.device
    quick: bool
    bf16: bool
    channels_last: bool
    compile: bool
    num_workers: int
    data_dir: str
    mask_batch: int = 64
    mask_size: int = 256
    mask_reps: int = 5
    batch: int = 16
    size: int = 64
    step_reps: int = 4
    big_batches: tuple[int, ...] = (32,)
    mm_size: int = 4096
    crop: int = 64
    image_scale: float = 0.25
    patch: int = 4
    data_items: int | None = None
    data_steps: int = 8
    head_taps: tuple[tuple[int, int], ...] = PAPER_HEAD_TAPS
    head_size: int = 256
    head_batch: int = 2
    head_reps: int = 2
    roi: int = 64
    sw_full: tuple[int, int] = GLAS_SIZE
    sw_reps: int = 3


def make_config(args: argparse.Namespace) -> Config:
    device = torch.device(args.device)
    prof = PROFILES[args.preset]
    bf16 = device.type == "cuda" if args.bf16 is None else args.bf16
    cfg = Config(preset=args.preset, device=device, quick=args.quick, bf16=bf16, channels_last=args.channels_last,
                 compile=args.compile, num_workers=args.num_workers if args.num_workers is not None else
                 (0 if device.type == "cpu" else 4), data_dir=args.data_dir,
                 batch=prof["batch"], size=prof["size"], crop=prof["crop"], image_scale=prof["image_scale"],
                 patch=prof["patch"], roi=prof["roi"], big_batches=(2 * prof["batch"],))
    if device.type == "cuda":
        cfg = replace(cfg, mm_size=8192, mask_reps=20, step_reps=5, head_reps=5, sw_reps=3)
    if args.quick:
        size = max(16, 2 ** (len(PRESETS[args.preset]["channel_mult"]) - 1))  # smallest size the U-Net takes
        cfg = replace(cfg, mask_batch=8, mask_size=64, mask_reps=3, batch=2, size=size, step_reps=1, big_batches=(4,),
                      mm_size=1024, crop=32, data_items=6, data_steps=3,
                      head_taps=tuple((c // 8, s // 4) for c, s in PAPER_HEAD_TAPS), head_size=64, head_reps=1,
                      roi=32, sw_full=(96, 64), sw_reps=1)
    if args.batch:
        cfg = replace(cfg, batch=args.batch, big_batches=(2 * args.batch,))
    return cfg


# --------------------------------------------------------------------------------------------------- helpers


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _time(fn, device: torch.device, reps: int, warmup: int = 1) -> list[float]:
    """Wall seconds of ``reps`` calls of ``fn`` after ``warmup`` calls."""
    for _ in range(warmup):
        fn()
    _sync(device)
    out = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        _sync(device)
        out.append(time.perf_counter() - t0)
    return out


def _autocast(device: torch.device, bf16: bool):
    return torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()


def _fmt(x, digits: int = 3) -> str:
    if x is None:
        return "-"
    if not isinstance(x, (int, float)):
        return str(x)
    if x == 0:
        return "0"
    if abs(x) >= 1000 or abs(x) < 1e-3:
        return f"{x:.{digits - 1}e}"
    return f"{x:.{digits}g}"


def _table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_fmt(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _met(ok: bool | None) -> str:
    return "-" if ok is None else ("yes" if ok else "**no**")


def matmul_peak(device: torch.device, dtype: torch.dtype, n: int, reps: int = 3, warmup: int = 1) -> float:
    """Best GFLOP/s of an n x n x n ``torch.mm`` with all threads (the machine's practical peak)."""
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    inner = 10 if device.type == "cuda" else 1

    def run():
        for _ in range(inner):
            torch.mm(a, b)

    best = min(_time(run, device, reps, warmup=warmup))
    return 2 * n**3 * inner / best / 1e9


# --------------------------------------------------------------------------------------------- 1. masking


def loop_mask_patchwise(x0: torch.Tensor, timesteps: torch.Tensor, patch: int, num_timesteps: int = 1000,
                        mask_value: float = 0.0) -> torch.Tensor:
    """The reference code's way: per sample a numpy permutation, then every dropped patch blanked one by one."""
    out = x0.clone()
    _, _, h, w = x0.shape
    gw = w // patch
    num_patches = (h // patch) * gw
    for i in range(x0.shape[0]):
        keep = int(num_patches * (1 - int(timesteps[i]) / num_timesteps))
        for idx in np.random.permutation(num_patches)[keep:]:
            r, c = divmod(int(idx), gw)
            out[i, :, r * patch:(r + 1) * patch, c * patch:(c + 1) * patch] = mask_value
    return out


def loop_mask_per_sample(x0: torch.Tensor, timesteps: torch.Tensor, patch: int, num_timesteps: int = 1000,
                         mask_value: float = 0.0) -> torch.Tensor:
    """A stronger loop: per sample a numpy permutation and a numpy pixel mask (np.kron), applied in one multiply."""
    b, _, h, w = x0.shape
    gh, gw = h // patch, w // patch
    masks = []
    for i in range(b):
        keep = int(gh * gw * (1 - int(timesteps[i]) / num_timesteps))
        grid = np.zeros(gh * gw, dtype=np.float32)
        grid[np.random.permutation(gh * gw)[:keep]] = 1.0
        masks.append(np.kron(grid.reshape(gh, gw), np.ones((patch, patch), dtype=np.float32)))
    keep = torch.from_numpy(np.stack(masks)[:, None]).to(x0.device)
    return x0 * keep + mask_value * (1 - keep)


def masked_patch_counts(x: torch.Tensor, patch: int, mask_value: float = 0.0) -> torch.Tensor:
    """(B,) number of patches whose pixels all equal ``mask_value`` in every channel."""
    b, c, h, w = x.shape
    blocks = x.reshape(b, c, h // patch, patch, w // patch, patch)
    return (blocks == mask_value).all(dim=(1, 3, 5)).flatten(1).sum(1)


def bench_masking(cfg: Config) -> dict:
    dev, p, size, b = cfg.device, 8, cfg.mask_size, cfg.mask_batch
    proc = PatchMasking(p)
    T = proc.num_train_timesteps
    num_patches = (size // p) ** 2
    gen = torch.Generator().manual_seed(0)
    x0 = (torch.rand(b, 3, size, size, generator=gen) * 2 - 1).to(dev)  # never exactly 0: a 0 patch is masked
    t = proc.sample_timesteps(b, generator=gen).to(dev)
    np.random.seed(0)

    # the rule: int(L * (1 - t / T)) kept, for every t
    rule_ok = proc.num_keep(torch.arange(T), num_patches).tolist() == [int(num_patches * (1 - s / T)) for s in range(T)]
    expected = num_patches - proc.num_keep(t.cpu(), num_patches)
    outs = {"mdm_med add_noise": proc.add_noise(x0, t, generator=torch.Generator(dev).manual_seed(1)),
            "loop, patch by patch": loop_mask_patchwise(x0, t, p, T),
            "loop, per-sample mask": loop_mask_per_sample(x0, t, p, T)}
    counts = {k: masked_patch_counts(v, p).cpu() for k, v in outs.items()}
    counts_ok = all(torch.equal(c, expected) for c in counts.values())
    # add_noise must equal the pixel-mask formula with the same random draw
    keep = proc.keep_mask(x0, t, generator=torch.Generator(dev).manual_seed(1))
    formula_ok = torch.equal(outs["mdm_med add_noise"], x0 * keep + proc.mask_value * (1 - keep))

    gdev = torch.Generator(dev).manual_seed(2)
    fns = {"mdm_med add_noise": lambda: proc.add_noise(x0, t, generator=gdev),
           "loop, patch by patch": lambda: loop_mask_patchwise(x0, t, p, T),
           "loop, per-sample mask": lambda: loop_mask_per_sample(x0, t, p, T)}
    times = {}
    for k, fn in fns.items():
        reps = cfg.mask_reps if k == "mdm_med add_noise" else 2  # the loops are slow (thousands of tiny writes)
        times[k] = min(_time(fn, dev, reps))
    # the same masking written into an existing buffer: what add_noise costs without a fresh output allocation
    # (on CPU, first-touch page faults of a new 50 MB tensor can cost more than the masking itself)
    buf, zero = torch.empty_like(x0), torch.zeros((), device=dev)
    kernel = min(_time(lambda: torch.where(proc._pixel_keep(x0, t, gdev), x0, zero, out=buf), dev, cfg.mask_reps))
    ours, loop = times["mdm_med add_noise"], times["loop, patch by patch"]
    ratio = loop / ours
    rows = [[k, v * 1e3, times[k] / ours if k != "mdm_med add_noise" else 1.0,
             f"{counts[k].sum().item()} / {expected.sum().item()}"] for k, v in times.items()]
    rows.append(["add_noise's mask + where into a reused output buffer", kernel * 1e3, kernel / ours, "-"])
    detail = (f"Batch {b} x 3 x {size} x {size}, patch {p} (L = {num_patches}), t ~ U{{0..{T - 1}}}, device {dev}.\n\n"
              + _table(["implementation", "ms / batch (best)", "time / add_noise",
                        "masked patches (got / rule)"], rows)
              + f"\n\nChecks: keep rule `int(L * (1 - t/T))` equal for all {T} t: **{rule_ok}**; per-sample masked "
              f"patch counts equal for all three: **{counts_ok}**; add_noise == x0 * keep_mask + v (1 - keep_mask) "
              f"with the same draw: **{formula_ok}**. The reused-buffer row (same work, no new output tensor) is the "
              f"masking itself: {loop / kernel:.0f}x faster than the patch loop.")
    summary = [["1. masking: add_noise vs reference loop (patch by patch)", f"{ours * 1e3:.2f} ms",
                f"{loop * 1e3:.1f} ms", f"{ratio:.1f}x faster", f">= {TARGETS['mask']:.0f}x",
                _met(ratio >= TARGETS["mask"])],
               ["1. masking, output buffer reused (no fresh B x 3 x H x W allocation)", f"{kernel * 1e3:.2f} ms",
                f"{loop * 1e3:.1f} ms", f"{loop / kernel:.1f}x faster", f">= {TARGETS['mask']:.0f}x",
                _met(loop / kernel >= TARGETS["mask"])]]
    return dict(summary=summary, detail=detail, ok=rule_ok and counts_ok and formula_ok, ratio=ratio,
                counts_ok=counts_ok, rule_ok=rule_ok, formula_ok=formula_ok)


# ----------------------------------------------------------------------------------------- 2. pretraining step


def monai_twin(preset: str):
    """MONAI ``DiffusionModelUNet`` with the preset's widths, depth, attention and resblock up/down."""
    from monai.networks.nets import DiffusionModelUNet

    p = PRESETS[preset]
    return DiffusionModelUNet(
        spatial_dims=2, in_channels=3, out_channels=3, num_res_blocks=p["num_res_blocks"],
        channels=[p["base_channels"] * m for m in p["channel_mult"]], attention_levels=list(p["attention_levels"]),
        norm_num_groups=32, resblock_updown=True, num_head_channels=p["head_channels"])


@dataclass
class Variant:
    name: str
    model: str = "ours"  # "ours" or "monai"
    batch: int = 16
    channels_last: bool = False
    bf16: bool = False
    compile: bool = False


def _build(v: Variant, cfg: Config):
    torch.manual_seed(0)
    with cfg.device:  # parameters are created on the device (the paper-size model initialises slowly on a CPU)
        if v.model == "monai":
            net = monai_twin(cfg.preset)
            call = lambda m, x, t: m(x, timesteps=t)  # noqa: E731
        else:
            net = build_unet(cfg.preset)
            call = lambda m, x, t: m(x, t)  # noqa: E731
    net = net.to(cfg.device)
    if v.channels_last:
        net = net.to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(net.parameters(), lr=1e-4, weight_decay=0.0)
    fwd = torch.compile(net) if v.compile else net
    gen = torch.Generator().manual_seed(1)
    x = (torch.rand(v.batch, 3, cfg.size, cfg.size, generator=gen) * 2 - 1).to(cfg.device)
    t = torch.randint(0, 1000, (v.batch,), generator=gen).to(cfg.device)
    xin = x.contiguous(memory_format=torch.channels_last) if v.channels_last else x
    loss_fn = SSIMLoss()

    def step():
        with _autocast(cfg.device, v.bf16):
            out = call(fwd, xin, t)
        loss = loss_fn(out, x)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return net, step


def count_step_flops(model_kind: str, cfg: Config, batch: int) -> float:
    """FLOPs of forward + SSIM loss + backward (FlopCounterMode: matmuls, convolutions, attention)."""
    from torch.utils.flop_counter import FlopCounterMode

    torch.manual_seed(0)
    with cfg.device:
        net = (monai_twin(cfg.preset) if model_kind == "monai" else build_unet(cfg.preset)).to(cfg.device)
    x = torch.rand(batch, 3, cfg.size, cfg.size, device=cfg.device) * 2 - 1
    t = torch.randint(0, 1000, (batch,), device=cfg.device)
    with FlopCounterMode(display=False) as counter:
        out = net(x, timesteps=t) if model_kind == "monai" else net(x, t)
        SSIMLoss()(out, x).backward()
    return float(counter.get_total_flops())


def _step_variants(cfg: Config) -> list[Variant]:
    b, cl, bf = cfg.batch, cfg.channels_last, cfg.bf16
    base = Variant("", batch=b, channels_last=cl, bf16=bf)
    prec, lay = ("bf16" if bf else "fp32"), ("channels_last" if cl else "NCHW")
    other_prec, other_lay = ("fp32" if bf else "bf16 autocast"), ("NCHW" if cl else "channels_last")
    vs = [replace(base, name=f"MONAI DiffusionModelUNet ({prec}, {lay})", model="monai"),
          replace(base, name=f"mdm_med TimestepUNet ({prec}, {lay})"),
          replace(base, name=f"MONAI + {other_lay}", model="monai", channels_last=not cl),
          replace(base, name=f"mdm_med + {other_lay}", channels_last=not cl),
          replace(base, name=f"MONAI + {other_prec}", model="monai", bf16=not bf),
          replace(base, name=f"mdm_med + {other_prec}", bf16=not bf),
          replace(base, name=f"mdm_med + {other_prec} + {other_lay}", bf16=not bf, channels_last=not cl)]
    if cfg.quick:  # smoke test: the like-for-like pair and one variant
        return vs[:2] + [vs[5]]
    vs += [replace(base, name=f"mdm_med, batch {bb}", batch=bb) for bb in cfg.big_batches]
    if cfg.compile:
        vs += [replace(base, name="mdm_med + torch.compile (whole model)", compile=True)]
    return vs


_OP_GROUPS = (("convolution (forward + backward)", ("conv",)),
              ("GroupNorm (forward + backward)", ("group_norm",)),
              ("SiLU (forward + backward)", ("silu",)),
              ("attention / matmul", ("mm", "bmm", "addmm", "attention", "linear")),
              ("AdamW update", ("lerp", "addcdiv", "addcmul", "sqrt", "_foreach")),
              ("other element-wise, copies, cat, pooling, SSIM", ("",)))


def step_breakdown(cfg: Config, v: Variant) -> list[list]:
    """Where one step's time goes: torch.profiler self time, grouped by kind of op."""
    from torch.profiler import ProfilerActivity, profile

    _, step = _build(v, cfg)
    step()
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cfg.device.type == "cuda" else [])
    with profile(activities=acts) as prof:
        step()
        _sync(cfg.device)
    use_cuda = cfg.device.type == "cuda"
    totals = dict.fromkeys([g for g, _ in _OP_GROUPS], 0.0)
    for ev in prof.key_averages():
        if not ev.key.startswith("aten::"):
            continue
        t = (ev.self_device_time_total if use_cuda else ev.self_cpu_time_total) / 1e6
        name = ev.key[len("aten::"):]
        group = next(g for g, keys in _OP_GROUPS if any(k in name for k in keys))
        totals[group] += t
    whole = sum(totals.values()) or 1.0
    return [[g, t, f"{100 * t / whole:.1f}%"] for g, t in totals.items()]


def bench_norm_silu_fusion(cfg: Config) -> list[list]:
    """GroupNorm + scale-shift + SiLU, forward + backward, eager vs one torch.compile'd (fused) kernel, on the
    largest such activation of the profile (the decoder's top-level concatenation)."""
    dev = cfg.device
    ch = 2 * PRESETS[cfg.preset]["base_channels"]
    x = torch.randn(cfg.batch, ch, cfg.size, cfg.size, device=dev, requires_grad=True)
    w, b = torch.ones(ch, device=dev, requires_grad=True), torch.zeros(ch, device=dev, requires_grad=True)
    scale, shift = torch.randn(2, cfg.batch, ch, 1, 1, device=dev) * 0.1

    def f(x, w, b, scale, shift):
        return F.silu(F.group_norm(x, 32, w, b, 1e-5) * (1 + scale) + shift)

    fused = torch.compile(f)
    rows = []
    for name, fn in (("eager", f), ("torch.compile'd (fused)", fused)):
        def run(fn=fn):
            fn(x, w, b, scale, shift).sum().backward()

        t0 = time.perf_counter()
        run()
        _sync(dev)
        first = time.perf_counter() - t0
        rows.append([name, tuple(x.shape), min(_time(run, dev, max(3, cfg.step_reps), warmup=1)) * 1e3,
                     f"{first:.1f} s"])
    return rows


def _inductor_cache_state() -> str:
    """Whether torch.compile starts with a warm on-disk cache (it can shorten compile time a lot)."""
    try:
        from torch._inductor.runtime.cache_dir_utils import cache_dir

        return "warm" if os.path.isdir(cache_dir()) and os.listdir(cache_dir()) else "cold"
    except Exception:  # noqa: BLE001 - private API; the report just says unknown
        return "unknown"


def bench_step(cfg: Config) -> dict:
    dev = cfg.device
    cache = _inductor_cache_state()
    peaks = {torch.float32: [matmul_peak(dev, torch.float32, cfg.mm_size)],
             torch.bfloat16: [matmul_peak(dev, torch.bfloat16, cfg.mm_size)]}
    flops = {k: count_step_flops(k, cfg, cfg.batch) for k in ("ours", "monai")}
    variants = _step_variants(cfg)
    results: dict[str, dict] = {}

    def record(v, times, first=None, mem=None, error=None):
        results[v.name] = dict(v=v, times=times, first=first, mem=mem, error=error)

    if dev.type == "cpu":
        # build all, one warm-up (timed: compile time), then interleaved rounds so load drifts hit all alike; the
        # matmul peak is measured again in every round, so it sees the same machine state as the steps
        built = {}
        for v in variants:
            try:
                _, step = _build(v, cfg)
                t0 = time.perf_counter()
                step()
                first = time.perf_counter() - t0
                if v.compile:
                    step()
                built[v.name] = (step, first)
            except Exception as err:  # noqa: BLE001 - a failing variant is reported, the rest still runs
                record(v, [], error=f"{type(err).__name__}: {str(err)[:120]}")
        times = {k: [] for k in built}
        for _ in range(cfg.step_reps):
            for k, (step, _) in built.items():
                t0 = time.perf_counter()
                step()
                times[k].append(time.perf_counter() - t0)
            for dtype, got in peaks.items():
                got.append(matmul_peak(dev, dtype, cfg.mm_size, reps=1, warmup=0))
        for v in variants:
            if v.name in built:
                record(v, times[v.name], first=built[v.name][1])
    else:
        for v in variants:  # one at a time: the paper-size model and its optimizer state are large
            net = step = None
            try:
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats(dev)
                net, step = _build(v, cfg)
                t0 = time.perf_counter()
                step()
                _sync(dev)
                first = time.perf_counter() - t0
                ts = _time(step, dev, cfg.step_reps, warmup=1)
                record(v, ts, first=first, mem=torch.cuda.max_memory_allocated(dev) / 2**30)
                del net, step
            except Exception as err:  # noqa: BLE001 - e.g. out of memory at the larger batch
                record(v, [], error=f"{type(err).__name__}: {str(err)[:120]}")
            net = step = None
            if v.compile:
                torch._dynamo.reset()  # drop the compiled graph (it holds the model)
            torch.cuda.empty_cache()
    peak32, peak16 = max(peaks[torch.float32]), max(peaks[torch.bfloat16])

    def perf_of(name):
        """(images/s, GFLOP/s, share of the matmul peak of its precision), all from the best step."""
        v, sec = results[name]["v"], min(results[name]["times"])
        gfs = flops["monai" if v.model == "monai" else "ours"] * v.batch / cfg.batch / sec / 1e9
        return v.batch / sec, gfs, gfs / (peak16 if v.bf16 else peak32)

    rows, ips = [], {}
    for v in variants:
        r = results[v.name]
        if r["error"]:
            rows.append([v.name, v.batch, "failed", r["error"], "-", "-", "-", "-", "-"])
            continue
        ips[v.name], gfs, share = perf_of(v.name)
        rows.append([v.name, v.batch, min(r["times"]), statistics.median(r["times"]), ips[v.name], gfs,
                     f"{100 * share:.1f}% of {'bf16' if v.bf16 else 'fp32'}",
                     f"{r['first']:.1f} s" if v.compile else "-", _fmt(r["mem"]) if r["mem"] is not None else "-"])
    base_m, base_o = variants[0].name, variants[1].name
    nan3 = (float("nan"),) * 3
    ratio = ips[base_o] / ips[base_m] if base_o in ips and base_m in ips else float("nan")
    best = max((k for k in ips if results[k]["v"].model == "ours"), key=ips.get, default=base_o)
    best_ratio = ips.get(best, float("nan")) / ips.get(base_m, float("nan"))
    _, ours_gfs, ours_share = perf_of(base_o) if base_o in ips else nan3
    _, best_gfs, best_share = perf_of(best) if best in ips else nan3
    bv = results[best]["v"] if best in results else variants[1]
    twin = next((k for k in ips if results[k]["v"].model == "monai" and (results[k]["v"].bf16,
                 results[k]["v"].channels_last, results[k]["v"].batch) == (bv.bf16, bv.channels_last, bv.batch)), None)
    twin_ratio = ips.get(best, float("nan")) / ips[twin] if twin else float("nan")
    fdiff = abs(flops["ours"] - flops["monai"]) / flops["monai"]
    breakdown = step_breakdown(cfg, variants[1])
    fusion = bench_norm_silu_fusion(cfg) if cfg.compile else None
    detail = (f"Preset `{cfg.preset}`, input {cfg.batch} x 3 x {cfg.size} x {cfg.size}, SSIM loss, AdamW; best and "
              f"median of {cfg.step_reps} steps after one warm-up"
              + (", variants interleaved round by round" if dev.type == "cpu" else "")
              + ". Images/s, GFLOP/s and the peak share use the best step (contention only adds time).\n\n"
              f"FLOPs per step (forward + backward, FlopCounterMode): mdm_med **{flops['ours'] / 1e9:.2f} GFLOP**, "
              f"MONAI **{flops['monai'] / 1e9:.2f} GFLOP** (differ by {100 * fdiff:.2f}%).\n"
              f"Matmul peak measured in this run ({cfg.mm_size}^3 torch.mm, {torch.get_num_threads()} threads, best of "
              f"{len(peaks[torch.float32])}): fp32 **{peak32:.1f} GFLOP/s**, bf16 **{peak16:.1f} GFLOP/s**.\n\n"
              + _table(["variant", "batch", "s / step (best)", "median", "images / s", "GFLOP/s",
                        "share of matmul peak", "first step (compile)", "peak GiB"], rows)
              + f"\n\nWhere the time of one `{variants[1].name}` step goes (torch.profiler self time, aten ops):\n\n"
              + _table(["ops", "seconds", "share"], breakdown)
              + (f"\n\nThe compile variant's first step includes compilation; torch inductor's on-disk cache was "
                 f"{cache} at the start of this section." if cfg.compile else "")
              + ("\n\nFused GroupNorm + scale-shift + SiLU (forward + backward), isolated:\n\n"
                 + _table(["implementation", "activation", "ms (best)", "first call (compile)"], fusion) if fusion else
                 "\n\nFused GroupNorm+SiLU and whole-model torch.compile were not run (add `--compile`)."))
    summary = [
        [f"2. pretraining step images/s vs MONAI (same settings: {variants[1].name.split('(')[-1].rstrip(')')})",
         f"{ips.get(base_o, float('nan')):.2f} img/s", f"{ips.get(base_m, float('nan')):.2f} img/s",
         f"{ratio:.2f}x", f">= {TARGETS['step_vs_monai']}x", _met(ratio >= TARGETS["step_vs_monai"])],
        [f"2. best mdm_med variant ({best}) vs MONAI baseline", f"{ips.get(best, float('nan')):.2f} img/s",
         f"{ips.get(base_m, float('nan')):.2f} img/s", f"{best_ratio:.2f}x", f">= {TARGETS['step_vs_monai']}x",
         _met(best_ratio >= TARGETS["step_vs_monai"])],
        [f"2. best mdm_med variant vs MONAI with the same settings ({twin or 'not measured'})",
         f"{ips.get(best, float('nan')):.2f} img/s", f"{ips[twin]:.2f} img/s" if twin else "-",
         f"{twin_ratio:.2f}x" if twin else "-", f">= {TARGETS['step_vs_monai']}x",
         _met(twin_ratio >= TARGETS["step_vs_monai"]) if twin else "-"],
        ["2. achieved GFLOP/s / matmul peak (mdm_med, same settings)", f"{ours_gfs:.1f} GFLOP/s",
         f"{(peak16 if variants[1].bf16 else peak32):.1f} GFLOP/s", f"{100 * ours_share:.0f}%",
         f">= {100 * TARGETS['peak_share']:.0f}%", _met(ours_share >= TARGETS["peak_share"])],
        [f"2. achieved GFLOP/s / matmul peak (best: {best})", f"{best_gfs:.1f} GFLOP/s",
         f"{(peak16 if bv.bf16 else peak32):.1f} GFLOP/s", f"{100 * best_share:.0f}%",
         f">= {100 * TARGETS['peak_share']:.0f}%", _met(best_share >= TARGETS["peak_share"])],
    ]
    return dict(summary=summary, detail=detail, ok=True, flops=flops, ips=ips, ratio=ratio)


# ------------------------------------------------------------------------------------------- 3. data pipeline


def _glas_train_images(cfg: Config) -> tuple[list[dict], str]:
    from mdm_med.data.glas import has_glas_images, scan_glas
    from mdm_med.data.synthetic import generate_glas_demo

    if has_glas_images(cfg.data_dir):
        folder, what = cfg.data_dir, f"GlaS images from `{cfg.data_dir}`"
    else:
        folder = os.path.join(tempfile.gettempdir(), "mdm_med_perf_glas_demo")
        n = 6 if cfg.quick else 24
        size = (130, 194) if cfg.quick else (GLAS_SIZE[1], GLAS_SIZE[0])
        generate_glas_demo(folder, num_train=n, num_test=1, size=size)
        what = f"synthetic GlaS-style images ({n} of {size[1]} x {size[0]}; `{cfg.data_dir}` has no GlaS images)"
    items = [{"image": d["image"]} for d in scan_glas(folder)["train"]]  # = training + validation of the datalist
    return items[: cfg.data_items] if cfg.data_items else items, what


def bundle_pretrain_transforms(image_scale: float, crop: int):
    """The bundle's ``pretrain#preprocessing`` chain, parsed from bundles/mdm_glas/configs/train.json."""
    from monai.bundle import ConfigParser

    if not BUNDLE_TRAIN.is_file():
        raise FileNotFoundError(f"bundle config not found: {BUNDLE_TRAIN}")
    parser = ConfigParser()
    parser.read_config(str(BUNDLE_TRAIN))
    parser["image_scale"] = image_scale
    parser["crop_size"] = crop
    return parser.get_parsed_content("pretrain#preprocessing")


def bench_data(cfg: Config) -> dict:
    from monai.data import DataLoader

    from mdm_med.data.dataset import TrainingCacheDataset
    from mdm_med.engines import MaskedPrepareBatch

    dev = cfg.device
    items, what = _glas_train_images(cfg)
    chain = bundle_pretrain_transforms(cfg.image_scale, cfg.crop)
    t0 = time.perf_counter()
    ds = TrainingCacheDataset(items, transform=chain, num_workers=cfg.num_workers or None, progress=False)
    cache_s = time.perf_counter() - t0
    chain.set_random_state(0)
    steps = cfg.data_steps + 1  # the first one is a warm-up
    sampler = torch.utils.data.RandomSampler(ds, replacement=True, num_samples=steps * cfg.batch,
                                             generator=torch.Generator().manual_seed(0))
    loader = DataLoader(ds, batch_size=cfg.batch, sampler=sampler, num_workers=cfg.num_workers,
                        pin_memory=dev.type == "cuda", persistent_workers=False)
    torch.manual_seed(0)
    with dev:
        net = build_unet(cfg.preset).to(dev)
    if cfg.channels_last:
        net = net.to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(net.parameters(), lr=1e-4, weight_decay=0.0)
    prepare = MaskedPrepareBatch(PatchMasking(cfg.patch), seed=0)
    loss_fn = SSIMLoss()
    waits, totals = [], []
    it = iter(loader)
    for i in range(steps):
        t0 = time.perf_counter()
        batch = next(it)
        t1 = time.perf_counter()
        xt, x0, (t,), _ = prepare(batch, dev, non_blocking=True)
        if cfg.channels_last:
            xt = xt.contiguous(memory_format=torch.channels_last)
        with _autocast(dev, cfg.bf16):
            out = net(xt, t)
        loss = loss_fn(out, x0)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        _sync(dev)
        t2 = time.perf_counter()
        if i:
            waits.append(t1 - t0)
            totals.append(t2 - t0)
    share = sum(waits) / sum(totals)
    shape = tuple(batch["image"].shape)
    detail = (f"{len(items)} {what}; bundle chain `pretrain#preprocessing` (LoadHistologyd -> Zoomd "
              f"{cfg.image_scale} -> ScaleIntensityRanged -> SpatialPadd -> RandSpatialCropd {cfg.crop} -> RandFlipd "
              f"-> EnsureTyped) through the recipe's TrainingCacheDataset (built in {cache_s:.1f} s, once) and DataLoader "
              f"(num_workers={cfg.num_workers}, batch {shape}); step = masking + forward + SSIM + backward + AdamW "
              f"of the `{cfg.preset}` preset.\n\n"
              + _table(["measured steps", "wait for batch, ms (median)", "step incl. wait, s (median)",
                        "wait share of loop time"],
                       [[len(totals), statistics.median(waits) * 1e3, statistics.median(totals),
                         f"{100 * share:.2f}%"]]))
    summary = [["3. data: loop time waiting for batches", f"{100 * share:.2f}%",
                f"{statistics.median(totals):.3f} s / step", "-", f"<= {100 * TARGETS['data_wait']:.0f}%",
                _met(share <= TARGETS["data_wait"])]]
    return dict(summary=summary, detail=detail, ok=True, share=share)


# ----------------------------------------------------------------------------------------- 4. segmentation head


def _proc_status(field_name: str) -> int:
    """A ``VmRSS`` / ``VmHWM`` value of this process in bytes (Linux)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field_name + ":"):
                return int(line.split()[1]) * 1024
    raise OSError(f"{field_name} not in /proc/self/status")


def _reset_peak_rss() -> None:
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # resets VmHWM to the current resident size (Linux >= 4.0)


def head_measure(spec: dict) -> dict:
    """Both head variants in this process: training-step peak memory above the inputs, step time, logits diff.

    Each variant starts from the same weights; its peak is ``max_memory_allocated`` (CUDA) or the rise of VmHWM
    after a reset (CPU), measured on its first step after a small warm-up that initialises the libraries.
    """
    dev = torch.device(spec["device"])
    size, b, taps = spec["size"], spec["batch"], [tuple(t) for t in spec["taps"]]
    torch.manual_seed(0)
    head = PixelMLPHead([c for c, _ in taps], num_classes=2).to(dev).train()
    init = {k: v.clone() for k, v in head.state_dict().items()}

    def make_step(variant, feats, size):
        opt = torch.optim.Adam(head.parameters(), lr=1e-3)
        target = torch.randint(0, 2, (feats[0].shape[0], size, size), device=dev,
                               generator=torch.Generator(dev).manual_seed(0))

        def step():
            if variant == "per_tap":
                logits = head(feats, (size, size))
            else:  # the reference: upsample every tap, concatenate, divide by the norm, then the MLP
                cat = torch.cat([upsample(f, (size, size)) for f in feats], dim=1)
                cat = cat / sample_norm(cat).view(-1, 1, 1, 1)
                logits = head.forward_materialized(cat)
            loss = F.cross_entropy(logits, target)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            return logits.detach()

        return step

    small = [torch.randn(1, c, max(2, s // 8), max(2, s // 8), device=dev) for c, s in taps]
    for variant in ("per_tap", "materialized"):  # warm-up: thread pools, kernels, allocator
        make_step(variant, small, max(4, size // 8))()
    gen = torch.Generator(dev).manual_seed(1)
    feats = [torch.randn(b, c, s, s, device=dev, generator=gen) for c, s in taps]
    out = {}
    for variant in ("per_tap", "materialized"):
        head.load_state_dict(init)
        step = make_step(variant, feats, size)
        _sync(dev)
        if dev.type == "cuda":
            base = torch.cuda.memory_allocated(dev)
            torch.cuda.reset_peak_memory_stats(dev)
            logits = step()
            _sync(dev)
            peak = torch.cuda.max_memory_allocated(dev) - base
        else:
            _reset_peak_rss()
            base = _proc_status("VmRSS")
            logits = step()
            peak = _proc_status("VmHWM") - base
        seconds = min(_time(step, dev, spec["reps"], warmup=0))
        out[variant] = dict(peak_bytes=int(peak), seconds=seconds, logits=logits)
    diff = (out["per_tap"]["logits"] - out["materialized"]["logits"]).abs().max().item()
    return dict(diff=diff, **{k: dict(peak_bytes=v["peak_bytes"], seconds=v["seconds"]) for k, v in out.items()})


def _head_subprocess(spec: dict) -> dict:
    """``head_measure`` in a fresh process; large blocks via mmap so that freed memory leaves the resident set."""
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536")
    env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT), env.get("PYTHONPATH", "")])
    proc = subprocess.run([sys.executable, "-m", "mdm_med.perf", "--head-worker", json.dumps(spec)],
                          capture_output=True, text=True, env=env, check=False)
    if proc.returncode:
        raise RuntimeError(f"head worker failed:\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def bench_head(cfg: Config) -> dict:
    size, b = cfg.head_size, cfg.head_batch
    d = sum(c for c, _ in cfg.head_taps)
    spec = dict(device=str(cfg.device), taps=[list(t) for t in cfg.head_taps], size=size, batch=b, reps=cfg.head_reps)
    res = head_measure(spec) if cfg.device.type == "cuda" else _head_subprocess(spec)
    diff = res["diff"]
    mem_ratio = res["per_tap"]["peak_bytes"] / res["materialized"]["peak_bytes"]
    t_ratio = res["materialized"]["seconds"] / res["per_tap"]["seconds"]
    cat_bytes = b * d * size * size * 4
    how = ("torch.cuda.max_memory_allocated above the inputs" if cfg.device.type == "cuda"
           else "rise of VmHWM (reset before each variant) over the resident size before the step, in a fresh "
                "subprocess with glibc's mmap threshold at 64 KiB")
    taps = ", ".join(f"{c}@{s}" for c, s in cfg.head_taps)
    rows = [[name, res[k]["peak_bytes"] / 2**20, res[k]["seconds"]] for k, name in
            (("materialized", "forward_materialized (upsample + concat + norm, then MLP)"),
             ("per_tap", "forward (first layer per tap at native size, feature_norm)"))]
    detail = (f"Taps {taps} (D = {d}) -> {size} x {size}, batch {b}, 2 classes; one training step = forward + "
              f"cross-entropy + backward + Adam. The materialised (B, D, H, W) tensor alone is "
              f"{cat_bytes / 2**20:.0f} MiB. Peak = {how}.\n\n"
              + _table(["variant", "peak MiB above inputs", "s / step (best)"], rows)
              + f"\n\nLogits max |difference| (first step, same weights, BatchNorm in training mode): **{diff:.2e}**; "
              f"memory ratio **{mem_ratio:.3f}** (1/{1 / mem_ratio:.1f}); per-tap step speed-up {t_ratio:.2f}x.")
    summary = [["4. head logits max abs diff, per-tap vs materialised", f"{diff:.1e}", "-", "-",
                f"<= {TARGETS['head_diff']:.0e}", _met(diff <= TARGETS["head_diff"])],
               ["4. head training-step peak memory, per-tap / materialised",
                f"{res['per_tap']['peak_bytes'] / 2**20:.0f} MiB",
                f"{res['materialized']['peak_bytes'] / 2**20:.0f} MiB",
                f"1/{1 / mem_ratio:.1f}", "<= 1/8", _met(mem_ratio <= TARGETS["head_mem"])],
               ["4. head training-step time, per-tap vs materialised", f"{res['per_tap']['seconds']:.3f} s",
                f"{res['materialized']['seconds']:.3f} s", f"speed-up {t_ratio:.2f}x", "-", "-"]]
    return dict(summary=summary, detail=detail, ok=diff <= TARGETS["head_diff"], diff=diff, mem_ratio=mem_ratio)


# ----------------------------------------------------------------------------------------- 5. sliding window


def bench_sliding_window(cfg: Config) -> dict:
    from monai.inferers import SlidingWindowInferer
    from monai.transforms import Zoom
    from torch.utils.flop_counter import FlopCounterMode

    from mdm_med.networks.segmentation import build_segmenter

    dev = cfg.device
    torch.manual_seed(0)
    net = build_segmenter("finetune", preset=cfg.preset, num_classes=2).to(dev).eval()
    if cfg.channels_last:
        net = net.to(memory_format=torch.channels_last)
    inferer = SlidingWindowInferer(roi_size=(cfg.roi, cfg.roi), sw_batch_size=8, overlap=0.2, mode="gaussian")
    full = torch.rand(3, *cfg.sw_full) * 2 - 1  # (C, W, H) as the PIL reader gives
    scaled = Zoom(zoom=cfg.image_scale, mode="area", keep_size=False)(full).as_tensor()
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        net(torch.zeros(1, 3, cfg.roi, cfg.roi, device=dev))
    window_flops = counter.get_total_flops()
    inputs = {f"image_scale {cfg.image_scale}": scaled[None].to(dev), "full resolution": full[None].to(dev)}
    if cfg.channels_last:
        inputs = {k: x.contiguous(memory_format=torch.channels_last) for k, x in inputs.items()}

    def run(x):
        with torch.inference_mode(), _autocast(dev, cfg.bf16):
            inferer(x, net)

    times = {k: [] for k in inputs}
    for x in inputs.values():  # warm-up (kernel selection for both window batch sizes)
        run(x)
    for _ in range(cfg.sw_reps):  # interleaved, so load changes hit both alike
        for k, x in inputs.items():
            t0 = time.perf_counter()
            run(x)
            _sync(dev)
            times[k].append(time.perf_counter() - t0)
    rows, out = [], {}
    for name, x in inputs.items():
        sec = min(times[name])
        n = 1
        for s in x.shape[2:]:
            n *= math.ceil((max(s, cfg.roi) - cfg.roi) / int(cfg.roi * (1 - 0.2))) + 1
        out[name] = sec
        rows.append([name, "x".join(str(s) for s in x.shape[2:]), n, sec, statistics.median(times[name]),
                     n * window_flops / sec / 1e9])
    detail = (f"`build_segmenter('finetune', preset='{cfg.preset}')`, SlidingWindowInferer roi {cfg.roi}, overlap 0.2, "
              f"gaussian, sw_batch_size 8, {'bf16 autocast' if cfg.bf16 else 'fp32'}; GlaS-size input "
              f"{cfg.sw_full[0]} x {cfg.sw_full[1]} (W x H), scaled with Zoom(mode='area') as the bundle does.\n\n"
              + _table(["input", "size (W x H)", "windows", "s / image (best)", "median", "GFLOP/s (window forwards)"],
                       rows))
    summary = [[f"5. sliding-window inference, {k}", f"{v:.3f} s / image", "-", "-", "-", "-"] for k, v in out.items()]
    return dict(summary=summary, detail=detail, ok=True, seconds=out)


# ------------------------------------------------------------------------------------------------- report


def machine_description(device: torch.device) -> dict:
    cpu = platform.processor() or "unknown"
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    flags = ""
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("flags"):
                have = set(line.split(":", 1)[1].split())
                flags = " ".join(x for x in ("avx2", "fma", "avx512f", "avx512_bf16", "amx_bf16") if x in have)
                break
    mem = "?"
    with contextlib.suppress(OSError), open("/proc/meminfo") as f:
        mem = f"{int(f.readline().split()[1]) / 2**20:.0f} GiB"
    import monai

    desc = dict(cpu=f"{cpu} ({flags})", cores=os.cpu_count(), threads=torch.get_num_threads(), ram=mem,
                torch=torch.__version__, monai=monai.__version__, python=platform.python_version(),
                date=datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"))
    if device.type == "cuda":
        tf32 = f"{torch.backends.cuda.matmul.allow_tf32} / {torch.backends.cudnn.allow_tf32}"
        desc["gpu"] = f"{torch.cuda.get_device_name(device)}, CUDA {torch.version.cuda}, TF32 matmul / cuDNN: {tf32}"
    return desc


def busy_processes(interval: float = 1.0, min_share: float = 0.2) -> list[str]:
    """Other processes using more than ``min_share`` of a core over ``interval`` seconds (Linux /proc)."""

    def snapshot():
        out = {}
        for pid in os.listdir("/proc"):
            if not pid.isdigit():
                continue
            with contextlib.suppress(OSError, ValueError, IndexError):
                with open(f"/proc/{pid}/stat") as f:
                    parts = f.read().rsplit(")", 1)[1].split()
                out[int(pid)] = int(parts[11]) + int(parts[12])
        return out

    if not os.path.isdir("/proc"):
        return []
    a = snapshot()
    time.sleep(interval)
    b = snapshot()
    hz = os.sysconf("SC_CLK_TCK")
    busy = []
    for pid, ticks in b.items():
        share = (ticks - a.get(pid, ticks)) / hz / interval
        if share >= min_share and pid != os.getpid():
            with contextlib.suppress(OSError):
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    cmd = f.read().replace(b"\0", b" ").decode(errors="replace").strip()
                busy.append(f"pid {pid} at {100 * share:.0f}% of a core: `{cmd[:100]}`")
    return busy


def write_atomic(text: str, path: str | os.PathLike) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp_", suffix=path.suffix)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise


SECTIONS = {
    "mask": ("1. Masking", bench_masking),
    "step": ("2. Pretraining step", bench_step),
    "data": ("3. Data pipeline", bench_data),
    "head": ("4. Segmentation head memory", bench_head),
    "sw": ("5. Sliding-window inference", bench_sliding_window),
}


def run(args: argparse.Namespace, argv: list[str]) -> tuple[str, dict]:
    cfg = make_config(args)
    machine = machine_description(cfg.device)
    busy_before = busy_processes()
    load_before = os.getloadavg()
    results = {}
    t_start = time.perf_counter()
    for key in args.sections.split(","):
        title, fn = SECTIONS[key]
        print(f"[perf] {title} ...", flush=True)
        t0 = time.perf_counter()
        try:
            results[key] = fn(cfg)
        except Exception as err:  # noqa: BLE001 - one failing section must not lose the others
            traceback.print_exc()
            results[key] = dict(summary=[[title, "failed", "-", "-", "-", "-"]],
                                detail=f"Failed: `{type(err).__name__}: {err}`", ok=False, error=str(err))
        results[key]["seconds"] = time.perf_counter() - t0
        print(f"[perf] {title}: {results[key]['seconds']:.1f} s", flush=True)
    load_after = os.getloadavg()
    busy_after = busy_processes()
    busy = sorted(set(busy_before) | set(busy_after))
    quiet = not busy
    lines = [f"# mdm_med performance ({cfg.device.type}, preset `{cfg.preset}`{', quick' if cfg.quick else ''})", "",
             "Command: `" + " ".join(["python -m mdm_med.perf", *map(shlex.quote, argv)]) + "`", "",
             f"- Date: {machine['date']}; total {time.perf_counter() - t_start:.0f} s",
             f"- CPU: {machine['cpu']}, {machine['cores']} cores, torch threads {machine['threads']}, "
             f"RAM {machine['ram']}"]
    if "gpu" in machine:
        lines.append(f"- GPU: {machine['gpu']}")
    lines += [f"- torch {machine['torch']}, monai {machine['monai']}, python {machine['python']}",
              f"- Settings: {'bf16 autocast' if cfg.bf16 else 'fp32'}, "
              f"{'channels_last' if cfg.channels_last else 'NCHW'}, "
              f"torch.compile variants {'on' if cfg.compile else 'off'}, DataLoader workers {cfg.num_workers}",
              f"- Load average (1 min) before / after: {load_before[0]:.2f} / {load_after[0]:.2f}",
              "- Machine: " + ("quiet (no other process above 20% of a core at start or end)" if quiet else
                               "**shared** - other busy processes at start or end, so absolute numbers are low and "
                               "noisy (ratios from interleaved runs are fairer): " + "; ".join(busy))]
    if args.note:
        lines.append(f"- Note: {args.note}")
    if cfg.quick:
        lines.append("- `--quick`: tiny sizes for a smoke test; the figures are not meaningful against the targets.")
    summary = [row for r in results.values() for row in r["summary"]]
    lines += ["", "## Summary", "",
              _table(["measure", "result", "baseline (same run)", "ratio", "target", "met"], summary)]
    for key, r in results.items():
        lines += ["", f"## {SECTIONS[key][0]}", "", r["detail"], "", f"_Section time: {r['seconds']:.1f} s._"]
    text = "\n".join(lines) + "\n"
    write_atomic(text, args.out)
    return text, results


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m mdm_med.perf", description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="tiny sizes (smoke test, ~1-2 min on 2 busy cores)")
    p.add_argument("--out", default="benchmarks/results/perf_cpu.md", help="Markdown report (written atomically)")
    p.add_argument("--data-dir", default="../shared/data/glas", help="GlaS folder (synthetic images when absent)")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--preset", default="cpu", choices=sorted(PROFILES))
    p.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=None,
                   help="bf16 autocast for the baseline pair (default: on for cuda, off for cpu)")
    p.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=False)
    p.add_argument("--compile", action="store_true", help="add torch.compile variants (compile time reported)")
    p.add_argument("--batch", type=int, default=None, help="pretraining-step batch (default: the preset's profile)")
    p.add_argument("--num-workers", type=int, default=None, help="DataLoader workers (default: 0 cpu, 4 cuda)")
    p.add_argument("--sections", default=",".join(SECTIONS), help=f"comma list of {','.join(SECTIONS)}")
    p.add_argument("--note", default="", help="free text added to the report")
    p.add_argument("--head-worker", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    unknown = set(args.sections.split(",")) - set(SECTIONS)
    if unknown:
        p.error(f"unknown sections {sorted(unknown)}")
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda but torch.cuda.is_available() is False")
    return args


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    if args.head_worker:
        print(json.dumps(head_measure(json.loads(args.head_worker))))
        return 0
    text, results = run(args, argv)
    print(text)
    failed = [k for k, r in results.items() if not r.get("ok", True)]
    if failed:
        print(f"[perf] failed checks or sections: {failed}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
