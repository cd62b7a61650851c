"""PyTorch DDP under ``torchrun``: set-up from its environment variables, and reductions."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from ..errors import BitError


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world > 1


def launched_as_main() -> bool:
    """Whether this process is rank 0 of its launch (or was not launched by torchrun), before any group exists."""
    return os.environ.get("RANK", "0") == "0"


def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA when present; a device that does not exist here is one clear error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        raise BitError(f"unknown device '{name}': use auto, cpu, cuda or cuda:N") from None
    count = torch.cuda.device_count() if device.type == "cuda" and torch.cuda.is_available() else 0
    if device.type == "cuda" and not count:
        raise BitError(f"device '{name}' asked for, but no CUDA GPU is available here; use --device cpu (or auto)")
    if device.type == "cuda" and device.index is not None and device.index >= count:
        raise BitError(f"device '{name}' does not exist: this machine has {count} GPU(s), cuda:0 to cuda:{count - 1}")
    return device


def init_distributed(device: torch.device) -> DistInfo:
    """Join the process group that ``torchrun`` describes (WORLD_SIZE, RANK, LOCAL_RANK), if any."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    if not dist.is_initialized():
        store = _attempt_store(world)
        rendezvous = {} if store is None else {"store": store, "rank": int(os.environ["RANK"]), "world_size": world}
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo", **rendezvous)
    return DistInfo(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


def _attempt_store(world: int):
    """Under torchrun's shared rendezvous store, a key space of this restart attempt's own, or None: the store keeps
    the killed workers' gloo addresses, so without it about half the restarts fail (``Gloo connectFullMesh failed``)."""
    attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT")
    if attempt is None or os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != "True":
        return None
    from datetime import timedelta

    client = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), world, is_master=False,
                           timeout=timedelta(minutes=30))
    return dist.PrefixStore(f"bigtransfer/attempt_{attempt}", client)


def all_reduce_sum(t: torch.Tensor, info: DistInfo) -> torch.Tensor:
    if info.enabled:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def broadcast_object(obj, info: DistInfo):
    if not info.enabled:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def shutdown(info: DistInfo) -> None:
    if info.enabled and dist.is_initialized():
        dist.destroy_process_group()
