"""`rnnkit serve` and the models behind it under load: forecast predict against NeuralForecast,
onnxruntime against PyTorch, streams stepped together, predict latency over HTTP.

The server runs as its own process (``rnnkit serve --no-access-log`` on a free loopback port),
started and stopped by this script; the load comes from one asyncio process with aiohttp
(bounded: each client waits for its answer before sending again). Measured in one run:

- **forecast predict, in process**: a Forecaster bundle (the defaults: lookback 36, horizon 12,
  3 quantiles, an ensemble of 3 LSTMs) loaded with ``rnnkit.load``, JSON request in and JSON
  response out, per series, against NeuralForecast's ``predict()`` (its LSTM, fitted on the same
  five monthly stock series with the same lookback and calendar features), one series per call
  and all five per call, timed interleaved (:func:`forecast_latency`), beside the floor under
  them: the model's two recurrent calls alone;
- **onnxruntime against PyTorch eager** at batch 1 for the forecaster and the LM step
  (``benchmarks/export.py``'s measurement, run here);
- **in process, generation**: ``TextGenerator.step_streams`` on 64 slots until each has
  ``--tokens`` tokens, against one slot stepped alone (tokens/s), for a character LM at the
  textgen defaults' size (one LSTM layer, H=512; speed does not depend on the weights);
- **over HTTP, streaming**: 64 concurrent ``POST /v1/lm/generate`` (the server batches them)
  against the same 64 sent one after another, aggregate tokens/s, and the share of the in-process
  64-slot rate the server reaches (connections opened before the clock starts);
- **over HTTP, predict**: ``POST /v1/clf/predict`` (a 2-layer GRU classifier, one text) and
  ``POST /v1/fc/predict`` (one stock series) at 1 and 32 concurrent clients: p50/p99 latency,
  requests/s, errors (must be 0).

    PYTHONPATH=src python benchmarks/serve.py [--quick] [--only forecast]

Writes benchmarks/results/serve.json; ``--only forecast`` reruns forecast predict in process
alone and replaces that part of the existing file (dated; the other parts keep their run's date).
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))  # run from a checkout

import aiohttp  # noqa: E402
import httpx  # noqa: E402
import torch  # noqa: E402

import rnnkit  # noqa: E402
from rnnkit import Forecaster, SequenceClassifier, TextGenerator  # noqa: E402
from rnnkit.data import load_dataset  # noqa: E402
from rnnkit.tasks.forecast_json import plain_forecasts  # noqa: E402
from common.timing import interleaved, machine, write_result  # noqa: E402
from rnnkit.files import atomic_write_bytes  # noqa: E402
import export as export_benchmark  # noqa: E402

TEXT = "To be, or not to be, that is the question: whether 'tis nobler in the mind to suffer.\n" * 40


def bundles(directory: Path) -> dict[str, Path]:
    """An LM at the textgen defaults' size and a small classifier, trained a few steps (speed only)."""
    lm = TextGenerator(hidden_size=512, seq_len=32, batch_size=8, max_steps=2, minutes=None, progress=False).fit(TEXT)
    clf = SequenceClassifier(hidden_size=64, num_layers=2, cell="gru", max_steps=2, minutes=None, epochs=1,
                             progress=False).fit(["good film", "bad plot", "fine"] * 10, ["pos", "neg", "meh"] * 10)
    return {"lm": lm.save(directory / "lm"), "clf": clf.save(directory / "clf"), "task": lm}


def in_process(lm: TextGenerator, streams: int, tokens: int) -> float:
    """Tokens/s of ``streams`` slots stepped together until each has ``tokens`` tokens."""
    slots = [lm.open_stream({"prime": "To be", "max_tokens": tokens, "temperature": 0.8, "seed": i})
             for i in range(streams)]
    start = time.perf_counter()
    while not slots[0].done:
        lm.step_streams(slots)
    return streams * tokens / (time.perf_counter() - start)


def forecast_latency(directory: Path, quick: bool) -> dict:
    """Forecast predict per series: rnnkit from a loaded bundle (JSON request in, JSON response out)
    against NeuralForecast's ``predict()`` on the same monthly stock prices, one series per call and
    all five per call, timed interleaved, with the floor (:func:`recurrent_calls`) timed among them.
    Both models are trained a couple of steps (speed only); NeuralForecast's inputs (history and
    future calendar frames) are built before the clock starts."""
    from forecast import neuralforecast_model, quiet_neuralforecast

    quiet_neuralforecast()
    frame = load_dataset("stocks")
    fitted = Forecaster(horizon=12, max_steps=2, minutes=None, progress=False).fit(frame)
    fc = rnnkit.load(fitted.save(directory / "fc"))
    nf, _, inputs = neuralforecast_model(frame, 12, fc.config.lookback, fc.freq, steps=2)
    groups = [group for _, group in frame.groupby("unique_id", sort=False)]
    series = [{"id": str(g["unique_id"].iloc[0]), "values": g["y"].tolist(),
               "dates": [d.date().isoformat() for d in g["ds"]]} for g in groups]
    one, every = [{"series": [item]} for item in series], {"series": series}
    assert all(plain_forecasts(fc, request) is not None for request in one + [every])  # the lean path
    calls = {"rnnkit": lambda r: fc.predict_checked(r), "NeuralForecast": lambda r: nf.predict(**r)}
    requests = {"rnnkit": (one, every), "NeuralForecast": ([inputs(g) for g in groups], inputs(frame))}
    candidates, baselines = {}, {}
    for name, call in calls.items():
        singles, batch = requests[name]
        cycle = itertools.cycle(singles)
        candidates[f"{name}, 1 series per call"] = lambda call=call, cycle=cycle: call(next(cycle))
        candidates[f"{name}, {len(groups)} series per call"] = lambda call=call, batch=batch: call(batch)
    candidates[FLOOR] = recurrent_calls(fc)
    baselines = {name: "NeuralForecast" + name[name.index(","):] for name in candidates}
    timings = interleaved(candidates, baselines, repeats=3 if quick else 7, seconds=0.3 if quick else 1.0)
    per_series = {name: 1e3 * t["seconds_per_call"] / (1 if ", 1 series" in name else len(groups))
                  for name, t in timings.items()}
    return {"request": one[0],
            "data": f"stocks: {len(groups)} monthly series, {len(frame)} points; each request holds whole series",
            "model": {"lookback": fc.config.lookback, "horizon": fc.config.horizon, "cell": fc.config.cell,
                      "hidden_size": fc.config.hidden_size, "ensemble": fc.config.ensemble},
            "ms_per_series": per_series,
            "speedup_vs_neuralforecast": {name: t["speedup_vs_baseline"] for name, t in timings.items()
                                          if name.startswith("rnnkit")},
            "timings": timings}


FLOOR = "rnnkit floor: its two recurrent calls alone, 1 series per call"


def recurrent_calls(fc: Forecaster) -> Callable[[], object]:
    """The floor under a forecast: the fused ensemble's encoder and decoder (one ATen recurrent call
    each, ``torch.nn`` modules) on one window, without the JSON, checks and small ops around them."""
    fused = fc.model.fused()
    x = torch.zeros(1, fc.config.lookback, fused.encoder.input_size)
    future = torch.zeros(1, fc.config.horizon, fused.decoder.input_size)

    def call() -> None:
        with torch.inference_mode():
            fused.decoder(future, fused.encoder(x)[1])
    return call


def session(url: str, connections: int) -> aiohttp.ClientSession:
    """The load's HTTP client: aiohttp, whose per-request cost is small beside the server's (httpx's
    connection pool spends more CPU per request than the server it measures, on the same cores)."""
    return aiohttp.ClientSession(base_url=url, timeout=aiohttp.ClientTimeout(total=600),
                                 connector=aiohttp.TCPConnector(limit=connections))


async def generate(http: aiohttp.ClientSession, tokens: int, seed: int) -> int:
    """One streamed generation; the events received (a client that falls behind gets several tokens in one)."""
    events = 0
    request = {"prime": "To be", "max_tokens": tokens, "temperature": 0.8, "seed": seed}
    async with http.post("/v1/lm/generate", json=request) as response:
        response.raise_for_status()
        async for line in response.content:
            events += line.startswith(b'data: {"text"')
    return events


async def streaming(url: str, streams: int, tokens: int, in_process_rate: Callable[[], float], rounds: int) -> dict:
    """Aggregate tokens/s of ``streams`` concurrent generations over HTTP, each round right after the
    in-process rate of as many slots (``in_process_rate()``), so the share compares side by side on
    a shared machine; then the same generations one after another."""
    async with session(url, streams) as http:
        await asyncio.gather(*(generate(http, 2, i) for i in range(streams)))  # warm up: open the connections
        local, together, events = [], [], []
        for _ in range(rounds):
            local.append(in_process_rate())
            start = time.perf_counter()
            events += await asyncio.gather(*(generate(http, tokens, i) for i in range(streams)))
            together.append(streams * tokens / (time.perf_counter() - start))
        start = time.perf_counter()
        for i in range(streams):
            await generate(http, tokens, i)
        alone = streams * tokens / (time.perf_counter() - start)
    shares = [http_rate / local_rate for http_rate, local_rate in zip(together, local)]
    return {"concurrent_tokens_per_s": statistics.median(together), "one_after_another_tokens_per_s": alone,
            "speedup": statistics.median(together) / alone, "in_process_64_tokens_per_s": statistics.median(local),
            "share_of_in_process_64": statistics.median(shares), "share_per_round": shares,
            "events_per_stream_concurrent": statistics.mean(events)}


async def predict_load(url: str, path: str, body: dict, clients: int, requests: int) -> dict:
    """``requests`` POSTs of ``body`` to ``path`` from ``clients`` concurrent clients (each waits for its
    answer before the next request), after a warm-up that opens every connection."""
    latencies: list[float] = []
    errors = 0

    async def client(http: aiohttp.ClientSession, count: int) -> None:
        nonlocal errors
        for _ in range(count):
            start = time.perf_counter()
            async with http.post(path, json=body) as response:
                await response.read()
                errors += response.status != 200
            latencies.append(time.perf_counter() - start)

    async with session(url, clients) as http:
        await asyncio.gather(*(client(http, 3) for _ in range(clients)))
        latencies.clear()
        start = time.perf_counter()
        await asyncio.gather(*(client(http, requests // clients) for _ in range(clients)))
        elapsed = time.perf_counter() - start
    ordered = sorted(latencies)
    return {"path": path, "clients": clients, "requests": len(latencies), "errors": errors,
            "requests_per_s": len(latencies) / elapsed,
            "p50_ms": 1e3 * statistics.median(ordered), "p99_ms": 1e3 * ordered[int(0.99 * (len(ordered) - 1))]}


def start_server(paths: dict[str, Path]) -> tuple[subprocess.Popen, str]:
    """``rnnkit serve`` on a free loopback port, once /healthz answers."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"}
    named = [f"{name}={path}" for name, path in paths.items()]
    server = subprocess.Popen([sys.executable, "-m", "rnnkit", "serve", *named,
                               "--port", str(port), "--max-streams", "64", "--no-access-log"], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if httpx.get(url + "/healthz", timeout=2).status_code == 200:
                return server, url
        except httpx.TransportError:
            time.sleep(0.2)
        if server.poll() is not None:
            break
    server.kill()
    raise SystemExit("rnnkit serve did not start")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run: fewer tokens and requests")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    parser.add_argument("--only", choices=["forecast"], help="rerun one part and replace it in the existing serve.json")
    args = parser.parse_args()
    tokens, requests = (20, 64) if args.quick else (100, 640)
    torch.set_num_threads(1)
    torch.manual_seed(0)
    if args.only == "forecast":
        replace_forecast(args.out / "serve.json", args.quick)
        return
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as directory:
        forecast = forecast_latency(Path(directory), args.quick)
        onnx = export_benchmark.measure(args.quick)
        paths = {**bundles(Path(directory)), "fc": Path(directory) / "fc"}
        lm = paths.pop("task")
        one, many = in_process(lm, 1, tokens), in_process(lm, 64, tokens)
        server, url = start_server(paths)
        try:
            http_streams = asyncio.run(streaming(url, 64, tokens, lambda: in_process(lm, 64, tokens),
                                                 rounds=1 if args.quick else 5))
            loads = (("/v1/clf/predict", {"texts": ["a good film with a fine plot"]}),
                     ("/v1/fc/predict", forecast.pop("request")))
            predict = [asyncio.run(predict_load(url, path, body, clients, requests))
                       for path, body in loads for clients in (1, 32)]
        finally:
            server.terminate()
            server.wait(timeout=30)
    result = {"mode": "quick" if args.quick else "full", "elapsed_s": time.perf_counter() - started,
              "model": "char LSTM, 1 layer, H=512; server and client processes, torch 1 thread each",
              "tokens_per_stream": tokens,
              "in_process": {"one_stream_tokens_per_s": one, "64_streams_tokens_per_s": many, "speedup": many / one},
              "http_64_streams": http_streams,
              "http_predict": predict, "forecast_predict_in_process": forecast, "onnx_vs_pytorch": onnx}
    path = write_result(result, args.out, "serve")
    report(result)
    print(f"wrote {path}")


def replace_forecast(path: Path, quick: bool) -> None:
    """``--only forecast``: forecast predict in process measured again, replacing that part of
    ``path`` (a full run's serve.json) with its own date, mode and machine."""
    result = json.loads(path.read_text())
    with tempfile.TemporaryDirectory() as directory:
        forecast = forecast_latency(Path(directory), quick)
    forecast.pop("request")
    result["forecast_predict_in_process"] = {"created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "rerun_alone": True,
                                             "mode": "quick" if quick else "full", "machine": machine(), **forecast}
    atomic_write_bytes(path, (json.dumps(result, indent=2) + "\n").encode())
    report_forecast(result["forecast_predict_in_process"])
    print(f"replaced forecast_predict_in_process in {path}")


def report_forecast(f: dict) -> None:
    for name, ms in f["ms_per_series"].items():
        speedup = f["speedup_vs_neuralforecast"].get(name)
        print(f"forecast predict, {name}: {ms:.2f} ms per series" + (f" ({speedup:.0f}x NeuralForecast)"
                                                                     if speedup else ""))


def report(result: dict) -> None:
    s = result["http_64_streams"]
    report_forecast(result["forecast_predict_in_process"])
    export_benchmark.report(result["onnx_vs_pytorch"])
    many, one = result["in_process"]["64_streams_tokens_per_s"], result["in_process"]["one_stream_tokens_per_s"]
    print(f"in process: 64 streams {many:,.0f} tokens/s, one {one:,.0f} ({many / one:.1f}x)")
    print(f"HTTP: 64 concurrent streams {s['concurrent_tokens_per_s']:,.0f} tokens/s, one after another "
          f"{s['one_after_another_tokens_per_s']:,.0f} ({s['speedup']:.1f}x); {s['share_of_in_process_64']:.0%} "
          "of the in-process 64-stream rate measured beside it (per round: "
          f"{', '.join(f'{x:.0%}' for x in s['share_per_round'])})")
    for p in result["http_predict"]:
        print(f"{p['path']}, {p['clients']} client(s): p50 {p['p50_ms']:.1f} ms, p99 {p['p99_ms']:.1f} ms, "
              f"{p['requests_per_s']:.0f} requests/s, {p['errors']} errors")


if __name__ == "__main__":
    main()
