"""ONNX export: onnxruntime against PyTorch eager, latency of one call at batch 1, one thread.

Two entry points a deployment calls per request, at their task's default sizes:

- the forecaster's network (``rnnkit export`` graph ``forecast``): one window of a monthly series
  (lookback 36, horizon 12, 3 quantiles, an ensemble of 3 LSTMs of 32 units) to its quantiles;
- the language model's step (graph ``lm_step``): one token and the state to the next logits and
  state (a 512-unit LSTM over a character vocabulary).

Per entry point three candidates, timed interleaved in one process (``benchmarks/common/timing.py``):
PyTorch eager on the task's own model (what ``predict`` / ``generate`` run: the fused kernels, and
the compiled streaming kernel for the step when it is built), PyTorch eager on the reference
equations that the export traces, and onnxruntime on the exported graph. The ratio quoted is
PyTorch eager time / onnxruntime time (> 1: onnxruntime is faster). The models are trained for
a couple of steps only: latency does not depend on the weights.

    PYTHONPATH=src python benchmarks/export.py            # writes benchmarks/results/export.json
    PYTHONPATH=src python benchmarks/export.py --quick    # a smoke run (not quoted)
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))  # run from a checkout

from common.timing import interleaved, write_result  # noqa: E402
from rnnkit.cells.kernels import stream_kernel  # noqa: E402
from rnnkit.export import export_bundle  # noqa: E402
from rnnkit.export.graphs import ensemble_forecast  # noqa: E402
from rnnkit.export.recurrent import reference_copy  # noqa: E402
from rnnkit.export.runtime import session  # noqa: E402
from rnnkit.tasks import Forecaster, TextGenerator  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


def monthly_series(months: int = 144) -> pd.DataFrame:
    """A trend and a yearly season, AirPassengers-like in shape (latency does not depend on the values)."""
    t = np.arange(months)
    y = 100 + 2 * t + 20 * np.sin(2 * np.pi * t / 12) + np.random.default_rng(0).normal(0, 5, months)
    return pd.DataFrame({"unique_id": "s", "ds": pd.date_range("2000-01-01", periods=months, freq="MS"), "y": y})


def forecaster_candidates(root: Path) -> tuple[dict, dict]:
    fc = Forecaster(max_steps=2, minutes=None, progress=False).fit(monthly_series())
    fc.save(root / "fc.rnnkit")
    export_bundle(root / "fc.rnnkit", root / "fc")
    cfg, (past, known) = fc.config, fc.num_features
    y, p, k = torch.randn(1, cfg.lookback), torch.randn(1, cfg.lookback, past), torch.randn(1, cfg.lookback + cfg.horizon, known)
    sess, feeds = session(root / "fc" / "forecast.onnx"), {"y": y.numpy(), "past": p.numpy(), "known": k.numpy()}
    reference = reference_copy(fc.model)
    setup = {"lookback": cfg.lookback, "horizon": cfg.horizon, "quantiles": list(cfg.quantiles), "cell": cfg.cell,
             "hidden_size": cfg.hidden_size, "ensemble": cfg.ensemble, "head": cfg.head}
    return {"forecast: pytorch eager": no_grad(lambda: fc.model(y, p, k)),
            "forecast: pytorch eager, the exported module (reference equations, torch scan)": no_grad(lambda: ensemble_forecast(reference, y, p, k)),
            "forecast: onnxruntime": lambda: sess.run(None, feeds)}, setup


def lm_candidates(root: Path) -> tuple[dict, dict]:
    text = "".join(chr(c) for c in range(32, 127)) * 40 + "\n"  # every printable character: a char-rnn vocabulary
    lm = TextGenerator(max_steps=2, minutes=None, progress=False).fit(text)
    lm.save(root / "lm.rnnkit")
    export_bundle(root / "lm.rnnkit", root / "lm")
    model, reference = lm.model, reference_copy(lm.model)
    token = torch.tensor([40])
    state = model.recurrent.initial_state(1, torch.zeros(1))
    parts = (state,) if isinstance(state, torch.Tensor) else state
    sess = session(root / "lm" / "lm_step.onnx")
    feeds = {"token": token.numpy(), **{n: s.numpy() for n, s in zip(("h", "c"), parts)}}
    setup = {"cell": lm.config.cell, "hidden_size": lm.config.hidden_size, "num_layers": lm.config.num_layers,
             "vocab_size": lm.tokenizer.vocab_size, "stream_kernel_built": stream_kernel() is not None}
    return {"lm step: pytorch eager": no_grad(lambda: model.step(token, state)),
            "lm step: pytorch eager, the exported module (reference equations)": no_grad(lambda: reference.recurrent.step(
                reference.embed(token[:, None])[:, 0], state)),
            "lm step: onnxruntime": lambda: sess.run(None, feeds)}, setup


def no_grad(fn):
    def call():
        with torch.no_grad():
            return fn()
    return call


def measure(quick: bool) -> dict:
    """Both entry points' candidates timed interleaved: the ratios, each setup and the timings."""
    with tempfile.TemporaryDirectory() as tmp:
        fc, fc_setup = forecaster_candidates(Path(tmp))
        lm, lm_setup = lm_candidates(Path(tmp))
        candidates = {**fc, **lm}
        baselines = {name: name.split(":")[0] + ": pytorch eager" for name in candidates}
        timings = interleaved(candidates, baselines, repeats=3 if quick else 15, seconds=0.05 if quick else 0.5)
    ratios = {f"{group}: pytorch eager / onnxruntime": timings[f"{group}: onnxruntime"]["speedup_vs_baseline"]
              for group in ("forecast", "lm step")}
    return {"batch": 1, "threads": 1, "ratios": ratios, "forecaster": fc_setup, "lm_step": lm_setup,
            "timings": timings,
            "note": "ratio = PyTorch eager seconds per call / onnxruntime seconds per call; > 1: onnxruntime is faster"}


def report(result: dict) -> None:
    for name, ratio in result["ratios"].items():
        group = name.split(":")[0]
        print(f"{name}: {ratio:.2f}x   (onnxruntime "
              f"{result['timings'][group + ': onnxruntime']['seconds_per_call'] * 1e6:.0f} us)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run: fewer, shorter repeats")
    parser.add_argument("--out", type=Path, default=RESULTS, help="directory for export.json")
    args = parser.parse_args()
    torch.set_num_threads(1)  # one request, one thread: as the onnxruntime sessions (runtime.session)
    result = {"quick": args.quick, **measure(args.quick)}
    report(result)
    print(f"wrote {write_result(result, args.out, 'export')}")


if __name__ == "__main__":
    main()
