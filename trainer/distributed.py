"""Data-parallel training on PyTorch DistributedDataParallel (DDP).

One process per rank; torchrun (or `recsys train --nproc N`, which runs torchrun for you)
starts them and sets the usual rendezvous variables: RANK, WORLD_SIZE, LOCAL_RANK,
MASTER_ADDR, MASTER_PORT. Multi-node runs use torchrun's own flags (--nnodes, --node-rank,
--rdzv-endpoint) unchanged. Without those variables everything here is a no-op (world of 1),
so `fit` is the same code with or without DDP.

Contract of a distributed `fit` (see trainer/families/next_item.py):
- every rank builds the same windows and the same shuffled order (same seed), then takes its
  own disjoint slice of each global batch (`Dist.shard`): the global batch stays
  `batch_size`, so one step of N ranks is one step of 1 process, computed in N parts;
- DDP averages the gradients; parameters start equal (DDP broadcasts rank 0's);
- only rank 0 validates, checkpoints and exports; it tells the others when to stop.

With a Parquet log too large for one rank (TrainConfig.shard_by_user), trainer/data/shards.py
reads per-rank user shards instead, agreeing on the item vocabulary and the steps per epoch
through `gather_objects` and `min`; each rank then batches its own windows whole (the family's
`local_batches`), and `stream_to_main` brings every rank's per-user rows to rank 0 for export,
a chunk at a time.

Backend: NCCL when CUDA is available (each rank on cuda:LOCAL_RANK), else gloo on CPU;
RECSYS_DIST_BACKEND=gloo|nccl overrides.
"""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as torch_dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

__all__ = ["Dist", "TrainStep", "current", "init_from_env", "launch", "shutdown"]


@dataclass(frozen=True)
class Dist:
    """Where this process stands in the group; the default is a world of one."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: str = "cpu"

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    def shard(self, *tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """This rank's rows of a global batch: rows rank, rank + world, ... (disjoint, covering)."""
        return tuple(t[self.rank :: self.world_size].to(self.device) for t in tensors)

    def wrap(self, step: nn.Module, partial: bool = False) -> nn.Module:
        """`step` in DDP when distributed, else unchanged. `partial`: a step may leave some
        parameters without a gradient, which DDP then looks for after every backward pass."""
        if not self.enabled:
            return step
        ids = [self.local_rank] if self.device.startswith("cuda") else None
        return DistributedDataParallel(step, device_ids=ids, find_unused_parameters=partial)

    def from_main(self, value: int) -> int:
        """Rank 0's `value` on every rank (a collective: every rank must call it)."""
        if not self.enabled:
            return value
        t = torch.tensor([value], dtype=torch.int64, device=self.device)
        torch_dist.broadcast(t, src=0)
        return int(t.item())

    def copy_from_main(self, module: nn.Module) -> None:
        """Overwrites `module`'s parameters and buffers with rank 0's, in place (a collective)."""
        if not self.enabled:
            return
        with torch.no_grad():
            for tensor in module.state_dict().values():
                torch_dist.broadcast(tensor, src=0)

    def min(self, value: int) -> int:
        """The smallest `value` over the ranks (a collective)."""
        if not self.enabled:
            return value
        t = torch.tensor([value], dtype=torch.int64, device=self.device)
        torch_dist.all_reduce(t, op=torch_dist.ReduceOp.MIN)
        return int(t.item())

    def gather_objects(self, value: object) -> list:
        """Every rank's `value` (picklable), in rank order, on every rank (a collective)."""
        if not self.enabled:
            return [value]
        out: list = [None] * self.world_size
        torch_dist.all_gather_object(out, value)
        return out

    def stream_to_main(self, rows: Iterable, chunk: int = 4096) -> Iterator:
        """On rank 0: its own `rows`, then each other rank's in rank order, received `chunk`
        rows (picklable) at a time, so rank 0 never holds a whole rank's rows; on the other
        ranks: sends theirs and yields nothing. A collective: every rank must exhaust it."""
        if not self.enabled or self.is_main:
            yield from rows
        if not self.enabled:
            return
        device = torch.device(self.device) if self.device.startswith("cuda") else None
        if self.is_main:
            for src in range(1, self.world_size):
                box: list = [None]
                while True:
                    torch_dist.recv_object_list(box, src=src, device=device)
                    if box[0] is None:  # that rank's end
                        break
                    yield from box[0]
            return
        it = iter(rows)
        while part := list(itertools.islice(it, chunk)):
            torch_dist.send_object_list([part], dst=0, device=device)
        torch_dist.send_object_list([None], dst=0, device=device)

    def mean(self, value: float) -> float:
        """The mean of `value` over the ranks (a collective)."""
        if not self.enabled:
            return value
        t = torch.tensor([value], dtype=torch.float64, device=self.device)
        torch_dist.all_reduce(t)
        return float(t.item()) / self.world_size


class TrainStep(nn.Module):
    """One training step's forward pass as a module, so DDP sees a `forward` that uses every
    parameter the loss touches (the losses call `encode`/`score`, not the model's forward)."""

    def __init__(self, model: nn.Module, loss_fn):
        super().__init__()
        self.model = model
        self.loss_fn = loss_fn  # (model, inputs, targets, *extra) -> scalar loss

    def forward(self, inputs: torch.Tensor, targets: torch.Tensor, *extra: torch.Tensor) -> torch.Tensor:
        return self.loss_fn(self.model, inputs, targets, *extra)


def current() -> Dist:
    """The group this process already joined (init_from_env), or a world of one."""
    if not (torch_dist.is_available() and torch_dist.is_initialized()):
        return Dist()
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = f"cuda:{local_rank}" if torch_dist.get_backend() == "nccl" else "cpu"
    return Dist(torch_dist.get_rank(), torch_dist.get_world_size(), local_rank, device)


def init_from_env(timeout_s: float = 600.0) -> Dist:
    """Joins the process group described by torchrun's environment variables.

    A no-op returning a world of one when WORLD_SIZE is unset or 1. Raises ValueError on a
    half-set environment or an unknown RECSYS_DIST_BACKEND.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1 or torch_dist.is_initialized():
        return current()
    missing = [v for v in ("RANK", "MASTER_ADDR", "MASTER_PORT") if v not in os.environ]
    if missing:
        raise ValueError(f"WORLD_SIZE={world} but {', '.join(missing)} unset: start ranks with torchrun")
    backend = os.environ.get("RECSYS_DIST_BACKEND") or ("nccl" if torch.cuda.is_available() else "gloo")
    if backend not in ("gloo", "nccl"):
        raise ValueError(f"RECSYS_DIST_BACKEND must be gloo or nccl; got {backend!r}")
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    torch_dist.init_process_group(backend, init_method="env://", timeout=timedelta(seconds=timeout_s))
    return current()


def shutdown() -> None:
    if torch_dist.is_available() and torch_dist.is_initialized():
        torch_dist.destroy_process_group()


def launch(nproc: int, argv: list[str]) -> int:
    """Runs `recsys <argv>` in `nproc` local ranks through torchrun; returns its exit status.

    Equivalent to `torchrun --standalone --nproc-per-node N -m recsys.cli ARGV`; for several
    machines run torchrun yourself with --nnodes/--rdzv-endpoint.
    """
    if nproc < 1:
        raise ValueError(f"nproc must be >= 1; got {nproc}")
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc-per-node={nproc}",
        "-m",
        "recsys.cli",
        *argv,
    ]
    # one intra-op thread per rank unless told otherwise: N ranks x all cores oversubscribes
    env = {"OMP_NUM_THREADS": "1", **os.environ}
    return subprocess.call(cmd, env=env)
