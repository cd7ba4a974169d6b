"""CI: what a user gets from the built wheel alone (plus torch), run from outside the checkout.

Every cell (rnn, lstm, gru, mingru, minlstm, and the LSTM with layer norm or peepholes) trains a
few steps (its loss must fall) and steps one token at a time (the steps must equal the forward
pass); one CLI command trains a forecaster. Where a C++ compiler and ninja are present, the first
use must have started the background build of the compiled kernels, and after it every kernel
must load and run: a wheel missing any file a kernel needs fails here. Run with RNNKIT_CACHE
pointing at an empty directory, so that the build really happens.
"""

import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

import torch

import rnnkit
from rnnkit.cells import kernels
from rnnkit.layers import Recurrent

CELLS = {"rnn": {}, "lstm": {}, "gru": {}, "mingru": {}, "minlstm": {},
         "lstm+layer_norm": {"layer_norm": True}, "lstm+peephole": {"peephole": True}}
assert "site-packages" in rnnkit.__file__, f"rnnkit imported from {rnnkit.__file__}, not the installed wheel"
assert importlib.util.find_spec("rnnkit.bench") is None, "the wheel ships rnnkit.bench; benchmarks live in benchmarks/"
for name in kernels.KERNELS:  # every file each kernel is built from shipped
    for file in kernels.sources(name):
        assert Path(kernels.__file__).with_name(file).exists(), f"{file} missing from the wheel"


def train_and_step(name: str, options: dict) -> None:
    torch.manual_seed(0)
    layer = Recurrent(3, 16, cell=name.split("+")[0], num_layers=2, **options)
    head = torch.nn.Linear(16, 1)
    x = torch.randn(32, 12, 3)
    target = x.sum(dim=(1, 2))[:, None] / 6  # a sum over the sequence: needs memory
    optimiser = torch.optim.Adam([*layer.parameters(), *head.parameters()], lr=1e-2)
    losses = []
    for _ in range(40):
        out, _ = layer(x)
        loss = torch.nn.functional.mse_loss(head(out[:, -1]), target)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0], f"{name}: loss {losses[0]:.3f} -> {losses[-1]:.3f}, did not train"
    layer.eval()
    with torch.no_grad():
        whole, _ = layer(x[:4])
        state, steps = None, []
        for t in range(x.size(1)):
            y, state = layer.step(x[:4, t], state)
            steps.append(y)
    diff = (torch.stack(steps, 1) - whole).abs().max().item()
    assert diff < 1e-4, f"{name}: stepped outputs differ from the forward pass by {diff:.2g}"
    print(f"{name}: loss {losses[0]:.3f} -> {losses[-1]:.3f}; {x.size(1)} steps equal the forward pass")


compiler = shutil.which(os.environ.get("CXX", "c++")) and shutil.which("ninja")
for name, options in CELLS.items():  # the first use: kernels not built yet, the Python path runs
    train_and_step(name, options)
if compiler:
    status = kernels.wait_for_build(timeout=1800)
    assert status == 0, f"the background kernel build ended with {status}: see {kernels._cache() / 'build.log'}"
    missing = [name for name in kernels.KERNELS if kernels.kernel(name) is None]
    assert not missing, f"kernels not loaded after the build: {missing}"
    for name, options in CELLS.items():  # again, on the compiled kernels
        train_and_step(name, options)
    layer = Recurrent(8, 16, num_layers=2).eval()
    with torch.no_grad():
        layer.step(torch.randn(1, 8))
    assert layer.path_cache.stack is not None, "the LSTM step did not run the stream kernel"
    print("compiled kernels built in the background and loaded:", ", ".join(kernels.KERNELS))
else:
    print("no C++ compiler or ninja: the Python path ran (as it should)")

# one CLI command, as a user runs it
t = torch.arange(120, dtype=torch.float64)
rows = ["unique_id,ds,y"] + [f"s,{int(i)},{10 + 5 * torch.sin(i / 6).item():.4f}" for i in t]
Path("series.csv").write_text("\n".join(rows) + "\n")
cli = Path(sys.executable).with_name("rnnkit")
subprocess.run([str(cli), "forecast", "train", "series.csv", "--out", "model.rnnkit", "--horizon", "6",
                "--ensemble", "1", "--minutes", "0.2"], check=True)
assert (Path("model.rnnkit") / "config.json").exists(), "rnnkit forecast train wrote no bundle"
print("wheel smoke: ok")
