"""The one trainer every rnnkit task uses: ``fit(model, loss_fn, train, val, config)``.

One loop that reads top to bottom, as nanoGPT's ``train.py`` does: the next piece of a
batch, the learning rate (``lr_at``), the task's ``loss_fn``, backward, clip, step; now and
then validate, log, checkpoint, stop. No strategy, loop or accelerator objects: a task adapts
the trainer through its ``loss_fn`` and its ``TrainConfig``.

The contract with a task:

- ``train`` and ``val`` are tuples of tensors sharing the first (sample) dimension, as in
  ``TensorDataset``. They stay on the CPU; each batch is indexed out and moved to the device.
- ``loss_fn(model, batch, state) -> (loss, new_state)``: ``loss`` a scalar tensor, the mean
  over the batch (and its time steps). ``state`` is ``None`` unless truncated BPTT
  (``tbptt``) or ``stateful`` carry the previous piece's state in, detached; a state is a
  tensor, a tuple or list of them, or ``None``.
- With ``tbptt`` every tensor of two or more dims is cut along time (dim 1); 1-D tensors
  (labels, lengths) go whole with every piece.

A checkpoint holds all it takes to continue the same run bit for bit: weights, optimiser
moments, the RNG, the position in the epoch, the carried state. It is safetensors plus
JSON, never pickle, and each file appears whole or not at all.
"""

from __future__ import annotations

import math
from contextlib import closing
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, Sequence, Union

import torch
from torch import Tensor, nn

from ..allocator import keep_freed_memory
from ..errors import RnnkitError
from ..precision import autocast, check_precision
from ..progress import TrainingProgress
from .batching import batch_pieces, check_lengths, split_time, time_steps
from .checkpoints import load_checkpoint, prepare_directory, save_checkpoint, save_history
from .config import CLOCKS, RunState, TrainConfig, TrainResult, check_clock, device_of
from .distributed import (broadcast_parameters, gather_rng_states, rank0_decides, restarted, shard, sum_across,
                          sum_gradients, world)

LossFn = Callable[[nn.Module, tuple[Tensor, ...], Any], tuple[Tensor, Any]]
Data = Union[Tensor, Sequence[Tensor]]


#: the slanted triangular schedule's shape (Howard & Ruder 2018): the share of the run spent
#: rising, and how far below ``lr`` it starts and ends
SLANT_RISE, SLANT_RATIO = 0.1, 32.0


def lr_at(step: int, config: TrainConfig, total_steps: int, elapsed_s: Optional[float] = None) -> float:
    """The learning rate of optimizer step ``step`` (0-based) in a run planned for ``total_steps``.

    Linear warmup from ``lr / warmup_steps`` to ``lr`` over the first ``warmup_steps``; then
    ``lr`` (``schedule="constant"``), a half cosine from ``lr`` at the end of the warmup
    down to ``0.1 * lr`` at ``total_steps``, flat after it (``"cosine"``), or ULMFiT's slanted
    triangle (``"slanted"``): a linear rise from ``lr / 32`` to ``lr`` over the first 10 % of the
    run, a linear fall back to ``lr / 32`` over the rest; a short steep rise finds a good region
    fast, the long fall settles in it. With ``decay_over_budget`` the progress through the run is
    the larger of the steps' and ``elapsed_s`` over the ``minutes`` budget: a run ends at the
    bottom of the schedule whether its steps or its clock run out first, whatever the machine's speed.
    """
    if step < config.warmup_steps:
        return config.lr * (step + 1) / config.warmup_steps
    if config.schedule == "constant":
        return config.lr
    progress = min((step - config.warmup_steps) / max(total_steps - config.warmup_steps, 1), 1.0)
    if config.decay_over_budget and elapsed_s is not None:
        progress = max(progress, min(elapsed_s / (60 * config.minutes), 1.0))
    if config.schedule == "slanted":
        height = progress / SLANT_RISE if progress < SLANT_RISE else 1 - (progress - SLANT_RISE) / (1 - SLANT_RISE)
        return config.lr * (1 + height * (SLANT_RATIO - 1)) / SLANT_RATIO
    return config.lr * (0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * progress)))


def layer_groups_at(epoch: int, groups: int, config: TrainConfig) -> int:
    """How many of ``groups`` layer groups train in ``epoch`` (0-based), counted from the top.

    Gradual unfreezing (ULMFiT): with ``unfreeze_every = n`` the top group trains from the
    start and each group below it joins ``n`` epochs after the one above, so a pretrained
    lower layer is not overwritten by the large gradients of a freshly initialised head.
    """
    if config.unfreeze_every is None:
        return groups
    return min(groups, 1 + epoch // config.unfreeze_every)


@torch.no_grad()
def evaluate(model: nn.Module, loss_fn: LossFn, data: Data, config: TrainConfig = TrainConfig()) -> float:
    """Mean of ``loss_fn`` over ``data``, weighted by samples, in eval mode (no dropout).

    Batches go in order, each cut with ``tbptt`` as in training, its state carried between
    the pieces and each piece weighted by its length; with ``stateful`` the state also runs
    across batches and a last partial batch is left out. The model returns to its mode.
    Each ``loss_fn`` call runs in ``config.precision`` (``precision.py``).
    """
    data = _as_data(data, "data", config)
    device, size = next(model.parameters()).device, config.batch_size
    check_precision(config.precision, device)
    samples = len(data[0]) - len(data[0]) % size if config.stateful else len(data[0])
    was_training, total, state = model.training, 0.0, None
    model.eval()
    try:
        for start in range(0, samples, size):
            pieces = split_time(tuple(t[start:start + size].to(device) for t in data), config.tbptt)
            steps, state = sum(time_steps(p) for p in pieces), state if config.stateful else None
            for piece in pieces:
                with autocast(config.precision, device):
                    loss, state = loss_fn(model, piece, state)
                total += loss.item() * len(piece[0]) * time_steps(piece) / steps
    finally:
        model.train(was_training)
    return total / samples


def budget_shares(minutes: Optional[float], parts: int, clock: str = "wall") -> Iterator[Optional[float]]:
    """The budget of each of ``parts`` runs made one after another: an equal share of what is left
    of ``minutes`` (on ``clock``) when it starts, so time one run leaves unused goes to the next
    (``None``: no budget)."""
    check_clock(clock, "budget_shares")
    now = CLOCKS[clock]
    start = now()
    for k in range(parts):
        if minutes is None:
            yield None
        else:
            left = max(minutes - (now() - start) / 60, 1e-3)
            yield left / (parts - k)


def budget_fill(minutes: Optional[float], most: int, clock: str = "wall") -> Iterator[Optional[float]]:
    """The budget of up to ``most`` runs made one after another while time allows: each gets all
    that is left of ``minutes`` (on ``clock``), and another starts only if what is left is at
    least what the last run took. Runs that stop early (early stopping) leave room for more:
    many on little data, one on much. Without a budget (``None``), one run."""
    check_clock(clock, "budget_fill")
    if minutes is None:
        yield None
        return
    now = CLOCKS[clock]
    start, took = now(), 0.0
    for _ in range(most):
        began = now()
        left = minutes - (began - start) / 60
        if left <= 0 or left < took:
            return
        yield left
        took = (now() - began) / 60


def fit(
    model: nn.Module,
    loss_fn: LossFn,
    train: Data,
    val: Optional[Data] = None,
    config: TrainConfig = TrainConfig(),
    *,
    checkpoint_dir: Optional[Union[Path, str]] = None,
    resume: bool = False,
    callbacks: Sequence[Callable[[dict], None]] = (),
    lengths: Optional[Tensor] = None,
    layer_groups: Optional[Sequence[Sequence[nn.Parameter]]] = None,
) -> TrainResult:
    """Train ``model`` in place with AdamW, minimising ``loss_fn`` over ``train`` (see the module doc).

    With ``val``, the weights of the lowest validation loss are put back at the end (after
    completion, early stopping or the time budget); without, the last weights stand.
    ``checkpoint_dir`` receives ``checkpoint.safetensors``, ``checkpoint.json``, ``history.json``
    and ``history.csv`` every ``checkpoint_every`` steps and at the end. ``resume=True``
    continues the run checkpointed there, bit-identical to an uninterrupted run, provided the
    model is built as before. Each callback gets a copy of every history row as it is logged.
    ``lengths`` (one per training sample) groups each epoch's batches by length, so that a
    batch trimmed to its longest sample wastes little time on padding (see ``epoch_order``).
    With ``precision="bf16"`` each ``loss_fn`` call (training and validation) runs under
    bfloat16 autocast; the weights, gradients and optimiser stay float32 (``precision.py``).
    ``layer_groups`` (the model's parameters from the bottom layer to the top; any not listed
    join the top group) get ULMFiT's fine-tuning: discriminative rates (``layer_lr_decay``) and
    gradual unfreezing (``unfreeze_every``, :func:`layer_groups_at`).
    Under ``torchrun`` the workers share each batch and sum their gradients, and a worker
    restarted after a fault resumes from ``checkpoint_dir`` (:mod:`.distributed`).
    """
    if not isinstance(config, TrainConfig):
        raise RnnkitError(f"config must be a TrainConfig, got {type(config).__name__}")
    train = _as_data(train, "train", config)
    lengths = check_lengths(lengths, len(train[0]), config.stateful)
    val = None if val is None else _as_data(val, "val", config)
    if config.patience is not None and val is None:
        raise RnnkitError(f"patience={config.patience} needs validation data; pass val=... or patience=None")
    device, n = device_of(config.device), len(train[0])
    check_precision(config.precision, device)
    directory = prepare_directory(checkpoint_dir, config, resume)
    rank, workers = world()
    if workers > 1 and config.batch_size < workers:
        raise RnnkitError(f"batch_size={config.batch_size} cannot be shared by {workers} workers; "
                          f"raise it to at least {workers} or start fewer workers")
    resume = resume or (restarted() and directory is not None and (directory / "checkpoint.safetensors").is_file())
    if device.type == "cpu":
        keep_freed_memory()  # each step's activations reused, not page-faulted in again (allocator.py)
    model.to(device).train()
    broadcast_parameters(model)
    groups = _param_groups(model, layer_groups, config)
    unfreezing = config.unfreeze_every is not None and len(groups) > 1
    optimizer = torch.optim.AdamW(groups, lr=config.lr, weight_decay=config.weight_decay)
    batches = n // config.batch_size if config.stateful else math.ceil(n / config.batch_size)
    pieces = len(split_time(tuple(t[:1] for t in train), config.tbptt))
    total = min(batches * pieces * config.epochs, config.max_steps or math.inf)
    run = RunState(loss_sum=torch.zeros((), device=device))
    if resume:
        load_checkpoint(directory, model, optimizer, run, config, n, device)
        resumed_from = run.step
    else:
        resumed_from = 0
        torch.manual_seed(config.seed + rank)  # each worker its own dropout
    clock = CLOCKS[config.clock]
    started, lr = clock(), config.lr
    elapsed = lambda: run.elapsed_s + clock() - started  # noqa: E731

    def log() -> None:
        sum_across(run.loss_sum)  # every worker's share of the steps' losses
        row = _log_row(run, model, loss_fn, val, config, lr, elapsed())
        bar.val_loss = row["val_loss"]
        for callback in callbacks:
            callback(dict(row))

    def checkpoint() -> None:
        sum_across(run.loss_sum)  # rank 0 keeps the workers' total, the others start again from 0
        if rank != 0:
            run.loss_sum.zero_()
        states = gather_rng_states()
        if rank == 0:
            save_checkpoint(directory, model, optimizer, run, config, elapsed(), n, rng_states=states)

    with closing(TrainingProgress(config.progress and rank == 0, total, run.step)) as bar:
        for (epoch, batch, piece), tensors in batch_pieces(train, config, batches, run.done, device, lengths):
            time_up = config.minutes is not None and elapsed() >= 60 * config.minutes
            if workers > 1 and config.minutes is not None:
                time_up = rank0_decides(time_up)  # one clock for all, so that all stop at the same step
            stopped = _stop_reason(run, config, time_up)
            if stopped:
                break
            if piece == 0 and (batch == 0 or not config.stateful):
                run.carry = None  # a new sequence starts from the model's zero state
            lr = lr_at(run.step, config, total, elapsed())
            _set_groups(optimizer.param_groups, lr, layer_groups_at(epoch, len(groups), config) if unfreezing else None)
            tensors, share = shard(tensors, rank, workers)
            with autocast(config.precision, device):  # the forward pass and the loss; backward outside it
                loss, state = loss_fn(model, tensors, run.carry)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            sum_gradients(model, share)
            if config.clip_norm is not None:
                nn.utils.clip_grad_norm_(model.parameters(), config.clip_norm)
            optimizer.step()
            if config.tbptt or config.stateful:
                run.carry = _detach(state)  # the next piece starts here, without backprop into this one
            run.loss_sum += loss.detach() * share if workers > 1 else loss.detach()
            run.loss_count, run.step, run.done = run.loss_count + 1, run.step + 1, (epoch, batch, piece)
            epoch_end = batch == batches - 1 and piece == pieces - 1
            if epoch_end:
                run.epochs_completed = epoch + 1
            bar.update(run.step, loss)

            if (run.step % config.eval_every == 0) if config.eval_every else epoch_end:
                log()
            if directory and config.checkpoint_every and run.step % config.checkpoint_every == 0:
                checkpoint()
        else:
            stopped = "completed"
        if directory:  # before the closing row, so that a resume continues exactly from here
            checkpoint()
        if run.loss_count:
            log()  # the steps since the last row
    if unfreezing:
        _set_groups(optimizer.param_groups, lr, len(groups))  # every parameter trainable again
    if run.best_weights is not None:
        model.load_state_dict(run.best_weights)
    if directory and rank == 0:
        save_history(directory, run.history)
    return TrainResult(history=run.history, best_val_loss=run.best_val, steps=run.step,
                       epochs_completed=run.epochs_completed, stopped=stopped, elapsed_s=elapsed(),
                       resumed_from=resumed_from)


# ------------------------------------------------------------------------ the loop's parts


def _param_groups(model: nn.Module, layer_groups: Optional[Sequence[Sequence[nn.Parameter]]],
                  config: TrainConfig) -> list[dict[str, Any]]:
    """The optimizer's parameter groups, bottom to top, each with its ``lr_scale``.

    Without ``layer_groups`` the whole model is one group. A parameter listed twice (tied
    weights) stays in its first group; one not listed joins the top group (the head).
    """
    params = list(model.parameters())
    if not layer_groups:
        return [{"params": params, "lr_scale": 1.0}]
    seen: set[int] = set()
    lists: list[list[nn.Parameter]] = []
    for group in layer_groups:
        lists.append([p for p in group if id(p) not in seen and not seen.add(id(p))])
    lists[-1] += [p for p in params if id(p) not in seen]
    if any(not group for group in lists):
        raise RnnkitError(f"layer_groups has an empty group ({[len(g) for g in lists]} parameters per group); "
                          "give each group at least one parameter")
    top = len(lists) - 1
    return [{"params": group, "lr_scale": config.layer_lr_decay ** -(top - k)} for k, group in enumerate(lists)]


def _set_groups(param_groups: list[dict[str, Any]], lr: float, training: Optional[int]) -> None:
    """Each group's rate (``lr`` times its scale); with ``training``, only the top ``training``
    groups get gradients (the others are frozen: no backward through them, no update)."""
    first = len(param_groups) - (training or 0)
    for k, group in enumerate(param_groups):
        group["lr"] = lr * group["lr_scale"]
        if training is None:
            continue
        for p in group["params"]:
            p.requires_grad_(k >= first)


def _detach(state: Any) -> Any:
    """The state with every tensor in it detached from the graph, its structure kept."""
    if isinstance(state, Tensor):
        return state.detach()
    if isinstance(state, (tuple, list)):
        items = [_detach(s) for s in state]
        return type(state)(*items) if hasattr(state, "_fields") else type(state)(items)  # namedtuples too
    return state


def _log_row(run: RunState, model: nn.Module, loss_fn: LossFn, val: Optional[tuple[Tensor, ...]],
             config: TrainConfig, lr: float, elapsed: float) -> dict[str, Any]:
    """Close a history row: the mean train loss since the last row, validation, the best weights."""
    train_loss = (run.loss_sum / run.loss_count).item() if run.loss_count else None
    if train_loss is not None and not math.isfinite(train_loss):
        raise RnnkitError(f"training diverged: train loss is {train_loss} at step {run.step}; "
                          f"lower lr (now {config.lr}) or set clip_norm")
    val_loss = evaluate(model, loss_fn, val, config) if val is not None else None
    if val_loss is not None and (run.best_val is None or val_loss < run.best_val):
        run.best_val, run.bad_evals = val_loss, 0
        run.best_weights = {k: v.detach().clone() for k, v in model.state_dict().items()}
    elif val_loss is not None:
        run.bad_evals += 1
    row = dict(step=run.step, epoch=run.done[0] + 1, train_loss=train_loss, val_loss=val_loss,
               lr=lr, elapsed_s=round(elapsed, 3))
    run.history.append(row)
    run.loss_sum.zero_()
    run.loss_count = 0
    return row


def _stop_reason(run: RunState, config: TrainConfig, time_up: bool) -> Optional[str]:
    if config.patience is not None and run.bad_evals >= config.patience:
        return "early_stopping"
    if config.max_steps is not None and run.step >= config.max_steps:
        return "max_steps"
    if time_up:
        return "time_budget"
    return None


# ---------------------------------------------------------------------- checking the inputs


def _as_data(data: Data, name: str, config: TrainConfig) -> tuple[Tensor, ...]:
    data = (data,) if isinstance(data, Tensor) else data
    if not isinstance(data, (tuple, list)) or not data or not all(isinstance(t, Tensor) for t in data):
        raise RnnkitError(f"{name} must be a tuple of tensors sharing dim 0 (like TensorDataset), "
                          f"got {type(data).__name__}")
    shapes = [tuple(t.shape) for t in data]
    if any(len(s) == 0 for s in shapes) or len({s[0] for s in shapes}) != 1 or shapes[0][0] == 0:
        raise RnnkitError(f"{name} tensors must share a non-empty first (sample) dimension, "
                          f"got shapes {shapes}")
    times = sorted({s[1] for s in shapes if len(s) >= 2})
    if config.tbptt is not None and len(times) > 1:
        raise RnnkitError(f"tbptt cuts every {name} tensor of 2+ dims along dim 1 (time), but their lengths "
                          f"differ: {times}; pad them to one length or make per-sample tensors 1-D")
    if config.stateful and shapes[0][0] < config.batch_size:
        raise RnnkitError(f"stateful=True uses only full batches, but {name} has {shapes[0][0]} samples, "
                          f"fewer than batch_size={config.batch_size}; lower batch_size")
    return tuple(data)


__all__ = ["Data", "LossFn", "budget_fill", "budget_shares", "evaluate", "fit", "layer_groups_at", "lr_at"]
