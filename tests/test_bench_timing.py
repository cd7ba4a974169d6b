"""The benchmarks' shared training step: what it computes, not how fast."""

import pytest
import torch
from torch import nn

from rnnkit.bench.timing import training_step


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.LSTM(3, 4, batch_first=True)


@pytest.mark.parametrize("loss", ["upstream", "mse"])
def test_training_step_applies_the_gradient_of_its_loss(loss):
    """One step moves every parameter by -lr times the gradient of the stated loss: the mean
    square of the outputs, or a fixed upstream gradient, the same at every step."""
    x = torch.randn(2, 5, 3)
    model, twin = _model(), _model()
    step = training_step(model, x, loss=loss)
    for _ in range(2):
        outputs, _ = twin(x)
        if loss == "mse":
            outputs.square().mean().backward()
        else:
            seed = torch.Generator().manual_seed(0)
            outputs.backward(torch.randn(outputs.shape, generator=seed) / outputs.numel())
        with torch.no_grad():
            for p in twin.parameters():
                p -= 1e-3 * p.grad
                p.grad = None
        before = [p.detach().clone() for p in model.parameters()]
        step()
        assert all(not torch.equal(a, p) for a, p in zip(before, model.parameters()))
        for p, q in zip(model.parameters(), twin.parameters()):
            torch.testing.assert_close(p, q, rtol=0, atol=1e-7)


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


def test_training_step_updates_with_the_optimizer_it_is_given():
    x = torch.randn(2, 5, 3)
    model, twin = _model(), _model()
    step = training_step(model, x, loss="mse", optimizer=lambda params: torch.optim.Adam(params, lr=1e-2))
    twin_opt = torch.optim.Adam(twin.parameters(), lr=1e-2)
    for _ in range(3):
        step()
        twin_opt.zero_grad()
        twin(x)[0].square().mean().backward()
        twin_opt.step()
    for p, q in zip(model.parameters(), twin.parameters()):
        torch.testing.assert_close(p, q)
    assert not torch.equal(next(model.parameters()), next(_model().parameters()))
