"""Model bundles: directories of config.json, weights.safetensors, preprocessing.json, metrics.json.

Never a pickle: unpickling runs arbitrary code and breaks when classes move (darts 1424,
neuralforecast 855). Tied weights are stored once; saves are atomic (a temporary directory
renamed into place: :func:`rnnkit.files.atomic_directory`); tasks ``@register`` a loader per
``model_type`` for ``rnnkit.load``.
"""

from __future__ import annotations

import importlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, TypeVar, Union

from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_model
from torch import nn

from .errors import BundleError, RnnkitError
from .files import atomic_directory
from .version import __version__

FORMAT = "rnnkit-bundle"
FORMAT_VERSION = 1  # the newest bundle layout this rnnkit writes and reads
CONFIG_FILE, WEIGHTS_FILE = "config.json", "weights.safetensors"
PREPROCESSING_FILE, METRICS_FILE = "preprocessing.json", "metrics.json"
_RESAVE = "the bundle is damaged: re-save the model"

PathLike = Union[str, "os.PathLike[str]"]
Loader = Callable[["Bundle"], Any]
T = TypeVar("T")


@dataclass(frozen=True)
class Bundle:
    """A bundle read from disk and validated, weights not loaded: ``model_type`` picks the
    loader; ``config``, ``preprocessing``, ``metrics`` are the saved JSON (``{}`` if absent)."""

    path: Path
    model_type: str
    config: dict[str, Any]
    preprocessing: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    format_version: int = FORMAT_VERSION
    rnnkit_version: str = "unknown"


def save_bundle(path: PathLike, *, model_type: str, config: dict[str, Any], model: nn.Module,
                preprocessing: Optional[dict[str, Any]] = None,
                metrics: Optional[dict[str, Any]] = None) -> Path:
    """Save ``model`` and its JSON-able state as a bundle directory at ``path``, atomically.

    A bundle or an empty directory at ``path`` is replaced; a file, or a non-empty directory
    that is not a bundle, is refused, so a typo never deletes data. Returns the path."""
    target = Path(path)
    if not isinstance(model_type, str) or not model_type:
        raise BundleError(f"model_type must be a non-empty string, got {model_type!r}")
    header = {"format": FORMAT, "format_version": FORMAT_VERSION, "model_type": model_type,
              "rnnkit_version": __version__}
    # Serialise first: a config that is not JSON must fail before anything touches disk.
    texts = {CONFIG_FILE: _to_json(config, "config", header),
             PREPROCESSING_FILE: _to_json(preprocessing, "preprocessing"),
             METRICS_FILE: _to_json(metrics, "metrics")}
    _check_replaceable(target)
    with atomic_directory(target) as tmp:
        for name, text in texts.items():
            (tmp / name).write_text(text, encoding="utf-8")
        save_model(model, str(tmp / WEIGHTS_FILE), metadata={"format": "pt"}, force_contiguous=True)
    return target


def read_bundle(path: PathLike) -> Bundle:
    """Read and validate the bundle at ``path``: its JSON files and its weights' header.

    Raises ``BundleError``, one line naming the path, what is wrong and the fix."""
    root = Path(path)
    if not root.exists():
        raise BundleError(f"no model bundle at {root}: the path does not exist; check the path, "
                          "or train a model and save it there first")
    if not root.is_dir():
        raise BundleError(_not_a_bundle_file(root))
    config_path = root / CONFIG_FILE
    if not config_path.is_file():
        raise BundleError(f"{root} is not an rnnkit bundle: it has no {CONFIG_FILE}; pass the "
                          "directory written by a model's save() or an `rnnkit ... train` command")
    header = _read_json(config_path)
    if header.get("format") != FORMAT:
        raise BundleError(f"{config_path} is not an rnnkit bundle config: expected \"format\": "
                          f"\"{FORMAT}\", got {header.get('format')!r}; pass a bundle rnnkit wrote")
    version = header.get("format_version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise BundleError(f"{config_path} has format_version {version!r}, expected a positive "
                          f"integer; {_RESAVE}")
    if version > FORMAT_VERSION:
        raise BundleError(f"{root} has bundle format_version {version}, newer than the "
                          f"{FORMAT_VERSION} this rnnkit {__version__} reads; upgrade rnnkit")
    model_type, config = header.get("model_type"), header.get("config")
    if not isinstance(model_type, str) or not model_type or not isinstance(config, dict):
        raise BundleError(f"{config_path} needs a string \"model_type\" and an object \"config\", "
                          f"got {model_type!r} and {type(config).__name__}; {_RESAVE}")
    weight_shapes(root)  # the header only: a truncated file fails now, before a model is built
    return Bundle(path=root, model_type=model_type, config=config,
                  preprocessing=_read_json(root / PREPROCESSING_FILE, optional=True),
                  metrics=_read_json(root / METRICS_FILE, optional=True), format_version=version,
                  rnnkit_version=str(header.get("rnnkit_version", "unknown")))


def weight_shapes(path_or_bundle: Union[PathLike, Bundle]) -> dict[str, tuple[int, ...]]:
    """Name → shape of every tensor in a bundle's weights, read from the header alone."""
    root = path_or_bundle.path if isinstance(path_or_bundle, Bundle) else Path(path_or_bundle)
    file = root / WEIGHTS_FILE
    if not file.is_file():
        raise BundleError(f"{root} has no {WEIGHTS_FILE}, so the bundle has no weights; re-save "
                          "the model (an interrupted copy of a bundle leaves it out)")
    try:
        with safe_open(str(file), framework="pt") as f:
            return {name: tuple(f.get_slice(name).get_shape()) for name in f.keys()}
    except SafetensorError as exc:
        raise BundleError(f"{WEIGHTS_FILE} in {root} is truncated or corrupt: {exc}; re-save the "
                          "model") from exc


def load_weights(model: nn.Module, path_or_bundle: Union[PathLike, Bundle],
                 strict: bool = True) -> tuple[list[str], list[str]]:
    """Load a bundle's weights into ``model``, built from the bundle's config.

    Tied weights, stored once, fill every name that shares them. All is checked before a
    tensor is copied, so a refused load leaves ``model`` untouched. Returns ``(missing,
    unexpected)``; raises ``BundleError`` for missing, truncated or corrupt weights,
    differing shapes and, with ``strict``, missing or unexpected names (the first few)."""
    bundle = path_or_bundle if isinstance(path_or_bundle, Bundle) else read_bundle(path_or_bundle)
    shapes = weight_shapes(bundle)  # checking the header also catches truncated data
    expected = model.state_dict()
    where = f"{WEIGHTS_FILE} in {bundle.path} does not fit {type(model).__name__}"
    # A tied tensor has several names in state_dict() but one in the file: a name counts
    # as present when any name sharing its storage is.
    groups: dict[object, list[str]] = {}
    for name, t in expected.items():
        shares = t.device.type != "meta" and t.numel() > 0  # else no real storage to share
        key = (t.device, t.untyped_storage().data_ptr(), t.storage_offset(), t.shape, t.stride())
        groups.setdefault(key if shares else name, []).append(name)
    missing = sorted(n for ns in groups.values() if not any(k in shapes for k in ns) for n in ns)
    unexpected = sorted(k for k in shapes if k not in expected)
    if strict and (missing or unexpected):
        raise BundleError(f"{where}: missing {_few(missing)}; unexpected {_few(unexpected)}; build "
                          "the model from the bundle's config.json, or pass strict=False")
    wrong = [f"{k} is {shape} in the file but {tuple(expected[k].shape)} in the model"
             for k, shape in shapes.items() if k in expected and shape != tuple(expected[k].shape)]
    if wrong:
        raise BundleError(f"{where}: {_few(wrong)}; build the model from the bundle's config.json")
    tensors = load_file(str(bundle.path / WEIGHTS_FILE), device="cpu")
    model.load_state_dict({k: t for k, t in tensors.items() if k in expected}, strict=False)
    return missing, unexpected


_LOADERS: dict[str, Loader] = {}


def register(model_type: str) -> Callable[[T], T]:
    """Register how to rebuild a ``model_type`` from a :class:`Bundle`: decorate a function
    ``(bundle) -> model``, a class with ``from_bundle``, or (above ``@classmethod``) that method."""
    if not isinstance(model_type, str) or not model_type:
        raise RnnkitError(f"register() needs a non-empty model_type string, got {model_type!r}")

    def decorate(obj: T) -> T:
        if isinstance(obj, classmethod):
            return _RegisterOnClass(model_type, obj)  # type: ignore[return-value]
        _add_loader(model_type, obj.from_bundle if isinstance(obj, type) else obj)
        return obj

    return decorate


def load(path: PathLike, model_type: Optional[str] = None) -> Any:
    """Read the bundle at ``path`` and rebuild its model with the registered loader.

    With ``model_type``, a bundle of another type is refused (a CLI command that needs one kind)."""
    bundle = read_bundle(path)
    if model_type is not None and bundle.model_type != model_type:
        raise BundleError(f"{bundle.path} holds a {bundle.model_type!r} model, not a {model_type!r} one; "
                          f"pass a {model_type} bundle")
    _import_task_loader(bundle.model_type)
    loader = _LOADERS.get(bundle.model_type)
    if loader is None:
        known = ", ".join(sorted(_LOADERS)) or "none"
        raise BundleError(f"{bundle.path} holds a {bundle.model_type!r} model, which no loader is "
                          f"registered for (known: {known}); upgrade rnnkit or import its task")
    return loader(bundle)


class _RegisterOnClass:
    """Stands in for a decorated classmethod until its class exists, then registers it bound."""

    def __init__(self, model_type: str, method: classmethod) -> None:
        self.model_type, self.method = model_type, method

    def __set_name__(self, owner: type, name: str) -> None:
        setattr(owner, name, self.method)  # the class keeps a plain classmethod
        _add_loader(self.model_type, getattr(owner, name))


def _add_loader(model_type: str, loader: Loader) -> None:
    old, new = (f"{f.__module__}.{getattr(f, '__qualname__', f)}"
                for f in (_LOADERS.get(model_type, loader), loader))
    if old != new:  # the same function registering again (a reloaded module) is fine
        raise RnnkitError(f"model_type {model_type!r} is taken by {old}; give {new} another one")
    _LOADERS[model_type] = loader


def _import_task_loader(model_type: str) -> None:
    # Tasks (a layer above) register when their module is imported; the tasks package knows which
    # module saves which model_type. Looked up by name, so that this layer imports nothing above it.
    name = f"{__package__}.tasks"
    try:
        importlib.import_module(name).import_task(model_type)
    except ModuleNotFoundError as exc:
        if exc.name != name:
            raise


def _to_json(value: Optional[dict[str, Any]], what: str, header: Optional[dict] = None) -> str:
    value = {} if value is None else value
    try:
        if not isinstance(value, dict):
            raise TypeError(f"expected a dict, got {type(value).__name__}")
        return json.dumps(value if header is None else {**header, what: value}, indent=2) + "\n"
    except (TypeError, ValueError) as exc:
        raise BundleError(f"{what} must be a JSON-serialisable dict: {exc}; use dict, list, str, "
                          "int, float, bool and None (arrays: .tolist(), paths: str())") from exc


def _read_json(file: Path, *, optional: bool = False) -> dict[str, Any]:
    if optional and not file.exists():
        return {}
    try:
        value = json.loads(file.read_bytes().decode("utf-8"))
        if not isinstance(value, dict):
            raise ValueError(f"expected a JSON object, got {type(value).__name__}")
    except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise BundleError(f"{file} is not valid JSON ({exc}); {_RESAVE}") from exc
    return value


def _not_a_bundle_file(path: Path) -> str:
    # Only the magic bytes are read, to say what the file is; nothing is ever unpickled.
    head = b""
    if path.is_file():  # not a FIFO or device, where reading could block
        with open(path, "rb") as f:
            head = f.read(16)
    if head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):
        kind = "a pickle file (pickle magic bytes 0x80; pickle.dump or a legacy torch.save)"
    elif head[:4] in (b"PK\x03\x04", b"PK\x05\x06"):
        kind = "a zip archive (zip magic bytes PK; torch.save writes a pickle inside a zip)"
    else:
        kind = "a bare safetensors file" if head[8:9] == b"{" else "a file"
    return (f"{path} is {kind}, not an rnnkit bundle: a bundle is a directory holding "
            f"{CONFIG_FILE} and {WEIGHTS_FILE}; pickle, zip and torch.save files are not bundles "
            "and rnnkit never unpickles them (unpickling can run arbitrary code); load the model "
            "where it was made and re-save it with rnnkit's save()")


def _few(items: list[str], n: int = 5) -> str:
    return ", ".join(items[:n]) + (f" (+{len(items) - n} more)" if len(items) > n else "") or "none"


def _check_replaceable(target: Path) -> None:
    if target.exists() and not target.is_dir():
        raise BundleError(f"cannot save a bundle to {target}: it is an existing file and a bundle "
                          "is a directory; choose another path or remove the file first")
    if target.is_dir() and any(target.iterdir()):
        try:
            is_bundle = _read_json(target / CONFIG_FILE).get("format") == FORMAT
        except (BundleError, OSError):
            is_bundle = False
        if not is_bundle:  # replacing it would delete someone's files
            raise BundleError(f"cannot save a bundle to {target}: it is a non-empty directory "
                              "that is not an rnnkit bundle; choose a new path or empty it first")

