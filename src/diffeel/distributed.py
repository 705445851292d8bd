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
    finally:
        dist.destroy_process_group()
