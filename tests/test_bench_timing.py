"""The benchmarks' shared training step: what it computes, not how fast.

Checked against facts that do not repeat its code: a layer whose output *is* a parameter reveals
the upstream gradient (SGD moves that parameter by exactly -lr times it); the gradient of an
LSTM's parameters for that upstream comes from ``torch.autograd.grad`` on a twin; Adam's first
update is -lr * g / (|g| + eps) whatever the gradient's scale.
"""

import sys
from pathlib import Path

import pytest
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))  # benchmarks/common/, by path
from common.timing import training_step  # noqa: E402

LR = 1e-3  # the documented default: SGD at lr 1e-3


class _Echo(nn.Module):
    """A layer whose outputs are its own parameter: d outputs / d weight is the identity."""

    def __init__(self, weight: torch.Tensor) -> None:
        super().__init__()
        self.weight = nn.Parameter(weight.clone())

    def forward(self, x):
        return self.weight * 1.0, None


def _upstream(shape, loss="upstream") -> tuple[torch.Tensor, torch.Tensor]:
    """The gradient that ``training_step`` backpropagates into outputs of ``shape`` (read off the
    echo layer's SGD update), and the outputs it was taken at."""
    echo = _Echo(torch.randn(shape) if loss == "mse" else torch.zeros(shape))  # zeros: the update read exactly
    before = echo.weight.detach().clone()
    training_step(echo, torch.zeros(1), loss=loss)()
    return (before - echo.weight.detach()) / LR, before


def test_the_upstream_gradient_is_fixed_seeded_and_sized_like_a_mean_loss():
    shape = (2, 5, 4)
    torch.manual_seed(1)
    g, _ = _upstream(shape)
    torch.manual_seed(2)  # the global RNG does not matter: the step seeds its own generator
    again, _ = _upstream(shape)
    torch.testing.assert_close(g, again, rtol=0, atol=1e-6)
    n = g.numel()
    assert g.std() * n == pytest.approx(1, rel=0.5)  # random normal / numel: a mean loss's scale
    assert (g > 0).any() and (g < 0).any() and g.unique().numel() > n // 2  # not a constant


def test_the_upstream_gradient_is_the_same_at_every_call():
    echo = _Echo(torch.zeros(3, 4, 2))
    step = training_step(echo, torch.zeros(1))
    moves = []
    for _ in range(3):
        before = echo.weight.detach().clone()
        step()
        moves.append(before - echo.weight.detach())
    for move in moves[1:]:  # gradients zeroed between calls: no accumulation, no fresh draw
        torch.testing.assert_close(move, moves[0], rtol=0, atol=1e-9)


def test_mse_starts_from_the_gradient_of_the_mean_square():
    g, outputs = _upstream((2, 5, 4), loss="mse")
    torch.testing.assert_close(g, 2 * outputs / outputs.numel(), rtol=1e-3, atol=1e-8)  # d mean(o^2) / do


@pytest.mark.parametrize("loss", ["upstream", "mse"])
def test_an_sgd_step_moves_an_lstm_by_minus_lr_times_its_gradient(loss):
    torch.manual_seed(0)
    x = torch.randn(2, 5, 3)
    model = nn.LSTM(3, 4, batch_first=True)
    twin = nn.LSTM(3, 4, batch_first=True)  # built apart; given the model's weights before each step
    step = training_step(model, x, loss=loss)
    for _ in range(2):
        twin.load_state_dict(model.state_dict())
        outputs, _ = twin(x)
        upstream = _upstream(tuple(outputs.shape))[0] if loss == "upstream" else 2 * outputs / outputs.numel()
        grads = torch.autograd.grad(outputs, list(twin.parameters()), grad_outputs=upstream)
        step()
        for p, q, g in zip(model.parameters(), twin.parameters(), grads):
            assert g.abs().max() > 0
            torch.testing.assert_close(p.detach(), q.detach() - LR * g, rtol=0, atol=1e-7)


def test_the_optimizer_it_is_given_takes_the_step():
    torch.manual_seed(0)
    x = torch.randn(2, 5, 3)
    model = nn.LSTM(3, 4, batch_first=True)
    twin = nn.LSTM(3, 4, batch_first=True)
    twin.load_state_dict(model.state_dict())
    made = []

    def adam(params):
        made.append(torch.optim.Adam(params, lr=1e-2))
        return made[-1]

    step = training_step(model, x, optimizer=adam)
    outputs, _ = twin(x)
    grads = torch.autograd.grad(outputs, list(twin.parameters()), grad_outputs=_upstream(tuple(outputs.shape))[0])
    step()
    assert len(made) == 1 and made[0].param_groups[0]["params"] == list(model.parameters())
    for p, q, g in zip(model.parameters(), twin.parameters(), grads):  # Adam's first step: -lr * g / (|g| + eps)
        torch.testing.assert_close(p.detach(), q.detach() - 1e-2 * g / (g.abs() + 1e-8), rtol=0, atol=1e-4)


class _Projection(nn.Module):
    """A layer with the recurrent layers' interface whose outputs autocast makes bfloat16."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(3, 4)
        self.dtypes: list[torch.dtype] = []

    def forward(self, x):
        outputs = self.linear(x)
        self.dtypes.append(outputs.dtype)
        return outputs, None


def test_training_step_under_bf16_autocast_backpropagates_bfloat16_outputs():
    model = _Projection()
    before = model.linear.weight.detach().clone()
    training_step(model, torch.randn(2, 5, 3), bf16=True)()
    assert model.dtypes == [torch.bfloat16]
    assert model.linear.weight.dtype == torch.float32 and not torch.equal(model.linear.weight, before)
