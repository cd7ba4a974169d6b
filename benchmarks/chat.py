"""Chatbot benchmark: replies to held-out conversations of chatterbot-corpus (English), in context.

The conversations are split whole (``split_conversations``, seed 0): 80 % train, 10 % validation
(early stopping only), 10 % test, scored once. Every turn after the first of a test conversation
is a reply to predict from the turns before it. Candidates, each given the same training
conversations:

- rnnkit's ``Chatbot`` at its default options (word vocabulary, a 256-unit LSTM encoder-decoder
  with Luong attention, two turns of context), trained for ``--minutes`` on one thread, greedy;
- retrieval, the strongest simple baseline for a corpus this small: TF-IDF (word 1-2 grams) over the
  training contexts, and the reply that followed the most similar one (scikit-learn);
- the most frequent training reply, always.

Scores: sacrebleu's corpus BLEU and chrF, and exact match. On a corpus of 2,000 short
conversations, most test questions were never seen: every score is low, and retrieval copies
whole human replies, which BLEU rewards.

    PYTHONPATH=src python benchmarks/chat.py              # 5 CPU-minutes of training
    PYTHONPATH=src python benchmarks/chat.py --quick      # a smoke run (not quoted)
"""

from __future__ import annotations

import argparse
import collections
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))  # run from a checkout

from common.timing import write_result  # noqa: E402
from rnnkit import metrics  # noqa: E402
from rnnkit.data.dialog import dialog_pairs, load_chatterbot, split_conversations  # noqa: E402
from rnnkit.tasks.chat import Chatbot, ChatbotConfig  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


def scores(hypotheses: list[str], references: list[str]) -> dict[str, float]:
    return {"bleu": metrics.bleu(hypotheses, references), "chrf": metrics.chrf(hypotheses, references),
            "exact": metrics.exact_match(hypotheses, references)}


def retrieval(train: list[tuple[str, str]], contexts: list[str]) -> list[str]:
    """The reply that followed the training context most like each of ``contexts`` (TF-IDF cosine)."""
    from sklearn.feature_extraction.text import TfidfVectorizer

    vectorizer = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True).fit([c for c, _ in train])
    similarity = vectorizer.transform(contexts) @ vectorizer.transform([c for c, _ in train]).T
    return [train[int(row.argmax())][1] for row in similarity.toarray()]


def run(minutes: float, quick: bool) -> dict:
    torch.set_num_threads(1)
    train, val, test = split_conversations(load_chatterbot(), seed=0)
    config = ChatbotConfig(minutes=minutes, progress=not quick, seed=0, **({"hidden_size": 64} if quick else {}))
    started = time.process_time()
    bot = Chatbot(config).fit(train, val)
    fit_s = time.process_time() - started
    test_pairs = dialog_pairs(test, config.context_turns)
    contexts, references = [c for c, _ in test_pairs], [r for _, r in test_pairs]
    train_pairs = dialog_pairs(train, config.context_turns)
    commonest = collections.Counter(r for _, r in train_pairs).most_common(1)[0][0]
    replies = [d["output"] for d in bot.decode_detailed(contexts)]  # what bot.evaluate(test) scores
    rows = {"rnnkit Chatbot (greedy)": scores(replies, references),
            "TF-IDF retrieval": scores(retrieval(train_pairs, contexts), references),
            "most frequent reply": scores([commonest] * len(references), references)}
    result = bot.train_results[-1]
    best_baseline = max((name for name in rows if not name.startswith("rnnkit")), key=lambda n: rows[n]["chrf"])
    ours = rows["rnnkit Chatbot (greedy)"]
    examples = [{"context": c, "reference": r, "rnnkit": reply}
                for (c, r), reply in zip(test_pairs[:6], replies)]
    return {"mode": "quick" if quick else "full", "conversations": {"train": len(train), "validation": len(val),
                                                                   "test": len(test)},
            "test_replies": len(test_pairs), "config": {k: v for k, v in config.to_dict().items() if k != "progress"},
            "training": {"cpu_s": round(fit_s, 1), "steps": result.steps, "stopped": result.stopped,
                         "best_val_loss": result.best_val_loss},
            "scores": rows, "strongest_baseline": best_baseline,
            "ratios_vs_strongest": {m: ours[m] / rows[best_baseline][m] if rows[best_baseline][m] else None
                                    for m in ("bleu", "chrf")},
            "examples": examples}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--minutes", type=float, default=5.0)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", type=Path, default=None, help="directory for chat.json")
    args = parser.parse_args()
    result = run(0.2 if args.quick else args.minutes, args.quick)
    for name, row in result["scores"].items():
        print(f"{name:26s} BLEU {row['bleu']:6.2f}  chrF {row['chrf']:6.2f}  exact {row['exact']:.3f}")
    print(f"strongest baseline: {result['strongest_baseline']}; rnnkit / it: "
          + ", ".join(f"{m} {r:.2f}x" for m, r in result["ratios_vs_strongest"].items() if r is not None))
    path = write_result(result, args.out or (None if args.quick else RESULTS), "chat")
    if path:
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
