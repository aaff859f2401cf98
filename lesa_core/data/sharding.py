"""Which shard of a dataset this process reads: its rank and the world size, with or without a process group."""

from __future__ import annotations

import torch.distributed as dist


def distributed_rank_and_world_size() -> tuple[int, int]:
    """(rank, world size) of the initialised process group, (0, 1) without one."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1
