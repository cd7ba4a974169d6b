"""``rnnkit export BUNDLE --format onnx --out DIR``: a bundle's networks as ONNX graphs with JSON sidecars."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer


def export(
    bundle: Annotated[Path, typer.Argument(help="A model bundle directory written by a train command or save().",
                                           show_default=False)],
    out: Annotated[Path, typer.Option(help="Directory to write: one .onnx and one .json per graph.",
                                      show_default=False)],
    format: Annotated[str, typer.Option("--format", help="Export format: onnx.")] = "onnx",
) -> None:
    """Export a model to ONNX (dynamic batch and time axes), each graph checked in onnxruntime."""
    from ..export import export_bundle  # torch.onnx loads only when exporting

    target = export_bundle(bundle, out, format=format)
    manifest = json.loads((target / "export.json").read_text(encoding="utf-8"))
    for name in manifest["graphs"]:
        sidecar = json.loads((target / f"{name}.json").read_text(encoding="utf-8"))
        inputs = ", ".join(f"{p['name']}{tuple(p['shape'])}" for p in sidecar["inputs"])
        typer.echo(f"{target / sidecar['file']}: {inputs}")
    typer.echo(f"wrote {len(manifest['graphs'])} graph(s) of a {manifest['model_type']} to {target}")
