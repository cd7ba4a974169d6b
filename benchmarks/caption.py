"""Image captioning benchmark: numbers composed from real handwritten digits, captioned in words.

scikit-learn's 1,797 real 8x8 digits are split train / validation / test (70/15/15) before
anything is composed; each composite is 2-4 digits of one split side by side, with vertical
jitter and gaps (``rnnkit.data.digits``). In one run, on the same composites:

- rnnkit's ``Captioner`` with Luong attention over the image columns, greedy and beam 5;
- the same model without attention (the decoder sees only the encoder's final state): an ablation;
- a per-digit classifier, logistic regression on the 8x8 crops (``C`` chosen on the validation
  digits) + the number-to-words function. It is GIVEN the segmentation: where each digit sits,
  which the captioner has to find for itself. It is the strongest baseline measured.

Scores on the test composites (scored once): exact-caption accuracy and sacrebleu's corpus BLEU;
for the attention model, how often a word's attention peak falls on the columns of the digit it
names ("forty" on the tens digit; a teen on either of its two digits; "hundred"/"thousand" on
their digit; "and" not counted), over the correctly captioned test composites.

    PYTHONPATH=src python benchmarks/caption.py               # --minutes CPU-minutes per model
    PYTHONPATH=src python benchmarks/caption.py --quick       # < 1 min, a smoke run

Writes ``benchmarks/results/caption.json`` (``caption_quick.json`` with ``--quick``) and, with
``--plot``, a PNG of test composites with their captions and attention.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

from rnnkit import metrics
from rnnkit.data.digits import Composites, digit_composites, load_digit_images, number_to_words, split_indices
from rnnkit.files import atomic_write_bytes
from rnnkit.tasks.caption import Captioner, CaptionerConfig

RESULTS = Path(__file__).parent / "results"


def crops(data: Composites) -> tuple[np.ndarray, np.ndarray]:
    """Every digit of every composite cut out where it was placed: ``(digits, 64)`` in 0..1, their labels."""
    features, labels = [], []
    for image, number, places in zip(data.images, data.numbers, data.offsets):
        for digit, (top, left) in zip(str(number), places):
            features.append(image[top:top + 8, left:left + 8].reshape(-1) / 16.0)
            labels.append(int(digit))
    return np.array(features), np.array(labels)


def digit_baseline(images: np.ndarray, labels: np.ndarray, val: Composites, test: Composites) -> dict:
    """Logistic regression per digit, told where each digit is, then the number in words."""
    from sklearn.linear_model import LogisticRegression

    train_ix = split_indices(len(images))["train"]
    x_train, y_train = images[train_ix].reshape(len(train_ix), -1) / 16.0, labels[train_ix]
    x_val, y_val = crops(val)
    scores = {}
    for c in (0.01, 0.1, 1.0, 10.0):
        model = LogisticRegression(C=c, max_iter=5000).fit(x_train, y_train)
        scores[c] = float((model.predict(x_val) == y_val).mean())
    best = max(scores, key=scores.get)
    model = LogisticRegression(C=best, max_iter=5000).fit(x_train, y_train)
    hypotheses, start = [], 0
    x_test, y_test = crops(test)
    predicted = model.predict(x_test)
    for number in test.numbers:
        k = len(str(number))
        hypotheses.append(number_to_words(int("".join(map(str, predicted[start:start + k])))))
        start += k
    return {"C_by_validation_digit_accuracy": {str(c): s for c, s in scores.items()}, "C": best,
            "test_digit_accuracy": float((predicted == y_test).mean()), **score(hypotheses, test.captions)}


def score(hypotheses: list[str], references: list[str]) -> dict:
    return {"exact": metrics.exact_match(hypotheses, references), "bleu": metrics.bleu(hypotheses, references)}


def word_digits(number: int) -> list[set[int]]:
    """Per word of ``number_to_words(number)``, the positions of the digits it names (empty for "and")."""
    digits = str(number)
    k, out = len(digits), []
    for position, digit in enumerate(digits):
        place = k - 1 - position  # 3 thousands, 2 hundreds, 1 tens, 0 ones
        if place >= 2 and digit != "0":
            out += [{position}, {position}]  # "seven thousand", "three hundred"
        elif place == 1 and digit == "1":
            out.append({position, position + 1})  # a teen names both digits
            break
        elif place == 1 and digit != "0":
            out.append({position})
        elif place == 0 and digit != "0":
            out.append({position})
        elif place == 0 and k == 1:
            out.append({position})  # "zero"
    words = number_to_words(number).split()
    for i, word in enumerate(words):  # "and" names no digit
        if word == "and":
            out.insert(i, set())
    assert len(out) == len(words), (number, words, out)
    return out


def attention_hits(details: list[dict], test: Composites) -> dict:
    hits = total = 0
    for detail, number, places in zip(details, test.numbers, test.offsets):
        if detail["caption"] != number_to_words(number):
            continue
        for weights, named in zip(detail["attention"], word_digits(number)):
            if named:
                peak = int(np.argmax(weights))
                hits += any(places[p][1] <= peak < places[p][1] + 8 for p in named)
                total += 1
    return {"attention_peak_on_named_digit": hits / max(total, 1), "words_counted": total}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--minutes", type=float, default=5.0, help="training budget per model (--clock)")
    parser.add_argument("--clock", choices=("wall", "cpu"), default="cpu")
    parser.add_argument("--quick", action="store_true", help="a smoke run; its figures are not quoted")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--plot", type=Path, default=None, help="PNG of test composites with captions and attention")
    parser.add_argument("--no-progress", dest="progress", action="store_false")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    minutes = 0.15 if args.quick else args.minutes
    images, labels = load_digit_images()
    sizes = (2000, 200, 300) if args.quick else (30000, 2000, 2000)
    train, val, test = (digit_composites(split, n, seed=0, data=(images, labels))
                        for split, n in zip(("train", "validation", "test"), sizes))
    report = {"machine": {"python": platform.python_version(), "torch": torch.__version__, "threads": args.threads,
                          "processor": platform.processor() or platform.machine()},
              "data": {"source": "scikit-learn load_digits, real handwritten 8x8 digits, composed 2-4 side by side",
                       "source_split": {k: len(v) for k, v in split_indices(len(images)).items()},
                       "composites": dict(zip(("train", "validation", "test"), sizes))},
              "budget": {"minutes": minutes, "clock": args.clock}, "models": {}}
    started = time.monotonic()
    report["models"]["digit_classifier_given_segmentation"] = digit_baseline(images, labels, val, test)
    report["models"]["digit_classifier_given_segmentation"]["seconds"] = round(time.monotonic() - started, 1)
    for name, attention in (("captioner_no_attention", "none"), ("captioner_attention", "luong")):
        started = time.monotonic()
        config = CaptionerConfig(attention=attention, minutes=minutes, clock=args.clock, progress=args.progress,
                                 epochs=1000, patience=10)
        captioner = Captioner(config).fit(train.images, train.captions, val.images, val.captions)
        result = captioner.train_results[-1]
        details = captioner.describe_images(test.images)
        row = {"steps": result.steps, "stopped": result.stopped, "best_val_loss": result.best_val_loss,
               "train_s": round(time.monotonic() - started, 1),
               "greedy": score([d["caption"] for d in details], test.captions)}
        if attention != "none":
            row["beam5"] = score([d["caption"] for d in captioner.describe_images(test.images, beam=5)], test.captions)
            row.update(attention_hits(details, test))
            if args.plot is not None:
                captioner.plot(test.images[:4], args.plot, references=test.captions[:4])
        report["models"][name] = row
        print(name, json.dumps(row), flush=True)
    baseline = report["models"]["digit_classifier_given_segmentation"]
    print("baseline", json.dumps(baseline), flush=True)
    out = RESULTS / ("caption_quick.json" if args.quick else "caption.json")
    atomic_write_bytes(out, (json.dumps(report, indent=2, ensure_ascii=False) + "\n").encode())
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
