"""How the trainer cuts training data into optimizer steps: epochs, batches, TBPTT pieces.

Each epoch's order is a pure function of ``(seed + epoch, lengths)``, so a resumed run
rebuilds exactly the batches an uninterrupted one would have seen.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Iterator, Optional

import torch
from torch import Tensor

from .errors import RnnkitError

if TYPE_CHECKING:
    from .training import TrainConfig

#: Batches per length-sorted pool: large enough that a batch's samples have near-equal
#: lengths, small enough that an epoch still mixes short and long batches throughout.
POOL_BATCHES = 50

Position = tuple[int, int, int]  # (epoch, batch, piece)


def epoch_order(n: int, batch_size: int, seed: int, lengths: Optional[Tensor] = None) -> Tensor:
    """The sample indices of one epoch, ``(n,)``: batch ``b`` is ``order[b*B:(b+1)*B]``.

    Without ``lengths``, ``randperm(n)``. With them, the samples are grouped by length as in
    Hugging Face's ``LengthGroupedSampler`` and fairseq's buckets: the shuffled samples are cut
    into pools of ``POOL_BATCHES`` batches, each pool is sorted by length, and the full batches
    then go in random order (the one partial batch stays last, so batch boundaries hold).
    """
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(n, generator=generator)
    if lengths is None:
        return order
    pools = order.split(batch_size * POOL_BATCHES)
    grouped = torch.cat([pool[lengths[pool].argsort(descending=True, stable=True)] for pool in pools])
    batches = list(grouped.split(batch_size))
    last = [batches.pop()] if len(batches[-1]) < batch_size else []
    shuffled = [batches[i] for i in torch.randperm(len(batches), generator=generator).tolist()]
    return torch.cat(shuffled + last)


def batch_pieces(data: tuple[Tensor, ...], config: "TrainConfig", batches: int, done: Position,
                 device: torch.device, lengths: Optional[Tensor] = None
                 ) -> Iterator[tuple[Position, tuple[Tensor, ...]]]:
    """Yield ``((epoch, batch, piece), tensors)`` for every optimizer step after ``done``.

    Batches follow ``epoch_order`` seeded ``seed + epoch`` (consecutive, in order, when
    ``stateful``); with ``tbptt`` each batch is cut along time into pieces.
    """
    size = config.batch_size
    for epoch in range(done[0], config.epochs):
        order = None
        for b in range(batches):
            if (epoch, b) < done[:2]:
                continue
            if config.stateful:
                batch = tuple(t[b * size:(b + 1) * size] for t in data)
            else:
                if order is None:
                    order = epoch_order(len(data[0]), size, config.seed + epoch, lengths)
                index = order[b * size:(b + 1) * size]
                batch = tuple(t.index_select(0, index.to(t.device)) for t in data)
            batch = tuple(t.to(device, non_blocking=True) for t in batch)
            for p, tensors in enumerate(split_time(batch, config.tbptt)):
                if (epoch, b, p) > done:
                    yield (epoch, b, p), tensors


def split_time(batch: tuple[Tensor, ...], tbptt: Optional[int]) -> list[tuple[Tensor, ...]]:
    """Cut a batch into ``tbptt``-long pieces along time (dim 1); 1-D tensors go whole with each."""
    if tbptt is None or not any(t.dim() >= 2 for t in batch):
        return [batch]
    steps = time_steps(batch)
    return [tuple(t.narrow(1, s, min(tbptt, steps - s)) if t.dim() >= 2 else t for t in batch)
            for s in range(0, steps, tbptt)]


def time_steps(batch: tuple[Tensor, ...]) -> int:
    """The length along time (dim 1) of the batch's first tensor with one; 1 if none has."""
    return next((t.size(1) for t in batch if t.dim() >= 2), 1)


def check_lengths(lengths: Optional[Tensor], n: int, stateful: bool) -> Optional[Tensor]:
    """``lengths`` as a CPU tensor of ``n`` sample lengths, or a one-line error saying what is wrong."""
    if lengths is None:
        return None
    if stateful:
        raise RnnkitError("lengths groups shuffled batches by length, but stateful=True keeps batches in order; "
                          "pass one or the other")
    if not isinstance(lengths, Tensor) or lengths.shape != (n,):
        shape = tuple(lengths.shape) if isinstance(lengths, Tensor) else type(lengths).__name__
        raise RnnkitError(f"lengths must be a tensor of one length per training sample, shape ({n},), got {shape}")
    return lengths.cpu()
