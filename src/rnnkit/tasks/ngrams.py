"""The wide part of a text classifier: a linear model over a text's words and hashed word pairs.

A recurrent encoder learns slowly which single words and pairs ("not good", "can't wait")
settle a label, and overfits them when labels are few; a linear model over n-gram counts
(what TF-IDF + logistic regression is) learns exactly that in a few epochs. Added to the
recurrent classifier's logits, as in wide & deep models (Cheng et al. 2016) and fastText's
hashed bigrams (Joulin et al. 2017), each part does what it is good at, trained together.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor, nn


class NgramBag(nn.Module):
    r"""Class scores from the bag of a text's token ids and its adjacent id pairs.

    For a text of ids :math:`x_1 \dots x_n`, with one weight row :math:`w_g \in \mathbb{R}^C`
    per unigram and per hashed bigram bucket:

    .. math::
        \text{logits} = \frac{1}{\sqrt{2n - 1}} \Big( \sum_{t=1}^{n} w_{x_t}
                         + \sum_{t=1}^{n-1} w_{V + h(x_t, x_{t+1})} \Big),
        \qquad h(a, b) = (a \cdot p + b) \bmod \text{buckets}

    with :math:`V` the vocabulary size and :math:`p` a large prime. Dividing by the square root
    of the count keeps long and short texts on one scale without making one word in a long text
    worthless. Weights start at zero, so at first the classifier is its recurrent part alone.

    Args:
        vocab_size: token ids run over ``[0, vocab_size)``; id 0 is padding, masked by ``lengths``.
        buckets: rows for hashed word pairs; collisions share a row (more buckets, fewer collisions).
        num_classes: width of the output.

    Shapes: ids ``(B, T)`` and ``lengths`` ``(B,)`` (``None``: every text is ``T`` long) to ``(B, C)``.
    """

    PRIME = 1_000_003

    def __init__(self, vocab_size: int, buckets: int, num_classes: int) -> None:
        super().__init__()
        self.vocab_size, self.buckets = vocab_size, buckets
        self.weight = nn.Embedding(vocab_size + buckets, num_classes)
        nn.init.zeros_(self.weight.weight)

    def forward(self, x: Tensor, lengths: Optional[Tensor] = None) -> Tensor:
        B, T = x.shape
        n = torch.full((B,), T, device=x.device) if lengths is None else lengths.to(x.device)
        steps = torch.arange(T, device=x.device)[None, :]
        pairs = self.vocab_size + (x[:, :-1] * self.PRIME + x[:, 1:]) % self.buckets  # (B, T-1)
        ids = torch.cat([x, pairs], dim=1)  # (B, 2T-1)
        valid = torch.cat([steps < n[:, None], steps[:, :-1] < n[:, None] - 1], dim=1)  # padding out
        count = valid.sum(1, keepdim=True).clamp(min=1).to(self.weight.weight.dtype)
        return (self.weight(ids) * valid[:, :, None]).sum(1) / count.sqrt()  # (B, C)


__all__ = ["NgramBag"]
