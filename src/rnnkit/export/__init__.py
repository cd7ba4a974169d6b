"""Export a bundle's networks to ONNX, for onnxruntime and the other runtimes people deploy with.

``export_bundle(BUNDLE, OUT)`` writes a directory::

    OUT/export.json          what was exported: format, model_type, the bundle's config, the graphs
    OUT/preprocessing.json   the bundle's preprocessing state (vocabularies, classes, scalers)
    OUT/NAME.onnx            one graph per entry point (graphs.py says which, per task)
    OUT/NAME.json            its sidecar: inputs, outputs, shapes, dtypes, pre- and post-processing

Each graph is exported with the dynamo exporter (``torch.onnx.export(..., dynamo=True)``)
with the batch axis, and the time axes of sequences, dynamic (``dynamic_shapes``, not the
older ``dynamic_axes``, which the dynamo exporter only partly honours). The recurrence runs
the cells' reference equations, its time loop an ONNX ``Scan`` (``recurrent.py``), so a
graph accepts any batch size and length. Before it is kept, each graph is run by onnxruntime
on inputs of other sizes than the example it was traced with and compared with the model in
PyTorch; a mismatch stops the export.

The directory appears whole or not at all: it is written beside ``OUT`` and renamed into
place. An earlier export at ``OUT`` is replaced; any other non-empty directory is refused.
"""

from __future__ import annotations

import json
import logging
import os
import warnings
from pathlib import Path
from typing import Any, Union

from ..bundle import load, read_bundle
from ..errors import RnnkitError
from ..files import atomic_directory
from .graphs import Graph, builder_for
from .runtime import EXAMPLE, verify

FORMATS = ("onnx",)
FORMAT = "rnnkit-onnx-export"
MANIFEST = "export.json"
INSTALL = "pip install 'rnnkit[export]' (onnx, onnxscript, onnxruntime)"
PathLike = Union[str, Path]


def export_bundle(bundle: PathLike, out: PathLike, *, format: str = "onnx") -> Path:
    """Export the model of ``bundle`` to ``format`` files in the directory ``out``; returns ``out``."""
    if format not in FORMATS:
        raise RnnkitError(f"unknown export format {format!r}; choose one of: {', '.join(FORMATS)}")
    read = read_bundle(bundle)
    build = builder_for(read.model_type)
    target = Path(out)
    check_out_dir(target)
    require_onnx()
    graphs = build(load(read.path), read.preprocessing)
    with atomic_directory(target) as tmp:
        umask = os.umask(0)
        os.umask(umask)
        tmp.chmod(0o777 & ~umask)  # mkdtemp makes 0700; an export is for everyone, as mkdir makes it
        for graph in graphs:
            write_graph(graph, tmp)
        manifest = {"format": FORMAT, "format_version": 1, "model_type": read.model_type,
                    "config": read.config,
                    "graphs": [g.name for g in graphs], "preprocessing": "preprocessing.json"}
        _write_json(tmp / "preprocessing.json", read.preprocessing)
        _write_json(tmp / MANIFEST, manifest)
    return target


def write_graph(graph: Graph, directory: Path) -> None:
    """Export ``graph`` to ``NAME.onnx``, check it in onnxruntime, and write its sidecar ``NAME.json``."""
    import torch

    path = directory / f"{graph.name}.onnx"
    axes = {port.name: {i: size for i, size in enumerate(port.shape) if isinstance(size, str)}
            for port in graph.inputs}
    dims = {name: torch.export.Dim(name) for name in {a for per in axes.values() for a in per.values()}}
    dynamic = tuple(  # one entry: Call.forward takes *inputs
        {i: dims[a] for i, a in axes[p.name].items()} or None for p in graph.inputs)
    with warnings.catch_warnings(), _quiet("torch.onnx"), torch.no_grad():
        warnings.simplefilter("ignore")  # the exporter's notes on its own internals
        program = torch.onnx.export(graph.module, graph.make_example(*EXAMPLE), dynamo=True, dynamic_shapes=(dynamic,),
                                    input_names=[p.name for p in graph.inputs],
                                    output_names=[p.name for p in graph.outputs], verbose=False)
        program.save(str(path))
    checked = verify(graph, path)
    _write_json(directory / f"{graph.name}.json", {**graph.sidecar(), "verified": checked})


def check_out_dir(target: Path) -> None:
    """Refuse an ``out`` that is a file, or a non-empty directory that is not an earlier export."""
    if target.exists() and not target.is_dir():
        raise RnnkitError(f"cannot export to {target}: it is an existing file; choose a directory path")
    if target.is_dir() and any(target.iterdir()):
        try:
            ours = json.loads((target / MANIFEST).read_text(encoding="utf-8")).get("format") == FORMAT
        except (OSError, ValueError, AttributeError):
            ours = False
        if not ours:
            raise RnnkitError(f"cannot export to {target}: it is a non-empty directory that is not an rnnkit "
                              "export; choose a new --out or empty it first")


def require_onnx() -> None:
    """Raise the one-line install hint when the exporter's packages are missing."""
    import importlib.util

    missing = [m for m in ("onnx", "onnxscript", "onnxruntime") if importlib.util.find_spec(m) is None]
    if missing:
        raise RnnkitError(f"ONNX export needs {', '.join(missing)}, not installed; {INSTALL}")


class _quiet:
    """Raise a logger's level for a block: the exporter logs each translation step."""

    def __init__(self, name: str) -> None:
        self.logger, self.level = logging.getLogger(name), logging.getLogger(name).level

    def __enter__(self) -> None:
        self.logger.setLevel(logging.ERROR)

    def __exit__(self, *exc: Any) -> None:
        self.logger.setLevel(self.level)


def _write_json(path: Path, value: Any) -> None:
    path.write_text(json.dumps(value, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


__all__ = ["FORMATS", "export_bundle"]
