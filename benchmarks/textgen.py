"""Character-level language modelling on Shakespeare: rnnkit's LSTM vs a torch.nn Transformer.

Both models train on the first 95 % of Shakespeare's works with the same CPU budget and
thread count and are scored on the last 5 % (contiguous, never seen) in bits per character.
The LSTM is rnnkit's ``TextGenerator`` (stateful truncated BPTT); the Transformer is a
decoder-only GPT built from ``torch.nn.TransformerEncoder`` with a causal mask, about the
same parameter count, trained by the same trainer on shuffled 128-character windows and
scored with a sliding window (every character sees at least 64 characters of context).

    PYTHONPATH=src python benchmarks/textgen.py            # 10 minutes per model
    PYTHONPATH=src python benchmarks/textgen.py --quick    # < 1 minute in all
"""

from __future__ import annotations

import argparse
import json
import math
import platform
from pathlib import Path

import torch
from torch import Tensor, nn

from rnnkit.data.text import load_shakespeare
from rnnkit.tasks.textgen import TextGenerator, TextGeneratorConfig
from rnnkit.training import TrainConfig, fit

RESULTS = Path(__file__).parent / "results" / "textgen.json"


class CharTransformer(nn.Module):
    """GPT-style: token + position embeddings, pre-norm causal self-attention blocks, tied head."""

    def __init__(self, vocab_size: int, d_model: int, num_layers: int, heads: int, block: int) -> None:
        super().__init__()
        self.block = block
        self.tokens = nn.Embedding(vocab_size, d_model)
        self.positions = nn.Embedding(block, d_model)
        layer = nn.TransformerEncoderLayer(d_model, heads, 4 * d_model, dropout=0.0, activation="gelu",
                                           batch_first=True, norm_first=True)
        self.blocks = nn.TransformerEncoder(layer, num_layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, vocab_size, bias=False)
        self.head.weight = self.tokens.weight
        for embedding in (self.tokens, self.positions):  # GPT-2's init: small, so the tied head starts calm
            nn.init.normal_(embedding.weight, std=0.02)
        self.register_buffer("mask", nn.Transformer.generate_square_subsequent_mask(block), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        steps = x.size(1)
        h = self.tokens(x) + self.positions(torch.arange(steps, device=x.device))  # (B, T, d)
        h = self.blocks(h, mask=self.mask[:steps, :steps], is_causal=True)
        return self.head(self.norm(h))  # (B, T, V)


def transformer_loss(model: nn.Module, batch: tuple[Tensor, ...], state) -> tuple[Tensor, None]:
    x, y = batch
    logits = model(x)
    return nn.functional.cross_entropy(logits.reshape(-1, logits.size(-1)), y.reshape(-1)), None


def count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def sized_transformer(vocab: int, block: int, target: int) -> CharTransformer:
    """The (width, depth) whose parameter count is closest to ``target``, depth 2-8."""
    best = None
    for d_model in (128, 192, 256, 320, 384, 512):
        for layers in range(2, 9):
            params = layers * (12 * d_model * d_model + 13 * d_model) + (vocab + block + 2) * d_model
            if best is None or abs(params - target) < abs(best[0] - target):
                best = (params, d_model, layers)
    _, d_model, layers = best
    return CharTransformer(vocab, d_model, layers, heads=max(2, d_model // 64), block=block)


@torch.no_grad()
def transformer_bpc(model: CharTransformer, ids: Tensor) -> float:
    """Bits per character over ``ids``: windows of ``block`` moving by ``block // 2``, each scoring
    its second half (the first window scores all), so every target has >= block/2 context."""
    model.eval()
    block, half, total, scored = model.block, model.block // 2, 0.0, 0
    starts = list(range(0, ids.numel() - block - 1, half))
    for i in range(0, len(starts), 64):
        chunk = starts[i:i + 64]
        x = torch.stack([ids[s:s + block] for s in chunk])  # (b, block)
        y = torch.stack([ids[s + 1:s + block + 1] for s in chunk])
        nll = nn.functional.cross_entropy(model(x).transpose(1, 2), y, reduction="none")  # (b, block)
        keep = torch.ones_like(nll, dtype=torch.bool)
        keep[:, :half] = torch.tensor([s == 0 for s in chunk])[:, None]
        total, scored = total + nll[keep].sum().item(), scored + int(keep.sum())
    return total / scored / math.log(2)


def run_lstm(train: str, held_out: str, args) -> tuple[dict, TextGenerator]:
    config = TextGeneratorConfig(hidden_size=args.hidden, num_layers=args.layers, seq_len=args.seq_len,
                                 batch_size=args.batch, lr=args.lr, epochs=100, minutes=args.minutes,
                                 clock=args.clock, progress=not args.quiet)
    lm = TextGenerator(config).fit(train, val_text=held_out)
    m = lm.metrics
    return {"model": f"rnnkit LSTM {args.layers}x{args.hidden}", "parameters": m["parameters"],
            "held_out_bpc": m["val_bpc"], "train_tokens_per_s": m["train_tokens_per_s"], "steps": m["steps"],
            "epochs_completed": m["epochs_completed"]}, lm


def run_transformer(train: str, held_out: str, lm: TextGenerator, target: int, args) -> dict:
    tokenizer, block = lm.tokenizer, args.seq_len
    torch.manual_seed(0)
    model = sized_transformer(tokenizer.vocab_size, block, target)
    ids = torch.tensor(tokenizer.encode(train), dtype=torch.long)
    n = (ids.numel() - 1) // block
    x, y = ids[: n * block].view(n, block), ids[1: n * block + 1].view(n, block)  # (n, block) windows
    config = TrainConfig(epochs=100, minutes=args.minutes, batch_size=args.batch, lr=args.transformer_lr,
                         warmup_steps=100, decay_over_budget=True, clock=args.clock, progress=not args.quiet)
    result = fit(model, transformer_loss, (x, y), None, config)
    seconds = result.elapsed_s  # on the budget's clock, as the LSTM's tokens/s
    bpc = transformer_bpc(model, torch.tensor(tokenizer.encode(held_out), dtype=torch.long))
    d_model, layers = model.tokens.embedding_dim, len(model.blocks.layers)
    return {"model": f"torch.nn Transformer {layers}x{d_model}", "parameters": count(model), "held_out_bpc": bpc,
            "train_tokens_per_s": result.steps * args.batch * block / seconds, "steps": result.steps,
            "epochs_completed": result.epochs_completed}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=10.0, help="training budget per model")
    parser.add_argument("--clock", default="cpu", choices=("cpu", "wall"),
                        help="what --minutes count: this process's CPU time (fair on a shared machine) or wall time")
    parser.add_argument("--quick", action="store_true", help="0.3 min per model on 300 kB: a smoke test")
    parser.add_argument("--threads", type=int, default=1, help="torch threads for both (1: the CPU is shared)")
    parser.add_argument("--hidden", type=int, default=256, help="LSTM width: 256 gets the most from a shared CPU")
    parser.add_argument("--layers", type=int, default=1)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--lr", type=float, default=5e-3, help="LSTM learning rate")
    parser.add_argument("--transformer-lr", type=float, default=1e-3)
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--bundle", type=Path, help="also save the trained LSTM as a bundle here")
    args = parser.parse_args()
    if args.quick:
        args.minutes = 0.3
    torch.set_num_threads(args.threads)
    text = load_shakespeare()
    if args.quick:
        text = text[:300_000]
    cut = int(len(text) * 0.95)
    train, held_out = text[:cut], text[cut:]
    print(f"Shakespeare: {len(train):,} characters to train on, the last {len(held_out):,} held out; "
          f"{args.minutes:g} min of {args.clock} time per model, {args.threads} thread(s)")
    lstm, lm = run_lstm(train, held_out, args)
    print(f"  {lstm['model']}: held-out {lstm['held_out_bpc']:.3f} bpc, {lstm['train_tokens_per_s']:,.0f} tokens/s")
    transformer = run_transformer(train, held_out, lm, lstm["parameters"], args)
    print(f"  {transformer['model']}: held-out {transformer['held_out_bpc']:.3f} bpc, "
          f"{transformer['train_tokens_per_s']:,.0f} tokens/s")
    ratio_bpc = lstm["held_out_bpc"] / transformer["held_out_bpc"]
    ratio_speed = lstm["train_tokens_per_s"] / transformer["train_tokens_per_s"]
    print(f"LSTM / Transformer: bpc x{ratio_bpc:.3f} (lower is better), tokens/s x{ratio_speed:.2f}; "
          f"target LSTM bpc < Transformer bpc: {'met' if ratio_bpc < 1 else 'MISSED'}; "
          f"stretch <= 2.0 bpc: {'met' if lstm['held_out_bpc'] <= 2.0 else 'missed'}")
    sample = lm.generate("ROMEO:", max_tokens=200, temperature=0.8, seed=0)
    print("sample:\n" + sample)
    report = {"benchmark": "textgen", "quick": args.quick, "minutes_per_model": args.minutes, "clock": args.clock,
              "threads": args.threads, "train_chars": len(train), "held_out_chars": len(held_out),
              "lstm": lstm, "transformer": transformer, "bpc_ratio_lstm_over_transformer": ratio_bpc,
              "tokens_per_s_ratio_lstm_over_transformer": ratio_speed, "target_met": ratio_bpc < 1,
              "stretch_met": lstm["held_out_bpc"] <= 2.0, "sample": sample,
              "machine": f"{platform.machine()} {platform.processor()}, torch {torch.__version__}",
              "note": "the 2-core CPU was shared with other jobs: fewer steps than on an idle machine"}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    if args.bundle:
        lm.save(args.bundle)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
