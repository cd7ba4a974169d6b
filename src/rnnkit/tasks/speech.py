"""Speech recognition: audio in, characters out, a recurrent network trained with CTC.

The audio becomes log-mel frames (:class:`rnnkit.data.speech.Features`, a hundred a second),
normalised with the training set's mean and deviation per mel band (global, not per utterance,
so a stream can be normalised before it ends), and ``stack`` consecutive frames are joined into
one step, so the network reads a third as many steps. A stack of rnnkit :class:`Recurrent`
layers (bidirectional to transcribe whole utterances; one direction to transcribe audio as it
arrives) gives each step a distribution over blank + the characters, trained with CTC
(Graves et al. 2006): the loss sums over every alignment of the transcript to the steps, so no
frame-level labels are needed. Decoding is greedy: the likeliest symbol per step, repeats
merged, blanks dropped.
"""

from __future__ import annotations

import base64
import binascii
import string
from dataclasses import dataclass
from typing import Any, Iterator, Optional, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from .. import metrics
from ..data.speech import SAMPLE_RATE, Corpus, Features, read_wav, resample
from ..errors import DataError, RnnkitError
from ..layers import Recurrent
from .base import Task, TaskConfig

MODEL_TYPE = "speech_recognizer"
ALPHABET = " '" + string.ascii_lowercase   # symbol k + 1 is ALPHABET[k]; 0 is CTC's blank
RATES = (8000, 48000)                      # sample rates a request may have (resampled to the model's)


@dataclass(frozen=True, kw_only=True)
class SpeechConfig(TaskConfig):
    """Everything that defines a speech recogniser; saved in its bundle as ``config.json``."""

    KIND = "speech recognizer"

    cell: str = "lstm"
    hidden_size: int = 128           # per direction
    num_layers: int = 2
    bidirectional: bool = True       # False: a streaming model, each step sees only the past
    dropout: float = 0.1             # between recurrent layers and before the head
    n_mels: int = 40
    stack: int = 3                   # log-mel frames (a hundredth of a second each) joined into one step
    minutes: Optional[float] = 5.0
    epochs: int = 500                # an upper bound: the time budget ends a fit
    batch_size: int = 32

    def __post_init__(self) -> None:
        super().__post_init__()
        self.check_positive("hidden_size", "num_layers", "n_mels", "stack")
        if not 0.0 <= self.dropout < 1.0:
            raise RnnkitError(f"dropout must be in [0, 1), got {self.dropout!r}")


class SpeechNet(nn.Module):
    """Stacked log-mel frames ``(B, T, stack * n_mels)`` to per-step log-probabilities ``(B, T, 1 + len(ALPHABET))``."""

    def __init__(self, config: SpeechConfig) -> None:
        super().__init__()
        self.recurrent = Recurrent(config.stack * config.n_mels, config.hidden_size, cell=config.cell,
                                   num_layers=config.num_layers, bidirectional=config.bidirectional,
                                   dropout=config.dropout)
        self.dropout = nn.Dropout(config.dropout)
        self.head = nn.Linear(self.recurrent.output_size, 1 + len(ALPHABET))

    def forward(self, x: Tensor, state: Any = None, *, lengths: Optional[Tensor] = None) -> tuple[Tensor, Any]:
        outputs, state = self.recurrent(x, state, lengths=lengths)
        return self.head(self.dropout(outputs)).log_softmax(-1), state


def encode_text(text: str) -> list[int]:
    """A transcript's symbol ids (lower-cased); a character outside :data:`ALPHABET` is refused."""
    bad = sorted({c for c in text.lower() if c not in ALPHABET})
    if bad:
        raise DataError(f"transcript {text!r} has characters the recogniser cannot write: {''.join(bad)!r} "
                        "(it writes a-z, space and apostrophe)")
    return [ALPHABET.index(c) + 1 for c in text.lower()]


def greedy_decode(ids: Sequence[int], previous: int = 0) -> list[tuple[int, int]]:
    """CTC's greedy rule over the likeliest symbol per step: repeats merged, blanks dropped.
    Returns ``(symbol, step)`` for each symbol written; ``previous`` is the symbol of the step
    before ``ids`` (a stream's last), so a repeat across two chunks is merged too."""
    written = []
    for step, symbol in enumerate(ids):
        if symbol != previous and symbol != 0:
            written.append((int(symbol), step))
        previous = symbol
    return written


def ctc_loss(model: nn.Module, batch: tuple[Tensor, ...], state: Any = None) -> tuple[Tensor, None]:
    """The trainer's loss: CTC per utterance, divided by its transcript length, mean over the batch."""
    x, n, y, ny = batch
    log_probs, _ = model(x[:, : int(n.max())], lengths=n)
    return nn.functional.ctc_loss(log_probs.transpose(0, 1), y, n, ny, blank=0, zero_infinity=True), None


class SpeechRecognizer(Task):
    """Transcribes speech: ``fit(corpus)`` on a :class:`~rnnkit.data.speech.Corpus`, then
    ``transcribe([audio])``, ``evaluate(corpus)`` (CER, WER) and JSON requests.

    Example::

        corpus = rnnkit.data.speech.spoken_corpus()          # synthetic: espeak-ng voices
        asr = SpeechRecognizer(minutes=5).fit(corpus)        # its train split, val split picks the weights
        asr.evaluate(corpus.subset("test"))                  # {"cer": ..., "wer": ...}
    """

    name = "speech"
    model_type = MODEL_TYPE
    config_class = SpeechConfig
    request_schema = {"type": "object", "additionalProperties": False, "properties": {
        "wav": {"type": "string", "description": "a 16-bit PCM WAV file, base64: what a server takes (its "
                "limit on array items rules out sample lists longer than a fraction of a second)"},
        "audio": {"type": "array", "items": {"type": "number"}, "minItems": 1,
                  "description": "instead of wav: mono samples as floats in [-1, 1] (16-bit PCM / 32768)"},
        "sample_rate": {"type": "integer", "description": f"of audio, Hz (default {SAMPLE_RATE}); rates from "
                        f"{RATES[0]} to {RATES[1]} are resampled (a wav's own rate is read from it)"},
        "chunk_ms": {"type": "integer", "minimum": 10, "description": "streaming only: audio per partial "
                     "transcript (default 200)"}}}
    response_schema = {"type": "object", "properties": {
        "text": {"type": "string"},
        "words": {"type": "array", "description": "{word, start, end}: seconds into the audio", "items": {
            "type": "object"}},
        "final": {"type": "boolean", "description": "streaming: false on partial transcripts"}}}
    config: SpeechConfig

    def __init__(self, config: Optional[SpeechConfig] = None, **options: Any) -> None:
        super().__init__(config, **options)
        self.features = Features(n_mels=self.config.n_mels)
        self.mean = torch.zeros(self.config.n_mels)
        self.std = torch.ones(self.config.n_mels)

    # --------------------------------------------------------------------- data

    def frames(self, audio: Tensor) -> Tensor:
        """Samples at the model's rate ``(S,)`` to normalised, stacked steps ``(ceil(T / stack), stack * n_mels)``."""
        mel = (self.features(audio) - self.mean) / self.std
        k = self.config.stack
        mel = nn.functional.pad(mel, (0, 0, 0, -len(mel) % k))
        return mel.reshape(len(mel) // k, k * mel.size(1))

    def batch(self, audio: Sequence[np.ndarray]) -> tuple[Tensor, Tensor]:
        """Right-padded steps ``(N, T, F)`` and each utterance's steps ``(N,)``."""
        steps = [self.frames(torch.as_tensor(a, dtype=torch.float32)) for a in audio]
        lengths = torch.tensor([len(s) for s in steps])
        return nn.utils.rnn.pad_sequence(steps, batch_first=True), lengths

    def tensors(self, corpus: Corpus) -> tuple[Tensor, ...]:
        x, n = self.batch(corpus.audio)
        ids = [torch.tensor(encode_text(t)) for t in corpus.texts]
        ny = torch.tensor([len(i) for i in ids])
        if bool((ny > n).any()):
            raise DataError("an utterance is too short for its transcript (fewer steps than characters); "
                            "lower stack or check the corpus")
        return x, n, nn.utils.rnn.pad_sequence(ids, batch_first=True), ny

    # --------------------------------------------------------------------- training

    def _fit(self, corpus: Corpus, val: Optional[Corpus] = None) -> None:
        """Train on ``corpus``'s "train" split (all of it if it has none); ``val`` (default: its
        "val" split) picks the best weights."""
        if not isinstance(corpus, Corpus) or not len(corpus):
            raise DataError("no utterances to learn from; pass a rnnkit.data.speech Corpus (spoken_corpus())")
        train = corpus.subset("train") if "train" in corpus.splits else corpus
        val = val if val is not None else (corpus.subset("val") if "val" in corpus.splits else None)
        mel = torch.cat([self.features(torch.as_tensor(a)) for a in train.audio])
        self.mean, self.std = mel.mean(0), mel.std(0).clamp(min=1e-3)
        data = self.tensors(train)
        held = self.tensors(val) if val is not None and len(val) else None
        torch.manual_seed(self.config.seed)
        self.model = self.build_model()
        self.train_results = []
        result = self.train(self.model, ctc_loss, data, held, lengths=data[1],
                            batch_size=min(self.config.batch_size, len(train)),
                            decay_over_budget=self.config.minutes is not None)
        self.model.eval()
        self.metrics = {**self.training_summary(), "epochs_completed": result.epochs_completed,
                        "train_utterances": len(train), "parameters": sum(p.numel() for p in self.model.parameters())}
        if held is not None:
            self.metrics.update({f"val_{k}": v for k, v in self.evaluate(val).items()})

    def build_model(self) -> nn.Module:
        return SpeechNet(self.config)

    def preprocessing(self) -> dict[str, Any]:
        f = self.features
        return {"alphabet": ALPHABET, "features": {"sample_rate": f.sample_rate, "n_fft": f.n_fft, "hop": f.hop,
                                                   "n_mels": f.n_mels, "log_mel": True, "normalisation": "global"},
                "mean": self.mean.tolist(), "std": self.std.tolist()}

    def restore(self, state: dict[str, Any]) -> None:
        if state["alphabet"] != ALPHABET:
            raise KeyError("alphabet")
        f = state["features"]
        self.features = Features(sample_rate=f["sample_rate"], n_fft=f["n_fft"], hop=f["hop"], n_mels=f["n_mels"])
        self.mean, self.std = torch.tensor(state["mean"]), torch.tensor(state["std"])

    # --------------------------------------------------------------------- transcription

    @property
    def step_seconds(self) -> float:
        return self.config.stack * self.features.hop / self.features.sample_rate

    @torch.no_grad()
    def transcribe(self, audio: Sequence[np.ndarray], batch_size: int = 64) -> list[str]:
        """The transcript of each utterance (samples at :data:`SAMPLE_RATE`)."""
        return [self._words(ids)[0] for ids in self._best_ids(audio, batch_size)]

    def _best_ids(self, audio: Sequence[np.ndarray], batch_size: int) -> list[list[int]]:
        self.require_fitted()
        out = []
        for start in range(0, len(audio), batch_size):
            x, n = self.batch(audio[start:start + batch_size])
            log_probs, _ = self.model(x, lengths=n)
            out += [row[:k].tolist() for row, k in zip(log_probs.argmax(-1), n.tolist())]
        return out

    def _words(self, ids: Sequence[int], offset: int = 0, previous: int = 0) -> tuple[str, list[dict[str, Any]]]:
        """Text and per-word timing (seconds) of greedy-decoded step ids; ``offset`` steps precede them."""
        written = greedy_decode(ids, previous)
        text = "".join(ALPHABET[s - 1] for s, _ in written)
        words, current = [], None
        for symbol, step in written:
            if ALPHABET[symbol - 1] == " ":
                current = None
                continue
            if current is None:
                current = {"word": "", "start": round((offset + step) * self.step_seconds, 3)}
                words.append(current)
            current["word"] += ALPHABET[symbol - 1]
            current["end"] = round((offset + step + 1) * self.step_seconds, 3)
        return " ".join(text.split()), words

    def evaluate(self, corpus: Corpus) -> dict[str, float]:
        """Character and word error rates of the transcripts of ``corpus`` against its texts."""
        hypotheses = self.transcribe(corpus.audio)
        references = [t.lower() for t in corpus.texts]
        return {"cer": metrics.error_rate(hypotheses, references, "char"),
                "wer": metrics.error_rate(hypotheses, references, "word"), "utterances": len(references)}

    def request_audio(self, request: dict[str, Any]) -> Tensor:
        """The request's samples at the model's rate, or a one-line error for audio it cannot take."""
        if ("wav" in request) == ("audio" in request):
            raise RnnkitError("a speech request needs exactly one of wav (a base64 16-bit WAV file) or audio "
                              "(a list of float samples)")
        if "wav" in request:
            if "sample_rate" in request:
                raise RnnkitError("sample_rate goes with audio; a wav's rate is read from the file")
            try:
                samples, rate = read_wav(base64.b64decode(request["wav"], validate=True))
            except binascii.Error:
                raise RnnkitError("wav is not base64 text; send base64.b64encode(open(f, 'rb').read())") from None
            request = {"audio": samples, "sample_rate": rate}
        rate = request.get("sample_rate", self.features.sample_rate)
        if not isinstance(rate, int) or isinstance(rate, bool) or not RATES[0] <= rate <= RATES[1]:
            raise RnnkitError(f"sample_rate must be an integer from {RATES[0]} to {RATES[1]} Hz, got {rate!r}")
        audio = torch.as_tensor(request["audio"], dtype=torch.float32)
        if not bool(torch.isfinite(audio).all()):
            raise RnnkitError("audio holds NaN or infinite samples; send finite floats in [-1, 1]")
        if float(audio.abs().max()) > 1.0:
            raise RnnkitError("audio samples must be floats in [-1, 1]; divide 16-bit PCM by 32768")
        audio = resample(audio, rate, self.features.sample_rate)
        if len(audio) < self.features.n_fft:
            raise RnnkitError(f"audio is too short to transcribe: {len(audio)} samples at "
                              f"{self.features.sample_rate} Hz, need at least {self.features.n_fft}")
        return audio

    @torch.no_grad()
    def predict_json(self, request: dict[str, Any]) -> dict[str, Any]:
        ids = self._best_ids([self.request_audio(request)], 1)[0]
        text, words = self._words(ids)
        return {"text": text, "words": words}

    @torch.no_grad()
    def stream_json(self, request: dict[str, Any]) -> Iterator[dict[str, Any]]:
        """Partial transcripts as the audio arrives, ``chunk_ms`` at a time (a one-direction model
        only: a bidirectional one needs the whole utterance). The frames do not look past their
        own samples, and the state is carried from chunk to chunk, so the last transcript is
        the one :meth:`predict_json` gives."""
        if self.config.bidirectional:
            raise RnnkitError("this speech model is bidirectional, so it needs the whole utterance; "
                              "use predict, or train with --no-bidirectional to stream")
        audio = self.request_audio(request)
        steps = self.frames(audio)[None]  # (1, T, F)
        per_chunk = max(1, round(request.get("chunk_ms", 200) / 1000 / self.step_seconds))
        state, ids = None, []
        for start in range(0, steps.size(1), per_chunk):
            log_probs, state = self.model(steps[:, start:start + per_chunk], state)
            ids += log_probs[0].argmax(-1).tolist()
            text, words = self._words(ids)
            yield {"text": text, "words": words, "final": start + per_chunk >= steps.size(1)}


__all__ = ["ALPHABET", "SpeechConfig", "SpeechNet", "SpeechRecognizer", "ctc_loss", "encode_text", "greedy_decode"]
