"""Model bundles: round trips, tied weights, atomic saves, and every bad bundle refused in one line."""

from __future__ import annotations

import json
import os
import pickle
import zipfile
from pathlib import Path

import pytest
import torch
from torch import nn

import rnnkit
from rnnkit import bundle as bundle_module
from rnnkit.tasks import BUILTIN
from rnnkit.bundle import (FORMAT_VERSION, Bundle, load, load_weights, read_bundle, register,
                           save_bundle, weight_shapes)
from rnnkit.cells import LSTM
from rnnkit.errors import BundleError, RnnkitError


class Tagger(nn.Module):
    """A small model with tied weights: embedding and output projection share one matrix."""

    def __init__(self, vocab: int = 7, hidden: int = 8) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, hidden)
        self.lstm = LSTM(hidden, hidden)
        self.out = nn.Linear(hidden, vocab)
        self.out.weight = self.embed.weight  # tied

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        outputs, _ = self.lstm(self.embed(tokens))
        return self.out(outputs)


class Regressor(nn.Module):
    """LSTM(3, 8) and a linear head, the brief's small model."""

    def __init__(self, head: int = 2) -> None:
        super().__init__()
        self.lstm = LSTM(3, 8)
        self.head = nn.Linear(8, head)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outputs, _ = self.lstm(x)
        return self.head(outputs[:, -1])


def _evil_pickle(marker: Path) -> bytes:
    """A pickle whose unpickling would create ``marker``: proof of code execution if it exists."""

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    return pickle.dumps(Evil(), protocol=4)


def _snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): (p.read_bytes() if p.is_file() else b"<dir>")
            for p in sorted(root.rglob("*"))}


@pytest.fixture
def saved(tmp_path: Path) -> tuple[Path, Regressor]:
    torch.manual_seed(0)
    model = Regressor()
    path = save_bundle(tmp_path / "model.rnnkit", model_type="regressor", config={"head": 2},
                       model=model, preprocessing={"scaler": {"mean": [0.5]}}, metrics={"mae": 1.5})
    return path, model


def test_round_trip_gives_identical_predictions(saved: tuple[Path, Regressor]) -> None:
    path, model = saved
    assert sorted(p.name for p in path.iterdir()) == [
        "config.json", "metrics.json", "preprocessing.json", "weights.safetensors"]
    header = json.loads((path / "config.json").read_text())
    assert header == {"format": "rnnkit-bundle", "format_version": 1, "model_type": "regressor",
                      "rnnkit_version": rnnkit.__version__, "config": {"head": 2}}
    bundle = read_bundle(path)
    assert (bundle.model_type, bundle.config, bundle.format_version) == ("regressor", {"head": 2}, 1)
    assert bundle.preprocessing == {"scaler": {"mean": [0.5]}} and bundle.metrics == {"mae": 1.5}
    assert bundle.rnnkit_version == rnnkit.__version__

    torch.manual_seed(1)
    fresh = Regressor(**bundle.config)
    x = torch.randn(4, 5, 3)
    assert not torch.equal(fresh(x), model(x))
    assert load_weights(fresh, bundle) == ([], [])
    assert torch.equal(fresh(x), model(x))


def test_tied_weights_survive(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = Tagger()
    path = save_bundle(tmp_path / "tagger", model_type="tagger", config={}, model=model)
    assert len(weight_shapes(path)) == len(model.state_dict()) - 1  # the tied matrix, stored once
    torch.manual_seed(1)
    fresh = Tagger()
    assert load_weights(fresh, path) == ([], [])
    assert fresh.out.weight is fresh.embed.weight
    tokens = torch.randint(0, 7, (2, 6))
    assert torch.equal(fresh(tokens), model(tokens))


def test_save_replaces_a_bundle_atomically(saved: tuple[Path, Regressor], monkeypatch) -> None:
    path, _ = saved
    save_bundle(path, model_type="regressor", config={"head": 2}, model=Regressor(),
                metrics={"mae": 0.5})
    assert read_bundle(path).metrics == {"mae": 0.5}
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temporary left behind

    before = _snapshot(path)

    def crash(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(bundle_module, "save_model", crash)  # dies halfway through the write
    with pytest.raises(OSError, match="disk full"):
        save_bundle(path, model_type="regressor", config={"head": 2}, model=Regressor())
    assert _snapshot(path) == before
    assert [p.name for p in path.parent.iterdir()] == [path.name]


def test_save_refuses_to_clobber(tmp_path: Path) -> None:
    file = tmp_path / "notes.txt"
    file.write_text("keep me")
    with pytest.raises(BundleError, match="it is an existing file and a bundle is a directory"):
        save_bundle(file, model_type="regressor", config={}, model=Regressor())
    assert file.read_text() == "keep me"

    folder = tmp_path / "project"
    folder.mkdir()
    (folder / "thesis.tex").write_text("years of work")
    with pytest.raises(BundleError, match="non-empty directory that is not an rnnkit bundle"):
        save_bundle(folder, model_type="regressor", config={}, model=Regressor())
    assert _snapshot(folder) == {"thesis.tex": b"years of work"}

    empty = tmp_path / "empty"
    empty.mkdir()
    assert read_bundle(save_bundle(empty, model_type="r", config={}, model=Regressor())).model_type == "r"


def test_save_refuses_config_that_is_not_json_and_writes_nothing(tmp_path: Path) -> None:
    with pytest.raises(BundleError, match=r"config must be a JSON-serialisable dict: .*\.tolist\(\)"):
        save_bundle(tmp_path / "m", model_type="r", config={"x": torch.zeros(2)}, model=Regressor())
    with pytest.raises(BundleError, match="metrics must be a JSON-serialisable dict"):
        save_bundle(tmp_path / "m", model_type="r", config={}, model=Regressor(), metrics=[1])
    assert list(tmp_path.iterdir()) == []


def _write(path: Path, name: str, content: object) -> None:
    data = content if isinstance(content, bytes) else json.dumps(content).encode()
    (path / name).write_bytes(data)


def _header(**changes: object) -> dict:
    header = {"format": "rnnkit-bundle", "format_version": 1, "model_type": "regressor",
              "rnnkit_version": "0.1.0", "config": {}}
    return {**header, **changes}


# Each case breaks a good bundle (or replaces it) and names what the error must say.
BAD_BUNDLES = {
    "missing path": (lambda p: p.rename(p.with_name("moved")), "the path does not exist"),
    "a bare safetensors file": (
        lambda p: (p.rename(p.with_name("moved")), (p.with_name("moved") / "weights.safetensors").rename(p)),
        "is a bare safetensors file, not an rnnkit bundle"),
    "missing config.json": (lambda p: (p / "config.json").unlink(), "it has no config.json"),
    "config.json not JSON": (lambda p: _write(p, "config.json", b"{oops"), "config.json is not valid JSON"),
    "config.json a list": (lambda p: _write(p, "config.json", [1]), "expected a JSON object, got list"),
    "not an rnnkit bundle": (lambda p: _write(p, "config.json", {"architectures": ["Bert"]}),
                             "is not an rnnkit bundle config: expected \"format\": \"rnnkit-bundle\""),
    "format_version newer": (lambda p: _write(p, "config.json", _header(format_version=99)),
                             f"format_version 99, newer than the {FORMAT_VERSION} this rnnkit"),
    "format_version junk": (lambda p: _write(p, "config.json", _header(format_version="1")),
                            "format_version '1', expected a positive integer"),
    "config missing": (lambda p: _write(p, "config.json", _header(config=None)),
                       "needs a string \"model_type\" and an object \"config\""),
    "missing weights": (lambda p: (p / "weights.safetensors").unlink(), "has no weights.safetensors"),
    "truncated weights": (
        lambda p: _write(p, "weights.safetensors", (p / "weights.safetensors").read_bytes()[:200]),
        "weights.safetensors in .* is truncated or corrupt: .*; re-save the model"),
    "empty weights": (lambda p: _write(p, "weights.safetensors", b""), "is truncated or corrupt"),
    "corrupt metrics": (lambda p: _write(p, "metrics.json", b"\xff\xfe"), "metrics.json is not valid JSON"),
}


@pytest.mark.parametrize("case", list(BAD_BUNDLES))
def test_bad_bundle_is_refused_in_one_line(saved: tuple[Path, Regressor], case: str) -> None:
    path, _ = saved
    damage, message = BAD_BUNDLES[case]
    damage(path)
    before = _snapshot(path.parent)
    for read in (read_bundle, load, lambda p: load_weights(Regressor(), p)):
        with pytest.raises(BundleError, match=message) as info:
            read(path)
        assert "\n" not in str(info.value) and str(path) in str(info.value)
    assert _snapshot(path.parent) == before  # reading writes nothing


def test_truncated_weights_in_an_already_read_bundle(saved: tuple[Path, Regressor]) -> None:
    path, _ = saved
    bundle = read_bundle(path)
    weights = path / "weights.safetensors"
    weights.write_bytes(weights.read_bytes()[:-10])
    with pytest.raises(BundleError, match=r"weights.safetensors in .* is truncated or corrupt"):
        load_weights(Regressor(), bundle)


def test_missing_sidecars_default_to_empty(saved: tuple[Path, Regressor]) -> None:
    path, _ = saved
    (path / "metrics.json").unlink()
    (path / "preprocessing.json").unlink()
    bundle = read_bundle(path)
    assert bundle.metrics == {} and bundle.preprocessing == {}


@pytest.fixture
def no_unpickling(monkeypatch) -> None:
    def refuse(*args, **kwargs):
        raise AssertionError("rnnkit tried to unpickle a file")

    for module, name in ((pickle, "load"), (pickle, "loads"), (pickle, "Unpickler"), (torch, "load")):
        monkeypatch.setattr(module, name, refuse)


def test_the_evil_pickle_is_real(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    pickle.loads(_evil_pickle(marker))  # what torch.load(weights_only=False) would do
    assert marker.exists()


@pytest.mark.parametrize("container", ["pickle", "zip"])
def test_pickle_is_never_unpickled(tmp_path: Path, container: str, no_unpickling) -> None:
    marker = tmp_path / "pwned"
    payload = _evil_pickle(marker)
    path = tmp_path / "model.pt"
    if container == "pickle":
        path.write_bytes(payload)
    else:  # the layout torch.save writes: a pickle inside a zip
        with zipfile.ZipFile(path, "w") as archive:
            archive.writestr("model/data.pkl", payload)
    before = _snapshot(tmp_path)
    for read in (read_bundle, load, rnnkit.load, lambda p: load_weights(Regressor(), p)):
        with pytest.raises(BundleError, match=f"is a {container}.*never unpickles them") as info:
            read(path)
        assert "\n" not in str(info.value)
    assert not marker.exists()
    assert _snapshot(tmp_path) == before


def test_strict_load_names_missing_and_unexpected_keys_and_leaves_model_untouched(
        saved: tuple[Path, Regressor]) -> None:
    path, _ = saved

    class Other(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lstm = LSTM(3, 8)
            self.decoder = nn.Linear(8, 2)

    other = Other()
    before = {k: v.clone() for k, v in other.state_dict().items()}
    with pytest.raises(BundleError, match=r"missing decoder.bias, decoder.weight; unexpected "
                                          r"head.bias, head.weight; .*strict=False"):
        load_weights(other, path)
    assert all(torch.equal(before[k], v) for k, v in other.state_dict().items())

    missing, unexpected = load_weights(other, path, strict=False)
    assert (missing, unexpected) == (["decoder.bias", "decoder.weight"], ["head.bias", "head.weight"])
    assert torch.equal(other.lstm.weight_ih, read_weights(path)["lstm.weight_ih"])


def read_weights(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(path / "weights.safetensors"))


def test_shape_mismatch_is_named(saved: tuple[Path, Regressor]) -> None:
    path, _ = saved
    with pytest.raises(BundleError, match=r"head.weight is \(2, 8\) in the file but \(5, 8\) in the model"):
        load_weights(Regressor(head=5), path)


@pytest.fixture
def registry(monkeypatch) -> dict:
    for model_type in BUILTIN:  # real tasks register into the real registry first
        bundle_module._import_task_loader(model_type)
    loaders = dict(bundle_module._LOADERS)
    monkeypatch.setattr(bundle_module, "_LOADERS", loaders)
    return loaders


def test_load_dispatches_by_model_type(saved: tuple[Path, Regressor], registry: dict) -> None:
    path, model = saved

    @register("regressor")
    def load_regressor(bundle: Bundle) -> Regressor:
        regressor = Regressor(**bundle.config)
        load_weights(regressor, bundle)
        return regressor

    x = torch.randn(2, 4, 3)
    assert rnnkit.load is load
    assert torch.equal(rnnkit.load(path)(x), model(x))
    register("regressor")(load_regressor)  # the same loader again (a reload) is fine
    with pytest.raises(RnnkitError, match="'regressor' is taken by .*load_regressor"):
        register("regressor")(lambda bundle: None)


def test_register_a_classmethod_or_a_class(saved: tuple[Path, Regressor], registry: dict) -> None:
    path, _ = saved

    class Wrapped:
        def __init__(self, bundle: Bundle) -> None:
            self.bundle = bundle

        @register("regressor")
        @classmethod
        def from_bundle(cls, bundle: Bundle) -> "Wrapped":
            return cls(bundle)

    assert isinstance(load(path), Wrapped) and load(path).bundle.config == {"head": 2}
    assert isinstance(Wrapped.__dict__["from_bundle"], classmethod)

    @register("other")
    class Plain:
        @classmethod
        def from_bundle(cls, bundle: Bundle) -> str:
            return "plain"

    save_bundle(path, model_type="other", config={}, model=Regressor())
    assert load(path) == "plain"


def test_unknown_model_type_lists_known_ones(saved: tuple[Path, Regressor], registry: dict) -> None:
    path, _ = saved
    register("known-one")(lambda bundle: None)
    with pytest.raises(BundleError, match=r"holds a 'regressor' model, which no loader is registered "
                                          r"for \(known: .*known-one.*\); upgrade rnnkit"):
        load(path)
