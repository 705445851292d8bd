"""Running under ``torchrun``: one process per device, rank and world size from its environment.

``torchrun --nproc_per_node N -m diffeel.cli …`` (or the ``diffeel`` script) sets ``RANK``,
``WORLD_SIZE`` and ``LOCAL_RANK``; without them everything runs as a single process. The process
group uses gloo on the CPU and NCCL on CUDA; each process gets ``cuda:LOCAL_RANK``.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from .errors import DiffeelError


@dataclass(frozen=True)
class Distributed:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world_size > 1

    def barrier(self) -> None:
        if self.active:
            dist.barrier()

    def device(self, name: str) -> torch.device:
        """``name`` for this process: ``cuda`` becomes ``cuda:LOCAL_RANK``; CUDA must exist."""
        if name.startswith("cuda"):
            if not torch.cuda.is_available():
                raise DiffeelError("--device cuda was asked for, but no CUDA device is available")
            return torch.device("cuda", self.local_rank if self.active else torch.device(name).index or 0)
        return torch.device(name)


def _environment_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    try:
        return default if value is None else int(value)
    except ValueError:
        raise DiffeelError(f"the environment variable {name}={value!r} is not a whole number (torchrun sets it)") from None


def from_environment() -> Distributed:
    """Rank and world size as torchrun sets them (a single process otherwise)."""
    world_size = _environment_int("WORLD_SIZE", 1)
    rank = _environment_int("RANK", 0)
    if world_size < 1 or not 0 <= rank < world_size:
        raise DiffeelError(f"RANK={rank} and WORLD_SIZE={world_size} do not describe a process group")
    return Distributed(rank, world_size, _environment_int("LOCAL_RANK", rank))


@contextlib.contextmanager
def process_group(device: str = "cpu"):
    """The torchrun process group for the duration of a command (nothing to set up for one process)."""
    context = from_environment()
    if not context.active:
        yield context
        return
    backend = "nccl" if device.startswith("cuda") else "gloo"
    dist.init_process_group(backend)
    try:
        yield context
    except BaseException:
        end_process_group(wait_for_peers=False)  # a peer may be inside another collective
        raise
    end_process_group()


def end_process_group(wait_for_peers: bool = True) -> None:
    """Tear the process group down once every process has arrived and no wrapper still holds it.

    A process that destroys the group while its peer is still exchanging, or whose
    DistributedDataParallel wrapper (kept alive by reference cycles) is collected after the group
    is gone, can abort in gloo's threads at exit ("terminate called without an active exception").
    """
    import gc

    if wait_for_peers:
        dist.barrier()
    gc.collect()
    dist.destroy_process_group()


class _SumOverProcesses(torch.autograd.Function):
    """``all_reduce(SUM)`` with its gradient: the sum's gradient reaches every process's share."""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor) -> torch.Tensor:
        total = tensor.clone()
        dist.all_reduce(total)
        return total

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.clone()
        dist.all_reduce(grad)
        return grad


def sum_over_processes(tensor: torch.Tensor) -> torch.Tensor:
    return _SumOverProcesses.apply(tensor)


class CrossProcessBatchNorm2d(torch.nn.BatchNorm2d):
    """BatchNorm2d whose training-mode statistics are those of the global batch over all processes.

    PyTorch's SyncBatchNorm runs on GPUs only; this one works with any backend (gloo on the CPU,
    NCCL), so a data-parallel run normalises exactly as one process on the whole batch would (RPL
    trains with synchronised batch norm). Two passes (mean, then centred squares) through an
    autograd-aware all-reduce; running statistics as BatchNorm2d keeps them. Same parameters and
    buffers as BatchNorm2d, so checkpoints do not change.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
            return super().forward(x)
        channels = x.shape[1]
        local_count = x.new_full((1,), x.numel() // channels)
        totals = sum_over_processes(torch.cat([x.sum((0, 2, 3)), local_count]))
        count = totals[-1]
        mean = totals[:channels] / count
        centred = x - mean.view(1, -1, 1, 1)
        variance = sum_over_processes(centred.pow(2).sum((0, 2, 3))) / count
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                momentum = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                self.running_mean.lerp_(mean.detach(), momentum)
                self.running_var.lerp_(variance.detach() * count / (count - 1), momentum)
        normalised = centred * torch.rsqrt(variance + self.eps).view(1, -1, 1, 1)
        if self.affine:
            normalised = normalised * self.weight.view(1, -1, 1, 1) + self.bias.view(1, -1, 1, 1)
        return normalised


def synchronise_batch_norms(module: torch.nn.Module) -> torch.nn.Module:
    """Turn every BatchNorm2d under ``module`` into a :class:`CrossProcessBatchNorm2d` in place
    (parameters and statistics kept; eval-mode behaviour unchanged)."""
    for child in module.modules():
        if type(child) is torch.nn.BatchNorm2d:
            child.__class__ = CrossProcessBatchNorm2d  # same state, new forward
    return module
