"""Checkpoints of a training run: everything it takes to continue the same run bit for bit.

A checkpoint is ``checkpoint.safetensors`` (weights, optimiser moments, RNG state, best
weights, carried state, and the run's position as JSON in its header) plus a readable copy
of that JSON, ``checkpoint.json``, and the metrics history as JSON and CSV. Never pickle;
each file appears whole or not at all.
"""

from __future__ import annotations

import csv
import io
import json
import shutil
from pathlib import Path
from typing import Any, Optional, Union

import torch
from safetensors import safe_open
from safetensors.torch import save as safetensors_bytes
from torch import Tensor, nn

from ..errors import RnnkitError
from ..files import atomic_write_files
from .config import RunState, TrainConfig
from .distributed import rng_key, world


#: the fields that shape the sequence of updates: a resumed run must share them
_RESUME_FIELDS = ("epochs", "max_steps", "batch_size", "lr", "weight_decay", "clip_norm",
                  "schedule", "warmup_steps", "tbptt", "stateful", "seed")
_HISTORY_COLUMNS = ("step", "epoch", "train_loss", "val_loss", "lr", "elapsed_s")
#: the plain fields of ``RunState`` a checkpoint keeps in its JSON
_RUN_FIELDS = ("step", "done", "loss_count", "epochs_completed", "history", "best_val", "bad_evals")
_TMP_PREFIX = ".tmp-checkpoint-"


def prepare_directory(path: Optional[Union[Path, str]], config: TrainConfig, resume: bool) -> Optional[Path]:
    if path is None:
        if config.checkpoint_every is not None or resume:
            what = "resume=True" if resume else f"checkpoint_every={config.checkpoint_every}"
            raise RnnkitError(f"{what} needs checkpoint_dir; pass fit(..., checkpoint_dir='runs/x')")
        return None
    directory = Path(path)
    directory.mkdir(parents=True, exist_ok=True)
    for stale in directory.glob(_TMP_PREFIX + "*"):  # left by a process killed mid-write
        shutil.rmtree(stale, ignore_errors=True)
    return directory


def save_checkpoint(directory: Path, model: nn.Module, optimizer: torch.optim.Optimizer, run: RunState,
                     config: TrainConfig, elapsed: float, n_train: int,
                     rng_states: Optional[list[Tensor]] = None) -> None:
    """Write ``checkpoint.safetensors`` (the tensors, and ``meta`` in its header) and ``checkpoint.json``.

    ``rng_states``: every worker's random state, in rank order (default: this process's).
    """
    tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
    tensors.update({f"best.{k}": v for k, v in (run.best_weights or {}).items()})
    optim, scalars = optimizer.state_dict(), {}
    for i, state in optim["state"].items():
        for name, value in state.items():
            if isinstance(value, Tensor):
                tensors[f"optim.state.{i}.{name}"] = value
            else:
                scalars.setdefault(str(i), {})[name] = value
    for rank, state in enumerate(rng_states or [torch.get_rng_state()]):
        tensors[rng_key(rank)] = state
    tensors["run.loss_sum"] = run.loss_sum
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        tensors.update({f"rng.cuda.{i}": s for i, s in enumerate(torch.cuda.get_rng_state_all())})
    groups = [{k: v for k, v in g.items() if k != "params"} for g in optim["param_groups"]]
    meta = dict(format="rnnkit.checkpoint", format_version=1, **{k: getattr(run, k) for k in _RUN_FIELDS},
                elapsed_s=elapsed, n_train=n_train, config=config.to_dict(), optimizer=dict(
                    param_groups=groups, scalars=scalars), carry=_flatten(run.carry, "carry", tensors))
    # copies: safetensors refuses tensors that share memory (tied weights)
    tensors = {k: v.detach().to("cpu", copy=True).contiguous() for k, v in tensors.items()}
    blob = safetensors_bytes(tensors, metadata={"checkpoint": json.dumps(meta)})
    text = json.dumps(meta, indent=1).encode()
    # each file whole; the checkpoint first, and it carries its own JSON, so a crash between two
    # renames cannot pair new tensors with an old position
    atomic_write_files(directory, {"checkpoint.safetensors": blob, "checkpoint.json": text,
                                   **history_files(run.history)}, tmp_prefix=_TMP_PREFIX)


def load_checkpoint(directory: Path, model: nn.Module, optimizer: torch.optim.Optimizer, run: RunState,
                     config: TrainConfig, n_train: int, device: torch.device) -> None:
    """Put a run back as ``save_checkpoint`` left it; the JSON in the safetensors header rules."""
    path = directory / "checkpoint.safetensors"
    if not path.is_file():
        raise RnnkitError(f"resume=True but there is no checkpoint in {directory} "
                          f"(no checkpoint.safetensors); start a fresh run with resume=False")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta, tensors = json.loads(f.metadata()["checkpoint"]), {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # a foreign or damaged file: say which and why
        raise RnnkitError(f"cannot read checkpoint {path}: {e}; delete it or start a fresh run") from e
    mismatch = [f"{k}={meta['config'].get(k)!r} there, {getattr(config, k)!r} here"
                for k in _RESUME_FIELDS if meta["config"].get(k) != getattr(config, k)]
    if meta["n_train"] != n_train:
        mismatch.append(f"{meta['n_train']} training samples there, {n_train} here")
    if mismatch:
        raise RnnkitError(f"cannot resume from {path}: {'; '.join(mismatch)}; "
                          f"use the same config and data, or resume=False")
    part = lambda prefix: {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}  # noqa
    try:
        model.load_state_dict(part("model."))
    except RuntimeError as e:
        raise RnnkitError(f"checkpoint {path} does not fit this model ({e}); "
                          f"build the model as in the checkpointed run") from e
    state: dict[int, dict[str, Any]] = {}
    for key, value in part("optim.state.").items():
        i, name = key.split(".", 1)
        state.setdefault(int(i), {})[name] = value
    for i, values in meta["optimizer"]["scalars"].items():
        state.setdefault(int(i), {}).update(values)
    live = optimizer.state_dict()["param_groups"]
    groups = [dict(saved, params=g["params"]) for saved, g in zip(meta["optimizer"]["param_groups"], live)]
    optimizer.load_state_dict({"state": state, "param_groups": groups})
    torch.set_rng_state(tensors.get(rng_key(), tensors["rng.torch"]))  # a new worker: rank 0's
    if part("rng.cuda.") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([tensors[f"rng.cuda.{i}"] for i in range(len(part("rng.cuda.")))])
    run.best_weights = {k: v.to(device) for k, v in part("best.").items()} or None
    run.loss_sum = tensors["run.loss_sum"].to(device)
    if world()[0] != 0:
        run.loss_sum.zero_()  # rank 0 holds the workers' total
    run.carry = _unflatten(meta["carry"], "carry", tensors, device)
    for name in _RUN_FIELDS:
        setattr(run, name, meta[name])
    run.done, run.elapsed_s = tuple(run.done), meta["elapsed_s"]


def _flatten(state: Any, prefix: str, out: dict[str, Tensor]) -> Any:
    """Put a carried state's tensors into ``out`` as ``prefix.i.j``; return its shape as JSON."""
    if state is None:
        return None
    if isinstance(state, Tensor):
        out[prefix] = state
        return "tensor"
    if isinstance(state, (tuple, list)):
        return [type(state).__name__, [_flatten(s, f"{prefix}.{i}", out) for i, s in enumerate(state)]]
    raise RnnkitError(f"cannot checkpoint a carried state of type {type(state).__name__}; "
                      f"have loss_fn return a tensor, a tuple or list of tensors, or None")


def _unflatten(shape: Any, prefix: str, tensors: dict[str, Tensor], device: torch.device) -> Any:
    if shape is None:
        return None
    if shape == "tensor":
        return tensors[prefix].to(device)
    items = [_unflatten(s, f"{prefix}.{i}", tensors, device) for i, s in enumerate(shape[1])]
    return items if shape[0] == "list" else tuple(items)


def save_history(directory: Path, history: list[dict[str, Any]]) -> None:
    """Write the metrics history as ``history.json`` and ``history.csv``, each whole or not at all."""
    atomic_write_files(directory, history_files(history), tmp_prefix=_TMP_PREFIX)


def history_files(history: list[dict[str, Any]]) -> dict[str, bytes]:
    table = io.StringIO()
    writer = csv.DictWriter(table, fieldnames=_HISTORY_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(history)
    return {"history.json": json.dumps(history, indent=1).encode(), "history.csv": table.getvalue().encode()}
