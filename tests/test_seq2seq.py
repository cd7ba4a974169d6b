"""The Seq2Seq topology: attention masks, greedy vs beam search, teacher forcing, learning."""

import pytest
import torch

from rnnkit.data.tokenizers import BOS, EOS, PAD
from rnnkit.errors import RnnkitError
from rnnkit.seq2seq import Seq2Seq, Seq2SeqConfig
from rnnkit.training import TrainConfig, fit

VOCAB = 12


def _model(attention="luong", **options):
    config = Seq2SeqConfig(src_vocab_size=VOCAB, tgt_vocab_size=VOCAB, embedding_size=8, hidden_size=16,
                           attention=attention, dropout=0.0, **options)
    return Seq2Seq(config).eval()


def _batch():
    lengths = torch.tensor([5, 2, 3])
    src = torch.randint(4, VOCAB, (3, 5))
    src[torch.arange(5)[None, :] >= lengths[:, None]] = PAD
    return src, lengths


VARIANTS = [dict(attention="luong"), dict(attention="luong", input_feeding=True), dict(attention="bahdanau"),
            dict(attention="none"), dict(attention="luong", cell="gru"), dict(attention="bahdanau", cell="gru",
                                                                               decoder_layers=2)]


@pytest.mark.parametrize("options", VARIANTS, ids=lambda o: "-".join(str(v) for v in o.values()))
def test_beam_size_one_equals_greedy(options):
    model = _model(**options)
    src, lengths = _batch()
    greedy_ids, greedy_attention = model.greedy(src, lengths, max_length=9)
    beam_ids, beam_attention = model.beam_search(src, lengths, max_length=9, beam=1)
    assert torch.equal(greedy_ids, beam_ids)
    torch.testing.assert_close(greedy_attention, beam_attention)


@pytest.mark.parametrize("attention", ["luong", "bahdanau"])
def test_attention_sums_to_one_and_never_attends_to_padding(attention):
    model = _model(attention)
    src, lengths = _batch()
    enc, _ = model.encode(src, lengths)
    weights = model.attend(torch.randn(3, 4, 16), enc)[1]  # (B, T, S)
    torch.testing.assert_close(weights.sum(dim=2), torch.ones(3, 4))
    padding = torch.arange(5)[None, :] >= lengths[:, None]  # (B, S)
    assert torch.all(weights.masked_select(padding[:, None, :].expand_as(weights)) == 0)
    # The same holds for the maps returned by decoding, beam search included.
    for _, maps in (model.greedy(src, lengths, 6), model.beam_search(src, lengths, 6, beam=3)):
        assert torch.all(maps.masked_select(padding[:, None, :].expand_as(maps)) == 0)
        torch.testing.assert_close(maps.sum(dim=2), torch.ones(maps.shape[:2]))  # every step, even after <eos>


def test_padding_does_not_change_the_result():
    model = _model("bahdanau")
    src, lengths = _batch()
    wider = torch.cat([src, torch.full((3, 4), PAD)], dim=1)
    ids, _ = model.beam_search(src, lengths, 7, beam=3)
    wide_ids, _ = model.beam_search(wider, lengths, 7, beam=3)
    assert torch.equal(ids, wide_ids)


def test_beam_search_finds_a_sequence_at_least_as_likely_as_greedy():
    torch.manual_seed(3)
    model = _model("luong")
    src, lengths = _batch()

    def log_prob(ids):
        tgt_in = torch.cat([torch.full((3, 1), BOS), ids[:, :-1]], dim=1)
        logp = torch.log_softmax(model(src, lengths, tgt_in), dim=-1).gather(2, ids[:, :, None])[:, :, 0]
        return (logp * (ids != PAD)).sum(dim=1)

    with torch.no_grad():
        greedy, _ = model.greedy(src, lengths, 6)
        beam, _ = model.beam_search(src, lengths, 6, beam=8, length_penalty=0.0)  # raw log-probability
        assert torch.all(log_prob(beam) >= log_prob(greedy) - 1e-5)


def test_teacher_forcing_paths_agree():
    """The fused whole-sequence path and the step loop compute the same logits."""
    model = _model("luong")
    src, lengths = _batch()
    tgt_in = torch.randint(4, VOCAB, (3, 4))
    fused = model(src, lengths, tgt_in)
    stepped = model(src, lengths, tgt_in, sampling_rate=1e-9)  # takes the step loop, samples ~never
    torch.testing.assert_close(fused, stepped, rtol=1e-4, atol=1e-5)


def test_config_validation_and_round_trip():
    config = Seq2SeqConfig(src_vocab_size=5, tgt_vocab_size=6, attention="bahdanau", cell="gru")
    assert Seq2SeqConfig.from_dict(config.to_dict()) == config
    with pytest.raises(RnnkitError, match="attention must be one of"):
        Seq2SeqConfig(src_vocab_size=5, tgt_vocab_size=5, attention="dot")
    with pytest.raises(RnnkitError, match="even hidden_size"):
        Seq2SeqConfig(src_vocab_size=5, tgt_vocab_size=5, hidden_size=7)
    with pytest.raises(RnnkitError, match="beam must be a positive integer"):
        _model().beam_search(*_batch(), 5, beam=0)


@pytest.mark.slow
@pytest.mark.parametrize("attention", ["luong", "bahdanau"])
def test_tiny_model_learns_to_reverse_sequences(attention):
    torch.manual_seed(0)
    n, length = 3000, 5
    lengths = torch.randint(2, length + 1, (n,))
    src = torch.randint(4, VOCAB, (n, length))
    src[torch.arange(length)[None, :] >= lengths[:, None]] = PAD
    targets = torch.full((n, length + 2), PAD)
    for i in range(n):
        sequence = src[i, : lengths[i]].flip(0)
        targets[i, : lengths[i] + 2] = torch.cat([torch.tensor([BOS]), sequence, torch.tensor([EOS])])
    tgt_in, tgt_out = targets[:, :-1], targets[:, 1:]
    model = Seq2Seq(Seq2SeqConfig(src_vocab_size=VOCAB, tgt_vocab_size=VOCAB, embedding_size=16, hidden_size=64,
                                  attention=attention, dropout=0.0))

    def loss_fn(model, batch, state):
        s, l, ti, to = batch
        keep = to != PAD
        return torch.nn.functional.cross_entropy(model(s, l, ti, keep=keep), to[keep]), None

    fit(model, loss_fn, (src[200:], lengths[200:], tgt_in[200:], tgt_out[200:]), None,  # first 200 held out
        TrainConfig(epochs=8, batch_size=64, lr=1e-2, progress=False))
    model.eval()
    test_src, test_lengths = src[:200], lengths[:200]
    ids, _ = model.greedy(test_src, test_lengths, max_length=length + 1)
    expected = tgt_out[:200, : ids.size(1)]
    exact = (ids == expected).all(dim=1).float().mean().item()
    assert exact > 0.9, f"only {exact:.0%} of sequences reversed exactly"
