"""The recipe in rnnkit.tasks' docstring, followed in this file alone: a small task defined here
gets training, checkpoints, save, ``rnnkit.load``, ``rnnkit info``, ``rnnkit predict`` and a
``train`` command with the shared options, without a line anywhere else in rnnkit."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import json
import pytest
import torch
import typer
from torch import Tensor, nn
from typer.testing import CliRunner

import rnnkit
from rnnkit.cli import app, create_app
from rnnkit.cli.options import TrainingOptions, training_options
from rnnkit.errors import RnnkitError
from rnnkit.tasks.base import Task, TaskConfig
from rnnkit.topologies import ManyToOne


# ---------------------------------------------------------------------- the task: count the ones

@dataclass(frozen=True, kw_only=True)
class OnesCounterConfig(TaskConfig):
    """Counts the ones in a bit string: a many-to-one regression the size of a unit test."""

    KIND = "ones counter"

    hidden_size: int = 16
    lr: float = 1e-2     # a tiny model on an easy target learns faster than the shared default


class OnesCounter(Task):
    """An LSTM reads bits one by one and says how many were ones."""

    name = "ones"
    model_type = "test_ones_counter"
    config_class = OnesCounterConfig
    request_schema = {"type": "object", "required": ["bits"], "additionalProperties": False, "properties": {
        "bits": {"type": "array", "minItems": 1, "items": {"type": "array", "minItems": 1,
                                                           "items": {"type": "integer", "enum": [0, 1]}}}}}
    response_schema = {"type": "object", "properties": {"counts": {"type": "array", "items": {"type": "number"}}}}

    def _fit(self, bits: Tensor) -> None:
        torch.manual_seed(self.config.seed)
        self.model = self.build_model()
        inputs, targets = bits.float().unsqueeze(-1), bits.float().sum(1, keepdim=True)
        cut = len(bits) * 4 // 5

        def loss_fn(model: nn.Module, batch: tuple[Tensor, Tensor], state: Any) -> tuple[Tensor, None]:
            x, y = batch
            return nn.functional.mse_loss(model(x), y), None

        self.train(self.model, loss_fn, (inputs[:cut], targets[:cut]), (inputs[cut:], targets[cut:]))
        self.metrics = self.training_summary()

    def build_model(self) -> nn.Module:
        return ManyToOne(1, 1, self.config.hidden_size)

    def predict_json(self, request: dict[str, Any]) -> dict[str, Any]:
        with torch.no_grad():
            counts = [self.model(torch.tensor(b, dtype=torch.float32).view(1, -1, 1)).item()
                      for b in request["bits"]]
        return {"counts": counts}


# ---------------------------------------------------------------------- its train command

ones_app = create_app("Count ones.")


@ones_app.command()
@training_options(minutes=1.0)
def train(out: Annotated[Path, typer.Option()], training: TrainingOptions,
          hidden_size: Annotated[int, typer.Option()] = 16) -> None:
    bits = torch.randint(0, 2, (640, 12), generator=torch.Generator().manual_seed(0))
    config = OnesCounterConfig(hidden_size=hidden_size, **training.config_fields())
    OnesCounter(config).fit(bits, **training.fit_options()).save(out)


app.add_typer(ones_app, name="ones")  # the one registration line


# ---------------------------------------------------------------------- what it gets

runner = CliRunner()


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ones") / "ones.rnnkit"
    result = runner.invoke(app, ["ones", "train", "--out", str(out), "--epochs", "60", "--no-progress"])
    assert result.exit_code == 0, result.output
    return out


def test_it_trains_saves_and_loads_through_rnnkit_load(bundle):
    counter = rnnkit.load(bundle)
    assert isinstance(counter, OnesCounter) and counter.config.epochs == 60
    answer = counter.predict_checked({"bits": [[1, 1, 1, 0, 1, 0, 0, 1, 1, 0, 1, 1],
                                               [0, 1, 0, 0, 1, 0, 0, 0, 1, 0, 0, 0]]})["counts"]
    assert answer == pytest.approx([8, 3], abs=0.75)  # it learned to count; an untrained net says ~0 for both
    assert counter.metrics["steps"] > 0


def test_info_shows_its_contract(bundle):
    result = runner.invoke(app, ["info", str(bundle)], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "test_ones_counter" in result.output and "bits: array of array (required)" in result.output


def test_predict_answers_json_and_refuses_a_bad_request(bundle):
    result = runner.invoke(app, ["predict", str(bundle), '{"bits": [[1, 0, 1, 0, 0, 1, 1, 0, 0, 0, 0, 1]]}'])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["counts"][0] == pytest.approx(5, abs=0.75)
    bad = runner.invoke(app, ["predict", str(bundle), '{"bits": [[2]]}'])
    assert bad.exit_code == 2 and bad.stderr.strip() == "error: request.bits[0][0] must be one of 0, 1, got 2"
    with pytest.raises(RnnkitError, match="does not stream"):
        rnnkit.load(bundle).stream_checked({"bits": [[1]]})


def test_its_train_command_has_the_shared_options():
    result = runner.invoke(app, ["ones", "train", "--help"])
    for option in ("--minutes", "--max-steps", "--epochs", "--seed", "--precision", "--no-progress",
                   "--checkpoint-dir", "--resume"):
        assert option in result.output, option
