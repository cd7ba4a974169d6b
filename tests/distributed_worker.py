"""A small recurrent regression trained by rnnkit's trainer, alone or as one torchrun worker.

    python distributed_worker.py OUT RUN_DIR DROPOUT KILL_AT

writes the final weights to OUT (safetensors, rank 0) and prints the run's result as JSON.
With KILL_AT >= 0, rank 1 of the first attempt kills itself (SIGKILL) at that step, as a
machine lost mid-run would: torchrun restarts the workers, which resume from RUN_DIR.
"""

import json
import os
import signal
import sys

import torch
from safetensors.torch import save_file
from torch import nn

from rnnkit.layers import Recurrent
from rnnkit.training import TrainConfig, fit
from rnnkit.training.distributed import is_main, world

STEPS, CHECKPOINT_EVERY = 24, 4


def loss_fn(model: nn.ModuleDict, batch: tuple[torch.Tensor, ...], state: object) -> tuple[torch.Tensor, None]:
    inputs, target = batch
    out, _ = model["rnn"](inputs)
    return nn.functional.mse_loss(model["head"](model["drop"](out[:, -1])), target), None


def main(out: str, run_dir: str, dropout: float, kill_at: int) -> None:
    torch.manual_seed(0)
    x = torch.randn(96, 12, 3)
    y = x[:, :, 0].cumsum(1)[:, -1:] * 0.3
    model = nn.ModuleDict({"rnn": Recurrent(3, 16), "drop": nn.Dropout(dropout), "head": nn.Linear(16, 1)})

    def fault(row: dict) -> None:
        first_attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") == "0"
        if row["step"] == kill_at and world()[0] == 1 and first_attempt:
            os.kill(os.getpid(), signal.SIGKILL)

    config = TrainConfig(max_steps=STEPS, epochs=100, batch_size=16, lr=1e-2, eval_every=1,
                         checkpoint_every=CHECKPOINT_EVERY, progress=False, seed=5)
    result = fit(model, loss_fn, (x[:80], y[:80]), (x[80:], y[80:]), config, checkpoint_dir=run_dir,
                 callbacks=[fault])
    if is_main():
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, out)
        print(json.dumps({"resumed_from": result.resumed_from, "steps": result.steps,
                          "workers": world()[1], "history": result.history}))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], float(sys.argv[3]), int(sys.argv[4]))
