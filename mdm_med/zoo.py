"""Small helpers the MONAI Model Zoo patterns need from config: the per-process batch of a distributed run and
the handlers that only rank 0 should run (``bundles/*/configs/multi_gpu_train.json``)."""

from __future__ import annotations

from collections.abc import Sequence

import torch.distributed as dist

__all__ = ["world_size", "rank", "rank_batch_size", "writer_types", "rank_handlers", "init_process_group",
           "destroy_process_group", "barrier", "data_parallel", "eval_sampler"]


def world_size() -> int:
    """Number of processes of the initialised process group (1 without one)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    """This process's rank (0 without a process group)."""
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def rank_batch_size(global_batch_size: int, processes: int | None = None) -> int:
    """Per-process batch of a data-parallel run whose global batch is ``global_batch_size``: DDP averages the
    gradients of N processes with batch b / N, which equals one process with batch b."""
    n = world_size() if processes is None else int(processes)
    if global_batch_size % n:
        raise ValueError(f"the global batch size {global_batch_size} is not divisible by the {n} processes; "
                         f"choose a batch size that is a multiple of {n}")
    return global_batch_size // n


def writer_types() -> tuple[type, ...]:
    """Handler types that only write (logs, TensorBoard, images, checkpoints, exported weights, progress bars):
    run once, on rank 0. Handlers that change training (LR schedule, validation, early stopping, EMA, loading
    weights) and collective ones (metrics savers that gather across ranks) are not in this list."""
    from ignite.handlers import ProgressBar
    from monai.handlers import CheckpointSaver, StatsHandler, TensorBoardStatsHandler

    from mdm_med.handlers import ExportWeights, ImageGrid, Throughput

    return ProgressBar, StatsHandler, TensorBoardStatsHandler, CheckpointSaver, ImageGrid, Throughput, ExportWeights


def rank_handlers(handlers: Sequence | None, on_rank: int | None = None) -> list:
    """``handlers`` for this process: all of them on rank 0, the non-writing ones (see ``writer_types``) elsewhere.
    Filtering by type, not by position, keeps working when a config adds or reorders handlers."""
    handlers = list(handlers or [])
    if (rank() if on_rank is None else on_rank) == 0:
        return handlers
    writers = writer_types()
    return [h for h in handlers if not isinstance(h, writers)]


def init_process_group(device) -> None:
    """Start the process group of a ``torchrun`` launch (NCCL on CUDA, gloo on CPU) and bind the CUDA device."""
    import torch

    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if torch.device(device).type == "cuda" else "gloo")
    if torch.device(device).type == "cuda":
        torch.cuda.set_device(device)


def destroy_process_group() -> None:
    """End the process group, if one was started, after a last barrier, so that no rank tears down its gloo
    connections while another is still finishing (seen as an abort of a rank at exit, about 1 run in 6)."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def barrier() -> None:
    """Wait for every process; nothing without a process group."""
    if world_size() > 1:
        dist.barrier()


def data_parallel(network):
    """``network`` wrapped in DistributedDataParallel when a process group runs, else ``network`` itself. The
    module's parameters are shared, so handlers holding ``network`` see the trained weights."""
    if world_size() == 1:
        return network
    from torch.nn.parallel import DistributedDataParallel

    device = next(network.parameters()).device
    return DistributedDataParallel(network, device_ids=[device] if device.type == "cuda" else None)


def eval_sampler(dataset):
    """A sampler giving each process its own share of an evaluation set (no padding, no shuffling), or ``None``
    (the DataLoader's default order) without a process group."""
    if world_size() == 1:
        return None
    from monai.data import DistributedSampler

    return DistributedSampler(dataset, even_divisible=False, shuffle=False)
