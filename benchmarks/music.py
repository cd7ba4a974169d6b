"""Bach chorales: held-out frame NLL of rnnkit's RNN-NADE against baselines, and what it writes.

All candidates see the same chorales (music21's corpus, transposed to C major / A minor, split
by chorale with ``rnnkit.data.music.split_of``) on quarter-note frames, the JSB Chorales grid,
and are scored in nats per frame (the sum over every held-out frame of -log p(frame | past),
divided by the number of frames; the published JSB definition):

- rnnkit's ``MusicGenerator`` (an rnnkit LSTM and a NADE per frame), at its defaults;
- the same network with ``torch.nn.LSTM`` in place of rnnkit's layer, same trainer, same budget;
- rnnkit's event model (``encoding="events"``: an LSTM over BachBot-style note tokens, the same
  hidden size and budget). Its figure is its token NLL summed per piece and divided by the
  piece's frames: an upper bound on the frame NLL of the roll it implies (the tokens also say
  which notes are struck again, which the roll does not), so it is comparable, conservatively;
- independent Bernoulli: each pitch on with its training frequency, frames independent;
- first-order Markov: each pitch on with a probability that depends on whether it was on in
  the previous frame (per pitch, add-one smoothed), pitches independent of one another.

No choice is made on the test split: the networks run at their defaults, their best weights are
picked on the validation chorales by the trainer, and test is scored once at the end. Beside the
figures sit the published JSB Chorales ones, with the protocol differences stated in the JSON.

Then chorales written by the trained model (from nothing, 8 bars) are analysed with music21
beside the held-out chorales: the share of notes in the key music21 finds, the range of the top
and bottom lines, notes per frame, and how often a frame or the top note repeats the previous one.

    PYTHONPATH=src python benchmarks/music.py                 # 4 CPU-minutes per network
    PYTHONPATH=src python benchmarks/music.py --quick         # a smoke run (figures not quoted)
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from rnnkit.data.music import Piece, bach_chorales, piano_roll, roll_to_notes, split_of
from rnnkit.files import atomic_write_bytes
from rnnkit.tasks.music import FrameModel, MusicGenerator

RESULTS = Path(__file__).parent / "results" / "music.json"

PUBLISHED = {  # JSB Chorales, nats per frame (negative log-likelihood), quarter-note frames, 88 keys
    "RNN-NADE (Boulanger-Lewandowski et al. 2012)": 5.56,
    "TCN (Bai et al. 2018)": 8.10,
    "GRU (Bai et al. 2018)": 8.43,
    "LSTM (Bai et al. 2018)": 8.45,
    "vanilla RNN (Bai et al. 2018)": 8.91,
}
PROTOCOL = ("Not the JSB Chorales protocol: music21's corpus (not the JSB files), split by a hash of each "
            "chorale's name (not JSB's 229/76/77), every chorale transposed to C major or A minor (JSB keeps "
            "the original keys, which makes it harder), and the pitch range limited to the notes seen in "
            "training. Same grid (quarter notes) and the same per-frame definition.")


class TorchLSTM(nn.Module):
    """``torch.nn.LSTM`` behind the ``forward(x, state) -> (out, state)`` of rnnkit's ``Recurrent``."""

    def __init__(self, input_size: int, hidden_size: int) -> None:
        super().__init__()
        self.lstm = nn.LSTM(input_size, hidden_size, batch_first=True)

    def forward(self, x, state=None):
        return self.lstm(x, state)


class TorchMusic(MusicGenerator):
    """The same task and network, its recurrent layer ``torch.nn.LSTM``."""

    def build_model(self) -> FrameModel:
        cfg = self.config
        return FrameModel(self.pitches, self.phases, cfg.hidden_size, cfg.nade_size, dropout=cfg.dropout,
                          transpose_range=cfg.transpose_range,
                          rnn=TorchLSTM(self.pitches + self.phases, cfg.hidden_size))


def rolls(gen: MusicGenerator, pieces: list[Piece]) -> list[np.ndarray]:
    return [gen.encode(p)[0] > 0.5 for p in pieces]


def bernoulli_nll(train: list[np.ndarray], test: list[np.ndarray]) -> float:
    frames = np.concatenate(train)
    p = (frames.sum(0) + 1) / (len(frames) + 2)  # (P,)
    x = np.concatenate(test)
    return float(-(x * np.log(p) + (1 - x) * np.log(1 - p)).sum(1).mean())


def markov_nll(train: list[np.ndarray], test: list[np.ndarray]) -> float:
    """Per pitch p(on | on before) and p(on | off before); the first frame follows 'off before'."""
    def pairs(pieces):
        prev = np.concatenate([np.vstack([np.zeros_like(r[:1]), r[:-1]]) for r in pieces])
        return prev, np.concatenate(pieces)
    prev, now = pairs(train)
    p_on = [((now & (prev == s)).sum(0) + 1) / ((prev == s).sum(0) + 2) for s in (False, True)]  # 2 x (P,)
    prev, now = pairs(test)
    p = np.where(prev, p_on[1], p_on[0])
    return float(-(now * np.log(p) + (1 - now) * np.log(1 - p)).sum(1).mean())


def analyse(roll: np.ndarray) -> dict[str, float]:
    """music21's key of a roll's notes and the shares that tell chorales from noise (module docstring)."""
    import music21

    notes = roll_to_notes(roll, 1)
    stream = music21.stream.Stream()
    for onset, duration, pitch, _ in notes:
        stream.insert(onset / 12, music21.note.Note(int(pitch), quarterLength=duration / 12))
    key = stream.analyze("key")
    scale = {p.pitchClass for p in key.getScale().getPitches()}
    sounding = [np.flatnonzero(f) for f in roll if f.any()]
    top, bottom = [s[-1] for s in sounding], [s[0] for s in sounding]
    changes = [not np.array_equal(a, b) for a, b in zip(roll, roll[1:]) if a.any()]
    return {"in_key_share": float(np.mean([p % 12 in scale for p in notes[:, 2]])),
            "top_line_range": float(max(top) - min(top)), "bottom_line_range": float(max(bottom) - min(bottom)),
            "notes_per_frame": float(np.mean([len(s) for s in sounding])),
            "frame_repeats_share": float(1 - np.mean(changes)),
            "top_note_repeats_share": float(np.mean([a == b for a, b in zip(top, top[1:])])),
            "silent_frames_share": float(1 - len(sounding) / len(roll))}


def mean_analysis(pieces: list[np.ndarray]) -> dict[str, float]:
    rows = [analyse(r) for r in pieces]
    return {k: round(float(np.mean([r[k] for r in rows])), 3) for k in rows[0]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--minutes", type=float, default=4.0, help="CPU minutes per network")
    parser.add_argument("--samples", type=int, default=12, help="pieces generated for the analysis")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    minutes = 0.2 if args.quick else args.minutes
    pieces, skipped = bach_chorales()
    split = {s: [p for p in pieces if split_of(p.name) == s] for s in ("train", "val", "test")}
    options = dict(steps_per_quarter=1, seq_len=64, minutes=minutes, clock="cpu", progress=False)

    results = {}
    models = {}
    networks = (("rnnkit LSTM + NADE", MusicGenerator, {}), ("torch.nn.LSTM + NADE", TorchMusic, {}),
                ("rnnkit LSTM, event tokens (upper bound)", MusicGenerator, {"encoding": "events"}))
    for name, task, extra in networks:
        started = time.process_time()
        gen = task(**options, **extra).fit(split["train"], split["val"])
        models[name] = gen
        results[name] = {"val_nll": round(gen.frame_nll(split["val"]), 3), "steps": gen.metrics["steps"],
                         "stopped": gen.metrics["stopped"], "parameters": gen.metrics["parameters"],
                         "cpu_s": round(time.process_time() - started, 1)}
        print(name, results[name], flush=True)
    gen = models["rnnkit LSTM + NADE"]
    train_rolls, val_rolls, test_rolls = (rolls(gen, split[s]) for s in ("train", "val", "test"))
    for name, nll in (("independent Bernoulli", bernoulli_nll), ("first-order Markov per pitch", markov_nll)):
        results[name] = {"val_nll": round(nll(train_rolls, val_rolls), 3)}
    # the test split, scored once
    for name, model in models.items():
        results[name]["test_nll"] = round(model.frame_nll(split["test"]), 3)
    results["independent Bernoulli"]["test_nll"] = round(bernoulli_nll(train_rolls, test_rolls), 3)
    results["first-order Markov per pitch"]["test_nll"] = round(markov_nll(train_rolls, test_rolls), 3)

    bars = 8 * gen.frames_per_bar
    events = models["rnnkit LSTM, event tokens (upper bound)"]
    real = [piano_roll(p, 1)[:bars] for p in split["test"]]
    analysis = {"generated (8 bars from nothing, temperature 1, seeds 0..)": mean_analysis(
                    list(gen.generate_rolls(args.samples, bars, temperature=1.0, seed=0))),
                "generated by the event model (same)": mean_analysis(
                    list(events.generate_rolls(args.samples, bars, temperature=1.0, seed=0))),
                "held-out test chorales (first 8 bars)": mean_analysis(real)}
    report = {
        "benchmark": "music", "quick": args.quick, "machine": platform.processor() or platform.machine(),
        "torch": torch.__version__, "threads": args.threads, "budget_cpu_minutes_per_network": minutes,
        "data": {"chorales": len(pieces), "skipped": len(skipped),
                 **{f"{s}_chorales": len(v) for s, v in split.items()},
                 "grid": "quarter notes", "pitches": gen.pitches, "lowest_midi": gen.low},
        "metric": "negative log-likelihood, nats per frame (lower is better); the event model's is its token "
                  "NLL per frame, an upper bound on the frame NLL of the roll it implies",
        "results": results, "published_jsb": PUBLISHED, "protocol_difference": PROTOCOL,
        "analysis": analysis, "config": gen.config.to_dict(),
    }
    atomic_write_bytes(args.out, (json.dumps(report, indent=2) + "\n").encode())
    print(json.dumps({"results": results, "analysis": analysis}, indent=2))
    best_baseline = min(results[b]["test_nll"] for b in ("independent Bernoulli", "first-order Markov per pitch"))
    print(f"rnnkit test NLL / best baseline: {results['rnnkit LSTM + NADE']['test_nll'] / best_baseline:.3f}; "
          f"wrote {args.out}")
    assert math.isfinite(results["rnnkit LSTM + NADE"]["test_nll"])


if __name__ == "__main__":
    main()
