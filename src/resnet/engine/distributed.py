"""torchrun / DistributedDataParallel helpers.

`torchrun --nproc-per-node N -m resnet train ...` starts N processes with RANK, WORLD_SIZE,
LOCAL_RANK, MASTER_ADDR and MASTER_PORT set; `setup()` joins them (NCCL on GPUs, gloo on CPUs) and
is a no-op otherwise. Batch sizes and learning rates are stated for the global batch: each of the
N processes takes its slice of every global batch (the same slices whatever N, so a run resumes
on a different number of processes), DDP averages the gradients, and only rank 0 logs and writes
checkpoints. SyncBatchNorm normalises over the global batch; PyTorch's only runs on GPUs, so CPU
processes use `CPUSyncBatchNorm` (two all-reduces of per-channel sums, differentiable).
"""
from __future__ import annotations

import atexit
import contextlib
import hashlib
import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist
from torch import nn

from ..data.memory import _crop_nhwc
from ..errors import ConfigError


@dataclass(frozen=True)
class DistContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def device(self) -> torch.device | None:
        """The device this process should use under torchrun (its GPU), else None (the default)."""
        if self.backend == "nccl":
            return torch.device("cuda", self.local_rank)
        return torch.device("cpu") if self.enabled else None


def setup(device: str | torch.device | None = None) -> DistContext:
    """Join the process group that torchrun's environment describes; DistContext() without one."""
    if dist.is_available() and dist.is_initialized():
        return DistContext(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)),
                           dist.get_backend())
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistContext()
    if not dist.is_available():
        raise RuntimeError("WORLD_SIZE > 1 but this PyTorch build has no torch.distributed")
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    wants_cpu = device is not None and torch.device(device).type == "cpu"
    backend = "nccl" if torch.cuda.is_available() and not wants_cpu else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(local_rank)
    dist.init_process_group(backend)
    atexit.register(cleanup)
    return DistContext(dist.get_rank(), dist.get_world_size(), local_rank, backend)


_finished = False  # this process did all its work (mark_finished): at exit it waits for the others


def mark_finished() -> None:
    """Say that this process completed its work, so that at exit it leaves the process group together with the others."""
    global _finished
    _finished = True


def cleanup() -> None:
    """At exit: leave the process group. gloo now and then aborts a process that tears down its connections while a
    peer is still working ("terminate called without an active exception", SIGABRT; measured here: 2 of 20
    two-process runs whose rank 0 worked 0.5 s longer than rank 1, 0 of 25 with this barrier), so processes that
    finished wait for each other first. One that failed does not wait: its peers are stopped by torchrun."""
    if not (dist.is_available() and dist.is_initialized()):
        return
    if _finished and dist.get_backend() == "gloo":
        with contextlib.suppress(RuntimeError):  # a peer that failed or took longer than this: leave anyway
            dist.monitored_barrier(timeout=timedelta(minutes=5))
    dist.destroy_process_group()


def barrier(ctx: DistContext) -> None:
    if ctx.enabled:
        dist.barrier()


# --------------------------------------------------------------------------- data
class ShardedMemoryLoader:
    """This rank's slice of every global batch of a MemoryLoader: the epoch plan (order, crops,
    flips, augmentation) is drawn for the global batch on every rank, so the union of step i's slices over the
    ranks is exactly the single-process batch i."""

    def __init__(self, loader, rank: int, world_size: int):
        if loader.batch_size % world_size:
            raise ConfigError(f"the global batch {loader.batch_size} does not split over {world_size} processes: "
                             f"make data.batch_size a multiple of {world_size}")
        self.inner, self.rank, self.world_size = loader, rank, world_size

    @property
    def batch_size(self) -> int:
        return self.inner.batch_size

    def set_epoch(self, epoch: int) -> None:
        self.inner.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.inner)

    def __iter__(self):
        inner = self.inner
        plan = inner.plan()
        per_rank = inner.batch_size // self.world_size
        n = plan[0].numel()
        for i in range(len(inner)):
            lo = min(i * inner.batch_size + self.rank * per_rank, n)
            yield inner.batch(plan, slice(lo, min(lo + per_rank, n, (i + 1) * inner.batch_size)))


def shard_loader(loader, ctx: DistContext):
    """The loader this rank iterates: the global-batch loader itself, or its slice of each batch."""
    if not ctx.enabled:
        return loader
    if hasattr(loader, "shard"):  # StreamLoader shards its sampler
        return loader.shard(ctx.rank, ctx.world_size)
    return ShardedMemoryLoader(loader, ctx.rank, ctx.world_size)


# --------------------------------------------------------------------------- model
class _AllReduceSum(torch.autograd.Function):
    """Sum over processes; the gradient of every input is the sum of the gradients of the output."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        x = x.clone()
        dist.all_reduce(x)
        return x

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.clone()
        dist.all_reduce(grad)
        return grad


class CPUSyncBatchNorm(nn.BatchNorm2d):
    """BatchNorm2d whose training statistics are those of the global batch across all processes
    (gloo/CPU; on GPUs `torch.nn.SyncBatchNorm` is used). Same parameters and buffers as
    BatchNorm2d, so checkpoints are interchangeable; outside distributed training it *is* BatchNorm2d."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
            return super().forward(x)
        all_reduce = _AllReduceSum.apply
        xf = x.float()
        c = xf.shape[1]
        count = torch.full((1,), xf.numel() // c, dtype=torch.float32, device=x.device)
        total = all_reduce(torch.cat([xf.sum((0, 2, 3)), count]))
        n = total[c]
        mean = total[:c] / n
        centred = xf - mean.view(1, -1, 1, 1)
        var = all_reduce((centred * centred).sum((0, 2, 3))) / n  # two passes: no cancellation
        y = centred * torch.rsqrt(var + self.eps).view(1, -1, 1, 1)
        if self.affine:
            y = y * self.weight.view(1, -1, 1, 1) + self.bias.view(1, -1, 1, 1)
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                m = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                self.running_mean.mul_(1 - m).add_(mean.detach(), alpha=m)
                self.running_var.mul_(1 - m).add_(var.detach() * (n / (n - 1).clamp(min=1)), alpha=m)
        return y.to(x.dtype)


def convert_sync_batchnorm(model: nn.Module, device: torch.device) -> nn.Module:
    """Every BatchNorm2d becomes a synchronised one, sharing its parameters and buffers."""
    if device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(model)

    def convert(module: nn.Module) -> nn.Module:
        if type(module) is nn.BatchNorm2d:
            new = CPUSyncBatchNorm(module.num_features, module.eps, module.momentum, module.affine,
                                   module.track_running_stats)
            if module.affine:
                new.weight, new.bias = module.weight, module.bias
            if module.track_running_stats:
                new.running_mean, new.running_var = module.running_mean, module.running_var
                new.num_batches_tracked = module.num_batches_tracked
            new.train(module.training)
            return new
        for name, child in module.named_children():
            module.add_module(name, convert(child))
        return module

    return convert(model)


def wrap_model(model: nn.Module, ctx: DistContext, device: torch.device, sync_bn: bool = False) -> nn.Module:
    """The module to train: DDP around `model` under torchrun (with synchronised BN if asked), else
    `model` itself. `model` is changed in place and stays the one to checkpoint and evaluate."""
    if not ctx.enabled:
        return model
    if sync_bn:
        convert_sync_batchnorm(model, device)
    ids = [device.index] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=ids)


def no_sync(module: nn.Module, sync: bool):
    """Skip DDP's gradient all-reduce on accumulation steps that are not the last."""
    module = getattr(module, "_orig_mod", module)  # a compiled module wraps the DDP one
    if not sync and isinstance(module, nn.parallel.DistributedDataParallel):
        return module.no_sync()
    return contextlib.nullcontext()


def step_seed(seed: int, rank: int, step: int) -> int:
    """The seed of a process's global RNG for one training step under torchrun: its own stream (timm seeds
    each rank apart; one shared seed gave every process the same drop-path masks for its slice), and a function
    of the step, so a resumed run draws what the uninterrupted one drew without each rank's state saved."""
    key = hashlib.blake2b(f"{seed}/{rank}/{step}".encode(), digest_size=8).digest()
    return int.from_bytes(key, "little") >> 1


def rank0_text(text: str, ctx: DistContext) -> str:
    """Rank 0's `text` on every process (itself outside torchrun): a run folder named from each process's own
    clock (runs/MODEL-TIME) differs between processes that read it either side of a second."""
    if not (ctx.enabled and dist.is_available() and dist.is_initialized()):
        return text
    device = ctx.device or torch.device("cpu")
    raw = torch.tensor(list(text.encode()), dtype=torch.uint8, device=device)
    size = torch.tensor([raw.numel()], dtype=torch.int64, device=device)
    dist.broadcast(size, src=0)
    buffer = raw if ctx.rank == 0 else torch.zeros(int(size), dtype=torch.uint8, device=device)
    dist.broadcast(buffer, src=0)
    return bytes(buffer.cpu().tolist()).decode()


def stream_for(ctx: DistContext, stream):
    """Rank 0 reports; the others write nowhere."""
    return stream if ctx.is_main else open(os.devnull, "w")


def all_mean(value: torch.Tensor, ctx: DistContext) -> torch.Tensor:
    """The mean of a scalar over all processes (itself outside torchrun)."""
    if not ctx.enabled:
        return value
    out = value.detach().clone()
    dist.all_reduce(out)
    return out / ctx.world_size


def all_sum(value: torch.Tensor, ctx: DistContext) -> torch.Tensor:
    """The sum of a tensor over all processes (itself outside torchrun)."""
    if not ctx.enabled:
        return value
    out = value.detach().clone()
    dist.all_reduce(out)
    return out


class NullLog:
    """MetricsLog's interface, writing nothing: what ranks other than 0 log to."""

    def rewrite(self, records) -> None:
        pass

    def append(self, record) -> None:
        pass

    def close(self) -> None:
        pass


__all__ = ["DistContext", "setup", "cleanup", "barrier", "ShardedMemoryLoader", "shard_loader", "CPUSyncBatchNorm",
           "convert_sync_batchnorm", "wrap_model", "no_sync", "rank0_text", "stream_for", "all_mean", "all_sum", "NullLog"]
