"""What each task exports: its graphs, their inputs and outputs, and how to feed and read them.

A :class:`Graph` is one module to export plus a description of every input and output
(:class:`Port`: name, shape with named dynamic axes, dtype, meaning) and of the pre- and
post-processing that stays outside it. The description is what the sidecar JSON beside each
``.onnx`` file holds, so a user of onnxruntime needs nothing else from rnnkit. Every module is
a :func:`~rnnkit.export.recurrent.reference_copy` of the task's model: the same weights on the
reference equations, the time loops written as ``Scan``.

One builder per task (``model_type``), each returning its graphs:

- forecaster: ``forecast`` (a window to the horizon's quantiles);
- sequence_classifier: ``classify`` (token ids and lengths to class log-probabilities);
- text_generator: ``lm_step`` (one token and the state to the next token's logits and the state);
- translator: ``encoder`` (source ids to attention memory and initial state) and
  ``decoder_step`` (one target token to logits, next state, attention weights).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Union

import torch
from torch import Tensor, nn

from ..data.tokenizers import BOS, EOS, PAD, SPECIALS
from ..errors import RnnkitError
from ..seq2seq import Encoded
from .recurrent import reference_copy

BATCH, TIME, SOURCE = "batch", "time", "source_time"  # names of the dynamic axes
TOKENIZER = ("ids from the tokenizer in preprocessing.json[{key!r}] (rnnkit.data.tokenizers.tokenizer_from_dict "
             "rebuilds it; specials: 0 <pad>, 1 <unk>, 2 <bos>, 3 <eos>)")


@dataclass(frozen=True)
class Port:
    """One input or output: ``shape`` holds sizes and names of dynamic axes."""

    name: str
    shape: tuple[Union[int, str], ...]
    dtype: str  # "float32", "int64" or "bool"
    meaning: str

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "shape": list(self.shape), "dtype": self.dtype, "meaning": self.meaning}


class Call(nn.Module):
    """``fn(model, *inputs)`` as a module, so one model can be exported through several entry points."""

    def __init__(self, model: nn.Module, fn: Callable[..., Any]) -> None:
        super().__init__()
        self.model, self.fn = model, fn

    def forward(self, *inputs: Tensor) -> Any:
        return self.fn(self.model, *inputs)


def calls(original: nn.Module, copy: nn.Module, fn: Callable[..., Any]) -> tuple[Call, Call]:
    """``fn`` on the reference copy (to export) and on the task's own model (to check the export against)."""
    return Call(copy, fn), Call(original, fn)


@dataclass
class Graph:
    """A module to export, its ports, example inputs of any size, and what happens around it."""

    name: str
    module: nn.Module  # what is exported: on the reference copy of the task's model
    original: nn.Module  # the same entry point on the task's own model, which the export must match
    inputs: list[Port]
    outputs: list[Port]
    make_example: Callable[[int, int], tuple[Tensor, ...]]  # (batch, steps) -> inputs; steps may be ignored
    about: str
    preprocessing: list[str] = field(default_factory=list)
    postprocessing: list[str] = field(default_factory=list)

    def sidecar(self) -> dict[str, Any]:
        return {"graph": self.name, "file": f"{self.name}.onnx", "about": self.about,
                "inputs": [p.to_dict() for p in self.inputs], "outputs": [p.to_dict() for p in self.outputs],
                "preprocessing": self.preprocessing, "postprocessing": self.postprocessing}


def state_ports(prefix: str, layers: int, hidden: int, num_states: int, suffix: str = "") -> list[Port]:
    """``h`` (and ``c`` for LSTM) ``(layers, batch, hidden)``, as ``torch.nn`` lays out a state."""
    names = ("h", "c")[:num_states]
    return [Port(f"{n}{suffix}", (layers, BATCH, hidden), "float32",
                 f"{prefix}: {'hidden' if n == 'h' else 'cell'} state of each layer") for n in names]


def state_tuple(parts: tuple[Tensor, ...]) -> Any:
    return parts if len(parts) == 2 else parts[0]


def example_ids(vocab: int, batch: int, steps: int) -> tuple[Tensor, Tensor]:
    """Ids in the real vocabulary and lengths from ``steps`` down (the longest row fills the time axis)."""
    ids = torch.randint(len(SPECIALS), max(vocab, len(SPECIALS) + 1), (batch, steps))
    lengths = torch.tensor([max(1, steps - 2 * i) for i in range(batch)])
    return ids, lengths


# ------------------------------------------------------------------ forecaster

def ensemble_forecast(ensemble: nn.Module, y: Tensor, past: Tensor, known: Tensor) -> Tensor:
    """``ForecastEnsemble.forward`` with its ``cummax`` (no ONNX operator) as a maximum over each prefix."""
    mean = torch.stack([member(y, past, known) for member in ensemble.members]).mean(dim=0)  # (B, H, Q)
    shifted = mean + ensemble.calibration
    return torch.stack([shifted[:, :, : k + 1].amax(dim=2) for k in range(shifted.size(2))], dim=2)


def forecaster_graphs(task: Any, preprocessing: dict[str, Any]) -> list[Graph]:
    cfg = task.config
    if cfg.model == "esrnn":
        raise RnnkitError("ONNX export covers the window forecaster (model='rnn'); this one runs a per-series "
                          "smoothing recursion over each whole series (model='esrnn'): train with --model rnn to export")
    past, known = (int(n) for n in preprocessing["num_features"])
    lookback, horizon, q = cfg.lookback, cfg.horizon, len(cfg.quantiles)
    model = reference_copy(task.model)

    def example(batch: int, steps: int) -> tuple[Tensor, ...]:  # the lookback is fixed by the network
        return torch.randn(batch, lookback), torch.randn(batch, lookback, past), torch.randn(batch, lookback + horizon, known)

    window = ("window normalisation: level = y[:, -1] (the last value); scale = "
              + ("the standard deviation (ddof 1) of the observed values of the window, at least 0.1"
                 if cfg.window_scale else "1") + "; y = (y - level) / scale * observed")
    return [Graph(
        "forecast", *calls(task.model, model, ensemble_forecast),
        inputs=[Port("y", (BATCH, lookback), "float32", "the last lookback values of each series, scaled and "
                     "window-normalised (see preprocessing); 0 on left padding"),
                Port("past", (BATCH, lookback, past), "float32", "past covariates (standardised) then the observed "
                     "channel: 1 where a value was observed, 0 on left padding"),
                Port("known", (BATCH, lookback + horizon, known), "float32", "known-future features over lookback "
                     "and horizon: calendar sin/cos features, then future covariates (standardised); 0 on padding")],
        outputs=[Port("quantiles", (BATCH, horizon, q), "float32",
                      f"quantiles {list(cfg.quantiles)} of each horizon step, in window-normalised units")],
        make_example=example,
        about=f"{cfg.cell} forecaster, ensemble of {cfg.ensemble}: one window to {horizon} steps x {q} quantiles",
        preprocessing=[
            "per series: z = (value - mean) / std with (mean, std) = preprocessing.json['scaler'][series id] "
            "(a new series: its own history's mean and std)",
            f"take the last {lookback} values; a shorter series is left-padded with zeros (observed = 0 there); "
            "rnnkit's predict forecasts a series shorter than one season + horizon by seasonal naive instead",
            window,
            f"past covariates {list(cfg.past_covariates)} and future covariates {list(cfg.future_covariates)}: "
            "(x - mean) / std with preprocessing.json['covariates'][column]",
            f"calendar features: {'rnnkit.data.series.calendar_features(dates, freq)' if cfg.calendar else 'none'} "
            f"over the lookback and horizon dates, freq = preprocessing.json['freq']"],
        postprocessing=["quantiles * scale + level (per window), then * std + mean (per series): values in the "
                        "series' units; the median column is the point forecast"])]


# ------------------------------------------------------------------ classifier

def classifier_graphs(task: Any, preprocessing: dict[str, Any]) -> list[Graph]:
    classes = list(preprocessing["classes"])
    model = reference_copy(task.model)
    vocab = task.tokenizer.vocab_size
    return [Graph(
        "classify", *calls(task.model, model, lambda m, x, n: m(x, lengths=n)),
        inputs=[Port("ids", (BATCH, TIME), "int64", TOKENIZER.format(key="tokenizer") + ", right-padded with 0"),
                Port("lengths", (BATCH,), "int64", "tokens of each row, 1..time")],
        outputs=[Port("log_probs", (BATCH, len(classes)), "float32",
                      f"log of the class probabilities (ensemble mean), classes in order {classes}")],
        make_example=lambda batch, steps: example_ids(vocab, batch, steps),
        about=f"{task.config.cell} text classifier: token ids to log class probabilities",
        preprocessing=[f"encode each text, keep its first {task.config.max_len} tokens; an empty text is [1] (<unk>)"],
        postprocessing=["exp(log_probs) are the probabilities; argmax names the label: preprocessing.json['classes']"])]


# ------------------------------------------------------------------ language model

def textgen_graphs(task: Any, preprocessing: dict[str, Any]) -> list[Graph]:
    model = reference_copy(task.model)
    recurrent = model.recurrent
    layers, hidden, count = recurrent.num_layers, recurrent.hidden_size, recurrent.num_states

    def step(m: nn.Module, token: Tensor, *parts: Tensor) -> tuple[Tensor, ...]:
        # ManyToMany.step, minus its choice of precision under autocast (a guard on the batch size)
        output, new = m.recurrent.step(m.embed(token[:, None])[:, 0], state_tuple(parts))  # (B, H)
        return (m.head(output), *((new,) if isinstance(new, Tensor) else new))

    vocab = task.tokenizer.vocab_size
    return [Graph(
        "lm_step", *calls(task.model, model, step),
        inputs=[Port("token", (BATCH,), "int64", TOKENIZER.format(key="tokenizer") + ": the current token"),
                *state_ports("the state before this token", layers, hidden, count)],
        outputs=[Port("logits", (BATCH, vocab), "float32", "scores of the next token (softmax: probabilities)"),
                 *state_ports("the state after this token", layers, hidden, count, suffix="_out")],
        make_example=lambda batch, steps: (torch.randint(len(SPECIALS), vocab, (batch,)),
                                           *(torch.randn(layers, batch, hidden) / 2 for _ in range(count))),
        about=f"{task.config.cell} language model, one step: a token and the state in, logits and the state out",
        preprocessing=["start from zero states; feed the prompt's ids one at a time, carrying the state "
                       "(an empty prompt: the id of a newline)"],
        postprocessing=[f"before sampling set the logits of ids 0..{len(SPECIALS) - 1} {list(SPECIALS)} to -inf; "
                        "sample softmax(logits / temperature) (or argmax), feed the token back with the state out"])]


# ------------------------------------------------------------------ translator

def translator_graphs(task: Any, preprocessing: dict[str, Any]) -> list[Graph]:
    model = reference_copy(task.model)
    cfg = model.config
    attends, feeds = cfg.attention != "none", cfg.feeds_context
    layers, hidden, count = cfg.decoder_layers, cfg.hidden_size, model.decoder.num_states
    memory_ports = [Port("memory", (BATCH, SOURCE, hidden), "float32", "encoder outputs"),
                    Port("keys", (BATCH, SOURCE, hidden), "float32", "attention keys of the memory"),
                    Port("mask", (BATCH, SOURCE), "bool", "True on real source tokens")] if attends else []

    def encode(m: nn.Module, s: Tensor, n: Tensor) -> tuple[Tensor, ...]:
        enc, state = m.encode(s, n)
        parts = (state,) if isinstance(state, Tensor) else state
        return (*(enc if attends else ()), *parts)

    def decode(m: nn.Module, y_prev: Tensor, *rest: Tensor) -> tuple[Tensor, ...]:
        state, rest = state_tuple(rest[:count]), rest[count:]
        feed, rest = (rest[0], rest[1:]) if feeds else (None, rest)
        enc = Encoded(*rest) if attends else None
        logits, state, feed, weights = m.step(y_prev, state, feed, enc)
        parts = (state,) if isinstance(state, Tensor) else state
        return (logits, *parts, *((feed,) if feeds else ()), *((weights,) if attends else ()))

    def decoder_example(batch: int, steps: int) -> tuple[Tensor, ...]:
        with torch.no_grad():
            encoded = encode(model, *example_ids(cfg.src_vocab_size, batch, steps))
        enc_outputs, initial = encoded[:len(memory_ports)], encoded[len(memory_ports):]
        feed = (torch.randn(batch, hidden) / 2,) if feeds else ()
        return (torch.randint(len(SPECIALS), cfg.tgt_vocab_size, (batch,)), *initial, *feed, *enc_outputs)

    source = TOKENIZER.format(key="source")
    encoder = Graph(
        "encoder", *calls(task.model, model, encode),
        inputs=[Port("src", (BATCH, SOURCE), "int64", source + ", right-padded with 0"),
                Port("src_lengths", (BATCH,), "int64", "tokens of each source row, 1..source_time")],
        outputs=[*memory_ports, *state_ports("the decoder's initial state", layers, hidden, count)],
        make_example=lambda batch, steps: example_ids(cfg.src_vocab_size, batch, steps),
        about=f"{cfg.cell} translator, encoder: source ids to the decoder's initial state"
              + (" and the attention memory" if attends else ""),
        preprocessing=[f"encode the source sentence (whitespace collapsed); at most {task.config.max_length} tokens"],
        postprocessing=["feed the outputs to decoder_step with y_prev = 2 (<bos>)"
                        + (" and feed = zeros (batch, hidden)" if feeds else "")])
    decoder = Graph(
        "decoder_step", *calls(task.model, model, decode),
        inputs=[Port("y_prev", (BATCH,), "int64", f"the previous target token ({BOS} <bos> at the start)"),
                *state_ports("the decoder state", layers, hidden, count),
                *([Port("feed", (BATCH, hidden), "float32", "the previous step's feed_out (zeros at the start)")]
                  if feeds else []),
                *memory_ports],
        outputs=[Port("logits", (BATCH, cfg.tgt_vocab_size), "float32", "scores of the next target token"),
                 *state_ports("the decoder state after this step", layers, hidden, count, suffix="_out"),
                 *([Port("feed_out", (BATCH, hidden), "float32", "fed to the next step")] if feeds else []),
                 *([Port("attention", (BATCH, SOURCE), "float32", "attention weights over the source")]
                   if attends else [])],
        make_example=decoder_example,
        about=f"{cfg.cell} translator, one decoder step ({cfg.attention} attention)",
        preprocessing=[f"target {TOKENIZER.format(key='target')}"],
        postprocessing=[f"greedy: y = argmax(logits), fed back with the state (and feed) out until every row has "
                        f"given {EOS} <eos>, or after min({task.config.max_length + 1}, 2 x the longest source + 10) "
                        f"tokens, as Translator.translate; decode each row's ids before <eos> with the target "
                        f"tokenizer (preprocessing.json['target']); {PAD} is <pad>"])
    return [encoder, decoder]


BUILDERS: dict[str, Callable[[Any, dict[str, Any]], list[Graph]]] = {
    "forecaster": forecaster_graphs, "sequence_classifier": classifier_graphs,
    "text_generator": textgen_graphs, "translator": translator_graphs,
}


def builder_for(model_type: str) -> Callable[[Any, dict[str, Any]], list[Graph]]:
    """The function that makes a ``model_type``'s graphs from its loaded task and preprocessing state."""
    if model_type not in BUILDERS:
        raise RnnkitError(f"a {model_type!r} model cannot be exported to ONNX; the exportable ones are: "
                          f"{', '.join(BUILDERS)}")
    return BUILDERS[model_type]


__all__ = ["BUILDERS", "Graph", "Port", "builder_for"]
