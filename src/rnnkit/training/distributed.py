"""Data-parallel training across processes and machines, launched by ``torchrun``.

``torchrun --nproc-per-node 2 -m rnnkit textgen train corpus.txt --out lm --checkpoint-dir run``
starts one worker process per slot and tells each its ``RANK`` and ``WORLD_SIZE``; the trainer
joins them into one process group (gloo on the CPU, NCCL on GPUs) and runs the same loop in
each, nothing else changed:

- every worker builds the same model from the same seed and reads the same data; rank 0's
  weights are broadcast once at the start, so they are equal even if a task's set-up drew
  random numbers differently;
- each step, worker ``r`` of ``W`` takes rows ``r, r + W, r + 2W, ...`` of the batch (the same
  rows every step, so a carried state stays with its stream). After backward each gradient
  is weighted by the worker's share of the batch and summed across workers: the update is the
  one-process update on the whole batch, up to the order of float additions;
- validation runs in every worker on the same weights and data, so all reach the same early
  stopping and best weights without talking; the time budget is rank 0's clock, broadcast;
- rank 0 alone shows progress and writes checkpoints, history and the bundle. A checkpoint
  keeps every worker's random state, so dropout continues as in an uninterrupted run.

Faults: with ``--max-restarts N`` torchrun restarts every worker when one dies (killed, out
of memory, a machine lost). A restarted worker (``TORCHELASTIC_RESTART_COUNT`` > 0) resumes
from the run's last checkpoint, so a fault costs at most ``checkpoint_every`` steps and the
run ends with the weights of one never interrupted. Across machines the checkpoint directory
must be one that every node sees (a shared file system).

Without ``WORLD_SIZE`` (or with 1) every function here is a no-op and training is one process.
"""

from __future__ import annotations

import os
from typing import Optional

import torch
import torch.distributed as dist
from torch import Tensor, nn

from ..errors import RnnkitError


def world() -> tuple[int, int]:
    """``(rank, world_size)`` of this process; the process group is joined on first call."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size <= 1:
        return 0, 1
    if not dist.is_available():
        raise RnnkitError("WORLD_SIZE is set but this torch build has no torch.distributed; "
                          "run without torchrun or install a torch with distributed support")
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    # torchrun's workers share its rendezvous store, which outlives a restart: without a prefix
    # of their own, restarted workers read the addresses their dead predecessors published
    store, rank, size = next(dist.rendezvous("env://"))
    attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
    dist.init_process_group("nccl" if cuda else "gloo", store=dist.PrefixStore(f"rnnkit/attempt{attempt}", store),
                            rank=rank, world_size=size)
    return dist.get_rank(), dist.get_world_size()


def is_main() -> bool:
    """True in the process that writes files and prints progress: rank 0, or the only process."""
    return world()[0] == 0


def restarted() -> bool:
    """True in a worker that torchrun restarted after a fault: it should resume from its checkpoint."""
    return int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")) > 0


def shard(tensors: tuple[Tensor, ...], rank: int, size: int) -> tuple[tuple[Tensor, ...], float]:
    """This worker's rows of a batch (``rank::size``) and its share of the batch's rows."""
    if size == 1:
        return tensors, 1.0
    rows = len(tensors[0])
    if rows < size:
        raise RnnkitError(f"a batch of {rows} row(s) cannot be shared by {size} workers; "
                          f"raise batch_size to at least {size} or start fewer workers")
    mine = tuple(t[rank::size] for t in tensors)
    return mine, len(mine[0]) / rows


def broadcast_parameters(model: nn.Module) -> None:
    """Every worker takes rank 0's weights and buffers."""
    if world()[1] > 1:
        for tensor in model.state_dict().values():
            dist.broadcast(tensor, src=0)


def sum_gradients(model: nn.Module, share: float) -> None:
    """Each gradient weighted by this worker's ``share`` of the batch, summed across workers,
    in one flat all-reduce."""
    if world()[1] == 1:
        return
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    if not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads]).mul_(share)
    dist.all_reduce(flat)
    offset = 0
    for g in grads:
        g.copy_(flat[offset:offset + g.numel()].view_as(g))
        offset += g.numel()


def sum_across(value: Tensor) -> Tensor:
    """``value`` summed over the workers, in place (every worker gets the total)."""
    if world()[1] > 1:
        dist.all_reduce(value)
    return value


def rank0_decides(flag: bool) -> bool:
    """Rank 0's ``flag`` in every worker: one decision from one clock."""
    if world()[1] == 1:
        return flag
    decision = torch.tensor([int(flag)])
    dist.broadcast(decision, src=0)
    return bool(decision.item())


def gather_rng_states() -> list[Tensor]:
    """Every worker's CPU random state, in rank order (each worker gets the list)."""
    state = torch.get_rng_state()
    rank, size = world()
    if size == 1:
        return [state]
    states = [torch.empty_like(state) for _ in range(size)]
    dist.all_gather(states, state)
    return states


def rng_key(rank: Optional[int] = None) -> str:
    """The checkpoint's name for a worker's random state; rank 0's is the one-process name."""
    rank = world()[0] if rank is None else rank
    return "rng.torch" if rank == 0 else f"rng.torch.rank{rank}"


__all__ = ["broadcast_parameters", "gather_rng_states", "is_main", "rank0_decides", "restarted", "rng_key",
           "shard", "sum_across", "sum_gradients", "world"]
