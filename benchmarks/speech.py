"""Synthetic speech: character and word error rates on voices never heard in training.

The corpus is SYNTHETIC (``rnnkit.data.speech.spoken_corpus``): words and digit strings spoken
by espeak-ng in 8 English accents x 12 voice variants, each utterance at its own speed and pitch.
Whole voice variants are held out: validation hears m6 and f4, test m7 and f5, in every accent.
All candidates read the same log-mel steps (rnnkit's features, normalised with the training
set's statistics, three 10 ms frames per step) and are scored on the test voices once, at the end:

- rnnkit's ``SpeechRecognizer`` at its defaults (2 bidirectional rnnkit LSTM layers, CTC, greedy);
- the same network with ``torch.nn.LSTM`` in place of rnnkit's layers: same trainer, same CPU budget;
- a DTW nearest neighbour: each test utterance gets the transcript of the training utterance
  closest to it under dynamic time warping (Euclidean step distance, path cost divided by the two
  lengths). No parameters, so nothing to choose; it can only say transcripts it has heard.

No choice is made on the test voices: the networks run at their defaults, the trainer keeps the
weights of the best validation loss, and the test voices are scored once.

    PYTHONPATH=src python benchmarks/speech.py                 # 2 CPU-minutes per network
    PYTHONPATH=src python benchmarks/speech.py --quick         # a smoke run (figures not quoted)
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch
from torch import nn

from rnnkit import metrics
from rnnkit.data.speech import ACCENTS, SPLITS, Corpus, spoken_corpus
from rnnkit.files import atomic_write_bytes
from rnnkit.tasks.speech import SpeechNet, SpeechRecognizer

RESULTS = Path(__file__).parent / "results" / "speech.json"


class TorchRecurrent(nn.Module):
    """``torch.nn.LSTM`` behind rnnkit ``Recurrent``'s ``forward(x, state, lengths=)``; packed
    sequences, so the reverse direction starts at each utterance's own end as rnnkit's does."""

    def __init__(self, input_size: int, hidden_size: int, num_layers: int, bidirectional: bool,
                 dropout: float) -> None:
        super().__init__()
        self.lstm = nn.LSTM(input_size, hidden_size, num_layers, batch_first=True, bidirectional=bidirectional,
                            dropout=dropout if num_layers > 1 else 0.0)
        self.output_size = hidden_size * (2 if bidirectional else 1)

    def forward(self, x, state=None, *, lengths=None):
        if lengths is None:
            return self.lstm(x, state)
        packed = nn.utils.rnn.pack_padded_sequence(x, lengths.cpu(), batch_first=True, enforce_sorted=False)
        out, state = self.lstm(packed, state)
        return nn.utils.rnn.pad_packed_sequence(out, batch_first=True, total_length=x.size(1))[0], state


class TorchSpeech(SpeechRecognizer):
    """The same task and network, its recurrent layers ``torch.nn.LSTM``."""

    def build_model(self) -> SpeechNet:
        cfg = self.config
        net = SpeechNet(cfg)
        net.recurrent = TorchRecurrent(cfg.stack * cfg.n_mels, cfg.hidden_size, cfg.num_layers, cfg.bidirectional,
                                       cfg.dropout)
        return net


def dtw_nearest(asr: SpeechRecognizer, train: Corpus, test: Corpus) -> list[str]:
    """For each test utterance, the transcript of the training utterance nearest under DTW."""
    templates, lengths = asr.batch(train.audio)  # (N, Tm, F), (N,)
    out = []
    for audio in test.audio:
        query = asr.frames(torch.as_tensor(audio))  # (Tq, F)
        cost = torch.cdist(query[None].expand(len(templates), -1, -1), templates)  # (N, Tq, Tm)
        previous = torch.full((len(templates), templates.size(1) + 1), float("inf"))
        previous[:, 0] = 0.0
        for i in range(len(query)):
            current = torch.full_like(previous, float("inf"))
            best = torch.minimum(previous[:, 1:], previous[:, :-1])  # from above, from the diagonal
            for j in range(1, current.size(1)):
                current[:, j] = cost[:, i, j - 1] + torch.minimum(best[:, j - 1], current[:, j - 1])
            previous = current
        total = previous.gather(1, lengths[:, None]).squeeze(1) / (len(query) + lengths)
        out.append(train.texts[int(total.argmin())])
    return out


def scores(hypotheses: list[str], corpus: Corpus) -> dict:
    references = [t.lower() for t in corpus.texts]
    return {"cer": round(metrics.error_rate(hypotheses, references, "char"), 4),
            "wer": round(metrics.error_rate(hypotheses, references, "word"), 4)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--minutes", type=float, default=2.0, help="CPU minutes per network")
    parser.add_argument("--per-speaker", type=int, default=20, help="utterances per accent and voice variant")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    minutes = 0.1 if args.quick else args.minutes
    accents = ACCENTS[:2] if args.quick else ACCENTS
    corpus = spoken_corpus(2 if args.quick else args.per_speaker, accents=accents)
    split = {s: corpus.subset(s) for s in ("train", "val", "test")}
    options = dict(minutes=minutes, clock="cpu", progress=False)

    results, models = {}, {}
    for name, task in (("rnnkit LSTM, CTC", SpeechRecognizer), ("torch.nn.LSTM, CTC", TorchSpeech)):
        started = time.process_time()
        asr = task(**options).fit(corpus)
        models[name] = asr
        m = asr.metrics
        results[name] = {"val": {"cer": round(m["val_cer"], 4), "wer": round(m["val_wer"], 4)}, "steps": m["steps"],
                         "epochs_completed": m["epochs_completed"], "stopped": m["stopped"],
                         "parameters": m["parameters"], "cpu_s": round(time.process_time() - started, 1)}
        print(name, results[name], flush=True)
    features = models["rnnkit LSTM, CTC"]  # the DTW reads the same normalised steps
    started = time.process_time()
    results["DTW nearest neighbour"] = {"val": scores(dtw_nearest(features, split["train"], split["val"]), split["val"])}
    results["DTW nearest neighbour"]["cpu_s_val"] = round(time.process_time() - started, 1)
    # the test voices, scored once
    for name, asr in models.items():
        results[name]["test"] = scores(asr.transcribe(split["test"].audio), split["test"])
    results["DTW nearest neighbour"]["test"] = scores(dtw_nearest(features, split["train"], split["test"]),
                                                      split["test"])
    examples = list(zip(split["test"].texts[:8], features.transcribe(split["test"].audio[:8])))
    report = {
        "benchmark": "speech", "quick": args.quick, "machine": platform.processor() or platform.machine(),
        "torch": torch.__version__, "threads": args.threads, "budget_cpu_minutes_per_network": minutes,
        "data": {"synthetic": True, "source": "espeak-ng (formant synthesis), generated by rnnkit.data.speech",
                 "accents": list(accents), "voices": {s: sorted(v for v, x in SPLITS.items() if x == s)
                                                      for s in ("train", "val", "test")},
                 **{f"{s}_utterances": len(v) for s, v in split.items()},
                 "texts": "a word of 11 (yes no up down left right on off stop go don't) or 1-3 digits"},
        "metric": "character and word error rate (edits / reference length over the split), greedy CTC decoding",
        "results": results, "test_examples (truth, rnnkit)": examples, "config": features.config.to_dict(),
    }
    atomic_write_bytes(args.out, (json.dumps(report, indent=2) + "\n").encode())
    print(json.dumps(results, indent=2))
    rk, tn, dtw = (results[n]["test"]["cer"] for n in ("rnnkit LSTM, CTC", "torch.nn.LSTM, CTC",
                                                         "DTW nearest neighbour"))
    print(f"test CER: rnnkit {rk:.3f}, torch.nn.LSTM {tn:.3f}, DTW {dtw:.3f}")


if __name__ == "__main__":
    main()
