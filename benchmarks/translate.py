"""Translation benchmark: English -> Spanish Bible verses (KJV -> Reina-Valera 1909), and dates.

In one run, each model trained for the same CPU budget (``--minutes`` each):

- seq2seq without attention (Sutskever et al.), greedy decoding;
- seq2seq with Luong attention, greedy decoding;
- the same attention model with beam search (beam 5, length-normalised).

Scores are sacrebleu's corpus BLEU and chrF on all held-out verses, whatever their length:
every 50th verse in canonical order (621 verses, at most 83 BPE tokens a side). The other
30,463 verses train, except the 20 longer than ``max_length`` (96) tokens on a side. The dates
task (written dates in 18 locales -> ISO) reports exact match on held-out dates (dates never
seen in training, in any format).

    PYTHONPATH=src python benchmarks/translate.py            # 20 min per Bible model
    PYTHONPATH=src python benchmarks/translate.py --minutes 8
    PYTHONPATH=src python benchmarks/translate.py --quick    # < 1 min, a smoke run

Writes ``benchmarks/results/translate.json`` (``translate_quick.json`` with ``--quick``).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch

from rnnkit.data.parallel import BIBLE_INSTALL, bible_available, bible_pairs, bible_split, date_pairs
from rnnkit.files import atomic_write_bytes
from rnnkit.tasks.translate import Translator, TranslatorConfig

RESULTS = Path(__file__).parent / "results"


def bible(minutes: float, quick: bool, progress: bool, clock: str) -> dict:
    train, test = bible_split(bible_pairs())
    if quick:
        train, test = train[:2000], test[:40]
    # Fresh weights learn faster without dropout in a budget this short; 96 BPE tokens a side
    # hold every test verse (the longest has 83) and all but 20 of the training verses.
    base = dict(tokenizer="bpe", vocab_size=2000 if quick else 4000, hidden_size=256, embedding_size=128,
                max_length=96, minutes=minutes, clock=clock, epochs=100, patience=8, progress=progress,
                batch_size=64, dropout=0.0, lr=3e-3)
    rows, models = {}, {}
    for name, attention in (("no_attention", "none"), ("attention", "luong")):
        started = time.monotonic()
        translator = Translator(TranslatorConfig(attention=attention, **base)).fit(train)
        models[name] = translator
        result = translator.train_results[-1]
        print(f"{name}: {result.steps} steps in {time.monotonic() - started:.0f} s ({result.stopped}), "
              f"best validation loss {result.best_val_loss:.3f}", flush=True)
        rows[name] = {"train_s": round(time.monotonic() - started, 1), "steps": result.steps,
                      "skipped_for_length": translator.skipped,
                      "epochs": result.epochs_completed, "stopped": result.stopped,
                      "best_val_loss": result.best_val_loss}
    scores = {}
    for label, name, beam in (("no_attention_greedy", "no_attention", 1), ("attention_greedy", "attention", 1),
                              ("attention_beam5", "attention", 5)):
        started = time.monotonic()
        scores[label] = {**models[name].evaluate(test, beam=beam), **rows[name],
                         "decode_s": round(time.monotonic() - started, 1)}
        print(f"{label}: BLEU {scores[label]['bleu']:.2f}  chrF {scores[label]['chrf']:.2f}", flush=True)
    examples = [{"source": s, "reference": t, "attention_beam5": models["attention"].translate(s, beam=5),
                 "no_attention": models["no_attention"].translate(s)} for s, t in test[:5]]
    return {"train_pairs": len(train), "test_pairs": len(test),
            "test_rule": "every 50th verse in canonical order (index % 50 == 49), all lengths",
            "config": {k: v for k, v in base.items() if k != "progress"}, "minutes_per_model": minutes,
            "scores": scores, "examples": examples,
            "ratios": {"bleu_attention_over_none": _ratio(scores, "attention_greedy", "no_attention_greedy"),
                       "bleu_beam5_over_greedy": _ratio(scores, "attention_beam5", "attention_greedy")}}


def dates(minutes: float, quick: bool, progress: bool) -> dict:
    train, test = date_pairs(2000 if quick else 20000), date_pairs(200 if quick else 1000, test=True)
    started = time.monotonic()
    translator = Translator(tokenizer="char", hidden_size=128, embedding_size=32, max_length=48,
                            minutes=minutes, progress=progress).fit(train)
    train_s = time.monotonic() - started
    greedy, beam = translator.evaluate(test), translator.evaluate(test, beam=5)
    print(f"dates: exact match {greedy['exact']:.2%} greedy, {beam['exact']:.2%} beam 5 after {train_s:.0f} s "
          f"({translator.train_results[-1].steps} steps)", flush=True)
    return {"train_pairs": len(train), "test_pairs": len(test), "train_s": round(train_s, 1),
            "steps": translator.train_results[-1].steps, "exact_greedy": greedy["exact"], "exact_beam5": beam["exact"],
            "test_rule": "dates whose ordinal is divisible by 10 (never in training)",
            "examples": [(s, translator.translate(s)) for s, _ in test[:5]]}


def _ratio(scores: dict, a: str, b: str) -> float:
    return round(scores[a]["bleu"] / scores[b]["bleu"], 3) if scores[b]["bleu"] > 0 else float("inf")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=20.0, help="training budget per Bible model")
    parser.add_argument("--date-minutes", type=float, default=2.0, help="training budget of the dates model")
    parser.add_argument("--quick", action="store_true", help="tiny budgets and subsets: a smoke run under 1 min")
    parser.add_argument("--clock", default="wall", choices=("wall", "cpu"),
                        help="what --minutes count: wall time, or this process's CPU time (steady on a shared machine)")
    parser.add_argument("--threads", type=int, default=1, help="2 threads on a busy 2-core machine stall (spin-waits)")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    minutes, date_minutes = (0.15, 0.15) if args.quick else (args.minutes, args.date_minutes)
    report = {"machine": {"python": platform.python_version(), "torch": torch.__version__,
                          "threads": args.threads, "processor": platform.processor() or platform.machine()},
              "quick": args.quick}
    report["dates"] = dates(date_minutes, args.quick, not args.no_progress)
    if bible_available():
        report["bible_en_es"] = bible(minutes, args.quick, not args.no_progress, args.clock)
    else:
        print(f"Bible skipped: {BIBLE_INSTALL}", file=sys.stderr)
        report["bible_en_es"] = {"skipped": BIBLE_INSTALL}
    out = RESULTS / ("translate_quick.json" if args.quick else "translate.json")
    atomic_write_bytes(out, (json.dumps(report, indent=2, ensure_ascii=False) + "\n").encode())
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
